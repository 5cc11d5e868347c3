//! Collaborative text on real processes: `flotilla serve`, `flotilla collab enable`, and
//! y-websocket clients (a `yrs` document each, as a stock Yjs client keeps one) editing one
//! document at once through `/v1/collab/TABLE/KEY/COLUMN`.

mod common;

use common::*;
use flotilla_client::Client;
use flotilla_testkit::yjs_client::YjsClient;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn ws(url: &str, doc: &str) -> String {
    format!("{}/v1/collab/{doc}", url.replace("http://", "ws://"))
}

/// A leader with `notes(id INTEGER PRIMARY KEY, title TEXT, body TEXT)` holding row 1
/// ("hello") and row 'two' of a TEXT-keyed table, body made collaborative with the CLI.
async fn leader_with_notes(
    root: &std::path::Path,
) -> (flotilla_testkit::cluster::LocalNode, Client) {
    let leader = start(root, "leader", None).await;
    let c = Client::new(&leader.url);
    exec(
        &c,
        json!([
            { "sql": "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, body TEXT)" },
            { "sql": "INSERT INTO notes VALUES (1, 'first', 'hello')" },
            { "sql": "CREATE TABLE pages(slug TEXT PRIMARY KEY, body TEXT)" },
            { "sql": "INSERT INTO pages VALUES ('two', NULL)" }
        ]),
    )
    .await;
    for (table, column) in [("notes", "body"), ("pages", "body")] {
        let out = std::process::Command::new(exe())
            .args([
                "collab",
                "enable",
                "--node",
                &leader.url,
                "--table",
                table,
                "--column",
                column,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "collab enable: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("is collaborative"));
    }
    (leader, c)
}

async fn sql_text(c: &Client, sql: &str) -> String {
    rows(c, sql).await[0][0].as_str().unwrap_or("").to_string()
}

/// Polls (bounded) until the SQL value equals `want`.
async fn wait_sql(c: &Client, sql: &str, want: &str) {
    let mut last = String::new();
    for _ in 0..200 {
        last = sql_text(c, sql).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{sql} gave {last:?}, expected {want:?}");
}

#[tokio::test]
async fn two_editors_type_at_once_converge_and_sql_reads_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, c) = leader_with_notes(dir.path()).await;
    let url = ws(&leader.url, "notes/1/body");
    let mut a = YjsClient::connect(&url).await.unwrap();
    let mut b = YjsClient::connect(&url).await.unwrap();
    // The row's text before the column became collaborative is the document's content.
    a.wait_text(WAIT, |t| t == "hello").await.unwrap();
    b.wait_text(WAIT, |t| t == "hello").await.unwrap();
    // Both type at once, keystroke by keystroke, at both ends.
    for (i, ch) in "abcdefghij".chars().enumerate() {
        a.insert(5 + i as u32, &ch.to_string());
        b.insert(0, &ch.to_string().to_uppercase());
    }
    let both = |t: &str| t.len() == 25;
    let ta = a.wait_text(WAIT, both).await.unwrap();
    let tb = b.wait_text(WAIT, both).await.unwrap();
    assert_eq!(ta, tb, "the editors converge");
    assert_eq!(ta, "JIHGFEDCBAhelloabcdefghij");
    // Plain SQL sees the text once stored (a group commit).
    wait_sql(&c, "SELECT body FROM notes WHERE id = 1", &ta).await;
    // A TEXT key addresses its row; a NULL body starts empty.
    let mut p = YjsClient::connect(&ws(&leader.url, "pages/two/body"))
        .await
        .unwrap();
    p.wait_text(WAIT, |t| t.is_empty()).await.unwrap();
    p.insert(0, "Ünïcode ✓ 😀 text");
    wait_sql(
        &c,
        "SELECT body FROM pages WHERE slug = 'two'",
        "Ünïcode ✓ 😀 text",
    )
    .await;
    // A third editor arriving later gets the whole document.
    let mut late = YjsClient::connect(&url).await.unwrap();
    late.wait_text(WAIT, |t| t == ta).await.unwrap();
    // The list shows both columns.
    let listed = c.get("/v1/collab/columns").await.unwrap();
    assert_eq!(listed["columns"].as_array().unwrap().len(), 2, "{listed}");
    // A key compared without case: each spelling of it is the one row's one document.
    exec(
        &c,
        json!([
            { "sql": "CREATE TABLE tags(name TEXT PRIMARY KEY COLLATE NOCASE, body TEXT)" },
            { "sql": "INSERT INTO tags VALUES ('Rust', 'r')" }
        ]),
    )
    .await;
    c.post(
        "/v1/collab/columns",
        &json!({ "table": "tags", "column": "body" }),
    )
    .await
    .unwrap();
    let mut upper = YjsClient::connect(&ws(&leader.url, "tags/RUST/body"))
        .await
        .unwrap();
    let mut lower = YjsClient::connect(&ws(&leader.url, "tags/rust/body"))
        .await
        .unwrap();
    upper.wait_text(WAIT, |t| t == "r").await.unwrap();
    lower.wait_text(WAIT, |t| t == "r").await.unwrap();
    upper.insert(1, "!");
    lower.wait_text(WAIT, |t| t == "r!").await.unwrap();
    lower.insert(0, ">");
    upper.wait_text(WAIT, |t| t == ">r!").await.unwrap();
    wait_sql(&c, "SELECT body FROM tags WHERE name = 'rust'", ">r!").await;
}

#[tokio::test]
async fn documents_survive_a_restart_and_storage_tracks_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, c) = leader_with_notes(dir.path()).await;
    let url = ws(&leader.url, "notes/1/body");
    let mut a = YjsClient::connect(&url).await.unwrap();
    a.wait_text(WAIT, |t| t == "hello").await.unwrap();
    // Many edits that leave little text: type a line, delete it, again and again.
    let mut expected = "hello".to_string();
    for round in 0..300 {
        let line = format!(" line {round} of typing that is deleted again");
        for (i, ch) in line.chars().enumerate() {
            a.insert(5 + i as u32, &ch.to_string());
        }
        a.delete(5, line.chars().count() as u32 - 1);
        expected = format!("hello{}", line.chars().last().unwrap());
        a.delete(5, 1);
        expected.truncate(5);
    }
    a.insert(5, " world");
    expected.push_str(" world");
    wait_sql(&c, "SELECT body FROM notes WHERE id = 1", &expected).await;
    // Storage: the compacted state plus the updates since, not every keystroke typed.
    let stored = rows(
        &c,
        "SELECT (SELECT coalesce(sum(length(state)), 0) FROM _flotilla_collab_docs) + \
         (SELECT coalesce(sum(length(data)), 0) FROM _flotilla_collab_updates)",
    )
    .await;
    let stored = stored[0][0].as_u64().unwrap();
    let sent = a.sent_bytes.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("stored {stored} bytes after {sent} bytes of edits");
    // Compaction folds the updates into the state once they reach 64 KiB (or the state's
    // size): the deleted lines are not kept.
    assert!(sent > 4 * stored, "{sent} bytes edited, {stored} stored");
    assert!(
        stored < 80 << 10,
        "{stored} bytes stored for a 11-character text"
    );
    drop(a);
    leader.kill().await;
    leader.restart().await.unwrap();
    let url = ws(&leader.url, "notes/1/body");
    let mut again = YjsClient::connect(&url).await.unwrap();
    again.wait_text(WAIT, |t| t == expected).await.unwrap();
}

#[tokio::test]
async fn bad_documents_and_bad_messages_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, c) = leader_with_notes(dir.path()).await;
    // Documents that do not exist: refused before the upgrade, with the reason.
    for (doc, want) in [
        ("notes/999/body", "no row"),
        ("notes/abc/body", "INTEGER"),
        ("notes/1/title", "not a collaborative column"),
        ("nosuch/1/body", "not a collaborative column"),
    ] {
        let (status, body) = raw(
            &leader.url,
            "GET",
            &format!("/v1/collab/{doc}"),
            None,
            Vec::new(),
        )
        .await;
        assert_eq!(status, 404, "{doc}: {body}");
        assert!(body.to_string().contains(want), "{doc}: {body}");
    }
    // Columns that cannot be collaborative.
    exec(
        &c,
        json!([
            { "sql": "CREATE TABLE files(id INTEGER PRIMARY KEY, body)" },
            { "sql": "INSERT INTO files VALUES (1, 'text'), (7, x'00ff')" }
        ]),
    )
    .await;
    for (table, column, want) in [
        ("files", "body", "row 7 of files holds a BLOB in body"),
        ("notes", "id", "primary key"),
        ("notes", "nope", "no column"),
        ("_flotilla_meta", "lsn", "own tables"),
    ] {
        let e = c
            .post(
                "/v1/collab/columns",
                &json!({ "table": table, "column": column }),
            )
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains(want), "{table}.{column}: {e:#}");
    }
    let url = ws(&leader.url, "notes/1/body");
    let mut good = YjsClient::connect(&url).await.unwrap();
    good.wait_text(WAIT, |t| t == "hello").await.unwrap();
    // Garbage, a truncated update, an update with a lying length: each closes its own
    // connection with the reason; the document and the other editor are untouched.
    let mut valid = {
        let d = yrs::Doc::new();
        let t = yrs::Doc::get_or_insert_text(&d, "text");
        yrs::Text::insert(&t, &mut yrs::Transact::transact_mut(&d), 0, "x");
        let txn = yrs::Transact::transact(&d);
        let state = yrs::ReadTxn::encode_state_as_update_v1(&txn, &yrs::StateVector::default());
        drop(txn);
        state
    };
    valid.truncate(valid.len() - 2);
    let truncated_update = {
        let mut m = vec![0u8, 2u8];
        m.push(valid.len() as u8);
        m.extend_from_slice(&valid);
        m
    };
    for bad in [
        vec![0xff, 0xff, 0xff, 0xff, 0xff],
        truncated_update,
        vec![0, 2, 200, 1, 2, 3],
        vec![0, 9],
    ] {
        let bad_client = YjsClient::connect(&url).await.unwrap();
        bad_client.send_raw(bad.clone());
        let closed = bad_client
            .wait_closed(WAIT)
            .await
            .unwrap_or_else(|| panic!("{bad:?} did not close the connection"));
        assert_eq!(closed.code, Some(1007), "{bad:?}: {closed:?}");
        assert!(closed.reason.contains("malformed"), "{bad:?}: {closed:?}");
    }
    // A state vector claiming 500 million entries in a few bytes; presence that is not JSON;
    // an update that would take the document past its size limit.
    let lying_sv = {
        let mut sv = Vec::new();
        let mut n: u64 = 500_000_000;
        while n >= 0x80 {
            sv.push((n as u8) | 0x80);
            n >>= 7;
        }
        sv.push(n as u8);
        let mut m = vec![0u8, 0u8, sv.len() as u8];
        m.extend_from_slice(&sv);
        m
    };
    let bad_presence = {
        let json = b"{bad";
        let mut entry = vec![1u8, 42, 1, json.len() as u8];
        entry.extend_from_slice(json);
        let mut m = vec![1u8, entry.len() as u8];
        m.extend_from_slice(&entry);
        m
    };
    for (bad, code, want) in [
        (lying_sv, 1007, "claims 500000000 entries"),
        (bad_presence, 1007, "not JSON"),
    ] {
        let bad_client = YjsClient::connect(&url).await.unwrap();
        bad_client.send_raw(bad.clone());
        let closed = bad_client.wait_closed(WAIT).await.expect("closed");
        assert_eq!(closed.code, Some(code), "{closed:?}");
        assert!(closed.reason.contains(want), "{closed:?}");
    }
    // An update forged with thousands of writers, each inserting at the start (merging such
    // inserts costs the product of their counts): refused before it is merged, by name.
    let forged = YjsClient::connect(&url).await.unwrap();
    forged.send_raw(forged_writers(1_000_000, 2_000));
    let closed = forged.wait_closed(WAIT).await.expect("closed");
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    assert!(
        closed.reason.contains("2000 writers") && closed.reason.contains("64 at most"),
        "{closed:?}"
    );
    // A few new writers at once (a copy kept offline through several sessions) are merged.
    let few = YjsClient::connect(&url).await.unwrap();
    few.send_raw(forged_writers(2_000_000, 8));
    // Many updates of a few new writers each: a connection brings 256 at most.
    let flood = YjsClient::connect(&url).await.unwrap();
    for i in 0..5 {
        flood.send_raw(forged_writers(3_000_000 + i * 1_000, 60));
    }
    let closed = flood.wait_closed(WAIT).await.expect("closed");
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    assert!(
        closed.reason.contains("300 writers") && closed.reason.contains("256 at most"),
        "{closed:?}"
    );
    // An update that depends on an edit never sent: set aside (it would wait in memory,
    // uncounted, and come in at once with the edit it waits for), its sender told.
    let (first, rest) = {
        use yrs::{ReadTxn, Text, Transact};
        let d = yrs::Doc::with_client_id(4_000_000);
        let t = d.get_or_insert_text("text");
        t.insert(&mut d.transact_mut(), 0, "a");
        let sv = d.transact().state_vector();
        let first = d
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        t.insert(&mut d.transact_mut(), 1, &"b".repeat(1000));
        let rest = d.transact().encode_diff_v1(&sv);
        (first, rest)
    };
    let update_msg = |u: Vec<u8>| {
        use yrs::updates::encoder::Encode;
        yrs::sync::Message::Sync(yrs::sync::SyncMessage::Update(u)).encode_v1()
    };
    let ahead = YjsClient::connect(&url).await.unwrap();
    ahead.send_raw(update_msg(rest));
    let closed = ahead.wait_closed(WAIT).await.expect("closed");
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    assert!(closed.reason.contains("depends on edits"), "{closed:?}");
    // The edit it waited for, sent later, brings only itself.
    let late = YjsClient::connect(&url).await.unwrap();
    late.send_raw(update_msg(first));
    good.wait_text(WAIT, |t| t.contains('a')).await.unwrap();
    assert!(!good.text().contains('b'), "{}", good.text());
    good.delete(good.text().find('a').unwrap() as u32, 1);
    good.wait_text(WAIT, |t| t == "hello").await.unwrap();
    let big = YjsClient::connect(&url).await.unwrap();
    big.insert(0, &"x".repeat(9 << 20));
    let closed = big.wait_closed(WAIT).await.expect("closed");
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    assert!(closed.reason.contains("limit of 8 MiB"), "{closed:?}");
    good.insert(5, "!");
    good.wait_text(WAIT, |t| t == "hello!").await.unwrap();
    wait_sql(&c, "SELECT body FROM notes WHERE id = 1", "hello!").await;
    assert!(good.closed().is_none(), "the good editor stays connected");
    assert!(few.closed().is_none(), "{:?}", few.closed());
    // A text message is not the protocol.
    let (mut ws_raw, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws_raw
        .send(tokio_tungstenite::tungstenite::Message::Text("hi".into()))
        .await
        .unwrap();
    let mut close_code = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(WAIT, ws_raw.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Close(f) = m {
            close_code = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(close_code, Some(1003));
    // The row deleted while its document is open: editors are told and disconnected.
    exec(&c, json!([{ "sql": "DELETE FROM notes WHERE id = 1" }])).await;
    good.insert(0, "?");
    let closed = good.wait_closed(WAIT).await.expect("closed");
    assert!(closed.reason.contains("deleted"), "{closed:?}");
}

/// A document near its size limit (6 MiB of text, larger than what an editor may have
/// waiting of edits) opens for new editors, who are not dropped for keystrokes typed while
/// they receive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_near_its_size_limit_opens_for_new_editors() {
    let dir = tempfile::tempdir().unwrap();
    let (_leader, c) = leader_with_notes(dir.path()).await;
    let url = ws(&_leader.url, "notes/1/body");
    let mut writer = YjsClient::connect(&url).await.unwrap();
    writer.wait_text(WAIT, |t| t == "hello").await.unwrap();
    let big = "y".repeat(6 << 20);
    writer.insert(5, &big);
    let len = 5 + big.len();
    let mut stored = 0;
    for _ in 0..400 {
        stored = rows(&c, "SELECT length(body) FROM notes WHERE id = 1").await[0][0]
            .as_u64()
            .unwrap_or(0) as usize;
        if stored == len {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored, len, "the big text was not stored");
    let mut readers = Vec::new();
    for _ in 0..2 {
        readers.push(YjsClient::connect(&url).await.unwrap());
    }
    for i in 0..20 {
        writer.insert(0, &format!("{}", i % 10));
    }
    for r in &mut readers {
        let got = r.wait_text(WAIT, |t| t.len() == len + 20).await;
        assert!(
            got.is_ok(),
            "{:?} (text of {:?} bytes)",
            r.closed(),
            got.map_err(|t| t.len())
        );
    }
}

/// An update message of `n` writers (client ids), each inserting one character at the start
/// of the text and deleting it.
fn forged_writers(first: u64, n: u64) -> Vec<u8> {
    use yrs::sync::{Message, SyncMessage};
    use yrs::updates::encoder::Encode;
    use yrs::{ReadTxn, Text, Transact};
    let updates: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let d = yrs::Doc::with_client_id(first + i);
            let t = d.get_or_insert_text("text");
            t.insert(&mut d.transact_mut(), 0, "x");
            t.remove_range(&mut d.transact_mut(), 0, 1);
            let u = d
                .transact()
                .encode_state_as_update_v1(&yrs::StateVector::default());
            u
        })
        .collect();
    let merged = yrs::merge_updates_v1(updates.iter().map(Vec::as_slice)).unwrap();
    Message::Sync(SyncMessage::Update(merged)).encode_v1()
}

#[tokio::test]
async fn a_lock_lets_only_its_holder_edit_until_released_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, c) = leader_with_notes(dir.path()).await;
    let lock_path = "/v1/collab/notes/1/body/lock";
    let url = ws(&leader.url, "notes/1/body");
    let mut other = YjsClient::connect(&url).await.unwrap();
    other.wait_text(WAIT, |t| t == "hello").await.unwrap();
    // Ana takes the lock; Ben cannot take it meanwhile.
    let taken = c
        .post(lock_path, &json!({ "holder": "ana", "seconds": 2 }))
        .await
        .unwrap();
    let id = taken["lock"].as_str().unwrap().to_string();
    assert_eq!(taken["holder"], "ana");
    let e = c
        .post(lock_path, &json!({ "holder": "ben" }))
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("locked by ana"), "{e:#}");
    // The editor without the lock hears it is read-only, and its edit is not taken.
    for _ in 0..200 {
        if !other.denied.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        other
            .denied
            .lock()
            .unwrap()
            .iter()
            .any(|d| d.contains("locked by ana")),
        "{:?}",
        other.denied.lock().unwrap()
    );
    let mut holder = YjsClient::connect(&format!("{url}?lock={id}"))
        .await
        .unwrap();
    holder.wait_text(WAIT, |t| t == "hello").await.unwrap();
    other.insert(0, "ben: ");
    holder.insert(5, ", from ana");
    holder
        .wait_text(WAIT, |t| t == "hello, from ana")
        .await
        .unwrap();
    other
        .wait_text(WAIT, |t| t.contains("hello, from ana"))
        .await
        .unwrap();
    wait_sql(&c, "SELECT body FROM notes WHERE id = 1", "hello, from ana").await;
    // Renewing needs the lock's id; a wrong id is refused.
    let e = c
        .post(lock_path, &json!({ "holder": "ana", "lock": "nope" }))
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("locked by ana"), "{e:#}");
    // The lease runs out on its own: the other editor may edit again.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let mut fresh = YjsClient::connect(&url).await.unwrap();
    fresh
        .wait_text(WAIT, |t| t == "hello, from ana")
        .await
        .unwrap();
    fresh.insert(0, "after: ");
    holder
        .wait_text(WAIT, |t| t == "after: hello, from ana")
        .await
        .unwrap();
    // Taken again and released by id.
    let again = c
        .post(lock_path, &json!({ "holder": "ben", "seconds": 60 }))
        .await
        .unwrap();
    let id2 = again["lock"].as_str().unwrap();
    let e = c
        .delete(&format!("{lock_path}?lock={id}"))
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("no lock"), "{e:#}");
    c.delete(&format!("{lock_path}?lock={id2}")).await.unwrap();
    c.post(lock_path, &json!({ "holder": "carl", "seconds": 1 }))
        .await
        .unwrap();
    // Bad leases are refused by name.
    for body in [
        json!({ "seconds": 0 }),
        json!({ "seconds": 100000 }),
        json!({ "holder": "" }),
        json!({ "holder": "ana\u{7}" }),
        // Shown to the others reversed ("ana" reads as something else).
        json!({ "holder": "\u{202E}ana" }),
        json!({ "holder": "a\u{200B}na" }),
    ] {
        let e = c.post(lock_path, &body).await.unwrap_err();
        assert!(format!("{e:#}").contains("invalid_lock"), "{body}: {e:#}");
    }
}

/// Waits (bounded) until the server told `client` something containing `what`.
async fn wait_denied(client: &YjsClient, what: &str) {
    for _ in 0..500 {
        if client
            .denied
            .lock()
            .unwrap()
            .iter()
            .any(|d| d.contains(what))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "never told {what:?}; told {:?}",
        client.denied.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_show_documents_live_and_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, c) = leader_with_notes(dir.path()).await;
    let physical = start(dir.path(), "physical", Some(&leader.url)).await;
    let logical = flotilla_testkit::cluster::LocalNode::start(
        &exe(),
        dir.path(),
        "logical",
        Some(&leader.url),
        &["--log", "logical"],
    )
    .await
    .unwrap();
    let mut editor = YjsClient::connect(&ws(&leader.url, "notes/1/body"))
        .await
        .unwrap();
    editor.wait_text(WAIT, |t| t == "hello").await.unwrap();
    editor.insert(5, " world");
    let mut viewers = Vec::new();
    for f in [&physical, &logical] {
        let mut v = YjsClient::connect(&ws(&f.url, "notes/1/body"))
            .await
            .unwrap();
        v.wait_text(WAIT, |t| t == "hello world")
            .await
            .unwrap_or_else(|t| panic!("{}: the viewer has {t:?}", f.url));
        // A follower's viewer reads: it is told so at once, and its edits are not taken (a
        // client keeps its refused edit: one that tried is left aside).
        wait_denied(&v, "follower").await;
        let tried = YjsClient::connect(&ws(&f.url, "notes/1/body"))
            .await
            .unwrap();
        wait_denied(&tried, "follower").await;
        tried.insert(0, "viewer: ");
        viewers.push(v);
    }
    // Keystroke by keystroke, and through compactions (storage folds updates into the state
    // while the followers read along): every viewer follows live.
    let mut expected = "hello world".to_string();
    for round in 0..200 {
        let line = format!(" line {round} typed and mostly deleted again");
        let at = expected.chars().count() as u32;
        for (i, ch) in line.chars().enumerate() {
            editor.insert(at + i as u32, &ch.to_string());
        }
        editor.delete(at + 1, line.chars().count() as u32 - 1);
        expected.push(' ');
        if round % 40 == 39 {
            for v in &mut viewers {
                let want = expected.clone();
                v.wait_text(WAIT, |t| t == want).await.unwrap();
            }
        }
    }
    wait_sql(&c, "SELECT body FROM notes WHERE id = 1", &expected).await;
    for v in &mut viewers {
        let want = expected.clone();
        let got = v.wait_text(WAIT, |t| t == want).await;
        assert_eq!(got, Ok(expected.clone()));
    }
    // The viewers' refused edits reached neither the leader nor its editor.
    assert_eq!(editor.text(), expected);
    // The leader compacted meanwhile (a state was stored, the updates before it dropped, and
    // their numbers go on) and the followers hold the same.
    let storage = "SELECT (SELECT count(*) FROM _flotilla_collab_docs) || ' ' || \
                   (SELECT min(seq) > 1 FROM _flotilla_collab_updates)";
    assert_eq!(sql_text(&c, storage).await, "1 1");
    for f in [&physical, &logical] {
        wait_sql(&Client::new(&f.url), storage, "1 1").await;
    }
    // Followers store the same document (their SQL reads its text); a late viewer gets it.
    for f in [&physical, &logical] {
        let fc = Client::new(&f.url);
        wait_sql(&fc, "SELECT body FROM notes WHERE id = 1", &expected).await;
        let mut late = YjsClient::connect(&ws(&f.url, "notes/1/body"))
            .await
            .unwrap();
        let want = expected.clone();
        late.wait_text(WAIT, |t| t == want).await.unwrap();
    }
    // Locks are taken on the leader only.
    let e = Client::new(&physical.url)
        .post("/v1/collab/notes/1/body/lock", &json!({ "holder": "ana" }))
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("leader"), "{e:#}");
    // The row deleted on the leader: the followers' viewers are told the document is gone.
    commit_one(&c, "DELETE FROM notes WHERE id = 1").await;
    for v in &viewers {
        let closed = v.wait_closed(WAIT).await.expect("the viewer is closed");
        assert_eq!(closed.code, Some(1008), "{closed:?}");
        assert!(closed.reason.contains("no row"), "{closed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_editing_traces_replayed_through_the_server_give_their_end_content() {
    // A blog post's whole editing history (seph-blog1, CC BY 4.0, bundled with the testkit):
    // 137,993 keystrokes, each sent as its own update, as a Yjs client sends them.
    let bundled = flotilla_testkit::traces::find("sequential/seph-blog1.json.gz").unwrap();
    replay_trace(bundled).await;
    // The automerge paper's (259,778 keystrokes) is not bundled (no licence stated): replayed
    // when found beside the repository (../shared/traces) or in FLOTILLA_TRACES.
    match flotilla_testkit::traces::find("sequential/automerge-paper.json.gz") {
        Ok(path) => replay_trace(path).await,
        Err(e) => eprintln!("automerge-paper not replayed: {e}"),
    }
}

async fn replay_trace(path: std::path::PathBuf) {
    use yrs::sync::protocol::{Message, SyncMessage};
    use yrs::updates::encoder::Encode;
    let trace = tokio::task::spawn_blocking({
        let path = path.clone();
        move || flotilla_testkit::traces::keystrokes(&path, None)
    })
    .await
    .unwrap()
    .unwrap();
    let end = trace.end_content.clone().expect("the whole trace");
    assert_eq!(trace.text, end, "the client's own replay gives the end");
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, c) = leader_with_notes(dir.path()).await;
    let url = ws(&leader.url, "pages/two/body");
    let typist = YjsClient::connect(&url).await.unwrap();
    let mut reader = YjsClient::connect(&url).await.unwrap();
    reader.wait_text(WAIT, |t| t.is_empty()).await.unwrap();
    let started = std::time::Instant::now();
    for u in &trace.updates {
        typist.send_raw(Message::Sync(SyncMessage::Update(u.clone())).encode_v1());
    }
    let got = reader
        .wait_text(Duration::from_secs(600), |t| {
            t.len() == end.len() && t == end
        })
        .await;
    assert!(
        got.is_ok(),
        "the other editor did not reach {}'s end",
        path.display()
    );
    eprintln!(
        "{}: {} keystrokes through the server in {:?}",
        path.display(),
        trace.updates.len(),
        started.elapsed()
    );
    // Stored: SQL reads the end, and so does an editor after a restart.
    let mut in_sql = String::new();
    for _ in 0..600 {
        in_sql = sql_text(&c, "SELECT body FROM pages WHERE slug = 'two'").await;
        if in_sql == end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        in_sql == end,
        "SQL reads {} characters, not the end",
        in_sql.len()
    );
    drop((typist, reader));
    leader.kill().await;
    leader.restart().await.unwrap();
    let mut again = YjsClient::connect(&ws(&leader.url, "pages/two/body"))
        .await
        .unwrap();
    assert!(again.wait_text(WAIT, |t| t == end).await.is_ok());
}
