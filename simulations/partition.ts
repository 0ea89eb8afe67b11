/**
 * Partitioners that deal a pooled dataset out to simulated clients. Everything is a pure function of
 * (items, seed): the same seed gives the same partition on every machine, which is what makes two
 * simulation runs comparable.
 *
 * Non-IID follows Hsu, Qi & Brown (2019): for every class k draw client proportions
 * p_k ~ Dirichlet(α·1_n) and cut that class's (shuffled) items at the cumulative proportions.
 * Small α → each client sees few classes; α → ∞ → IID.
 */
import { ConfigError } from '../shared/errors.js';
import { Rng, mulberry32, hashSeed } from '../shared/data/random.js';

export { Rng, mulberry32, hashSeed };

export type LabelKey = string | number;
export type LabelsOf<T> = readonly LabelKey[] | ((item: T, index: number) => LabelKey);

function checkClients(n: number): void {
  if (!Number.isSafeInteger(n) || n < 1) throw new ConfigError(`number of clients must be a positive integer, got ${n}`);
}

function labelArray<T>(items: readonly T[], labels: LabelsOf<T>): LabelKey[] {
  if (typeof labels === 'function') return items.map((it, i) => labels(it, i));
  if (labels.length !== items.length) throw new ConfigError(`labels has ${labels.length} entries but there are ${items.length} items`);
  return labels.slice();
}

/** Shuffles, then deals round-robin: client sizes differ by at most one. */
export function partitionIid<T>(items: readonly T[], n: number, seed: number | string): T[][] {
  checkClients(n);
  if (items.length < n) throw new ConfigError(`cannot give ${n} clients at least one item each from ${items.length} items`);
  const shuffled = new Rng(`iid:${String(seed)}`).shuffle(items);
  const parts: T[][] = Array.from({ length: n }, () => []);
  shuffled.forEach((it, i) => (parts[i % n] as T[]).push(it));
  return parts;
}

export interface DirichletOptions {
  /** Every client gets at least this many items (default 2: one to train on, one to evaluate). */
  minPerClient?: number;
  /** Redraws before falling back to moving items from the largest clients (default 200). */
  maxAttempts?: number;
}

/**
 * Label-skewed non-IID partition. `labels` is an array aligned with `items` or a function of the
 * item (a class label, or any grouping such as a mailbox source). The result always gives every
 * client ≥ `minPerClient` items: draws that do not are redrawn, and if `maxAttempts` draws all fail
 * (tiny α with many clients) the deficient clients take random items from the largest ones.
 */
export function partitionDirichlet<T>(
  items: readonly T[],
  labels: LabelsOf<T>,
  n: number,
  alpha: number,
  seed: number | string,
  opts: DirichletOptions = {},
): T[][] {
  checkClients(n);
  if (!(alpha > 0) || !Number.isFinite(alpha)) throw new ConfigError(`dirichlet alpha must be a positive finite number, got ${alpha}`);
  const minPer = opts.minPerClient ?? 2;
  const maxAttempts = opts.maxAttempts ?? 200;
  if (!Number.isSafeInteger(minPer) || minPer < 0) throw new ConfigError(`minPerClient must be a non-negative integer, got ${minPer}`);
  if (items.length < n * minPer) {
    throw new ConfigError(`cannot give ${n} clients at least ${minPer} items each from ${items.length} items`);
  }
  const keys = labelArray(items, labels);
  const rng = new Rng(`dirichlet:${String(seed)}`);

  // Classes in a fixed order (sorted by key) so Map insertion order cannot change the draw.
  const byClass = new Map<string, number[]>();
  keys.forEach((k, i) => {
    const key = `${typeof k}:${String(k)}`;
    let list = byClass.get(key);
    if (!list) byClass.set(key, (list = []));
    list.push(i);
  });
  const classes = [...byClass.keys()].sort().map((k) => rng.shuffle(byClass.get(k) as number[]));

  let assignment: number[][] = [];
  for (let attempt = 0; attempt < Math.max(1, maxAttempts); attempt++) {
    assignment = Array.from({ length: n }, () => []);
    for (const idx of classes) {
      const p = rng.dirichlet(n, alpha);
      let cum = 0;
      let start = 0;
      for (let c = 0; c < n; c++) {
        cum += p[c] as number;
        const end = c === n - 1 ? idx.length : Math.min(idx.length, Math.round(cum * idx.length));
        for (let j = start; j < end; j++) (assignment[c] as number[]).push(idx[j] as number);
        start = Math.max(start, end);
      }
    }
    if (assignment.every((a) => a.length >= minPer)) break;
  }
  // Repair (only reached when every draw failed): deterministic moves from the largest client.
  for (let c = 0; c < n; c++) {
    const mine = assignment[c] as number[];
    while (mine.length < minPer) {
      let donor = 0;
      for (let d = 1; d < n; d++) if ((assignment[d] as number[]).length > (assignment[donor] as number[]).length) donor = d;
      const from = assignment[donor] as number[];
      const [moved] = from.splice(rng.int(from.length), 1);
      mine.push(moved as number);
    }
  }
  // Within a client, keep a random order so a later train/eval cut is not class-sorted.
  return assignment.map((a) => rng.shuffle(a).map((i) => items[i] as T));
}

export interface ClientSplit<T> {
  train: T[];
  eval: T[];
}

/**
 * Cuts each client's items into train and eval. With `labels`, the cut is stratified per label so a
 * client's eval set mirrors its own label mix. Every client with ≥ 2 items gets ≥ 1 eval and ≥ 1
 * train item.
 */
export function splitClients<T>(
  parts: readonly (readonly T[])[],
  evalFraction: number,
  seed: number | string,
  labels?: (item: T) => LabelKey,
): ClientSplit<T>[] {
  if (!(evalFraction >= 0 && evalFraction < 1)) throw new ConfigError(`evalFraction must be in [0, 1), got ${evalFraction}`);
  return parts.map((part, c) => {
    const rng = new Rng(`split:${String(seed)}:${c}`);
    const target = part.length < 2 ? 0 : Math.min(part.length - 1, Math.max(evalFraction > 0 ? 1 : 0, Math.round(evalFraction * part.length)));
    if (!labels) {
      const s = rng.shuffle(part);
      return { eval: s.slice(0, target), train: s.slice(target) };
    }
    const groups = new Map<string, T[]>();
    for (const it of part) {
      const k = `${typeof labels(it)}:${String(labels(it))}`;
      let g = groups.get(k);
      if (!g) groups.set(k, (g = []));
      g.push(it);
    }
    const ev: T[] = [];
    const tr: T[] = [];
    // Largest-remainder allocation of `target` eval slots across labels.
    const ordered = [...groups.keys()].sort().map((k) => rng.shuffle(groups.get(k) as T[]));
    const quotas = ordered.map((g) => (target * g.length) / part.length);
    const alloc = quotas.map(Math.floor);
    let left = target - alloc.reduce((a, b) => a + b, 0);
    const byRemainder = quotas.map((q, i) => [q - Math.floor(q), i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    for (const [, i] of byRemainder) {
      if (left <= 0) break;
      alloc[i] = (alloc[i] as number) + 1;
      left--;
    }
    ordered.forEach((g, i) => {
      const k = alloc[i] as number;
      ev.push(...g.slice(0, k));
      tr.push(...g.slice(k));
    });
    return { train: rng.shuffle(tr), eval: rng.shuffle(ev) };
  });
}

/** Per-client label histogram, for logs and the report. Keys are sorted. */
export function labelCounts<T>(parts: readonly (readonly T[])[], labelOf: (item: T) => LabelKey): Record<string, number>[] {
  return parts.map((p) => {
    const counts: Record<string, number> = {};
    for (const it of p) {
      const k = String(labelOf(it));
      counts[k] = (counts[k] ?? 0) + 1;
    }
    return Object.fromEntries(Object.entries(counts).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  });
}
