/**
 * One round's server side, from the unmasked flat sum to the next global adapter. Lives here rather
 * than in the coordinator so that it runs in unit tests without sockets and every strategy goes
 * through the same grouping, refactor and server step.
 */
import { loraAName, loraBName, adapterModules, type LoraAdapter } from '../lora/adapter.js';
import type { TensorMap } from '../tensor.js';
import { unflatten, type FlatLayout } from './layout.js';
import { refactorAdapter } from './refactor.js';
import { slotWeightSums, type Participant, type StrategyServer } from './strategy.js';

/** Public facts about one contributor to the round's sum. */
export interface RoundContributor {
  readonly rank: number;
  readonly weight: number;
  /** true for tensors this client declared personal: it uploaded zeros for them. */
  personal(name: string): boolean;
}

export interface RoundInput {
  /** Σ contributions over `contributors`, flat in layout order. */
  sum: Float32Array;
  layout: FlatLayout;
  contributors: readonly RoundContributor[];
  previous: LoraAdapter;
  maxRank: number;
  /** Refactor (QR+SVD) the result when the strategy allows it. */
  refactor: boolean;
  /** true for tensors that must not be rotated, e.g. because some client (contributing or not) keeps them personal. */
  keepUnrotated(name: string): boolean;
}

/**
 * The next global adapter: strategy.finalize once per group of tensors shared by the same
 * contributors, the optional refactor, then the strategy server's step.
 *
 * Grouping: a tensor a client declared personal arrives as zeros from it, so each tensor is averaged
 * only over the clients that share it and personal layers never drag the global one toward zero.
 * Tensors no contributor shares keep their previous values. A module is left unrotated when either
 * factor is keepUnrotated or personal to a contributor: rotating it would scramble the slots of the
 * personal copy it is combined with on that client.
 */
export function aggregateRound(server: StrategyServer, input: RoundInput): LoraAdapter {
  const { strategy } = server;
  const { layout, contributors, previous, maxRank } = input;
  const sum = unflatten(input.sum, layout);
  const groups = new Map<string, { names: string[]; parts: RoundContributor[] }>();
  for (const e of layout.entries) {
    const idx: number[] = [];
    contributors.forEach((c, i) => { if (!c.personal(e.name)) idx.push(i); });
    const key = idx.join(',');
    const g = groups.get(key) ?? { names: [], parts: idx.map((i) => contributors[i]!) };
    g.names.push(e.name);
    groups.set(key, g);
  }
  const tensors: TensorMap = new Map(previous.tensors);
  const trained = new Map<string, boolean[]>();
  for (const g of groups.values()) {
    if (g.parts.length === 0) continue;
    const parts = g.parts.map((p): Participant => ({ rank: p.rank, weight: p.weight }));
    const res = strategy.finalize(sum, parts, previous, maxRank);
    const covered = Array.from(slotWeightSums(parts, maxRank), (w) => w > 0);
    for (const n of g.names) {
      tensors.set(n, res.tensors.get(n)!);
      trained.set(n, covered);
    }
  }
  let next: LoraAdapter = { config: previous.config, tensors };
  if (input.refactor && strategy.refactorable) {
    const refactored = refactorAdapter(next);
    const keep = (n: string) => input.keepUnrotated(n) || contributors.some((c) => c.personal(n));
    for (const m of adapterModules(next)) {
      const a = loraAName(m), b = loraBName(m);
      if (keep(a) || keep(b)) {
        refactored.tensors.set(a, next.tensors.get(a)!);
        refactored.tensors.set(b, next.tensors.get(b)!);
      }
    }
    next = refactored;
  }
  return server.step(previous, next, trained);
}
