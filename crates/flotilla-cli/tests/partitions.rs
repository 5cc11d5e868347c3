//! Network partitions between real cluster members (iptables on loopback, each member in a
//! process group of its own: see `flotilla_testkit::firewall`). Needs root; installs iptables
//! when missing.
//!
//! - The leader cut off from both others: a new leader takes quorum writes; the old one gets
//!   none acknowledged and refuses linearizable reads; after healing every member holds every
//!   acknowledged write and none of the old leader's unacknowledged one.
//! - One way only (the leader's messages go out, nothing comes back): it steps down, the others
//!   elect a leader among themselves.
//! - The leader cut off from one of two followers: it keeps committing with the other, and the
//!   cut-off follower catches up after healing.

mod common;

use common::*;
use flotilla_client::Client;
use flotilla_testkit::cluster::{free_ports, LocalNode};
use flotilla_testkit::firewall::Firewall;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

struct Net {
    /// Dropping one kills its process.
    members: Vec<LocalNode>,
    urls: Vec<String>,
    ports: Vec<u16>,
    gids: Vec<u32>,
    fw: Firewall,
}

impl Net {
    /// `None` (the test is skipped, saying why) where partitions cannot be made: not root, or
    /// no working iptables (as the tmpfs tests skip without root).
    async fn start(root: &std::path::Path) -> Option<Net> {
        let fw = match Firewall::new() {
            Ok(fw) => fw,
            Err(e) => {
                eprintln!("SKIPPED: cannot partition processes here: {e:#}");
                return None;
            }
        };
        let ports = free_ports(3);
        // Groups of this test process only (its pid in them): no other test's rules match.
        let base = 20_000 + (std::process::id() % 10_000) * 3;
        let gids: Vec<u32> = (0..3).map(|i| base + i).collect();
        let list = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("n{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let listen = format!("127.0.0.1:{p}");
            let id = format!("n{}", i + 1);
            let args = ["--cluster", list.as_str()];
            members.push(
                LocalNode::start_on_as(&exe(), root, &id, &listen, &args, Some(gids[i]))
                    .await
                    .unwrap_or_else(|e| panic!("starting {id}: {e:#}")),
            );
        }
        let urls = members.iter().map(|m| m.url.clone()).collect();
        Some(Net {
            members,
            urls,
            ports,
            gids,
            fw,
        })
    }

    /// Drops what member `from` sends to member `to`.
    fn cut(&mut self, from: usize, to: usize) {
        self.fw
            .block(self.gids[from], self.ports[to])
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn isolate(&mut self, i: usize) {
        for j in 0..3 {
            if j != i {
                self.cut(i, j);
                self.cut(j, i);
            }
        }
    }

    /// A member of `among` that leads with its database open, as every member of `among`
    /// agrees (bounded wait).
    async fn leader(&self, among: &[usize]) -> usize {
        let started = Instant::now();
        loop {
            let mut named = Vec::new();
            for &i in among {
                let v = Client::new(&self.urls[i]).get("/v1/cluster").await;
                named.push(
                    v.ok()
                        .and_then(|v| v["leader_url"].as_str().map(String::from)),
                );
            }
            if let Some(Some(url)) = named.first() {
                if named.iter().all(|n| n.as_deref() == Some(url)) {
                    if let Some(l) = among.iter().copied().find(|&i| self.urls[i] == *url) {
                        let writable = Client::new(url)
                            .get("/v1/status")
                            .await
                            .is_ok_and(|s| s["role"] == "leader");
                        if writable {
                            return l;
                        }
                    }
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no leader among {among:?} agreed within 30 s: {named:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One quorum write of `k` on `url` (with its key): the status and the answer.
async fn write(url: &str, k: u64, timeout_ms: u64) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/execute"))
        .json(
            &json!({"statements": [{"sql": "INSERT INTO t(k) VALUES (?1)", "params": [k]}],
                      "idempotency_key": format!("k{k}"), "durability": "quorum",
                      "timeout_ms": timeout_ms}),
        )
        .timeout(Duration::from_millis(timeout_ms + 5_000))
        .send()
        .await;
    match resp {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, json!(e.to_string())),
    }
}

/// Writes `k` through whoever leads among `among` until acknowledged (bounded).
async fn write_acked(net: &Net, among: &[usize], k: u64) -> String {
    let started = Instant::now();
    loop {
        let l = net.leader(among).await;
        let (status, v) = write(&net.urls[l], k, 3_000).await;
        if status == 200 {
            return v["position"].as_str().unwrap().to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "write {k} not acknowledged within 30 s: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each `k` a member holds, with how many times, once it applied `pos`.
async fn rows(url: &str, pos: &str) -> BTreeMap<u64, u64> {
    let v = Client::new(url)
        .post(
            "/v1/query",
            &json!({"sql": "SELECT k, count(*) FROM t GROUP BY k", "min_position": pos,
                    "timeout_ms": 30_000}),
        )
        .await
        .unwrap_or_else(|e| panic!("{url}: {e:#}"));
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
        .collect()
}

async fn create_table(net: &Net) -> usize {
    let l = net.leader(&[0, 1, 2]).await;
    Client::new(&net.urls[l])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER)"}],
                    "durability": "quorum"}),
        )
        .await
        .unwrap();
    l
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_cut_off_from_the_others_is_replaced_and_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut net) = Net::start(dir.path()).await else {
        return;
    };
    let all = [0usize, 1, 2];
    let l = create_table(&net).await;
    for k in 1..=5 {
        write_acked(&net, &all, k).await;
    }
    net.isolate(l);
    // An `async` write is answered once the leader's own log holds it: the cut-off leader
    // still does that, and the write is lost in the failover (saved aside, its position
    // refused as lost).
    let lost = reqwest::Client::new()
        .post(format!("{}/v1/execute", net.urls[l]))
        .json(
            &json!({"statements": [{"sql": "INSERT INTO t(k) VALUES (101)"}],
                      "durability": "async"}),
        )
        .send()
        .await
        .unwrap();
    let lost_status = lost.status().as_u16();
    let lost: Value = lost.json().await.unwrap();
    let (status, v) = write(&net.urls[l], 100, 2_000).await;
    assert_ne!(
        status, 200,
        "the cut-off leader acknowledged a quorum write: {v}"
    );
    let read = reqwest::Client::new()
        .post(format!("{}/v1/query", net.urls[l]))
        .json(
            &json!({"sql": "SELECT count(*) FROM t", "consistency": "linearizable",
                      "timeout_ms": 2_000}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        read.status().as_u16(),
        503,
        "a cut-off leader answered a linearizable read"
    );
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != l).collect();
    for k in 6..=10 {
        write_acked(&net, &others, k).await;
    }
    assert_ne!(net.leader(&others).await, l);
    net.fw.heal();
    let last = write_acked(&net, &all, 11).await;
    for url in &net.urls {
        let held = rows(url, &last).await;
        for k in 1..=11 {
            assert_eq!(
                held.get(&k),
                Some(&1),
                "{url}: acknowledged write {k}: {held:?}"
            );
        }
        assert!(
            !held.contains_key(&100),
            "{url} holds the cut-off leader's write: {held:?}"
        );
        assert!(
            !held.contains_key(&101),
            "{url} holds the lost async write: {held:?}"
        );
    }
    if lost_status == 200 {
        let at = lost["position"].as_str().unwrap();
        for url in &net.urls {
            let (status, v) = raw(
                url,
                "POST",
                "/v1/query",
                Some("application/json"),
                serde_json::to_vec(&json!({"sql": "SELECT 1", "min_position": at})).unwrap(),
            )
            .await;
            assert_eq!(status, 410, "{url}: min_position {at} of a lost write: {v}");
            assert_eq!(v["error"]["code"], "position_lost", "{v}");
        }
        // The old leader saved what it lost, once it learned the new history.
        let divergent = net.members[l].dir.join("divergent.ndjson");
        let started = Instant::now();
        while !std::fs::read_to_string(&divergent).is_ok_and(|d| d.contains("101")) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no divergent.ndjson with 101"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        eprintln!("the cut-off leader had stepped down before the async write: {lost}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_hears_nothing_back_steps_down() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut net) = Net::start(dir.path()).await else {
        return;
    };
    let all = [0usize, 1, 2];
    let l = create_table(&net).await;
    write_acked(&net, &all, 1).await;
    // The leader's messages still arrive; nothing it is sent does.
    for j in all.iter().copied().filter(|&j| j != l) {
        net.cut(j, l);
    }
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != l).collect();
    let next = net.leader(&others).await;
    assert_ne!(next, l);
    let (status, v) = write(&net.urls[l], 100, 2_000).await;
    assert_ne!(
        status, 200,
        "the deaf leader acknowledged a quorum write: {v}"
    );
    for k in 2..=5 {
        write_acked(&net, &others, k).await;
    }
    net.fw.heal();
    let last = write_acked(&net, &all, 6).await;
    for url in &net.urls {
        let held = rows(url, &last).await;
        for k in 1..=6 {
            assert_eq!(
                held.get(&k),
                Some(&1),
                "{url}: acknowledged write {k}: {held:?}"
            );
        }
        assert!(!held.contains_key(&100), "{url}: {held:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_cut_off_from_one_follower_keeps_committing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut net) = Net::start(dir.path()).await else {
        return;
    };
    let all = [0usize, 1, 2];
    let l = create_table(&net).await;
    let cut_off = (l + 1) % 3;
    net.cut(l, cut_off);
    net.cut(cut_off, l);
    // Every write is acknowledged (by the leader and the other follower), whoever leads.
    let mut last = String::new();
    for k in 1..=20 {
        last = write_acked(&net, &all, k).await;
    }
    net.fw.heal();
    for url in &net.urls {
        let held = rows(url, &last).await;
        for k in 1..=20 {
            assert_eq!(
                held.get(&k),
                Some(&1),
                "{url}: acknowledged write {k}: {held:?}"
            );
        }
    }
}
