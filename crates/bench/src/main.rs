//! `sitesync-bench`: measures sitesync at industrial scale by driving the
//! real `sitesync-daemon` and `sitesync-relay` binaries over their real
//! interfaces, and writes `BENCHMARKS.md` (with the raw figures in
//! `BENCHMARKS.json`).
//!
//! Flow: a relay and an organisation; daemon A builds the project (a CSV
//! import, then a progress mix) and syncs it to the relay; daemon B clones
//! it; then HTTP writes and queries on A, propagation A → B, offline
//! catch-up, reconnects of B, relay fan-out, A's restart, and last a cold
//! clone of a 500,000-component project of its own. Every process runs in a temporary directory and is killed at the
//! end. Numbers live here, never in tests: these machines are shared and
//! noisy, so read the figures as this machine's, on this run.

mod aged;
mod app;
mod fanout;
mod project;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use sitesync_tests::{Daemon, Relay};

use crate::aged::AgeSizes;
use crate::project::{Kind, Project};
use crate::report::{Figure, Ratio, Stat};
use crate::scenarios::Sizes;

/// Benchmarks sitesync: generates a realistic project, drives the real
/// daemon and relay binaries (built beside this one), and writes
/// BENCHMARKS.md and BENCHMARKS.json.
///
/// Build everything first, in the profile you measure:
///   cargo build --release --locked --workspace --bins && target/release/sitesync-bench
#[derive(Parser, Debug)]
#[command(name = "sitesync-bench", version, about, long_about)]
struct Cli {
    /// Small sizes, a minute or less: a smoke test that keeps the benchmark
    /// from rotting (CI runs it). Its figures are not the targets' scale.
    #[arg(long)]
    quick: bool,

    /// Components in the generated project (drawings of 50).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    components: usize,

    /// Where to write the report (the JSON goes beside it, as .json).
    #[arg(long, default_value = "BENCHMARKS.md", value_name = "FILE")]
    out: PathBuf,

    /// Components of the project the last scenario clones on its own (the
    /// issue's "a 500,000-component project completes"); 0 skips it.
    /// Default: 500,000, or 4,000 with --quick.
    #[arg(long, value_name = "N")]
    large_clone: Option<usize>,

    /// Milestone writes given to the aged project's drawings (hot ones
    /// aside); 0 skips the aged project. Default: 1,000,000, or 20,000
    /// with --quick (the same ~500 a drawing).
    #[arg(long, value_name = "N")]
    age_writes: Option<usize>,

    /// Seed of the progress mix, for a repeatable project.
    #[arg(long, default_value_t = 7)]
    seed: u64,

    /// Keep the temporary directory (logs, stores) for a look afterwards.
    #[arg(long)]
    keep: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut sizes = if cli.quick {
        Sizes::quick()
    } else {
        Sizes::full(cli.components)
    };
    if let Some(n) = cli.large_clone {
        sizes.large_clone = n;
    }
    let started = Instant::now();
    // A report that cannot be written is found out now, not after the run.
    if let Some(parent) = cli.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cli.out)
        .with_context(|| format!("cannot write the report to {}", cli.out.display()))?;
    let tmp = tempfile::Builder::new().prefix("sitesync-bench").tempdir()?;
    // Kept whatever happens below (an error included) when asked.
    let (_tmp, dir) = if cli.keep {
        (None, tmp.keep())
    } else {
        let dir = tmp.path().to_owned();
        (Some(tmp), dir)
    };
    eprintln!(
        "sitesync-bench: working in {}{}",
        dir.display(),
        if cli.keep { " (kept afterwards)" } else { "" }
    );
    let mut run = Run {
        started,
        failures: Vec::new(),
    };

    let relay_dir = dir.join("relay");
    Relay::create_org(&relay_dir, "bench");
    // The large clone's project lives apart, so A and B never receive it.
    Relay::create_org(&relay_dir, LARGE_ORG);
    let token = |name: &str| {
        let t = Relay::token(&relay_dir, "bench", &[]);
        std::fs::write(dir.join(format!("{name}.token")), &t).ok();
        t
    };
    let relay = Relay::start_paced(&relay_dir, 5000);
    let a_args = scenarios::sync_flags(&token("a"), &relay);
    let a_refs: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let a = Daemon::start(&dir.join("a"), &a_refs);
    let mut figures: Vec<Figure> = Vec::new();

    run.step(&format!(
        "generating {} components on A (CSV import, then a progress mix)",
        sizes.components
    ));
    let project = project::generate(&a.client(), sizes.components, sizes.per_drawing, cli.seed)?;
    figures.push(
        Figure::ms(
            "import",
            &format!("CSV import job, {} rows", project.components),
            &[project.import_time],
        )
        .note("POST .../imports until the job completes (information; no target)"),
    );
    run.step("waiting until the relay holds everything A wrote");
    scenarios::wait_pending_zero(&a.client())?;

    run.step("B clones the project from the relay");
    let b_token = token("b");
    let mut cloned = scenarios::cold_clone(&dir.join("b"), &relay, &b_token, &project, Some(10_000.0))?;
    for f in &mut cloned {
        f.scenario = "sync".into();
    }
    figures.extend(cloned);
    let b_args = scenarios::sync_flags(&b_token, &relay);
    let b_refs: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let b = Daemon::start(&dir.join("b"), &b_refs);

    run.attempt("the relay's memory", &mut figures, || {
        Ok(vec![relay_memory(&relay)])
    });
    let phase = Phase {
        a_dir: dir.join("a"),
        a_args: a_args.clone(),
        relay: &relay,
        relay_dir: &relay_dir,
        project: &project,
        sizes: &sizes,
        seed: cli.seed,
    };
    let one = project.drawings.first().cloned().unwrap_or_default();
    phase.measure(&mut run, &mut figures, a, b, &one, true);

    // The same project with a year of history (see `aged`).
    let mut aged_figures: Vec<Figure> = Vec::new();
    let age_writes = cli
        .age_writes
        .unwrap_or(if cli.quick { 20_000 } else { 1_000_000 });
    let age_sizes = AgeSizes {
        writes: age_writes,
        hot_drawings: if cli.quick { 1 } else { 4 },
        hot_writes: if cli.quick { 2_000 } else { 25_000 },
    };
    if age_writes > 0 {
        run.step(&format!(
            "aging the project in A's store: {} writes, and {} hot drawings of {}",
            age_sizes.writes, age_sizes.hot_drawings, age_sizes.hot_writes
        ));
        match aged::age(&phase.a_dir, &project, age_sizes, cli.seed) {
            Ok(history) => {
                aged_figures.push(
                    Figure::ms(
                        "aged",
                        &format!(
                            "a year of history written into A's store, {} writes",
                            history.writes
                        ),
                        &[history.took],
                    )
                    .note(
                        "through the model's writes, straight into the stopped daemon's store (information)",
                    ),
                );
                phase.aged(&mut run, &mut aged_figures, &history, &token);
            }
            Err(e) => run.failures.push(format!("aging the project: {e:#}")),
        }
    }
    if sizes.large_clone > 0 {
        let what = format!("cold clone of a {}-component project", sizes.large_clone);
        run.attempt(&what, &mut figures, || {
            scenarios::large_clone(&dir, &relay, LARGE_ORG, sizes.large_clone, &sizes, cli.seed)
        });
    }
    drop(relay);

    let elapsed = started.elapsed();
    let machine = report::machine();
    // The command that repeats this run: only the flags that changed a size.
    let mut command = if cli.quick {
        "cargo build --locked --workspace --bins && target/debug/sitesync-bench --quick".to_owned()
    } else {
        let mut c =
            "cargo build --release --locked --workspace --bins && target/release/sitesync-bench".to_owned();
        if cli.components != 100_000 {
            c.push_str(&format!(" --components {}", cli.components));
        }
        c
    };
    if let Some(n) = cli.large_clone {
        command.push_str(&format!(" --large-clone {n}"));
    }
    let size_text = format!(
        "{} components on {} drawings of {}; {} single writes ({} more paced), {} bulks of 50, {} large bulks, {} queries, {} propagations, {} reconnects, {} restarts; fan-out to {} devices ({} updates), {} idle connections; a clone of {} components{}",
        project.components,
        project.drawings.len(),
        sizes.per_drawing,
        sizes.single_writes,
        sizes.paced_writes,
        sizes.bulk50,
        sizes.bulk10k,
        sizes.queries,
        sizes.propagations,
        sizes.reconnects,
        sizes.restarts,
        sizes.fanout_devices,
        sizes.fanout_updates,
        sizes.idle_connections,
        sizes.large_clone,
        if cli.quick {
            " (quick: a smoke test, not the targets' scale)"
        } else {
            ""
        },
    );
    let mut md = report::markdown(&figures, &machine, &command, &size_text, elapsed);
    if !aged_figures.is_empty() {
        md.push_str(&format!(
            "\n## The aged project beside the fresh one\n\n\
             The same project after {} milestone writes spread over a year on its drawings, and \
             {} hot drawings of {} writes each (`crates/bench/src/aged.rs`), measured by the same \
             scenarios in the same run; the ratio is the aged figure over the fresh one.\n\n",
            age_sizes.writes, age_sizes.hot_drawings, age_sizes.hot_writes
        ));
        md.push_str(&report::comparison(&figures, &aged_figures, AGED_TARGETS));
    }
    let failures = run.failures;
    if !failures.is_empty() {
        md.push_str("\n## Scenarios that did not complete\n\n");
        for f in &failures {
            md.push_str(&format!("- {f}\n"));
        }
    }
    md.push_str(include_str!("../FINDINGS.md"));
    std::fs::write(&cli.out, md).with_context(|| format!("writing {}", cli.out.display()))?;
    let json_path = cli.out.with_extension("json");
    let raw = json!({
        "command": command,
        "machine": machine,
        "sizes": size_text,
        "elapsed_s": elapsed.as_secs_f64(),
        "figures": figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
        "aged_figures": aged_figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
        "failures": failures,
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&raw)?)?;
    let missed = figures.iter().filter(|f| f.met() == Some(false)).count()
        + aged_figures
            .iter()
            .filter(|a| {
                let fresh = figures
                    .iter()
                    .find(|f| f.scenario == a.scenario && f.metric == a.metric);
                report::aged_met(fresh, a, AGED_TARGETS) == Some(false)
            })
            .count();
    for f in &failures {
        eprintln!("sitesync-bench: did not complete: {f}");
    }
    eprintln!(
        "sitesync-bench: {} figures, {missed} targets missed; wrote {} and {} in {:.0} s",
        figures.len(),
        cli.out.display(),
        json_path.display(),
        elapsed.as_secs_f64()
    );
    anyhow::ensure!(
        failures.is_empty(),
        "{} scenarios did not complete",
        failures.len()
    );
    Ok(())
}

/// The organisation of the large clone's project.
const LARGE_ORG: &str = "large";

/// How the aged project's figures are judged (the targets): ratios
/// to the fresh project's in the same run, or their own target.
const AGED_TARGETS: &[Ratio] = &[
    Ratio {
        scenario: "HTTP write",
        metric: "single milestone update, durable",
        stat: Stat::P99,
        max: Some(1.5),
    },
    Ratio {
        scenario: "HTTP write",
        metric: "one drawing: toggles and quantity entries",
        stat: Stat::P99,
        max: Some(1.5),
    },
    Ratio {
        scenario: "HTTP write",
        metric: "bulk of 50 updates",
        stat: Stat::P99,
        max: Some(1.5),
    },
    Ratio {
        scenario: "sync",
        metric: "propagation A → relay → B (p99)",
        stat: Stat::P99,
        max: Some(1.5),
    },
    Ratio {
        scenario: "sync",
        metric: "propagation A → relay → B",
        stat: Stat::P50,
        max: Some(1.5),
    },
    Ratio {
        scenario: "daemon",
        metric: "start-up until serving",
        stat: Stat::P50,
        max: Some(2.0),
    },
    Ratio {
        scenario: "daemon",
        metric: "first component query after start-up",
        stat: Stat::P50,
        max: Some(2.0),
    },
    Ratio {
        scenario: "daemon",
        metric: "resident memory",
        stat: Stat::P50,
        max: Some(2.0),
    },
    Ratio {
        scenario: "relay",
        metric: "resident memory",
        stat: Stat::P50,
        max: Some(2.0),
    },
    Ratio {
        scenario: "sync",
        metric: "clone's resident memory",
        stat: Stat::Value,
        max: Some(2.0),
    },
    Ratio {
        scenario: "sync",
        metric: "cold clone, ",
        stat: Stat::Value,
        max: Some(3.0),
    },
    Ratio {
        scenario: "sync",
        metric: "reconnect",
        stat: Stat::P50,
        max: Some(1.25),
    },
    Ratio {
        scenario: "daemon",
        metric: "one drawing: ",
        stat: Stat::P99,
        max: None,
    },
];

/// The run's progress and the scenarios that did not complete: a scenario
/// that fails (or a harness call that panics) is reported with the figures
/// gathered so far, never lost with them.
struct Run {
    started: Instant,
    failures: Vec<String>,
}

impl Run {
    fn step(&self, what: &str) {
        eprintln!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    fn attempt(
        &mut self,
        what: &str,
        figures: &mut Vec<Figure>,
        f: impl FnOnce() -> anyhow::Result<Vec<Figure>>,
    ) {
        self.step(what);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(out)) => figures.extend(out),
            Ok(Err(e)) => self.failures.push(format!("{what}: {e:#}")),
            Err(p) => self.failures.push(format!(
                "{what}: {}",
                p.downcast_ref::<String>()
                    .map(String::as_str)
                    .or(p.downcast_ref::<&str>().copied())
                    .unwrap_or("panicked")
            )),
        }
    }
}

/// What the scenarios of one project share: A's store and flags, the relay,
/// the project.
struct Phase<'r> {
    a_dir: PathBuf,
    a_args: Vec<String>,
    relay: &'r Relay,
    relay_dir: &'r std::path::Path,
    project: &'r Project,
    sizes: &'r Sizes,
    seed: u64,
}

impl Phase<'_> {
    /// The scenarios on A (writing) and B (receiving through the relay),
    /// then A's restarts; stops both. `one`: the drawing the one-drawing
    /// scenario writes to. `fanout`: the relay's fan-out to many devices
    /// too (a project of its own: measured once).
    fn measure(
        &self,
        run: &mut Run,
        figures: &mut Vec<Figure>,
        mut a: Daemon,
        b: Daemon,
        one: &[(String, Kind)],
        fanout: bool,
    ) {
        let (project, sizes) = (self.project, self.sizes);
        run.attempt("HTTP writes on A", figures, || {
            scenarios::settle(&a.client(), &project.id)?;
            scenarios::settle(&b.client(), &project.id)?;
            scenarios::writes(&a.client(), &b.client(), project, sizes)
        });
        run.attempt("component queries on A", figures, || {
            Ok(vec![scenarios::queries(&a.client(), project, sizes)?])
        });
        run.attempt("the field app in a browser on A", figures, || {
            app::field_app(&a.client(), project, sizes)
        });
        run.attempt("A's memory after the writes and queries", figures, || {
            Ok(vec![scenarios::working_memory(&a)])
        });
        run.attempt("writes to one drawing on A", figures, || {
            aged::one_drawing(&a.client(), &project.id, one, sizes.single_writes)
        });
        run.attempt("propagation A → relay → B", figures, || {
            // Steady state: the writes above are still reaching B.
            scenarios::wait_pending_zero(&a.client())?;
            scenarios::quiet(&b.client(), Duration::from_secs(1))?;
            let prop = scenarios::propagation(&a.client(), &b.client(), project, sizes)?;
            Ok(vec![scenarios::propagation_p99(&prop), prop]
                .into_iter()
                .rev()
                .collect())
        });
        run.attempt("offline catch-up", figures, || {
            Ok(vec![scenarios::offline_catch_up(
                &a.client(),
                &b.client(),
                project,
                sizes,
            )?])
        });
        run.attempt("B reconnects with nothing changed", figures, || {
            scenarios::wait_pending_zero(&a.client())?;
            scenarios::quiet(&b.client(), Duration::from_secs(1))?;
            scenarios::reconnect(&b.client(), self.relay, project, sizes)
        });
        if fanout {
            run.attempt("relay fan-out and idle connections", figures, || {
                let small = project::generate(&a.client(), sizes.per_drawing, sizes.per_drawing, self.seed)?;
                scenarios::wait_pending_zero(&a.client())?;
                fanout::fanout(&a.client(), self.relay, self.relay_dir, &small, sizes)
            });
        }
        a.stop();
        drop(b);
        run.attempt("A restarts on its store", figures, || {
            scenarios::startup(&self.a_dir, &self.a_args, project, sizes)
        });
    }

    /// The aged project, its history in A's (stopped) store: A starts and
    /// hands the history to the relay, a new B clones it, and the
    /// scenarios run again.
    fn aged(
        &self,
        run: &mut Run,
        figures: &mut Vec<Figure>,
        history: &aged::Aged,
        token: &dyn Fn(&str) -> String,
    ) {
        let refs: Vec<&str> = self.a_args.iter().map(String::as_str).collect();
        let a = Daemon::start(&self.a_dir, &refs);
        run.attempt("A hands the history to the relay", figures, || {
            // The history's changes are other devices' (actors), which A's
            // pending count does not count: wait for its acknowledgements
            // to stop, and time until the last.
            let start = Instant::now();
            let started_at = std::time::SystemTime::now();
            scenarios::wait_pending_zero(&a.client())?;
            let last = scenarios::quiet(&a.client(), Duration::from_secs(5))?;
            let took = last
                .as_deref()
                .and_then(sitesync_sync::model::Timestamp::parse_rfc3339)
                .and_then(|at| {
                    let since = started_at.duration_since(std::time::UNIX_EPOCH).ok()?;
                    Some(Duration::from_millis(
                        (at.0 - since.as_millis() as i64).max(0) as u64
                    ))
                })
                .unwrap_or_else(|| start.elapsed());
            Ok(vec![
                Figure::ms("aged", "A hands the year of history to the relay", &[took])
                    .note("A's start on the aged store until the relay's last acknowledgement (information)"),
            ])
        });
        let b_token = token("b-aged");
        let b_dir = self.a_dir.with_file_name("b-aged");
        run.attempt("a new B clones the aged project", figures, || {
            let mut out = scenarios::cold_clone(&b_dir, self.relay, &b_token, self.project, None)?;
            out.push(relay_memory(self.relay));
            Ok(out)
        });
        let b_args = scenarios::sync_flags(&b_token, self.relay);
        let b_refs: Vec<&str> = b_args.iter().map(String::as_str).collect();
        let b = Daemon::start(&b_dir, &b_refs);
        let one = history.hot.first().cloned().unwrap_or_default();
        self.measure(run, figures, a, b, &one, false);
    }
}

/// The relay's resident memory, holding the project B just cloned.
fn relay_memory(relay: &Relay) -> Figure {
    Figure::new(
        "relay",
        "resident memory after a cold clone",
        "MB",
        vec![relay.pid().map_or(f64::NAN, scenarios::rss_mb)],
    )
    .note("the relay's RSS once the clone completed")
}
