import { fail } from './errors.js';

/**
 * Fixed-point encoding for secure aggregation, arithmetic mod 2^32.
 *
 * A client with weight w (e.g. its sample count) sends q_i = round(w · clip(x_i, −c, c) · 2^f) mod 2^32.
 * The sum of N such vectors with Σw ≤ W satisfies |Σ q| ≤ W·c·2^f + N/2, so as long as that is
 * below 2^31 the signed 32-bit reading of the modular sum is the exact integer sum, and
 *   decodeSum = Σ q · 2^−f,  |decodeSum − Σ w·clip(x)| ≤ N · 2^−(f+1)   (+ float32 output rounding).
 * `checkQuantParams` refuses parameters that could overflow; `chooseQuantParams` picks the largest f.
 */
export interface QuantParams {
  clip: number;            // c > 0: inputs are clipped to [−c, c]
  fracBits: number;        // f: scale 2^f
  maxTotalWeight: number;  // W: upper bound on Σ weights of all clients in the round
  maxClients: number;      // N: upper bound on the number of summed vectors
}

const LIMIT = 2 ** 31;

function overflowMargin(q: QuantParams): number {
  return q.maxTotalWeight * q.clip * 2 ** q.fracBits + q.maxClients / 2;
}

export function checkQuantParams(q: QuantParams): void {
  if (!(q.clip > 0) || !Number.isFinite(q.clip)) fail('CRYPTO_QUANT_OVERFLOW', 'clip must be a positive finite number');
  if (!Number.isInteger(q.fracBits) || q.fracBits < 0 || q.fracBits > 40) fail('CRYPTO_QUANT_OVERFLOW', 'fracBits must be an integer in 0..40');
  if (!(q.maxTotalWeight > 0) || !Number.isFinite(q.maxTotalWeight)) fail('CRYPTO_QUANT_OVERFLOW', 'maxTotalWeight must be a positive finite number');
  if (!Number.isInteger(q.maxClients) || q.maxClients < 1) fail('CRYPTO_QUANT_OVERFLOW', 'maxClients must be a positive integer');
  const m = overflowMargin(q);
  if (!(m < LIMIT)) {
    fail('CRYPTO_QUANT_OVERFLOW', `fixed-point sum could overflow 32 bits: W·c·2^f + N/2 = ${m.toExponential(3)} ≥ 2^31 `
      + `(W=${q.maxTotalWeight}, c=${q.clip}, f=${q.fracBits}, N=${q.maxClients}); lower fracBits or clip`);
  }
}

/** Largest fracBits that cannot overflow for these bounds (throws when even f=0 overflows). */
export function chooseQuantParams(o: { clip: number; maxTotalWeight: number; maxClients: number }): QuantParams {
  let best: QuantParams | undefined;
  for (let f = 0; f <= 40; f++) {
    const q = { ...o, fracBits: f };
    if (overflowMargin(q) < LIMIT) best = q; else break;
  }
  if (!best) checkQuantParams({ ...o, fracBits: 0 });
  checkQuantParams(best!);
  return best!;
}

/** Max absolute error per coordinate of the decoded weighted sum (inputs already inside [−c, c]). */
export function quantErrorBound(q: QuantParams, clients = q.maxClients): number {
  const rounding = clients * 2 ** -(q.fracBits + 1);
  // decodeSum returns float32: half an ulp of the largest representable magnitude W·c
  const f32 = q.maxTotalWeight * q.clip * 2 ** -24;
  return rounding + f32;
}

/** Encodes weight·clip(x) to fixed point mod 2^32. Throws on NaN/±Inf inputs or a bad weight. */
export function encodeUpdate(x: Float32Array, weight: number, q: QuantParams, out?: Uint32Array): Uint32Array {
  checkQuantParams(q);
  if (!(x instanceof Float32Array)) fail('CRYPTO_QUANT_INPUT', 'encodeUpdate expects a Float32Array');
  if (!(weight >= 0) || !Number.isFinite(weight) || weight > q.maxTotalWeight) {
    fail('CRYPTO_QUANT_INPUT', `client weight ${weight} must be finite, ≥ 0 and ≤ maxTotalWeight ${q.maxTotalWeight}`);
  }
  const o = out ?? new Uint32Array(x.length);
  if (o.length !== x.length) fail('CRYPTO_QUANT_INPUT', `output length ${o.length} ≠ input length ${x.length}`);
  const c = q.clip, s = weight * 2 ** q.fracBits;
  let bad = -1;
  for (let i = 0; i < x.length; i++) {
    let v = x[i]!;
    if (v - v !== 0) { bad = i; break; } // NaN or ±Inf
    v = v > c ? c : v < -c ? -c : v;
    o[i] = Math.round(v * s) >>> 0;
  }
  if (bad >= 0) fail('CRYPTO_QUANT_INPUT', `update has a non-finite value at index ${bad}`);
  return o;
}

/** Decodes a modular sum of encoded updates to the weighted float sum. */
export function decodeSum(sum: Uint32Array, q: QuantParams, out?: Float32Array): Float32Array {
  checkQuantParams(q);
  const o = out ?? new Float32Array(sum.length);
  if (o.length !== sum.length) fail('CRYPTO_QUANT_INPUT', `output length ${o.length} ≠ sum length ${sum.length}`);
  const inv = 2 ** -q.fracBits;
  for (let i = 0; i < sum.length; i++) o[i] = (sum[i]! | 0) * inv;
  return o;
}

/** Modular vector addition (plain sums in tests and the insecure-aggregation path). */
export function addInto(acc: Uint32Array, v: Uint32Array): Uint32Array {
  if (acc.length !== v.length) fail('CRYPTO_QUANT_INPUT', `length ${v.length} ≠ accumulator length ${acc.length}`);
  for (let i = 0; i < acc.length; i++) acc[i] = (acc[i]! + v[i]!) >>> 0;
  return acc;
}
