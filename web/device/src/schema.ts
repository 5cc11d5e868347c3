// The device's own tables in its local database, and the triggers that capture local writes
// to the shape's tables into the outbox. The same tables, triggers and JSON as the Rust
// device crate (crates/flotilla-device/src/local_schema.rs): one local format, two clients.
//
// While the device API writes, a row in `_flotilla_writing` says so and the triggers record
// each row change (its shape columns, as JSON) in `_flotilla_capture`; at commit the device
// moves them into one outbox transaction. A write to a shape table outside the API is refused
// by the triggers. While a pull is applied the mode is 0: nothing is captured.

import type { Database } from '@sqlite.org/sqlite-wasm';

/** The local database's format (stored; a newer one is refused). */
export const LOCAL_FORMAT = 1;

/** A table of the device's shape, as the server describes it. */
export interface ShapeTable {
  table: string;
  columns: string[];
  key: string[];
}

const CREATE = `
CREATE TABLE IF NOT EXISTS _flotilla_device (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    format INTEGER NOT NULL,
    server TEXT NOT NULL,
    origin TEXT,
    cursor TEXT,
    shapes TEXT,
    tables TEXT NOT NULL DEFAULT '[]',
    vv TEXT NOT NULL DEFAULT '{}',
    deps_id INTEGER NOT NULL DEFAULT 0,
    hlc INTEGER NOT NULL DEFAULT 0,
    next_seq INTEGER NOT NULL DEFAULT 1,
    last_sync_ms INTEGER,
    last_error TEXT,
    last_error_kind TEXT,
    offline INTEGER NOT NULL DEFAULT 0,
    max_request_bytes INTEGER,
    reset_next INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS _flotilla_deps (id INTEGER PRIMARY KEY, vv TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS _flotilla_outbox (
    seq INTEGER PRIMARY KEY,
    hlc INTEGER NOT NULL,
    deps INTEGER NOT NULL,
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
`;

/** Makes the device's tables (once) and the state row for `server`. */
export function create(db: Database, server: string): void {
  db.exec(CREATE);
  db.exec({
    sql: 'INSERT OR IGNORE INTO _flotilla_device (id, format, server) VALUES (1, ?1, ?2)',
    bind: [LOCAL_FORMAT, server],
  });
  db.exec("INSERT OR IGNORE INTO _flotilla_deps (id, vv) VALUES (0, '{}')");
}

export function quote(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

function literal(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

/** A JSON object of a row's shape columns, as SQL over `NEW` or `OLD`. */
function imageSql(row: string, t: ShapeTable): string {
  const parts = t.columns.map((c) => {
    const v = `${row}.${quote(c)}`;
    return (
      `${literal(c)}, json(CASE WHEN typeof(${v}) = 'blob' THEN json_object('hex', hex(${v})) ` +
      `WHEN typeof(${v}) = 'real' AND abs(${v}) > 1.7976931348623157e308 THEN ` +
      `json_object('real', CASE WHEN ${v} > 0 THEN 'inf' ELSE '-inf' END) ` +
      `ELSE json_quote(${v}) END)`
    );
  });
  return `json_object(${parts.join(', ')})`;
}

function triggerName(table: string, op: string): string {
  return quote(`_flotilla_capture_${table}_${op}`);
}

/** (Re)creates the capture triggers of the shape's tables that exist locally. */
export function installTriggers(db: Database, tables: ShapeTable[]): void {
  const existing = db.selectValues(
    "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE '\\_flotilla\\_capture\\_%' ESCAPE '\\'",
  ) as string[];
  for (const name of existing) db.exec(`DROP TRIGGER IF EXISTS ${quote(name)}`);
  const guard =
    "SELECT RAISE(ABORT, 'a table of the device''s shape is written through the device API " +
    "(device.execute / device.transaction), which records the change for the server') " +
    'WHERE NOT EXISTS (SELECT 1 FROM _flotilla_writing);';
  for (const t of tables) {
    const exists = db.selectValue(
      "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
      [t.table],
    );
    if (!exists) continue;
    const tbl = quote(t.table);
    const name = literal(t.table);
    const [nw, old] = [imageSql('NEW', t), imageSql('OLD', t)];
    db.exec(
      `CREATE TRIGGER ${triggerName(t.table, 'insert')} AFTER INSERT ON ${tbl} BEGIN ${guard} ` +
        `INSERT INTO _flotilla_capture (tbl, op, before, after) ` +
        `SELECT ${name}, 'insert', NULL, ${nw} FROM _flotilla_writing WHERE mode = 1; END;` +
        `CREATE TRIGGER ${triggerName(t.table, 'update')} AFTER UPDATE ON ${tbl} BEGIN ${guard} ` +
        `INSERT INTO _flotilla_capture (tbl, op, before, after) ` +
        `SELECT ${name}, 'update', ${old}, ${nw} FROM _flotilla_writing WHERE mode = 1; END;` +
        `CREATE TRIGGER ${triggerName(t.table, 'delete')} AFTER DELETE ON ${tbl} BEGIN ${guard} ` +
        `INSERT INTO _flotilla_capture (tbl, op, before, after) ` +
        `SELECT ${name}, 'delete', ${old}, NULL FROM _flotilla_writing WHERE mode = 1; END;`,
    );
  }
}
