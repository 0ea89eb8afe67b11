/**
 * One round's server side, from the unmasked flat sum to the next global adapter. Lives here rather
 * than in the coordinator so that it runs in unit tests without sockets and every strategy goes
 * through the same grouping, refactor and server step.
 */
import { loraAName, loraBName, type LoraAdapter } from '../lora/adapter.js';
import type { TensorMap } from '../tensor.js';
import { unflatten, type FlatLayout } from './layout.js';
import { refactorAdapterWithTransforms } from './refactor.js';
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
 * contributors, the strategy server's step, then the optional refactor, whose slot transforms the
 * server gets (rebase) so that state it keeps per rank slot follows the adapter into the new basis.
 *
 * Order: the server steps in the basis the clients trained in (the previous round's), where
 * `averaged − previous` is a meaningful pseudo-gradient; refactoring first would compare factors in
 * two different slot bases. For servers whose step is the identity this gives exactly what
 * refactoring the average gives.
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
  const stepped = server.step(previous, { config: previous.config, tensors }, trained);
  if (!(input.refactor && strategy.refactorable)) return stepped;
  const keep = (n: string) => input.keepUnrotated(n) || contributors.some((c) => c.personal(n));
  const { adapter, transforms } = refactorAdapterWithTransforms(stepped, (m) => !keep(loraAName(m)) && !keep(loraBName(m)));
  server.rebase?.(transforms);
  return adapter;
}
