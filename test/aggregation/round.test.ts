import { expect } from 'chai';
import {
  aggregatePlain, aggregateRound, getStrategy, refactorAdapter, unflatten,
  type FlatLayout, type Participant, type Strategy,
} from '../../shared/aggregation/index.js';
import { adapterModules, loraAName, loraBName, parseLoraName, type LoraAdapter, type LoraConfig } from '../../shared/lora/adapter.js';
import type { TensorMap } from '../../shared/tensor.js';
import { randTensor, rng } from './helpers.js';
import { contributorsOf, flatSum, randomClient, sameBits, type SimClient } from './round-helpers.js';

const BASE: Omit<LoraConfig, 'r' | 'loraAlpha'> = { targetModules: ['q', 'v'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' };
const SHAPES = new Map([
  ['layers.0.q', { in: 6, out: 5 }], ['layers.0.v', { in: 5, out: 7 }],
  ['layers.1.q', { in: 6, out: 5 }], ['layers.1.v', { in: 5, out: 7 }],
]);
const MAX = 4;

/**
 * Coordinator#aggregate as it stood before the grouping moved into shared/aggregation (commit
 * ba23196), transcribed with `Slot` reduced to what it read: the reference aggregateRound must match.
 */
function oldCoordinatorAggregate(
  strategy: Strategy, flatSum: Float32Array, layout: FlatLayout, prev: LoraAdapter, maxRank: number, refactor: boolean,
  contributors: { clientId: string; rank: number; weight: number; conn: { personal(n: string): boolean } }[],
  connected: { personal(n: string): boolean }[],
): LoraAdapter {
  const sum = unflatten(flatSum, layout);
  const groups = new Map<string, { names: string[]; parts: typeof contributors }>();
  for (const e of layout.entries) {
    const parts = contributors.filter((c) => !c.conn.personal(e.name));
    const key = parts.map((p) => p.clientId).join('\u0000');
    const g = groups.get(key) ?? { names: [], parts };
    g.names.push(e.name);
    groups.set(key, g);
  }
  const tensors: TensorMap = new Map(prev.tensors);
  for (const g of groups.values()) {
    if (g.parts.length === 0) continue;
    const res = strategy.finalize(sum, g.parts.map((p): Participant => ({ rank: p.rank, weight: p.weight })), prev, maxRank);
    for (const n of g.names) tensors.set(n, res.tensors.get(n)!);
  }
  let next: LoraAdapter = { config: prev.config, tensors };
  if (refactor && strategy.refactorable) {
    const refactored = refactorAdapter(next);
    const personalSomewhere = (n: string) => connected.some((c) => c.personal(n)) || contributors.some((c) => c.conn.personal(n));
    for (const m of adapterModules(next)) {
      if (personalSomewhere(loraAName(m)) || personalSomewhere(loraBName(m))) {
        refactored.tensors.set(loraAName(m), next.tensors.get(loraAName(m))!);
        refactored.tensors.set(loraBName(m), next.tensors.get(loraBName(m))!);
      }
    }
    next = refactored;
  }
  return next;
}

function previousFor(strategy: Strategy): LoraAdapter {
  const g = strategy.init(SHAPES, MAX, 2 * MAX, 3, BASE);
  const next = rng(77);
  for (const [name, t] of g.tensors) if (parseLoraName(name)!.factor === 'B') t.data.set(randTensor(t.shape as [number, number], next).data);
  return g;
}

const layer1 = (n: string) => n.includes('.layers.1.');
const vA0 = (n: string) => n === loraAName('layers.0.v');

describe('aggregateRound', () => {
  for (const name of ['rank-aware', 'fedit', 'ffa', 'fedsa']) {
    for (const refactor of [true, false]) {
      it(`${name}, refactor ${refactor}: bit-identical to the old coordinator grouping when one client keeps a layer personal`, () => {
        const strategy = getStrategy(name);
        const prev = previousFor(strategy);
        // client 1 keeps all of layers.1 personal; a connected non-contributor keeps one A personal
        const clients: SimClient[] = [randomClient(SHAPES, 2, 3, 11), randomClient(SHAPES, 4, 1, 12, layer1), randomClient(SHAPES, 3, 2, 13)];
        const bystander = { personal: vA0 };
        const { sum, layout } = flatSum(strategy, clients, prev, MAX);
        const old = oldCoordinatorAggregate(strategy, sum, layout, prev, MAX, refactor,
          clients.map((c, i) => ({ clientId: `c${i}`, rank: c.rank, weight: c.weight, conn: { personal: c.personal } })), [bystander]);
        const got = aggregateRound(strategy.createServer({ maxRank: MAX, seed: 1 }), {
          sum, layout, contributors: contributorsOf(clients), previous: prev, maxRank: MAX, refactor, keepUnrotated: (n) => bystander.personal(n),
        });
        expect(sameBits(got, old)).to.equal(true);
        expect(got.config).to.deep.equal(prev.config);
        // and the grouping matters: averaging layers.1 over everyone (client 1's zeros included) differs
        const naive = strategy.finalize(unflatten(sum, layout), clients.map((c) => ({ rank: c.rank, weight: c.weight })), prev, MAX);
        const k = layout.entries.map((e) => e.name).find(layer1)!;
        expect([...got.tensors.get(k)!.data]).to.not.deep.equal([...naive.tensors.get(k)!.data]);
      });
    }
  }

  it('refactors every module nobody keeps personal and leaves the others bit-exact', () => {
    const strategy = getStrategy('rank-aware');
    const prev = previousFor(strategy);
    const clients = [randomClient(SHAPES, 4, 1, 21), randomClient(SHAPES, 2, 1, 22, layer1)];
    const { sum, layout } = flatSum(strategy, clients, prev, MAX);
    const input = { sum, layout, contributors: contributorsOf(clients), previous: prev, maxRank: MAX, keepUnrotated: vA0 };
    const plain = aggregateRound(strategy.createServer({ maxRank: MAX, seed: 1 }), { ...input, refactor: false });
    const refd = aggregateRound(strategy.createServer({ maxRank: MAX, seed: 1 }), { ...input, refactor: true });
    for (const m of SHAPES.keys()) {
      const kept = m.startsWith('layers.1.') || m === 'layers.0.v';
      for (const n of [loraAName(m), loraBName(m)]) {
        const same = [...refd.tensors.get(n)!.data].every((v, i) => Object.is(v, plain.tensors.get(n)!.data[i]));
        expect(same, n).to.equal(kept);
      }
    }
  });

  it('keeps previous values for tensors no contributor shares, and everything when nobody contributes', () => {
    for (const name of ['rank-aware', 'fedavgm']) {
      const strategy = getStrategy(name);
      const prev = previousFor(strategy);
      const clients = [randomClient(SHAPES, 4, 1, 31, layer1), randomClient(SHAPES, 3, 2, 32, layer1)];
      const { sum, layout } = flatSum(strategy, clients, prev, MAX);
      const out = aggregateRound(strategy.createServer({ maxRank: MAX, seed: 1 }), {
        sum, layout, contributors: contributorsOf(clients), previous: prev, maxRank: MAX, refactor: true, keepUnrotated: () => false,
      });
      for (const [k, t] of prev.tensors) {
        const same = [...out.tensors.get(k)!.data].every((v, i) => Object.is(v, t.data[i]));
        expect(same, `${name} ${k}`).to.equal(layer1(k));
      }
      const none = aggregateRound(strategy.createServer({ maxRank: MAX, seed: 1 }), {
        sum: new Float32Array(layout.size), layout, contributors: [], previous: prev, maxRank: MAX, refactor: false, keepUnrotated: () => false,
      });
      // (with refactor on, a refactorable strategy still re-orders the untouched adapter, as the coordinator always did)
      expect(sameBits(none, prev), name).to.equal(true);
    }
  });

  it('equals aggregatePlain for a stateless strategy when nobody keeps anything personal', () => {
    const strategy = getStrategy('fedit');
    const prev = previousFor(strategy);
    const clients = [randomClient(SHAPES, 1, 2, 41), randomClient(SHAPES, 4, 5, 42), randomClient(SHAPES, 2, 1, 43)];
    const { sum, layout } = flatSum(strategy, clients, prev, MAX);
    const out = aggregateRound(strategy.createServer({ maxRank: MAX, seed: 1 }), {
      sum, layout, contributors: contributorsOf(clients), previous: prev, maxRank: MAX, refactor: false, keepUnrotated: () => false,
    });
    expect(sameBits(out, aggregatePlain(strategy, clients, prev, MAX))).to.equal(true);
  });

  it('refuses a sum that does not fit the layout', () => {
    const strategy = getStrategy('rank-aware');
    const prev = previousFor(strategy);
    const { layout } = flatSum(strategy, [], prev, MAX);
    expect(() => aggregateRound(strategy.createServer({ maxRank: MAX, seed: 1 }), {
      sum: new Float32Array(layout.size - 1), layout, contributors: [], previous: prev, maxRank: MAX, refactor: false, keepUnrotated: () => false,
    })).to.throw(/layout needs/);
  });
});
