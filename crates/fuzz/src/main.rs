//! `sitesync-fuzz`: runs the fuzz targets for a time or a count and reports
//! how many inputs each survived. A panic saves the input under
//! `crates/fuzz/regressions/<target>/` (replayed by `cargo test`) and exits 1.
//!
//! ```sh
//! cargo run --release -p sitesync-fuzz -- --seconds 600          # every target, 10 minutes in all
//! cargo run --release -p sitesync-fuzz -- --target frame --runs 1000000 --seed 7
//! ```

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use sitesync_fuzz::{Target, run, save};

#[derive(Parser, Debug)]
#[command(name = "sitesync-fuzz", version, about, long_about)]
struct Cli {
    /// Only this target (frame, sync_message, token, import_csv,
    /// import_json); all of them by default, one after another.
    #[arg(long)]
    target: Option<String>,
    /// Total time for the run, shared equally by the targets.
    #[arg(long, default_value_t = 60, value_name = "SECS", conflicts_with = "runs")]
    seconds: u64,
    /// Instead of a time: this many inputs per target.
    #[arg(long, value_name = "N")]
    runs: Option<u64>,
    /// The RNG seed; printed, so a run can be replayed exactly.
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let targets = match &cli.target {
        None => Target::ALL.to_vec(),
        Some(name) => match Target::from_name(name) {
            Some(t) => vec![t],
            None => bail!(
                "unknown target {name:?}: one of {}",
                Target::ALL.map(Target::name).join(", ")
            ),
        },
    };
    let seed = cli.seed.unwrap_or_else(rand::random);
    println!("sitesync-fuzz: seed {seed} (replay with --seed {seed})");
    // Panics are findings, reported below; the default hook's backtrace
    // noise would bury the report.
    std::panic::set_hook(Box::new(|_| {}));
    let share = Duration::from_secs(cli.seconds) / targets.len() as u32;
    for target in targets {
        let started = Instant::now();
        let runs = cli.runs;
        let outcome = run(target, seed, |n| match runs {
            Some(limit) => n >= limit,
            None => started.elapsed() >= share,
        });
        match outcome {
            Ok(tally) => println!(
                "{:<12} survived {:>9} inputs in {:.1} s",
                target.name(),
                tally.survived,
                started.elapsed().as_secs_f64()
            ),
            Err(finding) => {
                let path = save(&finding)?;
                bail!(
                    "{}: an input panicked ({}); saved as {} (replayed by `cargo test -p sitesync-fuzz`)",
                    target.name(),
                    finding.message,
                    path.display()
                );
            }
        }
    }
    Ok(())
}
