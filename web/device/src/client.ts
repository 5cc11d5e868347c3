// The page's side of a device: the database lives in a worker (src/worker.ts); this object
// calls it, and sends its requests to the server with the page's fetch (so going offline in
// the page is going offline for the device).

import type { Rejected, Status, SyncReport } from './device';
import type { Call, HttpReply, HttpRequest, Method, Opened, Reply, Statement } from './protocol';

export type { Rejected, Status, SyncReport, Statement, Opened };

/** A failed call: `kind` is offline, unreachable, refused, protocol or local. */
export class DeviceCallError extends Error {
  constructor(
    readonly kind: string,
    message: string,
    readonly code?: string,
  ) {
    super(message);
  }
}

export interface OpenOptions {
  /** The server (`http://host:port`); the page's own origin by default. */
  server?: string;
  /** The device token from `flotilla device add NAME --user U`. */
  token: string;
  /** The local database's name (one per device token; letters, digits, `.`, `_`, `-`). */
  name?: string;
  /** Where the worker script is (built next to the page's script by default). */
  workerUrl?: string | URL;
}

export class DeviceClient {
  private nextId = 1;
  private readonly calls = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private timer: ReturnType<typeof setTimeout> | null = null;
  opened: Opened | null = null;

  private constructor(private readonly worker: Worker) {
    worker.onmessage = (ev: MessageEvent) => {
      const m = ev.data as Reply | HttpRequest;
      if ('http' in m) {
        void this.post(m);
        return;
      }
      const c = this.calls.get(m.id);
      this.calls.delete(m.id);
      if (!c) return;
      if (m.ok) c.resolve(m.value);
      else c.reject(new DeviceCallError(m.error?.kind ?? 'local', m.error?.message ?? 'failed', m.error?.code));
    };
  }

  /** Opens (or creates) the device's local database and binds it to its server. */
  static async open(opts: OpenOptions): Promise<DeviceClient> {
    const url = opts.workerUrl ?? new URL('./device-worker.js', import.meta.url);
    const client = new DeviceClient(new Worker(url, { type: 'module' }));
    const server = opts.server ?? location.origin;
    client.opened = (await client.call('open', [server, opts.token, opts.name ?? 'device'])) as Opened;
    return client;
  }

  private async post(req: HttpRequest): Promise<void> {
    let reply: HttpReply;
    try {
      const res = await fetch(req.url, {
        method: 'POST',
        headers: { Authorization: `Bearer ${req.token}`, 'Content-Type': 'application/json' },
        body: req.body,
      });
      reply = { httpReply: req.http, status: res.status, body: await res.text() };
    } catch (e) {
      reply = { httpReply: req.http, unreachable: e instanceof Error ? e.message : String(e) };
    }
    this.worker.postMessage(reply);
  }

  private call(method: Method, args: unknown[]): Promise<unknown> {
    const id = this.nextId++;
    const msg: Call = { id, method, args };
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject });
      this.worker.postMessage(msg);
    });
  }

  /** One statement as a local transaction of its own; the rows it changed. */
  execute(sql: string, bind: unknown[] = []): Promise<number> {
    return this.call('execute', [sql, bind]) as Promise<number>;
  }

  /** Statements as one local transaction (one transaction for the server too). */
  transaction(statements: Statement[]): Promise<number> {
    return this.call('transaction', [statements]) as Promise<number>;
  }

  query<T = Record<string, unknown>>(sql: string, bind: unknown[] = []): Promise<T[]> {
    return this.call('query', [sql, bind]) as Promise<T[]>;
  }

  sync(): Promise<SyncReport> {
    return this.call('sync', []) as Promise<SyncReport>;
  }

  status(): Promise<Status> {
    return this.call('status', []) as Promise<Status>;
  }

  setOffline(offline: boolean): Promise<void> {
    return this.call('setOffline', [offline]) as Promise<void>;
  }

  rejected(): Promise<Rejected[]> {
    return this.call('rejected', []) as Promise<Rejected[]>;
  }

  /**
   * Syncs every `everyMs` and as soon as the browser is back online; `after` runs after each
   * attempt (with the error, if it failed). Failures are in the status; the next round tries again.
   */
  startBackgroundSync(everyMs: number, after?: (error?: Error) => void): void {
    this.stopBackgroundSync();
    this.running = true;
    // One round at a time: the timer and the browser's `online` event both start one; a
    // round asked for while one runs follows it at once.
    let inFlight = false;
    let again = false;
    const round = async (): Promise<void> => {
      if (inFlight) {
        again = true;
        return;
      }
      inFlight = true;
      if (this.timer !== null) clearTimeout(this.timer);
      this.timer = null;
      let error: Error | undefined;
      try {
        await this.sync();
      } catch (e) {
        error = e as Error;
      }
      inFlight = false;
      after?.(error);
      if (!this.running) return;
      if (again) {
        again = false;
        void round();
      } else {
        this.timer = setTimeout(round, everyMs);
      }
    };
    this.online = () => void round();
    addEventListener('online', this.online);
    void round();
  }

  private running = false;
  private online: (() => void) | null = null;

  stopBackgroundSync(): void {
    this.running = false;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.online) removeEventListener('online', this.online);
    this.online = null;
  }

  close(): void {
    this.stopBackgroundSync();
    this.worker.terminate();
  }
}
