/**
 * Wire encoding: MessagePack (msgpackr) with its typed-array extension (ext type 0x74), so tensors
 * travel as raw little-endian typed-array bytes, never as JSON numbers or base64.
 * Decoding treats its input as hostile: the byte length is capped before parsing, any parser error
 * becomes a ProtocolError, and nothing decoded is trusted until a guard in shared/protocol checks it.
 */
import { Packr } from 'msgpackr';
import { ProtocolError, errorMessage } from '../errors.js';
import type { Tensor32, TensorMap } from '../tensor.js';
import { numel } from '../tensor.js';

/** Default cap for one inbound message (an upload of a large model's adapter fits well below it). */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

// records off: the peer cannot define structures that later messages depend on; maps decode as
// plain objects (msgpackr renames a `__proto__` key, so no prototype pollution).
const packr = new Packr({ useRecords: false, moreTypes: true, mapsAsObjects: true, bundleStrings: false });

export function encode(value: unknown): Uint8Array {
  const b = packr.pack(value);
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/** Byte view of whatever socket.io handed us (Buffer, Uint8Array, ArrayBuffer), or null. */
export function asBytes(input: unknown): Uint8Array | null {
  if (input instanceof Uint8Array) return input;
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  return null;
}

/** Decodes one message. Throws ProtocolError BAD_ENCODING / TOO_LARGE. */
export function decode(input: unknown, maxBytes = DEFAULT_MAX_MESSAGE_BYTES): unknown {
  const bytes = asBytes(input);
  if (!bytes) throw new ProtocolError('BAD_ENCODING', `expected a binary MessagePack payload, got ${describe(input)}`);
  if (bytes.byteLength > maxBytes) throw new ProtocolError('TOO_LARGE', `message is ${bytes.byteLength} bytes, over the ${maxBytes}-byte limit`);
  if (bytes.byteLength === 0) throw new ProtocolError('BAD_ENCODING', 'empty message');
  try {
    // msgpackr needs a Buffer-like with the right view; copy-free for Buffers
    const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return packr.unpack(buf);
  } catch (e) {
    throw new ProtocolError('BAD_ENCODING', `payload is not valid MessagePack (${errorMessage(e)})`);
  }
}

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return `array(${v.length})`;
  if (ArrayBuffer.isView(v)) return `${v.constructor.name}(${(v as { length?: number }).length ?? v.byteLength})`;
  return typeof v === 'object' ? (v.constructor?.name ?? 'object') : typeof v;
}

/** Tensors on the wire: a list (ordered by name) of `{ name, shape, data: Float32Array }`. */
export interface WireTensor { name: string; shape: number[]; data: Float32Array }

export function tensorMapToWire(m: TensorMap): WireTensor[] {
  return [...m.keys()].sort().map((name) => {
    const t = m.get(name)!;
    return { name, shape: [...t.shape], data: t.data };
  });
}

export interface TensorLimits {
  maxTensors: number;
  maxElements: number; // total over all tensors
  maxDims?: number;
}

/** Validates a decoded tensor list: unique names, integer shapes, Float32Array of matching length, finite values. */
export function tensorMapFromWire(v: unknown, limits: TensorLimits, what = 'tensors'): TensorMap {
  if (!Array.isArray(v)) throw new ProtocolError('BAD_MESSAGE', `${what}: expected a list, got ${describe(v)}`);
  if (v.length > limits.maxTensors) throw new ProtocolError('TOO_LARGE', `${what}: ${v.length} tensors, limit ${limits.maxTensors}`);
  const out: TensorMap = new Map();
  let total = 0;
  for (const [i, raw] of v.entries()) {
    if (typeof raw !== 'object' || raw === null) throw new ProtocolError('BAD_MESSAGE', `${what}[${i}]: expected an object`);
    const { name, shape, data } = raw as Record<string, unknown>;
    if (typeof name !== 'string' || name.length === 0 || name.length > 512) throw new ProtocolError('BAD_MESSAGE', `${what}[${i}]: bad name`);
    if (out.has(name)) throw new ProtocolError('BAD_MESSAGE', `${what}: duplicate tensor ${name}`);
    if (!Array.isArray(shape) || shape.length > (limits.maxDims ?? 4) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0 && d <= 1 << 30)) {
      throw new ProtocolError('BAD_MESSAGE', `${what}[${name}]: bad shape`);
    }
    if (!(data instanceof Float32Array)) throw new ProtocolError('BAD_MESSAGE', `${what}[${name}]: data must be a Float32Array, got ${describe(data)}`);
    const n = numel(shape as number[]);
    if (n !== data.length) throw new ProtocolError('BAD_SHAPE', `${what}[${name}]: shape [${shape}] needs ${n} values, got ${data.length}`);
    total += n;
    if (total > limits.maxElements) throw new ProtocolError('TOO_LARGE', `${what}: more than ${limits.maxElements} elements`);
    assertFinite(data, `${what}[${name}]`);
    out.set(name, { shape: [...(shape as number[])], data } satisfies Tensor32);
  }
  return out;
}

export function assertFinite(data: Float32Array, what: string): void {
  for (let i = 0; i < data.length; i++) {
    const x = data[i]!;
    // x - x is NaN for ±Infinity and NaN: one comparison per element
    if (x - x !== 0) throw new ProtocolError('NON_FINITE', `${what}: element ${i} is ${x}`);
  }
}
