import { fail } from './errors.js';
import { deriveMaskKey, expandMask } from './prg.js';

/**
 * SecAgg+ neighbour graph: a random Harary graph. Participants are placed on a ring in an order
 * given by a Fisher–Yates shuffle seeded from the session, and each is linked to the k/2 nearest on
 * either side. Everybody (server and clients) derives the same graph from public data; the server
 * cannot choose neighbourhoods. k ≥ n−1 gives the complete graph (original Bonawitz et al.).
 */
export class NeighbourGraph {
  readonly n: number;
  readonly k: number;
  readonly #pos: Int32Array;    // participant index → ring position
  readonly #order: Int32Array;  // ring position → participant index

  constructor(n: number, k: number, seed: Uint8Array) {
    if (!Number.isInteger(n) || n < 2) fail('SECAGG_PARAMS', 'need at least 2 participants');
    if (!Number.isInteger(k) || k < 1) fail('SECAGG_PARAMS', 'k must be a positive integer');
    this.n = n;
    this.k = k >= n - 1 ? n - 1 : k;
    if (this.k < n - 1 && this.k % 2 !== 0) fail('SECAGG_PARAMS', `k=${k} must be even when below n−1=${n - 1}`);
    this.#order = new Int32Array(n);
    for (let i = 0; i < n; i++) this.#order[i] = i;
    const rnd = expandMask(deriveMaskKey(seed, { session: seed, round: 0, purpose: 'graph' }), 4 * n + 64);
    let r = 0;
    const next = (bound: number): number => {
      // rejection sampling: uniform in [0, bound)
      const lim = Math.floor(2 ** 32 / bound) * bound;
      for (;;) {
        if (r >= rnd.length) fail('SECAGG_PARAMS', 'graph PRG exhausted');
        const v = rnd[r++]!;
        if (v < lim) return v % bound;
      }
    };
    for (let i = n - 1; i > 0; i--) {
      const j = next(i + 1);
      const t = this.#order[i]!; this.#order[i] = this.#order[j]!; this.#order[j] = t;
    }
    this.#pos = new Int32Array(n);
    for (let p = 0; p < n; p++) this.#pos[this.#order[p]!] = p;
  }

  /** Neighbour participant indices of i (sorted ascending, excluding i). */
  neighbours(i: number): number[] {
    if (!Number.isInteger(i) || i < 0 || i >= this.n) throw new RangeError(`participant index ${i} out of range`);
    if (this.k === this.n - 1) return Array.from({ length: this.n }, (_, j) => j).filter((j) => j !== i);
    const p = this.#pos[i]!, half = this.k / 2, out: number[] = [];
    for (let d = 1; d <= half; d++) {
      out.push(this.#order[(p + d) % this.n]!, this.#order[(p - d + this.n) % this.n]!);
    }
    return out.sort((a, b) => a - b);
  }

  areNeighbours(i: number, j: number): boolean {
    if (i === j) return false;
    if (this.k === this.n - 1) return true;
    const d = Math.abs(this.#pos[i]! - this.#pos[j]!);
    return Math.min(d, this.n - d) <= this.k / 2;
  }
}

/**
 * Default neighbourhood size and threshold for n participants.
 * k: complete graph up to n = 16, else the even number ≥ 3·log2(n) (SecAgg+ uses O(log n)).
 * t: majority of the k+1 holders (neighbours and the dealer itself), floor((k+1)/2)+1.
 * See docs/SECURITY.md for the dropout / collusion trade-off this picks.
 */
export function defaultSecAggSizes(n: number): { k: number; t: number } {
  if (!Number.isInteger(n) || n < 2) fail('SECAGG_PARAMS', 'need at least 2 participants');
  let k: number;
  if (n <= 16) k = n - 1;
  else {
    k = Math.ceil(3 * Math.log2(n));
    if (k % 2) k++;
    if (k >= n - 1) k = n - 1;
  }
  return { k, t: Math.floor((k + 1) / 2) + 1 };
}
