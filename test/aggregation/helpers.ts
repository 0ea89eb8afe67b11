/** Test helpers for aggregation: an independent PRNG and small dense matrix utilities (float64). */
import type { Tensor32, TensorMap } from '../../shared/tensor.js';
import { mulberry32FromState } from '../../shared/data/random.js';

/** mulberry32 from the raw seed (shared/data/random.ts), deliberately unrelated to the xoshiro128** generator under test in shared/aggregation/init.ts. */
export function rng(seed: number): () => number {
  return mulberry32FromState(seed >>> 0);
}

export function randTensor(shape: [number, number], next: () => number, scale = 1): Tensor32 {
  const data = new Float32Array(shape[0] * shape[1]);
  for (let i = 0; i < data.length; i++) data[i] = (next() * 2 - 1) * scale;
  return { shape: [...shape], data };
}

/** Row-major float64 product of [m, k] × [k, n]. */
export function matmul(a: ArrayLike<number>, b: ArrayLike<number>, m: number, k: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let l = 0; l < k; l++) {
      const x = a[i * k + l]!;
      if (x === 0) continue;
      for (let j = 0; j < n; j++) out[i * n + j] = out[i * n + j]! + x * b[l * n + j]!;
    }
  }
  return out;
}

/** B·A for PEFT-shaped B [out, r] and A [r, in]. */
export function product(b: Tensor32, a: Tensor32): Float64Array {
  return matmul(b.data, a.data, b.shape[0]!, b.shape[1]!, a.shape[1]!);
}

export function frob(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i]! * x[i]!;
  return Math.sqrt(s);
}

export function diffFrob(x: ArrayLike<number>, y: ArrayLike<number>): number {
  if (x.length !== y.length) throw new Error(`length ${x.length} vs ${y.length}`);
  let s = 0;
  for (let i = 0; i < x.length; i++) { const d = x[i]! - y[i]!; s += d * d; }
  return Math.sqrt(s);
}

export function maxAbsDiff(x: ArrayLike<number>, y: ArrayLike<number>): number {
  if (x.length !== y.length) throw new Error(`length ${x.length} vs ${y.length}`);
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]! - y[i]!));
  return m;
}

/**
 * Eigen-decomposition of a symmetric n×n matrix by the classical two-sided cyclic Jacobi method.
 * Returns eigenvalues descending and the matching eigenvectors as columns of a row-major n×n matrix.
 */
export function symmetricEigen(sym: Float64Array, n: number): { values: Float64Array; vectors: Float64Array } {
  const a = new Float64Array(sym);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p * n + q]! ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q]!;
        if (Math.abs(apq) < 1e-300) continue;
        const theta = (a[q * n + q]! - a[p * n + p]!) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) { // A ← A J (columns p, q)
          const akp = a[k * n + p]!, akq = a[k * n + q]!;
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) { // A ← Jᵀ A (rows p, q)
          const apk = a[p * n + k]!, aqk = a[q * n + k]!;
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = v[k * n + p]!, vkq = v[k * n + q]!;
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const order = [...Array(n).keys()].sort((i, j) => a[j * n + j]! - a[i * n + i]!);
  const values = Float64Array.from(order, (i) => a[i * n + i]!);
  const vectors = new Float64Array(n * n);
  order.forEach((src, dst) => { for (let k = 0; k < n; k++) vectors[k * n + dst] = v[k * n + src]!; });
  return { values, vectors };
}

export function mapClone(m: TensorMap): TensorMap {
  return new Map([...m].map(([k, t]) => [k, { shape: [...t.shape], data: new Float32Array(t.data) }]));
}
