/**
 * Server optimisers (shared/aggregation/server-opt.ts): exactness against the plain strategies,
 * hand-computed FedAdam / FedYogi steps, the trained-slot rule, moment rotation across a refactor,
 * and checkpoint round trips.
 */
import { expect } from 'chai';
import {
  aggregateRound, checkServerOpt, fedAvgMStrategy, getStrategy, serverOptimizerOf, strategyNames,
  type JsonValue, type ModuleTransforms, type SavedServerState, type ServerOptConfig, type Strategy, type StrategyServer,
} from '../../shared/aggregation/index.js';
import { ConfigError } from '../../shared/errors.js';
import { adapterModules, loraAName, loraBName, parseLoraName, type LoraAdapter, type LoraConfig } from '../../shared/lora/adapter.js';
import type { Tensor32, TensorMap } from '../../shared/tensor.js';
import { randTensor, rng } from './helpers.js';
import { contributorsOf, flatSum, randomClient, sameBits, throughJson, type SimClient } from './round-helpers.js';

const BASE: Omit<LoraConfig, 'r' | 'loraAlpha'> = { targetModules: ['q', 'v'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' };
const SHAPES = new Map([['layers.0.q', { in: 6, out: 5 }], ['layers.0.v', { in: 5, out: 7 }], ['layers.1.q', { in: 6, out: 5 }]]);
const MAX = 4;
const SEED = 20261202;
const layer1 = (n: string) => n.includes('.layers.1.');

function t(shape: [number, number], v: number[]): Tensor32 { return { shape, data: Float32Array.from(v) }; }
const get = (x: { tensors: TensorMap }, n: string) => [...x.tensors.get(n)!.data];

function round(server: StrategyServer, clients: readonly SimClient[], previous: LoraAdapter, maxRank: number, refactor = true): LoraAdapter {
  const { sum, layout } = flatSum(server.strategy, clients, previous, maxRank);
  return aggregateRound(server, { sum, layout, contributors: contributorsOf(clients), previous, maxRank, refactor, keepUnrotated: () => false });
}

/** The strategy's init with random B, so B·A ≠ 0 and the refactor has something to rotate. */
function start(s: Strategy, seed = 4): LoraAdapter {
  const g = s.init(SHAPES, MAX, 8, 9, BASE);
  const next = rng(seed);
  for (const [k, x] of g.tensors) if (parseLoraName(k)!.factor === 'B') x.data.set(randTensor(x.shape as [number, number], next).data);
  return g;
}

/** Clients that stay close to the global they start from, as trained clients do (ranks below MAX, a personal layer). */
function roundsFrom(seed: number, n: number): (global: LoraAdapter) => SimClient[][] {
  return (global) => Array.from({ length: n }, (_, r) => {
    const specs: [number, number, ((name: string) => boolean) | undefined][] = [[4, 2, undefined], [2, 1, layer1], [1, 3, undefined], [3, 2, undefined]];
    return specs.filter((_, i) => (i + r) % 4 !== 3).map(([rank, weight, personal], i) => {
      const c = randomClient(SHAPES, rank, weight, seed + 100 * r + i, personal);
      // client = truncated global + small update
      for (const [k, x] of c.tensors) {
        const g = global.tensors.get(k)!;
        const p = parseLoraName(k)!;
        for (let e = 0; e < x.data.length; e++) {
          const gi = p.factor === 'A' ? e : Math.floor(e / rank) * MAX + (e % rank);
          x.data[e] = g.data[gi]! + 0.05 * x.data[e]!;
        }
      }
      return c;
    });
  });
}

function optServer(s: Strategy, optimizer: ServerOptConfig, maxRank = MAX): StrategyServer {
  return s.createServer({ maxRank, seed: 5, optimizer });
}

describe('server optimisers', () => {
  before(() => console.log(`      seed ${SEED}`));

  describe('configuration', () => {
    it('fills in the documented defaults and refuses bad values with ConfigErrors naming the field', () => {
      expect(checkServerOpt({ name: 'none' })).to.equal(null);
      expect(checkServerOpt({ name: 'fedavgm' })).to.deep.equal({ name: 'fedavgm', lr: 1, beta1: 0.5 });
      expect(checkServerOpt({ name: 'fedadam' })).to.deep.equal({ name: 'fedadam', lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-3 });
      expect(checkServerOpt({ name: 'fedyogi', lr: 0.1, eps: 1e-4 })).to.deep.equal({ name: 'fedyogi', lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-4 });
      const bad: [unknown, RegExp][] = [
        [null, /serverOpt must be an object/], [{ name: 'sgd' }, /serverOpt.name/], [{ name: 'fedadam', lr: 0 }, /serverOpt.lr/],
        [{ name: 'fedadam', lr: NaN }, /serverOpt.lr/], [{ name: 'fedadam', beta1: 1 }, /serverOpt.beta1/], [{ name: 'fedyogi', beta2: -0.1 }, /serverOpt.beta2/],
        [{ name: 'fedadam', eps: 0 }, /serverOpt.eps/], [{ name: 'fedavgm', beta2: 0.9 }, /serverOpt.beta2 has no meaning for server optimiser fedavgm/],
        [{ name: 'none', lr: 1 }, /serverOpt.lr has no meaning/], [{ name: 'fedadam', lr: '0.1' }, /serverOpt.lr/], [{ name: 'fedadam', momentum: 1 }, /serverOpt.momentum/],
      ];
      for (const [cfg, re] of bad) expect(() => checkServerOpt(cfg), JSON.stringify(cfg)).to.throw(ConfigError, re);
      expect(() => getStrategy('rank-aware').createServer({ maxRank: MAX, seed: 1, optimizer: { name: 'fedadam', beta1: 2 } })).to.throw(ConfigError, /beta1/);
      // the fedavgm strategy already carries server momentum: stacking an optimiser on it is refused
      expect(() => optServer(getStrategy('fedavgm'), { name: 'fedadam' })).to.throw(ConfigError, /own server state/);
      expect(serverOptimizerOf(optServer(getStrategy('fedit'), { name: 'fedyogi', lr: 0.5 }))).to.deep.equal({ name: 'fedyogi', lr: 0.5, beta1: 0.9, beta2: 0.99, eps: 1e-3 });
      expect(serverOptimizerOf(getStrategy('fedit').createServer({ maxRank: MAX, seed: 1, optimizer: { name: 'none' } }))).to.equal(null);
    });
  });

  describe('(a) fedavgm with server lr 1 and β 0 equals the plain strategy bit for bit', () => {
    // every built-in linear strategy must compose; strategies registered elsewhere either compose exactly or refuse clearly
    const LINEAR = ['fedit', 'ffa', 'rank-aware', 'fedsa'];
    it('covers the built-in linear strategies', () => expect(strategyNames()).to.include.members(LINEAR));
    for (const name of strategyNames()) {
      it(`${name}: 4 rounds, refactor on, heterogeneous ranks, a personal layer`, () => {
        const s = getStrategy(name);
        const plainServer = s.createServer({ maxRank: MAX, seed: 5 });
        const stateless = plainServer.serialize().tensors.size === 0 && JSON.stringify(plainServer.serialize().meta) === '{}';
        if (!stateless) {
          // a strategy with its own server state (fedavgm) refuses a second optimiser; its own test covers it
          expect(() => optServer(s, { name: 'fedavgm', lr: 1, beta1: 0 })).to.throw(ConfigError, /own server state/);
          return;
        }
        let opt: StrategyServer;
        try {
          opt = optServer(s, { name: 'fedavgm', lr: 1, beta1: 0 });
        } catch (e) {
          expect(LINEAR, `${name} refused: ${String(e)}`).to.not.include(name);
          expect(e).to.be.instanceOf(ConfigError);
          return;
        }
        const clients = roundsFrom(SEED, 4);
        let a = start(s), b = start(s);
        for (let r = 0; r < 4; r++) {
          const cs = clients(a)[r]!;
          a = round(plainServer, cs, a, MAX);
          b = round(opt, cs, b, MAX);
          expect(sameBits(a, b), `round ${r + 1}`).to.equal(true);
        }
        expect(opt.serialize().tensors.size).to.be.greaterThan(0);
      });
    }
  });

  it('rank-aware + fedavgm optimiser (β 0.5, lr 1, no refactor) agrees with the fedavgm strategy to float32 rounding', () => {
    const legacy = getStrategy('fedavgm').createServer({ maxRank: MAX, seed: 5 });
    const opt = optServer(getStrategy('rank-aware'), { name: 'fedavgm', lr: 1, beta1: 0.5 });
    const clients = roundsFrom(SEED + 1, 3);
    let a = start(getStrategy('fedavgm')), b = start(getStrategy('rank-aware'));
    let worst = 0;
    for (let r = 0; r < 3; r++) {
      const cs = clients(a)[r]!;
      a = round(legacy, cs, a, MAX, true); // fedavgm is never refactored
      b = round(opt, cs, b, MAX, false);
      for (const [k, x] of a.tensors) {
        const y = b.tensors.get(k)!.data;
        for (let i = 0; i < x.data.length; i++) worst = Math.max(worst, Math.abs(x.data[i]! - y[i]!) / Math.max(1e-3, Math.abs(x.data[i]!)));
      }
    }
    // the strategy rounds its momentum to float32 before the step, the optimiser after it
    expect(worst).to.be.below(1e-5);
  });

  describe('(b) hand-computed steps: one module in=2 out=1, max rank 2, one client at rank 2 (rank-aware, no refactor)', () => {
    const A = loraAName('m'), B = loraBName('m');
    const cfg: LoraConfig = { ...BASE, targetModules: ['m'], r: 2, loraAlpha: 4 };
    const prev0: LoraAdapter = { config: cfg, tensors: new Map([[A, t([2, 2], [1, 1, 1, 1])], [B, t([1, 2], [0, 0])]]) };
    const client = (a: number[], b: number[]): SimClient => ({ rank: 2, weight: 3, personal: () => false, tensors: new Map([[A, t([2, 2], a)], [B, t([1, 2], b)]]) });
    const f = Math.fround;

    it('fedadam: m = 0.1Δ, v = 0.99τ² + 0.01Δ², x = prev + η m/(√v + τ); the second step carries both moments', () => {
      const server = optServer(getStrategy('rank-aware'), { name: 'fedadam' }, 2);
      // round 1: Δ_A = [0.5, −0.25, 0, 2], Δ_B = [0.125, −1]
      const r1 = round(server, [client([1.5, 0.75, 1, 3], [0.125, -1])], prev0, 2, false);
      const tau = 1e-3, eta = 1e-2;
      const step1 = (x: number, d: number) => {
        const m = 0.1 * d, v = 0.99 * tau * tau + 0.01 * d * d;
        return { x: f(x + (eta * m) / (Math.sqrt(v) + tau)), m: f(m), v: f(v) };
      };
      const eA = [[1, 0.5], [1, -0.25], [1, 0], [1, 2]].map(([x, d]) => step1(x!, d!));
      const eB = [[0, 0.125], [0, -1]].map(([x, d]) => step1(x!, d!));
      expect(get(r1, A)).to.deep.equal(eA.map((e) => e.x));
      expect(get(r1, B)).to.deep.equal(eB.map((e) => e.x));
      // by hand: Δ = 0.5 → m = 0.05, v = 0.99e-6 + 0.0025 = 0.00250099, step = 0.01·0.05/(0.0500099 + 0.001) ≈ 0.0098020
      expect(get(r1, A)[0]).to.be.closeTo(1 + 0.0098020, 1e-6);
      // Δ = 0: m = 0, the entry stays; v decays toward 0 from τ²
      expect(get(r1, A)[2]).to.equal(1);
      const s1 = server.serialize();
      expect(s1.meta).to.deep.equal({ serverOptimizer: { name: 'fedadam', lr: 0.01, beta1: 0.9, beta2: 0.99, eps: 0.001, steps: 1 }, inner: {} });
      expect(get(s1, `server_opt.m:${A}`)).to.deep.equal(eA.map((e) => e.m));
      expect(get(s1, `server_opt.v:${B}`)).to.deep.equal(eB.map((e) => e.v));

      // round 2: the client sends back r1 + [0.01, 0, 0, 0] in A and r1 in B (Δ_B = 0: m decays, x still moves)
      const a2 = get(r1, A); a2[0] = f(a2[0]! + 0.01);
      const r2 = round(server, [client(a2, get(r1, B))], r1, 2, false);
      const step2 = (x: number, d: number, m0: number, v0: number) => {
        const m = 0.9 * m0 + 0.1 * d, v = 0.99 * v0 + 0.01 * d * d;
        return f(x + (eta * m) / (Math.sqrt(v) + tau));
      };
      const dA0 = a2[0]! - get(r1, A)[0]!;
      expect(get(r2, A)).to.deep.equal([
        step2(get(r1, A)[0]!, dA0, eA[0]!.m, eA[0]!.v), step2(get(r1, A)[1]!, 0, eA[1]!.m, eA[1]!.v),
        step2(get(r1, A)[2]!, 0, eA[2]!.m, eA[2]!.v), step2(get(r1, A)[3]!, 0, eA[3]!.m, eA[3]!.v),
      ]);
      expect(get(r2, B)).to.deep.equal([step2(get(r1, B)[0]!, 0, eB[0]!.m, eB[0]!.v), step2(get(r1, B)[1]!, 0, eB[1]!.m, eB[1]!.v)]);
    });

    it('fedyogi: v ← v − (1−β2)Δ² sign(v − Δ²): grows like Adam when Δ² > v, shrinks additively (not by 0.99·v) when Δ² < v', () => {
      const server = optServer(getStrategy('rank-aware'), { name: 'fedyogi', lr: 0.5, beta1: 0.5, beta2: 0.9, eps: 0.25 }, 2);
      // τ = 0.25 → v₀ = 0.0625. Δ_A = [0.5, 0.125, 0, 1]: Δ² = [0.25, 0.015625, 0, 1]
      const r1 = round(server, [client([1.5, 1.125, 1, 2], [0, 0])], prev0, 2, false);
      // entry 0: Δ² = 0.25 > v₀: v = 0.0625 + 0.1·0.25 = 0.0875, m = 0.25, x = 1 + 0.5·0.25/(√0.0875 + 0.25)
      // entry 1: Δ² = 0.015625 < v₀: v = 0.0625 − 0.1·0.015625 = 0.0609375, m = 0.0625, x = 1 + 0.5·0.0625/(√0.0609375 + 0.25)
      // entry 2: Δ = 0: v = v₀ − 0 = 0.0625 (Adam would decay it to 0.05625), m = 0, x = 1
      // entry 3: Δ² = 1: v = 0.0625 + 0.1 = 0.1625, m = 0.5, x = 1 + 0.25/(√0.1625 + 0.25)
      expect(get(r1, A)).to.deep.equal([
        f(1 + 0.125 / (Math.sqrt(0.0875) + 0.25)), f(1 + 0.03125 / (Math.sqrt(0.0609375) + 0.25)), 1, f(1 + 0.25 / (Math.sqrt(0.1625) + 0.25)),
      ]);
      expect(get(server.serialize(), `server_opt.v:${A}`)).to.deep.equal([f(0.0875), f(0.0609375), 0.0625, f(0.1625)]);
      // B: Δ = 0 everywhere and trained: x stays 0, v stays τ², m stays 0
      expect(get(r1, B)).to.deep.equal([0, 0]);
      expect(get(server.serialize(), `server_opt.v:${B}`)).to.deep.equal([0.0625, 0.0625]);
    });
  });

  it('(c) only slots somebody trained move; the others keep value and moments, also across later rounds', () => {
    for (const name of ['fedadam', 'fedyogi', 'fedavgm'] as const) {
      const s = getStrategy('fedit');
      const server = optServer(s, { name });
      const g0 = start(s);
      // round 1: ranks 1 and 2 only → slots 2, 3 untrained
      const r1 = round(server, [randomClient(SHAPES, 2, 1, SEED + 7), randomClient(SHAPES, 1, 2, SEED + 8)], g0, MAX, false);
      const st = server.serialize();
      for (const [k, x] of g0.tensors) {
        const p = parseLoraName(k)!;
        const cols = x.shape[1]!;
        const y = r1.tensors.get(k)!.data, m = st.tensors.get(`server_opt.m:${k}`)!.data;
        const v = st.tensors.get(`server_opt.v:${k}`)?.data;
        for (let i = 0; i < x.data.length; i++) {
          const slot = p.factor === 'A' ? Math.floor(i / cols) : i % cols;
          if (slot >= 2) {
            expect(Object.is(y[i], x.data[i]), `${name} ${k}[${i}] value`).to.equal(true);
            expect(m[i], `${name} ${k}[${i}] m`).to.equal(0);
            if (v) expect(v[i]).to.equal(Math.fround(1e-6));
          } else {
            expect(m[i], `${name} ${k}[${i}] m`).to.not.equal(0);
          }
        }
      }
      // round 2: rank 1 alone → slot 1 keeps its round-1 moments bit for bit
      round(server, [randomClient(SHAPES, 1, 1, SEED + 9), randomClient(SHAPES, 1, 1, SEED + 10)], r1, MAX, false);
      const st2 = server.serialize();
      for (const k of g0.tensors.keys()) {
        const p = parseLoraName(k)!;
        const shape = g0.tensors.get(k)!.shape;
        const a1 = st.tensors.get(`server_opt.m:${k}`)!.data, a2 = st2.tensors.get(`server_opt.m:${k}`)!.data;
        for (let i = 0; i < a1.length; i++) {
          const slot = p.factor === 'A' ? Math.floor(i / shape[1]!) : i % shape[1]!;
          if (slot >= 1) expect(Object.is(a1[i], a2[i]), `${name} ${k}[${i}]`).to.equal(true);
        }
      }
    }
  });

  describe('(d) moment rotation across the refactor', () => {
    /** x in the new basis: A ← tA·A, B ← B·tB per transformed module (float64, rounded once). */
    function transform(x: LoraAdapter, tr: ModuleTransforms): LoraAdapter {
      const tensors: TensorMap = new Map([...x.tensors].map(([k, v]) => [k, { shape: [...v.shape], data: new Float32Array(v.data) }]));
      for (const [module, { r, tA, tB }] of tr) {
        const a = x.tensors.get(loraAName(module))!, b = x.tensors.get(loraBName(module))!;
        const inF = a.shape[1]!, out = b.shape[0]!;
        const na = new Float32Array(a.data.length), nb = new Float32Array(b.data.length);
        for (let i = 0; i < r; i++) for (let j = 0; j < inF; j++) { let s = 0; for (let k = 0; k < r; k++) s += tA![i * r + k]! * a.data[k * inF + j]!; na[i * inF + j] = s; }
        for (let i = 0; i < out; i++) for (let j = 0; j < r; j++) { let s = 0; for (let k = 0; k < r; k++) s += b.data[i * r + k]! * tB[k * r + j]!; nb[i * r + j] = s; }
        tensors.set(loraAName(module), { shape: [...a.shape], data: na });
        tensors.set(loraBName(module), { shape: [...b.shape], data: nb });
      }
      return { config: x.config, tensors };
    }

    /** A server that records the transforms aggregateRound hands to rebase. */
    function recording(inner: StrategyServer): { server: StrategyServer; seen: ModuleTransforms[] } {
      const seen: ModuleTransforms[] = [];
      return {
        seen,
        server: {
          strategy: inner.strategy, step: (p, a, tr) => inner.step(p, a, tr), serialize: () => inner.serialize(), restore: (s) => inner.restore(s),
          rebase: (tr) => { seen.push(tr); inner.rebase!(tr); },
        },
      };
    }

    it('the refactor\'s transforms relate old and new factors: B\' = B·tB, A\' = tA·A, tB·tA = I', () => {
      const s = getStrategy('rank-aware');
      const { server, seen } = recording(optServer(s, { name: 'fedavgm' }));
      const g0 = start(s);
      const plain = round(s.createServer({ maxRank: MAX, seed: 5 }), roundsFrom(SEED + 2, 1)(g0)[0]!, g0, MAX, false);
      const stepped = optServer(s, { name: 'fedavgm' }).step(g0, plain); // the first step of a fresh fedavgm is lr·Δ = Δ: the average
      const refd = round(server, roundsFrom(SEED + 2, 1)(g0)[0]!, g0, MAX, true);
      expect(seen).to.have.length(1);
      // layer 1 is personal to a client: left unrotated, so no transform for it
      expect([...seen[0]!.keys()].sort()).to.deep.equal(adapterModules(g0).filter((m) => !m.includes('layers.1.')).sort());
      const via = transform(stepped, seen[0]!);
      let worst = 0;
      for (const [k, x] of refd.tensors) {
        const y = via.tensors.get(k)!.data;
        for (let i = 0; i < x.data.length; i++) worst = Math.max(worst, Math.abs(x.data[i]! - y[i]!));
      }
      expect(worst).to.be.below(1e-5);
      for (const { r, tA, tB } of seen[0]!.values()) {
        for (let i = 0; i < r; i++) for (let j = 0; j < r; j++) {
          let sum = 0;
          for (let k = 0; k < r; k++) sum += tB[i * r + k]! * tA![k * r + j]!;
          expect(sum).to.be.closeTo(i === j ? 1 : 0, 1e-9);
        }
      }
    });

    it('fedavgm (linear in m): after a refactor by T, the rotated momentum gives T·(the step un-refactored bookkeeping gives)', () => {
      // Property: let U run without refactor and R with it. After round 1, R's adapter and momentum
      // are T·(U's). If round 2's average reaching R is T·(the average reaching U), R's step is T·(U's step).
      const s = getStrategy('rank-aware');
      const U = optServer(s, { name: 'fedavgm', lr: 1, beta1: 0.5 });
      const rec = recording(optServer(s, { name: 'fedavgm', lr: 1, beta1: 0.5 }));
      const g0 = start(s);
      const cs = roundsFrom(SEED + 3, 2)(g0);
      const u1 = round(U, cs[0]!, g0, MAX, false);
      const r1 = round(rec.server, cs[0]!, g0, MAX, true);
      const T = rec.seen[0]!;
      expect(sameBits(r1, u1)).to.equal(false);
      const avg2 = round(s.createServer({ maxRank: MAX, seed: 5 }), cs[1]!, u1, MAX, false);
      const u2 = U.step(u1, avg2);
      const r2 = rec.server.step(r1, transform(avg2, T));
      const want = transform(u2, T);
      let worst = 0, scale = 0;
      for (const [k, x] of r2.tensors) {
        const y = want.tensors.get(k)!.data;
        for (let i = 0; i < x.data.length; i++) { worst = Math.max(worst, Math.abs(x.data[i]! - y[i]!)); scale = Math.max(scale, Math.abs(y[i]!)); }
      }
      expect(worst / scale).to.be.below(1e-5);
      // without the rotation (moments left in the old basis) the step lands elsewhere
      const stale = optServer(s, { name: 'fedavgm', lr: 1, beta1: 0.5 });
      stale.restore(U.serialize());
      const wrong = stale.step(r1, transform(avg2, T));
      let off = 0;
      for (const [k, x] of wrong.tensors) { const y = want.tensors.get(k)!.data; for (let i = 0; i < x.data.length; i++) off = Math.max(off, Math.abs(x.data[i]! - y[i]!)); }
      expect(off / scale).to.be.above(1e-3);
    });

    it('fedadam / fedyogi: for a slot permutation with sign flips (where (T∘T)·v is exact) the rotated state steps bit for bit like T·(un-refactored)', () => {
      for (const name of ['fedadam', 'fedyogi'] as const) {
        const s = getStrategy('fedit');
        const U = optServer(s, { name, lr: 0.05 });
        const R = optServer(s, { name, lr: 0.05 });
        const g0 = start(s);
        const cs = roundsFrom(SEED + 4, 2)(g0);
        const u1 = round(U, cs[0]!, g0, MAX, false);
        round(R, cs[0]!, g0, MAX, false);
        // T: slots (0 1 2 3) → (2 0 3 1) with signs; tB = P·S, tA = (P·S)⁻¹ = S·Pᵀ
        const perm = [2, 0, 3, 1], sign = [1, -1, -1, 1];
        const tB = new Float64Array(MAX * MAX), tA = new Float64Array(MAX * MAX);
        for (let i = 0; i < MAX; i++) { tB[i * MAX + perm[i]!] = sign[i]!; tA[perm[i]! * MAX + i] = sign[i]!; }
        const T: ModuleTransforms = new Map(adapterModules(g0).map((m) => [m, { r: MAX, tA, tB }]));
        R.rebase!(T);
        const avg2 = round(s.createServer({ maxRank: MAX, seed: 5 }), cs[1]!, u1, MAX, false);
        const u2 = U.step(u1, avg2);
        const r2 = R.step(transform(u1, T), transform(avg2, T));
        expect(sameBits(r2, transform(u2, T)), name).to.equal(true);
      }
    });

    it('a module whose A is rank-deficient has no tA: its moments are reset, the others rotated', () => {
      const s = getStrategy('fedit');
      const server = optServer(s, { name: 'fedadam' });
      const g0 = start(s);
      round(server, roundsFrom(SEED + 5, 1)(g0)[0]!, g0, MAX, false);
      const before = server.serialize();
      const id = new Float64Array(MAX * MAX);
      for (let i = 0; i < MAX; i++) id[i * MAX + i] = 1;
      server.rebase!(new Map([['layers.0.q', { r: MAX, tA: null, tB: id }], ['layers.0.v', { r: MAX, tA: id, tB: id }]]));
      const after = server.serialize();
      expect([...after.tensors.keys()].filter((k) => k.includes('layers.0.q'))).to.deep.equal([]);
      for (const k of [...before.tensors.keys()].filter((x) => !x.includes('layers.0.q'))) expect(get(after, k), k).to.deep.equal(get(before, k));
      expect(() => server.rebase!(new Map([['layers.0.v', { r: 3, tA: id, tB: id }]]))).to.throw(ConfigError, /not 4×4/);
    });
  });

  describe('(e) checkpointing', () => {
    for (const cfg of [{ name: 'fedadam' }, { name: 'fedyogi', lr: 0.03 }, { name: 'fedavgm', beta1: 0.7 }] as ServerOptConfig[]) {
      it(`${cfg.name}: 4 rounds straight equal 2 rounds, save through JSON, restore into a fresh server, 2 more (refactor on): bit for bit`, () => {
        const s = getStrategy('rank-aware');
        const clients = roundsFrom(SEED + 6, 4);
        const straight = optServer(s, cfg);
        let a = start(s);
        const trail: LoraAdapter[] = [];
        const rounds: SimClient[][] = [];
        for (let r = 0; r < 4; r++) { rounds.push(clients(a)[r]!); a = round(straight, rounds[r]!, a, MAX); trail.push(a); }
        const first = optServer(s, cfg);
        let b = start(s);
        for (let r = 0; r < 2; r++) b = round(first, rounds[r]!, b, MAX);
        const saved = throughJson(first.serialize());
        const resumed = optServer(s, cfg);
        resumed.restore(saved);
        expect(sameBits({ config: b.config, tensors: resumed.serialize().tensors }, { config: b.config, tensors: first.serialize().tensors })).to.equal(true);
        for (let r = 2; r < 4; r++) { b = round(resumed, rounds[r]!, b, MAX); expect(sameBits(b, trail[r]!), `round ${r + 1}`).to.equal(true); }
        expect(resumed.serialize().meta).to.deep.equal(straight.serialize().meta);
        // the state made a difference: a fresh optimiser on round 4 lands elsewhere
        expect(sameBits(round(optServer(s, cfg), rounds[3]!, trail[2]!, MAX), trail[3]!)).to.equal(false);
      });
    }

    it('restore refuses other hyper-parameters, a missing or foreign optimiser, and bad tensors, naming them; the server is left as it was', () => {
      const s = getStrategy('rank-aware');
      const server = optServer(s, { name: 'fedadam' });
      round(server, roundsFrom(SEED + 7, 1)(start(s))[0]!, start(s), MAX);
      const good = server.serialize();
      const meta = good.meta as { serverOptimizer: Record<string, JsonValue>; inner: JsonValue };
      const target = optServer(s, { name: 'fedadam' });
      const fresh = target.serialize();
      const A0 = loraAName('layers.0.q');
      const withMeta = (so: Record<string, JsonValue>): SavedServerState => ({ meta: { ...meta, serverOptimizer: { ...meta.serverOptimizer, ...so } }, tensors: good.tensors });
      const bad: [string, SavedServerState, RegExp][] = [
        ['lr', withMeta({ lr: 0.1 }), /lr=0\.1.*this run has lr=0\.01/],
        ['beta1', withMeta({ beta1: 0.5 }), /beta1=0\.5/],
        ['beta2 and eps', withMeta({ beta2: 0.999, eps: 1e-8 }), /beta2=0\.999, eps=1e-8; this run has beta2=0\.99, eps=0\.001/],
        ['name', withMeta({ name: 'fedyogi' }), /name="fedyogi"/],
        ['steps', withMeta({ steps: -1 }), /step counter/],
        ['no optimiser', { meta: {}, tensors: new Map() }, /saved without a server optimiser; this run uses fedadam/],
        ['not shared', { meta: good.meta, tensors: new Map([['server_opt.m:base_model.model.x.weight', { shape: [MAX, 2], data: new Float32Array(2 * MAX) }]]) }, /not a shared LoRA tensor/],
        ['rank', { meta: good.meta, tensors: new Map([[`server_opt.m:${A0}`, { shape: [MAX + 1, 6], data: new Float32Array(6 * MAX + 6) }]]) }, /rank 5/],
        ['negative v', { meta: good.meta, tensors: new Map([[`server_opt.m:${A0}`, { shape: [MAX, 6], data: new Float32Array(6 * MAX) }], [`server_opt.v:${A0}`, { shape: [MAX, 6], data: new Float32Array(6 * MAX).fill(-1) }]]) }, /negative/],
        ['lone m', { meta: good.meta, tensors: new Map([[`server_opt.m:${A0}`, { shape: [MAX, 6], data: new Float32Array(6 * MAX) }]]) }, /lacks the second moment/],
        ['inner tensors', { meta: good.meta, tensors: new Map([...good.tensors, ['momentum', { shape: [1, 1], data: new Float32Array(1) }]]) }, /keeps no server state/],
      ];
      for (const [why, st, re] of bad) expect(() => target.restore(st), why).to.throw(ConfigError, re);
      expect(target.serialize()).to.deep.equal(fresh);
      // a run without an optimiser refuses state saved with one, saying so
      expect(() => s.createServer({ maxRank: MAX, seed: 5 }).restore(good)).to.throw(ConfigError, /saved with server optimizer .*fedadam.*this run has none/);
      // and the legacy fedavgm strategy refuses it too
      expect(() => fedAvgMStrategy().createServer({ maxRank: MAX, seed: 5 }).restore(good)).to.throw(ConfigError);
    });
  });
});
