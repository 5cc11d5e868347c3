//! Failover on real processes: three `flotilla serve --cluster` members on loopback. Writers
//! with idempotency keys write in `semi-sync` and `quorum` modes while the leader is SIGKILLed
//! again and again; each round a new leader takes writes, and the killed member comes back as a
//! follower. A history checker goes over every operation (acknowledged, failed, unknown): every
//! acknowledged write is on every member exactly once, an unknown one at most once, and nothing
//! else is — on the members and on two learners (a physical and a logical follower) that find
//! each new leader by themselves. `FLOTILLA_FAILOVER_ROUNDS` sets the rounds (default 3;
//! `docs/testing.md` runs 50).

mod common;

use common::*;
use flotilla_client::Client;
use flotilla_testkit::cluster::{start_voters, LocalNode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

struct Cluster {
    members: Vec<LocalNode>,
    urls: Vec<String>,
}

impl Cluster {
    async fn start(root: &std::path::Path) -> Cluster {
        Cluster::start_with(root, &[]).await
    }

    async fn start_with(root: &std::path::Path, extra: &[&str]) -> Cluster {
        let members = start_voters(&exe(), root, 3, extra)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let urls = members.iter().map(|m| m.url.clone()).collect();
        Cluster { members, urls }
    }

    /// The member every running member agrees leads (bounded wait).
    async fn leader(&self, up: &[usize]) -> usize {
        let started = Instant::now();
        loop {
            let mut seen = BTreeSet::new();
            let mut leader = None;
            for &i in up {
                match Client::new(&self.urls[i]).get("/v1/cluster").await {
                    Ok(c) => {
                        seen.insert(c["leader_url"].as_str().unwrap_or("").to_string());
                        if c["role"] == "leader" {
                            leader = Some(i);
                        }
                    }
                    Err(_) => {
                        seen.insert(String::new());
                    }
                }
            }
            if let Some(l) = leader {
                // Agreed, and the leader's database is open for writes.
                let writable = Client::new(&self.urls[l])
                    .get("/v1/status")
                    .await
                    .is_ok_and(|s| s["role"] == "leader");
                if seen.len() == 1 && seen.contains(&self.urls[l]) && writable {
                    return l;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no agreed leader among {up:?} in 30 s: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acked,
    Failed,
    Unknown,
}

/// One write of row `k`, with its idempotency key, sent to whoever leads (following a 421),
/// retried with the same key while the outcome is unknown (bounded).
async fn write(urls: &[String], k: u64, durability: &str) -> Outcome {
    let body = json!({
        "statements": [{"sql": "INSERT INTO t(k) VALUES (?1)", "params": [k]}],
        "idempotency_key": format!("w{k}"),
        "durability": durability,
        "timeout_ms": 2000,
    });
    let mut outcome = Outcome::Failed;
    for attempt in 0..40 {
        let url = &urls[attempt % urls.len()];
        let resp = reqwest::Client::new()
            .post(format!("{url}/v1/execute"))
            .json(&body)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let Ok(resp) = resp else {
            // Not sent, or sent and not answered: the outcome is unknown until a keyed retry.
            outcome = Outcome::Unknown;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        match (status, v["error"]["code"].as_str()) {
            (200, _) => return Outcome::Acked,
            (421, _) => continue,
            (_, Some("outcome_unknown" | "unavailable" | "not_replicated")) => {
                outcome = Outcome::Unknown
            }
            (_, Some(code)) => panic!("write {k}: {status} {code}: {v}"),
            _ => outcome = Outcome::Unknown,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outcome
}

/// The rows `k` a member holds, with how many times each.
async fn rows_on(url: &str, min_position: &str) -> BTreeMap<u64, u64> {
    let v = Client::new(url)
        .post(
            "/v1/query",
            &json!({"sql": "SELECT k, count(*) FROM t GROUP BY k", "min_position": min_position,
                    "timeout_ms": 30000}),
        )
        .await
        .unwrap_or_else(|e| panic!("reading {url}: {e:#}"));
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_the_leader_again_and_again_loses_no_acknowledged_write() {
    let rounds: usize = std::env::var("FLOTILLA_FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path()).await;
    let all = [0usize, 1, 2];
    let first = c.leader(&all).await;
    let created = Client::new(&c.urls[first])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER)"}],
                    "durability": "quorum"}),
        )
        .await
        .unwrap();
    assert_eq!(created["durability"], "quorum");
    // Learners: a physical and a logical follower, each started with one member's URL (the
    // first one is killed in round 0). They find whoever leads, round after round.
    let mut learners = Vec::new();
    for (id, via, extra) in [
        ("p1", 0usize, &[][..]),
        ("g1", 1, &["--log", "logical"][..]),
    ] {
        let l = LocalNode::start(&exe(), dir.path(), id, Some(&c.urls[via]), extra)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        learners.push(l);
    }

    let mut history: BTreeMap<u64, Outcome> = BTreeMap::new();
    let mut k = 0u64;
    let mut failover_ms = Vec::new();
    for round in 0..rounds {
        let leader = c.leader(&all).await;
        // Writers run while the leader is killed.
        let urls = c.urls.clone();
        let start_k = k;
        let writers = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut handles = Vec::new();
            for w in 0..4u64 {
                let urls = urls.clone();
                handles.push(tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for i in 0..15u64 {
                        let key = start_k + w * 15 + i + 1;
                        let d = if key.is_multiple_of(2) {
                            "quorum"
                        } else {
                            "semi-sync"
                        };
                        mine.push((key, write(&urls, key, d).await));
                    }
                    mine
                }));
            }
            for h in handles {
                out.extend(h.await.unwrap());
            }
            out
        });
        tokio::time::sleep(Duration::from_millis(150 + 100 * round as u64)).await;
        let killed_at = Instant::now();
        c.members[leader].kill().await;
        let up: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
        if round == 0 {
            // `flotilla sql` through a survivor waits the failover out by itself.
            let (ok, _, err) = cli(&[
                "sql",
                "--node",
                &c.urls[up[0]],
                "INSERT INTO t(k) VALUES (0)",
            ]);
            assert!(ok, "flotilla sql during a failover: {err}");
        }
        let next = c.leader(&up).await;
        assert_ne!(next, leader);
        failover_ms.push(killed_at.elapsed().as_millis());
        for (key, outcome) in writers.await.unwrap() {
            history.insert(key, outcome);
        }
        k = start_k + 60;
        // The killed member comes back and follows.
        c.members[leader].restart().await.unwrap();
    }
    let leader = c.leader(&all).await;
    // A last write through the final leader: every member must hold everything before it.
    let last = Client::new(&c.urls[leader])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t(k) VALUES (0)"}], "durability": "quorum"}),
        )
        .await
        .unwrap();
    let pos = last["position"].as_str().unwrap().to_string();
    let acked = history.values().filter(|o| **o == Outcome::Acked).count();
    assert!(
        acked > rounds * 20,
        "too few writes acknowledged: {history:?}"
    );
    let learner_urls: Vec<String> = learners.iter().map(|l| l.url.clone()).collect();
    for url in c.urls.iter().chain(&learner_urls) {
        let rows = rows_on(url, &pos).await;
        for (key, outcome) in &history {
            let n = rows.get(key).copied().unwrap_or(0);
            match outcome {
                Outcome::Acked => {
                    assert_eq!(n, 1, "{url}: acknowledged write {key} held {n} times")
                }
                Outcome::Unknown => assert!(n <= 1, "{url}: write {key} held {n} times"),
                Outcome::Failed => assert_eq!(n, 0, "{url}: failed write {key} is there"),
            }
        }
        let extra: Vec<&u64> = rows
            .keys()
            .filter(|r| **r != 0 && !history.contains_key(r))
            .collect();
        assert!(extra.is_empty(), "{url}: rows nobody wrote: {extra:?}");
    }
    // Each learner streams from the final leader, which it found by itself.
    for url in &learner_urls {
        let status = Client::new(url).get("/v1/status").await.unwrap();
        assert_eq!(status["leader"], c.urls[leader].as_str(), "{url}: {status}");
    }
    // `flotilla cluster status` on any member names the same leader and every member.
    let name = format!("n{}", leader + 1);
    for url in &c.urls {
        let (ok, out, err) = cli(&["cluster", "status", "--node", url]);
        assert!(ok, "{err}");
        assert!(out.contains(&format!("leader {name},")), "{out}");
        for n in ["n1", "n2", "n3"] {
            assert!(out.lines().any(|l| l.starts_with(n)), "{out}");
        }
    }
    eprintln!(
        "{rounds} failovers ({acked} of {} writes acknowledged); leader agreed again after {failover_ms:?} ms",
        history.len()
    );
}

/// With both other members down, an `async` write is answered (the leader's log holds it) but
/// not committed: a read on the leader that sees it is held and then refused, never answered
/// with data a failover could drop; `quorum` waits. Once a member is back, both complete.
#[tokio::test(flavor = "multi_thread")]
async fn the_leader_never_answers_a_read_with_what_the_cluster_has_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path()).await;
    let all = [0usize, 1, 2];
    let l = c.leader(&all).await;
    let lc = Client::new(&c.urls[l]);
    lc.post(
        "/v1/execute",
        &json!({"statements": [{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER)"}],
                "durability": "quorum"}),
    )
    .await
    .unwrap();
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != l).collect();
    for &o in &others {
        c.members[o].kill().await;
    }
    let w = lc
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t(k) VALUES (1)"}], "durability": "async"}),
        )
        .await
        .unwrap();
    assert_eq!(w["durability"], "async");
    let (status, body) = raw(
        &c.urls[l],
        "POST",
        "/v1/query",
        Some("application/json"),
        serde_json::to_vec(&json!({"sql": "SELECT count(*) FROM t", "timeout_ms": 1000})).unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not committed"),
        "{body}"
    );
    // A quorum write waits for a majority: it is answered once a member is back.
    let urls = c.urls.clone();
    let pending = tokio::spawn(async move {
        Client::new(&urls[l])
            .post(
                "/v1/execute",
                &json!({"statements": [{"sql": "INSERT INTO t(k) VALUES (2)"}],
                        "durability": "quorum", "idempotency_key": "q2"}),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Never a success without a quorum (an error is possible: a leader that hears no quorum for
    // an election timeout steps down, and says so).
    let early = pending.is_finished();
    c.members[others[0]].restart().await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("answered once a member is back")
        .unwrap();
    if early {
        assert!(
            answered.is_err(),
            "a quorum write succeeded without a quorum: {answered:?}"
        );
    }
    // The leader may have lost its leadership meanwhile (check-quorum): then the outcome is
    // unknown and a keyed retry tells.
    let outcome = match answered {
        Ok(v) => v,
        Err(_) => {
            let l2 = c.leader(&[l, others[0]]).await;
            Client::new(&c.urls[l2])
                .post(
                    "/v1/execute",
                    &json!({"statements": [{"sql": "INSERT INTO t(k) VALUES (2)"}],
                            "durability": "quorum", "idempotency_key": "q2"}),
                )
                .await
                .unwrap()
        }
    };
    let pos = outcome["position"].as_str().unwrap().to_string();
    let l2 = c.leader(&[l, others[0]]).await;
    let rows = rows_on(&c.urls[l2], &pos).await;
    assert_eq!(rows.get(&2), Some(&1), "{rows:?}");
}

/// `flotilla promote` hands the leadership to another member while writers write: each
/// handover completes, and no acknowledged write is lost or doubled.
#[tokio::test(flavor = "multi_thread")]
async fn promote_hands_over_without_losing_an_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path()).await;
    let all = [0usize, 1, 2];
    let l = c.leader(&all).await;
    Client::new(&c.urls[l])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER)"}],
                    "durability": "quorum"}),
        )
        .await
        .unwrap();
    // A learner started on the first leader: after each handover (the old leader lives on and
    // steps down) it streams from the new one.
    let learner = LocalNode::start(&exe(), dir.path(), "p1", Some(&c.urls[l]), &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Four writers, so that transactions are in flight at each handover.
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let urls = c.urls.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 1..=40u64 {
                    let k = w * 1000 + i;
                    out.push((k, write(&urls, k, "quorum").await));
                }
                out
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let copies_before = bootstraps(&c.urls).await;
    let mut leader = l;
    for step in 1..=2usize {
        let to = (leader + step) % 3;
        let (ok, out, err) = cli(&["promote", "--node", &c.urls[to]]);
        assert!(ok, "promote to n{}: {err}", to + 1);
        assert!(out.contains(&format!("n{} leads", to + 1)), "{out}");
        leader = c.leader(&all).await;
        assert_eq!(leader, to);
    }
    // The writer paused before each handover: no old leader was left with a transaction the
    // new one lacks, so none had to copy a database (nor saved divergent transactions).
    assert_eq!(
        bootstraps(&c.urls).await,
        copies_before,
        "a switchover copied a database"
    );
    for m in &c.members {
        assert!(!m.dir.join("divergent.ndjson").exists(), "{}", m.id);
    }
    // A member that is down does not take over: the answer says so, and the leadership stays.
    let down = (leader + 1) % 3;
    let down_url = c.urls[down].clone();
    let mut c = c;
    c.members[down].kill().await;
    let (status, body) = raw(
        &c.urls[leader],
        "POST",
        "/v1/cluster/promote",
        Some("application/json"),
        serde_json::to_vec(&json!({"member": format!("n{}", down + 1)})).unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not take over"),
        "{body}"
    );
    c.members[down].restart().await.unwrap();
    let _ = down_url;
    leader = c.leader(&all).await;
    // Promoting a name that is no member is refused, naming the members.
    let (status, body) = raw(
        &c.urls[leader],
        "POST",
        "/v1/cluster/promote",
        Some("application/json"),
        br#"{"member": "n9"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("n1, n2, n3"),
        "{body}"
    );
    let mut history: BTreeMap<u64, Outcome> = BTreeMap::new();
    for w in writers {
        history.extend(w.await.unwrap());
    }
    let last = Client::new(&c.urls[leader])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t(k) VALUES (0)"}], "durability": "quorum"}),
        )
        .await
        .unwrap();
    let pos = last["position"].as_str().unwrap().to_string();
    for url in c.urls.iter().chain([&learner.url]) {
        let rows = rows_on(url, &pos).await;
        for (key, outcome) in &history {
            let n = rows.get(key).copied().unwrap_or(0);
            match outcome {
                Outcome::Acked => {
                    assert_eq!(n, 1, "{url}: acknowledged write {key} held {n} times")
                }
                _ => assert!(n <= 1, "{url}: write {key} held {n} times"),
            }
        }
    }
    let status = Client::new(&learner.url).get("/v1/status").await.unwrap();
    assert_eq!(status["leader"], c.urls[leader].as_str(), "{status}");
}

/// `semi-sync` asking for two other members, with one of the two others down: the write is
/// answered `not_replicated` after `timeout-ms` (as configured), a keyed retry is not answered
/// 200 either while the copies are missing, and once the member is back the retry succeeds at
/// the first position.
#[tokio::test(flavor = "multi_thread")]
async fn semi_sync_on_a_cluster_never_answers_with_fewer_copies_than_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("durability.toml");
    std::fs::write(
        &config,
        "[durability]\nsemi-sync-replicas = 2\ntoo-few-replicas = \"error\"\ntimeout-ms = 1500\n",
    )
    .unwrap();
    let mut c = Cluster::start_with(dir.path(), &["--config", config.to_str().unwrap()]).await;
    let all = [0usize, 1, 2];
    let l = c.leader(&all).await;
    Client::new(&c.urls[l])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER)"}],
                    "durability": "quorum"}),
        )
        .await
        .unwrap();
    let d = status(&Client::new(&c.urls[l])).await;
    assert_eq!(d["durability"]["semi_sync_replicas"], 2, "{d}");
    let down = (l + 1) % 3;
    c.members[down].kill().await;
    let body = serde_json::to_vec(&json!({
        "statements": [{"sql": "INSERT INTO t(k) VALUES (7)"}],
        "idempotency_key": "k7", "durability": "semi-sync"}))
    .unwrap();
    let (status, answer) = raw(
        &c.urls[l],
        "POST",
        "/v1/execute",
        Some("application/json"),
        body.clone(),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (503, Some("not_replicated")),
        "{answer}"
    );
    let (status, answer) = raw(
        &c.urls[l],
        "POST",
        "/v1/execute",
        Some("application/json"),
        body.clone(),
    )
    .await;
    assert_eq!(
        status, 503,
        "a retry was acknowledged without the copies: {answer}"
    );
    c.members[down].restart().await.unwrap();
    let mut ok = None;
    for _ in 0..40 {
        let (status, answer) = raw(
            &c.urls[l],
            "POST",
            "/v1/execute",
            Some("application/json"),
            body.clone(),
        )
        .await;
        if status == 200 {
            ok = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let answer = ok.expect("acknowledged once the member is back");
    assert_eq!(answer["durability"], "semi-sync");
    let pos = answer["position"].as_str().unwrap().to_string();
    for url in &c.urls {
        let rows = rows_on(url, &pos).await;
        assert_eq!(rows.get(&7), Some(&1), "{url}: {rows:?}");
    }
}

/// How many databases each member copied (`flotilla_bootstraps_total`; counted since the
/// process started).
async fn bootstraps(urls: &[String]) -> Vec<u64> {
    let mut out = Vec::new();
    for url in urls {
        let text = reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // Shown by a member while it follows; a leader copies nothing.
        let n = text
            .lines()
            .find_map(|l| l.strip_prefix("flotilla_bootstraps_total "))
            .unwrap_or("0");
        out.push(n.trim().parse().unwrap());
    }
    out
}

/// The URL of the leader every one of `urls` names (bounded wait).
async fn agreed_leader<'a>(urls: impl Iterator<Item = &'a String> + Clone) -> String {
    let started = Instant::now();
    loop {
        let mut seen = BTreeSet::new();
        for url in urls.clone() {
            let named = match Client::new(url).get("/v1/cluster").await {
                Ok(v) => v["leader_url"].as_str().unwrap_or("").to_string(),
                Err(_) => String::new(),
            };
            seen.insert(named);
        }
        if seen.len() == 1 && !seen.contains("") {
            return seen.into_iter().next().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no agreed leader in 30 s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A query on `url` with extra request fields: the status and the answer.
async fn query(url: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"sql": "SELECT count(*), coalesce(max(k), 0) FROM t"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/query"))
        .json(&body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap_or_else(|e| panic!("query on {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Read guarantees on a cluster: a linearizable read on any member sees every write that was
/// acknowledged (quorum) before it began, though followers apply asynchronously; a leader cut
/// off from the others cannot confirm it still leads, and refuses linearizable reads instead
/// of answering from what may be a deposed leader's copy; `max_lag_ms` refuses a member or a
/// learner that has been without a leader for longer; a learner sends linearizable reads to
/// the leader (421).
#[tokio::test(flavor = "multi_thread")]
async fn linearizable_and_bounded_staleness_reads_on_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path()).await;
    let all = [0usize, 1, 2];
    let l = c.leader(&all).await;
    let lc = Client::new(&c.urls[l]);
    lc.post(
        "/v1/execute",
        &json!({"statements": [{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER)"}],
                "durability": "quorum"}),
    )
    .await
    .unwrap();
    let learner = LocalNode::start(&exe(), dir.path(), "p1", Some(&c.urls[l]), &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    for k in 1..=15u64 {
        lc.post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t(k) VALUES (?1)", "params": [k]}],
                    "durability": "quorum"}),
        )
        .await
        .unwrap();
        for url in &c.urls {
            let (status, v) = query(url, json!({"consistency": "linearizable"})).await;
            assert_eq!(status, 200, "{url}: {v}");
            assert_eq!(v["rows"][0][1], k, "{url} missed write {k}: {v}");
        }
    }
    // The consensus in metrics: the leader's role, and how far each other member holds the log.
    let metrics = reqwest::get(format!("{}/metrics", c.urls[l]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "flotilla_cluster_role{role=\"leader\"} 1",
        "flotilla_cluster_has_leader 1",
        "flotilla_cluster_lag_ms 0",
        "flotilla_cluster_member_matched_lsn{member=",
    ] {
        assert!(metrics.contains(line), "no {line} in {metrics}");
    }
    let (status, v) = query(&learner.url, json!({"consistency": "linearizable"})).await;
    assert_eq!(status, 421, "{v}");
    assert_eq!(v["error"]["leader"], c.urls[l].as_str(), "{v}");
    for url in c.urls.iter().chain([&learner.url]) {
        let (status, v) = query(url, json!({"max_lag_ms": 5000, "min_position": "0/0"})).await;
        assert_eq!(status, 200, "{url} is current: {v}");
    }

    // The leader cut off from the others (both killed).
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != l).collect();
    for &o in &others {
        c.members[o].kill().await;
    }
    let (status, v) = query(
        &c.urls[l],
        json!({"consistency": "linearizable", "timeout_ms": 3000}),
    )
    .await;
    assert_eq!(status, 503, "a leader without a majority answered: {v}");
    assert_eq!(v["error"]["code"], "unavailable", "{v}");
    // A local read is still served: it makes no promise about freshness.
    assert_eq!(query(&c.urls[l], json!({})).await.0, 200);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for url in [&c.urls[l], &learner.url] {
        let (status, v) = query(url, json!({"max_lag_ms": 1000})).await;
        assert_eq!(status, 503, "{url}, leaderless for seconds, answered: {v}");
        assert_eq!(v["error"]["code"], "too_stale", "{v}");
        assert!(v["error"]["lag_ms"].as_u64().unwrap() > 1000, "{v}");
    }

    for &o in &others {
        c.members[o].restart().await.unwrap();
    }
    let l = c.leader(&all).await;
    let (status, v) = query(&c.urls[l], json!({"consistency": "linearizable"})).await;
    assert_eq!((status, &v["rows"][0][1]), (200, &json!(15)), "{v}");
}

/// Membership changes on real processes: a fourth node joins through a member that does not
/// lead (`serve --join`, the request follows the 421 to the leader), copies the data as a
/// learner, becomes a voter (`cluster add-voter`), and counts: after a voter is removed and
/// the leader killed, the new voter helps elect a leader and commit. Refused with clear errors:
/// removing the leader, removing a voter when the voters left could not commit, a new member
/// as a voter straight away, a URL taken by another member.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_joins_becomes_a_voter_and_a_voter_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path()).await;
    let all = [0usize, 1, 2];
    let l = c.leader(&all).await;
    let lc = Client::new(&c.urls[l]);
    lc.post(
        "/v1/execute",
        &json!({"statements": [{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER)"},
                               {"sql": "INSERT INTO t(k) VALUES (1), (2), (3)"}],
                "durability": "quorum"}),
    )
    .await
    .unwrap();
    let via = (l + 1) % 3;
    let n4 = LocalNode::start(&exe(), dir.path(), "n4", None, &["--join", &c.urls[via]])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let w = lc
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t(k) VALUES (4)"}], "durability": "quorum"}),
        )
        .await
        .unwrap();
    let pos = w["position"].as_str().unwrap().to_string();
    assert_eq!(
        rows_on(&n4.url, &pos).await.len(),
        4,
        "the learner copied the data"
    );
    let view = lc.get("/v1/cluster").await.unwrap();
    let n4_entry = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "n4")
        .unwrap_or_else(|| panic!("n4 is not listed: {view}"))
        .clone();
    assert_eq!(n4_entry["voter"], false, "{view}");
    assert_eq!(n4_entry["url"], n4.url.as_str(), "{view}");

    // Bad requests, each refused with what is wrong.
    for (body, status, says) in [
        (
            json!({"member": "n9", "url": "127.0.0.1:1", "voter": true}),
            400,
            "learner first",
        ),
        (
            json!({"member": "n9", "url": n4.url}),
            409,
            "URL of member n4",
        ),
        (json!({"member": "n9"}), 400, "needs its URL"),
        (
            json!({"member": "bad name!", "url": "127.0.0.1:1"}),
            400,
            "member",
        ),
        // Joining again under a member's name (a node that lost its data, say) is refused.
        (
            json!({"member": "n4", "url": n4.url}),
            409,
            "member already",
        ),
    ] {
        let (got, v) = raw(
            &c.urls[l],
            "POST",
            "/v1/cluster/members",
            Some("application/json"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(got, status, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{body}: {v}"
        );
    }
    // With one of the three voters down, removing another would leave two voters of which
    // one answers: refused, and the leader keeps leading.
    let (a, b) = ((l + 1) % 3, (l + 2) % 3);
    c.members[a].kill().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let b_name = format!("n{}", b + 1);
    let (status, v) = raw(
        &c.urls[l],
        "DELETE",
        &format!("/v1/cluster/members/{b_name}"),
        None,
        vec![],
    )
    .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "no_majority_left", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only 1 answer"),
        "{v}"
    );
    c.members[a].restart().await.unwrap();
    let l = c.leader(&all).await;
    // A learner that does not answer cannot become a voter (it would count toward majorities
    // it cannot help make); it is removed again.
    let ghost = format!("127.0.0.1:{}", flotilla_testkit::cluster::free_ports(1)[0]);
    lc.post(
        "/v1/cluster/members",
        &json!({"member": "ghost", "url": ghost}),
    )
    .await
    .unwrap();
    let (ok, _, err) = cli(&[
        "cluster",
        "add-voter",
        "--node",
        &c.urls[l],
        "--member",
        "ghost",
    ]);
    assert!(!ok && err.contains("holds the log through lsn 0"), "{err}");
    let (ok, _, err) = cli(&[
        "cluster", "remove", "--node", &c.urls[l], "--member", "ghost",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&[
        "cluster",
        "add-voter",
        "--node",
        &c.urls[via],
        "--member",
        "n4",
    ]);
    assert!(ok, "add-voter: {err}");
    assert!(out.contains("n4 is a voter"), "{out}");
    let view = lc.get("/v1/cluster").await.unwrap();
    assert!(
        view["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "n4" && m["voter"] == true),
        "{view}"
    );

    // The leader cannot be removed; nor a voter when the voters left could not commit.
    let leader_name = format!("n{}", l + 1);
    let (ok, _, err) = cli(&[
        "cluster",
        "remove",
        "--node",
        &c.urls[l],
        "--member",
        &leader_name,
    ]);
    assert!(!ok && err.contains("leads the cluster"), "{err}");
    // Four voters now: any of them may lead (n4 too).
    let leader_url = agreed_leader(c.urls.iter().chain([&n4.url])).await;
    // Remove a voter that does not lead, then kill one more of the first three (the leader,
    // if it is one of them): the two voters left, n4 among them, elect a leader and commit.
    let gone = (0..3).find(|&i| c.urls[i] != leader_url).unwrap();
    let gone_name = format!("n{}", gone + 1);
    let (ok, out, err) = cli(&[
        "cluster",
        "remove",
        "--node",
        &leader_url,
        "--member",
        &gone_name,
    ]);
    assert!(ok, "remove: {err}");
    assert!(out.contains(&format!("{gone_name} left")), "{out}");
    let view = Client::new(&leader_url).get("/v1/cluster").await.unwrap();
    assert!(
        !view["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == gone_name.as_str()),
        "{view}"
    );
    // Each member acts on the change once it applied it: wait until every voter left did
    // (with the old membership, two of four voters could elect no one).
    let started = Instant::now();
    for url in c
        .urls
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != gone)
        .map(|(_, u)| u)
        .chain([&n4.url])
    {
        loop {
            let v = Client::new(url).get("/v1/cluster").await.unwrap();
            let listed = v["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == gone_name.as_str());
            if !listed {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{url} still lists {gone_name}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The removed member hears from no leader any more: it says how stale it may be.
    let started = Instant::now();
    loop {
        let (status, v) = query(&c.urls[gone], json!({"max_lag_ms": 500})).await;
        if status == 503 && v["error"]["code"] == "too_stale" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the removed member still claims to be current: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.members[gone].kill().await;
    let victim = (0..3)
        .filter(|&i| i != gone)
        .find(|&i| c.urls[i] == leader_url)
        .unwrap_or_else(|| (0..3).find(|&i| i != gone).unwrap());
    c.members[victim].kill().await;
    let survivor = (0..3).find(|&i| i != gone && i != victim).unwrap();
    let started = Instant::now();
    let mut last = String::new();
    let answer = loop {
        let mut done = None;
        for url in [&c.urls[survivor], &n4.url] {
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/execute"))
                .json(
                    &json!({"statements": [{"sql": "INSERT INTO t(k) VALUES (5)"}],
                              "durability": "quorum", "idempotency_key": "after-removal"}),
                )
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 200 => {
                    done = Some(r.json::<Value>().await.unwrap());
                    break;
                }
                Ok(r) => {
                    last = format!(
                        "{url}: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        if let Some(v) = done {
            break v;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let tail = |name: &str| {
                let log = std::fs::read_to_string(dir.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            panic!(
                "the voters left (n{} and n4) did not commit within 30 s (last answer: {last})\n--- n{}:\n{}\n--- n4:\n{}",
                survivor + 1,
                survivor + 1,
                tail(&format!("n{}", survivor + 1)),
                tail("n4")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pos = answer["position"].as_str().unwrap();
    for url in [&c.urls[survivor], &n4.url] {
        assert_eq!(rows_on(url, pos).await.len(), 5, "{url}");
    }
}

/// A trigger pipeline on a cluster delivers from whichever member leads: it is made on the
/// leader (a change that replicates like any other), and across a SIGKILL of the leader every
/// committed row reaches the file target exactly once, in order (the cursor lives in the
/// target, and every leader of the cluster is the same incarnation to it).
#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_goes_on_from_the_new_leader_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let config = dir.path().join("members.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline-targets]\nallow = [\"file:{}\"]\n",
            shared.display()
        ),
    )
    .unwrap();
    let mut c = Cluster::start_with(dir.path(), &["--config", config.to_str().unwrap()]).await;
    let all = [0usize, 1, 2];
    let l = c.leader(&all).await;
    let lc = Client::new(&c.urls[l]);
    let quorum = |sql: String| json!({"statements": [{"sql": sql}], "durability": "quorum"});
    lc.post(
        "/v1/execute",
        &quorum("CREATE TABLE orders(id INTEGER PRIMARY KEY, total REAL)".into()),
    )
    .await
    .unwrap();
    let out = shared.join("orders.ndjson");
    lc.post(
        "/v1/pipelines",
        &json!({"name": "p1", "source": "orders", "target": format!("file:{}", out.display())}),
    )
    .await
    .unwrap();
    for id in 1..=20 {
        lc.post(
            "/v1/execute",
            &quorum(format!("INSERT INTO orders VALUES ({id}, 1)")),
        )
        .await
        .unwrap();
    }
    pipeline_drained(&lc, "p1").await;
    c.members[l].kill().await;
    let up: Vec<usize> = all.iter().copied().filter(|&i| i != l).collect();
    let next = c.leader(&up).await;
    let nc = Client::new(&c.urls[next]);
    for id in 21..=40 {
        nc.post(
            "/v1/execute",
            &quorum(format!("INSERT INTO orders VALUES ({id}, 1)")),
        )
        .await
        .unwrap();
    }
    pipeline_drained(&nc, "p1").await;
    let ids: Vec<i64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["row"]["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, (1..=40).collect::<Vec<i64>>());
}

/// Found by the outside probe: members that had not yet copied the first leader's database
/// when the whole cluster was SIGKILLed could be elected after the restart and start an empty
/// database, dropping an acknowledged quorum write everywhere. A member without a database now
/// makes one only while the history holds no transaction; otherwise it hands over and copies.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_never_copied_the_database_does_not_start_the_history_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path()).await;
    let all = [0usize, 1, 2];
    let l = c.leader(&all).await;
    let first = Client::new(&c.urls[l])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER)"},
                                   {"sql": "INSERT INTO t(k) VALUES (42)"}],
                    "durability": "quorum", "idempotency_key": "first"}),
        )
        .await
        .unwrap();
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != l).collect();
    for &o in &others {
        c.members[o].kill().await;
    }
    c.members[l].kill().await;
    for &o in &others {
        c.members[o].restart().await.unwrap();
    }
    // Whether or not they copied the database before the kill, they may lead only with it:
    // either one leads with the row, or they wait for the old leader.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    c.members[l].restart().await.unwrap();
    let leader = c.leader(&all).await;
    let again = write(&c.urls, 7, "quorum").await;
    assert_eq!(again, Outcome::Acked);
    // The keyed retry answers the first outcome: the same position.
    let retried = Client::new(&c.urls[leader])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER)"},
                                   {"sql": "INSERT INTO t(k) VALUES (42)"}],
                    "durability": "quorum", "idempotency_key": "first"}),
        )
        .await
        .unwrap();
    assert_eq!(retried["position"], first["position"], "{retried}");
    let last = Client::new(&c.urls[leader])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t(k) VALUES (0)"}], "durability": "quorum"}),
        )
        .await
        .unwrap();
    let pos = last["position"].as_str().unwrap().to_string();
    for url in &c.urls {
        let rows = rows_on(url, &pos).await;
        assert_eq!(
            rows.get(&42),
            Some(&1),
            "{url} lost the acknowledged write: {rows:?}"
        );
        assert_eq!(rows.get(&7), Some(&1), "{url}: {rows:?}");
    }
}

/// Found by the second outside probe: a member restarted without `--cluster` ran as a single
/// leader beside the cluster (and later served a diverged copy), and a member that lost its data
/// directory could vote and elect a leader without an acknowledged write. A data directory that
/// is a member stays one whatever the flags; a member with an empty log votes for no candidate
/// whose log holds entries.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_restarted_wrongly_neither_forks_nor_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path()).await;
    let all = [0usize, 1, 2];
    let l = c.leader(&all).await;
    let quorum = |sql: &str| json!({"statements": [{"sql": sql}], "durability": "quorum"});
    Client::new(&c.urls[l])
        .post(
            "/v1/execute",
            &quorum("CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER)"),
        )
        .await
        .unwrap();
    // Restarted without --cluster: still a member (a follower), not a second leader.
    let (a, b) = ((l + 1) % 3, (l + 2) % 3);
    c.members[a].kill().await;
    let listen = c.urls[a].trim_start_matches("http://").to_string();
    let mut bare = LocalNode::start_on(&exe(), dir.path(), &format!("n{}", a + 1), &listen, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let v = Client::new(&bare.url).get("/v1/cluster").await.unwrap();
    assert_ne!(v["role"], "leader", "{v}");
    let (status, v) = raw(
        &bare.url,
        "POST",
        "/v1/execute",
        Some("application/json"),
        serde_json::to_vec(&json!({"statements": [{"sql": "INSERT INTO t(k) VALUES (-1)"}]}))
            .unwrap(),
    )
    .await;
    // A follower: 421 to the leader, or 503 while it learns who leads; never the write.
    assert!(
        matches!(status, 421 | 503),
        "a member restarted without --cluster took a write: {status} {v}"
    );
    bare.kill().await;
    drop(bare);
    c.members[a].restart().await.unwrap();
    c.leader(&all).await;

    // B down; a quorum write held by the leader and A; then the leader and A down, A's data
    // directory lost, A back empty, B back: A must not help B (which lacks the write) lead.
    c.members[b].kill().await;
    let w = write(&c.urls, 42, "quorum").await;
    assert_eq!(w, Outcome::Acked);
    c.members[l].kill().await;
    c.members[a].kill().await;
    std::fs::remove_dir_all(&c.members[a].dir).unwrap();
    c.members[a].restart().await.unwrap();
    c.members[b].restart().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    c.members[l].restart().await.unwrap();
    let leader = c.leader(&all).await;
    let last = Client::new(&c.urls[leader])
        .post("/v1/execute", &quorum("INSERT INTO t(k) VALUES (0)"))
        .await
        .unwrap();
    let pos = last["position"].as_str().unwrap().to_string();
    for url in &c.urls {
        let rows = rows_on(url, &pos).await;
        assert_eq!(
            rows.get(&42),
            Some(&1),
            "{url} lost the acknowledged write: {rows:?}"
        );
    }
}

/// A learner whose leader is frozen (SIGSTOP: its connections stay open, it answers nothing)
/// finds the new leader by itself and streams its writes while the old one is still frozen.
#[tokio::test(flavor = "multi_thread")]
async fn a_learner_leaves_a_frozen_leader_for_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path()).await;
    let all = [0usize, 1, 2];
    let l = c.leader(&all).await;
    let created = Client::new(&c.urls[l])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER)"}],
                    "durability": "quorum"}),
        )
        .await
        .unwrap();
    let learner = LocalNode::start(&exe(), dir.path(), "p1", Some(&c.urls[l]), &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The learner follows the leader (its first copy done) before the leader freezes.
    rows_on(&learner.url, created["position"].as_str().unwrap()).await;
    let pid = c.members[l].pid().unwrap() as libc::pid_t;
    // SAFETY: kill(2) on a child process this test started and still owns.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != l).collect();
    let next = c.leader(&others).await;
    let w = Client::new(&c.urls[next])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t(k) VALUES (7)"}], "durability": "quorum"}),
        )
        .await
        .unwrap();
    let pos = w["position"].as_str().unwrap().to_string();
    let rows = rows_on(&learner.url, &pos).await;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(rows.get(&7), Some(&1), "{rows:?}");
    let status = Client::new(&learner.url).get("/v1/status").await.unwrap();
    assert_eq!(status["leader"], c.urls[next].as_str(), "{status}");
}
