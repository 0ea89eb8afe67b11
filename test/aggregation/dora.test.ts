/**
 * DoRA magnitude vectors in aggregation: shared under every linear strategy, no rank slots (layout
 * slot −1, no padding), averaged by example count over the clients that share them, kept by the
 * refactor, passed through by server optimisers and fedavgm as the plain average.
 */
import { expect } from 'chai';
import {
  aggregatePlain, aggregateRound, elementSlots, flatten, getStrategy, initLoraAdapter, makeLayout, refactorAdapter, serverOptimizerOf, sharedLayout, type RoundContributor,
} from '../../shared/aggregation/index.js';
import { loraBName, loraMName, type LoraAdapter } from '../../shared/lora/adapter.js';
import { parseScenario } from '../../simulations/scenario.js';
import type { TensorMap } from '../../shared/tensor.js';

const SEED = 9;
const SHAPES = new Map([['model.layers.0.self_attn.q_proj', { in: 6, out: 5 }], ['model.layers.0.mlp.up_proj', { in: 6, out: 7 }]]);

/** A seeded DoRA global at maxRank 4: A from the init, B small, magnitudes around 1. */
function global(): LoraAdapter {
  const g = initLoraAdapter(SHAPES, 4, 8, SEED, { targetModules: ['q_proj', 'up_proj'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' });
  const tensors: TensorMap = new Map(g.tensors);
  for (const [m, s] of SHAPES) tensors.set(loraMName(m), { shape: [s.out], data: Float32Array.from({ length: s.out }, (_, i) => 1 + 0.1 * i) });
  return { config: { ...g.config, useDora: true }, tensors };
}

/** The update of a client at `rank`: every shared tensor shifted by `d` (magnitudes included). */
function update(g: LoraAdapter, rank: number, d: number): TensorMap {
  const out: TensorMap = new Map();
  for (const [k, t] of g.tensors) {
    const shape = k.endsWith('lora_A.weight') ? [rank, t.shape[1]!] : k.endsWith('lora_B.weight') ? [t.shape[0]!, rank] : [...t.shape];
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    const cols = shape[1] ?? 1, gcols = t.shape[1] ?? 1;
    for (let i = 0; i < data.length; i++) data[i] = t.data[Math.floor(i / cols) * gcols + (i % cols)]! + d;
    out.set(k, { shape, data });
  }
  return out;
}

describe('DoRA magnitudes in aggregation', () => {
  before(() => console.log(`      seed ${SEED}`));

  it('are shared, trainable and never strategy-personal under every linear strategy; their layout entries have no rank slots', () => {
    const g = global();
    for (const name of ['fedit', 'ffa', 'rank-aware', 'fedsa', 'fedavgm']) {
      const s = getStrategy(name);
      for (const m of SHAPES.keys()) {
        expect(s.isShared(loraMName(m)), name).to.equal(true);
        expect(s.isTrainable(loraMName(m)), name).to.equal(true);
        expect(s.isPersonal(loraMName(m)), name).to.equal(false);
      }
      const layout = sharedLayout(s, g);
      const slots = elementSlots(layout);
      for (const e of layout.entries) if (e.name.endsWith('lora_magnitude_vector')) for (let k = e.offset; k < e.offset + e.size; k++) expect(slots[k]).to.equal(-1);
    }
  });

  it('contribution: weight × values, no padding; malformed or non-finite magnitudes are refused', () => {
    const s = getStrategy('rank-aware');
    const name = loraMName('model.layers.0.self_attn.q_proj');
    const c = s.contribution(name, { shape: [5], data: Float32Array.of(1, 2, 3, 4, 5) }, 3, 4);
    expect(c.shape).to.deep.equal([5]);
    expect([...c.data]).to.deep.equal([3, 6, 9, 12, 15]);
    expect(() => s.contribution(name, { shape: [5, 1], data: new Float32Array(5) }, 1, 4)).to.throw(/must be a vector/);
    expect(() => s.contribution(name, { shape: [2], data: Float32Array.of(1, NaN) }, 1, 4)).to.throw(/non-finite/);
    expect(() => s.contribution(name, { shape: [2], data: Float32Array.of(1, 2) }, -1, 4)).to.throw(/weight/);
  });

  for (const name of ['fedit', 'rank-aware', 'ffa', 'fedsa']) {
    it(`${name}: plain aggregation gives Σ wᵢ mᵢ / Σ wᵢ over all participants, whatever their ranks`, () => {
      const g = global();
      const out = aggregatePlain(getStrategy(name), [{ tensors: update(g, 2, 0.5), rank: 2, weight: 1 }, { tensors: update(g, 4, -0.25), rank: 4, weight: 3 }], g, 4);
      for (const m of SHAPES.keys()) {
        const prev = g.tensors.get(loraMName(m))!.data, got = out.tensors.get(loraMName(m))!.data;
        for (let i = 0; i < got.length; i++) expect(got[i]).to.be.closeTo(prev[i]! + (0.5 * 1 - 0.25 * 3) / 4, 1e-6);
      }
      expect(out.config.useDora).to.equal(true);
    });
  }

  it('aggregateRound (the secure path): a client keeping its magnitudes personal drops out of their average only', () => {
    const g = global();
    const s = getStrategy('rank-aware');
    const layout = sharedLayout(s, g);
    const keepsMag = (n: string) => n.endsWith('lora_magnitude_vector');
    const ups = [{ t: update(g, 2, 1), rank: 2, weight: 2, personal: keepsMag }, { t: update(g, 4, -1), rank: 4, weight: 6, personal: () => false }];
    const sum = new Float64Array(layout.size);
    for (const u of ups) {
      const parts: TensorMap = new Map();
      for (const e of layout.entries) parts.set(e.name, u.personal(e.name) ? { shape: [...e.shape], data: new Float32Array(e.size) } : s.contribution(e.name, u.t.get(e.name)!, u.weight, 4));
      const v = flatten(parts, layout);
      for (let i = 0; i < v.length; i++) sum[i] = sum[i]! + v[i]!;
    }
    const contributors: RoundContributor[] = ups.map((u) => ({ rank: u.rank, weight: u.weight, personal: u.personal }));
    const next = aggregateRound(s.createServer({ maxRank: 4, seed: SEED }), { sum: Float32Array.from(sum), layout, contributors, previous: g, maxRank: 4, refactor: true, keepUnrotated: () => false });
    for (const m of SHAPES.keys()) {
      const prev = g.tensors.get(loraMName(m))!.data, got = next.tensors.get(loraMName(m))!.data;
      for (let i = 0; i < got.length; i++) expect(got[i]).to.be.closeTo(prev[i]! - 1, 1e-6); // client 1's alone
      // B slot 0 is averaged over both (weights 2 and 6); the refactor may rotate it, the magnitude is never touched by it
    }
    expect(makeLayout(layout.entries).size).to.equal(layout.size);
  });

  it('the refactor keeps magnitudes bit-exactly; fedavgm and server optimisers pass them through as the plain average', () => {
    const g = global();
    const r = refactorAdapter(g);
    for (const m of SHAPES.keys()) expect(Buffer.from(r.tensors.get(loraMName(m))!.data.buffer).equals(Buffer.from(g.tensors.get(loraMName(m))!.data.buffer))).to.equal(true);
    const averaged = aggregatePlain(getStrategy('fedavgm'), [{ tensors: update(g, 4, 0.5), rank: 4, weight: 1 }], g, 4);
    const stepped = getStrategy('fedavgm').createServer({ maxRank: 4, seed: SEED }).step(g, averaged);
    const optServer = getStrategy('rank-aware').createServer({ maxRank: 4, seed: SEED, optimizer: { name: 'fedadam' } } as never);
    expect(serverOptimizerOf(optServer)?.name).to.equal('fedadam');
    const withOpt = optServer.step(g, averaged);
    for (const m of SHAPES.keys()) {
      const want = averaged.tensors.get(loraMName(m))!.data;
      expect([...stepped.tensors.get(loraMName(m))!.data]).to.deep.equal([...want]);
      expect([...withOpt.tensors.get(loraMName(m))!.data]).to.deep.equal([...want]);
      expect(stepped.tensors.get(loraBName(m))).to.not.equal(undefined);
    }
  });

  it('scenarios take a dora flag (default false) and refuse a non-boolean', () => {
    expect(parseScenario({}).dora).to.equal(false);
    expect(parseScenario({ dora: true }).dora).to.equal(true);
    expect(() => parseScenario({ dora: 'yes' })).to.throw(/dora/);
    expect(() => parseScenario({ dora: true, compare: ['fedit', 'lora-xs'] })).to.throw(/DoRA needs plain LoRA A\/B adapters; lora-xs cannot run with it/);
    expect(parseScenario({ dora: false, compare: ['lora-xs'] }).compare).to.deep.equal(['lora-xs']);
  });
});
