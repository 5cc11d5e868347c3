// The worker that holds a device's local database: SQLite compiled to WebAssembly
// (@sqlite.org/sqlite-wasm), persisted in the origin-private file system through the
// "opfs-sahpool" VFS (which needs neither SharedArrayBuffer nor COOP/COEP headers; it takes
// the database exclusively, so one tab of an origin has it open at a time).

import sqlite3InitModule, { type Database } from '@sqlite.org/sqlite-wasm';
import { Device, DeviceError, runApp, Unreachable, type Answer } from './device';
import { useCapi } from './statement';
import type { Call, HttpReply, HttpRequest, Opened, Reply, Statement } from './protocol';

let device: Device | null = null;
let nextHttp = 1;
const waiting = new Map<number, (r: HttpReply) => void>();

/** The transport: the page posts the request and hands back what came of it. */
function transport(url: string, token: string, body: string): Promise<Answer> {
  const id = nextHttp++;
  const req: HttpRequest = { http: id, url, token, body };
  return new Promise<Answer>((resolve, reject) => {
    waiting.set(id, (r) => {
      if (r.unreachable !== undefined) reject(new Unreachable(r.unreachable));
      else resolve({ status: r.status ?? 0, body: r.body ?? '' });
    });
    postMessage(req);
  });
}

async function open(server: string, token: string, name: string): Promise<Opened> {
  if (device) throw new DeviceError('local', 'this worker has a device open already');
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) throw new DeviceError('local', `a database name of letters, digits, '.', '_' and '-' (at most 64): ${JSON.stringify(name)}`);
  const sqlite3 = await sqlite3InitModule();
  useCapi(sqlite3.capi);
  let db: Database;
  let persisted = true;
  try {
    // A pool of its own per database (a shared one fills up: each database and its log take
    // a file of it), kept whole if opening fails (by default a pool that fails to open is
    // wiped — and with it the changes not synced yet).
    const pool = await sqlite3.installOpfsSAHPoolVfs({
      name: `flotilla-${name}`,
      preserveOnInitFailure: true,
    });
    db = new pool.OpfsSAHPoolDb(`/${name}.sqlite3`);
  } catch (e) {
    // OPFS is there but the database cannot be had. A database in memory instead would take
    // edits that vanish with the tab if it closes before syncing: refused.
    if (typeof navigator !== 'undefined' && typeof navigator.storage?.getDirectory === 'function' && isSecureContext) {
      const why = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
      // opfs-sahpool holds its files exclusively: another tab or window of this origin has it.
      const inUse = e instanceof Error && (e.name === 'NoModificationAllowedError' || /Access Handles cannot be created/.test(e.message));
      throw new DeviceError(
        'local',
        inUse
          ? 'the local database is open in another tab or window of this browser: close it there (or use that one)'
          : `the local database could not be opened from the browser's storage (${why})`,
      );
    }
    // No OPFS here (not a secure context): in memory, and the page says so.
    console.warn('flotilla-device: OPFS unavailable, the database is in memory:', e);
    db = new sqlite3.oo1.DB(':memory:', 'c');
    persisted = false;
  }
  // Foreign keys are the server's to hold: a local table referring to a shape's row must not
  // stop the device from taking the server's delete of it.
  db.exec('PRAGMA foreign_keys = OFF');
  if (persisted) {
    // The pool holds the file exclusively anyway: WAL needs no shared memory then, and each
    // commit is one append and one flush of the log instead of a journal made, flushed and
    // removed (2.4× the local write rate in Chromium; as durable: synchronous stays FULL).
    db.exec('PRAGMA locking_mode = EXCLUSIVE');
    db.exec('PRAGMA journal_mode = WAL');
    db.exec('PRAGMA synchronous = FULL');
  }
  device = Device.open(db, server, token, transport);
  return { persisted, sqliteVersion: sqlite3.version.libVersion };
}

function need(): Device {
  if (!device) throw new DeviceError('local', 'no device is open (call open first)');
  return device;
}

async function call(c: Call): Promise<unknown> {
  const a = c.args;
  switch (c.method) {
    case 'open':
      return open(String(a[0]), String(a[1]), String(a[2] ?? 'device'));
    case 'execute':
      return need().execute(String(a[0]), (a[1] as unknown[]) ?? []);
    case 'transaction':
      return need().transaction((db) => {
        let changed = 0;
        for (const s of a[0] as Statement[]) changed += runApp(db, s.sql, s.bind ?? []);
        return changed;
      });
    case 'query':
      return need().query(String(a[0]), (a[1] as unknown[]) ?? []);
    case 'sync':
      return need().sync();
    case 'status':
      return need().status();
    case 'setOffline':
      return need().setOffline(Boolean(a[0]));
    case 'rejected':
      return need().rejected();
  }
  throw new DeviceError('local', `no such method: ${String(c.method)}`);
}

self.onmessage = async (ev: MessageEvent) => {
  const m = ev.data as Call | HttpReply;
  if ('httpReply' in m) {
    const w = waiting.get(m.httpReply);
    waiting.delete(m.httpReply);
    w?.(m);
    return;
  }
  let reply: Reply;
  try {
    reply = { id: m.id, ok: true, value: await call(m) };
  } catch (e) {
    const err = e instanceof DeviceError ? e : null;
    reply = {
      id: m.id,
      ok: false,
      error: { kind: err?.kind ?? 'local', message: e instanceof Error ? e.message : String(e), code: err?.code },
    };
  }
  postMessage(reply);
};
