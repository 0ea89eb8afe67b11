/**
 * safetensors reader/writer. The file is untrusted: the header length is capped, every offset must
 * lie inside the data section, tensors may not overlap, dtypes must be known and
 * shape × itemsize must equal the byte length. Everything decodes to Float32Array (floats) or
 * Int32Array (ints, I64 range-checked).
 */
import { readFile, open, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { atomicWrite, renameDurable } from '../fs/atomic.js';
import { toBf16 } from './frozen/quant.js';
import { ModelFormatError } from '../errors.js';
import { numel } from '../tensor.js';

export const MAX_HEADER_BYTES = 100 * 1024 * 1024;
const ITEM: Record<string, number> = { F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8, F64: 8, I8: 1, U8: 1, I16: 2, BOOL: 1 };
const READABLE = new Set(['F32', 'F16', 'BF16', 'I32', 'I64', 'F64']);

export interface SafetensorEntry {
  dtype: string;
  shape: number[];
  begin: number; // absolute offset into the file buffer
  end: number;
}

export interface SafetensorsFile {
  file: string;
  metadata: Record<string, string>;
  entries: Map<string, SafetensorEntry>;
  buffer: Uint8Array;
}

/** Parses and validates the header; tensor bytes stay in `buffer` until asked for. */
export function parseSafetensors(buffer: Uint8Array, file = '<buffer>'): SafetensorsFile {
  if (buffer.byteLength < 8) throw new ModelFormatError(`truncated: ${buffer.byteLength} bytes, need at least 8 for the header length`, file);
  const dv = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  const headerLen = headerLength(dv.getBigUint64(0, true), buffer.byteLength, file);
  return { file, buffer, ...parseHeader(buffer.subarray(8, 8 + headerLen), buffer.byteLength, file) };
}

function headerLength(hlen: bigint, fileBytes: number, file: string): number {
  if (hlen > BigInt(MAX_HEADER_BYTES)) throw new ModelFormatError(`header length ${hlen} exceeds the ${MAX_HEADER_BYTES}-byte cap`, file);
  const headerLen = Number(hlen);
  if (8 + headerLen > fileBytes) throw new ModelFormatError(`truncated: header claims ${headerLen} bytes but the file has ${fileBytes - 8} after the length`, file);
  return headerLen;
}

/** Validates the JSON header of a file of `fileBytes` bytes; entries get absolute file offsets. */
function parseHeader(headerBytes: Uint8Array, fileBytes: number, file: string): { metadata: Record<string, string>; entries: Map<string, SafetensorEntry> } {
  const headerLen = headerBytes.byteLength;
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw new ModelFormatError(`header is not valid UTF-8 JSON (${(e as Error).message})`, file);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new ModelFormatError('header is not a JSON object', file);
  const dataStart = 8 + headerLen;
  const dataLen = fileBytes - dataStart;
  const entries = new Map<string, SafetensorEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ModelFormatError('__metadata__ is not an object', file);
      for (const v of Object.values(raw)) if (typeof v !== 'string') throw new ModelFormatError('__metadata__ values must be strings', file);
      metadata = raw as Record<string, string>;
      continue;
    }
    if (typeof raw !== 'object' || raw === null) throw new ModelFormatError(`tensor "${name}": entry is not an object`, file);
    const { dtype, shape, data_offsets } = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof dtype !== 'string' || !(dtype in ITEM)) throw new ModelFormatError(`tensor "${name}": unknown dtype ${JSON.stringify(dtype)}`, file);
    if (!Array.isArray(shape) || shape.length > 8 || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new ModelFormatError(`tensor "${name}": shape ${JSON.stringify(shape)} is not a list of non-negative integers`, file);
    }
    if (!Array.isArray(data_offsets) || data_offsets.length !== 2 || !data_offsets.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new ModelFormatError(`tensor "${name}": data_offsets ${JSON.stringify(data_offsets)} are not two non-negative integers`, file);
    }
    const [b, e] = data_offsets as [number, number];
    if (e < b) throw new ModelFormatError(`tensor "${name}": data_offsets end ${e} before begin ${b}`, file);
    if (e > dataLen) throw new ModelFormatError(`tensor "${name}": data_offsets [${b}, ${e}] run past the end of the data (${dataLen} bytes); file truncated or header lying`, file);
    const expected = numel(shape as number[]) * ITEM[dtype]!;
    if (expected !== e - b) throw new ModelFormatError(`tensor "${name}": shape [${shape}] × ${dtype} is ${expected} bytes but data_offsets span ${e - b}`, file);
    entries.set(name, { dtype, shape: shape as number[], begin: dataStart + b, end: dataStart + e });
  }
  const sorted = [...entries.entries()].sort((x, y) => x[1].begin - y[1].begin || x[1].end - y[1].end);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!, cur = sorted[i]!;
    if (cur[1].begin < prev[1].end) throw new ModelFormatError(`tensors "${prev[0]}" and "${cur[0]}" overlap`, file);
  }
  return { metadata, entries };
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/** Decodes one tensor. Floats → Float32Array (copy), I32/I64 → Int32Array. */
export function readTensor(st: SafetensorsFile, name: string): { dtype: string; shape: number[]; data: Float32Array | Int32Array } {
  const e = st.entries.get(name);
  if (!e) throw new ModelFormatError(`no tensor named "${name}"`, st.file);
  if (!READABLE.has(e.dtype)) throw new ModelFormatError(`tensor "${name}": dtype ${e.dtype} is not supported for reading`, st.file);
  return decodeTensor(e, st.buffer.subarray(e.begin, e.end), name, st.file);
}

function decodeTensor(e: SafetensorEntry, bytes: Uint8Array, name: string, file: string): { dtype: string; shape: number[]; data: Float32Array | Int32Array } {
  const n = numel(e.shape);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (e.dtype) {
    case 'F32': {
      const out = new Float32Array(n);
      new Uint8Array(out.buffer).set(bytes);
      return { dtype: e.dtype, shape: [...e.shape], data: out };
    }
    case 'F64': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(i * 8, true);
      return { dtype: e.dtype, shape: [...e.shape], data: out };
    }
    case 'F16': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(i * 2, true));
      return { dtype: e.dtype, shape: [...e.shape], data: out };
    }
    case 'BF16': {
      const out = new Float32Array(n);
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = dv.getUint16(i * 2, true) << 16;
      return { dtype: e.dtype, shape: [...e.shape], data: out };
    }
    case 'I32': {
      const out = new Int32Array(n);
      new Uint8Array(out.buffer).set(bytes);
      return { dtype: e.dtype, shape: [...e.shape], data: out };
    }
    default: { // I64
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const v = dv.getBigInt64(i * 8, true);
        if (v > 2147483647n || v < -2147483648n) throw new ModelFormatError(`tensor "${name}": I64 value ${v} does not fit int32`, file);
        out[i] = Number(v);
      }
      return { dtype: e.dtype, shape: [...e.shape], data: out };
    }
  }
}

export function readFloatTensor(st: SafetensorsFile, name: string): { shape: number[]; data: Float32Array } {
  const t = readTensor(st, name);
  if (!(t.data instanceof Float32Array)) throw new ModelFormatError(`tensor "${name}": expected a float tensor, got ${t.dtype}`, st.file);
  return { shape: t.shape, data: t.data };
}

/**
 * A safetensors file opened for reading one tensor at a time: only the header is held in memory, each
 * `read` fetches that tensor's bytes from disk (loading a model then never holds the whole file).
 */
export interface SafetensorsReader {
  file: string;
  metadata: Record<string, string>;
  entries: Map<string, SafetensorEntry>;
  /** Decodes one tensor as readTensor does. */
  read(name: string): Promise<{ dtype: string; shape: number[]; data: Float32Array | Int32Array }>;
  readFloat(name: string): Promise<{ shape: number[]; data: Float32Array }>;
  close(): Promise<void>;
}

export async function openSafetensors(path: string, maxBytes = 64 * 1024 ** 3): Promise<SafetensorsReader> {
  const fh = await open(path, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new ModelFormatError(`cannot open (${e.code ?? e.message})`, path);
  });
  try {
    const { size } = await fh.stat();
    if (size > maxBytes) throw new ModelFormatError(`file is ${size} bytes, over the ${maxBytes}-byte limit`, path);
    if (size < 8) throw new ModelFormatError(`truncated: ${size} bytes, need at least 8 for the header length`, path);
    const lenBuf = Buffer.alloc(8);
    await readFully(fh, lenBuf, 0, path);
    const headerLen = headerLength(lenBuf.readBigUInt64LE(0), size, path);
    const hbuf = Buffer.alloc(headerLen);
    await readFully(fh, hbuf, 8, path);
    const { metadata, entries } = parseHeader(new Uint8Array(hbuf.buffer, hbuf.byteOffset, hbuf.byteLength), size, path);
    const read = async (name: string) => {
      const e = entries.get(name);
      if (!e) throw new ModelFormatError(`no tensor named "${name}"`, path);
      if (!READABLE.has(e.dtype)) throw new ModelFormatError(`tensor "${name}": dtype ${e.dtype} is not supported for reading`, path);
      const bytes = new Uint8Array(e.end - e.begin);
      await readFully(fh, bytes, e.begin, path);
      return decodeTensor(e, bytes, name, path);
    };
    return {
      file: path, metadata, entries, read,
      readFloat: async (name) => {
        const t = await read(name);
        if (!(t.data instanceof Float32Array)) throw new ModelFormatError(`tensor "${name}": expected a float tensor, got ${t.dtype}`, path);
        return { shape: t.shape, data: t.data };
      },
      close: () => fh.close(),
    };
  } catch (e) {
    await fh.close();
    throw e;
  }
}

async function readFully(fh: FileHandle, into: Uint8Array, position: number, path: string): Promise<void> {
  let done = 0;
  while (done < into.byteLength) {
    const { bytesRead } = await fh.read(into, done, Math.min(into.byteLength - done, 1 << 30), position + done);
    if (bytesRead === 0) throw new ModelFormatError(`truncated: read ${done} of ${into.byteLength} bytes at offset ${position}`, path);
    done += bytesRead;
  }
}

export async function loadSafetensors(path: string, maxBytes = 64 * 1024 ** 3): Promise<SafetensorsFile> {
  const fh = await open(path, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new ModelFormatError(`cannot open (${e.code ?? e.message})`, path);
  });
  try {
    const { size } = await fh.stat();
    if (size > maxBytes) throw new ModelFormatError(`file is ${size} bytes, over the ${maxBytes}-byte limit`, path);
  } finally {
    await fh.close();
  }
  const buf = await readFile(path);
  return parseSafetensors(new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength), path);
}

export interface WritableTensor {
  shape: number[];
  data: Float32Array | Int32Array;
}

/** Serialises tensors (sorted by name, 8-byte aligned header as the reference implementation does). */
export function encodeSafetensors(tensors: Map<string, WritableTensor> | Record<string, WritableTensor>, metadata?: Record<string, string>): Uint8Array {
  const map = tensors instanceof Map ? tensors : new Map(Object.entries(tensors));
  const names = [...map.keys()].sort();
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) header.__metadata__ = metadata;
  let off = 0;
  for (const n of names) {
    const t = map.get(n)!;
    if (numel(t.shape) !== t.data.length) throw new RangeError(`tensor "${n}": shape [${t.shape}] does not match ${t.data.length} values`);
    const len = t.data.byteLength;
    header[n] = { dtype: t.data instanceof Float32Array ? 'F32' : 'I32', shape: t.shape, data_offsets: [off, off + len] };
    off += len;
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += ' ';
  const hbytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + hbytes.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(hbytes.length), true);
  out.set(hbytes, 8);
  let p = 8 + hbytes.length;
  for (const n of names) {
    const t = map.get(n)!;
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), p);
    p += t.data.byteLength;
  }
  return out;
}

/** Atomic, durable write (temp file, fsync, rename, fsync of the directory): see shared/fs/atomic.ts. */
export { atomicWrite };

export async function saveSafetensors(path: string, tensors: Map<string, WritableTensor> | Record<string, WritableTensor>, metadata?: Record<string, string>): Promise<void> {
  await atomicWrite(path, encodeSafetensors(tensors, metadata));
}

export interface StreamedTensor { name: string; shape: number[]; dtype: 'F32' | 'BF16' }

/**
 * Writes a safetensors file one tensor at a time, so a model larger than memory can be written:
 * `produce` is called for each spec in order and its values are on disk before the next is asked for.
 * The data follows the spec order (the header is valid safetensors either way). Atomic and durable as
 * atomicWrite: temp file, fsync, rename, fsync of the directory.
 */
export async function writeSafetensorsStreaming(path: string, specs: StreamedTensor[], produce: (spec: StreamedTensor) => Float32Array, metadata?: Record<string, string>): Promise<void> {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) header.__metadata__ = metadata;
  let off = 0;
  const seen = new Set<string>();
  for (const s of specs) {
    if (seen.has(s.name)) throw new RangeError(`tensor "${s.name}" listed twice`);
    seen.add(s.name);
    const len = numel(s.shape) * ITEM[s.dtype]!;
    header[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [off, off + len] };
    off += len;
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += ' ';
  const hbytes = Buffer.from(json, 'utf8');
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now()}.tmp`);
  const fh = await open(tmp, 'wx');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(hbytes.length));
    await fh.write(len);
    await fh.write(hbytes);
    for (const s of specs) {
      const v = produce(s);
      if (v.length !== numel(s.shape)) throw new RangeError(`tensor "${s.name}": produced ${v.length} values for shape [${s.shape}]`);
      const bytes = s.dtype === 'F32' ? new Uint8Array(v.buffer, v.byteOffset, v.byteLength) : (() => { const h = toBf16(v); return new Uint8Array(h.buffer, h.byteOffset, h.byteLength); })();
      for (let p = 0; p < bytes.byteLength; p += 1 << 30) await fh.write(bytes.subarray(p, Math.min(bytes.byteLength, p + (1 << 30))));
    }
    await fh.sync();
    await fh.close();
  } catch (e) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw e;
  }
  await renameDurable(tmp, path);
}
