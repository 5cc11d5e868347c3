// A device's local database, bound to its server: local reads and writes at any time, online
// or not, and `sync()` with the server's /v1/sync when it can. The browser twin of the Rust
// crate `flotilla-device` (crates/flotilla-device/src/lib.rs): the same local tables, the same
// outbox, the same protocol (docs/devices.md).
//
// The device reaches the server only through a `Transport` (one POST at a time), so the
// host decides where requests go from: the calendar page runs the database in a worker (OPFS
// needs one) and sends requests from the page.

import type { Database } from '@sqlite.org/sqlite-wasm';
import { applyItems, replay, touchedKeysOf, type OutboxChange, type PullItem } from './apply';
import * as schema from './schema';
import type { ShapeTable } from './schema';
import { Guard, run } from './statement';
import { bigOf, numOf, parseJson, toJson, type Json, type JsonRow } from './values';

export const SYNC_PROTOCOL_VERSION = 1;
/** Transactions pushed in one request at most, and about this many bytes of their changes. */
const PUSH_BATCH = 500;
const PUSH_BATCH_BYTES = 4 << 20;
/** Requests one sync makes at most (a larger backlog takes several syncs). */
const MAX_ROUNDS = 10_000;
const COUNTER_BITS = 16n;

/** What the server answered: its status and body. */
export interface Answer {
  status: number;
  body: string;
}

/** Posts `body` (JSON) to `url` with the bearer `token`; throws `Unreachable` when it cannot. */
export type Transport = (url: string, token: string, body: string) => Promise<Answer>;

/** The server could not be reached (the device counts as offline). */
export class Unreachable extends Error {}

export type ErrorKind = 'offline' | 'unreachable' | 'refused' | 'protocol' | 'local';

/** Why a sync failed, shaped by what the application can do about it. */
export class DeviceError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    readonly code?: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

/** What one sync did. */
export interface SyncReport {
  /** The user and device the token was made for (what `:user`, `:device` are in the shape). */
  user: string | null;
  device: string | null;
  pushed: number;
  pulled: number;
  rejected: number;
  reset: boolean;
  bytesSent: number;
  bytesReceived: number;
}

/** What the app can show. */
export interface Status {
  /** offline (switched off, or the server unreachable), failing, syncing or synced. */
  state: 'offline' | 'failing' | 'syncing' | 'synced';
  offline: boolean;
  pending: number;
  rejected: number;
  origin: string | null;
  cursor: string | null;
  lastSyncMs: number | null;
  lastError: string | null;
  unreachable: boolean;
  /** One line, as the Rust crate's Status displays it. */
  text: string;
}

export interface Rejected {
  seq: number;
  code: string;
  reason: string;
  changes: string;
  atMs: number;
}

interface State {
  origin: string | null;
  cursor: string | null;
  shapes: string | null;
  tables: ShapeTable[];
  vv: { [origin: string]: Json };
  depsId: number;
  offline: boolean;
  resetNext: boolean;
  maxRequestBytes: number | null;
}

function stateIn(db: Database): State {
  const r = db.selectArrays(
    'SELECT origin, cursor, shapes, tables, vv, deps_id, offline, reset_next, max_request_bytes ' +
      'FROM _flotilla_device WHERE id = 1',
  )[0];
  const parsed = (what: string, text: unknown) => {
    try {
      return parseJson(String(text));
    } catch (e) {
      throw new DeviceError('local', `the local database's ${what} is damaged: ${String(e)}`);
    }
  };
  return {
    origin: r[0] as string | null,
    cursor: r[1] as string | null,
    shapes: r[2] as string | null,
    tables: parsed('shape', r[3]) as unknown as ShapeTable[],
    vv: parsed('version vector', r[4]) as { [o: string]: Json },
    depsId: Number(r[5]),
    offline: Number(r[6]) !== 0,
    resetNext: Number(r[7]) !== 0,
    maxRequestBytes: r[8] === null ? null : Number(r[8]),
  };
}

function utc(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
}

export class Device {
  private readonly url: string;
  private running: Promise<SyncReport> | null = null;
  /** Pending transactions' rows by seq, as of their text and the shape's tables (see take). */
  private readonly outboxKeys = new Map<number, { length: number; tables: string; keys: string[] }>();

  private constructor(
    readonly db: Database,
    readonly server: string,
    private token: string,
    private readonly transport: Transport,
    private readonly clock: () => number,
  ) {
    this.url = `${server}/v1/sync`;
    this.guard = new Guard(db);
  }

  /**
   * Opens the device on `db` (made, or one made before for the same server), syncing with
   * `server` (`http://host:port`) with `token` (from `flotilla device add`).
   */
  static open(db: Database, server: string, token: string, transport: Transport, clock: () => number = Date.now): Device {
    server = server.replace(/\/+$/, '');
    schema.create(db, server);
    const [format, bound] = db.selectArrays('SELECT format, server FROM _flotilla_device WHERE id = 1')[0];
    if (Number(format) > schema.LOCAL_FORMAT) {
      throw new DeviceError('local', `this local database has format ${format}, newer than this build's ${schema.LOCAL_FORMAT}`);
    }
    if (bound !== server) {
      throw new DeviceError('local', `this local database syncs with ${bound}, not ${server}: open it with that server, or start a new local database`);
    }
    return new Device(db, server, token, transport, clock);
  }

  /** On while the application's SQL runs (statement.ts). */
  private readonly guard: Guard;

  /** Runs `f` as one local transaction: its changes to the shape's tables are one transaction for the server too. */
  transaction<T>(f: (db: Database) => T): T {
    const db = this.db;
    const now = this.clock();
    db.exec('BEGIN IMMEDIATE');
    let out: T;
    try {
      db.exec('DELETE FROM _flotilla_capture');
      db.exec('INSERT INTO _flotilla_writing (mode) VALUES (1)');
      out = this.guard.around(() => f(db));
    } catch (e) {
      db.exec('ROLLBACK');
      throw e;
    }
    return this.record(now, out);
  }

  /** Moves what the capture triggers recorded into one outbox transaction, and commits. */
  private record<T>(now: number, out: T): T {
    const db = this.db;
    try {
      db.exec('DELETE FROM _flotilla_writing');
      const raw = db.selectArrays('SELECT tbl, op, before, after FROM _flotilla_capture ORDER BY n');
      if (raw.length > 0) {
        const captured: OutboxChange[] = raw.map(([table, op, before, after]) => ({
          table: String(table),
          op: op as OutboxChange['op'],
          before: before === null ? null : (parseJson(String(before)) as JsonRow),
          after: after === null ? null : (parseJson(String(after)) as JsonRow),
        }));
        const [seq, hlc, deps] = db.selectArrays('SELECT next_seq, hlc, deps_id FROM _flotilla_device WHERE id = 1')[0];
        const stamped = tick(BigInt(hlc as number | bigint), now);
        db.exec({
          sql: 'INSERT INTO _flotilla_outbox (seq, hlc, deps, changes) VALUES (?1, ?2, ?3, ?4)',
          bind: [seq as number, stamped, deps as number, toJson(captured)],
        });
        db.exec({
          sql: 'UPDATE _flotilla_device SET next_seq = ?1, hlc = ?2 WHERE id = 1',
          bind: [Number(seq) + 1, stamped],
        });
        db.exec('DELETE FROM _flotilla_capture');
      }
      db.exec('COMMIT');
      return out;
    } catch (e) {
      db.exec('ROLLBACK');
      throw e;
    }
  }

  /** Runs one statement as a local transaction of its own; returns the rows it changed. */
  execute(sql: string, bind: unknown[] = []): number {
    return this.transaction((db) => runApp(db, sql, bind));
  }

  /** Reads rows as objects by column name. */
  query(sql: string, bind: unknown[] = []): Record<string, unknown>[] {
    return this.guard.around(() => this.db.selectObjects(sql, bind as never));
  }

  /** Switches the device offline (no sync until it is switched back) or online. */
  setOffline(offline: boolean): void {
    this.db.exec({ sql: 'UPDATE _flotilla_device SET offline = ?1 WHERE id = 1', bind: [offline ? 1 : 0] });
  }

  status(): Status {
    const [origin, cursor, lastSync, lastError, kind, offline] = this.db.selectArrays(
      'SELECT origin, cursor, last_sync_ms, last_error, last_error_kind, offline FROM _flotilla_device WHERE id = 1',
    )[0];
    const pending = Number(this.db.selectValue("SELECT count(*) FROM _flotilla_outbox WHERE changes <> '[]'"));
    const rejected = Number(this.db.selectValue('SELECT count(*) FROM _flotilla_rejected'));
    const s = {
      offline: Number(offline) !== 0,
      pending,
      rejected,
      origin: origin as string | null,
      cursor: cursor as string | null,
      lastSyncMs: lastSync === null ? null : Number(lastSync),
      lastError: lastError as string | null,
      unreachable: kind === 'unreachable',
    };
    const state: Status['state'] =
      s.offline || s.unreachable ? 'offline' : s.lastError !== null ? 'failing' : s.pending > 0 || s.cursor === null ? 'syncing' : 'synced';
    const last = s.lastSyncMs === null ? 'never synced' : `last sync ${utc(s.lastSyncMs)}`;
    const plural = (n: number) => `${n} change${n === 1 ? '' : 's'}`;
    let text: string;
    if (state === 'offline') text = `offline (${plural(pending)} pending; ${last})`;
    else if (state === 'failing') text = `failing (${plural(pending)} pending): ${s.lastError}`;
    else if (state === 'syncing') text = `syncing (${plural(pending)} pending)`;
    else text = `synced through ${s.cursor} at ${utc(s.lastSyncMs ?? 0)}`;
    if (rejected > 0) text += `; ${rejected} rejected`;
    return { state, ...s, text };
  }

  /** The transactions the server refused, with why. */
  rejected(): Rejected[] {
    return this.db
      .selectArrays('SELECT seq, code, reason, changes, at_ms FROM _flotilla_rejected ORDER BY seq')
      .map(([seq, code, reason, changes, at]) => ({
        seq: Number(seq),
        code: String(code),
        reason: String(reason),
        changes: String(changes),
        atMs: Number(at),
      }));
  }

  private noteError(kind: string, why: string): void {
    try {
      this.db.exec({ sql: 'UPDATE _flotilla_device SET last_error = ?1, last_error_kind = ?2 WHERE id = 1', bind: [why, kind] });
    } catch {
      // The error being noted is what the caller sees.
    }
  }

  /** The outbox's first transactions (at most `limit`, about `maxBytes`), with the version vectors they depend on. */
  private outbox(limit: number, maxBytes: number, tables: ShapeTable[]): [unknown[], { [id: string]: Json }] {
    const rows: [number, bigint, number, string][] = [];
    let bytes = 0;
    for (const r of this.db.selectArrays('SELECT seq, hlc, deps, changes FROM _flotilla_outbox ORDER BY seq LIMIT ?1', [limit])) {
      const changes = String(r[3]);
      if (rows.length > 0 && bytes + changes.length > maxBytes) break;
      bytes += changes.length;
      rows.push([Number(r[0]), BigInt(r[1] as number | bigint), Number(r[2]), changes]);
    }
    const push: unknown[] = [];
    const deps: { [id: string]: Json } = {};
    for (const [seq, hlc, dep, text] of rows) {
      let changes: OutboxChange[];
      try {
        changes = parseJson(text) as unknown as OutboxChange[];
      } catch (e) {
        throw new DeviceError('local', `outbox transaction ${seq} is damaged: ${String(e)}`);
      }
      const id = String(dep);
      if (!(id in deps)) {
        const vv = this.db.selectValue('SELECT vv FROM _flotilla_deps WHERE id = ?1', [dep]);
        deps[id] = parseJson(String(vv));
      }
      // Images carry the shape's columns only (a column the shape dropped since is left out).
      const shaped = (table: string, img?: JsonRow | null): JsonRow | null => {
        if (!img) return null;
        const t = tables.find((x) => x.table.toLowerCase() === table.toLowerCase());
        if (!t) return img;
        const out: JsonRow = {};
        for (const c of Object.keys(img)) if (t.columns.some((n) => n.toLowerCase() === c.toLowerCase())) out[c] = img[c];
        return out;
      };
      push.push({
        seq,
        hlc,
        deps: id,
        changes: changes.map((c) => ({ table: c.table, op: c.op, before: shaped(c.table, c.before), after: shaped(c.table, c.after) })),
      });
    }
    return [push, deps];
  }

  /**
   * Pushes what the server lacks and pulls what changed, until both are done. A transaction
   * the server refuses (outside the shape) is set aside as rejected and its effects undone by
   * pulling the whole shape again; the rest goes on. One sync at a time: a call while one
   * runs waits for it.
   */
  sync(): Promise<SyncReport> {
    if (!this.running) {
      this.running = this.syncOnce().finally(() => {
        this.running = null;
      });
    }
    return this.running;
  }

  private async syncOnce(): Promise<SyncReport> {
    const report: SyncReport = { user: null, device: null, pushed: 0, pulled: 0, rejected: 0, reset: false, bytesSent: 0, bytesReceived: 0 };
    let batch = PUSH_BATCH;
    let halvedBytes = PUSH_BATCH_BYTES;
    let startedOver = false;
    let restamped = false;
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const st = stateIn(this.db);
      if (st.offline) throw new DeviceError('offline', 'the device is offline (switch it online to sync)');
      // Pushes are sized to what the server said it takes (until it has said, the first
      // request pushes nothing), with room for the request's own JSON.
      const fits = st.maxRequestBytes === null ? null : Math.floor((st.maxRequestBytes * 3) / 4);
      const batchBytes = fits === null ? 0 : Math.min(fits, halvedBytes);
      const first = this.db.selectArrays("SELECT seq, length(changes) FROM _flotilla_outbox WHERE changes <> '[]' ORDER BY seq LIMIT 1")[0];
      if (first && fits !== null && Number(first[1]) > fits) {
        this.reject(Number(first[0]), 'too_large', `its changes take ${first[1]} bytes; the server takes requests of at most ${st.maxRequestBytes} bytes (api.max-body-kib)`);
        report.rejected++;
        continue;
      }
      const [push, deps] = this.outbox(fits === null ? 0 : batch, batchBytes, st.tables);
      const pushedSeqs = push.map((t) => (t as { seq: number }).seq);
      const moreToPush = Number(this.db.selectValue('SELECT count(*) FROM _flotilla_outbox')) > push.length;
      const resync = st.resetNext;
      const sentCursor = resync ? null : st.cursor;
      const body = toJson({
        protocol: SYNC_PROTOCOL_VERSION,
        origin: st.origin,
        deps,
        push,
        pull: { cursor: sentCursor, shapes: resync ? null : st.shapes, max_changes: null },
      });
      report.bytesSent += body.length;
      let answer: Answer;
      try {
        answer = await this.transport(this.url, this.token, body);
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e);
        this.noteError('unreachable', why);
        throw new DeviceError('unreachable', `the server is unreachable: ${why}`);
      }
      report.bytesReceived += answer.body.length;
      if (answer.status !== 200) {
        let err: { [k: string]: Json } = {};
        try {
          err = ((parseJson(answer.body) as { error?: { [k: string]: Json } }).error ?? {}) as { [k: string]: Json };
        } catch {
          // Not JSON: the body itself is the message.
        }
        const code = typeof err.code === 'string' ? err.code : 'unknown';
        const message = typeof err.message === 'string' ? err.message : answer.body;
        const seq = err.seq === undefined || err.seq === null ? null : numOf(err.seq, 'the refused seq');
        if ((code === 'outside_shape' || code === 'malformed') && seq !== null) {
          this.reject(seq, code, message);
          report.rejected++;
          continue;
        }
        // The server lacks transactions this device forgot once acknowledged (it was
        // restored), or has others under this database's numbers (the database was copied):
        // the device starts a new origin and sends what it has.
        if ((code === 'gap' || code === 'origin_reused') && !startedOver) {
          startedOver = true;
          this.startOver();
          continue;
        }
        // The device's clock was ahead: stamped again from its clock now (once).
        if (code === 'clock_ahead' && !restamped) {
          restamped = true;
          this.restamp(seq ?? 0);
          continue;
        }
        if (code === 'body_too_large') {
          if (pushedSeqs.length === 1) {
            this.reject(pushedSeqs[0], 'too_large', message);
            report.rejected++;
          } else {
            batch = Math.max(1, Math.floor(pushedSeqs.length / 2));
            halvedBytes = Math.max(1, Math.floor(batchBytes / 2));
          }
          continue;
        }
        const why = `${answer.status} ${code}: ${message}`;
        this.noteError('refused', why);
        throw new DeviceError('refused', `the server refused the sync (${why})`, code, answer.status);
      }
      let resp: { [k: string]: Json };
      try {
        resp = parseJson(answer.body) as { [k: string]: Json };
      } catch (e) {
        throw new DeviceError('protocol', `the server's answer is not one this device understands: ${String(e)}`);
      }
      let more: boolean;
      try {
        more = this.take(sentCursor, resync, resp, report);
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e);
        this.noteError('local', why);
        throw e instanceof DeviceError ? e : new DeviceError('local', why);
      }
      if (!more && !moreToPush) return report;
    }
    return report;
  }

  /** Starts a new origin: the pending transactions numbered again from 1, the whole shape pulled next. */
  private startOver(): void {
    this.outboxKeys.clear();
    this.inTransaction(() => {
      const seqs = this.db.selectValues('SELECT seq FROM _flotilla_outbox ORDER BY seq').map(Number);
      this.db.exec('UPDATE _flotilla_outbox SET seq = -seq');
      seqs.forEach((old, i) => this.db.exec({ sql: 'UPDATE _flotilla_outbox SET seq = ?1 WHERE seq = ?2', bind: [i + 1, -old] }));
      this.db.exec({ sql: 'UPDATE _flotilla_device SET origin = NULL, next_seq = ?1, reset_next = 1 WHERE id = 1', bind: [seqs.length + 1] });
    });
  }

  /** Stamps the pending transactions from `fromSeq` on again from the clock now. */
  private restamp(fromSeq: number): void {
    const now = this.clock();
    this.inTransaction(() => {
      let hlc = 0n;
      for (const seq of this.db.selectValues('SELECT seq FROM _flotilla_outbox WHERE seq >= ?1 ORDER BY seq', [fromSeq])) {
        hlc = tick(hlc, now);
        this.db.exec({ sql: 'UPDATE _flotilla_outbox SET hlc = ?1 WHERE seq = ?2', bind: [hlc, seq as number] });
      }
      this.db.exec({ sql: 'UPDATE _flotilla_device SET hlc = ?1 WHERE id = 1', bind: [hlc] });
    });
  }

  /** Sets an outbox transaction aside as rejected: it stays empty (the server must see every number), and the whole shape is pulled next. */
  private reject(seq: number, code: string, reason: string): void {
    const now = this.clock();
    this.outboxKeys.delete(seq);
    this.inTransaction(() => {
      const changes = this.db.selectValue('SELECT changes FROM _flotilla_outbox WHERE seq = ?1', [seq]);
      if (changes === undefined) {
        throw new DeviceError('protocol', `the server refused transaction ${seq}, which this device does not have`);
      }
      this.db.exec({
        sql: 'INSERT OR REPLACE INTO _flotilla_rejected (seq, code, reason, changes, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)',
        bind: [seq, code, reason, changes as string, now],
      });
      this.db.exec({ sql: "UPDATE _flotilla_outbox SET changes = '[]' WHERE seq = ?1", bind: [seq] });
      this.db.exec('UPDATE _flotilla_device SET reset_next = 1 WHERE id = 1');
    });
  }

  private inTransaction<T>(f: () => T, how = ''): T {
    this.db.exec(`BEGIN ${how}`);
    try {
      const out = f();
      this.db.exec('COMMIT');
      return out;
    } catch (e) {
      this.db.exec('ROLLBACK');
      throw e;
    }
  }

  /**
   * Takes a sync's answer in one local transaction: forgets what the server acknowledged,
   * applies what was pulled, replays the rest of the outbox on top. Returns whether there is
   * more to pull. If another sync moved the cursor meanwhile, only the acknowledgement is
   * taken and the pull asked for again.
   */
  private take(sentCursor: string | null, sentReset: boolean, resp: { [k: string]: Json }, report: SyncReport): boolean {
    const now = this.clock();
    const db = this.db;
    if (typeof resp.origin !== 'string') throw new DeviceError('protocol', 'the server answered without an origin');
    const acknowledged = bigOf(resp.acknowledged, 'acknowledged');
    const maxBytes = resp.max_request_bytes == null ? null : numOf(resp.max_request_bytes, 'max_request_bytes');
    if (typeof resp.user === 'string') report.user = resp.user;
    if (typeof resp.device === 'string') report.device = resp.device;
    return this.inTransaction(() => {
      db.exec('INSERT INTO _flotilla_writing (mode) VALUES (0)');
      const before = Number(db.selectValue('SELECT count(*) FROM _flotilla_outbox'));
      db.exec({ sql: 'DELETE FROM _flotilla_outbox WHERE seq <= ?1', bind: [acknowledged] });
      const after = Number(db.selectValue('SELECT count(*) FROM _flotilla_outbox'));
      report.pushed += Math.max(0, before - after);
      db.exec({
        sql:
          'UPDATE _flotilla_device SET origin = ?1, last_sync_ms = ?2, last_error = NULL, last_error_kind = NULL, ' +
          'max_request_bytes = coalesce(?3, max_request_bytes) WHERE id = 1',
        bind: [resp.origin as string, now, maxBytes],
      });
      const [cursorNow, resetNow] = db.selectArrays('SELECT cursor, reset_next FROM _flotilla_device WHERE id = 1')[0];
      const stale = cursorNow !== sentCursor && !(sentReset && Number(resetNow) !== 0);
      let more = false;
      const p = resp.pull as { [k: string]: Json } | null | undefined;
      if (p && !stale) {
        more = p.more === true;
        const st = stateIn(db);
        const tables = p.tables as unknown as ShapeTable[];
        const items = p.items as unknown as PullItem[];
        if (!Array.isArray(tables) || !Array.isArray(items) || typeof p.cursor !== 'string') {
          throw new DeviceError('protocol', 'the server sent a pull without its cursor, tables or items');
        }
        const reset = p.reset === true;
        if (reset) {
          for (const t of [...st.tables, ...tables]) db.exec(`DROP TABLE IF EXISTS ${schema.quote(t.table)}`);
          db.exec('DELETE FROM flotilla_conflicts');
          report.reset = true;
        }
        const touched = new Set<string>();
        const schemaChanged = applyItems(db, tables, items, touched);
        report.pulled += items.length;
        const vv: { [o: string]: bigint } = {};
        if (!reset) for (const o of Object.keys(st.vv)) vv[o] = bigOf(st.vv[o], 'a version vector entry');
        let vvMoved = reset;
        const pulled = (p.vv ?? {}) as { [o: string]: Json };
        for (const o of Object.keys(pulled)) {
          const l = bigOf(pulled[o], 'a version vector entry');
          if (vv[o] === undefined || l > vv[o]) {
            vv[o] = l;
            vvMoved = true;
          }
        }
        let depsId = st.depsId;
        const sorted: { [o: string]: bigint } = {};
        for (const o of Object.keys(vv).sort()) sorted[o] = vv[o];
        const vvText = toJson(sorted);
        if (vvMoved) {
          db.exec({ sql: 'INSERT INTO _flotilla_deps (vv) VALUES (?1)', bind: [vvText] });
          depsId = Number(db.selectValue('SELECT last_insert_rowid()'));
        }
        // Version vectors no pending transaction depends on are dropped.
        db.exec({ sql: 'DELETE FROM _flotilla_deps WHERE id <> ?1 AND id NOT IN (SELECT deps FROM _flotilla_outbox)', bind: [depsId] });
        const tablesText = toJson(tables);
        db.exec({
          sql:
            'UPDATE _flotilla_device SET cursor = ?1, shapes = ?2, tables = ?3, vv = ?4, deps_id = ?5, ' +
            'hlc = max(hlc, ?6), reset_next = 0 WHERE id = 1',
          bind: [p.cursor, typeof p.shapes === 'string' ? p.shapes : null, tablesText, vvText, depsId, bigOf(p.hlc, 'hlc')],
        });
        if (reset || schemaChanged || tablesText !== toJson(st.tables)) schema.installTriggers(db, tables);
        // What the server does not have yet goes back on top of its rows: after a whole-shape
        // pull every pending change, after changes those of the rows the pull wrote.
        // The rows each pending transaction writes are kept in memory (by its text and the
        // shape's tables), so a long outbox is not parsed again at every round of a sync.
        for (const k of [...this.outboxKeys.keys()]) if (k <= Number(acknowledged)) this.outboxKeys.delete(k);
        if (reset || touched.size > 0) {
          const textOf = (seq: number) => String(db.selectValue('SELECT changes FROM _flotilla_outbox WHERE seq = ?1', [seq]));
          for (const [rawSeq, rawLength] of db.selectArrays('SELECT seq, length(changes) FROM _flotilla_outbox ORDER BY seq')) {
            const seq = Number(rawSeq);
            let text: string | null = null;
            if (!reset) {
              // This device is the database's only writer (the pool holds it exclusively) and
              // forgets an entry whenever it changes one; the length is a second check.
              let known = this.outboxKeys.get(seq);
              if (!known || known.length !== Number(rawLength) || known.tables !== tablesText) {
                text = textOf(seq);
                const changes = parseJson(text) as unknown as OutboxChange[];
                known = { length: Number(rawLength), tables: tablesText, keys: changes.flatMap((c) => touchedKeysOf(tables, c)) };
                this.outboxKeys.set(seq, known);
              }
              if (!known.keys.some((k) => touched.has(k))) continue;
            }
            const changes = parseJson(text ?? textOf(seq)) as unknown as OutboxChange[];
            for (const c of changes) replay(db, tables, c, reset ? undefined : touched);
          }
        }
      } else if (stale) {
        more = true;
      }
      db.exec('DELETE FROM _flotilla_writing');
      return more;
    }, 'IMMEDIATE');
  }
}

/** The hybrid logical clock's next tick: after `hlc`, and not behind the wall clock. */
export function tick(hlc: bigint, nowMs: number): bigint {
  const wall = BigInt(Math.max(0, Math.floor(nowMs))) << COUNTER_BITS;
  return hlc + 1n > wall ? hlc + 1n : wall;
}

/**
 * Runs an application's statement: with values, one statement bound as the device means them
 * (statement.ts); without, as many as the text holds. The rows it changed.
 */
export function runApp(db: Database, sql: string, bind: unknown[]): number {
  if (bind.length > 0) return run(db, sql, bind);
  db.exec(sql);
  return db.changes();
}
