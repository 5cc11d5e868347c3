//! `flotilla demo --quick` runs end to end and finds every follower identical.

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
        stdout.contains("All 3 followers are identical to the leader."),
        "{stdout}"
    );
    assert_eq!(stdout.matches(" identical").count(), 4, "{stdout}");
}
