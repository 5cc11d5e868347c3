//! A CLI that explains itself: each message a user meets on the first day, asserted by its text.

mod common;

use common::*;
use flotilla_client::Client;
use std::process::Command;

#[test]
fn every_command_has_examples_in_its_help() {
    for command in [
        vec!["serve"],
        vec!["sql"],
        vec!["shell"],
        vec!["status"],
        vec!["follower", "remove"],
        vec!["backup"],
        vec!["restore"],
        vec!["changes"],
        vec!["pipeline", "add"],
        vec!["pipeline", "list"],
        vec!["pipeline", "status"],
        vec!["pipeline", "pause"],
        vec!["pipeline", "resume"],
        vec!["pipeline", "remove"],
        vec!["token", "create"],
        vec!["token", "list"],
        vec!["token", "revoke"],
        vec!["cert", "init"],
        vec!["log", "check"],
        vec!["log", "repair"],
        vec!["demo"],
        vec!["bench"],
    ] {
        let mut args = command.clone();
        args.push("--help");
        let (ok, out, err) = cli(&args);
        assert!(ok, "{command:?}: {err}");
        let examples = out.split("Examples:").nth(1).unwrap_or_default();
        assert!(
            examples.contains(&format!("flotilla {}", command[0])),
            "{command:?} --help has no example: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn first_day_messages_say_what_is_wrong_in_the_users_terms() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let follower = start(dir.path(), "f1", Some(&leader.url)).await;
    let lc = Client::new(&leader.url);
    let host_port = leader.url.trim_start_matches("http://").to_string();

    // host:port works; a failed write names the node's error, not an endpoint.
    let (ok, _, err) = cli(&[
        "sql",
        "--node",
        &host_port,
        "CREATE TABLE orders(id INTEGER PRIMARY KEY, total REAL)",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["sql", "--node", &host_port, "INSERT INTO nope VALUES (1)"]);
    assert!(!ok);
    assert!(
        err.contains("no such table: nope") && !err.contains("/v1/"),
        "{err}"
    );

    // https:// to a node serving http says so.
    let (ok, _, err) = cli(&["sql", "--node", &format!("https://{host_port}"), "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("does not speak TLS: use http://"), "{err}");

    // The change feed on a follower is about the feed.
    let f_host = follower.url.trim_start_matches("http://").to_string();
    let (ok, _, err) = cli(&["changes", "--node", &f_host, "--no-follow"]);
    assert!(!ok);
    assert!(
        err.contains("its change feed is served by the leader at") && !err.contains("writes"),
        "{err}"
    );

    // A bad predicate names the user's expression and the columns, not Flotilla's SQL.
    let target = format!("file:{}/exports/o.ndjson", leader.dir.display());
    let (ok, _, err) = cli(&[
        "pipeline",
        "add",
        "--node",
        &host_port,
        "big",
        "--source",
        "orders",
        "--where",
        "totl > 100",
        "--target",
        &target,
    ]);
    assert!(!ok);
    assert!(
        err.contains(
            "the row predicate \"totl > 100\" does not work on table orders: no such column: totl"
        ) && err.contains("the columns are id, total")
            && !err.contains("SELECT")
            && !err.contains("offset"),
        "{err}"
    );

    // pipeline list has a header, status shows the pipeline, pipeline status its details.
    let (ok, _, err) = cli(&[
        "pipeline",
        "add",
        "--node",
        &host_port,
        "big",
        "--source",
        "orders",
        "--where",
        "total > 100",
        "--target",
        &target,
    ]);
    assert!(ok, "{err}");
    let (_, out, _) = cli(&["pipeline", "list", "--node", &host_port]);
    assert!(
        out.starts_with("pipeline") && out.contains("backlog") && out.contains("big"),
        "{out}"
    );
    let (_, out, _) = cli(&["status", "--node", &host_port]);
    assert!(out.contains("pipeline") && out.contains("big"), "{out}");
    let (_, out, _) = cli(&["pipeline", "status", "--node", &host_port, "big"]);
    assert!(
        out.contains("delivered rows") && out.contains("source") && out.contains("orders"),
        "{out}"
    );

    // A node's log file carries no colour codes and no Debug quoting of plain values.
    let _ = position(&lc).await;
    let log = std::fs::read_to_string(leader.dir.with_extension("log")).unwrap();
    assert!(!log.contains('\x1b'), "colour codes in the log file");
    assert!(log.contains("role=leader"), "{log}");

    // A first start that fails pins no id: the same directory starts under another one.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("fresh");
    let out = Command::new(exe())
        .args([
            "serve",
            "--id",
            "first",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            &busy,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"));
    let second =
        flotilla_testkit::cluster::LocalNode::start(&exe(), dir.path(), "fresh", None, &[]).await;
    assert!(second.is_ok(), "{:?}", second.err());
}
