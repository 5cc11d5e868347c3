//! `flotilla demo failover`: three voters of a cluster on this machine and a learner (a
//! non-voting follower); semi-sync writes from clients; the leader SIGKILLed; a new leader
//! elected; every acknowledged write checked on every member and the learner (which found the
//! new leader by itself); the old leader back as a follower; then the leader cut off from the
//! others (they are frozen with SIGSTOP), which cannot get a write acknowledged.

use anyhow::{bail, Context};
use flotilla_client::Client;
use flotilla_testkit::cluster::{start_voters, LocalNode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The member all given members agree leads, with its database open for writes.
async fn leader(urls: &[String], up: &[usize], within: Duration) -> anyhow::Result<usize> {
    let started = Instant::now();
    loop {
        let mut views = Vec::new();
        for &i in up {
            let v = Client::new(&urls[i]).get("/v1/cluster").await.ok();
            views.push(v.and_then(|v| v["leader_url"].as_str().map(str::to_string)));
        }
        if let Some(Some(l)) = views.first() {
            if views.iter().all(|v| v.as_deref() == Some(l.as_str())) {
                if let Some(i) = urls.iter().position(|u| u == l) {
                    let s = Client::new(&urls[i]).get("/v1/status").await;
                    if s.is_ok_and(|s| s["role"] == "leader") {
                        return Ok(i);
                    }
                }
            }
        }
        if started.elapsed() > within {
            bail!("the members did not agree on a leader within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one keyed write to whoever leads, following 421s and retrying with its key while the
/// outcome is unknown; `Some(member url)` once acknowledged.
async fn keyed_write(
    http: &reqwest::Client,
    urls: &[String],
    body: &Value,
    stop: &AtomicBool,
) -> Option<String> {
    let mut target = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let url = urls[target % urls.len()].clone();
        match http
            .post(format!("{url}/v1/execute"))
            .json(body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Some(url),
            Ok(r) if r.status().as_u16() == 421 => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                target = v["error"]["leader"]
                    .as_str()
                    .and_then(|l| urls.iter().position(|u| u == l))
                    .unwrap_or(target + 1);
            }
            _ => {
                target += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    }
    None
}

pub async fn run(quick: bool, keep: bool) -> anyhow::Result<()> {
    let step = if quick { 1.5 } else { 6.0 };
    let tmp = tempfile::Builder::new()
        .prefix("flotilla-demo-failover-")
        .tempdir()?;
    let root = tmp.path().to_path_buf();
    let exe = flotilla_testkit::cluster::this_exe()?;
    println!("Flotilla failover demo in {}", root.display());

    println!(
        "\n1. Starting three voters of a cluster (flotilla serve --cluster) on loopback ports"
    );
    let mut members = start_voters(&exe, &root, 3, &[]).await?;
    let urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
    let all = [0usize, 1, 2];
    let first = leader(&urls, &all, Duration::from_secs(30)).await?;
    let list = members
        .iter()
        .map(|m| format!("{}={}", m.id, m.url.trim_start_matches("http://")))
        .collect::<Vec<_>>()
        .join(",");
    println!("   --cluster {list}");
    println!("   elected: n{} leads epoch 1", first + 1);
    Client::new(&urls[first])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "CREATE TABLE orders(id INTEGER PRIMARY KEY, k INTEGER UNIQUE)"}],
                    "durability": "quorum"}),
        )
        .await
        .context("creating the table")?;
    // A learner: a follower that does not vote, started with the URL of the member that leads
    // now; when it is gone, the learner asks the others who leads and follows the new leader.
    let learner = LocalNode::start(&exe, &root, "learner", Some(&urls[first]), &[]).await?;
    println!(
        "   a learner (flotilla serve --follow {}) reads its copy",
        urls[first]
    );

    println!("\n2. Four clients write semi-sync (a majority holds each write before its answer)");
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(u64, Instant, String)>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(1));
    let mut writers = Vec::new();
    for _ in 0..4 {
        let (urls, stop, acked, next) = (urls.clone(), stop.clone(), acked.clone(), next.clone());
        writers.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .expect("client");
            while !stop.load(Ordering::Relaxed) {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let body = json!({"statements": [{"sql": "INSERT INTO orders(k) VALUES (?1)", "params": [k]}],
                                  "idempotency_key": format!("order-{k}"), "durability": "semi-sync"});
                if let Some(by) = keyed_write(&http, &urls, &body, &stop).await {
                    acked.lock().unwrap_or_else(|p| p.into_inner()).push((k, Instant::now(), by));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(step)).await;
    let before = acked.lock().unwrap_or_else(|p| p.into_inner()).len();
    println!("   {before} writes acknowledged so far");

    println!(
        "\n3. SIGKILL of the leader (n{}) while the clients write",
        first + 1
    );
    let killed_url = urls[first].clone();
    let killed_at = Instant::now();
    members[first].kill().await;
    let up: Vec<usize> = all.iter().copied().filter(|&i| i != first).collect();
    let second = leader(&urls, &up, Duration::from_secs(30)).await?;
    let first_ack = loop {
        let t = acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, t, by)| *t > killed_at && *by != killed_url)
            .map(|(_, t, _)| *t)
            .min();
        if let Some(t) = t {
            break t;
        }
        if killed_at.elapsed() > Duration::from_secs(30) {
            bail!("no write was acknowledged within 30 s of the kill");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!(
        "   n{} was elected, and acknowledged its first write {:.0} ms after the kill",
        second + 1,
        (first_ack - killed_at).as_secs_f64() * 1000.0
    );
    tokio::time::sleep(Duration::from_secs_f64(step)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let acked: Vec<(u64, Instant, String)> =
        std::mem::take(&mut *acked.lock().unwrap_or_else(|p| p.into_inner()));

    println!("\n4. The old leader comes back: it follows the new one and catches up");
    members[first].restart().await?;
    leader(&urls, &all, Duration::from_secs(30)).await?;
    let sync = Client::new(&urls[second])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO orders(k) VALUES (0)"}], "durability": "quorum"}),
        )
        .await?;
    let at = sync["position"].as_str().unwrap_or_default().to_string();
    let want: BTreeSet<u64> = acked.iter().map(|(k, _, _)| *k).collect();
    let mut copies: Vec<(String, String)> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| (format!("n{}", i + 1), u.clone()))
        .collect();
    copies.push(("the learner".into(), learner.url.clone()));
    for (name, url) in &copies {
        let v = Client::new(url)
            .post(
                "/v1/query",
                &json!({"sql": "SELECT k, count(*) FROM orders WHERE k > 0 GROUP BY k",
                        "min_position": at, "timeout_ms": 30000}),
            )
            .await?;
        let rows = v["rows"].as_array().cloned().unwrap_or_default();
        let held: BTreeSet<u64> = rows.iter().filter_map(|r| r[0].as_u64()).collect();
        let twice = rows.iter().filter(|r| r[1].as_u64() != Some(1)).count();
        let missing = want.difference(&held).count();
        if missing > 0 || twice > 0 {
            bail!("{name}: {missing} acknowledged writes missing, {twice} held twice");
        }
        println!(
            "   {name}: every one of the {} acknowledged writes is there, once",
            want.len()
        );
    }
    let following = Client::new(&learner.url).get("/v1/status").await?;
    println!(
        "   the learner follows {} by itself",
        following["leader"].as_str().unwrap_or("?")
    );

    println!("\n5. The leader cut off from the others (they are frozen): no write is acknowledged");
    let l = leader(&urls, &all, Duration::from_secs(30)).await?;
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != l).collect();
    for &o in &others {
        signal(&members[o], libc::SIGSTOP);
    }
    let attempt = Instant::now();
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/execute", urls[l]))
        .json(
            &json!({"statements": [{"sql": "INSERT INTO orders(k) VALUES (-1)"}],
                      "durability": "quorum", "idempotency_key": "cut-off"}),
        )
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let said = match answer {
        Ok(r) => {
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if status == 200 {
                bail!("the cut-off leader acknowledged a quorum write: {v}");
            }
            format!("{status} {}", v["error"]["code"].as_str().unwrap_or("?"))
        }
        Err(_) => "no answer within 10 s".into(),
    };
    println!(
        "   a quorum write to n{} was not acknowledged ({said}, after {:.1} s): it stepped down when no majority answered",
        l + 1,
        attempt.elapsed().as_secs_f64()
    );
    for &o in &others {
        signal(&members[o], libc::SIGCONT);
    }
    let after = leader(&urls, &all, Duration::from_secs(30)).await?;
    println!(
        "   the others are back: n{} leads, and the cluster takes writes again",
        after + 1
    );

    println!(
        "\nNo acknowledged write was lost across the failover; the old leader follows the new one."
    );
    if keep {
        let kept = tmp.keep();
        println!("(kept {})", kept.display());
    }
    drop(members);
    drop(learner);
    Ok(())
}

fn signal(node: &LocalNode, sig: libc::c_int) {
    if let Some(pid) = node.pid() {
        // SAFETY: kill(2) on a child process this demo started and still owns.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}
