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
    if a.multi_dc {
        let (mut passed, mut failed) = (0u64, 0u64);
        let mut totals = flotilla_sim::multi_dc::MultiDcReport::default();
        for seed in seeds {
            match flotilla_sim::multi_dc::run_multi_dc_seed(seed, a.trace) {
                Ok(r) => {
                    passed += 1;
                    totals.add(&r);
                }
                Err(e) => {
                    failed += 1;
                    println!("seed {seed} FAILED: {e:#}");
                    println!("  replay: cargo sim --multi-dc --replay {seed} --trace");
                }
            }
        }
        println!("{totals}");
        println!("{passed} passed, {failed} failed");
        return if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if a.cluster {
        let (mut passed, mut failed) = (0u64, 0u64);
        let mut totals = flotilla_sim::cluster::ClusterReport::default();
        for seed in seeds {
            match flotilla_sim::cluster::run_cluster_seed(seed, a.trace) {
                Ok(r) => {
                    passed += 1;
                    totals.add(&r);
                }
                Err(e) => {
                    failed += 1;
                    println!("seed {seed} FAILED: {e:#}");
                    println!("  replay: cargo sim --cluster --replay {seed} --trace");
                }
            }
        }
        println!("{totals}");
        println!("{passed} passed, {failed} failed");
        return if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut totals = flotilla_sim::Report::default();
    for seed in seeds {
        match flotilla_sim::run_seed(seed, a.trace) {
            Ok(r) => {
                passed += 1;
                totals.add(&r);
            }
            Err(e) => {
                failed += 1;
                println!("seed {seed} FAILED: {e:#}");
                println!("  replay: cargo sim --replay {seed} --trace");
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
