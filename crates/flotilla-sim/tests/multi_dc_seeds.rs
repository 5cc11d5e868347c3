//! Multi-leader data centres under faults: a fixed set of seeds runs with the test suite;
//! campaigns run with `cargo sim --multi-dc --seeds 10000`.

#[test]
fn fixed_multi_dc_seeds_pass() {
    let mut failures = Vec::new();
    let mut total = flotilla_sim::multi_dc::MultiDcReport::default();
    for seed in 1..=40 {
        match flotilla_sim::multi_dc::run_multi_dc_seed(seed, false) {
            Ok(r) => total.add(&r),
            Err(e) => failures.push(format!(
                "seed {seed}: {e:#}\n  replay: cargo sim --multi-dc --replay {seed} --trace"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The seeds met what they are meant to: merges, waits for dependencies, records read
    // again, crashes (some between a commit and its log append), cut links, conflicts.
    assert!(total.merges > 1000 && total.transactions > 500, "{total}");
    assert!(total.waits > 0 && total.redeliveries > 0, "{total}");
    assert!(
        total.crashes > 0 && total.lost_appends > 0 && total.cuts > 0,
        "{total}"
    );
    assert!(total.conflicts > 100, "{total}");
}

#[test]
fn a_multi_dc_seed_replays_exactly() {
    let a = flotilla_sim::multi_dc::run_multi_dc_seed(7, false).unwrap();
    let b = flotilla_sim::multi_dc::run_multi_dc_seed(7, false).unwrap();
    assert_eq!(a, b);
}
