/**
 * Small dense linear algebra in float64 for the low-rank refactor: thin Householder QR of tall
 * matrices and a one-sided (Hestenes) Jacobi SVD of the tiny r×r core. Matrices are row-major
 * Float64Arrays with explicit dimensions; nothing here allocates tfjs tensors.
 */

export interface ThinQR {
  /** m×n, orthonormal columns (always, even when the input is rank-deficient). */
  q: Float64Array;
  /** n×n upper triangular. */
  r: Float64Array;
}

/**
 * Thin QR of an m×n matrix (m ≥ n) by Householder reflections. Householder (not Gram–Schmidt)
 * because Q must stay orthonormal when columns are zero or nearly dependent, e.g. B = 0 at start.
 */
export function householderQR(a: Float64Array, m: number, n: number): ThinQR {
  if (m < n) throw new RangeError(`householderQR needs m ≥ n, got ${m}×${n}`);
  if (a.length !== m * n) throw new RangeError(`householderQR: expected ${m * n} values, got ${a.length}`);
  const w = new Float64Array(a);
  // Householder vectors, column k stored in vs[k*m + k .. k*m + m-1], unit length (or all zero = identity)
  const vs = new Float64Array(n * m);
  for (let k = 0; k < n; k++) {
    let norm2 = 0;
    for (let i = k; i < m; i++) { const x = w[i * n + k]!; norm2 += x * x; }
    const norm = Math.sqrt(norm2);
    if (norm === 0) continue; // column already zero below the diagonal: H_k = I
    const x0 = w[k * n + k]!;
    const alpha = x0 >= 0 ? -norm : norm;
    const vo = k * m;
    vs[vo + k] = x0 - alpha;
    for (let i = k + 1; i < m; i++) vs[vo + i] = w[i * n + k]!;
    let vn2 = 0;
    for (let i = k; i < m; i++) { const v = vs[vo + i]!; vn2 += v * v; }
    if (vn2 === 0) continue;
    const inv = 1 / Math.sqrt(vn2);
    for (let i = k; i < m; i++) vs[vo + i] = vs[vo + i]! * inv;
    applyReflector(w, vs, vo, m, n, k, k);
  }
  const r = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = i; j < n; j++) r[i * n + j] = w[i * n + j]!;
  // Q = H_0 H_1 … H_{n-1} [I_n; 0]; H_k touches rows ≥ k only, so columns < k are still e_j there.
  const q = new Float64Array(m * n);
  for (let j = 0; j < n; j++) q[j * n + j] = 1;
  for (let k = n - 1; k >= 0; k--) applyReflector(q, vs, k * m, m, n, k, k);
  return { q, r };
}

/** x ← (I − 2vvᵀ) x for columns c0..n-1 of the rows k..m-1 of a row-major m×n matrix. */
function applyReflector(x: Float64Array, vs: Float64Array, vo: number, m: number, n: number, k: number, c0: number): void {
  const dots = new Float64Array(n);
  for (let i = k; i < m; i++) {
    const v = vs[vo + i]!;
    if (v === 0) continue;
    const row = i * n;
    for (let j = c0; j < n; j++) dots[j] = dots[j]! + v * x[row + j]!;
  }
  for (let i = k; i < m; i++) {
    const v2 = 2 * vs[vo + i]!;
    if (v2 === 0) continue;
    const row = i * n;
    for (let j = c0; j < n; j++) x[row + j] = x[row + j]! - v2 * dots[j]!;
  }
}

export interface JacobiSVD {
  /** n×n, columns = U·Σ (orthogonal columns, norms = singular values), sorted by descending norm. */
  us: Float64Array;
  /** n×n orthogonal, columns = right singular vectors in the same order. */
  v: Float64Array;
  /** Singular values, descending. */
  sigma: Float64Array;
}

/**
 * One-sided Jacobi SVD of a square n×n matrix: rotates column pairs of M (and of V = I) until all
 * columns are mutually orthogonal, so M·V = U·Σ. Returning U·Σ rather than U avoids dividing by
 * zero singular values; V is always a full orthogonal basis. High relative accuracy, fine for n ≤ ~128.
 */
export function jacobiSVD(mat: Float64Array, n: number, maxSweeps = 60): JacobiSVD {
  if (mat.length !== n * n) throw new RangeError(`jacobiSVD: expected ${n * n} values, got ${mat.length}`);
  const w = new Float64Array(mat);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  const eps = 1e-15;
  for (let sweep = 0; sweep < maxSweeps; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        let alpha = 0, beta = 0, gamma = 0;
        for (let i = 0; i < n; i++) {
          const wp = w[i * n + p]!, wq = w[i * n + q]!;
          alpha += wp * wp; beta += wq * wq; gamma += wp * wq;
        }
        if (gamma === 0 || Math.abs(gamma) <= eps * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        rotateCols(w, n, p, q, c, s);
        rotateCols(v, n, p, q, c, s);
      }
    }
    if (!rotated) break;
  }
  const norms = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    let s = 0;
    for (let i = 0; i < n; i++) { const x = w[i * n + j]!; s += x * x; }
    norms[j] = Math.sqrt(s);
  }
  const order = [...Array(n).keys()].sort((a, b) => norms[b]! - norms[a]! || a - b);
  const us = new Float64Array(n * n);
  const vOut = new Float64Array(n * n);
  const sigma = new Float64Array(n);
  order.forEach((src, dst) => {
    sigma[dst] = norms[src]!;
    for (let i = 0; i < n; i++) {
      us[i * n + dst] = w[i * n + src]!;
      vOut[i * n + dst] = v[i * n + src]!;
    }
  });
  return { us, v: vOut, sigma };
}

function rotateCols(x: Float64Array, n: number, p: number, q: number, c: number, s: number): void {
  for (let i = 0; i < n; i++) {
    const xp = x[i * n + p]!, xq = x[i * n + q]!;
    x[i * n + p] = c * xp - s * xq;
    x[i * n + q] = s * xp + c * xq;
  }
}
