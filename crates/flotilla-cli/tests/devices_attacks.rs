//! Offline devices under attack, on real processes: the ways an outside probe found to take
//! over, revive or read another user's rows, to wipe columns outside a shape, and to wedge a
//! device so that it never syncs again — each kept here so that it stays fixed.

mod common;

use common::devices::*;
use common::*;
use flotilla_device::{Answer, Device, Transport, Unreachable, UreqTransport};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

async fn sql(s: &Server, statements: &[&str]) {
    let list: Vec<Value> = statements.iter().map(|q| json!({ "sql": q })).collect();
    exec(&s.admin, json!(list)).await;
}

fn now_hlc() -> u64 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64)
        << 16
}

/// A device speaking the protocol by hand: its origin and next transaction number.
struct RawDevice {
    url: String,
    token: String,
    origin: String,
    seq: u64,
}

impl RawDevice {
    async fn new(s: &Server, name: &str, user: &str) -> RawDevice {
        let token = add_device(s, name, user).await;
        let (status, v) = raw_sync(&s.node.url, &token, &json!({ "protocol": 1 })).await;
        assert_eq!(status, 200, "{v}");
        RawDevice {
            url: s.node.url.clone(),
            token,
            origin: v["origin"].as_str().unwrap().to_string(),
            seq: 0,
        }
    }

    /// Pushes one transaction of `changes`; (status, answer). The number is used up only
    /// when the server takes it.
    async fn push(&mut self, changes: Value) -> (u16, Value) {
        let body = json!({
            "protocol": 1, "origin": self.origin, "deps": { "d": {} },
            "push": [{ "seq": self.seq + 1, "hlc": now_hlc(), "deps": "d", "changes": changes }],
            "pull": {},
        });
        let (status, v) = raw_sync(&self.url, &self.token, &body).await;
        if status == 200 {
            self.seq += 1;
        }
        (status, v)
    }
}

async fn one(s: &Server, q: &str) -> Value {
    rows(&s.admin, q).await[0].clone()
}

/// The shape of the probe: events of one's own, without the `secret` column.
async fn events_without_secret(s: &Server) {
    sql(
        s,
        &["CREATE TABLE events (id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT, starts TEXT, secret TEXT)"],
    )
    .await;
    set_shape(s, json!({ "table": "events", "columns": ["id", "owner", "title", "starts"], "where": "owner = :user" })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_cannot_take_over_revive_or_read_another_users_row() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    events_without_secret(&s).await;
    let mut phone = RawDevice::new(&s, "phone", "ana").await;
    sql(
        &s,
        &["INSERT INTO events VALUES ('b1', 'bob', 'bob private', '2026-01-01', 'S-bob')"],
    )
    .await;

    // Moving one's own row onto another user's key.
    let (status, _) = phone
        .push(json!([{ "table": "events", "op": "insert",
            "after": { "id": "a1", "owner": "ana", "title": "ana's", "starts": "x" } }]))
        .await;
    assert_eq!(status, 200);
    let (status, v) = phone
        .push(json!([{ "table": "events", "op": "update",
            "before": { "id": "a1", "owner": "ana", "title": "ana's", "starts": "x" },
            "after": { "id": "b1", "owner": "ana", "title": "hijacked", "starts": "x" } }]))
        .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (403, &json!("outside_shape")),
        "{v}"
    );
    assert_eq!(
        one(
            &s,
            "SELECT owner, title, secret FROM events WHERE id = 'b1'"
        )
        .await,
        json!(["bob", "bob private", "S-bob"])
    );

    // Reviving another user's deleted row, under either delete rule.
    sql(
        &s,
        &[
            "INSERT INTO events VALUES ('b8', 'bob', 'bob diary', '2026-08-08', 'S8')",
            "DELETE FROM events WHERE id = 'b8'",
        ],
    )
    .await;
    for rule in ["delete-wins", "update-wins"] {
        s.admin
            .put(
                "/v1/conflicts/policies",
                &json!({ "table": "events", "policy": rule }),
            )
            .await
            .unwrap();
        for change in [
            json!({ "table": "events", "op": "update",
                "before": { "id": "b8", "owner": "ana" }, "after": { "id": "b8", "owner": "ana" } }),
            json!({ "table": "events", "op": "insert", "after": { "id": "b8", "owner": "ana" } }),
        ] {
            let (status, v) = phone.push(json!([change])).await;
            assert_eq!(
                (status, &v["error"]["code"]),
                (403, &json!("outside_shape")),
                "{rule}: {v}"
            );
        }
        assert_eq!(
            one(&s, "SELECT count(*) FROM events WHERE id = 'b8'").await,
            json!([0])
        );
    }

    // A key of another type than its column's names another row to the merge: refused.
    sql(
        &s,
        &[
            "INSERT INTO events VALUES ('7', 'bob', 'bob seven', 'x', 'S7')",
            "DELETE FROM events WHERE id = '7'",
        ],
    )
    .await;
    let (status, v) = phone
        .push(json!([{ "table": "events", "op": "insert", "after": { "id": 7, "owner": "ana" } }]))
        .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("malformed")),
        "{v}"
    );
    assert_eq!(
        one(&s, "SELECT count(*) FROM events WHERE id = '7'").await,
        json!([0])
    );

    // Whatever conflicts the phone pulls, none carries bob's values or a hidden column.
    let (_, all) = raw_sync(
        &phone.url,
        &phone.token,
        &json!({ "protocol": 1, "origin": phone.origin, "pull": {} }),
    )
    .await;
    let text = all.to_string();
    for leaked in ["bob private", "S-bob", "bob diary", "S8"] {
        assert!(!text.contains(leaked), "the phone pulled {leaked:?}: {all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_move_keeps_the_columns_outside_the_shape() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    events_without_secret(&s).await;
    let mut phone = RawDevice::new(&s, "phone", "ana").await;
    sql(
        &s,
        &["INSERT INTO events VALUES ('a5', 'ana', 'mine', 'x', 'kept by the server')"],
    )
    .await;
    let (status, v) = phone
        .push(json!([{ "table": "events", "op": "update",
            "before": { "id": "a5", "owner": "ana", "title": "mine", "starts": "x" },
            "after": { "id": "a6", "owner": "ana", "title": "moved", "starts": "x" } }]))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        one(&s, "SELECT title, secret FROM events WHERE id = 'a6'").await,
        json!(["moved", "kept by the server"])
    );
    // A column outside the shape in a push (a device that has not pulled a narrower shape
    // yet) is left out: not written, changed or not; the rest of the change is taken.
    let (status, v) = phone
        .push(json!([{ "table": "events", "op": "update",
            "before": { "id": "a6", "owner": "ana", "title": "moved", "secret": "old" },
            "after": { "id": "a6", "owner": "ana", "title": "retitled", "secret": "new" } }]))
        .await;
    assert_eq!(status, 200, "{v}");
    // An insert over the row (INSERT OR REPLACE on a device) keeps it too.
    let (status, v) = phone
        .push(json!([{ "table": "events", "op": "insert",
            "after": { "id": "a6", "owner": "ana", "title": "retitled", "starts": "y" } }]))
        .await;
    assert_eq!(status, 200, "{v}");
    // A NULL key is malformed (named: the device sets it aside).
    let (status, v) = phone
        .push(json!([{ "table": "events", "op": "insert",
            "after": { "id": null, "owner": "ana", "title": "no key" } }]))
        .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("malformed")),
        "{v}"
    );
    assert!(v["error"]["seq"].as_u64().is_some(), "{v}");
    assert_eq!(
        one(&s, "SELECT title, secret FROM events WHERE id = 'a6'").await,
        json!(["retitled", "kept by the server"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_unique_value_does_not_wedge_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    sql(
        &s,
        &[
            "CREATE TABLE events (id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT, starts TEXT)",
            "CREATE UNIQUE INDEX one_per_slot ON events (owner, starts)",
        ],
    )
    .await;
    set_shape(&s, json!({ "table": "events", "where": "owner = :user" })).await;
    let (tp, tl) = (
        add_device(&s, "phone", "ana").await,
        add_device(&s, "laptop", "ana").await,
    );
    let url = s.node.url.clone();
    let (mut phone, mut laptop) = blocking(|| {
        (
            Device::open(dir.path().join("p.db"), &url, &tp).unwrap(),
            Device::open(dir.path().join("l.db"), &url, &tl).unwrap(),
        )
    });
    blocking(|| {
        phone.sync().unwrap();
        laptop.sync().unwrap();
        laptop
            .execute(
                "INSERT INTO events VALUES ('A', 'ana', 'laptop', '10:00')",
                [],
            )
            .unwrap();
        laptop.sync().unwrap();
        phone
            .execute(
                "INSERT INTO events VALUES ('B', 'ana', 'phone', '10:00')",
                [],
            )
            .unwrap();
        // The pulled A takes the slot B holds locally: the sync still completes.
        phone.sync().unwrap();
        phone.sync().unwrap();
        phone
            .execute(
                "INSERT INTO events VALUES ('C', 'ana', 'later', '11:00')",
                [],
            )
            .unwrap();
        phone.sync().unwrap();
        laptop.sync().unwrap();
    });
    let st = phone.status().unwrap();
    assert_eq!((st.state(), st.pending), ("synced", 0), "{st}");
    let server_rows = rows(&s.admin, "SELECT id FROM events ORDER BY id").await;
    let local = |d: &Device| -> Value {
        let mut stmt = d
            .connection()
            .prepare("SELECT id FROM events ORDER BY id")
            .unwrap();
        let ids: Vec<Value> = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|r| json!([r.unwrap()]))
            .collect();
        json!(ids)
    };
    assert_eq!(local(&phone), server_rows);
    assert_eq!(local(&laptop), server_rows);
    assert!(server_rows.to_string().contains("\"C\""), "{server_rows}");
}

/// A transport that, once, runs another sync of the same local database while its own
/// request is out (as a background sync and an app's own sync may overlap).
/// What runs, once, between the server's answer and the device taking it.
type Meanwhile = Box<dyn FnOnce() + Send>;

struct Overlapping {
    inner: UreqTransport,
    meanwhile: Mutex<Option<Meanwhile>>,
}

impl Transport for Overlapping {
    fn post_json(&self, url: &str, token: &str, body: Vec<u8>) -> Result<Answer, Unreachable> {
        let answer = self.inner.post_json(url, token, body);
        if let Some(run) = self.meanwhile.lock().unwrap().take() {
            run();
        }
        answer
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_syncs_of_one_database_leave_it_usable() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    sql(
        &s,
        &["CREATE TABLE notes (id TEXT PRIMARY KEY, owner TEXT NOT NULL, body TEXT)"],
    )
    .await;
    set_shape(&s, json!({ "table": "notes", "where": "owner = :user" })).await;
    let (tp, tl) = (
        add_device(&s, "pad", "ana").await,
        add_device(&s, "laptop", "ana").await,
    );
    let url = s.node.url.clone();
    let path = dir.path().join("pad.db");
    blocking(|| {
        let laptop = Arc::new(Mutex::new(
            Device::open(dir.path().join("l.db"), &url, &tl).unwrap(),
        ));
        laptop.lock().unwrap().sync().unwrap();
        let mut first = Device::open(&path, &url, &tp).unwrap();
        first.sync().unwrap();
        // The pad's answer arrives after the laptop wrote again and a second sync of the
        // pad's file took that newer row: the answer is older than the file.
        let mut other = Device::open(&path, &url, &tp).unwrap();
        let reached = Arc::new(Mutex::new(None));
        let (l2, r2) = (laptop.clone(), reached.clone());
        let mut pad = Device::open_with(
            &path,
            &url,
            &tp,
            Box::new(Overlapping {
                inner: UreqTransport::default(),
                meanwhile: Mutex::new(Some(Box::new(move || {
                    let mut l = l2.lock().unwrap();
                    l.execute(
                        "INSERT INTO notes VALUES ('n1', 'ana', 'from the laptop')",
                        [],
                    )
                    .unwrap();
                    l.sync().unwrap();
                    other.sync().expect("the overlapping sync");
                    *r2.lock().unwrap() = other.status().unwrap().cursor;
                }))),
            }),
        )
        .unwrap();
        pad.execute("INSERT INTO notes VALUES ('n2', 'ana', 'from the pad')", [])
            .unwrap();
        pad.sync().unwrap();
        // The older answer did not take the cursor back.
        let lsn = |c: Option<String>| -> u64 {
            c.and_then(|c| c.rsplit('/').next().and_then(|l| l.parse().ok()))
                .unwrap_or(0)
        };
        let other_reached = lsn(reached.lock().unwrap().clone());
        assert!(other_reached > 0);
        assert!(
            lsn(pad.status().unwrap().cursor) >= other_reached,
            "the cursor went back from {other_reached} to {:?}",
            pad.status().unwrap().cursor
        );
        let mut laptop = laptop.lock().unwrap();
        pad.execute("INSERT INTO notes VALUES ('n3', 'ana', 'after')", [])
            .unwrap();
        pad.sync().unwrap();
        laptop.sync().unwrap();
        let st = pad.status().unwrap();
        assert_eq!((st.state(), st.pending), ("synced", 0), "{st}");
        let count = |d: &Device| -> i64 {
            d.connection()
                .query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!((count(&pad), count(&laptop)), (3, 3));
    });
    assert_eq!(one(&s, "SELECT count(*) FROM notes").await, json!([3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_beyond_the_body_limit_goes_in_smaller_requests() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small-bodies.toml");
    std::fs::write(&config, "[api]\nmax-body-kib = 64\n").unwrap();
    let s = server(dir.path(), &["--config", config.to_str().unwrap()]).await;
    sql(
        &s,
        &["CREATE TABLE notes (id TEXT PRIMARY KEY, owner TEXT NOT NULL, body TEXT)"],
    )
    .await;
    set_shape(&s, json!({ "table": "notes", "where": "owner = :user" })).await;
    let token = add_device(&s, "pad", "ana").await;
    let url = s.node.url.clone();
    let (report, rejected) = blocking(|| {
        let mut pad = Device::open(dir.path().join("pad.db"), &url, &token).unwrap();
        pad.sync().unwrap();
        pad.set_offline(true).unwrap();
        for i in 0..40 {
            pad.execute(
                "INSERT INTO notes VALUES (?1, 'ana', ?2)",
                rusqlite::params![format!("n{i}"), "x".repeat(10_000)],
            )
            .unwrap();
        }
        // One transaction the server can never take.
        pad.execute(
            "INSERT INTO notes VALUES ('huge', 'ana', ?1)",
            [&"y".repeat(200_000)],
        )
        .unwrap();
        pad.execute("INSERT INTO notes VALUES ('small', 'ana', 'after')", [])
            .unwrap();
        pad.set_offline(false).unwrap();
        let r = pad.sync().unwrap();
        (r, pad.rejected().unwrap())
    });
    assert_eq!((report.pushed, report.rejected), (42, 1), "{report:?}");
    assert_eq!(rejected[0].code, "too_large", "{rejected:?}");
    assert_eq!(one(&s, "SELECT count(*) FROM notes").await, json!([41]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_predicate_cannot_judge_does_not_break_whole_shape_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    sql(
        &s,
        &[
            "CREATE TABLE docs (id TEXT PRIMARY KEY, meta TEXT)",
            "INSERT INTO docs VALUES ('d1', '{\"owner\": \"ana\"}'), ('d2', 'not json at all'), ('d3', '{\"owner\": \"bob\"}')",
        ],
    )
    .await;
    set_shape(
        &s,
        json!({ "table": "docs", "where": "json_extract(meta, '$.owner') = :user" }),
    )
    .await;
    let token = add_device(&s, "pad", "ana").await;
    let (status, v) = raw_sync(&s.node.url, &token, &json!({ "protocol": 1, "pull": {} })).await;
    assert_eq!(status, 200, "{v}");
    let rows: Vec<&Value> = v["pull"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("upsert"))
        .collect();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["row"]["id"], "d1");
    // A shape whose predicate reads a column the shape leaves out is refused when set.
    let refused = s
        .admin
        .put(
            "/v1/shapes",
            &json!({ "table": "docs", "columns": ["id"], "where": "meta IS NOT NULL" }),
        )
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("reads more than the shape's columns"),
        "{refused:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_on_columns_outside_the_shape_and_nocase_owners_do_not_wedge_or_leak() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    sql(
        &s,
        &[
            "CREATE TABLE plan (id TEXT PRIMARY KEY, owner TEXT COLLATE NOCASE NOT NULL, title TEXT, prio INTEGER NOT NULL DEFAULT 0)",
            "CREATE UNIQUE INDEX plan_u ON plan (owner, prio)",
            "INSERT INTO plan VALUES ('p1', 'ana', 'one', 1), ('p2', 'ana', 'two', 2), ('P3', 'ANA', 'not hers', 3)",
        ],
    )
    .await;
    set_shape(
        &s,
        json!({ "table": "plan", "columns": ["id", "owner", "title"], "where": "owner = :user" }),
    )
    .await;
    let token = add_device(&s, "pad", "ana").await;
    let url = s.node.url.clone();
    let ids = |d: &Device| -> Vec<String> {
        let mut stmt = d
            .connection()
            .prepare("SELECT id FROM plan ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let mut pad = blocking(|| {
        let mut pad = Device::open(dir.path().join("pad.db"), &url, &token).unwrap();
        pad.sync().unwrap();
        pad
    });
    // Her rows, not ANA's (the shape compares as pushes and pulls of changes do).
    assert_eq!(ids(&pad), vec!["p1", "p2"]);
    // A unique index the device's rows could not take arrives later: the sync goes on.
    sql(
        &s,
        &["CREATE UNIQUE INDEX plan_u2 ON plan (owner, title, prio)"],
    )
    .await;
    blocking(|| {
        pad.execute(
            "INSERT INTO plan (id, owner, title) VALUES ('p4', 'ana', 'four')",
            [],
        )
        .unwrap();
        pad.sync().unwrap();
        pad.sync().unwrap();
        let st = pad.status().unwrap();
        assert_eq!((st.state(), st.pending), ("synced", 0), "{st}");
    });
    assert_eq!(ids(&pad), vec!["p1", "p2", "p4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_that_was_ahead_does_not_wedge_a_device() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    sql(
        &s,
        &["CREATE TABLE notes (id TEXT PRIMARY KEY, owner TEXT NOT NULL, body TEXT)"],
    )
    .await;
    set_shape(&s, json!({ "table": "notes", "where": "owner = :user" })).await;
    let token = add_device(&s, "pad", "ana").await;
    let url = s.node.url.clone();
    let skew_ms = Arc::new(AtomicU64::new(0));
    let skew = skew_ms.clone();
    let report = blocking(|| {
        let mut pad = Device::open(dir.path().join("pad.db"), &url, &token)
            .unwrap()
            .with_clock(Box::new(move || {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64
                    + skew.load(Ordering::Relaxed)
            }));
        pad.sync().unwrap();
        // A day ahead for one write, then the clock is set right.
        skew_ms.store(86_400_000, Ordering::Relaxed);
        pad.execute(
            "INSERT INTO notes VALUES ('n1', 'ana', 'while the clock was wrong')",
            [],
        )
        .unwrap();
        skew_ms.store(0, Ordering::Relaxed);
        pad.execute("INSERT INTO notes VALUES ('n2', 'ana', 'after')", [])
            .unwrap();
        pad.sync().unwrap()
    });
    assert_eq!(report.pushed, 2, "{report:?}");
    assert_eq!(one(&s, "SELECT count(*) FROM notes").await, json!([2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_database_restored_from_a_backup_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), &[]).await;
    sql(
        &s,
        &["CREATE TABLE notes (id TEXT PRIMARY KEY, owner TEXT NOT NULL, body TEXT)"],
    )
    .await;
    set_shape(&s, json!({ "table": "notes", "where": "owner = :user" })).await;
    let token = add_device(&s, "phone", "ana").await;
    let url = s.node.url.clone();
    let (phone, backup) = (dir.path().join("phone.db"), dir.path().join("backup.db"));
    blocking(|| {
        let mut d = Device::open(&phone, &url, &token).unwrap();
        d.sync().unwrap();
        d.execute(
            "INSERT INTO notes VALUES ('n1', 'ana', 'before the backup')",
            [],
        )
        .unwrap();
        d.sync().unwrap();
        drop(d);
        // The backup, taken with the database closed.
        std::fs::copy(&phone, &backup).unwrap();
        let mut d = Device::open(&phone, &url, &token).unwrap();
        d.execute(
            "INSERT INTO notes VALUES ('n2', 'ana', 'after the backup')",
            [],
        )
        .unwrap();
        d.sync().unwrap();
        drop(d);
        // The backup comes back and makes its own next transaction, under the number n2 took.
        std::fs::copy(&backup, &phone).unwrap();
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", phone.display()));
        }
        let mut d = Device::open(&phone, &url, &token).unwrap();
        d.execute(
            "INSERT INTO notes VALUES ('n3', 'ana', 'made on the restored copy')",
            [],
        )
        .unwrap();
        d.sync().unwrap();
        let st = d.status().unwrap();
        assert_eq!((st.state(), st.pending), ("synced", 0), "{st}");
        let held: i64 = d
            .connection()
            .query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(held, 3);
    });
    assert_eq!(
        rows(&s.admin, "SELECT id FROM notes ORDER BY id").await,
        json!([["n1"], ["n2"], ["n3"]])
    );
}
