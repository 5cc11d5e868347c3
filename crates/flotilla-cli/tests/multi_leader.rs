//! Multi-leader on real processes: three data centres (eu, us, asia), each a leader with
//! `--dc`, exchanging over TCP proxies (so that a partition needs no privileges), and a
//! follower of eu. Concurrent conflicting writes, a counter column, a delete racing an update,
//! asia cut off and writing on its own, healing: every data centre and the follower converge
//! to the same rows, every conflict is recorded under the same id everywhere, and the counter
//! holds exactly the sum of every increment.

mod common;

use common::*;
use flotilla_client::Client;
use flotilla_testkit::cluster::{free_ports, LocalNode};
use flotilla_testkit::data_centres::DataCentres;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DCS: [&str; 3] = ["eu", "us", "asia"];

/// Three data centres, eu first (it makes the cluster; the others take its cluster id).
async fn deployment(root: &std::path::Path) -> DataCentres {
    DataCentres::start(&exe(), root, &DCS, &[])
        .await
        .unwrap_or_else(|e| panic!("starting the data centres: {e:#}"))
}

fn client(d: &DataCentres, i: usize) -> Client {
    Client::new(&d.leaders[i].url)
}

async fn write(c: &Client, sql: &str) {
    exec(c, json!([{ "sql": sql }])).await;
}

/// Waits (bounded) until every client answers `sql` the same, and every data centre's links
/// have read everything; returns the agreed rows.
async fn converged(clients: &[Client], sql: &str) -> Value {
    let started = Instant::now();
    loop {
        let mut answers = Vec::new();
        for c in clients {
            // A data centre that has not got the table yet answers an error: not yet.
            answers.push(match c.post("/v1/query", &json!({ "sql": sql })).await {
                Ok(v) => v["rows"].clone(),
                Err(e) => json!(format!("{e:#}")),
            });
        }
        let agree = answers.windows(2).all(|w| w[0] == w[1]);
        let mut caught_up = true;
        for c in clients {
            let s = status(c).await;
            if let Some(peers) = s["multi_leader"]["peers"].as_array() {
                caught_up &= peers
                    .iter()
                    .all(|p| p["lag_transactions"] == 0 && p["link"] == "up");
            }
        }
        if agree && caught_up {
            return answers.remove(0);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no convergence within 30 s: {answers:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_data_centres_converge_through_conflicts_and_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let d = deployment(dir.path()).await;
    let (eu, us, asia) = (client(&d, 0), client(&d, 1), client(&d, 2));
    let follower = start(dir.path(), "eu-follower", Some(&d.leaders[0].url)).await;
    let fc = Client::new(&follower.url);

    // One cluster: the data centres took eu's cluster id.
    let eu_status = status(&eu).await;
    for c in [&us, &asia] {
        assert_eq!(status(c).await["cluster_id"], eu_status["cluster_id"]);
    }

    write(&eu, "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER NOT NULL DEFAULT 0, note TEXT)").await;
    let eu_url = d.leaders[0].url.clone();
    for (column, policy) in [("qty", "counter"), ("note", "keep-both")] {
        let (ok, out, err) = cli(&[
            "conflicts",
            "policy",
            "--node",
            &eu_url,
            "--table",
            "items",
            "--column",
            column,
            "--policy",
            policy,
        ]);
        assert!(ok, "{out} {err}");
    }
    // A policy that does not fit is refused when given.
    let (ok, _, err) = cli(&[
        "conflicts",
        "policy",
        "--node",
        &eu_url,
        "--table",
        "items",
        "--column",
        "name",
        "--policy",
        "counter",
    ]);
    assert!(!ok && err.contains("counter adds numbers"), "{err}");
    let items = "SELECT id, name, qty FROM items ORDER BY id";
    write(
        &eu,
        "INSERT INTO items (id, name, qty) VALUES ('a', 'apple', 100), ('b', 'pear', 1)",
    )
    .await;
    let all = [eu.clone(), us.clone(), asia.clone()];
    converged(&all, items).await;

    // Concurrently in each data centre (none hears of the others' writes until the links are
    // back): renames and increments of `a`; eu deletes `b` while us renames it.
    d.cut(None, true);
    let mut increments = 0i64;
    let mut tasks = Vec::new();
    for (i, c) in all.iter().enumerate() {
        let c = c.clone();
        let name = format!("apple-{}", DCS[i]);
        tasks.push(tokio::spawn(async move {
            write(
                &c,
                &format!(
                    "UPDATE items SET name = '{name}', qty = qty + {}, note = 'by {name}' WHERE id = 'a'",
                    i + 1
                ),
            )
            .await;
        }));
        increments += i as i64 + 1;
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::join!(
        write(&eu, "DELETE FROM items WHERE id = 'b'"),
        write(&us, "UPDATE items SET name = 'nashi' WHERE id = 'b'")
    );
    d.cut(None, false);
    let rows1 = converged(&all, items).await;
    assert_eq!(
        rows1[0][2],
        json!(100 + increments),
        "counter: every increment counted once: {rows1}"
    );
    assert!(
        !rows1.as_array().unwrap().iter().any(|r| r[0] == "b"),
        "delete wins: {rows1}"
    );

    // asia cut off: both sides keep taking writes.
    d.cut(Some(2), true);
    write(
        &asia,
        "INSERT INTO items (id, name, qty) VALUES ('c', 'cherry', 5)",
    )
    .await;
    write(
        &asia,
        "UPDATE items SET qty = qty + 10, name = 'asia apple' WHERE id = 'a'",
    )
    .await;
    write(&eu, "UPDATE items SET qty = qty + 20 WHERE id = 'a'").await;
    write(
        &us,
        "INSERT INTO items (id, name, qty) VALUES ('d', 'date', 7)",
    )
    .await;
    increments += 30;
    let s = status(&asia).await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let s2 = status(&asia).await;
    assert!(
        s2["multi_leader"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["link"] == "down"),
        "asia's links show down while cut off: {s} {s2}"
    );
    d.cut(Some(2), false);

    let final_rows = converged(&all, items).await;
    assert_eq!(final_rows[0][2], json!(100 + increments), "{final_rows}");
    let ids: Vec<&str> = final_rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["a", "c", "d"]);

    // keep-both: the note's conflicts stay open until someone writes the value to keep; the
    // write travels and every data centre marks them resolved.
    let open_q =
        "SELECT id FROM flotilla_conflicts WHERE col = 'note' AND resolved = 0 ORDER BY id";
    let open = rows(&eu, open_q).await;
    let first = open[0][0]
        .as_str()
        .expect("an open keep-both conflict")
        .to_string();
    let (ok, out, err) = cli(&["conflicts", "list", "--node", &eu_url, "--open"]);
    assert!(
        ok && out.contains(&first) && out.contains("keep-both"),
        "{out} {err}"
    );
    let (ok, out, err) = cli(&[
        "conflicts",
        "resolve",
        "--node",
        &eu_url,
        &first,
        "--keep",
        "remote",
    ]);
    assert!(ok, "{out} {err}");
    converged(&all, "SELECT id, note FROM items ORDER BY id").await;
    let started = Instant::now();
    for c in &all {
        while !rows(c, open_q).await.as_array().unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "still open: {}",
                rows(c, open_q).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Resolving it again would overwrite whatever was chosen since: refused unless forced.
    let again = [
        "conflicts",
        "resolve",
        "--node",
        &eu_url,
        &first,
        "--keep",
        "local",
    ];
    let (ok, out, err) = cli(&again);
    assert!(!ok && err.contains("resolved already"), "{out} {err}");
    let forced: Vec<&str> = again.iter().copied().chain(["--force"]).collect();
    let (ok, out, err) = cli(&forced);
    assert!(ok, "{out} {err}");
    converged(&all, "SELECT id, note FROM items ORDER BY id").await;

    // The follower of eu has what eu has, merged changes included.
    let want = rows(&eu, items).await;
    let started = Instant::now();
    while rows(&fc, items).await != want {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the follower lags"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every conflict is a row, under the same ids in every data centre.
    let q = "SELECT id, tbl, row_key, coalesce(col, '(row)'), policy, value FROM flotilla_conflicts ORDER BY id";
    let conflicts = rows(&eu, q).await;
    assert!(conflicts.as_array().unwrap().len() >= 3, "{conflicts}");
    let by_id = "SELECT id FROM flotilla_conflicts ORDER BY id";
    let eu_ids = rows(&eu, by_id).await;
    for c in [&us, &asia] {
        let theirs = rows(c, by_id).await;
        // Three-way conflicts pair up differently by arrival order; two-way ones match.
        let common = theirs
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| eu_ids.as_array().unwrap().contains(r))
            .count();
        assert!(common >= 2, "shared conflict ids: eu {eu_ids} vs {theirs}");
    }
    assert!(
        conflicts
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r[3] == "(row)" && r[4] == "delete-wins"),
        "{conflicts}"
    );
    // The follower shows the conflicts too.
    assert_eq!(rows(&fc, by_id).await, eu_ids);
    // It followed every commit (stamped ones included) with its one first copy.
    let metrics = reqwest::get(format!("{}/metrics", follower.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("flotilla_bootstraps_total 1\n"),
        "eu's physical follower copied eu's database again:\n{metrics}"
    );

    // Status names each peer's link and the version vector.
    let s = status(&eu).await;
    let vv = &s["multi_leader"]["version_vector"];
    for dc in DCS {
        assert!(vv[dc].as_u64().unwrap() > 0, "{s}");
    }

    // eu prunes its resolved conflicts (all older than 0 s); its follower sees them go, and the
    // other data centres keep theirs.
    let resolved = "SELECT count(*) FROM flotilla_conflicts WHERE resolved = 1";
    let before = rows(&eu, resolved).await;
    assert_ne!(before, json!([[0]]));
    let (ok, out, err) = cli(&[
        "conflicts",
        "prune",
        "--node",
        &d.leaders[0].url,
        "--older-than",
        "0s",
    ]);
    assert!(
        ok && out.contains(&format!("pruned {}", before[0][0])),
        "{out}{err}"
    );
    assert_eq!(rows(&eu, resolved).await, json!([[0]]));
    assert_ne!(rows(&us, resolved).await, json!([[0]]));
    let started = Instant::now();
    while rows(&fc, resolved).await != json!([[0]]) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "eu's follower kept them"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_multi_leader_settings_are_refused_with_their_reason() {
    let (ok, _, err) = cli(&[
        "serve",
        "--id",
        "x",
        "--data",
        "/tmp/nowhere-x",
        "--peer-dc",
        "us=127.0.0.1:1",
    ]);
    assert!(!ok && err.contains("--dc"), "{err}");
    let (ok, _, err) = cli(&[
        "serve",
        "--id",
        "x",
        "--data",
        "/tmp/nowhere-x",
        "--dc",
        "eu",
        "--peer-dc",
        "eu=127.0.0.1:1",
    ]);
    assert!(!ok && err.contains("own data centre"), "{err}");
    let (ok, _, err) = cli(&[
        "serve",
        "--id",
        "x",
        "--data",
        "/tmp/nowhere-x",
        "--dc",
        "eu",
        "--exchange-topology",
        "mesh",
    ]);
    assert!(!ok && err.contains("all-to-all, star or ring"), "{err}");
    let (ok, _, err) = cli(&[
        "serve",
        "--id",
        "x",
        "--data",
        "/tmp/nowhere-x",
        "--dc",
        "eu",
        "--follow",
        "127.0.0.1:1",
    ]);
    assert!(!ok && err.contains("cannot also follow"), "{err}");

    // A table without a primary key, or with an INTEGER one, cannot be made on a data
    // centre's leader: the statement is refused with the reason (400), nothing else fails.
    let dir = tempfile::tempdir().unwrap();
    let node = LocalNode::start(&exe(), dir.path(), "solo", None, &["--dc", "eu"])
        .await
        .unwrap();
    let c = Client::new(&node.url);
    for (sql, why) in [
        ("CREATE TABLE loose (x)", "no PRIMARY KEY"),
        (
            "CREATE TABLE n (id INTEGER PRIMARY KEY, x)",
            "INTEGER PRIMARY KEY",
        ),
    ] {
        let err = c
            .post("/v1/execute", &json!({ "statements": [{ "sql": sql }] }))
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(why) && text.contains("400"), "{sql}: {text}");
    }
    write(
        &c,
        "CREATE TABLE fine (id TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(16)))), x)",
    )
    .await;
    write(&c, "INSERT INTO fine (x) VALUES (1)").await;
    assert_eq!(rows(&c, "SELECT count(*) FROM fine").await, json!([[1]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_the_data_centre_named_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let asia = LocalNode::start(&exe(), dir.path(), "asia", None, &["--dc", "asia"])
        .await
        .unwrap();
    let plain = LocalNode::start(&exe(), dir.path(), "plain", None, &[])
        .await
        .unwrap();
    let us_peer = format!("us={}", asia.url);
    let ap_peer = format!("ap={}", plain.url);
    let eu = LocalNode::start(
        &exe(),
        dir.path(),
        "eu",
        None,
        &["--dc", "eu", "--peer-dc", &us_peer, "--peer-dc", &ap_peer],
    )
    .await
    .unwrap();
    let c = Client::new(&eu.url);
    let s = wait_status(&c, "both links refused", |s| {
        s["multi_leader"]["peers"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["phase"] == "refused"))
    })
    .await;
    let peers = s["multi_leader"]["peers"].as_array().unwrap();
    let err = |dc: &str| {
        peers.iter().find(|p| p["dc"] == dc).unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        err("us").contains("is data centre asia, not us"),
        "{}",
        err("us")
    );
    assert!(
        err("ap").contains("not a data centre's leader"),
        "{}",
        err("ap")
    );

    // asia is a data centre of its own deployment (it started alone): eu, restarted with it as
    // a peer, refuses to exchange with it.
    let mut eu = eu;
    eu.kill().await;
    let asia_peer = format!("asia={}", asia.url);
    let eu = LocalNode::start(
        &exe(),
        dir.path(),
        "eu",
        None,
        &["--dc", "eu", "--peer-dc", &asia_peer],
    )
    .await
    .unwrap();
    let s = wait_status(&Client::new(&eu.url), "the link to asia refused", |s| {
        s["multi_leader"]["peers"][0]["phase"] == "refused"
    })
    .await;
    let why = s["multi_leader"]["peers"][0]["error"].to_string();
    assert!(why.contains("of another deployment"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_centres_with_authentication_share_their_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let (eu_url, us_url) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let to_us = format!("us={us_url}");
    let to_eu = format!("eu={eu_url}");
    // eu first, alone: it makes the cluster and its admin token.
    let mut eu = LocalNode::start_on(
        &exe(),
        dir.path(),
        "eu",
        &eu_url,
        &["--dc", "eu", "--auth", "--peer-dc", &to_us],
    )
    .await
    .unwrap();
    let admin = std::fs::read_to_string(eu.dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let ec = Client::with_token(&eu.url, &admin);
    let made = ec
        .post(
            "/v1/tokens",
            &json!({ "role": "replicate", "name": "links" }),
        )
        .await
        .unwrap();
    let links = made["token"].as_str().unwrap().to_string();
    // us joins with the replication token; eu starts again with it.
    let us = LocalNode::start_on(
        &exe(),
        dir.path(),
        "us",
        &us_url,
        &[
            "--dc",
            "us",
            "--auth",
            "--peer-dc",
            &to_eu,
            "--replication-token",
            &links,
        ],
    )
    .await
    .unwrap();
    eu.kill().await;
    let eu2 = LocalNode::start_on(
        &exe(),
        dir.path(),
        "eu",
        &eu_url,
        &[
            "--dc",
            "eu",
            "--auth",
            "--peer-dc",
            &to_us,
            "--replication-token",
            &links,
        ],
    )
    .await
    .unwrap();
    let ec = Client::with_token(&eu2.url, &admin);
    write(&ec, "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)").await;
    write(&ec, "INSERT INTO notes VALUES ('n1', 'from eu')").await;
    // eu's admin token works in us: tokens travel like data.
    let uc = Client::with_token(&us.url, &admin);
    let started = Instant::now();
    loop {
        if let Ok(v) = uc
            .post("/v1/query", &json!({ "sql": "SELECT body FROM notes" }))
            .await
        {
            if v["rows"] == json!([["from eu"]]) {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "eu's write and token did not reach us"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And us's writes reach eu.
    exec(
        &uc,
        json!([{ "sql": "INSERT INTO notes VALUES ('n2', 'from us')" }]),
    )
    .await;
    let started = Instant::now();
    while rows(&ec, "SELECT count(*) FROM notes").await != json!([[2]]) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "us's write did not reach eu"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Without a token, nothing.
    assert!(Client::new(&us.url)
        .post("/v1/query", &json!({ "sql": "SELECT 1" }))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_data_centre_goes_on_after_its_peer_trimmed_what_it_passed_by() {
    let dir = tempfile::tempdir().unwrap();
    // Small log segments, so that the peer trims its log soon after this data centre read it.
    let config = dir.path().join("small-segments.toml");
    std::fs::write(&config, "[log]\nsegment-mib = 1\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    let ports = free_ports(2);
    let (eu_url, us_url) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let (to_us, to_eu) = (format!("us={us_url}"), format!("eu={eu_url}"));
    let eu_args = ["--config", &config, "--dc", "eu", "--peer-dc", &to_us];
    let mut eu = LocalNode::start_on(&exe(), dir.path(), "eu", &eu_url, &eu_args)
        .await
        .unwrap();
    let us = LocalNode::start_on(
        &exe(),
        dir.path(),
        "us",
        &us_url,
        &["--config", &config, "--dc", "us", "--peer-dc", &to_eu],
    )
    .await
    .unwrap();
    let (ec, uc) = (Client::new(&eu.url), Client::new(&us.url));
    write(&ec, "CREATE TABLE t (id TEXT PRIMARY KEY, pad TEXT)").await;
    let started = Instant::now();
    while c_rows(&uc, "SELECT count(*) FROM sqlite_schema WHERE name = 't'").await != json!([[1]]) {
        assert!(started.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write(&uc, "INSERT INTO t VALUES ('us-1', 'x')").await;
    // eu's big transactions come back to it in us's log, where eu's link passes them by.
    for i in 0..40 {
        exec(&ec, json!([{ "sql": "INSERT INTO t VALUES (?1, hex(randomblob(100000)))", "params": [format!("eu-{i}")] }])).await;
    }
    let s = wait_status(&uc, "us trims its log", |s| {
        s["log"]["first_lsn"].as_u64().unwrap_or(0) > 20
    })
    .await;
    let trimmed_to = s["log"]["first_lsn"].clone();
    eu.kill().await;
    let eu = LocalNode::start_on(&exe(), dir.path(), "eu", &eu_url, &eu_args)
        .await
        .unwrap();
    let ec = Client::new(&eu.url);
    write(&uc, "INSERT INTO t VALUES ('us-2', 'after eu restarted')").await;
    let started = Instant::now();
    loop {
        if c_rows(&ec, "SELECT count(*) FROM t WHERE id = 'us-2'").await == json!([[1]]) {
            break;
        }
        let st = status(&ec).await;
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "us's write after eu restarted did not arrive (us's log starts at {trimmed_to}): {}",
            st["multi_leader"]["peers"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Its database remembers that it is eu's: started without --dc, or as another data centre,
    // it is refused before it listens.
    let mut eu = eu;
    eu.kill().await;
    let data = eu.dir.to_str().unwrap().to_string();
    let (ok, _, err) = cli(&[
        "serve",
        "--id",
        "eu",
        "--data",
        &data,
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!ok && err.contains("start it with --dc eu"), "{err}");
    let (ok, _, err) = cli(&[
        "serve",
        "--id",
        "eu",
        "--data",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--dc",
        "asia",
    ]);
    assert!(
        !ok && err.contains("is data centre eu's, not asia's"),
        "{err}"
    );
}

async fn c_rows(c: &Client, sql: &str) -> Value {
    match c.post("/v1/query", &json!({ "sql": sql })).await {
        Ok(v) => v["rows"].clone(),
        Err(e) => json!(format!("{e:#}")),
    }
}

/// The member of a cluster that leads it and takes writes (bounded wait).
async fn cluster_leader(members: &[LocalNode], up: &[usize]) -> usize {
    let started = Instant::now();
    loop {
        for &i in up {
            let c = Client::new(&members[i].url);
            let leads = c
                .get("/v1/cluster")
                .await
                .is_ok_and(|v| v["role"] == "leader");
            // …and its data centre is ready (its multi-leader tables made).
            if leads && c.get("/v1/dc").await.is_ok() {
                return i;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no member of the cluster leads within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A data centre whose leader is a failover cluster: eu is three voters (`--cluster` with
/// `--dc eu`), us a single leader. They exchange; eu's leader is SIGKILLed; another member of
/// eu takes over the leadership, and the exchange with it — what us wrote meanwhile arrives, what
/// eu's new leader writes reaches us, a conflict made across the failover is recorded once, and
/// both data centres (and eu's remaining member) end with the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_centre_that_is_a_failover_cluster_goes_on_exchanging_after_its_leader_dies() {
    let dir = tempfile::tempdir().unwrap();
    let us_port = free_ports(1)[0];
    let us_url = format!("127.0.0.1:{us_port}");
    // eu reaches us through a proxy: cut, it holds eu's writes back from us (below, to make two
    // updates concurrent however fast the exchange is).
    let eu_to_us = flotilla_testkit::proxy::Proxy::start(us_url.clone())
        .await
        .unwrap();
    let to_us = format!("us={}", eu_to_us.url);
    let mut eu = flotilla_testkit::cluster::start_voters(
        &exe(),
        dir.path(),
        3,
        &["--dc", "eu", "--peer-dc", &to_us],
    )
    .await
    .unwrap();
    let first = cluster_leader(&eu, &[0, 1, 2]).await;
    // us names any member of eu: its link finds the one that leads.
    let to_eu = format!("eu={}", eu[(first + 1) % 3].url);
    let us = LocalNode::start_on(
        &exe(),
        dir.path(),
        "us",
        &us_url,
        &["--dc", "us", "--peer-dc", &to_eu],
    )
    .await
    .unwrap();
    let uc = Client::new(&us.url);
    let ec = Client::new(&eu[first].url);
    // us joined eu's deployment (not eu's cluster: eu's members agree on a cluster id of their
    // own).
    let (eu_dc, us_dc) = (
        ec.get("/v1/dc").await.unwrap(),
        uc.get("/v1/dc").await.unwrap(),
    );
    assert_eq!(eu_dc["deployment"], us_dc["deployment"], "{eu_dc} {us_dc}");
    assert_ne!(eu_dc["cluster_id"], us_dc["cluster_id"], "{eu_dc} {us_dc}");

    write(&ec, "CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)").await;
    write(&ec, "INSERT INTO t VALUES ('a', 'eu-1'), ('b', 'eu-1')").await;
    let started = Instant::now();
    while c_rows(&uc, "SELECT count(*) FROM t").await != json!([[2]]) {
        let s = status(&uc).await;
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "eu's rows did not reach us: {}",
            s["multi_leader"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write(&uc, "INSERT INTO t VALUES ('c', 'us-1')").await;
    converged(&[ec.clone(), uc.clone()], "SELECT * FROM t ORDER BY id").await;

    // eu's leader dies; us writes on, and updates a row eu's next leader updates too.
    eu[first].kill().await;
    write(&uc, "INSERT INTO t VALUES ('d', 'us-2')").await;
    let up: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let second = cluster_leader(&eu, &up).await;
    assert_ne!(second, first);
    let ec = Client::new(&eu[second].url);
    // Concurrent: eu's update cannot reach us before us makes its own.
    eu_to_us.partition();
    write(&ec, "UPDATE t SET v = 'eu-2' WHERE id = 'a'").await;
    write(&uc, "UPDATE t SET v = 'us-3' WHERE id = 'a'").await;
    eu_to_us.heal();
    write(&ec, "INSERT INTO t VALUES ('e', 'eu-after-failover')").await;
    let agreed = converged(&[ec.clone(), uc.clone()], "SELECT * FROM t ORDER BY id").await;
    let ids: Vec<&str> = agreed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e"], "{agreed}");
    // The concurrent updates of 'a' are one conflict, the same on both sides.
    let sql = "SELECT id, tbl, col, value FROM flotilla_conflicts WHERE tbl = 't'";
    let conflicts = converged(&[ec.clone(), uc.clone()], sql).await;
    assert_eq!(conflicts.as_array().unwrap().len(), 1, "{conflicts}");
    // eu's other member holds what its leader merged.
    let other = (0..3).find(|&i| i != first && i != second).unwrap();
    let oc = Client::new(&eu[other].url);
    let started = Instant::now();
    while c_rows(&oc, "SELECT * FROM t ORDER BY id").await != agreed {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "eu's remaining member did not converge: {}",
            c_rows(&oc, "SELECT * FROM t ORDER BY id").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A member restarted without --dc, or with another, is refused: leading, it would not
    // stamp its writes for us.
    eu[other].kill().await;
    let data = eu[other].dir.to_str().unwrap().to_string();
    let id = eu[other].id.clone();
    for extra in [&[][..], &["--dc", "asia"][..]] {
        let mut args = vec![
            "serve",
            "--id",
            &id,
            "--data",
            &data,
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let (ok, _, err) = cli(&args);
        assert!(!ok && err.contains("with --dc eu"), "{extra:?}: {err}");
    }
}

/// A data centre added to a deployment whose log no longer holds its past (retention trimmed
/// it): the new data centre starts from a copy of a peer's database and reads its log from
/// the copy's position on — every row, its merge state and the recorded conflicts are there,
/// and the two go on exchanging both ways. A data centre whose data directory was lost cannot
/// come back under its old name (its new transactions would be taken for its old ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_centre_added_later_starts_from_a_copy_of_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small-segments.toml");
    std::fs::write(&config, "[log]\nsegment-mib = 1\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    let ports = free_ports(2);
    let (eu_url, asia_url) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let (to_asia, to_eu) = (format!("asia={asia_url}"), format!("eu={eu_url}"));
    let eu = LocalNode::start_on(
        &exe(),
        dir.path(),
        "eu",
        &eu_url,
        &["--config", &config, "--dc", "eu", "--peer-dc", &to_asia],
    )
    .await
    .unwrap();
    let ec = Client::new(&eu.url);
    write(&ec, "CREATE TABLE t (id TEXT PRIMARY KEY, pad TEXT)").await;
    write(&ec, "CREATE UNIQUE INDEX t_pad ON t (pad)").await;
    for i in 0..30 {
        exec(&ec, json!([{ "sql": "INSERT INTO t VALUES (?1, hex(randomblob(100000)))", "params": [format!("eu-{i}")] }])).await;
    }
    // Nothing holds eu's log back: it trims what no one needs.
    wait_status(&ec, "eu trims its log", |s| {
        s["log"]["first_lsn"].as_u64().unwrap_or(0) > 5
    })
    .await;
    let asia_args = ["--config", &config, "--dc", "asia", "--peer-dc", &to_eu];
    let mut asia = LocalNode::start_on(&exe(), dir.path(), "asia", &asia_url, &asia_args)
        .await
        .unwrap();
    let ac = Client::new(&asia.url);
    write(&ec, "INSERT INTO t VALUES ('eu-after', 'a')").await;
    write(&ac, "INSERT INTO t VALUES ('asia-1', 'b')").await;
    let agreed = converged(
        &[ec.clone(), ac.clone()],
        "SELECT id, length(pad) FROM t ORDER BY id",
    )
    .await;
    assert_eq!(agreed.as_array().unwrap().len(), 32, "{agreed}");
    // Same deployment, and asia is a data centre of its own (not a second eu).
    let (e, a) = (
        ec.get("/v1/dc").await.unwrap(),
        ac.get("/v1/dc").await.unwrap(),
    );
    assert_eq!(e["deployment"], a["deployment"]);
    assert_eq!(a["dc"], "asia");

    // asia's data directory is lost; started again under its old name, it is refused.
    asia.kill().await;
    std::fs::remove_dir_all(&asia.dir).unwrap();
    let data = asia.dir.to_str().unwrap().to_string();
    let (ok, _, err) = cli_bounded(
        &[
            "serve",
            "--id",
            "asia",
            "--data",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--config",
            &config,
            "--dc",
            "asia",
            "--peer-dc",
            &to_eu,
        ],
        Duration::from_secs(60),
    );
    assert!(!ok && err.contains("comes back under a new name"), "{err}");
    assert!(
        !std::path::Path::new(&data).join("db.sqlite").exists(),
        "the refused copy was left behind"
    );
}

/// A data centre copied from one peer reads another peer's log from where the copied one had
/// merged it; that log may have dropped those records meanwhile (they were the copied
/// peer's own, passed by). The link takes up where the log starts, since nothing it dropped
/// is missing here (an outside probe found the link stopped for good instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_takes_up_a_link_whose_position_the_peer_log_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small-segments.toml");
    std::fs::write(&config, "[log]\nsegment-mib = 1\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    let ports = free_ports(3);
    let urls: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let (to_eu, to_us) = (format!("eu={}", urls[0]), format!("us={}", urls[1]));
    let eu_args = ["--config", &config, "--dc", "eu", "--peer-dc", &to_us];
    let eu = LocalNode::start_on(&exe(), dir.path(), "eu", &urls[0], &eu_args)
        .await
        .unwrap();
    let ec = Client::new(&eu.url);
    write(&ec, "CREATE TABLE t (id TEXT PRIMARY KEY, pad TEXT)").await;
    let us_args = ["--config", &config, "--dc", "us", "--peer-dc", &to_eu];
    let us = LocalNode::start_on(&exe(), dir.path(), "us", &urls[1], &us_args)
        .await
        .unwrap();
    let uc = Client::new(&us.url);
    write(&uc, "INSERT INTO t VALUES ('us-1', 'x')").await;
    converged(&[ec.clone(), uc.clone()], "SELECT id FROM t ORDER BY id").await;
    // Only eu writes now: us's log fills with eu's transactions (which eu's link passes by)
    // and drops its start, us's own transaction with it.
    for i in 0..30 {
        exec(&ec, json!([{ "sql": "INSERT INTO t VALUES (?1, hex(randomblob(100000)))", "params": [format!("eu-{i}")] }])).await;
    }
    wait_status(&uc, "us trims its log", |s| {
        s["log"]["first_lsn"].as_u64().unwrap_or(0) > 5
    })
    .await;
    // us's newest transaction is after where its log now starts; the one before it (us-1)
    // was dropped, and asia has it from the copy: us says so (`own_before`).
    write(&uc, "INSERT INTO t VALUES ('us-2', 'z')").await;
    let asia_args = [
        "--config",
        &config,
        "--dc",
        "asia",
        "--peer-dc",
        &to_eu,
        "--peer-dc",
        &to_us,
    ];
    let asia = LocalNode::start_on(&exe(), dir.path(), "asia", &urls[2], &asia_args)
        .await
        .unwrap();
    let ac = Client::new(&asia.url);
    write(&uc, "INSERT INTO t VALUES ('us-after', 'y')").await;
    let agreed = converged(
        &[ec.clone(), uc.clone(), ac.clone()],
        "SELECT id, length(pad) FROM t ORDER BY id",
    )
    .await;
    assert_eq!(agreed.as_array().unwrap().len(), 33, "{agreed}");
    let status = ac.get("/v1/status").await.unwrap();
    let peers = status["multi_leader"]["peers"].to_string();
    assert!(!peers.contains("bootstrap failed"), "{peers}");
}

/// A data centre that never wrote leaves no transaction in its peers' databases; started again
/// under its name after its data directory was lost, it is refused all the same: its peers
/// have read its log (an outside probe found its later writes never reached them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_centre_that_never_wrote_cannot_come_back_under_its_old_name() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let urls: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let (to_eu, to_asia) = (format!("eu={}", urls[0]), format!("asia={}", urls[1]));
    let eu = LocalNode::start_on(
        &exe(),
        dir.path(),
        "eu",
        &urls[0],
        &["--dc", "eu", "--peer-dc", &to_asia],
    )
    .await
    .unwrap();
    let ec = Client::new(&eu.url);
    write(&ec, "CREATE TABLE t (id TEXT PRIMARY KEY)").await;
    let mut asia = LocalNode::start_on(
        &exe(),
        dir.path(),
        "asia",
        &urls[1],
        &["--dc", "asia", "--peer-dc", &to_eu],
    )
    .await
    .unwrap();
    // asia merges eu's write; eu's link reads asia's log past it.
    write(&ec, "INSERT INTO t VALUES ('eu-1')").await;
    wait_status(&ec, "eu reads asia's log", |s| {
        s["multi_leader"]["peers"][0]["read_through"]
            .as_u64()
            .unwrap_or(0)
            > 0
    })
    .await;
    asia.kill().await;
    std::fs::remove_dir_all(&asia.dir).unwrap();
    let data = asia.dir.to_str().unwrap().to_string();
    let (ok, _, err) = cli_bounded(
        &[
            "serve",
            "--id",
            "asia",
            "--data",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--dc",
            "asia",
            "--peer-dc",
            &to_eu,
        ],
        Duration::from_secs(60),
    );
    assert!(
        !ok && err.contains("existed before") && err.contains("comes back under a new name"),
        "{err}"
    );
    assert!(!std::path::Path::new(&data).join("db.sqlite").exists());
}
