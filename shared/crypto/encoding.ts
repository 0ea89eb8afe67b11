import { timingSafeEqual } from 'node:crypto';
import nacl from 'tweetnacl';
import { fail } from './errors.js';

/**
 * Canonical, injective binary encoding of the structured values that get signed, hashed or sealed.
 * Objects are encoded with sorted keys and every item is tagged and length-prefixed, so two
 * different values never share an encoding and key order / JS engine never changes the bytes.
 * Supported: null, boolean, finite number, string, Uint8Array, Uint32Array, arrays, plain objects
 * (keys with `undefined` values are omitted, as in JSON).
 */
export type Canonical =
  | null | boolean | number | string | Uint8Array | Uint32Array
  | readonly Canonical[] | { readonly [k: string]: Canonical | undefined };

const MAX_DEPTH = 32;
const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

class Writer {
  #buf = new Uint8Array(256);
  #len = 0;
  #ensure(n: number): void {
    if (this.#len + n <= this.#buf.length) return;
    let cap = this.#buf.length * 2;
    while (cap < this.#len + n) cap *= 2;
    const b = new Uint8Array(cap);
    b.set(this.#buf.subarray(0, this.#len));
    this.#buf = b;
  }
  byte(v: number): void { this.#ensure(1); this.#buf[this.#len++] = v; }
  u32(v: number): void {
    this.#ensure(4);
    const b = this.#buf, o = this.#len;
    b[o] = v >>> 24; b[o + 1] = (v >>> 16) & 255; b[o + 2] = (v >>> 8) & 255; b[o + 3] = v & 255;
    this.#len += 4;
  }
  bytes(v: Uint8Array): void { this.#ensure(v.length); this.#buf.set(v, this.#len); this.#len += v.length; }
  f64(v: number): void { const b = new Uint8Array(8); new DataView(b.buffer).setFloat64(0, v, false); this.bytes(b); }
  result(): Uint8Array { return this.#buf.slice(0, this.#len); }
}

function write(w: Writer, v: unknown, depth: number): void {
  if (depth > MAX_DEPTH) fail('CRYPTO_BAD_ENCODING', 'canonical value nested too deeply');
  if (v === null) { w.byte(0); return; }
  if (v === false) { w.byte(1); return; }
  if (v === true) { w.byte(2); return; }
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) fail('CRYPTO_BAD_ENCODING', 'canonical value: non-finite number');
    w.byte(3); w.f64(v === 0 ? 0 : v); return; // -0 and 0 encode alike
  }
  if (typeof v === 'string') { const b = enc.encode(v); w.byte(4); w.u32(b.length); w.bytes(b); return; }
  if (v instanceof Uint8Array) { w.byte(5); w.u32(v.length); w.bytes(v); return; }
  if (v instanceof Uint32Array) {
    w.byte(6); w.u32(v.length);
    const b = new Uint8Array(v.length * 4); const dv = new DataView(b.buffer);
    for (let i = 0; i < v.length; i++) dv.setUint32(i * 4, v[i]!, true);
    w.bytes(b); return;
  }
  if (Array.isArray(v)) { w.byte(7); w.u32(v.length); for (const x of v) write(w, x, depth + 1); return; }
  if (typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype || (typeof v === 'object' && v !== null && Object.getPrototypeOf(v) === null)) {
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o).filter((k) => o[k] !== undefined).sort();
    w.byte(8); w.u32(keys.length);
    for (const k of keys) { const kb = enc.encode(k); w.u32(kb.length); w.bytes(kb); write(w, o[k], depth + 1); }
    return;
  }
  fail('CRYPTO_BAD_ENCODING', `canonical value: unsupported type ${Object.prototype.toString.call(v)}`);
}

export function canonicalEncode(v: Canonical): Uint8Array {
  const w = new Writer();
  write(w, v, 0);
  return w.result();
}

export function utf8(s: string): Uint8Array { return enc.encode(s); }
export function fromUtf8(b: Uint8Array): string {
  try { return dec.decode(b); } catch (e) { return fail('CRYPTO_BAD_ENCODING', 'invalid UTF-8', e); }
}

export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

/** Prefix used for every domain-separated operation: tag ‖ len(domain) ‖ domain. */
export function domainPrefix(tag: string, domain: string): Uint8Array {
  if (domain.length === 0 || domain.length > 200) fail('CRYPTO_BAD_ENCODING', 'domain must be 1..200 characters');
  const t = enc.encode(tag), d = enc.encode(domain);
  const out = new Uint8Array(t.length + 1 + 4 + d.length);
  out.set(t, 0); out[t.length] = 0;
  new DataView(out.buffer).setUint32(t.length + 1, d.length, false);
  out.set(d, t.length + 5);
  return out;
}

/** 32-byte domain-separated hash (SHA-512 truncated) of a canonical value. */
export function hashCanonical(domain: string, v: Canonical): Uint8Array {
  return nacl.hash(concatBytes(domainPrefix('fedlora-hash-v1', domain), canonicalEncode(v))).slice(0, 32);
}

const buf = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

/** Constant-time (for equal lengths) byte comparison: node:crypto timingSafeEqual. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(buf(a), buf(b));
}

/** base64url without padding (RFC 4648 §5), via Buffer. */
export function toBase64Url(b: Uint8Array): string {
  return buf(b).toString('base64url');
}

/** Strict: only the base64url alphabet, no padding, no impossible length (Buffer alone would skip bad characters). */
export function fromBase64Url(s: string): Uint8Array {
  if (!/^[A-Za-z0-9_-]*$/.test(s) || s.length % 4 === 1) fail('CRYPTO_BAD_ENCODING', 'invalid base64url');
  return new Uint8Array(Buffer.from(s, 'base64url'));
}

export function toHex(b: Uint8Array): string {
  return buf(b).toString('hex');
}

export function isBytes(v: unknown, len?: number): v is Uint8Array {
  return v instanceof Uint8Array && (len === undefined || v.length === len);
}
