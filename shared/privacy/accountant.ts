/**
 * Privacy accounting for client-level DP-FedAvg: two independent methods.
 *
 * 1. Rényi DP (RDP) of the Poisson-sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019,
 *    "Rényi Differential Privacy of the Sampled Gaussian Mechanism"): for sampling rate q and noise
 *    multiplier z (noise std / L2 sensitivity) one step has RDP log(A_α)/(α − 1) where
 *      A_α = E_{x∼N(0,z²)}[((1−q) + q·e^{(2x−1)/(2z²)})^α],
 *    computed exactly for integer α by the binomial expansion and for fractional α by the
 *    convergent two-sided series of their §3.3, all in log space. RDP composes by addition over
 *    rounds; (ε, δ) follows from the classic conversion ε = min_α RDP(α) + log(1/δ)/(α − 1)
 *    (Mironov 2017, Prop. 3) or the tighter one of Balle et al. 2020 / Canonne, Kamath, Steinke
 *    2020: ε = RDP(α) + log((α−1)/α) − (log δ + log α)/(α − 1).
 *    The Skellam mechanism (distributed noise, ./skellam.ts) has the RDP bound of Agarwal,
 *    Kairouz, Liu 2021 (Thm. 3.5), amplified by Poisson sampling with the general upper bound of
 *    Zhu & Wang 2019 (Thm. 6) at integer orders.
 *
 * 2. A numerical privacy-loss-distribution (PLD) accountant for the same sampled Gaussian: the
 *    privacy loss of each neighbouring direction (remove: P = (1−q)N(0,z²)+qN(1,z²) against
 *    Q = N(0,z²); add: the reverse) is discretised on a grid of spacing h with every loss rounded
 *    up (a pessimistic estimate: the discrete PLD dominates the true one), composed over rounds
 *    by FFT convolution with repeated squaring, and δ(ε) = Σ_{l>ε} p(l)(1 − e^{ε−l}) + p(∞) is
 *    inverted by bisection. At q = 1 the PLD of the Gaussian mechanism is itself Gaussian and
 *    composes in closed form (Dong, Roth, Su: μ-GDP with μ = √T / z). The two methods share
 *    nothing but the definition of the mechanism, so the tests cross-check one with the other.
 */
import { convolve, logAdd, logComb, logErfc, logNormCdf, logSub, normCdf } from './math.js';

/** TensorFlow Privacy's classic order grid: 1.1, 1.2, …, 10.9, 12, 13, …, 63. */
export const TF_ORDERS: readonly number[] = [...Array.from({ length: 99 }, (_, x) => 1 + (x + 1) / 10), ...Array.from({ length: 52 }, (_, i) => 12 + i)];
/** The grid fedlora accounts on: TF Privacy's plus a few high orders (more orders can only lower ε). */
export const DEFAULT_ORDERS: readonly number[] = [...TF_ORDERS, 80, 96, 128, 192, 256];

function checkQ(q: number): void { if (!(q >= 0 && q <= 1)) throw new RangeError(`sampling rate q must be in [0, 1], got ${q}`); }
function checkZ(z: number): void { if (!(z > 0) || !Number.isFinite(z)) throw new RangeError(`noise multiplier must be positive and finite, got ${z}`); }

/** log A_α for integer α ≥ 2 (binomial expansion). */
function logAInt(q: number, z: number, alpha: number): number {
  let acc = -Infinity;
  const lq = Math.log(q), l1q = Math.log1p(-q);
  for (let i = 0; i <= alpha; i++) {
    const t = logComb(alpha, i) + i * lq + (alpha - i) * l1q + (i * i - i) / (2 * z * z);
    acc = logAdd(acc, t);
  }
  return acc;
}

/** log A_α for fractional α > 1 (Mironov et al. 2019, §3.3: two series over i ≥ 0 split at z0). */
function logAFrac(q: number, z: number, alpha: number): number {
  let a0 = -Infinity, a1 = -Infinity;
  const z0 = z * z * Math.log(1 / q - 1) + 0.5;
  const lq = Math.log(q), l1q = Math.log1p(-q);
  // C(α, i) updated term by term: C(α, i+1) = C(α, i)·(α − i)/(i + 1)
  const c = { sign: 1, log: 0 };
  // for i > α + 1 the coefficients alternate in sign and shrink like i^{−α−1}, so stopping at
  // 20,000 terms leaves an error below the first omitted term (< 1e-9 relative at α = 1.1)
  for (let i = 0; i < 20_000; i++) {
    if (i > 0) {
      const f = (alpha - (i - 1)) / i;
      if (f === 0) break;
      if (f < 0) c.sign = -c.sign;
      c.log += Math.log(Math.abs(f));
    }
    const j = alpha - i;
    const t0 = c.log + i * lq + j * l1q;
    const t1 = c.log + j * lq + i * l1q;
    const e0 = Math.log(0.5) + logErfc((i - z0) / (Math.SQRT2 * z));
    const e1 = Math.log(0.5) + logErfc((z0 - j) / (Math.SQRT2 * z));
    const s0 = t0 + (i * i - i) / (2 * z * z) + e0;
    const s1 = t1 + (j * j - j) / (2 * z * z) + e1;
    if (c.sign > 0) { a0 = logAdd(a0, s0); a1 = logAdd(a1, s1); } else if (c.sign < 0) {
      // the alternating tail never exceeds the running sum (the series converges from above)
      a0 = s0 > a0 ? a0 : logSub(a0, s0);
      a1 = s1 > a1 ? a1 : logSub(a1, s1);
    }
    if (Math.max(s0, s1) < -30) break;
  }
  return logAdd(a0, a1);
}

/** RDP at order α of one step of the Poisson-sampled Gaussian mechanism (sensitivity 1, noise z). */
export function rdpSampledGaussian(q: number, z: number, alpha: number): number {
  checkQ(q); checkZ(z);
  if (!(alpha > 1)) throw new RangeError(`RDP order must exceed 1, got ${alpha}`);
  if (q === 0) return 0;
  if (q === 1) return alpha / (2 * z * z);
  if (!Number.isFinite(alpha)) return Infinity;
  const la = Number.isInteger(alpha) ? logAInt(q, z, alpha) : logAFrac(q, z, alpha);
  return Math.max(0, la / (alpha - 1));
}

/** RDP of `steps` compositions over `orders`. */
export function rdpSampledGaussianSteps(q: number, z: number, steps: number, orders: readonly number[] = DEFAULT_ORDERS): number[] {
  return orders.map((a) => steps * rdpSampledGaussian(q, z, a));
}

export type Conversion = 'classic' | 'improved';

/** (ε, δ) from an RDP curve: the best order and its ε. */
export function epsilonFromRdp(orders: readonly number[], rdp: readonly number[], delta: number, conversion: Conversion = 'classic'): { epsilon: number; order: number } {
  if (!(delta > 0 && delta < 1)) throw new RangeError(`delta must be in (0, 1), got ${delta}`);
  if (orders.length !== rdp.length) throw new RangeError('orders and rdp differ in length');
  let best = Infinity, order = NaN;
  const ld = Math.log(delta);
  for (let i = 0; i < orders.length; i++) {
    const a = orders[i]!, r = rdp[i]!;
    if (!(a > 1) || Number.isNaN(r)) continue;
    const e = conversion === 'classic'
      ? r - ld / (a - 1)
      : r + Math.log1p(-1 / a) - (ld + Math.log(a)) / (a - 1);
    if (e < best) { best = e; order = a; }
  }
  return { epsilon: Math.max(0, best), order };
}

/** ε of the sampled Gaussian after `steps` rounds via RDP. */
export function rdpEpsilon(o: { q: number; z: number; steps: number; delta: number; orders?: readonly number[]; conversion?: Conversion }): number {
  const orders = o.orders ?? DEFAULT_ORDERS;
  return epsilonFromRdp(orders, rdpSampledGaussianSteps(o.q, o.z, o.steps, orders), o.delta, o.conversion).epsilon;
}

// ---------------------------------------------------------------------------------------------
// Skellam mechanism and generic amplification by Poisson sampling

export interface SkellamRound {
  /** Total variance of the Skellam noise in the (integer, fixed-point) sum. */
  variance: number;
  /** L2 and L1 sensitivity of one client's integer contribution. */
  l2: number;
  l1: number;
}

/** RDP at integer order α of the d-dimensional Skellam mechanism (Agarwal, Kairouz, Liu 2021, Thm. 3.5; variance V = 2μ). */
export function rdpSkellam(alpha: number, s: SkellamRound): number {
  if (!(s.variance > 0) || !(s.l2 > 0) || !(s.l1 > 0)) throw new RangeError('Skellam variance and sensitivities must be positive');
  const V = s.variance;
  const base = alpha * s.l2 * s.l2 / (2 * V);
  const extra = Math.min(((2 * alpha - 1) * s.l2 * s.l2 + 6 * s.l1) / (4 * V * V), 3 * s.l1 / (2 * V));
  return base + extra;
}

/**
 * RDP at integer order α ≥ 2 of a mechanism with RDP curve `eps` run on a Poisson sample of rate q
 * (Zhu & Wang 2019, Thm. 6, general upper bound), never above the unsampled curve.
 */
export function rdpPoissonSampled(q: number, alpha: number, eps: (alpha: number) => number): number {
  checkQ(q);
  if (!Number.isInteger(alpha) || alpha < 2) throw new RangeError(`integer order ≥ 2 expected, got ${alpha}`);
  if (q === 0) return 0;
  const full = eps(alpha);
  if (q === 1) return full;
  const lq = Math.log(q), l1q = Math.log1p(-q);
  let acc = (alpha - 1) * l1q + Math.log1p((alpha - 1) * q);
  acc = logAdd(acc, logComb(alpha, 2) + 2 * lq + (alpha - 2) * l1q + eps(2));
  for (let l = 3; l <= alpha; l++) acc = logAdd(acc, Math.log(3) + logComb(alpha, l) + l * lq + (alpha - l) * l1q + (l - 1) * eps(l));
  return Math.min(full, Math.max(0, acc / (alpha - 1)));
}

/** Sampled-Skellam RDP at any order > 1 (fractional orders take the next integer's value: RDP is non-decreasing in α). */
export function rdpSampledSkellam(q: number, alpha: number, s: SkellamRound): number {
  const a = Math.max(2, Math.ceil(alpha));
  return rdpPoissonSampled(q, a, (j) => rdpSkellam(j, s));
}

// ---------------------------------------------------------------------------------------------
// Accountant state (what the coordinator keeps and checkpoints)

export type DpMechanism = 'gaussian' | 'skellam';

export interface AccountantState {
  orders: number[];
  /** Σ of the per-round RDP at each order. */
  rdp: number[];
  rounds: number;
}

/** Composes rounds by adding RDP curves; ε(δ) on demand. */
export class PrivacyAccountant {
  readonly orders: readonly number[];
  #rdp: number[];
  #rounds: number;

  constructor(state?: AccountantState) {
    this.orders = state?.orders ?? [...DEFAULT_ORDERS];
    this.#rdp = state?.rdp.slice() ?? this.orders.map(() => 0);
    this.#rounds = state?.rounds ?? 0;
    if (this.#rdp.length !== this.orders.length || this.#rdp.some((r) => !(r >= 0))) throw new RangeError('accountant state: rdp must be one non-negative value per order');
  }

  get rounds(): number { return this.#rounds; }

  /** The RDP one round adds: the sampled Gaussian (central noise) or the sampled Skellam (distributed). */
  static roundRdp(orders: readonly number[], q: number, m: { mechanism: 'gaussian'; z: number } | { mechanism: 'skellam'; skellam: SkellamRound }): number[] {
    return m.mechanism === 'gaussian' ? orders.map((a) => rdpSampledGaussian(q, m.z, a)) : orders.map((a) => rdpSampledSkellam(q, a, m.skellam));
  }

  add(roundRdp: readonly number[]): void {
    if (roundRdp.length !== this.orders.length) throw new RangeError('round RDP has the wrong number of orders');
    this.#rdp = this.#rdp.map((r, i) => r + roundRdp[i]!);
    this.#rounds++;
  }

  /** ε after the rounds so far plus `extra` (a round not yet run). */
  epsilon(delta: number, extra?: readonly number[], conversion: Conversion = 'classic'): number {
    if (this.#rounds === 0 && !extra) return 0;
    const rdp = extra ? this.#rdp.map((r, i) => r + extra[i]!) : this.#rdp;
    return epsilonFromRdp(this.orders, rdp, delta, conversion).epsilon;
  }

  serialize(): AccountantState { return { orders: [...this.orders], rdp: [...this.#rdp], rounds: this.#rounds }; }
}

// ---------------------------------------------------------------------------------------------
// Privacy-loss-distribution accountant (independent of the RDP one)

/** A discrete loss distribution: mass[i] at loss (offset + i)·h, plus mass at +∞. */
interface Pld { h: number; offset: number; mass: Float64Array; inf: number }

const TAIL = 1e-16;
/** Longest composed distribution kept; longer ones are coarsened (spacing doubled, losses rounded up). */
const MAX_POINTS = 1 << 17;

/** Drops the tails: the upper one to +∞, the lower one onto the first kept point (both pessimistic). */
function truncate(p: Pld): Pld {
  const m = p.mass;
  let lo = 0, hi = m.length - 1, below = 0, above = 0;
  while (lo < hi && below + m[lo]! < TAIL) below += m[lo++]!;
  while (hi > lo && above + m[hi]! < TAIL) above += m[hi--]!;
  const mass = m.slice(lo, hi + 1);
  mass[0] = mass[0]! + below;
  return { h: p.h, offset: p.offset + lo, mass, inf: p.inf + above };
}

/** Doubles the spacing: loss k·h goes to ⌈k/2⌉·2h (never down, so still pessimistic). */
function coarsen(p: Pld): Pld {
  const off = Math.ceil(p.offset / 2);
  const last = Math.ceil((p.offset + p.mass.length - 1) / 2);
  const mass = new Float64Array(last - off + 1);
  for (let i = 0; i < p.mass.length; i++) { const j = Math.ceil((p.offset + i) / 2) - off; mass[j] = mass[j]! + p.mass[i]!; }
  return { h: p.h * 2, offset: off, mass, inf: p.inf };
}

function compose(a: Pld, b: Pld): Pld {
  while (a.h < b.h) a = coarsen(a);
  while (b.h < a.h) b = coarsen(b);
  let p = truncate({ h: a.h, offset: a.offset + b.offset, mass: convolve(a.mass, b.mass), inf: 1 - (1 - a.inf) * (1 - b.inf) });
  while (p.mass.length > MAX_POINTS) p = coarsen(p);
  return p;
}

function composeTimes(p: Pld, n: number): Pld {
  let result: Pld | null = null, base = p, k = n;
  while (k > 0) {
    if (k & 1) result = result ? compose(result, base) : base;
    k >>= 1;
    if (k > 0) base = compose(base, base);
  }
  return result!;
}

function pldDelta(p: Pld, eps: number): number {
  let d = p.inf;
  for (let i = p.mass.length - 1; i >= 0; i--) {
    const l = (p.offset + i) * p.h;
    if (l <= eps) break;
    d += p.mass[i]! * -Math.expm1(eps - l);
  }
  return d;
}

/** Smallest ε ≥ 0 with δ(ε) ≤ delta, by bisection on a decreasing δ(ε). */
function invertDelta(deltaOf: (eps: number) => number, delta: number, hi: number): number {
  if (deltaOf(0) <= delta) return 0;
  let lo = 0;
  while (deltaOf(hi) > delta) { lo = hi; hi *= 2; if (hi > 1e7) return Infinity; }
  for (let i = 0; i < 100 && hi - lo > 1e-9 * Math.max(1, hi); i++) {
    const mid = (lo + hi) / 2;
    if (deltaOf(mid) > delta) lo = mid; else hi = mid;
  }
  return hi;
}

/** Gaussian mechanism composed T times: μ-GDP with μ = √T/z; δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2). */
function gaussianPldEpsilon(z: number, steps: number, delta: number): number {
  const mu = Math.sqrt(steps) / z;
  const deltaOf = (e: number) => normCdf(-e / mu + mu / 2) - Math.exp(e + logNormCdf(-e / mu - mu / 2));
  return invertDelta(deltaOf, delta, Math.max(1, mu * mu));
}

/**
 * One step's loss CDF for a direction: `cdf(l)` = P(L ≤ l) and the loss range outside which the
 * mass is below ~1e-19.
 */
function stepLoss(q: number, z: number, dir: 'remove' | 'add'): { cdf: (l: number) => number; lo: number; hi: number } {
  const s2 = z * z, l1q = Math.log1p(-q);
  // L(x) = log(1 − q + q e^{(2x−1)/(2z²)}) is increasing in x; g is its inverse on (log(1−q), ∞)
  const L = (x: number) => logAdd(l1q, Math.log(q) + (2 * x - 1) / (2 * s2));
  const g = (l: number) => s2 * (logSub(l, l1q) - Math.log(q)) + 0.5;
  const k = 9.5;
  if (dir === 'remove') {
    // x ∼ (1−q)N(0,z²) + qN(1,z²), loss L(x)
    return {
      cdf: (l) => { if (l <= l1q) return 0; const x = g(l); return (1 - q) * normCdf(x / z) + q * normCdf((x - 1) / z); },
      lo: L(-k * z), hi: L(1 + k * z),
    };
  }
  // x ∼ N(0,z²), loss −L(x): P(−L ≤ l) = P(x ≥ g(−l))
  return {
    cdf: (l) => (-l <= l1q ? 1 : normCdf(-g(-l) / z)),
    lo: -L(k * z), hi: -L(-k * z),
  };
}

function discretize(s: { cdf: (l: number) => number; lo: number; hi: number }, h: number): Pld {
  const i0 = Math.floor(s.lo / h), i1 = Math.ceil(s.hi / h);
  const mass = new Float64Array(i1 - i0 + 1);
  let prev = 0;
  for (let i = i0; i <= i1; i++) {
    const c = s.cdf(i * h);
    mass[i - i0] = Math.max(0, c - prev);
    prev = Math.max(prev, c);
  }
  return truncate({ h, offset: i0, mass, inf: Math.max(0, 1 - prev) });
}

/**
 * ε of the Poisson-sampled Gaussian after `steps` rounds from the numerically composed privacy
 * loss distribution (the larger of the two neighbouring directions). `gridPoints` sets the
 * resolution of the composed distribution; the pessimistic rounding adds at most steps·h to ε
 * (longer composed distributions are coarsened, which only rounds losses further up).
 */
export function pldEpsilon(o: { q: number; z: number; steps: number; delta: number; gridPoints?: number }): number {
  checkQ(o.q); checkZ(o.z);
  if (!Number.isInteger(o.steps) || o.steps < 0) throw new RangeError('steps must be a non-negative integer');
  if (!(o.delta > 0 && o.delta < 1)) throw new RangeError('delta must be in (0, 1)');
  if (o.steps === 0 || o.q === 0) return 0;
  if (o.q === 1) return gaussianPldEpsilon(o.z, o.steps, o.delta);
  const T = o.steps, N = o.gridPoints ?? 1 << 16;
  let eps = 0;
  for (const dir of ['remove', 'add'] as const) {
    const s = stepLoss(o.q, o.z, dir);
    // spread of one step's loss, from a fine provisional discretisation
    const h0 = (s.hi - s.lo) / 20_000;
    const p0 = discretize(s, h0);
    let m1 = 0, m2 = 0;
    for (let i = 0; i < p0.mass.length; i++) { const l = (p0.offset + i) * h0; m1 += p0.mass[i]! * l; m2 += p0.mass[i]! * l * l; }
    const sd = Math.sqrt(Math.max(0, m2 - m1 * m1));
    // at least one step's whole range (so one step never needs more than N points), at most the composed spread
    const width = Math.max(s.hi - s.lo, Math.min(T * (s.hi - s.lo), 30 * Math.sqrt(T) * sd));
    const h = width / N;
    const p = composeTimes(discretize(s, h), T);
    const deltaOf = (e: number) => pldDelta(p, e);
    eps = Math.max(eps, invertDelta(deltaOf, o.delta, Math.max(1, (p.offset + p.mass.length) * p.h / 4)));
  }
  return eps;
}

/**
 * The smallest Gaussian noise multiplier z (to 1e-3 relative) whose RDP ε after `steps` rounds at
 * sampling rate q stays within `epsilon` at δ: how a budget becomes a noise level.
 */
export function noiseForEpsilon(o: { q: number; steps: number; delta: number; epsilon: number; orders?: readonly number[] }): number {
  if (!(o.epsilon > 0)) throw new RangeError(`epsilon must be positive, got ${o.epsilon}`);
  const eps = (z: number) => rdpEpsilon({ q: o.q, z, steps: o.steps, delta: o.delta, ...(o.orders ? { orders: o.orders } : {}) });
  let lo = 0.05, hi = 1;
  while (eps(hi) > o.epsilon) { lo = hi; hi *= 2; if (hi > 1e4) throw new RangeError(`no noise multiplier ≤ 1e4 reaches ε = ${o.epsilon}`); }
  if (eps(lo) <= o.epsilon) return lo;
  while (hi / lo > 1 + 1e-3) { const m = Math.sqrt(lo * hi); if (eps(m) > o.epsilon) lo = m; else hi = m; }
  return hi;
}
