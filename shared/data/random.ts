/**
 * The project's one module for non-cryptographic hashing and seeded randomness (data splits,
 * partitions, client sampling, LoRA initialisation, test inputs). Not for cryptography: use
 * node:crypto / shared/crypto for that.
 *
 * - `fnv1a32`: FNV-1a, 32-bit, over a string's UTF-16 code units or over bytes.
 * - `splitmix32`: the 32-bit splitmix step, used to expand one seed word into generator state.
 * - `hashSeed`: any number or string → a well-spread 32-bit state (nearby seeds give unrelated streams).
 * - `mulberry32` / `mulberry32FromState`: fast 32-bit-state generator of floats in [0, 1) (`Rng` uses it).
 * - `xoshiro128ss`: xoshiro128** over four 32-bit words, yielding uint32 (specified bit for bit:
 *   LoRA A initialisation in shared/aggregation/init.ts depends on it across machines).
 * Outputs are pinned in test/data/random.test.ts.
 */

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

/** FNV-1a (32-bit) of a string's UTF-16 code units, or of bytes (pass `new TextEncoder().encode(s)` for UTF-8). */
export function fnv1a32(data: string | Uint8Array): number {
  let h = FNV_OFFSET;
  if (typeof data === 'string') {
    for (let i = 0; i < data.length; i++) h = Math.imul(h ^ data.charCodeAt(i), FNV_PRIME);
  } else {
    for (let i = 0; i < data.length; i++) h = Math.imul(h ^ data[i]!, FNV_PRIME);
  }
  return h >>> 0;
}

/** One splitmix32 step: advances `state.s` by the golden-ratio increment and returns the mixed word. */
export function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) >>> 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

/** Mixes an arbitrary seed into a well-spread 32-bit state. */
export function hashSeed(seed: number | string): number {
  let h: number;
  if (typeof seed === 'string') {
    h = fnv1a32(seed);
  } else {
    if (!Number.isFinite(seed)) throw new RangeError(`seed must be finite, got ${seed}`);
    // Fold the float's integer part and its high word so large or fractional seeds still differ.
    const lo = Math.trunc(seed) | 0;
    const hi = Math.trunc(seed / 4294967296) | 0;
    const frac = Math.round((seed - Math.trunc(seed)) * 1e9) | 0;
    h = lo ^ Math.imul(hi, 0x9e3779b9) ^ Math.imul(frac, 0x85ebca6b);
  }
  return splitmix32({ s: h >>> 0 });
}

/** mulberry32 from a raw 32-bit state: returns a function yielding uniform floats in [0, 1). */
export function mulberry32FromState(state: number): () => number {
  let a = state >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** mulberry32 seeded through `hashSeed`: returns a function yielding uniform floats in [0, 1). */
export function mulberry32(seed: number | string): () => number {
  return mulberry32FromState(hashSeed(seed));
}

function rotl(x: number, k: number): number { return ((x << k) | (x >>> (32 - k))) >>> 0; }

/** xoshiro128** over four 32-bit words (not all zero; an all-zero state is replaced by [1, 0, 0, 0]). Yields uint32. */
export function xoshiro128ss(state: readonly [number, number, number, number]): () => number {
  const s = state.map((w) => w >>> 0) as [number, number, number, number];
  if ((s[0] | s[1] | s[2] | s[3]) === 0) s[0] = 1;
  return () => {
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] = (s[2] ^ s[0]) >>> 0;
    s[3] = (s[3] ^ s[1]) >>> 0;
    s[1] = (s[1] ^ s[2]) >>> 0;
    s[0] = (s[0] ^ s[3]) >>> 0;
    s[2] = (s[2] ^ t) >>> 0;
    s[3] = rotl(s[3], 11);
    return result;
  };
}

/** A seeded random source with the few distributions the simulations need. */
export class Rng {
  readonly #next: () => number;
  #spare: number | undefined;

  constructor(seed: number | string) {
    this.#next = mulberry32(seed);
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.#next();
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    if (!Number.isSafeInteger(n) || n <= 0) throw new RangeError(`Rng.int: n must be a positive integer, got ${n}`);
    return Math.floor(this.#next() * n);
  }

  /** Standard normal (Marsaglia polar method; caches the second value). */
  normal(): number {
    if (this.#spare !== undefined) {
      const s = this.#spare;
      this.#spare = undefined;
      return s;
    }
    for (;;) {
      const u = 2 * this.#next() - 1;
      const v = 2 * this.#next() - 1;
      const s = u * u + v * v;
      if (s > 0 && s < 1) {
        const m = Math.sqrt((-2 * Math.log(s)) / s);
        this.#spare = v * m;
        return u * m;
      }
    }
  }

  /**
   * Gamma(shape, 1) by Marsaglia & Tsang (2000). For shape < 1 uses the boost
   * Gamma(a) = Gamma(a + 1) · U^(1/a), which keeps small Dirichlet alphas exact.
   */
  gamma(shape: number): number {
    if (!(shape > 0) || !Number.isFinite(shape)) throw new RangeError(`Rng.gamma: shape must be > 0, got ${shape}`);
    if (shape < 1) {
      const g = this.gamma(shape + 1);
      let u = this.#next();
      while (u === 0) u = this.#next();
      return g * Math.pow(u, 1 / shape);
    }
    const d = shape - 1 / 3;
    const c = 1 / Math.sqrt(9 * d);
    for (;;) {
      let x: number;
      let v: number;
      do {
        x = this.normal();
        v = 1 + c * x;
      } while (v <= 0);
      v = v * v * v;
      const u = this.#next();
      if (u < 1 - 0.0331 * x * x * x * x) return d * v;
      if (u > 0 && Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v;
    }
  }

  /** A draw from Dirichlet(alpha, …, alpha) of dimension k (sums to 1). */
  dirichlet(k: number, alpha: number): number[] {
    if (!Number.isSafeInteger(k) || k <= 0) throw new RangeError(`Rng.dirichlet: k must be a positive integer, got ${k}`);
    const g = Array.from({ length: k }, () => this.gamma(alpha));
    let sum = g.reduce((a, b) => a + b, 0);
    if (!(sum > 0)) {
      // Every component underflowed (possible for alpha ≪ 0.01): put all mass on one component.
      g.fill(0);
      g[this.int(k)] = 1;
      sum = 1;
    }
    return g.map((x) => x / sum);
  }

  /** Fisher–Yates shuffle of a copy. */
  shuffle<T>(items: readonly T[]): T[] {
    const out = items.slice();
    for (let i = out.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = out[i] as T;
      out[i] = out[j] as T;
      out[j] = t;
    }
    return out;
  }
}
