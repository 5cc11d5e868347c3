//! Collaborative text across data centres, on real processes: two `--dc` leaders exchanging
//! over TCP proxies, an editor in each. Edits made in both at once — live, and while the link
//! is cut — merge as text (never a conflict); each data centre's SQL reads the merged text.

mod common;

use common::*;
use flotilla_client::Client;
use flotilla_testkit::data_centres::DataCentres;
use flotilla_testkit::yjs_client::YjsClient;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn ws(url: &str, doc: &str) -> String {
    format!("{}/v1/collab/{doc}", url.replace("http://", "ws://"))
}

/// Polls (bounded) until the query's first value is `want` on every client.
async fn wait_everywhere(clients: &[&Client], sql: &str, want: &str) {
    for c in clients {
        let mut last = serde_json::Value::Null;
        for _ in 0..400 {
            last = match c.post("/v1/query", &json!({ "sql": sql })).await {
                Ok(v) => v["rows"][0][0].clone(),
                Err(e) => json!(format!("{e:#}")),
            };
            if last == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(last, want, "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_in_two_data_centres_merge_as_text_live_and_after_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let d = DataCentres::start(&exe(), dir.path(), &["eu", "us"], &[])
        .await
        .unwrap();
    let (eu, us) = (
        Client::new(&d.leaders[0].url),
        Client::new(&d.leaders[1].url),
    );
    exec(
        &eu,
        json!([
            { "sql": "CREATE TABLE notes (id TEXT PRIMARY KEY, title TEXT, body TEXT)" },
            { "sql": "INSERT INTO notes VALUES ('n1', 'plan', 'hello')" }
        ]),
    )
    .await;
    wait_everywhere(&[&eu, &us], "SELECT body FROM notes", "hello").await;
    // Enabled in one data centre: the other has it too.
    eu.post(
        "/v1/collab/columns",
        &json!({ "table": "notes", "column": "body" }),
    )
    .await
    .unwrap();
    wait_everywhere(
        &[&us],
        "SELECT group_concat(tbl || '.' || col) FROM _flotilla_collab_columns",
        "notes.body",
    )
    .await;
    // Enabling it there too is no conflict.
    us.post(
        "/v1/collab/columns",
        &json!({ "table": "notes", "column": "body" }),
    )
    .await
    .unwrap();

    let mut a = YjsClient::connect(&ws(&d.leaders[0].url, "notes/n1/body"))
        .await
        .unwrap();
    let mut b = YjsClient::connect(&ws(&d.leaders[1].url, "notes/n1/body"))
        .await
        .unwrap();
    a.wait_text(WAIT, |t| t == "hello").await.unwrap();
    b.wait_text(WAIT, |t| t == "hello").await.unwrap();

    // Live: both type at once, keystroke by keystroke, each in its own data centre; each
    // editor sees the other's keystrokes as the exchange merges them.
    for (i, ch) in " world".chars().enumerate() {
        a.insert(5 + i as u32, &ch.to_string());
        b.insert(0, &ch.to_string().to_uppercase());
    }
    let live = "DLROW hello world";
    a.wait_text(WAIT, |t| t.len() == live.len()).await.unwrap();
    let ta = a.wait_text(WAIT, |t| t.len() == live.len()).await.unwrap();
    let tb = b.wait_text(WAIT, |t| t == ta).await.unwrap();
    assert_eq!(tb.len(), live.len(), "{ta:?} / {tb:?}");
    for part in ["hello world", "D", "L", "R", "O", "W"] {
        assert!(ta.contains(part), "{part:?} missing from {ta:?}");
    }
    wait_everywhere(&[&eu, &us], "SELECT body FROM notes WHERE id = 'n1'", &ta).await;

    // Cut: each data centre edits on its own, its editor and SQL seeing only its own edits.
    d.cut(None, true);
    let at_end = ta.encode_utf16().count() as u32;
    a.insert(at_end, " +eu");
    b.insert(0, "us+ ");
    a.wait_text(WAIT, |t| t.ends_with(" +eu")).await.unwrap();
    wait_everywhere(
        &[&eu],
        "SELECT body FROM notes WHERE id = 'n1'",
        &format!("{ta} +eu"),
    )
    .await;
    wait_everywhere(
        &[&us],
        "SELECT body FROM notes WHERE id = 'n1'",
        &format!("us+ {ta}"),
    )
    .await;
    // Many edits on one side meanwhile (its storage compacts): they all cross when healed.
    let mut typed = String::new();
    for round in 0..150 {
        let line = format!(" [{round} typed in eu and then deleted]");
        let at = a.text().encode_utf16().count() as u32;
        for (i, ch) in line.chars().enumerate() {
            a.insert(at + i as u32, &ch.to_string());
        }
        a.delete(at, line.chars().count() as u32);
        if round % 50 == 49 {
            typed.push('.');
            a.insert(a.text().encode_utf16().count() as u32, ".");
        }
    }
    // eu compacted meanwhile: what crosses includes a compacted state.
    wait_everywhere(
        &[&eu],
        "SELECT CAST(count(*) AS TEXT) FROM _flotilla_collab_docs",
        "1",
    )
    .await;
    d.cut(None, false);
    let merged = format!("us+ {ta} +eu{typed}");
    a.wait_text(WAIT, |t| t == merged).await.unwrap();
    b.wait_text(WAIT, |t| t == merged).await.unwrap();
    wait_everywhere(
        &[&eu, &us],
        "SELECT body FROM notes WHERE id = 'n1'",
        &merged,
    )
    .await;
    // A merge of text, never a conflict.
    wait_everywhere(
        &[&eu, &us],
        "SELECT CAST(count(*) AS TEXT) FROM flotilla_conflicts",
        "0",
    )
    .await;
    // A late editor in either data centre gets the merged document.
    for leader in &d.leaders {
        let mut late = YjsClient::connect(&ws(&leader.url, "notes/n1/body"))
            .await
            .unwrap();
        late.wait_text(WAIT, |t| t == merged).await.unwrap();
    }
    // Another column of the row still merges as a row (the text is left as it is).
    exec(
        &us,
        json!([{ "sql": "UPDATE notes SET title = 'plan B' WHERE id = 'n1'" }]),
    )
    .await;
    wait_everywhere(
        &[&eu],
        "SELECT title || ': ' || body FROM notes",
        &format!("plan B: {merged}"),
    )
    .await;
}
