// Running one statement with values bound as the device means them. sqlite-wasm binds a whole
// JS number as an INTEGER, so a REAL such as 1e19 or 1e308 would wrap or turn to 0: REALs (and
// whole numbers beyond 2^53, which JS holds only as doubles) are bound with
// sqlite3_bind_double. And the guard that keeps an application's SQL off the device's own
// tables and transactions (an authorizer; see guard()).

import type { Database, PreparedStatement } from '@sqlite.org/sqlite-wasm';

/** A value to bind as a REAL whatever it looks like. */
export class Real {
  constructor(readonly value: number) {}
}

// sqlite3.capi, given once by the host that loaded SQLite (the worker).
type Capi = {
  sqlite3_bind_double: (stmt: number, idx: number, v: number) => number;
  sqlite3_errstr: (rc: number) => string;
  sqlite3_sql: (stmt: number) => string | null;
  sqlite3_set_authorizer: (db: number, f: ((...a: unknown[]) => number) | 0, p: number) => number;
};
let capi: Capi | null = null;

export function useCapi(c: unknown): void {
  capi = c as Capi;
}

function needCapi(): Capi {
  if (!capi) throw new Error("the device was opened without SQLite's C API (call useCapi)");
  return capi;
}

function bindAll(st: PreparedStatement, values: unknown[]): void {
  values.forEach((v, i) => {
    const n = i + 1;
    const asDouble =
      v instanceof Real ? v.value : typeof v === 'number' && Number.isInteger(v) && !Number.isSafeInteger(v) ? v : null;
    if (asDouble !== null) {
      const c = needCapi();
      const rc = c.sqlite3_bind_double(st.pointer as unknown as number, n, asDouble);
      if (rc !== 0) throw new Error(`binding parameter ${n}: ${c.sqlite3_errstr(rc)}`);
    } else {
      st.bind(n, v as never);
    }
  });
}

/** Text after the first statement of `sql` that is more than spaces, `;` and comments. */
function tailOf(sql: string, st: PreparedStatement): string {
  const used = needCapi().sqlite3_sql(st.pointer as unknown as number) ?? '';
  const rest = sql.startsWith(used) ? sql.slice(used.length) : '';
  return rest.replace(/--[^\n]*(\n|$)|\/\*[\s\S]*?\*\/|;|\s+/g, '');
}

function prepared<T>(db: Database, sql: string, values: unknown[], f: (st: PreparedStatement) => T): T {
  const st = db.prepare(sql);
  try {
    if (tailOf(sql, st) !== '') {
      throw new Error('one statement at a time when values are bound (give the others their own call)');
    }
    bindAll(st, values);
    return f(st);
  } finally {
    st.finalize();
  }
}

/** Runs one statement; the rows it changed. */
export function run(db: Database, sql: string, values: unknown[] = []): number {
  return prepared(db, sql, values, (st) => {
    while (st.step()) {
      // A statement that returns rows (RETURNING): they are not wanted here.
    }
    return db.changes();
  });
}

/** Rows of one statement, as arrays. */
export function select(db: Database, sql: string, values: unknown[] = []): unknown[][] {
  return prepared(db, sql, values, (st) => {
    const out: unknown[][] = [];
    while (st.step()) out.push(st.get([]) as unknown[]);
    return out;
  });
}

// The authorizer's action codes (sqlite3.h).
const SQLITE_DENY = 1;
const CREATE_INDEX = 1;
const CREATE_TABLE = 2;
const CREATE_TEMP_INDEX = 3;
const CREATE_TEMP_TABLE = 4;
const CREATE_TEMP_TRIGGER = 5;
const CREATE_TEMP_VIEW = 6;
const CREATE_TRIGGER = 7;
const CREATE_VIEW = 8;
const DELETE = 9;
const DROP_INDEX = 10;
const DROP_TABLE = 11;
const DROP_TEMP_INDEX = 12;
const DROP_TEMP_TABLE = 13;
const DROP_TEMP_TRIGGER = 14;
const DROP_TEMP_VIEW = 15;
const DROP_TRIGGER = 16;
const DROP_VIEW = 17;
const INSERT = 18;
const PRAGMA = 19;
const TRANSACTION = 22;
const UPDATE = 23;
const ALTER_TABLE = 26;
const SAVEPOINT = 32;

/** The device's tables and triggers, and SQLite's own (sqlite_schema). */
const own = (name: unknown) => typeof name === 'string' && /^(_flotilla_|flotilla_conflicts$|sqlite_)/i.test(name);

/** Settings the device's recording depends on: the application may read them, not set them. */
const SETTINGS = new Set([
  'writable_schema',
  'query_only',
  'journal_mode',
  'locking_mode',
  'synchronous',
  'foreign_keys',
  'defer_foreign_keys',
  'recursive_triggers',
  'trusted_schema',
  'schema_version',
  'ignore_check_constraints',
  'legacy_alter_table',
  'temp_store',
  'temp_store_directory',
]);

/**
 * Keeps the application's SQL off what the device keeps for itself: no write, drop, alter,
 * index or trigger of its tables (the outbox, its state, the conflicts it pulled) nor of
 * sqlite_schema, no table, view or trigger under their names (a TEMP one would shadow them),
 * no setting of the pragmas its recording depends on (writable_schema, query_only,
 * journal_mode, foreign_keys…), and no BEGIN / COMMIT / ROLLBACK / SAVEPOINT (the device runs each local write as
 * one transaction of its own and records it for the server at commit; a COMMIT inside would
 * end it halfway). An authorizer, installed only while the application's SQL runs (`around`):
 * the device's own work, a sync's thousands of statements, pays nothing for it.
 */
export class Guard {
  constructor(private readonly db: Database) {}

  private set(on: boolean): void {
    const c = needCapi();
    const rc = c.sqlite3_set_authorizer(this.db.pointer as unknown as number, on ? authorize : 0, 0);
    if (rc !== 0) throw new Error(`setting the device's guard: ${c.sqlite3_errstr(rc)}`);
  }

  /** Runs `f` (the application's SQL) with the guard on. */
  around<T>(f: () => T): T {
    this.set(true);
    try {
      return f();
    } finally {
      this.set(false);
    }
  }
}

function authorize(_p: unknown, action: unknown, a1: unknown, a2: unknown, _a3: unknown, trigger: unknown): number {
  // The capture triggers write the device's tables for the application's writes (no other
  // trigger can bear their names: creating one is refused below).
  if (typeof trigger === 'string' && /^_flotilla_capture_/.test(trigger)) return 0;
  switch (action) {
    case TRANSACTION:
    case SAVEPOINT:
      return SQLITE_DENY;
    // A table, view or trigger of the device's names (a TEMP one would shadow the device's
    // table), or an index or trigger on one of its tables.
    case CREATE_TABLE:
    case CREATE_TEMP_TABLE:
    case CREATE_VIEW:
    case CREATE_TEMP_VIEW:
    case DROP_TABLE:
    case DROP_TEMP_TABLE:
    case DROP_VIEW:
    case DROP_TEMP_VIEW:
    case INSERT:
    case UPDATE:
    case DELETE:
      return own(a1) ? SQLITE_DENY : 0;
    case CREATE_INDEX:
    case CREATE_TEMP_INDEX:
    case DROP_INDEX:
    case DROP_TEMP_INDEX:
    case CREATE_TRIGGER:
    case CREATE_TEMP_TRIGGER:
    case DROP_TRIGGER:
    case DROP_TEMP_TRIGGER:
      return own(a1) || own(a2) ? SQLITE_DENY : 0;
    case ALTER_TABLE:
      return own(a2) ? SQLITE_DENY : 0;
    case PRAGMA:
      return a2 !== null && a2 !== 0 && a2 !== undefined && typeof a1 === 'string' && SETTINGS.has(a1.toLowerCase())
        ? SQLITE_DENY
        : 0;
    default:
      return 0;
  }
}
