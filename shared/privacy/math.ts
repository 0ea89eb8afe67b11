/**
 * Numerics the accountants need, in log space where values under- or overflow: log-sum-exp,
 * log binomial coefficients, erfc and log erfc accurate to ~1e-15 relative (series below 2.5,
 * continued fraction above), the standard normal CDF and its complement, and a radix-2 FFT for
 * the privacy-loss-distribution convolutions.
 */

export function logAdd(a: number, b: number): number {
  if (a === -Infinity) return b;
  if (b === -Infinity) return a;
  const m = Math.max(a, b);
  return m + Math.log1p(Math.exp(-Math.abs(a - b)));
}

/** log(e^a − e^b) for a ≥ b; −∞ when equal. */
export function logSub(a: number, b: number): number {
  if (b === -Infinity) return a;
  if (b > a) throw new RangeError(`logSub: ${b} > ${a}`);
  if (a === b) return -Infinity;
  return a + Math.log(-Math.expm1(b - a));
}

/** log Γ(x) for x > 0 (Lanczos, g = 7, n = 9; ~1e-15 relative). */
const LANCZOS = [
  0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
  12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
];
export function logGamma(x: number): number {
  if (x < 0.5) return Math.log(Math.PI / Math.abs(Math.sin(Math.PI * x))) - logGamma(1 - x);
  const y = x - 1;
  let a = LANCZOS[0]!;
  const t = y + 7.5;
  for (let i = 1; i < 9; i++) a += LANCZOS[i]! / (y + i);
  return 0.5 * Math.log(2 * Math.PI) + (y + 0.5) * Math.log(t) - t + Math.log(a);
}

const LOG_FACT: number[] = [0];
/** log k! exactly summed for k < 1024, Lanczos above. */
export function logFactorial(k: number): number {
  if (k < 1024) {
    while (LOG_FACT.length <= k) LOG_FACT.push(LOG_FACT[LOG_FACT.length - 1]! + Math.log(LOG_FACT.length));
    return LOG_FACT[k]!;
  }
  return logGamma(k + 1);
}

/** log C(n, k) for integers 0 ≤ k ≤ n. */
export function logComb(n: number, k: number): number {
  return logFactorial(n) - logFactorial(k) - logFactorial(n - k);
}

/** Generalised binomial coefficient C(a, i) for real a and integer i ≥ 0 (sign and log magnitude). */
export function binomSignLog(a: number, i: number): { sign: number; log: number } {
  let sign = 1, log = 0;
  for (let j = 0; j < i; j++) {
    const f = (a - j) / (j + 1);
    if (f === 0) return { sign: 0, log: -Infinity };
    if (f < 0) sign = -sign;
    log += Math.log(Math.abs(f));
  }
  return { sign, log };
}

const SQRT_PI = Math.sqrt(Math.PI);

/** The continued fraction K(x) with erfc(x) = e^{−x²} / (√π · K(x)), x ≥ 2. */
function erfcFraction(x: number): number {
  let f = x;
  for (let k = 120; k >= 1; k--) f = x + (k / 2) / f;
  return f;
}

/** erf(x) for |x| < 2.5 by the all-positive series 2x/√π e^{−x²} Σ (2x²)^n / (2n+1)!!. */
function erfSeries(x: number): number {
  const x2 = x * x;
  let term = 1, sum = 1;
  for (let n = 1; n < 200; n++) {
    term *= (2 * x2) / (2 * n + 1);
    sum += term;
    if (term < 1e-17 * sum) break;
  }
  return (2 * x / SQRT_PI) * Math.exp(-x2) * sum;
}

export function erfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x < 0) return 2 - erfc(-x);
  if (x < 2.5) return 1 - erfSeries(x);
  return Math.exp(-x * x) / (SQRT_PI * erfcFraction(x));
}

/** log erfc(x), finite for every finite x. */
export function logErfc(x: number): number {
  if (x < 2.5) return Math.log(erfc(x));
  return -x * x - Math.log(SQRT_PI * erfcFraction(x));
}

/** Standard normal CDF Φ(x). */
export function normCdf(x: number): number { return 0.5 * erfc(-x / Math.SQRT2); }
/** log Φ(x). */
export function logNormCdf(x: number): number { return Math.log(0.5) + logErfc(-x / Math.SQRT2); }

/** In-place iterative radix-2 FFT of (re, im); length a power of two. `inverse` scales by 1/n. */
export function fft(re: Float64Array, im: Float64Array, inverse = false): void {
  const n = re.length;
  if (n & (n - 1)) throw new RangeError('fft length must be a power of two');
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      let t = re[i]!; re[i] = re[j]!; re[j] = t;
      t = im[i]!; im[i] = im[j]!; im[j] = t;
    }
  }
  for (let len = 2; len <= n; len <<= 1) {
    const ang = (2 * Math.PI / len) * (inverse ? 1 : -1);
    const wr = Math.cos(ang), wi = Math.sin(ang);
    const half = len >> 1;
    for (let i = 0; i < n; i += len) {
      let cr = 1, ci = 0;
      for (let k = 0; k < half; k++) {
        const a = i + k, b = a + half;
        const xr = re[b]! * cr - im[b]! * ci;
        const xi = re[b]! * ci + im[b]! * cr;
        re[b] = re[a]! - xr; im[b] = im[a]! - xi;
        re[a] = re[a]! + xr; im[a] = im[a]! + xi;
        const nr = cr * wr - ci * wi;
        ci = cr * wi + ci * wr;
        cr = nr;
      }
    }
  }
  if (inverse) for (let i = 0; i < n; i++) { re[i] = re[i]! / n; im[i] = im[i]! / n; }
}

/** Linear convolution of two non-negative mass vectors via FFT (negative round-off clamped to 0). */
export function convolve(a: Float64Array, b: Float64Array): Float64Array {
  const m = a.length + b.length - 1;
  if (Math.min(a.length, b.length) <= 32) {
    const out = new Float64Array(m);
    for (let i = 0; i < a.length; i++) { const x = a[i]!; if (x !== 0) for (let j = 0; j < b.length; j++) out[i + j] = out[i + j]! + x * b[j]!; }
    return out;
  }
  let n = 1;
  while (n < m) n <<= 1;
  const ar = new Float64Array(n), ai = new Float64Array(n), br = new Float64Array(n), bi = new Float64Array(n);
  ar.set(a); br.set(b);
  fft(ar, ai); fft(br, bi);
  for (let i = 0; i < n; i++) {
    const r = ar[i]! * br[i]! - ai[i]! * bi[i]!;
    ai[i] = ar[i]! * bi[i]! + ai[i]! * br[i]!;
    ar[i] = r;
  }
  fft(ar, ai, true);
  const out = new Float64Array(m);
  for (let i = 0; i < m; i++) out[i] = ar[i]! > 0 ? ar[i]! : 0;
  return out;
}
