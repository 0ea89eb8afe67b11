/**
 * Low-rank refactor for redistribution. After averaging, B̄Ā is re-expressed as an SVD-ordered pair
 * without ever forming the out×in product:
 *   B = Q_B R_B,  Aᵀ = Q_A R_A  (thin Householder QR)      →  B A = Q_B (R_B R_Aᵀ) Q_Aᵀ
 *   M = R_B R_Aᵀ (r×r), one-sided Jacobi: M V = U Σ          →  B A = (Q_B U Σ)(Vᵀ Q_Aᵀ)
 * Slots come out sorted by singular value, so keeping the first r' slots is the best rank-r'
 * approximation of B A (Eckart–Young), which is what a client at rank r' receives.
 * Cost O((in + out)·r²) per module.
 *
 * Split of Σ between the factors: A' = c·Vᵀ Q_Aᵀ and B' = Q_B U Σ / c, with c the RMS row norm of
 * the incoming A. A' rows stay orthogonal and keep the magnitude A had, so training dynamics after
 * the refactor match those before it, and directions with σ = 0 keep a non-zero A row (B column 0)
 * instead of becoming dead slots with zero gradient in both factors.
 *
 * The refactor is a change of basis of the rank slots: B' = B·T_B and A' = T_A·A with the r×r
 * transforms T_B = R_Aᵀ V / c and T_A = c·Vᵀ R_Aᵀ⁻¹ (T_B·T_A = I, so B'A' = BA). They are returned
 * so that state kept per slot (server optimiser moments, server-opt.ts) can follow the adapter into
 * the new basis. T_A exists only when A has full row rank (R_A invertible); otherwise `tA` is null.
 */
import { ModelFormatError } from '../errors.js';
import { logger } from '../log.js';
import { adapterModules, loraAName, loraBName, truncateRank, type LoraAdapter } from '../lora/adapter.js';
import type { Tensor32, TensorMap } from '../tensor.js';
import { householderQR, jacobiSVD } from './linalg.js';

const log = logger('fedlora:aggregation:refactor');

export interface RefactoredModule {
  a: Tensor32;
  b: Tensor32;
  /** Singular values of B·A, descending (length r). */
  sigma: Float64Array;
  /** r×r row-major: B' = B·tB (up to float32 rounding of B'). */
  tB: Float64Array;
  /** r×r row-major: A' = tA·A, and tB·tA = I; null when A is rank-deficient (no such matrix exists). */
  tA: Float64Array | null;
}

/** Per refactored module (key: module path): the slot transforms of refactorModule. */
export type ModuleTransforms = ReadonlyMap<string, { r: number; tA: Float64Array | null; tB: Float64Array }>;

/** Relative size below which a diagonal entry of R_A counts as zero (A rank-deficient). */
const SINGULAR_RTOL = 1e-9;

/** tB = R_Aᵀ V / c and tA = c·Vᵀ (R_Aᵀ)⁻¹ (see the file comment); rA is upper triangular r×r. */
function slotTransforms(rA: Float64Array, v: Float64Array, c: number, r: number): { tA: Float64Array | null; tB: Float64Array } {
  const tB = new Float64Array(r * r);
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      let s = 0;
      for (let l = 0; l <= i; l++) s += rA[l * r + i]! * v[l * r + j]!; // (R_Aᵀ)[i, l] = R_A[l, i], zero for l > i
      tB[i * r + j] = s / c;
    }
  }
  let dmax = 0;
  for (let i = 0; i < r; i++) dmax = Math.max(dmax, Math.abs(rA[i * r + i]!));
  for (let i = 0; i < r; i++) if (!(Math.abs(rA[i * r + i]!) > SINGULAR_RTOL * dmax)) return { tA: null, tB };
  // row i of tA solves x·R_Aᵀ = c·(column i of V)ᵀ, i.e. R_A·xᵀ = c·V[:, i]: back substitution
  const tA = new Float64Array(r * r);
  const x = new Float64Array(r);
  for (let i = 0; i < r; i++) {
    for (let k = r - 1; k >= 0; k--) {
      let s = c * v[k * r + i]!;
      for (let l = k + 1; l < r; l++) s -= rA[k * r + l]! * x[l]!;
      x[k] = s / rA[k * r + k]!;
    }
    tA.set(x, i * r);
  }
  return { tA, tB };
}

/** Refactors one module's pair; `b` is [out, r], `a` is [r, in], with r ≤ min(in, out). */
export function refactorModule(b: Tensor32, a: Tensor32): RefactoredModule {
  const [out, r] = b.shape as [number, number];
  const [ra, inF] = a.shape as [number, number];
  if (b.shape.length !== 2 || a.shape.length !== 2 || ra !== r) throw new ModelFormatError(`refactor: B [${b.shape}] and A [${a.shape}] do not pair up`);
  if (r > out || r > inF) throw new RangeError(`refactor: rank ${r} exceeds min(in=${inF}, out=${out})`);

  const q1 = householderQR(Float64Array.from(b.data), out, r);
  const at = new Float64Array(inF * r);
  let aNorm2 = 0;
  for (let j = 0; j < r; j++) {
    const row = j * inF;
    for (let i = 0; i < inF; i++) { const x = a.data[row + i]!; at[i * r + j] = x; aNorm2 += x * x; }
  }
  const q2 = householderQR(at, inF, r);

  // core M = R_B R_Aᵀ
  const m = new Float64Array(r * r);
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      let s = 0;
      for (let k = 0; k < r; k++) s += q1.r[i * r + k]! * q2.r[j * r + k]!;
      m[i * r + j] = s;
    }
  }
  const { us, v, sigma } = jacobiSVD(m, r);
  const c = aNorm2 > 0 ? Math.sqrt(aNorm2 / r) : 1;

  const bOut = new Float32Array(out * r);
  const row = new Float64Array(r);
  for (let i = 0; i < out; i++) {
    row.fill(0);
    for (let k = 0; k < r; k++) {
      const qik = q1.q[i * r + k]!;
      if (qik === 0) continue;
      for (let j = 0; j < r; j++) row[j] = row[j]! + qik * us[k * r + j]!;
    }
    for (let j = 0; j < r; j++) bOut[i * r + j] = row[j]! / c;
  }
  // A'[j, i] = c · Σ_k V[k, j] Q_A[i, k]
  const aOut = new Float32Array(r * inF);
  for (let i = 0; i < inF; i++) {
    for (let j = 0; j < r; j++) {
      let s = 0;
      for (let k = 0; k < r; k++) s += v[k * r + j]! * q2.q[i * r + k]!;
      aOut[j * inF + i] = c * s;
    }
  }
  return { a: { shape: [r, inF], data: aOut }, b: { shape: [out, r], data: bOut }, sigma, ...slotTransforms(q2.r, v, c, r) };
}

/**
 * Refactors every module of an adapter into SVD order (product B·A preserved up to float32
 * rounding). Modules whose rank exceeds min(in, out) cannot be ordered that way and are copied as is.
 */
export function refactorAdapter(adapter: LoraAdapter): LoraAdapter {
  return refactorAdapterWithTransforms(adapter).adapter;
}

/**
 * refactorAdapter restricted to the modules `include` accepts (the others are copied as they are),
 * also returning each refactored module's slot transforms.
 */
export function refactorAdapterWithTransforms(adapter: LoraAdapter, include: (module: string) => boolean = () => true): { adapter: LoraAdapter; transforms: ModuleTransforms } {
  const transforms = new Map<string, { r: number; tA: Float64Array | null; tB: Float64Array }>();
  const tensors: TensorMap = new Map();
  for (const [name, t] of adapter.tensors) tensors.set(name, { shape: [...t.shape], data: new Float32Array(t.data) });
  for (const module of adapterModules(adapter)) {
    const a = adapter.tensors.get(loraAName(module));
    const b = adapter.tensors.get(loraBName(module));
    if (!a || !b) throw new ModelFormatError(`refactor: module ${module} lacks lora_A or lora_B`);
    if (a.shape.length !== 2 || b.shape.length !== 2 || a.shape[0] !== b.shape[1]) throw new ModelFormatError(`refactor: ${module}: B [${b.shape}] and A [${a.shape}] do not pair up`);
    const [r, inF] = a.shape as [number, number];
    const out = b.shape[0]!;
    if (r > inF || r > out) { log.debug(`${module}: rank ${r} > min(in=${inF}, out=${out}), left unrefactored`); continue; }
    if (!include(module)) continue;
    const res = refactorModule(b, a);
    tensors.set(loraAName(module), res.a);
    tensors.set(loraBName(module), res.b);
    transforms.set(module, { r, tA: res.tA, tB: res.tB });
  }
  return { adapter: { config: { ...adapter.config, targetModules: [...adapter.config.targetModules] }, tensors }, transforms };
}

/** The global adapter as sent to a client at `rank`: first `rank` slots, lora_alpha scaled so alpha/r is unchanged. */
export function adapterForRank(global: LoraAdapter, rank: number): LoraAdapter {
  if (!Number.isInteger(rank) || rank < 1 || rank > global.config.r) throw new RangeError(`client rank must be an integer in [1, ${global.config.r}], got ${rank}`);
  return truncateRank(global, rank);
}
