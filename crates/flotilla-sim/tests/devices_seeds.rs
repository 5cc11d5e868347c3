//! Offline devices under faults: a fixed set of seeds runs with the test suite; campaigns run
//! with `cargo sim --devices --seeds 10000`.

#[test]
fn fixed_devices_seeds_pass() {
    let mut failures = Vec::new();
    let mut total = flotilla_sim::devices::DevicesReport::default();
    for seed in 1..=40 {
        match flotilla_sim::devices::run_devices_seed(seed, false) {
            Ok(r) => total.add(&r),
            Err(e) => failures.push(format!(
                "seed {seed}: {e:#}\n  replay: cargo sim --devices --replay {seed} --trace"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The seeds met what they are meant to: device and server writes, lost requests and
    // answers, replays, refusals outside the shape, whole-shape pulls.
    assert!(
        total.device_transactions > 1000 && total.server_transactions > 100,
        "{total}"
    );
    assert!(
        total.lost_requests > 0 && total.lost_answers > 0 && total.replays > 0,
        "{total}"
    );
    assert!(total.rejected > 0 && total.resets > 0, "{total}");
}

#[test]
fn a_devices_seed_replays_exactly() {
    let a = flotilla_sim::devices::run_devices_seed(11, false).unwrap();
    let b = flotilla_sim::devices::run_devices_seed(11, false).unwrap();
    assert_eq!(a, b);
}
