// Values as the sync protocol writes them (docs/devices.md, "Values"), and as SQLite takes
// them. JSON is read and written with lossless-json: a 64-bit integer (a clock, a key) keeps
// every digit, and `1.0` stays a REAL where JSON.parse would make it the integer 1.

import { LosslessNumber, parse, stringify } from 'lossless-json';
import { Real } from './statement';

/** A value of a row, typed as SQLite stores it. */
export type SqlValue =
  | { t: 'null' }
  | { t: 'int'; v: bigint }
  | { t: 'real'; v: number }
  | { t: 'text'; v: string }
  | { t: 'textbytes'; v: Uint8Array }
  | { t: 'blob'; v: Uint8Array };

/** JSON as lossless-json reads it: numbers are LosslessNumber. */
export type Json = null | boolean | string | LosslessNumber | Json[] | { [k: string]: Json };
export type JsonRow = { [column: string]: Json };

const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

export function parseJson(text: string): Json {
  return parse(text) as Json;
}

export function toJson(value: unknown): string {
  const out = stringify(value);
  if (out === undefined) throw new Error('a value that JSON cannot hold');
  return out;
}

/** An integer the protocol carries (positions, sequence numbers, clocks). */
export function bigOf(v: Json | undefined, what: string): bigint {
  if (v instanceof LosslessNumber && /^-?\d+$/.test(v.value)) return BigInt(v.value);
  throw new Error(`${what} is not an integer: ${toJson(v ?? null)}`);
}

export function numOf(v: Json | undefined, what: string): number {
  return Number(bigOf(v, what));
}

function hexBytes(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) throw new Error(`bad hex ${JSON.stringify(hex)}`);
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function base64Bytes(b64: string): Uint8Array {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function bytesHex(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
  return s.toUpperCase();
}

/** A protocol value, or why it is not one. */
export function fromJson(v: Json): SqlValue {
  if (v === null) return { t: 'null' };
  if (typeof v === 'boolean') throw new Error(`${v} is not a value: SQLite has no booleans`);
  if (typeof v === 'string') return { t: 'text', v };
  if (v instanceof LosslessNumber) {
    if (/^-?\d+$/.test(v.value)) {
      const i = BigInt(v.value);
      if (i >= I64_MIN && i <= I64_MAX) return { t: 'int', v: i };
    }
    return { t: 'real', v: Number(v.value) };
  }
  if (Array.isArray(v)) throw new Error('an array is not a value');
  const keys = Object.keys(v);
  const one = keys.length === 1 ? v[keys[0]] : undefined;
  if (typeof one === 'string') {
    switch (keys[0]) {
      case 'base64':
        return { t: 'blob', v: base64Bytes(one) };
      case 'hex':
        return { t: 'blob', v: hexBytes(one) };
      case 'text_base64':
        return { t: 'textbytes', v: base64Bytes(one) };
      case 'real':
        if (one === 'inf') return { t: 'real', v: Infinity };
        if (one === '-inf') return { t: 'real', v: -Infinity };
    }
  }
  throw new Error(`not a value: ${toJson(v)}`);
}

/** One value, as text that is equal exactly when SQLite's values are (for key lookups). */
export function canonical(v: SqlValue): string {
  switch (v.t) {
    case 'null':
      return 'n';
    case 'int':
      return `i${v.v}`;
    case 'real':
      // An integral real names the same row as the integer (SQLite compares them equal).
      return Number.isInteger(v.v) ? `i${BigInt(v.v)}` : `r${v.v}`;
    case 'text':
      return `t${v.v}`;
    case 'textbytes':
      return `t${new TextDecoder().decode(v.v)}`;
    case 'blob':
      return `b${bytesHex(v.v)}`;
  }
}

/**
 * The SQL for a bound value at `?n` and what to bind (with statement.ts's `run`): a REAL as a
 * `Real` (bound as a double whatever its value), text that is not UTF-8 as bytes cast to TEXT.
 */
export function bindOf(v: SqlValue, n: number): [string, unknown] {
  switch (v.t) {
    case 'null':
      return [`?${n}`, null];
    case 'int':
      return [`?${n}`, v.v >= BigInt(Number.MIN_SAFE_INTEGER) && v.v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v.v) : v.v];
    case 'real':
      return [`?${n}`, new Real(v.v)];
    case 'text':
      return [`?${n}`, v.v];
    case 'textbytes':
      return [`CAST(?${n} AS TEXT)`, v.v];
    case 'blob':
      return [`?${n}`, v.v];
  }
}

/** A row's values by column name, decoded. */
export function rowValues(row: JsonRow): [string, SqlValue][] {
  return Object.keys(row).map((c) => [c, fromJson(row[c])]);
}
