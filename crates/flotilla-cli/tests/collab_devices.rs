//! Collaborative text on offline devices, on real processes: a data centre's leader
//! (`serve --dc home --auth`), two `flotilla-device` local databases of one user, and an
//! editor connected over the y-websocket protocol. The devices edit a document offline, the
//! editor types meanwhile, and after the syncs all three hold the same text — a merge, never a
//! conflict. A device cannot edit a document outside its shape, and a malformed edit is
//! refused by name.

mod common;

use common::devices::*;
use common::*;
use flotilla_device::Device;
use flotilla_testkit::yjs_client::YjsClient;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn body(d: &Device, id: &str) -> String {
    d.connection()
        .query_row("SELECT body FROM notes WHERE id = ?1", [id], |r| r.get(0))
        .unwrap()
}

async fn server_body(s: &Server, id: &str) -> String {
    rows(
        &s.admin,
        &format!("SELECT body FROM notes WHERE id = '{id}'"),
    )
    .await[0][0]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_edit_documents_offline_and_merge_with_live_editors() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    exec(
        &s.admin,
        json!([
            { "sql": "CREATE TABLE notes (id TEXT PRIMARY KEY, owner TEXT NOT NULL, body TEXT)" },
            { "sql": "INSERT INTO notes VALUES ('n1', 'ana', 'hello'), ('n2', 'ana', NULL), ('b1', 'bob', 'secret')" },
        ]),
    )
    .await;
    s.admin
        .post(
            "/v1/collab/columns",
            &json!({ "table": "notes", "column": "body" }),
        )
        .await
        .unwrap();
    set_shape(&s, json!({ "table": "notes", "where": "owner = :user" })).await;
    let phone_token = add_device(&s, "phone", "ana").await;
    let laptop_token = add_device(&s, "laptop", "ana").await;
    let url = s.node.url.clone();
    let (mut phone, mut laptop) = blocking(|| {
        let mut p = Device::open(dir.path().join("phone.db"), &url, &phone_token).unwrap();
        let mut l = Device::open(dir.path().join("laptop.db"), &url, &laptop_token).unwrap();
        p.sync().unwrap();
        l.sync().unwrap();
        (p, l)
    });
    assert_eq!(body(&phone, "n1"), "hello");

    // An editor on the server types; the phone and the laptop edit offline meanwhile.
    let ws = format!(
        "{}/v1/collab/notes/n1/body?token={}",
        url.replace("http://", "ws://"),
        s.token
    );
    let mut editor = YjsClient::connect(&ws).await.unwrap();
    editor.wait_text(WAIT, |t| t == "hello").await.unwrap();
    editor.insert(5, "!");
    editor.wait_text(WAIT, |t| t == "hello!").await.unwrap();
    blocking(|| {
        phone.set_offline(true).unwrap();
        assert_eq!(
            phone
                .edit_text("notes", "n1", "body", 5, 0, " from the phone")
                .unwrap(),
            "hello from the phone"
        );
        // The row shows the edit at once (local SQL reads it).
        assert_eq!(body(&phone, "n1"), "hello from the phone");
        phone
            .edit_text("notes", "n2", "body", 0, 0, "a new note")
            .unwrap();
        assert_eq!(
            laptop
                .edit_text("notes", "n1", "body", 0, 0, "laptop: ")
                .unwrap(),
            "laptop: hello"
        );
        laptop.sync().unwrap();
    });
    // The laptop's edit reaches the live editor.
    editor
        .wait_text(WAIT, |t| t.starts_with("laptop: "))
        .await
        .unwrap();
    // The phone comes back: its offline edits merge with everyone's. The
    // editor's "!" and the phone's " from the phone" went in at the same
    // place concurrently: Yjs orders such inserts by client id, random
    // here, so either order is the one merge, as long as all agree.
    let either = [
        "laptop: hello from the phone!",
        "laptop: hello! from the phone",
    ];
    blocking(|| {
        phone.set_offline(false).unwrap();
        phone.sync().unwrap();
        laptop.sync().unwrap();
    });
    let merged = editor
        .wait_text(WAIT, |t| either.contains(&t))
        .await
        .unwrap();
    let merged = merged.as_str();
    assert_eq!(body(&phone, "n1"), merged);
    assert_eq!(body(&laptop, "n1"), merged);
    assert_eq!(body(&laptop, "n2"), "a new note");
    let mut in_sql = String::new();
    for _ in 0..200 {
        in_sql = server_body(&s, "n1").await;
        if in_sql == merged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(in_sql, merged);
    assert_eq!(server_body(&s, "n2").await, "a new note");
    let conflicts = rows(&s.admin, "SELECT count(*) FROM flotilla_conflicts").await;
    assert_eq!(conflicts[0][0], 0, "a merge of text recorded a conflict");

    // Edits while the editor types, both ways, several rounds.
    for round in 0..5 {
        editor.insert(0, &format!("{round}"));
        blocking(|| {
            let at = body(&laptop, "n1").encode_utf16().count() as u32;
            laptop.edit_text("notes", "n1", "body", at, 0, ".").unwrap();
            laptop.sync().unwrap();
        });
    }
    let end = format!("43210{merged}.....");
    let end = end.as_str();
    editor.wait_text(WAIT, |t| t == end).await.unwrap();
    blocking(|| {
        laptop.sync().unwrap();
        phone.sync().unwrap();
    });
    assert_eq!(body(&laptop, "n1"), end);
    assert_eq!(body(&phone, "n1"), end);

    // A device's documents outlive it: reopened, it edits on from where it was.
    drop(phone);
    let phone_token2 = phone_token.clone();
    let mut phone =
        blocking(|| Device::open(dir.path().join("phone.db"), &url, &phone_token2).unwrap());
    blocking(|| {
        phone.edit_text("notes", "n1", "body", 0, 5, "").unwrap();
        phone.sync().unwrap();
    });
    editor
        .wait_text(WAIT, |t| t == format!("{merged}....."))
        .await
        .unwrap();

    // Outside the shape, or beyond the text: refused on the device, by name.
    blocking(|| {
        let e = phone
            .edit_text("notes", "b1", "body", 0, 0, "x")
            .unwrap_err();
        assert!(e.to_string().contains("no row"), "{e}");
        let e = phone
            .edit_text("notes", "n1", "body", 999, 0, "x")
            .unwrap_err();
        assert!(e.to_string().contains("beyond the text"), "{e}");
        let e = phone
            .edit_text("notes", "n1", "owner", 0, 0, "x")
            .unwrap_err();
        assert!(
            e.to_string().contains("collaborative") || e.to_string().contains("shape"),
            "{e}"
        );
    });
    // And by the server, for a device that sends them anyway.
    let update = {
        use yrs::{ReadTxn, Text, Transact};
        let d = yrs::Doc::new();
        let txt = d.get_or_insert_text("text");
        txt.insert(&mut d.transact_mut(), 0, "bob's");
        let u = d
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        u
    };
    // An update larger than a document may be, and one forged with many writers.
    let too_large = {
        use yrs::{ReadTxn, Text, Transact};
        let d = yrs::Doc::new();
        let txt = d.get_or_insert_text("text");
        txt.insert(&mut d.transact_mut(), 0, &"x".repeat(9 << 20));
        let u = d
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        u
    };
    let many_writers = {
        use yrs::{ReadTxn, Text, Transact};
        let updates: Vec<Vec<u8>> = (0..100u64)
            .map(|i| {
                let d = yrs::Doc::with_client_id(7_000 + i);
                let t = d.get_or_insert_text("text");
                t.insert(&mut d.transact_mut(), 0, "x");
                let u = d
                    .transact()
                    .encode_state_as_update_v1(&yrs::StateVector::default());
                u
            })
            .collect();
        yrs::merge_updates_v1(updates.iter().map(Vec::as_slice)).unwrap()
    };
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let tablet = add_device(&s, "tablet", "ana").await;
    for (doc, code) in [
        (
            json!({ "table": "notes", "key": { "id": "b1" }, "column": "body", "update": b64(&update) }),
            "outside_shape",
        ),
        (
            json!({ "table": "notes", "key": { "id": "n1" }, "column": "body", "update": b64(b"\x05\xff\xff") }),
            "malformed",
        ),
        (
            json!({ "table": "notes", "key": { "id": "n1" }, "column": "body", "update": "not base64!" }),
            "malformed",
        ),
        (
            json!({ "table": "notes", "key": { "id": "n1" }, "column": "owner", "update": b64(&update) }),
            "malformed",
        ),
        (
            json!({ "table": "notes", "key": { "id": "n1" }, "column": "body", "update": b64(&too_large) }),
            "too_large",
        ),
        (
            json!({ "table": "notes", "key": { "id": "n1" }, "column": "body", "update": b64(&many_writers) }),
            "malformed",
        ),
    ] {
        let body = json!({
            "protocol": 1,
            "deps": { "d": {} },
            "push": [{ "seq": 1, "hlc": 1, "deps": "d", "changes": [], "docs": [doc] }],
        });
        let (status, answer) = raw_sync(&url, &tablet, &body).await;
        let want = match code {
            "outside_shape" => 403,
            "too_large" => 413,
            _ => 400,
        };
        assert_eq!(status, want, "{doc}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{doc}: {answer}");
    }
    // The limits hold for a push as a whole: two edits of 5 MiB of one document are 10.
    let five_mib = |client: u64| {
        use yrs::{ReadTxn, Text, Transact};
        let d = yrs::Doc::with_client_id(client);
        let txt = d.get_or_insert_text("text");
        txt.insert(&mut d.transact_mut(), 0, &"y".repeat(5 << 20));
        let u = d
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        u
    };
    let n1 = |u: &[u8]| json!({ "table": "notes", "key": { "id": "n1" }, "column": "body", "update": b64(u) });
    let body = json!({
        "protocol": 1,
        "deps": { "d": {} },
        "push": [{ "seq": 1, "hlc": 1, "deps": "d", "changes": [], "docs": [n1(&five_mib(91)), n1(&five_mib(92))] }],
    });
    let (status, answer) = raw_sync(&url, &tablet, &body).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "too_large", "{answer}");
    assert_eq!(server_body(&s, "b1").await, "secret");
}
