//! Failover under faults: a fixed set of cluster seeds runs with the test suite; campaigns run
//! with `cargo sim --cluster --seeds 10000`.

#[test]
fn fixed_cluster_seeds_pass() {
    let mut failures = Vec::new();
    let mut total = flotilla_sim::cluster::ClusterReport::default();
    for seed in 1..=40 {
        match flotilla_sim::cluster::run_cluster_seed(seed, false) {
            Ok(r) => total.add(&r),
            Err(e) => failures.push(format!(
                "seed {seed}: {e:#}\n  replay: cargo sim --cluster --replay {seed} --trace"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The seeds did meet what they are meant to: failovers, crashes, partitions, reverts and
    // divergent transactions saved aside, and acknowledged writes of every kind.
    assert!(total.elections > 40, "{total}");
    assert!(
        total.crashes > 0 && total.partitions > 0 && total.clock_jumps > 0,
        "{total}"
    );
    assert!(total.reverts > 0 && total.divergent > 0, "{total}");
    assert!(total.acked > 1000 && total.reads > 1000, "{total}");
}

#[test]
fn a_cluster_seed_replays_exactly() {
    let a = flotilla_sim::cluster::run_cluster_seed(11, false).unwrap();
    let b = flotilla_sim::cluster::run_cluster_seed(11, false).unwrap();
    assert_eq!(a, b);
    assert!(a.acked > 0, "{a}");
}
