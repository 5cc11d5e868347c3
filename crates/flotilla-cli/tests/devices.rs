//! Offline devices on real processes: a data centre's leader (`serve --dc home --auth`) and
//! devices that are `flotilla-device` local databases syncing with it over HTTP. Two devices
//! of one user edit offline, sync, and end with the server's rows and the same conflicts;
//! neither ever holds another user's row, and a row pushed outside the shape is refused and
//! undone. Bad input: a revoked token, a forged origin, a replayed batch, a clock far ahead.

mod common;

use common::devices::*;
use common::*;
use flotilla_device::{Device, DeviceError};
use serde_json::json;

/// A device's rows of `events`, in key order.
fn device_rows(d: &Device) -> Vec<(String, String, String)> {
    let mut stmt = d
        .connection()
        .prepare("SELECT id, owner, title FROM events ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

async fn server_rows(s: &Server, owner: &str) -> Vec<(String, String, String)> {
    let v = rows(
        &s.admin,
        &format!("SELECT id, owner, title FROM events WHERE owner = '{owner}' ORDER BY id"),
    )
    .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[1].as_str().unwrap().to_string(),
                r[2].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn device_conflicts(d: &Device) -> Vec<String> {
    let mut stmt = d
        .connection()
        .prepare("SELECT id FROM flotilla_conflicts ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_edit_offline_and_converge_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    exec(
        &s.admin,
        json!([
            { "sql": "CREATE TABLE events (id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT, minutes INTEGER DEFAULT 30)" },
            { "sql": "INSERT INTO events (id, owner, title) VALUES ('e1', 'ana', 'Standup'), ('e2', 'ana', 'Lunch'), ('b1', 'bob', 'Bob only')" },
        ]),
    )
    .await;
    set_shape(&s, json!({ "table": "events", "where": "owner = :user" })).await;
    let phone_token = add_device(&s, "phone", "ana").await;
    let laptop_token = add_device(&s, "laptop", "ana").await;
    let url = s.node.url.clone();
    let (mut phone, mut laptop) = blocking(|| {
        (
            Device::open(dir.path().join("phone.db"), &url, &phone_token).unwrap(),
            Device::open(dir.path().join("laptop.db"), &url, &laptop_token).unwrap(),
        )
    });

    // The first sync brings the schema and ana's rows, not bob's.
    blocking(|| {
        let r = phone.sync().unwrap();
        assert!(r.reset, "{r:?}");
        laptop.sync().unwrap();
    });
    let ana = vec![
        ("e1".to_string(), "ana".to_string(), "Standup".to_string()),
        ("e2".to_string(), "ana".to_string(), "Lunch".to_string()),
    ];
    assert_eq!(device_rows(&phone), ana);
    assert_eq!(device_rows(&laptop), ana);
    assert_eq!(phone.status().unwrap().state(), "synced");

    // The phone goes offline and edits; the laptop edits the same meeting and deletes one.
    blocking(|| {
        phone.set_offline(true).unwrap();
        phone
            .execute(
                "INSERT INTO events (id, owner, title) VALUES ('p1', 'ana', 'Dentist')",
                [],
            )
            .unwrap();
        phone
            .execute(
                "UPDATE events SET title = 'Standup (phone)' WHERE id = 'e1'",
                [],
            )
            .unwrap();
        assert!(matches!(phone.sync(), Err(DeviceError::Offline)));
        let st = phone.status().unwrap();
        assert_eq!((st.state(), st.pending), ("offline", 2), "{st}");
        laptop
            .transaction(|tx| {
                tx.execute(
                    "UPDATE events SET title = 'Standup (laptop)' WHERE id = 'e1'",
                    [],
                )?;
                tx.execute("DELETE FROM events WHERE id = 'e2'", [])
            })
            .unwrap();
        laptop.sync().unwrap();
    });
    // A write that bypasses the device API is refused: it would never reach the server.
    let bypass = phone
        .connection()
        .execute("UPDATE events SET title = 'sneaky' WHERE id = 'e1'", []);
    assert!(format!("{bypass:?}").contains("device API"), "{bypass:?}");

    // Back online: both sync, and every copy agrees with the server.
    blocking(|| {
        phone.set_offline(false).unwrap();
        let r = phone.sync().unwrap();
        assert_eq!(r.pushed, 2, "{r:?}");
        laptop.sync().unwrap();
    });
    let on_server = server_rows(&s, "ana").await;
    assert_eq!(on_server.len(), 2, "{on_server:?}");
    assert!(on_server.iter().any(|r| r.0 == "p1" && r.2 == "Dentist"));
    assert!(!on_server.iter().any(|r| r.0 == "e2"), "{on_server:?}");
    assert_eq!(device_rows(&phone), on_server);
    assert_eq!(device_rows(&laptop), on_server);
    // Both renamed e1 concurrently: the conflict is recorded on the server, visible to both.
    let conflicts = rows(
        &s.admin,
        "SELECT id FROM flotilla_conflicts WHERE tbl = 'events' AND col = 'title' ORDER BY id",
    )
    .await;
    let ids: Vec<String> = conflicts
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{conflicts}");
    assert_eq!(device_conflicts(&phone), ids);
    assert_eq!(device_conflicts(&laptop), ids);
    assert_eq!(phone.status().unwrap().state(), "synced");

    // A row outside the shape is refused with the reason, and undone on the device.
    blocking(|| {
        phone
            .execute(
                "INSERT INTO events (id, owner, title) VALUES ('x1', 'bob', 'for bob')",
                [],
            )
            .unwrap();
        let r = phone.sync().unwrap();
        assert_eq!(r.rejected, 1, "{r:?}");
        let rejected = phone.rejected().unwrap();
        assert!(
            rejected[0].reason.contains("not be in this device's shape"),
            "{rejected:?}"
        );
    });
    assert!(!device_rows(&phone).iter().any(|r| r.0 == "x1"));
    assert_eq!(
        server_rows(&s, "bob").await.len(),
        1,
        "bob's rows untouched"
    );
    // The device goes on after a rejection: its next transaction is taken.
    blocking(|| {
        phone
            .execute(
                "UPDATE events SET title = 'Dentist 10:00' WHERE id = 'p1'",
                [],
            )
            .unwrap();
        phone.sync().unwrap();
    });
    assert!(server_rows(&s, "ana")
        .await
        .iter()
        .any(|r| r.0 == "p1" && r.2 == "Dentist 10:00"));

    // `device list` shows both, with their origins and last sync.
    let list = s.admin.get("/v1/devices").await.unwrap();
    let phone_entry = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "phone")
        .unwrap()
        .clone();
    assert_eq!(phone_entry["user"], "ana");
    assert_eq!(phone_entry["origins"][0]["pushed_through"], 4);
    assert!(phone_entry["last_sync_ms"].as_u64().is_some());

    // Revoking the laptop cuts it off at once.
    s.admin.delete("/v1/devices/laptop").await.unwrap();
    let refused = blocking(|| laptop.sync());
    assert!(
        matches!(&refused, Err(DeviceError::Refused { status: 401, .. })),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_far_ahead_pushes_are_refused_or_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    exec(
        &s.admin,
        json!([{ "sql": "CREATE TABLE events (id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT)" }]),
    )
    .await;
    set_shape(&s, json!({ "table": "events", "where": "owner = :user" })).await;
    let token = add_device(&s, "tablet", "ana").await;
    let url = s.node.url.clone();

    // The first sync gives the local database its origin.
    let (status, first) = raw_sync(&url, &token, &json!({ "protocol": 1, "pull": {} })).await;
    assert_eq!(status, 200, "{first}");
    let origin = first["origin"].as_str().unwrap().to_string();
    assert_eq!(origin, "home--1");
    assert_eq!(first["pull"]["reset"], true);

    // Another origin than its own: refused.
    let (status, forged) =
        raw_sync(&url, &token, &json!({ "protocol": 1, "origin": "home--7" })).await;
    assert_eq!(status, 403, "{forged}");
    assert_eq!(forged["error"]["code"], "forged_origin");
    let (status, forged) =
        raw_sync(&url, &token, &json!({ "protocol": 1, "origin": "home" })).await;
    assert_eq!(
        (status, &forged["error"]["code"]),
        (403, &json!("forged_origin"))
    );

    // A push, and the same push again (a reply lost to a cut): applied once.
    let now_hlc = |ms: u64| ms << 16;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let push = json!({
        "protocol": 1,
        "origin": origin,
        "deps": { "0": {} },
        "push": [{
            "seq": 1, "hlc": now_hlc(wall), "deps": "0",
            "changes": [{ "table": "events", "op": "insert", "after": { "id": "t1", "owner": "ana", "title": "once" } }]
        }]
    });
    for _ in 0..2 {
        let (status, v) = raw_sync(&url, &token, &push).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["acknowledged"], 1);
    }
    let v = rows(&s.admin, "SELECT count(*) FROM events WHERE id = 't1'").await;
    assert_eq!(v[0][0], 1);

    // A gap in the numbers is named.
    let mut gap = push.clone();
    gap["push"][0]["seq"] = json!(3);
    let (status, v) = raw_sync(&url, &token, &gap).await;
    assert_eq!((status, &v["error"]["code"]), (409, &json!("gap")), "{v}");

    // A clock an hour ahead: refused, nothing applied.
    let mut ahead = push.clone();
    ahead["push"][0]["seq"] = json!(2);
    ahead["push"][0]["hlc"] = json!(now_hlc(wall + 3_600_000));
    ahead["push"][0]["changes"][0]["after"]["id"] = json!("t2");
    let (status, v) = raw_sync(&url, &token, &ahead).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (409, &json!("clock_ahead")),
        "{v}"
    );
    let v = rows(&s.admin, "SELECT count(*) FROM events WHERE id = 't2'").await;
    assert_eq!(v[0][0], 0);

    // A batch with one row outside the shape: refused whole (the first, fine, is not applied).
    let mixed = json!({
        "protocol": 1,
        "origin": origin,
        "deps": { "0": {} },
        "push": [
            { "seq": 2, "hlc": now_hlc(wall), "deps": "0",
              "changes": [{ "table": "events", "op": "insert", "after": { "id": "ok", "owner": "ana", "title": "fine" } }] },
            { "seq": 3, "hlc": now_hlc(wall), "deps": "0",
              "changes": [{ "table": "events", "op": "insert", "after": { "id": "bad", "owner": "bob", "title": "not mine" } }] }
        ]
    });
    let (status, v) = raw_sync(&url, &token, &mixed).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (403, &json!("outside_shape")),
        "{v}"
    );
    assert_eq!(
        (v["error"]["index"].as_u64(), v["error"]["seq"].as_u64()),
        (Some(1), Some(3))
    );
    let v = rows(
        &s.admin,
        "SELECT count(*) FROM events WHERE id IN ('ok', 'bad')",
    )
    .await;
    assert_eq!(v[0][0], 0, "nothing of a refused batch is applied");

    // Changing another user's row, or a column outside the shape's table: refused.
    exec(
        &s.admin,
        json!([{ "sql": "INSERT INTO events VALUES ('b1', 'bob', 'Bob')" }]),
    )
    .await;
    let steal = json!({
        "protocol": 1, "origin": origin, "deps": { "0": {} },
        "push": [{ "seq": 2, "hlc": now_hlc(wall), "deps": "0",
            "changes": [{ "table": "events", "op": "update",
                "before": { "id": "b1", "owner": "ana", "title": "Bob" },
                "after": { "id": "b1", "owner": "ana", "title": "mine now" } }] }]
    });
    let (status, v) = raw_sync(&url, &token, &steal).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (403, &json!("outside_shape")),
        "{v}"
    );
    let v = rows(&s.admin, "SELECT title FROM events WHERE id = 'b1'").await;
    assert_eq!(v[0][0], "Bob");
    let secret = json!({
        "protocol": 1, "origin": origin, "deps": { "0": {} },
        "push": [{ "seq": 2, "hlc": now_hlc(wall), "deps": "0",
            "changes": [{ "table": "_flotilla_tokens", "op": "delete", "before": { "id": "x" } }] }]
    });
    let (status, v) = raw_sync(&url, &token, &secret).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (403, &json!("outside_shape")),
        "{v}"
    );

    // Malformed requests: named, not a panic.
    for (body, what) in [
        (json!({ "protocol": 9 }), "unsupported_protocol"),
        (
            json!({ "protocol": 1, "origin": origin, "push": [{ "seq": 2, "hlc": 1, "deps": "nope", "changes": [] }] }),
            "bad_request",
        ),
        (
            json!({ "protocol": 1, "origin": origin, "deps": {"0": {}}, "push": [{ "seq": 2, "hlc": 1, "deps": "0", "changes": [{ "table": "events", "op": "upsert" }] }] }),
            "bad_request",
        ),
        (
            json!({ "protocol": 1, "origin": origin, "pull": { "cursor": "nonsense", "shapes": "x" } }),
            "bad_position",
        ),
    ] {
        let (status, v) = raw_sync(&url, &token, &body).await;
        assert_eq!(status, 400, "{body}: {v}");
        let code = v["error"]["code"].as_str().unwrap_or_default();
        assert!(code == what || what == "bad_request", "{body}: {v}");
    }
    // A token of another role is not a device's.
    let (status, v) = raw_sync(&url, &s.token, &json!({ "protocol": 1 })).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (403, &json!("not_a_device")),
        "{v}"
    );
}

/// A transport that opens a new connection for every request (so a proxy's byte limit for
/// "the next connection" meets exactly one request).
struct FreshConnections;

impl flotilla_device::Transport for FreshConnections {
    fn post_json(
        &self,
        url: &str,
        token: &str,
        body: Vec<u8>,
    ) -> Result<flotilla_device::Answer, flotilla_device::Unreachable> {
        flotilla_device::UreqTransport::default().post_json(url, token, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_mid_push_and_mid_pull_lose_nothing_and_apply_nothing_twice() {
    use flotilla_testkit::proxy::{ByteLimits, Proxy};
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    exec(
        &s.admin,
        json!([{ "sql": "CREATE TABLE events (id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT)" }]),
    )
    .await;
    set_shape(&s, json!({ "table": "events", "where": "owner = :user" })).await;
    let target = s.node.url.trim_start_matches("http://").to_string();
    let proxy = Proxy::start(target).await.unwrap();
    let phone_token = add_device(&s, "phone", "ana").await;
    let laptop_token = add_device(&s, "laptop", "ana").await;
    let (mut phone, mut laptop) = blocking(|| {
        (
            Device::open_with(
                dir.path().join("phone.db"),
                &proxy.url,
                &phone_token,
                Box::new(FreshConnections),
            )
            .unwrap(),
            Device::open(dir.path().join("laptop.db"), &s.node.url, &laptop_token).unwrap(),
        )
    });
    blocking(|| {
        phone.sync().unwrap();
        laptop.sync().unwrap();
    });

    // 50 transactions made offline, then pushes cut at various bytes, each way.
    blocking(|| {
        for i in 0..50 {
            phone
                .execute(
                    "INSERT INTO events VALUES (?1, 'ana', ?2)",
                    rusqlite::params![format!("p{i:02}"), format!("phone {i}")],
                )
                .unwrap();
        }
    });
    let count = |s: &Server| {
        let c = s.admin.clone();
        async move {
            rows(&c, "SELECT count(*) FROM events").await[0][0]
                .as_i64()
                .unwrap()
        }
    };
    let mut answer_lost = false;
    for (up, down) in [
        (Some(40), None),
        (Some(400), None),
        (Some(3_000), None),
        (None, Some(10)),
        (None, Some(300)),
    ] {
        proxy.limit_next(ByteLimits { up, down });
        let r = blocking(|| phone.sync());
        assert!(
            matches!(r, Err(DeviceError::Unreachable(_))),
            "a cut at {up:?}/{down:?} bytes: {r:?}"
        );
        let n = count(&s).await;
        // A cut request applies nothing; a cut answer may come after the whole push.
        assert!(n == 0 || n == 50, "{n} rows after a cut at {up:?}/{down:?}");
        if up.is_some() {
            assert_eq!(n, 0, "a request cut at {up:?} bytes applied something");
        }
        answer_lost |= n == 50;
        assert_eq!(phone.status().unwrap().state(), "offline");
    }
    assert!(answer_lost, "no cut fell after the push was applied");
    // The device pushes again what the server has: a no-op.
    blocking(|| phone.sync().unwrap());
    assert_eq!(count(&s).await, 50, "every transaction once");
    assert_eq!(phone.status().unwrap().pending, 0);

    // The laptop writes; the phone's pulls are cut mid-answer, then it resumes.
    blocking(|| {
        laptop
            .transaction(|tx| {
                for i in 0..200 {
                    tx.execute(
                        "INSERT INTO events VALUES (?1, 'ana', ?2)",
                        rusqlite::params![format!("l{i:03}"), "x".repeat(100)],
                    )?;
                }
                Ok(())
            })
            .unwrap();
        laptop.sync().unwrap();
    });
    let cursor_before = phone.status().unwrap().cursor;
    for down in [100, 2_000, 20_000] {
        proxy.limit_next(ByteLimits {
            up: None,
            down: Some(down),
        });
        let r = blocking(|| phone.sync());
        assert!(matches!(r, Err(DeviceError::Unreachable(_))), "{r:?}");
        assert_eq!(
            phone.status().unwrap().cursor,
            cursor_before,
            "nothing half applied"
        );
        assert_eq!(device_rows(&phone).len(), 50);
    }
    blocking(|| phone.sync().unwrap());
    let all = server_rows(&s, "ana").await;
    assert_eq!(all.len(), 250);
    assert_eq!(device_rows(&phone), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_reach_devices_in_order_and_an_older_schema_still_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    exec(
        &s.admin,
        json!([{ "sql": "CREATE TABLE events (id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT)" }]),
    )
    .await;
    set_shape(&s, json!({ "table": "events", "where": "owner = :user" })).await;
    let (tp, tl) = (
        add_device(&s, "phone", "ana").await,
        add_device(&s, "laptop", "ana").await,
    );
    let url = s.node.url.clone();
    let (mut phone, mut laptop) = blocking(|| {
        let mut p = Device::open(dir.path().join("p.db"), &url, &tp).unwrap();
        let mut l = Device::open(dir.path().join("l.db"), &url, &tl).unwrap();
        p.sync().unwrap();
        l.sync().unwrap();
        (p, l)
    });
    // The laptop writes with the old schema while the server adds a column and an index.
    blocking(|| {
        laptop
            .execute(
                "INSERT INTO events VALUES ('old', 'ana', 'before the column')",
                [],
            )
            .unwrap();
    });
    exec(
        &s.admin,
        json!([
            { "sql": "ALTER TABLE events ADD COLUMN room TEXT DEFAULT 'main hall'" },
            { "sql": "CREATE INDEX events_by_room ON events (room)" },
            { "sql": "INSERT INTO events VALUES ('new', 'ana', 'after the column', 'room 2')" },
        ]),
    )
    .await;
    blocking(|| {
        // Pushed with the old columns: merged with the new column's default.
        laptop.sync().unwrap();
        phone.sync().unwrap();
        // The phone has the column and the index, and writes the new column.
        let has_index: i64 = phone
            .connection()
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'events_by_room'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(has_index, 1);
        phone
            .execute("UPDATE events SET room = 'room 7' WHERE id = 'old'", [])
            .unwrap();
        phone.sync().unwrap();
        laptop.sync().unwrap();
    });
    let on_server = rows(&s.admin, "SELECT id, room FROM events ORDER BY id").await;
    assert_eq!(on_server, json!([["new", "room 2"], ["old", "room 7"]]));
    for d in [&phone, &laptop] {
        let mut stmt = d
            .connection()
            .prepare("SELECT id, room FROM events ORDER BY id")
            .unwrap();
        let local: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            local,
            vec![
                ("new".to_string(), "room 2".to_string()),
                ("old".to_string(), "room 7".to_string())
            ]
        );
    }
}
