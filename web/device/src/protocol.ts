// The messages between a page and the worker that holds its device (src/worker.ts and
// src/client.ts). The worker runs the database (OPFS needs a worker); the page sends the
// worker's HTTP requests, so the page's network state is the device's.

export type Method = 'open' | 'execute' | 'transaction' | 'query' | 'sync' | 'status' | 'setOffline' | 'rejected';

/** Page → worker: call a method of the device. */
export interface Call {
  id: number;
  method: Method;
  args: unknown[];
}

/** Worker → page: a call's result. */
export interface Reply {
  id: number;
  ok: boolean;
  value?: unknown;
  error?: { kind: string; message: string; code?: string };
}

/** Worker → page: post this for the device. */
export interface HttpRequest {
  http: number;
  url: string;
  token: string;
  body: string;
}

/** Page → worker: what the server answered, or why it could not be reached. */
export interface HttpReply {
  httpReply: number;
  status?: number;
  body?: string;
  unreachable?: string;
}

/** One statement of a transaction. */
export interface Statement {
  sql: string;
  bind?: unknown[];
}

export interface Opened {
  /** The database lives in OPFS (false: in memory, gone when the page closes). */
  persisted: boolean;
  sqliteVersion: string;
}
