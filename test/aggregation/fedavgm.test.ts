import { expect } from 'chai';
import {
  aggregateRound, fedAvgMStrategy, getStrategy, type SavedServerState, type Strategy, type StrategyServer,
} from '../../shared/aggregation/index.js';
import { ConfigError } from '../../shared/errors.js';
import { loraAName, loraBName, parseLoraName, type LoraAdapter, type LoraConfig } from '../../shared/lora/adapter.js';
import type { Tensor32, TensorMap } from '../../shared/tensor.js';
import { randTensor, rng } from './helpers.js';
import { contributorsOf, flatSum, randomClient, sameBits, throughJson, type SimClient } from './round-helpers.js';

const BASE: Omit<LoraConfig, 'r' | 'loraAlpha'> = { targetModules: ['m'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' };

function t(shape: [number, number], v: number[]): Tensor32 { return { shape, data: Float32Array.from(v) }; }

function round(server: StrategyServer, clients: readonly SimClient[], previous: LoraAdapter, maxRank: number): LoraAdapter {
  const { sum, layout } = flatSum(server.strategy, clients, previous, maxRank);
  return aggregateRound(server, { sum, layout, contributors: contributorsOf(clients), previous, maxRank, refactor: true, keepUnrotated: () => false });
}

describe('fedavgm', () => {
  const fedavgm = getStrategy('fedavgm');

  it('is registered, shares A and B, trains both, keeps nothing personal and is not refactorable', () => {
    const a = loraAName('m'), b = loraBName('m');
    expect([fedavgm.isShared(a), fedavgm.isShared(b), fedavgm.isPersonal(a), fedavgm.isPersonal(b), fedavgm.isTrainable(a), fedavgm.isTrainable(b)])
      .to.deep.equal([true, true, false, false, true, true]);
    expect(fedavgm.refactorable).to.equal(false);
  });

  describe('hand-computed rounds: one module in=2 out=1, max rank 2, β = 0.5, η = 1', () => {
    const A = loraAName('m'), B = loraBName('m');
    const client = (rank: number, weight: number, a: number[], b: number[]): SimClient => ({
      rank, weight, personal: () => false, tensors: new Map([[A, t([rank, 2], a)], [B, t([1, rank], b)]]),
    });
    const get = (x: { tensors: TensorMap }, n: string) => [...x.tensors.get(n)!.data];
    const start: LoraAdapter = { config: { ...BASE, r: 2, loraAlpha: 4 }, tensors: new Map([[A, t([2, 2], [1, 1, 1, 1])], [B, t([1, 2], [0, 0])]]) };

    it('round 1 is the slot average (m = Δ), round 2 adds β·m in trained slots and keeps untrained ones, round 3 shows the kept momentum', () => {
      const server = fedavgm.createServer({ maxRank: 2, seed: 1 });
      // round 1: c1 rank 2 w 1, c2 rank 1 w 1. A slot 0 = ([3,1] + [1,3]) / 2 = [2,2], slot 1 = [2,2];
      // B slot 0 = (2 + 0) / 2 = 1, slot 1 = 4. m = Δ = avg − prev, next = prev + m = avg.
      const r1 = round(server, [client(2, 1, [3, 1, 2, 2], [2, 4]), client(1, 1, [1, 3], [0])], start, 2);
      expect(get(r1, A)).to.deep.equal([2, 2, 2, 2]);
      expect(get(r1, B)).to.deep.equal([1, 4]);
      expect(server.serialize().meta).to.deep.equal({ beta: 0.5, eta: 1, steps: 1 });
      expect(get(server.serialize(), A)).to.deep.equal([1, 1, 1, 1]);
      expect(get(server.serialize(), B)).to.deep.equal([1, 4]);

      // round 2: only c2, rank 1, weight 2: A row 0 → [4, 0], B col 0 → 3; slot 1 untrained.
      // A row 0: Δ = [2, −2], m = 0.5·[1, 1] + Δ = [2.5, −1.5], next = [2, 2] + m = [4.5, 0.5]; row 1 kept, m kept [1, 1].
      // B col 0: Δ = 2, m = 0.5·1 + 2 = 2.5, next = 1 + 2.5 = 3.5; col 1 kept 4, m kept 4.
      const r2 = round(server, [client(1, 2, [4, 0], [3])], r1, 2);
      expect(get(r2, A)).to.deep.equal([4.5, 0.5, 2, 2]);
      expect(get(r2, B)).to.deep.equal([3.5, 4]);
      expect(get(server.serialize(), A)).to.deep.equal([2.5, -1.5, 1, 1]);
      expect(get(server.serialize(), B)).to.deep.equal([2.5, 4]);

      // round 3: c1 alone at rank 2 sends back slot 0 unchanged and moves slot 1 by +1.
      // slot 0: Δ = 0, m = 0.5·[2.5, −1.5] = [1.25, −0.75], next = [5.75, −0.25]; B: m = 1.25, next = 4.75.
      // slot 1: Δ = [1, 1], m = 0.5·[1, 1] + [1, 1] = [1.5, 1.5] (not 0.25·: round 2 kept it), next = [3.5, 3.5]; B: m = 0.5·4 + 1 = 3, next = 7.
      const r3 = round(server, [client(2, 1, [4.5, 0.5, 3, 3], [3.5, 5])], r2, 2);
      expect(get(r3, A)).to.deep.equal([5.75, -0.25, 3.5, 3.5]);
      expect(get(r3, B)).to.deep.equal([4.75, 7]);
      expect(server.serialize().meta).to.deep.equal({ beta: 0.5, eta: 1, steps: 3 });
    });

    it('β and η come from the spec options', () => {
      const s = fedAvgMStrategy({ name: 'fedavgm-test', beta: 0.25, eta: 2 });
      const server = s.createServer({ maxRank: 2, seed: 1 });
      const r1 = round(server, [client(2, 1, [3, 1, 2, 2], [2, 4])], start, 2);
      // m = Δ = [2, 0, 1, 1], next = prev + 2·m
      expect(get(r1, A)).to.deep.equal([5, 1, 3, 3]);
      const r2 = round(server, [client(2, 1, [5, 1, 3, 3], [4, 8])], r1, 2);
      // A: Δ = 0, m = 0.25·[2, 0, 1, 1], next = r1 + 2·m = [6, 1, 3.5, 3.5]
      expect(get(r2, A)).to.deep.equal([6, 1, 3.5, 3.5]);
      expect(() => fedAvgMStrategy({ beta: 1 })).to.throw(ConfigError, /beta/);
      expect(() => fedAvgMStrategy({ eta: 0 })).to.throw(ConfigError, /eta/);
    });

    it('without a trained-slot mask, step treats exactly the changed slots as trained', () => {
      const server = fedavgm.createServer({ maxRank: 2, seed: 1 });
      const avg: LoraAdapter = { config: start.config, tensors: new Map([[A, t([2, 2], [2, 0, 1, 1])], [B, t([1, 2], [1, 0])]]) };
      const next = server.step(start, avg);
      expect(get(next, A)).to.deep.equal([2, 0, 1, 1]);
      expect(get(server.serialize(), A)).to.deep.equal([1, -1, 0, 0]);
      expect(get(server.serialize(), B)).to.deep.equal([1, 0]);
      // a step that changes nothing counts as nobody training: values and momentum stay as they are
      const again = server.step(next, next);
      expect(sameBits(again, next)).to.equal(true);
      expect(get(server.serialize(), A)).to.deep.equal([1, -1, 0, 0]);
    });
  });

  describe('checkpointing', () => {
    const SHAPES = new Map([['layers.0.q', { in: 6, out: 5 }], ['layers.0.v', { in: 5, out: 7 }], ['layers.1.q', { in: 6, out: 5 }]]);
    const MAX = 4;
    const layer1 = (n: string) => n.includes('.layers.1.');
    // ranks below MAX and a personal layer, so untrained slots and per-group averages both occur
    const rounds: SimClient[][] = [
      [randomClient(SHAPES, 4, 2, 101), randomClient(SHAPES, 2, 1, 102, layer1), randomClient(SHAPES, 1, 3, 103)],
      [randomClient(SHAPES, 2, 1, 201), randomClient(SHAPES, 3, 2, 202, layer1)],
      [randomClient(SHAPES, 4, 1, 301, layer1), randomClient(SHAPES, 1, 5, 302)],
    ];
    function start(s: Strategy): LoraAdapter {
      const g = s.init(SHAPES, MAX, 8, 9, { ...BASE, targetModules: ['q', 'v'] });
      const next = rng(4);
      for (const [k, x] of g.tensors) if (parseLoraName(k)!.factor === 'B') x.data.set(randTensor(x.shape as [number, number], next).data);
      return g;
    }

    it('3 rounds straight equal 1 round, save through JSON, restore into a fresh server, 2 more rounds: bit for bit', () => {
      const straight = fedavgm.createServer({ maxRank: MAX, seed: 5 });
      let a = start(fedavgm);
      const trail: LoraAdapter[] = [];
      for (const cs of rounds) { a = round(straight, cs, a, MAX); trail.push(a); }

      const first = fedavgm.createServer({ maxRank: MAX, seed: 5 });
      let b = round(first, rounds[0]!, start(fedavgm), MAX);
      const saved = throughJson(first.serialize());
      expect(saved.tensors.size).to.equal(6);
      const resumed = fedavgm.createServer({ maxRank: MAX, seed: 5 });
      resumed.restore(saved);
      expect(sameBits({ config: b.config, tensors: resumed.serialize().tensors }, { config: b.config, tensors: first.serialize().tensors })).to.equal(true);
      b = round(resumed, rounds[1]!, b, MAX);
      expect(sameBits(b, trail[1]!)).to.equal(true);
      b = round(resumed, rounds[2]!, b, MAX);
      expect(sameBits(b, trail[2]!)).to.equal(true);
      expect(resumed.serialize().meta).to.deep.equal(straight.serialize().meta);
      expect(sameBits({ config: b.config, tensors: resumed.serialize().tensors }, { config: b.config, tensors: straight.serialize().tensors })).to.equal(true);
      // and momentum made a difference: a fresh server on round 3 lands elsewhere
      const fresh = round(fedavgm.createServer({ maxRank: MAX, seed: 5 }), rounds[2]!, trail[1]!, MAX);
      expect(sameBits(fresh, trail[2]!)).to.equal(false);
    });

    it('restore refuses state from another configuration and leaves the server untouched', () => {
      const server = fedavgm.createServer({ maxRank: MAX, seed: 5 });
      round(server, rounds[0]!, start(fedavgm), MAX);
      const good = server.serialize();
      const meta = good.meta as { beta: number; eta: number; steps: number };
      const target = fedavgm.createServer({ maxRank: MAX, seed: 5 });
      const bad: [string, SavedServerState][] = [
        ['beta', { meta: { ...meta, beta: 0.9 }, tensors: good.tensors }],
        ['eta', { meta: { ...meta, eta: 2 }, tensors: good.tensors }],
        ['steps', { meta: { ...meta, steps: -1 }, tensors: good.tensors }],
        ['meta', { meta: [1, 2], tensors: good.tensors }],
        ['not a shared', { meta, tensors: new Map([['base_model.model.x.weight', { shape: [MAX, 2], data: new Float32Array(2 * MAX) }]]) }],
        ['rank', { meta, tensors: new Map([[loraAName('layers.0.q'), { shape: [MAX + 1, 6], data: new Float32Array(6 * MAX + 6) }]]) }],
        ['non-finite', { meta, tensors: new Map([[loraAName('layers.0.q'), { shape: [MAX, 6], data: new Float32Array(6 * MAX).fill(NaN) }]]) }],
      ];
      for (const [why, s] of bad) expect(() => target.restore(s), why).to.throw(ConfigError);
      expect(target.serialize()).to.deep.equal({ meta: { beta: 0.5, eta: 1, steps: 0 }, tensors: new Map() });
      const linear = getStrategy('rank-aware').createServer({ maxRank: MAX, seed: 5 });
      expect(() => linear.restore(good), 'a linear strategy has no momentum to restore').to.throw(ConfigError, /no server state/);
    });

    it('refuses momentum for tensors the global adapter lacks', () => {
      const server = fedavgm.createServer({ maxRank: MAX, seed: 5 });
      const g = start(fedavgm);
      round(server, rounds[0]!, g, MAX);
      const smaller: TensorMap = new Map([...g.tensors].filter(([k]) => !k.includes('.layers.1.')));
      expect(() => server.step({ config: g.config, tensors: smaller }, { config: g.config, tensors: smaller })).to.throw(ConfigError, /momentum for/);
    });
  });
});
