import { expect } from 'chai';
import {
  getStrategy, strategyNames, aggregatePlain, aggregateRound, sharedLayout, slotWeightSums, type Strategy, type StrategyServer, type ClientUpdate,
} from '../../shared/aggregation/index.js';
import { flatten, makeLayout, slotOf, unflatten } from '../../shared/aggregation/layout.js';
import { ConfigError, FedloraError, ProtocolError } from '../../shared/errors.js';
import { loraAName, loraBName, parseLoraName, parseXsName, xsRName, type LoraAdapter, type LoraConfig } from '../../shared/lora/adapter.js';
import type { Tensor32, TensorMap } from '../../shared/tensor.js';
import { rng, randTensor, product, diffFrob, frob, maxAbsDiff, mapClone } from './helpers.js';
import { contributorsOf, flatSum, sameBits, throughJson, type SimClient } from './round-helpers.js';

const BASE: Omit<LoraConfig, 'r' | 'loraAlpha'> = { targetModules: ['q', 'v'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' };
const SHAPES = new Map([['layers.0.q', { in: 5, out: 4 }], ['layers.0.v', { in: 3, out: 6 }]]);
const MAX = 4;

/** Global adapter with random (non-zero) B and LoRA-XS cores too, so "kept from previous" is observable. */
function makePrevious(strategy: Strategy, maxRank = MAX, seed = 7): LoraAdapter {
  const g = strategy.init(SHAPES, maxRank, 2 * maxRank, seed, BASE);
  const next = rng(seed + 1000);
  for (const [name, t] of g.tensors) if (parseLoraName(name)?.factor === 'B' || parseXsName(name)) t.data.set(randTensor(t.shape as [number, number], next).data);
  return g;
}

/** A client's trained tensors at `rank`: A, B and a LoRA-XS core R per module (each strategy reads what it shares). */
function makeUpdate(rank: number, weight: number, seed: number, shapes = SHAPES): ClientUpdate {
  const next = rng(seed), nextR = rng(seed + 7777);
  const tensors: TensorMap = new Map();
  for (const [m, s] of shapes) {
    tensors.set(loraAName(m), randTensor([rank, s.in], next));
    tensors.set(loraBName(m), randTensor([s.out, rank], next));
    tensors.set(xsRName(m), randTensor([rank, rank], nextR));
  }
  return { tensors, rank, weight };
}

/** Rank slot of element i of a tensor (row of A, column of B, max(row, col) of a LoRA-XS core), as the layout assigns it. */
function slotAt(name: string, shape: readonly number[], i: number): number {
  return slotOf(makeLayout([{ name, shape }]), i);
}

function expectSameAdapter(x: LoraAdapter, y: LoraAdapter, tol = 0): void {
  expect([...x.tensors.keys()].sort()).to.deep.equal([...y.tensors.keys()].sort());
  for (const [k, t] of x.tensors) {
    const u = y.tensors.get(k)!;
    expect(t.shape, k).to.deep.equal(u.shape);
    expect(maxAbsDiff(t.data, u.data), k).to.be.at.most(tol);
  }
}

function expectThrowsCode(fn: () => unknown, cls: new (...a: never[]) => Error, code: string | RegExp): void {
  try { fn(); } catch (e) {
    expect(e).to.be.instanceOf(cls);
    const c = (e as FedloraError).code;
    if (typeof code === 'string') expect(c).to.equal(code); else expect(c).to.match(code);
    return;
  }
  expect.fail('expected a throw');
}

describe('aggregation strategies: contract suite', () => {
  // every registered strategy, so a new one is held to the same contract without touching this file
  for (const strategy of strategyNames().map(getStrategy)) {
    describe(strategy.name, () => {
      const prev = makePrevious(strategy);
      const updates = [makeUpdate(1, 2, 11), makeUpdate(3, 5, 12), makeUpdate(4, 3, 13)];
      const shared = [...prev.tensors.keys()].filter((k) => strategy.isShared(k));
      const personal = [...prev.tensors.keys()].filter((k) => !strategy.isShared(k));

      it('is registered under its name with a description', () => {
        expect(getStrategy(strategy.name)).to.equal(strategy);
        expect(strategy.description.length).to.be.greaterThan(20);
        expect(shared.length).to.be.greaterThan(0);
      });

      it('preserves names, shapes and config, and never mutates its inputs', () => {
        const prevCopy = mapClone(prev.tensors);
        const upCopies = updates.map((u) => mapClone(u.tensors));
        const out = aggregatePlain(strategy, updates, prev, MAX);
        expect(out.config).to.deep.equal(prev.config);
        expect(out.config).to.not.equal(prev.config);
        for (const [k, t] of prev.tensors) {
          expect(out.tensors.get(k)!.shape).to.deep.equal(t.shape);
          expect(out.tensors.get(k)!.data).to.not.equal(t.data);
        }
        expect(out.tensors.size).to.equal(prev.tensors.size);
        expectSameAdapter({ config: prev.config, tensors: prevCopy }, prev);
        updates.forEach((u, i) => expectSameAdapter({ config: prev.config, tensors: upCopies[i]! }, { config: prev.config, tensors: u.tensors }));
      });

      it('returns finite values, changes every shared tensor and keeps non-shared ones bit-exactly', () => {
        const out = aggregatePlain(strategy, updates, prev, MAX);
        for (const [k, t] of out.tensors) {
          expect(t.data.every(Number.isFinite), k).to.equal(true);
          if (strategy.isShared(k)) expect(maxAbsDiff(t.data, prev.tensors.get(k)!.data), k).to.be.greaterThan(1e-3);
          else expect([...t.data], k).to.deep.equal([...prev.tensors.get(k)!.data]);
        }
      });

      it('returns the client itself for one full-rank client, whatever its weight', () => {
        const u = makeUpdate(MAX, 17, 21);
        const out = aggregatePlain(strategy, [u], prev, MAX);
        for (const k of shared) expect(maxAbsDiff(out.tensors.get(k)!.data, u.tensors.get(k)!.data), k).to.be.below(1e-6);
      });

      it('is idempotent: identical full-rank updates average to themselves', () => {
        const u = makeUpdate(MAX, 1, 22);
        const out = aggregatePlain(strategy, [1, 4, 0.5].map((w) => ({ ...u, weight: w })), prev, MAX);
        for (const k of shared) expect(maxAbsDiff(out.tensors.get(k)!.data, u.tensors.get(k)!.data), k).to.be.below(1e-6);
      });

      it('respects weights: weight 3 equals three copies of weight 1, and weights are scale-free', () => {
        const x = makeUpdate(2, 3, 31), y = makeUpdate(4, 1, 32);
        const weighted = aggregatePlain(strategy, [x, y], prev, MAX);
        const copies = aggregatePlain(strategy, [{ ...x, weight: 1 }, { ...x, weight: 1 }, { ...x, weight: 1 }, y], prev, MAX);
        const scaled = aggregatePlain(strategy, [{ ...x, weight: 300 }, { ...y, weight: 100 }], prev, MAX);
        expectSameAdapter(weighted, copies, 1e-6);
        expectSameAdapter(weighted, scaled, 1e-6);
        const swapped = aggregatePlain(strategy, [{ ...x, weight: 1 }, { ...y, weight: 3 }], prev, MAX);
        const k = shared[0]!;
        expect(maxAbsDiff(swapped.tensors.get(k)!.data, weighted.tensors.get(k)!.data)).to.be.greaterThan(1e-3);
      });

      it('is invariant to client order', () => {
        const a = aggregatePlain(strategy, updates, prev, MAX);
        const b = aggregatePlain(strategy, [updates[2]!, updates[0]!, updates[1]!], prev, MAX);
        expectSameAdapter(a, b, 1e-7);
      });

      it('never reads non-shared tensors: NaN, wrong shapes or absence change nothing', () => {
        const clean = aggregatePlain(strategy, updates, prev, MAX);
        const poisoned = updates.map((u) => {
          const t = mapClone(u.tensors);
          for (const k of personal) t.set(k, { shape: [1, 1, 1], data: new Float32Array([NaN]) });
          t.set('base_model.model.layers.0.q.base_layer.weight', { shape: [1], data: new Float32Array([NaN]) });
          return { ...u, tensors: t };
        });
        const stripped = updates.map((u) => ({ ...u, tensors: new Map([...u.tensors].filter(([k]) => strategy.isShared(k))) }));
        expectSameAdapter(clean, aggregatePlain(strategy, poisoned, prev, MAX));
        expectSameAdapter(clean, aggregatePlain(strategy, stripped, prev, MAX));
        for (const k of personal) expectThrowsCode(() => strategy.contribution(k, prev.tensors.get(k)!, 1, MAX), FedloraError, 'NOT_SHARED');
      });

      it('ignores zero-weight clients entirely', () => {
        const base = aggregatePlain(strategy, updates, prev, MAX);
        const ghost = makeUpdate(MAX, 0, 41);
        for (const t of ghost.tensors.values()) for (let i = 0; i < t.data.length; i++) t.data[i] = t.data[i]! * 1e6;
        expectSameAdapter(base, aggregatePlain(strategy, [...updates, ghost], prev, MAX), 0);
      });

      it('keeps previous values in slots nobody trained', () => {
        const low = [makeUpdate(2, 1, 51), makeUpdate(1, 4, 52), makeUpdate(4, 0, 53)]; // the rank-4 client has weight 0
        const out = aggregatePlain(strategy, low, prev, MAX);
        for (const k of shared) {
          const t = out.tensors.get(k)!, p = prev.tensors.get(k)!;
          for (let i = 0; i < t.data.length; i++) {
            if (slotAt(k, t.shape, i) >= 2) expect(t.data[i], `${k}[${i}]`).to.equal(p.data[i]);
          }
          // and slots 0–1 were trained: at least one element moved
          const moved = [...t.data].some((v, i) => slotAt(k, t.shape, i) < 2 && v !== p.data[i]);
          expect(moved, k).to.equal(true);
        }
        expectSameAdapter(prev, aggregatePlain(strategy, [], prev, MAX));
        expectSameAdapter(prev, aggregatePlain(strategy, updates.map((u) => ({ ...u, weight: 0 })), prev, MAX));
      });

      it('under secure aggregation (flat sum of contributions) gives the same result as plain aggregation', () => {
        const layout = sharedLayout(strategy, prev);
        expect(layout.entries.map((e) => e.name)).to.deep.equal([...shared].sort());
        const total = new Float64Array(layout.size);
        for (const u of updates) {
          const contrib: TensorMap = new Map();
          for (const e of layout.entries) contrib.set(e.name, strategy.contribution(e.name, u.tensors.get(e.name)!, u.weight, MAX));
          const vec = flatten(contrib, layout);
          for (let i = 0; i < vec.length; i++) total[i] = total[i]! + vec[i]!;
        }
        const viaSum = strategy.finalize(unflatten(Float32Array.from(total), layout), updates.map((u) => ({ rank: u.rank, weight: u.weight })), prev, MAX);
        expectSameAdapter(viaSum, aggregatePlain(strategy, updates, prev, MAX), 1e-7);
      });

      it('rejects non-finite, mis-ranked, mis-shaped and unexpected input with clear errors', () => {
        const nan = makeUpdate(3, 1, 61);
        nan.tensors.get(shared[0]!)!.data[2] = NaN;
        expectThrowsCode(() => aggregatePlain(strategy, [nan], prev, MAX), ProtocolError, 'NON_FINITE');
        expectThrowsCode(() => aggregatePlain(strategy, [makeUpdate(5, 1, 62)], prev, MAX), ProtocolError, 'BAD_RANK');
        expectThrowsCode(() => aggregatePlain(strategy, [{ ...makeUpdate(2, 1, 63), rank: 3 }], prev, MAX), ProtocolError, 'BAD_SHAPE');
        expectThrowsCode(() => aggregatePlain(strategy, [makeUpdate(2, -1, 64)], prev, MAX), ProtocolError, 'BAD_WEIGHT');
        expectThrowsCode(() => aggregatePlain(strategy, [makeUpdate(2, Infinity, 64)], prev, MAX), ProtocolError, 'BAD_WEIGHT');
        // (a LoRA-XS core is [rank, rank] whatever the module's in/out, so only A/B can be mis-sized there)
        const wrongIn = makeUpdate(2, 1, 65, new Map([['layers.0.q', { in: 6, out: 5 }], ['layers.0.v', { in: 3, out: 6 }]]));
        if (shared.some((k) => parseLoraName(k))) expectThrowsCode(() => aggregatePlain(strategy, [wrongIn], prev, MAX), ProtocolError, 'BAD_SHAPE');
        const missing = makeUpdate(2, 1, 66);
        missing.tensors.delete(shared[0]!);
        expectThrowsCode(() => aggregatePlain(strategy, [missing], prev, MAX), ProtocolError, 'MISSING_TENSOR');
        const extra = makeUpdate(2, 1, 67, new Map([...SHAPES, ['layers.0.k', { in: 5, out: 4 }]]));
        expectThrowsCode(() => aggregatePlain(strategy, [extra], prev, MAX), ProtocolError, 'UNEXPECTED_TENSOR');

        const sum: TensorMap = new Map(shared.map((k) => [k, prev.tensors.get(k)!]));
        const parts = [{ rank: 2, weight: 1 }];
        expect(() => strategy.finalize(sum, parts, prev, MAX)).to.not.throw();
        const withExtra = new Map(sum); withExtra.set(loraAName('layers.9.q'), { shape: [MAX, 5], data: new Float32Array(MAX * 5) });
        expectThrowsCode(() => strategy.finalize(withExtra, parts, prev, MAX), ProtocolError, 'UNEXPECTED_TENSOR');
        const short = new Map(sum); short.delete(shared[0]!);
        expectThrowsCode(() => strategy.finalize(short, parts, prev, MAX), ProtocolError, 'MISSING_TENSOR');
        const bent = new Map(sum); bent.set(shared[0]!, { shape: [1, 1], data: new Float32Array(1) });
        expectThrowsCode(() => strategy.finalize(bent, parts, prev, MAX), ProtocolError, 'BAD_SHAPE');
        const inf = new Map(sum); inf.set(shared[0]!, { shape: [...prev.tensors.get(shared[0]!)!.shape], data: new Float32Array(prev.tensors.get(shared[0]!)!.data.length).fill(Infinity) });
        expectThrowsCode(() => strategy.finalize(inf, parts, prev, MAX), ProtocolError, 'NON_FINITE');
        expectThrowsCode(() => strategy.finalize(sum, [{ rank: 0, weight: 1 }], prev, MAX), ProtocolError, 'BAD_RANK');
        expectThrowsCode(() => strategy.finalize(sum, [{ rank: 1.5, weight: 1 }], prev, MAX), ProtocolError, 'BAD_RANK');
        expectThrowsCode(() => aggregatePlain(strategy, updates, prev, MAX + 1), ConfigError, 'CONFIG');
        expectThrowsCode(() => strategy.contribution(shared[0]!, { shape: [2, 3], data: new Float32Array(5) }, 1, MAX), ProtocolError, 'BAD_SHAPE');
      });

      it('contribution zero-pads to maxRank and multiplies by the weight', () => {
        const u = makeUpdate(2, 1, 71);
        for (const k of shared) {
          const t = u.tensors.get(k)!;
          const c = strategy.contribution(k, t, 2.5, MAX);
          const factor = parseLoraName(k)?.factor;
          expect(c.shape).to.deep.equal([factor === 'B' ? t.shape[0] : MAX, factor === 'A' ? t.shape[1] : MAX]);
          const cols = c.shape[1]!;
          for (let i = 0; i < c.data.length; i++) {
            const row = Math.floor(i / cols), col = i % cols;
            const slot = slotAt(k, c.shape, i);
            const src = row < t.shape[0]! && col < t.shape[1]! ? t.data[row * t.shape[1]! + col] : undefined;
            expect(c.data[i]).to.equal(slot < 2 ? Math.fround(src! * 2.5) : 0);
          }
        }
      });

      describe('server', () => {
        const asClients = (us: readonly ClientUpdate[]): SimClient[] => us.map((u) => ({ ...u, personal: () => false }));
        const roundOn = (server: StrategyServer, us: readonly ClientUpdate[], previous: LoraAdapter, refactor = false) => {
          const { sum, layout } = flatSum(strategy, asClients(us), previous, MAX);
          return aggregateRound(server, { sum, layout, contributors: contributorsOf(asClients(us)), previous, maxRank: MAX, refactor, keepUnrotated: () => false });
        };

        it('refuses bad options and starts from JSON-safe state', () => {
          expect(() => strategy.createServer({ maxRank: 0, seed: 1 })).to.throw(ConfigError);
          expect(() => strategy.createServer({ maxRank: MAX, seed: -1 })).to.throw(ConfigError);
          const saved = strategy.createServer({ maxRank: MAX, seed: 1 }).serialize();
          expect(JSON.parse(JSON.stringify(saved.meta))).to.deep.equal(saved.meta);
          expect(saved.tensors).to.be.instanceOf(Map);
        });

        it('save → JSON → restore into a fresh server continues bit for bit', () => {
          const a = strategy.createServer({ maxRank: MAX, seed: 1 });
          const g1 = roundOn(a, updates, prev);
          const saved = a.serialize();
          expect(JSON.parse(JSON.stringify(saved.meta))).to.deep.equal(saved.meta);
          for (const [k, x] of saved.tensors) expect(x.data, k).to.be.instanceOf(Float32Array);
          const b = strategy.createServer({ maxRank: MAX, seed: 1 });
          b.restore(throughJson(saved));
          const next = [makeUpdate(2, 1, 81), makeUpdate(4, 2, 82)];
          expect(sameBits(roundOn(b, next, g1), roundOn(a, next, g1))).to.equal(true);
        });

        it('keeps everything when nobody contributes, and untrained slots bit-exactly, after earlier rounds too', () => {
          const server = strategy.createServer({ maxRank: MAX, seed: 1 });
          const g1 = roundOn(server, updates, prev);
          expect(sameBits(roundOn(server, [], g1), g1)).to.equal(true);
          const g2 = roundOn(server, [makeUpdate(2, 1, 91), makeUpdate(1, 4, 92), makeUpdate(4, 0, 93)], g1);
          for (const [k, x] of g2.tensors) {
            x.data.forEach((v, i) => {
              const slot = slotAt(k, x.shape, i);
              if (slot >= 2 || !strategy.isShared(k)) expect(Object.is(v, g1.tensors.get(k)!.data[i]), `${k}[${i}]`).to.equal(true);
            });
          }
        });

        // a server with state of its own (fedavgm's momentum) is not the identity; its math is in fedavgm.test.ts
        const fresh = strategy.createServer({ maxRank: MAX, seed: 1 }).serialize();
        const stateless = fresh.tensors.size === 0 && JSON.stringify(fresh.meta) === '{}';
        if (stateless) {
          it('a stateless server is the identity: the round equals aggregatePlain (refactor off)', () => {
            const server = strategy.createServer({ maxRank: MAX, seed: 1 });
            const out = roundOn(server, updates, prev);
            expect(server.serialize().tensors.size).to.equal(0);
            expect(sameBits(out, aggregatePlain(strategy, updates, prev, MAX))).to.equal(true);
          });
        }

        it('with refactor on, changes B·A only by float rounding if at all', () => {
          const server = strategy.createServer({ maxRank: MAX, seed: 1 });
          const off = roundOn(strategy.createServer({ maxRank: MAX, seed: 1 }), updates, prev, false);
          const on = roundOn(server, updates, prev, true);
          for (const m of SHAPES.keys()) {
            const p0 = product(off.tensors.get(loraBName(m))!, off.tensors.get(loraAName(m))!);
            const p1 = product(on.tensors.get(loraBName(m))!, on.tensors.get(loraAName(m))!);
            expect(diffFrob(p0, p1) / frob(p0), m).to.be.below(1e-5);
          }
        });
      });

      it('inits deterministically: A from the seed, B zero (LoRA-XS: seeded factors, R zero), config at maxRank', () => {
        const a = strategy.init(SHAPES, MAX, 16, 5, BASE), b = strategy.init(SHAPES, MAX, 16, 5, BASE), c = strategy.init(SHAPES, MAX, 16, 6, BASE);
        expectSameAdapter(a, b);
        expect(a.config).to.deep.equal({ ...BASE, r: MAX, loraAlpha: 16 });
        const xs = [...a.tensors.keys()].some((k) => parseXsName(k));
        for (const [k, t] of a.tensors) {
          // the product starts at zero: B = 0, or under LoRA-XS the core R = 0 between non-zero factors
          if (parseXsName(k) || (!xs && parseLoraName(k)!.factor === 'B')) expect(t.data.every((v) => v === 0), k).to.equal(true);
          else expect(maxAbsDiff(t.data, c.tensors.get(k)!.data), k).to.be.greaterThan(0);
        }
      });
    });
  }
});

describe('aggregation strategies: specifics', () => {
  it('shares exactly what each strategy says', () => {
    const a = loraAName('m'), b = loraBName('m');
    const table = strategyNames().map(getStrategy).map((s) => [s.name, s.isShared(a), s.isShared(b), s.refactorable, s.isShared('base_model.model.m.weight')]);
    expect(table).to.deep.equal([
      ['fedit', true, true, true, false],
      ['ffa', false, true, false, false],
      ['rank-aware', true, true, true, false],
      ['fedsa', true, false, false, false],
      ['fedavgm', true, true, false, false],
      ['lora-xs', false, false, false, false],
    ]);
    // LoRA-XS shares (and trains) only its r×r cores
    expect(strategyNames().map(getStrategy).filter((s) => s.isShared(xsRName('m'))).map((s) => s.name)).to.deep.equal(['lora-xs']);
  });

  it('keeps personal and trains exactly what each strategy says', () => {
    const a = loraAName('m'), b = loraBName('m');
    const table = strategyNames().map(getStrategy).map((s) => [s.name, s.isPersonal(a), s.isPersonal(b), s.isTrainable(a), s.isTrainable(b)]);
    expect(table).to.deep.equal([
      ['fedit', false, false, true, true],
      ['ffa', false, false, false, true],
      ['rank-aware', false, false, true, true],
      ['fedsa', false, true, true, true],
      ['fedavgm', false, false, true, true],
      ['lora-xs', false, false, false, false],
    ]);
  });

  it('getStrategy refuses unknown names with a ConfigError listing the choices', () => {
    expect(() => getStrategy('fedavg')).to.throw(ConfigError, /fedit, ffa, rank-aware, fedsa, fedavgm/);
    expect(() => getStrategy('__proto__')).to.throw(ConfigError);
  });

  it('slotWeightSums counts each client in the slots below its rank', () => {
    expect([...slotWeightSums([{ rank: 1, weight: 1 }, { rank: 2, weight: 2 }, { rank: 3, weight: 1 }], 4)]).to.deep.equal([4, 3, 1, 0]);
  });

  describe('hand-computed 3-client example: ranks 1, 2, 3, weights 1, 2, 1, one module in=2 out=2', () => {
    // slot 0: all three (Σw = 4); slot 1: clients 2 and 3 (Σw = 3); slot 2: client 3 only (Σw = 1)
    const module = 'm';
    const updates: ClientUpdate[] = [
      { rank: 1, weight: 1, tensors: new Map([[loraAName(module), t([1, 2], [1, 2])], [loraBName(module), t([2, 1], [4, -1])]]) },
      { rank: 2, weight: 2, tensors: new Map([[loraAName(module), t([2, 2], [4, 0, 2, 2])], [loraBName(module), t([2, 2], [1, 3, 0, 6])]]) },
      { rank: 3, weight: 1, tensors: new Map([[loraAName(module), t([3, 2], [1, 1, 5, -1, 3, 3])], [loraBName(module), t([2, 3], [2, 6, -2, 1, 3, 5])]]) },
    ];
    const prev: LoraAdapter = {
      config: { ...BASE, r: 3, loraAlpha: 6 },
      tensors: new Map([[loraAName(module), t([3, 2], [9, 9, 9, 9, 9, 9])], [loraBName(module), t([2, 3], [7, 7, 7, 7, 7, 7])]]),
    };
    function t(shape: [number, number], v: number[]): Tensor32 { return { shape, data: Float32Array.from(v) }; }
    const get = (a: LoraAdapter, f: 'A' | 'B') => [...a.tensors.get(f === 'A' ? loraAName(module) : loraBName(module))!.data];

    it('rank-aware: each slot divided by the weight of the clients that have it', () => {
      const out = aggregatePlain(getStrategy('rank-aware'), updates, prev, 3);
      // A slot 0: (1·[1,2] + 2·[4,0] + 1·[1,1]) / 4 = [2.5, 0.75]; slot 1: (2·[2,2] + [5,−1]) / 3 = [3, 1]; slot 2: [3, 3]
      expect(get(out, 'A')).to.deep.equal([2.5, 0.75, 3, 1, 3, 3]);
      // B row 0: (4 + 2·1 + 2)/4 = 2, (2·3 + 6)/3 = 4, −2; row 1: (−1 + 0 + 1)/4 = 0, (2·6 + 3)/3 = 5, 5
      expect(get(out, 'B')).to.deep.equal([2, 4, -2, 0, 5, 5]);
    });

    it('fedit: every slot divided by the total weight 4 (absent slots count as zeros)', () => {
      const out = aggregatePlain(getStrategy('fedit'), updates, prev, 3);
      expect(get(out, 'A')).to.deep.equal([2.5, 0.75, 2.25, 0.75, 0.75, 0.75]);
      expect(get(out, 'B')).to.deep.equal([2, 3, -0.5, 0, 3.75, 1.25]);
    });

    it('fedsa: A as rank-aware, B kept from the previous global', () => {
      const out = aggregatePlain(getStrategy('fedsa'), updates, prev, 3);
      expect(get(out, 'A')).to.deep.equal([2.5, 0.75, 3, 1, 3, 3]);
      expect(get(out, 'B')).to.deep.equal([7, 7, 7, 7, 7, 7]);
    });

    it('ffa: A kept, B averaged over the total weight', () => {
      const out = aggregatePlain(getStrategy('ffa'), updates, prev, 3);
      expect(get(out, 'A')).to.deep.equal([9, 9, 9, 9, 9, 9]);
      expect(get(out, 'B')).to.deep.equal([2, 3, -0.5, 0, 3.75, 1.25]);
    });

    it('rank 4 slot beyond every client keeps previous values', () => {
      const prev4: LoraAdapter = {
        config: { ...BASE, r: 4, loraAlpha: 8 },
        tensors: new Map([[loraAName(module), t([4, 2], [9, 9, 9, 9, 9, 9, -8, 8])], [loraBName(module), t([2, 4], [7, 7, 7, 1, 7, 7, 7, -1])]]),
      };
      const out = aggregatePlain(getStrategy('rank-aware'), updates, prev4, 4);
      expect(get(out, 'A')).to.deep.equal([2.5, 0.75, 3, 1, 3, 3, -8, 8]);
      expect(get(out, 'B')).to.deep.equal([2, 4, -2, 1, 0, 5, 5, -1]);
    });
  });

  describe('ffa exactness', () => {
    const ffa = getStrategy('ffa');
    const weights = [3, 1, 6];
    const ranks = [2, 3, 5];

    function check(maxRank: number): void {
      const prev = ffa.init(SHAPES, maxRank, 2 * maxRank, 99, BASE);
      // previous B: non-zero everywhere, so an untouched slot shows up in the product
      const nb = rng(5);
      for (const [k, tt] of prev.tensors) if (parseLoraName(k)!.factor === 'B') tt.data.set(randTensor(tt.shape as [number, number], nb).data);
      const updates = ranks.map((r, i) => {
        const u = makeUpdate(r, weights[i]!, 200 + i);
        // FFA clients train only B; their A is the first r rows of the frozen global A
        for (const m of SHAPES.keys()) {
          const ga = prev.tensors.get(loraAName(m))!;
          u.tensors.set(loraAName(m), { shape: [r, ga.shape[1]!], data: ga.data.slice(0, r * ga.shape[1]!) });
        }
        return u;
      });
      const out = aggregatePlain(ffa, updates, prev, maxRank);
      const W = weights.reduce((s, w) => s + w, 0);
      for (const [m, s] of SHAPES) {
        const gA = out.tensors.get(loraAName(m))!;
        expect([...gA.data]).to.deep.equal([...prev.tensors.get(loraAName(m))!.data]);
        const expected = new Float64Array(s.out * s.in);
        updates.forEach((u, i) => {
          const p = product(u.tensors.get(loraBName(m))!, u.tensors.get(loraAName(m))!);
          for (let k = 0; k < p.length; k++) expected[k] = expected[k]! + (weights[i]! / W) * p[k]!;
        });
        // slots ≥ max r_i were not trained: their previous contribution stays in the product
        const pb = prev.tensors.get(loraBName(m))!;
        for (let j = Math.max(...ranks); j < maxRank; j++) {
          for (let o = 0; o < s.out; o++) for (let c = 0; c < s.in; c++) {
            expected[o * s.in + c] = expected[o * s.in + c]! + pb.data[o * maxRank + j]! * gA.data[j * s.in + c]!;
          }
        }
        const got = product(out.tensors.get(loraBName(m))!, gA);
        expect(diffFrob(got, expected) / frob(expected), m).to.be.below(1e-5);
      }
    }

    it('global B·A equals the weighted mean of client products (heterogeneous ranks 2, 3, 5 at max rank 5)', () => check(5));
    it('and with max rank 7, the untrained slots 5–6 only add their previous contribution', () => check(7));

    it('whereas averaging A and B separately (rank-aware) is not the mean of the products', () => {
      const ra = getStrategy('rank-aware');
      const prev = ra.init(SHAPES, 4, 8, 1, BASE);
      const us = [makeUpdate(4, 1, 301), makeUpdate(4, 1, 302)];
      const out = aggregatePlain(ra, us, prev, 4);
      const m = 'layers.0.q';
      const mean = product(us[0]!.tensors.get(loraBName(m))!, us[0]!.tensors.get(loraAName(m))!)
        .map((v, i) => (v + product(us[1]!.tensors.get(loraBName(m))!, us[1]!.tensors.get(loraAName(m))!)[i]!) / 2);
      const got = product(out.tensors.get(loraBName(m))!, out.tensors.get(loraAName(m))!);
      expect(diffFrob(got, mean) / frob(mean)).to.be.greaterThan(0.05);
    });
  });
});
