/**
 * Noise samplers for distributed DP, fed by the operating system's CSPRNG.
 *
 * Uniforms: `CryptoUniform` draws node:crypto randomBytes in 64 KiB blocks and turns 7 bytes into
 * a double k·2^−53 with k uniform on 0..2^53−1, so every uniform is exactly one of the 2^53
 * equally likely doubles in [0, 1) (no modulo bias, no float rounding in the conversion).
 *
 * Poisson(λ): two exact algorithms, i.e. algorithms whose output distribution is exactly Poisson
 * when run on exact uniforms and exact real arithmetic:
 *  - λ < 10: multiplication of uniforms (Knuth, TAOCP vol. 2 §3.4.1): the number of uniforms whose
 *    running product stays above e^{−λ} is Poisson(λ), because −log U is Exp(1) and the count of
 *    arrivals of a unit-rate Poisson process in [0, λ] is Poisson(λ);
 *  - λ ≥ 10: Hörmann's transformed rejection with squeeze, PTRS (Hörmann 1993, "The transformed
 *    rejection method for generating Poisson random variables"): a rejection sampler, so an
 *    accepted k has exactly the Poisson pmf; the squeeze only accepts points inside the acceptance
 *    region.
 * The only departure from exactness is float64 arithmetic: the uniforms have 53 bits and PTRS
 * evaluates k·log λ − λ − log k! in double precision (absolute error ≈ 1e−16·λ·log λ in the log
 * acceptance ratio, about 1e−8 at λ = 1e7). λ is capped at 2^40 so that error stays below 1e−3.
 *
 * Skellam(μ): the difference of two independent Poisson(μ/2) draws: symmetric, variance μ, and
 * closed under summation (Σ Sk(μ_i) = Sk(Σ μ_i)), which is what makes distributed noise
 * accountable from the survivors' total μ.
 */
import { randomBytes } from 'node:crypto';
import { logFactorial } from './math.js';

export interface Uniform { next(): number }

const BLOCK = 1 << 16;

/** Uniform doubles in [0, 1) on the 2^−53 grid, from node:crypto randomBytes. */
export class CryptoUniform implements Uniform {
  #buf: Buffer = Buffer.alloc(0);
  #pos = 0;
  next(): number {
    if (this.#pos + 7 > this.#buf.length) { this.#buf = randomBytes(BLOCK); this.#pos = 0; }
    const b = this.#buf, p = this.#pos;
    this.#pos += 7;
    // 53 bits: 5 bits of the first byte, then 6 full bytes
    const hi = (b[p]! & 0x1f) * 2 ** 16 + b[p + 1]! * 2 ** 8 + b[p + 2]!;   // 21 bits
    const lo = ((b[p + 3]! << 24) >>> 0) + (b[p + 4]! << 16) + (b[p + 5]! << 8) + b[p + 6]!; // 32 bits
    return (hi * 2 ** 32 + lo) / 2 ** 53;
  }
}

export const MAX_POISSON_LAMBDA = 2 ** 40;

function poissonSmall(lambda: number, u: Uniform): number {
  const limit = Math.exp(-lambda);
  let k = 0, p = u.next();
  while (p > limit) { k++; p *= u.next(); }
  return k;
}

function poissonPtrs(lambda: number, u: Uniform): number {
  const slam = Math.sqrt(lambda), loglam = Math.log(lambda);
  const b = 0.931 + 2.53 * slam;
  const a = -0.059 + 0.02483 * b;
  const invAlpha = 1.1239 + 1.1328 / (b - 3.4);
  const vr = 0.9277 - 3.6224 / (b - 2);
  for (;;) {
    const U = u.next() - 0.5;
    const V = u.next();
    const us = 0.5 - Math.abs(U);
    const k = Math.floor((2 * a / us + b) * U + lambda + 0.43);
    if (us >= 0.07 && V <= vr) return k; // squeeze: inside the acceptance region
    if (k < 0 || (us < 0.013 && V > us)) continue;
    if (Math.log(V) + Math.log(invAlpha) - Math.log(a / (us * us) + b) <= -lambda + k * loglam - logFactorial(k)) return k;
  }
}

/** One Poisson(λ) draw. */
export function samplePoisson(lambda: number, u: Uniform): number {
  if (!(lambda >= 0) || lambda > MAX_POISSON_LAMBDA) throw new RangeError(`Poisson λ must be in [0, 2^40], got ${lambda}`);
  if (lambda === 0) return 0;
  return lambda < 10 ? poissonSmall(lambda, u) : poissonPtrs(lambda, u);
}

/** One Skellam draw of variance μ: Poisson(μ/2) − Poisson(μ/2). */
export function sampleSkellam(mu: number, u: Uniform): number {
  return samplePoisson(mu / 2, u) - samplePoisson(mu / 2, u);
}

/** Poisson pmf at k (for goodness-of-fit tests and tail bounds). */
export function poissonPmf(lambda: number, k: number): number {
  if (k < 0 || !Number.isInteger(k)) return 0;
  return Math.exp(-lambda + k * Math.log(lambda) - logFactorial(k));
}

/** Skellam pmf of variance μ at k: Σ_j Pois(μ/2; j+|k|)·Pois(μ/2; j). Intended for moderate μ (tests). */
export function skellamPmf(mu: number, k: number): number {
  const l = mu / 2, a = Math.abs(k);
  let s = 0;
  const top = Math.ceil(l + 40 * Math.sqrt(l) + 40);
  for (let j = 0; j <= top; j++) s += Math.exp(-2 * l + (2 * j + a) * Math.log(l) - logFactorial(j) - logFactorial(j + a));
  return s;
}

/**
 * t such that P(|Sk(V)| ≥ t) ≤ p, from the Chernoff bound P(Sk(V) ≥ t) ≤ exp(V(cosh s − 1) − s·t)
 * minimised over s > 0 (the Skellam moment generating function is exp(V(cosh s − 1))).
 */
export function skellamTailBound(variance: number, p: number): number {
  if (variance === 0) return 0;
  const logP = Math.log(p / 2);
  const logTail = (t: number): number => {
    // the optimal s solves V sinh s = t
    const s = Math.asinh(t / variance);
    const sh = Math.sinh(s / 2);
    return variance * 2 * sh * sh - s * t; // cosh s − 1 = 2 sinh²(s/2), without cancellation
  };
  let lo = 0, hi = Math.sqrt(variance) + 1;
  while (logTail(hi) > logP) hi *= 2;
  for (let i = 0; i < 200; i++) { const m = (lo + hi) / 2; if (logTail(m) > logP) lo = m; else hi = m; }
  return Math.ceil(hi);
}

/** One N(0, 1) draw (Box–Muller on two CSPRNG uniforms; float64, not an exact sampler). */
export function sampleGaussian(u: Uniform): number {
  let a = u.next();
  while (a === 0) a = u.next();
  return Math.sqrt(-2 * Math.log(a)) * Math.cos(2 * Math.PI * u.next());
}
