/**
 * Storage codecs for frozen base weights (`--base-dtype`): what a base weight costs in memory and what
 * the model computes with after dequantization. Pure JS over typed arrays; no tfjs.
 *  - bf16: the upper 16 bits of the fp32 pattern, rounded to nearest-even (2 bytes/value).
 *  - int8: per-output-channel absmax (LLM.int8()'s row-wise scheme without outliers): row o of a
 *    [out, in] weight is stored as round(w / s_o) in [−127, 127] with s_o = absmax(row o) / 127.
 *  - nf4: QLoRA's 4-bit NormalFloat (Dettmers et al. 2023, "QLoRA", §3 and bitsandbytes' NF4 table):
 *    blocks of 64 consecutive values, each scaled by its absmax into [−1, 1] and rounded to the nearest
 *    of the 16 NF4 levels; two codes per byte, the first value of a pair in the high nibble (as
 *    bitsandbytes packs them). Optional double quantization of the per-block absmax values (QLoRA
 *    §3 "Double Quantization"): their mean is subtracted and the rest stored as 8-bit values in blocks
 *    of 256, each with an fp32 scale. QLoRA uses 8-bit floats for that second step; this uses 8-bit
 *    linear (absmax) codes — same size, and the error it adds to a block scale is at most
 *    absmax-of-256 / 254 (documented deviation).
 */

/** The 16 NF4 levels (bitsandbytes `get_4bit_type('nf4')`): quantiles of N(0, 1) scaled to [−1, 1], exact 0. */
export const NF4_LEVELS: readonly number[] = [
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
];
export const NF4_BLOCK = 64;
export const NF4_DQ_BLOCK = 256;

export type BaseDtype = 'fp32' | 'bf16' | 'int8' | 'nf4';
export const BASE_DTYPES: readonly BaseDtype[] = ['fp32', 'bf16', 'int8', 'nf4'];

// ---- bf16 ----
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function toBf16(x: Float32Array): Uint16Array {
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    f32[0] = x[i]!;
    const b = u32[0]!;
    if ((b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff) !== 0) { out[i] = (b >>> 16) | 0x40; continue; } // NaN stays NaN
    out[i] = ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff; // round to nearest, ties to even
  }
  return out;
}

export function fromBf16(h: Uint16Array, out = new Float32Array(h.length)): Float32Array {
  for (let i = 0; i < h.length; i++) { u32[0] = h[i]! << 16; out[i] = f32[0]!; }
  return out;
}

// ---- int8, per output channel ----
export interface Int8Weight { q: Int8Array; scale: Float32Array; rows: number; cols: number }

/** `w` is [rows = out, cols = in], row-major. */
export function quantizeInt8(w: Float32Array, rows: number, cols: number): Int8Weight {
  if (w.length !== rows * cols) throw new RangeError(`int8: ${w.length} values for a [${rows}, ${cols}] weight`);
  const q = new Int8Array(w.length), scale = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let m = 0;
    for (let c = 0; c < cols; c++) m = Math.max(m, Math.abs(w[r * cols + c]!));
    const s = m / 127;
    scale[r] = s;
    if (s === 0) continue;
    for (let c = 0; c < cols; c++) q[r * cols + c] = Math.max(-127, Math.min(127, Math.round(w[r * cols + c]! / s)));
  }
  return { q, scale, rows, cols };
}

export function dequantizeInt8(x: Int8Weight, out = new Float32Array(x.rows * x.cols)): Float32Array {
  const { q, scale, rows, cols } = x;
  for (let r = 0; r < rows; r++) { const s = scale[r]!; for (let c = 0; c < cols; c++) out[r * cols + c] = q[r * cols + c]! * s; }
  return out;
}

// ---- nf4 ----
export interface Nf4Weight {
  /** Two codes per byte, the first of each pair in the high nibble. */
  packed: Uint8Array;
  length: number;
  /** Per-64-block absmax, when not double-quantized. */
  absmax: Float32Array | null;
  /** Double quantization: absmax ≈ offset + code·dqScale[block of 256]. */
  dq: { codes: Int8Array; scale: Float32Array; offset: number } | null;
}

/** Index of the NF4 level nearest to v ∈ [−1, 1] (ties to the lower level, as a midpoint search does). */
export function nf4Index(v: number): number {
  // binary search over the 15 midpoints between consecutive levels
  let lo = 0, hi = 15;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (v > (NF4_LEVELS[mid]! + NF4_LEVELS[mid + 1]!) / 2) lo = mid + 1; else hi = mid;
  }
  return lo;
}

export function quantizeNf4(w: Float32Array, opts: { doubleQuant?: boolean } = {}): Nf4Weight {
  const n = w.length, blocks = Math.ceil(n / NF4_BLOCK);
  const absmax = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    let m = 0;
    for (let i = b * NF4_BLOCK, e = Math.min(n, i + NF4_BLOCK); i < e; i++) m = Math.max(m, Math.abs(w[i]!));
    absmax[b] = m;
  }
  let dq: Nf4Weight['dq'] = null;
  let scales: Float32Array = absmax;
  if (opts.doubleQuant) {
    dq = quantizeAbsmax(absmax);
    scales = dequantizeAbsmax(dq, blocks);
  }
  const packed = new Uint8Array(Math.ceil(n / 2));
  for (let i = 0; i < n; i++) {
    const s = scales[Math.floor(i / NF4_BLOCK)]!;
    const code = s > 0 ? nf4Index(Math.max(-1, Math.min(1, w[i]! / s))) : 7; // 7: the exact 0 level
    packed[i >> 1]! |= (i & 1) === 0 ? code << 4 : code;
  }
  return { packed, length: n, absmax: dq ? null : absmax, dq };
}

function quantizeAbsmax(absmax: Float32Array): NonNullable<Nf4Weight['dq']> {
  let sum = 0;
  for (const a of absmax) sum += a;
  const offset = absmax.length ? sum / absmax.length : 0;
  const nb = Math.ceil(absmax.length / NF4_DQ_BLOCK);
  const codes = new Int8Array(absmax.length), scale = new Float32Array(nb);
  for (let b = 0; b < nb; b++) {
    let m = 0;
    for (let i = b * NF4_DQ_BLOCK, e = Math.min(absmax.length, i + NF4_DQ_BLOCK); i < e; i++) m = Math.max(m, Math.abs(absmax[i]! - offset));
    const s = m / 127;
    scale[b] = s;
    if (s === 0) continue;
    for (let i = b * NF4_DQ_BLOCK, e = Math.min(absmax.length, i + NF4_DQ_BLOCK); i < e; i++) codes[i] = Math.round((absmax[i]! - offset) / s);
  }
  return { codes, scale, offset };
}

function dequantizeAbsmax(dq: NonNullable<Nf4Weight['dq']>, blocks: number): Float32Array {
  const out = new Float32Array(blocks);
  for (let i = 0; i < blocks; i++) out[i] = Math.max(0, dq.offset + dq.codes[i]! * dq.scale[Math.floor(i / NF4_DQ_BLOCK)]!);
  return out;
}

export function dequantizeNf4(x: Nf4Weight, out = new Float32Array(x.length)): Float32Array {
  const blocks = Math.ceil(x.length / NF4_BLOCK);
  const scales = x.dq ? dequantizeAbsmax(x.dq, blocks) : x.absmax!;
  for (let i = 0; i < x.length; i++) {
    const byte = x.packed[i >> 1]!;
    const code = (i & 1) === 0 ? byte >> 4 : byte & 15;
    out[i] = NF4_LEVELS[code]! * scales[Math.floor(i / NF4_BLOCK)]!;
  }
  return out;
}

/** Bytes a weight of `n` values takes in each storage type (for reports and memory planning). */
export function storageBytes(dtype: BaseDtype, n: number, rows = 1, doubleQuant = false): number {
  switch (dtype) {
    case 'fp32': return 4 * n;
    case 'bf16': return 2 * n;
    case 'int8': return n + 4 * rows;
    case 'nf4': {
      const blocks = Math.ceil(n / NF4_BLOCK);
      return Math.ceil(n / 2) + (doubleQuant ? blocks + 4 * Math.ceil(blocks / NF4_DQ_BLOCK) + 4 : 4 * blocks);
    }
  }
}
