//! `flotilla bench collab`: collaborative text through the whole server path, over loopback
//! WebSockets, with the y-websocket protocol.
//!
//! - The automerge-paper trace (259,778 keystrokes; `--quick`: its first 20,000) sent keystroke
//!   by keystroke by one client, each its own WebSocket message, as fast as the server takes
//!   them, to a document a second client follows: the time until the second client has the last
//!   keystroke (decode, merge, relay; the leader also stores them), and the text it ends with is
//!   checked against the trace's. The keystrokes' updates are made before the clock starts
//!   (what a Yjs client does per keystroke is the client's cost, not the server's).
//! - Keystroke-to-other-client latency: keystrokes paced at 500/s (a room of fast typists),
//!   p50 and p99 from send to receipt.
//! - 1,000 editors across 100 documents: all connect and sync, then each types one keystroke that
//!   its document's nine other editors receive; the time, and the server's memory per open
//!   document.
//!
//! `--compare yjs` runs the same clients against a stock Yjs server (`y-websocket`'s
//! `bin/server.js` 1.5, on Node, from web/collab's npm packages) in the same run.

use super::{percentile, say, scratch_dir, BenchArgs, Figure};
use anyhow::{bail, ensure, Context};
use flotilla_client::Client;
use flotilla_testkit::cluster::{proc_mib, this_exe, LocalNode};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as Ws;
use yrs::sync::protocol::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, OffsetKind, Options, ReadTxn, StateVector, Text, Transact};

/// The automerge-paper trace's first `n` keystrokes' updates, and the text they make (for the
/// whole trace: checked against the trace's `endContent`).
fn keystrokes(n: usize) -> anyhow::Result<(Vec<Vec<u8>>, String)> {
    let path = flotilla_testkit::traces::find("sequential/automerge-paper.json.gz")?;
    let trace = flotilla_testkit::traces::keystrokes(&path, Some(n))?;
    if let Some(end) = &trace.end_content {
        ensure!(
            *end == trace.text,
            "replaying the trace does not give its endContent"
        );
    }
    Ok((trace.updates, trace.text))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> anyhow::Result<Socket> {
    // With Nagle's algorithm a client's next keystroke waits for the ACK of its last, which a
    // server that does not echo to the sender delays (browsers set TCP_NODELAY on WebSockets).
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    Ok(ws)
}

/// A client that follows a document: answers the server's step 1, applies every update, and
/// notes when each arrives. Its document is shared with the caller.
fn follower(
    ws: Socket,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<Instant>,
    Doc,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let doc = Doc::with_options(Options {
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    });
    let d = doc.clone();
    let task = tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
        let _ = sink.send(Ws::Binary(step1.into())).await;
        while let Some(Ok(m)) = stream.next().await {
            if let Ws::Close(Some(f)) = &m {
                eprintln!(
                    "the follower was closed: {} {}",
                    u16::from(f.code),
                    f.reason
                );
            }
            let Ws::Binary(b) = m else { continue };
            let Ok(msg) = Message::decode_v1(&b) else {
                continue;
            };
            match msg {
                Message::Sync(SyncMessage::SyncStep1(sv)) => {
                    let diff = d.transact().encode_diff_v1(&sv);
                    let reply = Message::Sync(SyncMessage::SyncStep2(diff)).encode_v1();
                    let _ = sink.send(Ws::Binary(reply.into())).await;
                }
                Message::Sync(SyncMessage::Update(u)) => {
                    if let Ok(u) = yrs::Update::decode_v1(&u) {
                        let _ = d.transact_mut().apply_update(u);
                    }
                    if tx.send(Instant::now()).is_err() {
                        break;
                    }
                }
                Message::Sync(SyncMessage::SyncStep2(u)) => {
                    if let Ok(u) = yrs::Update::decode_v1(&u) {
                        let _ = d.transact_mut().apply_update(u);
                    }
                }
                _ => {}
            }
        }
    });
    (rx, doc, task)
}

fn update_msg(u: &[u8]) -> Ws {
    Ws::Binary(
        Message::Sync(SyncMessage::Update(u.to_vec()))
            .encode_v1()
            .into(),
    )
}

fn text_of(doc: &Doc) -> String {
    doc.get_or_insert_text("text").get_string(&doc.transact())
}

/// Sends `updates` one message each through `url` to a follower; `pace`: one every this long
/// (none: as fast as the server takes them). (ms from the first send to the last arrival, the
/// send-to-arrival latency of each keystroke in ms, the follower's final text).
async fn through(
    url: &str,
    updates: &[Vec<u8>],
    pace: Option<Duration>,
) -> anyhow::Result<(f64, Vec<f64>, String)> {
    let (mut arrivals, doc, follower_task) = follower(connect(url).await?);
    let (mut sink, mut stream) = connect(url).await?.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    // Both handshakes done before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = updates.len();
    let mut sent_at = Vec::with_capacity(n);
    let started = Instant::now();
    let send = async {
        let mut next = Instant::now();
        for u in updates {
            if let Some(p) = pace {
                tokio::time::sleep_until(next.into()).await;
                next += p;
            }
            sent_at.push(Instant::now());
            sink.send(update_msg(u)).await?;
        }
        sink.flush().await?;
        anyhow::Ok(())
    };
    let receive = async {
        let mut got = Vec::with_capacity(n);
        for _ in 0..n {
            let at = tokio::time::timeout(Duration::from_secs(300), arrivals.recv())
                .await
                .context("the follower stopped receiving for 300 s")?
                .context("the follower's connection ended")?;
            got.push(at);
        }
        anyhow::Ok(got)
    };
    let (s, got) = tokio::join!(send, receive);
    s?;
    let got = got?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let latencies = got
        .iter()
        .zip(&sent_at)
        .map(|(r, s)| r.saturating_duration_since(*s).as_secs_f64() * 1000.0)
        .collect();
    let text = text_of(&doc);
    drain.abort();
    follower_task.abort();
    Ok((ms, latencies, text))
}

/// A server under test: where documents are (`{base}/{doc}` is a document's WebSocket) and
/// its process.
struct Target {
    name: &'static str,
    base: String,
    pid: u32,
    /// Documents 0..=300 exist (rows of `docs` on Flotilla; any room on the stock server):
    /// the trace's runs take 0.., the paced runs 50.., the many editors 100...
    doc: fn(usize) -> String,
    _keep: Box<dyn std::any::Any + Send>,
}

async fn flotilla(root: &Path) -> anyhow::Result<Target> {
    let node = LocalNode::start(&this_exe()?, root, "leader", None, &[]).await?;
    let c = Client::new(&node.url);
    let mut statements =
        vec![json!({ "sql": "CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT)" })];
    statements.push(json!({ "sql": "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 300) INSERT INTO docs(id, body) SELECT i, '' FROM n" }));
    c.post("/v1/execute", &json!({ "statements": statements }))
        .await?;
    c.post(
        "/v1/collab/columns",
        &json!({ "table": "docs", "column": "body" }),
    )
    .await?;
    let pid = node.pid().context("the node's pid")?;
    Ok(Target {
        name: "Flotilla",
        base: format!("{}/v1/collab", node.url.replace("http://", "ws://")),
        pid,
        doc: |i| format!("docs/{i}/body"),
        _keep: Box::new(node),
    })
}

/// y-websocket 1.5's own server (`bin/server.js`) on Node, from web/collab's npm packages.
async fn stock_yjs() -> anyhow::Result<Target> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web/collab");
    let node = tokio::task::spawn_blocking(move || -> anyhow::Result<PathBuf> {
        let node = flotilla_testkit::browser::node()?;
        flotilla_testkit::browser::npm_ci(&dir, "y-websocket-server/bin/server.js")?;
        Ok(node)
    })
    .await??;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../web/collab/node_modules/y-websocket-server/bin/server.js");
    let child = tokio::process::Command::new(node)
        .arg(server)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting y-websocket's server on Node")?;
    let pid = child.id().context("its pid")?;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(Target {
                name: "y-websocket server (Node)",
                base: format!("ws://127.0.0.1:{port}"),
                pid,
                doc: |i| format!("docs/{i}/body"),
                _keep: Box::new(child),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("y-websocket's server did not listen within 10 s")
}

/// `docs` documents with `per_doc` editors each: (ms until all joined and synced, ms until every
/// editor's keystroke reached its document's other editors, server MiB per open document).
async fn many_editors(t: &Target, docs: usize, per_doc: usize) -> anyhow::Result<(f64, f64, f64)> {
    let before = proc_mib(t.pid, "VmRSS")?;
    let started = Instant::now();
    let mut editors = Vec::new();
    for d in 0..docs {
        let url = format!("{}/{}", t.base, (t.doc)(100 + d));
        for _ in 0..per_doc {
            let (rx, doc, task) = follower(connect(&url).await?);
            let (sink, stream) = connect(&url).await.map(|w| w.split())?;
            editors.push((d, rx, doc, task, sink, stream));
        }
    }
    let joined = started.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = proc_mib(t.pid, "VmRSS")?;
    let started = Instant::now();
    for (i, (_, _, _, _, sink, _)) in editors.iter_mut().enumerate() {
        let d = Doc::with_client_id(1_000_000 + i as u64);
        d.get_or_insert_text("text")
            .insert(&mut d.transact_mut(), 0, "x");
        let u = d
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        sink.send(update_msg(&u)).await?;
    }
    // Each follower hears every editor of its document: its own sender's keystroke too (the
    // follower and the sender are separate connections).
    for (_, rx, ..) in editors.iter_mut() {
        for _ in 0..per_doc {
            tokio::time::timeout(Duration::from_secs(120), rx.recv())
                .await
                .context("an editor did not hear the others within 120 s")?
                .context("an editor's connection ended")?;
        }
    }
    let typed = started.elapsed().as_secs_f64() * 1000.0;
    for (_, _, doc, ..) in &editors {
        ensure!(
            text_of(doc).len() == per_doc,
            "a document did not get every keystroke"
        );
    }
    for (_, _, _, task, ..) in editors {
        task.abort();
    }
    Ok((joined, typed, (during - before).max(0.0) / docs as f64))
}

/// Lets this process hold the sockets of many editors.
fn raise_open_files() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

pub async fn run_scenario(a: BenchArgs) -> anyhow::Result<()> {
    if a.report.is_some() {
        bail!("bench collab has no --report yet");
    }
    raise_open_files();
    let (n, paced, docs, per_doc) = if a.quick {
        (20_000, 500, 20, 5)
    } else {
        (259_778, 2_000, 100, 10)
    };
    let runs = a.runs.unwrap_or(if a.quick { 1 } else { 3 });
    say(
        &a,
        &format!("making the trace's first {n} keystrokes' updates"),
    );
    let (updates, end) = keystrokes(n)?;
    let tmp = scratch_dir()?;
    let mut targets = Vec::new();
    targets.push(flotilla(tmp.path()).await?);
    if a.compare.is_some() {
        targets.push(stock_yjs().await?);
    }
    let mut figures = Vec::new();
    let mut throughput = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let mut total = Figure::new(&format!("{}: {n} keystrokes, whole path", t.name), "ms");
        let mut rate = Figure::new(&format!("{}: keystrokes per second", t.name), "/s");
        let mut p50 = Figure::new(&format!("{}: latency at 500/s, p50", t.name), "ms");
        let mut p99 = Figure::new(&format!("{}: latency at 500/s, p99", t.name), "ms");
        let mut joined = Figure::new(
            &format!(
                "{}: {} editors in {docs} documents join",
                t.name,
                docs * per_doc
            ),
            "ms",
        );
        let mut typed = Figure::new(
            &format!("{}: each types a keystroke, all others have it", t.name),
            "ms",
        );
        let mut memory = Figure::new(&format!("{}: memory per open document", t.name), "MiB");
        for run in 0..runs {
            // Each run a document of its own.
            let doc = (t.doc)(run);
            say(&a, &format!("{}: the trace, run {}", t.name, run + 1));
            let (ms, _, text) = through(&format!("{}/{doc}", t.base), &updates, None).await?;
            ensure!(
                text == end,
                "{}: the follower's text is not the trace's end",
                t.name
            );
            total.values.push(ms);
            rate.values.push(n as f64 / (ms / 1000.0));
            say(
                &a,
                &format!("{}: paced keystrokes, run {}", t.name, run + 1),
            );
            let paced_doc = (t.doc)(50 + run);
            let (_, mut lat, _) = through(
                &format!("{}/{paced_doc}", t.base),
                &updates[..paced],
                Some(Duration::from_millis(2)),
            )
            .await?;
            lat.sort_by(|x, y| x.total_cmp(y));
            p50.values.push(percentile(&lat, 0.5));
            p99.values.push(percentile(&lat, 0.99));
        }
        say(&a, &format!("{}: {} editors", t.name, docs * per_doc));
        let (j, ty, mib) = many_editors(t, docs, per_doc).await?;
        joined.values.push(j);
        typed.values.push(ty);
        memory.values.push(mib);
        throughput.push(rate.median());
        figures.extend([total, rate, p50, p99, joined, typed, memory]);
        let _ = ti;
    }
    super::done_saying();
    if throughput.len() == 2 {
        let mut r = Figure::new("throughput, Flotilla / stock Yjs server", "x");
        r.values.push(throughput[0] / throughput[1]);
        figures.push(r);
    }
    // loro 1.17's bare apply of the whole trace, one commit per keystroke, on this kind of
    // machine (../shared/ANCHORS.md): the target for the whole path.
    if n == 259_778 {
        let mut vs = Figure::new("whole path / loro's bare 732 ms", "x");
        vs.values.push(figures[0].median() / 732.0);
        figures.push(vs);
    }
    if a.json {
        let out: Vec<Value> = figures.iter().map(Figure::json).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        super::print_figures("collab (median of runs [min..max])", &figures);
    }
    Ok(())
}
