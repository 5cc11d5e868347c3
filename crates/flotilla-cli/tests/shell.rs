//! The SQL shell on real nodes: through a pseudo-terminal (line editing, history, multi-line
//! input, dot-commands, writes sent to the leader and read back on a follower) and through
//! standard input (a script as one transaction, or one by one).

mod common;

use common::*;
use flotilla_client::Client;
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `flotilla ARGS` with `stdin` as its input; (success, stdout, stderr).
fn with_stdin(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(exe())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shell_in_a_terminal_edits_remembers_and_reads_its_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let follower = start(dir.path(), "f1", Some(&leader.url)).await;
    let history = dir.path().join("history");
    let follower_url = follower.url.clone();
    let history_file = history.clone();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(exe());
        cmd.args(["shell", "--node", &follower_url])
            .env("FLOTILLA_HISTORY", &history_file)
            .env("TERM", "xterm");
        let mut p = rexpect::session::spawn_command(cmd, Some(20_000)).unwrap();
        p.exp_string("flotilla shell").unwrap();
        p.exp_string("writes go to the leader").unwrap();
        // The line editor drops what is typed before it shows its prompt: every command's
        // output is awaited, then the prompt that follows it.
        let enter = |p: &mut rexpect::session::PtySession, line: &str| {
            p.exp_string("flotilla> ").unwrap();
            p.send_line(line).unwrap();
        };
        enter(&mut p, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
        p.exp_string("1 statement, 0 rows changed").unwrap();
        // A statement over two lines: the second prompt says it continues.
        enter(&mut p, "INSERT INTO t(v)");
        p.exp_string("...> ").unwrap();
        p.send_line("VALUES ('a'), (NULL), ('NULL');").unwrap();
        p.exp_string("3 rows changed").unwrap();
        // Read on the follower right after: it waits for the write.
        enter(&mut p, "SELECT id, v FROM t ORDER BY id;");
        p.exp_regex(r"2\s+NULL").unwrap();
        p.exp_regex(r"3\s+'NULL'").unwrap();
        p.exp_string("(3 rows)").unwrap();
        enter(&mut p, ".tables");
        p.exp_regex(r"t\s+table").unwrap();
        enter(&mut p, ".schema t");
        p.exp_string("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
        enter(&mut p, ".mode csv");
        p.exp_string("rows shown as csv").unwrap();
        enter(
            &mut p,
            "SELECT v FROM t WHERE id = 1; SELECT count(*) AS n FROM t;",
        );
        p.exp_string("v\r\na\r\n").unwrap();
        p.exp_string("n\r\n3\r\n").unwrap();
        enter(&mut p, ".timer on");
        p.exp_string("timing is on").unwrap();
        enter(&mut p, "SELECT 42 AS answer;");
        p.exp_string("Run Time:").unwrap();
        // The up arrow brings the last statement back.
        p.exp_string("flotilla> ").unwrap();
        p.send("\x1b[A").unwrap();
        p.send_line("").unwrap();
        p.exp_string("Run Time:").unwrap();
        p.exp_string("answer\r\n42").unwrap();
        // Errors are shown and the shell goes on.
        enter(&mut p, "SELECT nope FROM t;");
        p.exp_string("no such column: nope").unwrap();
        enter(&mut p, ".bogus");
        p.exp_string("unknown command .bogus").unwrap();
        enter(&mut p, ".quit");
        p.exp_eof().unwrap();
    })
    .await
    .unwrap();
    let remembered = std::fs::read_to_string(&history).unwrap();
    assert!(
        remembered.contains("INSERT INTO t(v) VALUES ('a'), (NULL), ('NULL');"),
        "{remembered}"
    );
    assert!(remembered.contains(".mode csv"), "{remembered}");
    let lc = Client::new(&leader.url);
    assert_eq!(rows(&lc, "SELECT count(*) FROM t").await, json!([[3]]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_runs_as_one_transaction_or_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let follower = start(dir.path(), "f1", Some(&leader.url)).await;
    let lc = Client::new(&leader.url);
    let script =
        "CREATE TABLE a(x);\nINSERT INTO a VALUES (1);\n-- fails:\nINSERT INTO nope VALUES (2);\n";

    // One transaction: the failure undoes the whole script.
    let (ok, _, err) = with_stdin(&["shell", "--node", &follower.url], script);
    assert!(!ok);
    assert!(
        err.contains("statement 3 of 3 (INSERT INTO nope VALUES (2))")
            && err.contains("rolled back"),
        "{err}"
    );
    let tables = rows(&lc, "SELECT count(*) FROM sqlite_schema WHERE name = 'a'").await;
    assert_eq!(tables, json!([[0]]));

    // One by one: what ran before the failure stays, and the error says which one failed.
    let (ok, _, err) = with_stdin(
        &["sql", "--node", &leader.url, "--one-by-one"],
        &format!("{script}SELECT 'never';\n"),
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains("statement 3 of 4: (INSERT INTO nope VALUES (2))")
            && err.contains("the 1 statement(s) after it did not run"),
        "{err}"
    );
    assert_eq!(rows(&lc, "SELECT x FROM a").await, json!([[1]]));

    // A file with dot-commands, .read of another, and a last statement without ';'.
    let inner = dir.path().join("inner.sql");
    std::fs::write(
        &inner,
        "INSERT INTO a VALUES (2);\nINSERT INTO a VALUES (3);\n",
    )
    .unwrap();
    let outer = dir.path().join("outer.sql");
    std::fs::write(
        &outer,
        format!(
            ".read {}\n.mode json\nSELECT sum(x) AS total FROM a",
            inner.display()
        ),
    )
    .unwrap();
    let out = Command::new(exe())
        .args([
            "shell",
            "--node",
            &follower.url,
            "-f",
            outer.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        answer,
        json!([{"total": 6}]),
        "read on the follower after the writes"
    );

    // A logical follower takes writes to its own tables from the shell.
    let logical = flotilla_testkit::cluster::LocalNode::start(
        &exe(),
        dir.path(),
        "lf",
        Some(&leader.url),
        &["--log", "logical"],
    )
    .await
    .unwrap();
    let (ok, out, err) = with_stdin(
        &["sql", "--node", &logical.url, "--mode", "csv"],
        "CREATE TABLE mine(x); INSERT INTO mine VALUES (41) RETURNING x + 1 AS y;",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "y\n42\n");

    // A node that does not answer is named as such.
    let (ok, _, err) = with_stdin(&["sql", "--node", "127.0.0.1:9"], "SELECT 1;");
    assert!(!ok);
    assert!(
        err.contains("no node answers at http://127.0.0.1:9 — is it running?"),
        "{err}"
    );
}
