//! `flotilla demo --quick` runs end to end and finds every follower identical (the logical one
//! to its filtered rows), and shows the change feed.

#[test]
fn quick_demo_succeeds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["demo", "--quick"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("All 3 physical followers are identical to the leader, and the logical follower holds exactly its filtered rows."),
        "{stdout}"
    );
    // Three physical followers, the logical one, and the summary line.
    assert_eq!(stdout.matches(" identical").count(), 5, "{stdout}");
    // The change feed printed transactions.
    assert!(stdout.contains("{\"position\": \""), "{stdout}");
}

#[test]
fn quick_trigger_demo_delivers_the_projection_into_postgres() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["demo", "trigger", "--quick"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("PostgreSQL holds exactly the"), "{stdout}");
    assert!(stdout.contains("--target postgres://"), "{stdout}");
}

#[test]
fn quick_failover_demo_loses_no_acknowledged_write() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["demo", "failover", "--quick"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every member and the learner hold every acknowledged write once; the learner found the
    // new leader; the cut-off leader acknowledged nothing.
    assert_eq!(
        stdout.matches("acknowledged writes is there, once").count(),
        4,
        "{stdout}"
    );
    assert!(stdout.contains("the learner follows http://"), "{stdout}");
    assert!(stdout.contains("was not acknowledged"), "{stdout}");
    assert!(
        stdout.contains("No acknowledged write was lost"),
        "{stdout}"
    );
}

#[test]
fn quick_multi_dc_demo_converges_and_shows_the_conflicts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["demo", "multi-dc", "--quick"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("[check]").count(), 4, "{stdout}");
    assert!(
        stdout.contains("All 3 data centres and their followers converged"),
        "{stdout}"
    );
    assert!(stdout.contains("keep-both"), "{stdout}");
}
