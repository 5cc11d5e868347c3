//! A fixed set of simulation seeds runs with the test suite; campaigns run with
//! `cargo sim --seeds 10000`.

#[test]
fn fixed_seeds_pass() {
    let mut failures = Vec::new();
    for seed in 1..=24 {
        if let Err(e) = flotilla_sim::run_seed(seed, false) {
            failures.push(format!(
                "seed {seed}: {e:#}\n  replay: cargo sim --replay {seed} --trace"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Seeds that once failed, kept as regressions (what each found is in docs/testing.md).
const BUGBASE: &[u64] = &[3325];

#[test]
fn bugbase_seeds_pass() {
    for &seed in BUGBASE {
        if let Err(e) = flotilla_sim::run_seed(seed, false) {
            panic!("seed {seed}: {e:#}\n  replay: cargo sim --replay {seed} --trace");
        }
    }
}

#[test]
fn a_seed_replays_exactly() {
    let a = flotilla_sim::run_seed(7, false).unwrap();
    let b = flotilla_sim::run_seed(7, false).unwrap();
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert!(a.commits > 0 && a.applies > 0, "{a:?}");
}
