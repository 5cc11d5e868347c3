//! `cargo sim --seeds N [--start S]`, or `--replay SEED --trace`.

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "flotilla-sim",
    about = "Deterministic simulation of Flotilla replication"
)]
struct Args {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    start: u64,
    /// Run one seed only (with --trace: print every step).
    #[arg(long)]
    replay: Option<u64>,
    #[arg(long)]
    trace: bool,
    /// Switch on a deliberate bug (ack-before-fsync, skip-checksum, apply-out-of-order,
    /// ignore-window): the
    /// campaign must fail.
    #[arg(long)]
    inject_bug: Option<String>,
    /// Simulate a cluster of voters (failover) instead of a leader with followers.
    #[arg(long)]
    cluster: bool,
    /// Simulate multi-leader data centres exchanging and merging.
    #[arg(long)]
    multi_dc: bool,
    /// Simulate offline devices syncing with a data centre.
    #[arg(long)]
    devices: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    if let Err(e) = flotilla_sim::inject_bug(a.inject_bug.as_deref()) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let seeds: Vec<u64> = match a.replay {
        Some(s) => vec![s],
        None => (a.start..a.start + a.seeds).collect(),
    };
    if a.devices {
        return campaign(&seeds, "--devices ", |seed| {
            flotilla_sim::devices::run_devices_seed(seed, a.trace)
        });
    }
    if a.multi_dc {
        return campaign(&seeds, "--multi-dc ", |seed| {
            flotilla_sim::multi_dc::run_multi_dc_seed(seed, a.trace)
        });
    }
    if a.cluster {
        return campaign(&seeds, "--cluster ", |seed| {
            flotilla_sim::cluster::run_cluster_seed(seed, a.trace)
        });
    }
    campaign(&seeds, "", |seed| flotilla_sim::run_seed(seed, a.trace))
}

/// Runs every seed, prints each failure with the command that replays it, then the totals.
fn campaign<R: Default + std::fmt::Display + Totals>(
    seeds: &[u64],
    mode: &str,
    run: impl Fn(u64) -> anyhow::Result<R>,
) -> ExitCode {
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut totals = R::default();
    for &seed in seeds {
        match run(seed) {
            Ok(r) => {
                passed += 1;
                totals.add_run(&r);
            }
            Err(e) => {
                failed += 1;
                println!("seed {seed} FAILED: {e:#}");
                println!("  replay: cargo sim {mode}--replay {seed} --trace");
            }
        }
    }
    println!("{totals}");
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A report that sums over seeds.
trait Totals {
    fn add_run(&mut self, other: &Self);
}

impl Totals for flotilla_sim::Report {
    fn add_run(&mut self, o: &Self) {
        self.add(o)
    }
}

impl Totals for flotilla_sim::cluster::ClusterReport {
    fn add_run(&mut self, o: &Self) {
        self.add(o)
    }
}

impl Totals for flotilla_sim::devices::DevicesReport {
    fn add_run(&mut self, o: &Self) {
        self.add(o)
    }
}

impl Totals for flotilla_sim::multi_dc::MultiDcReport {
    fn add_run(&mut self, o: &Self) {
        self.add(o)
    }
}
