//! The calendar's scripted scenario as a test: the `calendar` binary starts its own server,
//! runs a phone offline and a laptop editing the same meetings, and checks that every copy
//! agrees with the server and shows the same conflicts (it exits non-zero otherwise). Then
//! the device commands on their own, against a server the test starts the same way.

use std::process::Command;

fn calendar(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_calendar"))
        .args(args)
        .output()
        .expect("run calendar");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_scenario_agrees_and_shows_the_conflicts() {
    let (ok, out, err) = calendar(&["scenario"]);
    assert!(ok, "the scenario failed:\n{out}\n{err}");
    assert!(
        out.contains("agreed: phone, laptop and server hold the same 3 meetings"),
        "{out}"
    );
    assert!(
        out.contains("title is \"Standup (moved online)\", not \"Standup (room B)\" (lww)"),
        "{out}"
    );
    assert!(
        out.contains(
            "edited on one device while deleted on another: kept, with the edit (update-wins)"
        ),
        "{out}"
    );
    assert!(
        out.contains("cannot sync on the plane — offline (3 changes pending)"),
        "{out}"
    );
}

#[test]
fn device_commands_explain_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, _, err) = calendar(&["--dir", d, "list"]);
    assert!(!ok && err.contains("give --device NAME"), "{err}");
    let (ok, _, err) = calendar(&["--dir", d, "--device", "laptop", "list"]);
    assert!(!ok && err.contains("is not set up"), "{err}");
    let (ok, _, _) = calendar(&[
        "--dir",
        d,
        "--device",
        "laptop",
        "setup",
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "flt_000000000000_aaaaaaaaaaaaaaaaaaaaaaaa",
        "--user",
        "ana",
    ]);
    assert!(ok);
    let laptop = |args: &[&str]| {
        let mut all = vec!["--dir", d, "--device", "laptop"];
        all.extend_from_slice(args);
        calendar(&all)
    };
    let (ok, _, err) = laptop(&["add", "X", "2026-13-45T99:99"]);
    assert!(
        !ok && err.contains("not a date and time that exist"),
        "{err}"
    );
    let (ok, _, err) = laptop(&["add", "X", "2026-02-29T10:00"]);
    assert!(
        !ok && err.contains("not a date and time that exist"),
        "{err}"
    );
    let (ok, _, err) = laptop(&["add", "X", "2026-12-01T10:00", "--minutes", "-5"]);
    assert!(!ok && err.contains("at least a minute"), "{err}");
    let (ok, _, err) = calendar(&[
        "--dir",
        d,
        "--device",
        "laptop",
        "add",
        "Dentist",
        "2026-12-01T10:00",
    ]);
    assert!(!ok && err.contains("has not synced yet"), "{err}");
    let (ok, _, err) = calendar(&["--dir", d, "--device", "laptop", "sync"]);
    assert!(!ok && err.contains("unreachable"), "{err}");
    let (ok, out, _) = calendar(&["--dir", d, "--device", "laptop", "status"]);
    assert!(ok && out.starts_with("offline"), "{out}");
}
