//! The device's own tables in its local database, and the triggers that capture local writes
//! to the shape's tables into the outbox.
//!
//! Capture is by triggers (the browser client does the same): while the device API writes, a
//! row in `_flotilla_writing` says so and the triggers record each row change (its shape
//! columns, as JSON) in `_flotilla_capture`; at commit the device moves them into one outbox
//! transaction. A write to a shape table outside the API is refused by the triggers, so no
//! change can slip past the outbox. While a pull is applied the mode is 0: nothing captured.

use flotilla_types::sync_protocol::ShapeTable;
use rusqlite::Connection;

/// The local database's format (stored; a newer one is refused).
pub const LOCAL_FORMAT: i64 = 1;

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS _flotilla_device (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    format INTEGER NOT NULL,
    server TEXT NOT NULL,
    -- Given by the server at the first sync.
    origin TEXT,
    cursor TEXT,
    shapes TEXT,
    -- The shape's tables as the server last described them (JSON).
    tables TEXT NOT NULL DEFAULT '[]',
    -- The server's version vector as pulled (JSON), and the id it is kept under in _flotilla_deps.
    vv TEXT NOT NULL DEFAULT '{}',
    deps_id INTEGER NOT NULL DEFAULT 0,
    hlc INTEGER NOT NULL DEFAULT 0,
    next_seq INTEGER NOT NULL DEFAULT 1,
    last_sync_ms INTEGER,
    last_error TEXT,
    -- unreachable, refused or local (see Device::status).
    last_error_kind TEXT,
    offline INTEGER NOT NULL DEFAULT 0,
    -- The largest request the server said it takes.
    max_request_bytes INTEGER,
    -- Pull the whole shape next (a transaction was rejected: its effects go).
    reset_next INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS _flotilla_deps (id INTEGER PRIMARY KEY, vv TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS _flotilla_outbox (
    seq INTEGER PRIMARY KEY,
    hlc INTEGER NOT NULL,
    deps INTEGER NOT NULL,
    -- The row changes, a JSON array of {table, op, before, after}.
    changes TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS _flotilla_capture (
    n INTEGER PRIMARY KEY,
    tbl TEXT NOT NULL,
    op TEXT NOT NULL,
    before TEXT,
    after TEXT
);
CREATE TABLE IF NOT EXISTS _flotilla_writing (mode INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS _flotilla_rejected (
    seq INTEGER PRIMARY KEY,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    changes TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
-- The conflicts the server recorded on rows of this device's shape (pulled, read-only here).
CREATE TABLE IF NOT EXISTS flotilla_conflicts (
    id TEXT PRIMARY KEY,
    tbl TEXT NOT NULL,
    row_key TEXT NOT NULL,
    col TEXT,
    local_value ANY,
    local_origin TEXT NOT NULL,
    local_lsn INTEGER NOT NULL,
    local_hlc TEXT NOT NULL,
    remote_value ANY,
    remote_origin TEXT NOT NULL,
    remote_lsn INTEGER NOT NULL,
    remote_hlc TEXT NOT NULL,
    policy TEXT NOT NULL,
    winner TEXT NOT NULL,
    value ANY,
    resolved INTEGER NOT NULL,
    resolved_by TEXT
);
";

/// Makes the device's tables (once) and the state row for `server`.
pub fn create(conn: &Connection, server: &str) -> rusqlite::Result<()> {
    conn.execute_batch(CREATE)?;
    conn.execute(
        "INSERT OR IGNORE INTO _flotilla_device (id, format, server) VALUES (1, ?1, ?2)",
        rusqlite::params![LOCAL_FORMAT, server],
    )?;
    conn.execute(
        "INSERT OR IGNORE INTO _flotilla_deps (id, vv) VALUES (0, '{}')",
        [],
    )?;
    crate::documents::create(conn)
}

pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A JSON object of a row's shape columns, as SQL over `NEW` or `OLD`: BLOBs as
/// `{"hex": …}` (what SQL can write), infinite reals as `{"real": "inf"}`, other values as
/// themselves.
fn image_sql(row: &str, t: &ShapeTable) -> String {
    let parts: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let v = format!("{row}.{}", quote(c));
            format!(
                "{}, json(CASE WHEN typeof({v}) = 'blob' THEN json_object('hex', hex({v})) \
                 WHEN typeof({v}) = 'real' AND abs({v}) > 1.7976931348623157e308 THEN \
                 json_object('real', CASE WHEN {v} > 0 THEN 'inf' ELSE '-inf' END) \
                 ELSE json_quote({v}) END)",
                literal(c)
            )
        })
        .collect();
    format!("json_object({})", parts.join(", "))
}

fn trigger_name(table: &str, op: &str) -> String {
    quote(&format!("_flotilla_capture_{table}_{op}"))
}

/// (Re)creates the capture triggers of the shape's tables that exist locally, and drops
/// those of tables no longer in it.
pub fn install_triggers(conn: &Connection, tables: &[ShapeTable]) -> rusqlite::Result<()> {
    let existing: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE '\\_flotilla\\_capture\\_%' ESCAPE '\\'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for name in existing {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote(&name)))?;
    }
    for t in tables {
        let exists: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [&t.table],
            |r| r.get(0),
        )?;
        if exists == 0 {
            continue;
        }
        let guard = "SELECT RAISE(ABORT, 'a table of the device''s shape is written through \
                     the device API (Device::execute / Device::transaction), which records \
                     the change for the server') WHERE NOT EXISTS (SELECT 1 FROM _flotilla_writing);";
        let tbl = quote(&t.table);
        let name = literal(&t.table);
        let (new, old) = (image_sql("NEW", t), image_sql("OLD", t));
        conn.execute_batch(&format!(
            "CREATE TRIGGER {ins} AFTER INSERT ON {tbl} BEGIN {guard} \
               INSERT INTO _flotilla_capture (tbl, op, before, after) \
               SELECT {name}, 'insert', NULL, {new} FROM _flotilla_writing WHERE mode = 1; END;
             CREATE TRIGGER {upd} AFTER UPDATE ON {tbl} BEGIN {guard} \
               INSERT INTO _flotilla_capture (tbl, op, before, after) \
               SELECT {name}, 'update', {old}, {new} FROM _flotilla_writing WHERE mode = 1; END;
             CREATE TRIGGER {del} AFTER DELETE ON {tbl} BEGIN {guard} \
               INSERT INTO _flotilla_capture (tbl, op, before, after) \
               SELECT {name}, 'delete', {old}, NULL FROM _flotilla_writing WHERE mode = 1; END;",
            ins = trigger_name(&t.table, "insert"),
            upd = trigger_name(&t.table, "update"),
            del = trigger_name(&t.table, "delete"),
        ))?;
    }
    Ok(())
}
