// Applying what a device pulled, and replaying on top of it what it has not pushed yet: the
// device's rows are the server's plus its own pending changes (the rebase model of
// docs/devices.md). As crates/flotilla-device/src/apply.rs. Runs inside one local
// transaction with capture off.

import type { Database } from '@sqlite.org/sqlite-wasm';
import { quote, type ShapeTable } from './schema';
import { run, select } from './statement';
import { bindOf, canonical, rowValues, toJson, type Json, type JsonRow, type SqlValue } from './values';

/** One thing a pull asks the device to apply, as the protocol writes it. */
export type PullItem =
  | { schema: { table: string; sql: string } }
  | { upsert: { table: string; row: JsonRow } }
  | { delete: { table: string; key: JsonRow } }
  | { conflict: { row: JsonRow } };

/** A row change as the outbox keeps it and the push sends it. */
export interface OutboxChange {
  table: string;
  op: 'insert' | 'update' | 'delete';
  before?: JsonRow | null;
  after?: JsonRow | null;
}

type Row = [string, SqlValue][];

/** The rows a pull wrote, as (table, key): their pending changes are replayed on top. */
export type Touched = Set<string>;

function touchedKey(t: ShapeTable, key: SqlValue[]): string {
  return `${t.table.toLowerCase()}\u0000${key.map(canonical).join('\u0000')}`;
}

function keyOf(t: ShapeTable, row: Row): SqlValue[] | undefined {
  const out: SqlValue[] = [];
  for (const k of t.key) {
    const hit = row.find(([c]) => c === k);
    if (!hit) return undefined;
    out.push(hit[1]);
  }
  return out;
}

function tableOf(tables: ShapeTable[], name: string): ShapeTable {
  const t = tables.find((x) => x.table.toLowerCase() === name.toLowerCase());
  if (!t) throw new Error(`the server sent a row of ${name}, which is not in the shape`);
  return t;
}

/** Runs one statement with `values` bound at ?first, ?first+1…; `sql` gets their SQL. */
function binds(values: SqlValue[], first: number): [string[], unknown[]] {
  const exprs: string[] = [];
  const bound: unknown[] = [];
  values.forEach((v, i) => {
    const [e, b] = bindOf(v, first + i);
    exprs.push(e);
    bound.push(b);
  });
  return [exprs, bound];
}

function keyWhere(t: ShapeTable, key: SqlValue[], first: number): [string, unknown[]] {
  const [exprs, bound] = binds(key, first);
  return [t.key.map((k, i) => `${quote(k)} IS ${exprs[i]}`).join(' AND '), bound];
}

/** Inserts the row, or sets the columns given of the row with its key. */
function upsertRaw(db: Database, t: ShapeTable, row: Row): void {
  const [exprs, bound] = binds(
    row.map(([, v]) => v),
    1,
  );
  const sets = row
    .filter(([c]) => !t.key.includes(c))
    .map(([c]) => `${quote(c)} = excluded.${quote(c)}`);
  const action = sets.length === 0 ? 'DO NOTHING' : `DO UPDATE SET ${sets.join(', ')}`;
  run(
    db,
    `INSERT INTO ${quote(t.table)} (${row.map(([c]) => quote(c)).join(', ')}) ` +
      `VALUES (${exprs.join(', ')}) ON CONFLICT (${t.key.map(quote).join(', ')}) ${action}`,
    bound,
  );
}

/** The columns of a unique index SQLite names in a constraint failure. */
function uniqueColumns(e: unknown): string[] | undefined {
  const msg = e instanceof Error ? e.message : String(e);
  const m = /UNIQUE constraint failed: ([^\n]+)/.exec(msg);
  if (!m) return undefined;
  return m[1].split(', ').map((c) => c.slice(c.lastIndexOf('.') + 1).trim());
}

function isConstraint(e: unknown): boolean {
  const code = (e as { resultCode?: number }).resultCode;
  if (typeof code === 'number') return (code & 0xff) === 19;
  return /constraint failed/i.test(e instanceof Error ? e.message : String(e));
}

/**
 * Writes a row the server sent. A local row that holds one of its unique values (a change of
 * this device's not pushed yet) gives way: it is replayed afterwards, and if it still clashes
 * it waits unseen until the server has decided on it.
 */
function upsert(db: Database, t: ShapeTable, row: Row, touched: Touched): void {
  for (let round = 0; round < 8; round++) {
    let err: unknown;
    try {
      upsertRaw(db, t, row);
      return;
    } catch (e) {
      err = e;
    }
    const cols = uniqueColumns(err);
    const key = keyOf(t, row);
    const values = cols?.map((c) => row.find(([n]) => n === c)?.[1]);
    if (!cols || !key || !values || values.some((v) => v === undefined)) {
      throw new Error(`writing a row of ${t.table}: ${String(err)}`);
    }
    const [vexprs, vbound] = binds(values as SqlValue[], 1);
    const same = cols.map((c, i) => `${quote(c)} IS ${vexprs[i]}`).join(' AND ');
    const [kw, kbound] = keyWhere(t, key, cols.length + 1);
    const where = `WHERE ${same} AND NOT (${kw})`;
    const bound = [...vbound, ...kbound];
    const gone = select(db, `SELECT ${t.key.map(quote).join(', ')} FROM ${quote(t.table)} ${where}`, bound);
    for (const k of gone) touched.add(touchedKey(t, k.map(sqlOf)));
    run(db, `DELETE FROM ${quote(t.table)} ${where}`, bound);
  }
  throw new Error(`writing a row of ${t.table}: unique values clash again and again`);
}

/** A value as sqlite-wasm read it, typed. */
export function sqlOf(v: unknown): SqlValue {
  if (v === null || v === undefined) return { t: 'null' };
  if (typeof v === 'bigint') return { t: 'int', v };
  if (typeof v === 'number') return Number.isInteger(v) ? { t: 'int', v: BigInt(v) } : { t: 'real', v };
  if (typeof v === 'string') return { t: 'text', v };
  if (v instanceof Uint8Array) return { t: 'blob', v };
  throw new Error(`a value SQLite does not hold: ${String(v)}`);
}

function deleteRaw(db: Database, t: ShapeTable, key: SqlValue[]): void {
  const [kw, bound] = keyWhere(t, key, 1);
  run(db, `DELETE FROM ${quote(t.table)} WHERE ${kw}`, bound);
}

/**
 * Applies pulled items in order; returns whether the schema changed. Schema statements for
 * what exists already are skipped (a table the whole shape brought, created again by the log).
 */
export function applyItems(db: Database, tables: ShapeTable[], items: PullItem[], touched: Touched): boolean {
  let schemaChanged = false;
  for (const item of items) {
    if ('schema' in item) {
      schemaChanged = true;
      const sql = item.schema.sql;
      try {
        db.exec(sql);
      } catch (e) {
        const text = String(e);
        // An index is this device's own business (the server holds uniqueness): one the
        // device's rows cannot take is left out rather than stopping the sync.
        const index = /^\s*create\b/i.test(sql) && / index /i.test(sql);
        if (!text.includes('already exists') && !text.includes('duplicate column') && !index) {
          throw new Error(`the schema change ${JSON.stringify(sql)}: ${text}`);
        }
      }
    } else if ('upsert' in item) {
      const t = tableOf(tables, item.upsert.table);
      const row = rowValues(item.upsert.row);
      const key = keyOf(t, row);
      if (key) touched.add(touchedKey(t, key));
      upsert(db, t, row, touched);
    } else if ('delete' in item) {
      const t = tableOf(tables, item.delete.table);
      const key = keyOf(t, rowValues(item.delete.key));
      if (!key) throw new Error(`a delete of ${item.delete.table} without its key`);
      touched.add(touchedKey(t, key));
      deleteRaw(db, t, key);
    } else if ('conflict' in item) {
      const row = rowValues(item.conflict.row);
      const [exprs, bound] = binds(
        row.map(([, v]) => v),
        1,
      );
      run(db, `INSERT OR REPLACE INTO flotilla_conflicts (${row.map(([c]) => quote(c)).join(', ')}) VALUES (${exprs.join(', ')})`, bound);
    } else {
      throw new Error(`a pull item this device does not know: ${toJson(item as Json)}`);
    }
  }
  return schemaChanged;
}

/**
 * Replays a pending change on the rows as the server sent them: an insert writes its row, an
 * update its changed columns (of a row the server still has), a delete deletes. Only when the
 * pull touched one of its rows (`only` undefined: every change).
 */
/** The rows (as touched keys) a pending change writes: to see, without replaying it, whether
 * a pull touched them. */
export function touchedKeysOf(tables: ShapeTable[], c: OutboxChange): string[] {
  const t = tables.find((x) => x.table.toLowerCase() === c.table.toLowerCase());
  if (!t) return [];
  const out: string[] = [];
  for (const img of [c.before, c.after]) {
    const k = img ? keyOf(t, rowValues(img)) : undefined;
    if (k) out.push(touchedKey(t, k));
  }
  return out;
}

export function replay(db: Database, tables: ShapeTable[], c: OutboxChange, only?: Touched): void {
  const t = tables.find((x) => x.table.toLowerCase() === c.table.toLowerCase());
  // The table left the shape: the server will refuse the change, and say why.
  if (!t) return;
  const before = c.before ? rowValues(c.before) : undefined;
  const after = c.after ? rowValues(c.after) : undefined;
  if (only) {
    const hit = (img?: Row) => {
      const k = img && keyOf(t, img);
      return !!k && only.has(touchedKey(t, k));
    };
    if (!hit(before) && !hit(after)) return;
  }
  try {
    replayChange(db, t, c, before, after);
  } catch (e) {
    // The server's rows leave this change no room (a unique value another row holds now):
    // it stays in the outbox, unseen here, until the server has decided on it.
    if (isConstraint(e)) return;
    throw new Error(`replaying a change of ${t.table}: ${String(e)}`);
  }
}

function replayChange(db: Database, t: ShapeTable, c: OutboxChange, before?: Row, after?: Row): void {
  if (c.op === 'insert' && after) return upsertRaw(db, t, after);
  if (c.op === 'delete' && before) {
    const k = keyOf(t, before);
    if (k) deleteRaw(db, t, k);
    return;
  }
  if (c.op === 'update' && before && after) {
    const old = keyOf(t, before);
    const nw = keyOf(t, after);
    if (!old || !nw) return;
    if (old.map(canonical).join('\u0000') !== nw.map(canonical).join('\u0000')) {
      deleteRaw(db, t, old);
      return upsertRaw(db, t, after);
    }
    const changed = after.filter(([col, v]) => {
      const was = before.find(([c2]) => c2 === col);
      return !was || canonical(was[1]) !== canonical(v) || was[1].t !== v.t;
    });
    if (changed.length === 0) return;
    const [exprs, bound] = binds(
      changed.map(([, v]) => v),
      1,
    );
    const [kw, kbound] = keyWhere(t, old, changed.length + 1);
    run(db, `UPDATE ${quote(t.table)} SET ${changed.map(([col], i) => `${quote(col)} = ${exprs[i]}`).join(', ')} WHERE ${kw}`, [
      ...bound,
      ...kbound,
    ]);
  }
}
