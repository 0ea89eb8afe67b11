/**
 * LoRA-XS (Bałazy et al. 2024): per target module, frozen factors from the truncated SVD of the
 * pretrained weight W [out, in] = U Σ Vᵀ, and one small trained matrix R [r, r] in between:
 *
 *     ΔW = s · (U_r Σ_r) · R · V_rᵀ,   s = lora_alpha / r (as for LoRA; alpha/√r under rsLoRA)
 *
 * Inside fedlora a LoRA-XS adapter is an ordinary LoRA adapter whose lora_B = U_r Σ_r and lora_A =
 * V_rᵀ are frozen, plus `base_model.model.<module>.lora_R.weight` [r, r] per module. The forward pass
 * runs the plain LoRA path with A_eff = R · A (see LoraTrainer), so gradients reach R by autograd;
 * `xsToLora` folds R into B for export (B' = U_r Σ_r R, A = V_rᵀ: an adapter any PEFT loader takes).
 *
 * Factors are a pure function of the checkpoint bytes: a truncated SVD in float64 JavaScript that
 * uses only +, −, ×, ÷ and √ (all correctly rounded under IEEE 754), so the same weights give the
 * same factors bit for bit on any machine and any tfjs backend. Sign rule: the largest-|entry|
 * (first on ties) of every left singular vector is positive. Factors are ordered by singular value,
 * so the first r' rows of A / columns of B are the rank-r' factors: heterogeneous ranks nest.
 * The coordinator computes them once and ships them inside the signed global adapter (see
 * docs/ARCHITECTURE.md, "LoRA-XS").
 */
import { createHash } from 'node:crypto';
import { ConfigError, ModelFormatError } from '../errors.js';
import { householderQR, jacobiSVD } from '../aggregation/linalg.js';
import { seededStream } from '../aggregation/init.js';
import { adapterModules, loraAName, loraBName, parseXsName, xsRName, type LoraAdapter, type LoraConfig } from './adapter.js';
import type { Tensor32, TensorMap } from '../tensor.js';

export { xsRName, parseXsName };

/** true when the adapter holds LoRA-XS cores (lora_R tensors). */
export function hasXs(adapter: { tensors: TensorMap }): boolean {
  for (const k of adapter.tensors.keys()) if (parseXsName(k)) return true;
  return false;
}

export interface TruncatedSvd {
  /** rows×k row-major: columns u_j·σ_j (U_k Σ_k). */
  us: Float64Array;
  /** k×cols row-major: rows v_jᵀ (V_kᵀ). */
  vt: Float64Array;
  sigma: Float64Array;
}

/** Which Gram matrix the eigenvectors come from; 'auto' takes the smaller one. */
export type SvdRoute = 'auto' | 'left' | 'right';

const FULL_JACOBI_MAX = 96;
const MAX_ITERATIONS = 400;
const RESIDUAL_TOL = 1e-11;

/**
 * Top-k SVD of a rows×cols matrix (row-major float64), deterministic. Eigenvectors of the smaller
 * Gram matrix (M Mᵀ: left vectors; Mᵀ M: right vectors), by full Jacobi when it is small and by
 * subspace iteration with Rayleigh–Ritz (seeded start block) otherwise; the other side follows by
 * one product with M. Sign rule and ordering as described in the module comment.
 */
export function truncatedSvd(m: Float64Array, rows: number, cols: number, k: number, route: SvdRoute = 'auto'): TruncatedSvd {
  if (m.length !== rows * cols) throw new RangeError(`truncatedSvd: expected ${rows * cols} values, got ${m.length}`);
  if (!Number.isInteger(k) || k < 1 || k > Math.min(rows, cols)) throw new ConfigError(`LoRA-XS rank ${k} must be in [1, min(out, in) = ${Math.min(rows, cols)}]`);
  const left = route === 'left' || (route === 'auto' && rows <= cols);
  const n = left ? rows : cols;
  // Gram matrix of the chosen side, symmetric n×n
  const g = new Float64Array(n * n);
  if (left) {
    for (let i = 0; i < rows; i++) {
      const ri = i * cols;
      for (let j = i; j < rows; j++) {
        const rj = j * cols;
        let s = 0;
        for (let c = 0; c < cols; c++) s += m[ri + c]! * m[rj + c]!;
        g[i * n + j] = s; g[j * n + i] = s;
      }
    }
  } else {
    for (let r = 0; r < rows; r++) {
      const ro = r * cols;
      for (let i = 0; i < cols; i++) {
        const x = m[ro + i]!;
        if (x === 0) continue;
        const gi = i * n;
        for (let j = i; j < cols; j++) g[gi + j] = g[gi + j]! + x * m[ro + j]!;
      }
    }
    for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) g[j * n + i] = g[i * n + j]!;
  }
  const y = topEigenvectors(g, n, k); // n×k, columns
  const us = new Float64Array(rows * k), vt = new Float64Array(k * cols), sigma = new Float64Array(k);
  for (let j = 0; j < k; j++) {
    if (left) {
      // v_j σ_j = Mᵀ u_j
      const w = new Float64Array(cols);
      for (let r = 0; r < rows; r++) {
        const u = y[r * k + j]!;
        if (u === 0) continue;
        for (let c = 0; c < cols; c++) w[c] = w[c]! + u * m[r * cols + c]!;
      }
      let s2 = 0;
      for (let c = 0; c < cols; c++) s2 += w[c]! * w[c]!;
      const s = Math.sqrt(s2);
      sigma[j] = s;
      for (let r = 0; r < rows; r++) us[r * k + j] = y[r * k + j]! * s;
      if (s > 0) for (let c = 0; c < cols; c++) vt[j * cols + c] = w[c]! / s;
    } else {
      // u_j σ_j = M v_j
      let s2 = 0;
      for (let r = 0; r < rows; r++) {
        let x = 0;
        for (let c = 0; c < cols; c++) x += m[r * cols + c]! * y[c * k + j]!;
        us[r * k + j] = x;
        s2 += x * x;
      }
      sigma[j] = Math.sqrt(s2);
      for (let c = 0; c < cols; c++) vt[j * cols + c] = y[c * k + j]!;
    }
  }
  // order by σ (stable on ties), then fix signs
  const order = [...Array(k).keys()].sort((a, b) => sigma[b]! - sigma[a]! || a - b);
  const out: TruncatedSvd = { us: new Float64Array(rows * k), vt: new Float64Array(k * cols), sigma: new Float64Array(k) };
  order.forEach((src, dst) => {
    out.sigma[dst] = sigma[src]!;
    let best = 0, at = -1;
    for (let r = 0; r < rows; r++) { const a = Math.abs(us[r * k + src]!); if (a > best) { best = a; at = r; } }
    const flip = at >= 0 && us[at * k + src]! < 0 ? -1 : 1;
    for (let r = 0; r < rows; r++) out.us[r * k + dst] = flip * us[r * k + src]!;
    for (let c = 0; c < cols; c++) out.vt[dst * cols + c] = flip * vt[src * cols + c]!;
  });
  return out;
}

/** n×k (row-major) orthonormal eigenvectors of the symmetric PSD n×n matrix g for its k largest eigenvalues. */
function topEigenvectors(g: Float64Array, n: number, k: number): Float64Array {
  const take = (src: (i: number, j: number) => number): Float64Array => {
    const out = new Float64Array(n * k);
    for (let i = 0; i < n; i++) for (let j = 0; j < k; j++) out[i * k + j] = src(i, j);
    return out;
  };
  if (n <= FULL_JACOBI_MAX) {
    // a symmetric PSD matrix's SVD is its eigendecomposition: right vectors = eigenvectors, descending
    const e = jacobiSVD(g, n);
    return take((i, j) => e.v[i * n + j]!);
  }
  const p = Math.min(n, k + 10);
  const next = seededStream(0, 'lora-xs:subspace');
  let q: Float64Array = new Float64Array(n * p);
  for (let i = 0; i < q.length; i++) q[i] = (next() + 0.5) / 2 ** 32 - 0.5;
  q = householderQR(q, n, p).q;
  const z = new Float64Array(n * p);
  let ritz: { w: Float64Array; theta: Float64Array } = { w: new Float64Array(p * p), theta: new Float64Array(p) };
  for (let it = 0; it < MAX_ITERATIONS; it++) {
    // z = g q
    z.fill(0);
    for (let i = 0; i < n; i++) {
      const gi = i * n, zi = i * p;
      for (let l = 0; l < n; l++) {
        const a = g[gi + l]!;
        if (a === 0) continue;
        const ql = l * p;
        for (let j = 0; j < p; j++) z[zi + j] = z[zi + j]! + a * q[ql + j]!;
      }
    }
    // Rayleigh–Ritz on span(q): t = qᵀ g q
    const t = new Float64Array(p * p);
    for (let a = 0; a < p; a++) for (let b = a; b < p; b++) {
      let s = 0;
      for (let i = 0; i < n; i++) s += q[i * p + a]! * z[i * p + b]!;
      t[a * p + b] = s; t[b * p + a] = s;
    }
    const e = jacobiSVD(t, p);
    ritz = { w: e.v, theta: e.sigma };
    // residual ‖g y − θ y‖ of the top-k Ritz pairs, y = q w, g y = z w
    let worst = 0;
    for (let j = 0; j < k; j++) {
      let r2 = 0;
      for (let i = 0; i < n; i++) {
        let gy = 0, yy = 0;
        for (let l = 0; l < p; l++) { const w = e.v[l * p + j]!; gy += z[i * p + l]! * w; yy += q[i * p + l]! * w; }
        const d = gy - e.sigma[j]! * yy;
        r2 += d * d;
      }
      worst = Math.max(worst, Math.sqrt(r2));
    }
    // converged, or out of iterations: the Ritz pairs above belong to the current basis q
    if (worst <= RESIDUAL_TOL * Math.max(e.sigma[0]!, Number.MIN_VALUE) || it === MAX_ITERATIONS - 1) break;
    q = householderQR(z, n, p).q;
  }
  // Ritz vectors of the last basis
  const w = ritz.w;
  return take((i, j) => { let s = 0; for (let l = 0; l < p; l++) s += q[i * p + l]! * w[l * p + j]!; return s; });
}

/**
 * LoRA-XS frozen factors of one linear module from its weight as stored in the checkpoint
 * ([in, out] under fan_in_fan_out, else [out, in]): lora_A = V_rᵀ [r, in], lora_B = U_r Σ_r [out, r].
 */
export function moduleFactors(weight: Tensor32, s: { in: number; out: number }, fanInFanOut: boolean, rank: number, route: SvdRoute = 'auto'): { A: Tensor32; B: Tensor32; sigma: Float64Array } {
  const want = fanInFanOut ? [s.in, s.out] : [s.out, s.in];
  if (weight.shape.length !== 2 || weight.shape[0] !== want[0] || weight.shape[1] !== want[1]) throw new ModelFormatError(`weight has shape [${weight.shape}], expected [${want}]`);
  const m = new Float64Array(s.out * s.in);
  if (fanInFanOut) for (let i = 0; i < s.in; i++) for (let o = 0; o < s.out; o++) m[o * s.in + i] = weight.data[i * s.out + o]!;
  else for (let i = 0; i < m.length; i++) m[i] = weight.data[i]!;
  const svd = truncatedSvd(m, s.out, s.in, rank, route);
  return { A: { shape: [rank, s.in], data: Float32Array.from(svd.vt) }, B: { shape: [s.out, rank], data: Float32Array.from(svd.us) }, sigma: svd.sigma };
}

/** sha256 over the factors' names, shapes and float32 bytes (sorted by name): equal hashes, equal factors. */
export function factorsHash(tensors: TensorMap): string {
  const h = createHash('sha256');
  for (const name of [...tensors.keys()].sort()) {
    const t = tensors.get(name)!;
    h.update(`${name}\t${t.shape.join(',')}\n`);
    h.update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  return h.digest('hex');
}

/** A fresh LoRA-XS global adapter at maxRank: the frozen factors and R = 0 (so ΔW = 0). */
export function xsAdapter(factors: TensorMap, maxRank: number, alpha: number, base: Omit<LoraConfig, 'r' | 'loraAlpha'>): LoraAdapter {
  if (!Number.isFinite(alpha) || alpha <= 0) throw new ConfigError(`lora alpha must be a positive number, got ${alpha}`);
  const tensors: TensorMap = new Map();
  const mods = adapterModules({ tensors: factors });
  if (!mods.length) throw new ConfigError('no LoRA-XS factors');
  for (const m of mods) {
    const A = factors.get(loraAName(m)), B = factors.get(loraBName(m));
    if (!A || !B || A.shape[0] !== maxRank || B.shape[1] !== maxRank) throw new ConfigError(`LoRA-XS factors of ${m} are not at rank ${maxRank}`);
    tensors.set(loraAName(m), { shape: [...A.shape], data: new Float32Array(A.data) });
    tensors.set(loraBName(m), { shape: [...B.shape], data: new Float32Array(B.data) });
    tensors.set(xsRName(m), { shape: [maxRank, maxRank], data: new Float32Array(maxRank * maxRank) });
  }
  return { config: { ...base, targetModules: [...base.targetModules], r: maxRank, loraAlpha: alpha }, tensors };
}

/** Checks that every lora_R is [r, r] with r the rank of its module's factors, and has factors. */
export function checkXsShapes(tensors: TensorMap, where = 'adapter'): void {
  for (const [name, t] of tensors) {
    const p = parseXsName(name);
    if (!p) continue;
    const A = tensors.get(loraAName(p.module)), B = tensors.get(loraBName(p.module));
    if (!A || !B) throw new ModelFormatError(`${name} has no lora_A/lora_B factors beside it`, where);
    const r = A.shape[0]!;
    if (t.shape.length !== 2 || t.shape[0] !== r || t.shape[1] !== r || t.data.length !== r * r) throw new ModelFormatError(`${name} has shape [${t.shape}], expected [${r}, ${r}]`, where);
  }
}

/**
 * The same adapter as plain LoRA: per module with a core R, B' = B·R (float64 accumulation) and A
 * unchanged; R dropped. Config (r, lora_alpha, …) unchanged, so the scale and the product match.
 */
export function xsToLora(adapter: LoraAdapter): LoraAdapter {
  checkXsShapes(adapter.tensors);
  const tensors: TensorMap = new Map();
  for (const [name, t] of adapter.tensors) {
    if (parseXsName(name)) continue;
    tensors.set(name, { shape: [...t.shape], data: new Float32Array(t.data) });
  }
  for (const [name, R] of adapter.tensors) {
    const p = parseXsName(name);
    if (!p) continue;
    const B = adapter.tensors.get(loraBName(p.module))!;
    const [out, r] = B.shape as [number, number];
    const data = new Float32Array(out * r);
    for (let i = 0; i < out; i++) {
      for (let j = 0; j < r; j++) {
        let s = 0;
        for (let l = 0; l < r; l++) s += B.data[i * r + l]! * R.data[l * r + j]!;
        data[i * r + j] = s;
      }
    }
    tensors.set(loraBName(p.module), { shape: [out, r], data });
  }
  return { config: { ...adapter.config, targetModules: [...adapter.config.targetModules] }, tensors };
}
