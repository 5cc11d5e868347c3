//! The binary the end-to-end tests run is the one users get: none of the simulator's deliberate
//! bugs are compiled into it. (The simulator is a workspace of its own so that cargo's feature
//! unification cannot switch its `sim-bugs` feature on here; a build with it carries the
//! `injected_bugs` statics, whose names this looks for.)

#[test]
fn the_tested_binary_carries_no_injected_bugs() {
    let bytes = std::fs::read(env!("CARGO_BIN_EXE_flotilla")).unwrap();
    assert!(bytes.len() > 1_000_000, "not the flotilla binary?");
    let needle = b"injected_bugs";
    assert!(
        !bytes.windows(needle.len()).any(|w| w == needle),
        "the flotilla binary was built with a `sim-bugs` feature"
    );
}
