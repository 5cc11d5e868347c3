//! `cargo run --release -p flotilla-sim -- --seeds N [--start S]`, or `--replay SEED --trace`.

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
    /// Switch on a deliberate bug (skip-checksum, apply-out-of-order): the campaign must fail.
    #[arg(long)]
    inject_bug: Option<String>,
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
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut totals = flotilla_sim::Report::default();
    for seed in seeds {
        match flotilla_sim::run_seed(seed, a.trace) {
            Ok(r) => {
                passed += 1;
                totals.commits += r.commits;
                totals.messages += r.messages;
                totals.dropped += r.dropped;
                totals.flipped += r.flipped;
                totals.follower_crashes += r.follower_crashes;
                totals.leader_crashes += r.leader_crashes;
                totals.bootstraps += r.bootstraps;
                totals.applies += r.applies;
                totals.log_damage += r.log_damage;
                totals.blackholed += r.blackholed;
                totals.sim_ms += r.sim_ms;
            }
            Err(e) => {
                failed += 1;
                println!("seed {seed} FAILED: {e:#}");
                println!(
                    "  replay: cargo run --release -p flotilla-sim -- --replay {seed} --trace"
                );
            }
        }
    }
    println!(
        "{} commits, {} applies, {} messages ({} broke their connection, {} bit-flipped, {} lost in one-way partitions), {} follower crashes, {} leader crashes, {} log records damaged at rest, {} bootstraps, {:.0} simulated s",
        totals.commits, totals.applies, totals.messages, totals.dropped, totals.flipped, totals.blackholed,
        totals.follower_crashes, totals.leader_crashes, totals.log_damage, totals.bootstraps, totals.sim_ms as f64 / 1000.0
    );
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
