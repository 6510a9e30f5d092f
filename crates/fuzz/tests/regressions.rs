//! Every saved regression input and every seed, through its target: each
//! once made a decoder panic or is a real input, and none may now. Then a
//! short seeded run of every target, so the mutation engine itself cannot
//! rot.

use sitesync_fuzz::{Target, regression_inputs, run, try_input};

#[test]
fn every_regression_input_and_seed_passes_its_target() {
    for target in Target::ALL {
        for (path, input) in regression_inputs(target).unwrap() {
            if let Err(f) = try_input(target, &input) {
                panic!("{} panicked again: {}", path.display(), f.message);
            }
        }
        for seed in target.seeds() {
            try_input(target, &seed).unwrap_or_else(|f| panic!("a seed of {}: {}", target.name(), f.message));
        }
    }
}

#[test]
fn a_short_seeded_run_of_every_target_finds_nothing() {
    for target in Target::ALL {
        let tally = run(target, 42, |n| n >= 300)
            .unwrap_or_else(|f| panic!("{} panicked on {:?}: {}", target.name(), f.input, f.message));
        assert!(tally.survived >= 300);
    }
}

/// The 15 bytes are kept as a regression input of the sync
/// message target: the check refuses them before Automerge's generate.
#[test]
fn the_bloom_filter_bomb_is_a_kept_regression_input() {
    let kept = regression_inputs(Target::SyncMessage).unwrap();
    assert!(
        kept.iter()
            .any(|(_, b)| b.starts_with(&[0x42, 0, 0, 1, 0, 8, 8, 1, 0xff])),
        "{kept:?}"
    );
}
