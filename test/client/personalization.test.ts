/**
 * Personalization under --personal-mode finetune (the default) over real sockets with the stand-in
 * trainer: the personalized tensors are still trained and shared, so the global adapter keeps a
 * trained counterpart of them, and each round the client fine-tunes a private copy of only those
 * tensors on top of the global adapter it received.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { makeLayout } from '../../shared/aggregation/index.js';
import { loadSafetensors, readFloatTensor } from '../../shared/model/safetensors.js';
import { globMatcher } from '../../shared/protocol/glob.js';
import { setLogLevel } from '../../shared/log.js';
import type { TensorMap } from '../../shared/tensor.js';
import type { ContributionObservation, ClientRoundSummary } from '../../client/participant/observe.js';
import { FIXTURE, pullTrainer } from '../coordinator/helpers.js';
import { Resources } from '../coordinator/hostile-client.js';
import { ConfigError } from '../../shared/errors.js';
import { LoraTrainer, type Batch } from '../../shared/train/trainer.js';
import { loadCausalLM, type CausalLM } from '../../shared/model/causal-lm.js';
import { writeRandomModel, tinyLlamaConfig } from '../../shared/model/random-init.js';
import { ByteTokenizer } from '../../shared/model/tokenizer.js';
import { encodeExamples, padBatch } from '../../shared/data/jsonl.js';
import { getStrategy } from '../../shared/aggregation/index.js';
import { adapterModules, loraAName, loraBName, moduleScale, type LoraAdapter } from '../../shared/lora/adapter.js';
import { Rng } from '../../shared/data/random.js';
import { tf } from '../../shared/backend/index.js';
import type { TrainOptions } from '../../client/trainer.js';

describe('personalization: fine-tuned private copy on top of the global adapter (finetune mode)', function () {
  this.timeout(30_000);
  const glob = '*.layers.1.self_attn.q_proj.*';
  const isGlob = globMatcher([glob]);
  const target = 0.1;
  let dir: string;
  let r: Resources;
  let coord: Coordinator;
  let trainer: Awaited<ReturnType<typeof pullTrainer>>;
  const contributions: ContributionObservation[] = [];
  const summaries: ClientRoundSummary[] = [];

  before(async () => {
    setLogLevel('warn');
    dir = await mkdtemp(join(tmpdir(), 'fedlora-personal-'));
    r = new Resources();
    coord = r.coordinator(new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 2, clientsPerRound: 2, minClients: 2, maxRank: 4, strategy: 'rank-aware', localSteps: 2, joinWaitMs: 200, roundTimeoutMs: 10_000 }));
    const url = await coord.serve(0);
    trainer = await pullTrainer(target);
    const other = await pullTrainer(0.3);
    const c0 = r.client(new Client({
      coordinatorUrl: url, dataFile: 'unused.jsonl', stateDir: join(dir, 'c0'), maxRank: 4, clientId: 'c0', personal: [glob], personalSteps: 3,
      trainerFactory: async () => trainer, observe: { contribution: (c) => { contributions.push(c); }, round: (s) => { summaries.push(s); } },
    }));
    const c1 = r.client(new Client({ coordinatorUrl: url, dataFile: 'unused.jsonl', stateDir: join(dir, 'c1'), maxRank: 4, clientId: 'c1', trainerFactory: async () => other }));
    const runs = [c0.run(), c1.run()];
    await coord.done;
    await Promise.all(runs);
  });
  after(async () => { await r.closeAll(); await rm(dir, { recursive: true, force: true }); });

  it('shares the personalized tensors too: they are trained and in the contribution', () => {
    expect(contributions).to.have.length(2);
    for (const c of contributions) {
      const layout = makeLayout(c.layout);
      const mine = layout.entries.filter((e) => isGlob(e.name));
      expect(mine).to.have.length(2);
      for (const e of mine) expect(c.contribution.subarray(e.offset, e.offset + e.size).some((x) => x !== 0), e.name).to.equal(true);
    }
  });

  it('the global adapter has a trained counterpart of each personalized tensor', () => {
    const b = coord.globalAdapter!.tensors.get('base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight')!;
    // B starts at zero and both clients pull it toward their targets
    expect(b.data.some((x) => x !== 0)).to.equal(true);
  });

  it('fine-tunes only the personalized tensors, on a copy carried from round to round, and keeps it on disk', async () => {
    // per round: the shared training, then the fine-tuning run
    expect(trainer.trained).to.have.length(4);
    const [main1, tuned1, main2, tuned2] = trainer.trained as [TensorMap, TensorMap, TensorMap, TensorMap];
    const st = await loadSafetensors(join(dir, 'c0', 'personal.safetensors'));
    expect([...st.entries.keys()].sort()).to.deep.equal([...main2.keys()].filter(isGlob).sort());
    for (const [k, t] of tuned2) {
      const m = main2.get(k)!;
      if (isGlob(k)) {
        // round 1 starts the copy from the global (the same start as the shared training); round 2
        // continues the stored copy: x + 0.5 (target − x) from round 1's result
        expect(tuned1.get(k)!.data).to.deep.equal(main1.get(k)!.data);
        const prev = tuned1.get(k)!.data;
        for (let i = 0; i < t.data.length; i++) expect(t.data[i]!).to.be.closeTo(prev[i]! + 0.5 * (target - prev[i]!), 1e-6);
        expect(readFloatTensor(st, k).data).to.deep.equal(t.data);
      } else {
        // frozen during fine-tuning: still the received global g, where the shared training gave g + 0.5 (target − g)
        for (let i = 0; i < t.data.length; i++) expect(t.data[i]!).to.be.closeTo(2 * m.data[i]! - target, 1e-6);
      }
    }
  });

  it('reports the fine-tuned copy as its personalized model', () => {
    expect(summaries.map((s) => s.round)).to.deep.equal([1, 2]);
    for (const s of summaries) {
      expect(s.personal, `round ${s.round}`).to.not.equal(undefined);
      expect(s.global, `round ${s.round}`).to.not.equal(undefined);
      // the personalized copy moved toward this client's target from the global start
      expect(s.personal!.loss).to.be.lessThan(s.global!.loss);
    }
  });
});

describe('personalization: learning rate and Ditto-style proximal term of the fine-tuning run', function () {
  this.timeout(30_000);
  const glob = '*.layers.1.*';
  let dir: string;
  let r: Resources;
  const calls: { start: LoraAdapter; o: TrainOptions }[] = [];

  before(async () => {
    setLogLevel('warn');
    dir = await mkdtemp(join(tmpdir(), 'fedlora-personal-prox-'));
    r = new Resources();
    const coord = r.coordinator(new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 2, clientsPerRound: 2, minClients: 2, maxRank: 4, strategy: 'rank-aware', localSteps: 2, lr: 0.003, joinWaitMs: 200, roundTimeoutMs: 10_000 }));
    const url = await coord.serve(0);
    const inner = await pullTrainer(0.1);
    const recording: typeof inner = { ...inner, train: (start, o) => { calls.push({ start, o }); return inner.train(start, o); } };
    const other = await pullTrainer(0.3);
    const c0 = r.client(new Client({
      coordinatorUrl: url, dataFile: 'unused.jsonl', stateDir: join(dir, 'c0'), maxRank: 4, clientId: 'c0', personal: [glob], personalSteps: 3, personalLr: 0.02, personalProx: 0.5,
      trainerFactory: async () => recording,
    }));
    const c1 = r.client(new Client({ coordinatorUrl: url, dataFile: 'unused.jsonl', stateDir: join(dir, 'c1'), maxRank: 4, clientId: 'c1', trainerFactory: async () => other }));
    const runs = [c0.run(), c1.run()];
    await coord.done;
    await Promise.all(runs);
  });
  after(async () => { await r.closeAll(); await rm(dir, { recursive: true, force: true }); });

  it('the shared training keeps the round\'s lr and no proximal term; the fine-tuning gets personalLr and a prox towards the received global', () => {
    expect(calls).to.have.length(4);
    const isGlob = globMatcher([glob]);
    for (const [i, { start, o }] of calls.entries()) {
      if (i % 2 === 0) {
        expect([o.lr, o.steps, o.prox]).to.deep.equal([0.003, 2, undefined]);
        continue;
      }
      expect([o.lr, o.steps, o.prox?.weight]).to.deep.equal([0.02, 3, 0.5]);
      // the reference is the global adapter as received: the shared run's start outside the personal
      // tensors (the carried copy replaces those in round 2), and every tensor of it
      const main = calls[i - 1]!.start;
      const ref = o.prox!.reference;
      expect([...ref.tensors.keys()].sort()).to.deep.equal([...main.tensors.keys()].sort());
      for (const [k, t] of ref.tensors) {
        if (!isGlob(k)) expect(t.data, k).to.deep.equal(main.tensors.get(k)!.data);
        if (!isGlob(k)) expect(start.tensors.get(k)!.data, k).to.deep.equal(t.data);
      }
      if (i === 3) {
        // round 2: the fine-tuning starts from the carried copy, the reference is still the global
        const moved = [...ref.tensors.keys()].filter(isGlob).some((k) => start.tensors.get(k)!.data.some((x, j) => x !== ref.tensors.get(k)!.data[j]));
        expect(moved).to.equal(true);
      }
    }
  });

  it('refuses a bad personalLr or personalProx with a ConfigError', () => {
    for (const bad of [{ personalLr: 0 }, { personalLr: Number.NaN }, { personalProx: -1 }, { personalProx: Infinity }]) {
      expect(() => new Client({ coordinatorUrl: 'http://127.0.0.1:1', dataFile: 'unused.jsonl', stateDir: join(tmpdir(), 'never-made'), ...bad }), JSON.stringify(bad)).to.throw(ConfigError, /personal(Lr|Prox)/);
    }
  });
});

describe('LoraTrainer proximal term (Ditto-style personalization)', function () {
  this.timeout(120_000);
  let base: string;
  let lm: CausalLM;
  let start: LoraAdapter;
  let batch: Batch;
  const lambda = 0.7;

  /** Σ_m ‖s·B·A − s_ref·B_ref·A_ref‖² in float64, straight from the definition. */
  function proxByHand(a: LoraAdapter, ref: LoraAdapter): number {
    let sum = 0;
    for (const m of adapterModules(a)) {
      const prod = (x: LoraAdapter) => {
        const A = x.tensors.get(loraAName(m))!, B = x.tensors.get(loraBName(m))!;
        const [r, n] = A.shape as [number, number], out = B.shape[0]!;
        const s = moduleScale(x.config, m, r);
        const p = new Float64Array(out * n);
        for (let i = 0; i < out; i++) for (let k = 0; k < r; k++) for (let j = 0; j < n; j++) p[i * n + j]! += s * B.data[i * r + k]! * A.data[k * n + j]!;
        return p;
      };
      const p = prod(a), q = prod(ref);
      for (let i = 0; i < p.length; i++) sum += (p[i]! - q[i]!) ** 2;
    }
    return (lambda / 2) * sum;
  }

  const withTensors = (a: LoraAdapter, f: (name: string, t: { shape: number[]; data: Float32Array }) => Float32Array): LoraAdapter =>
    ({ config: a.config, tensors: new Map([...a.tensors].map(([k, t]) => [k, { shape: [...t.shape], data: f(k, t) }])) });

  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'fedlora-prox-'));
    await writeRandomModel(base, tinyLlamaConfig({ hidden: 32, layers: 2 }), 3, 0.1);
    lm = await loadCausalLM(base, { backend: 'wasm' });
    const shapes = new Map([...lm.linearShapes].filter(([m]) => /(q_proj|v_proj)$/.test(m)));
    const init = getStrategy('rank-aware').init(shapes, 4, 16, 5, { targetModules: ['q_proj', 'v_proj'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' });
    // B starts at zero: give it seeded values so every product is non-zero
    const rng = new Rng('prox-test');
    start = withTensors(init, (k, t) => (k.endsWith('lora_B.weight') ? Float32Array.from(t.data, () => (rng.next() - 0.5) * 0.2) : new Float32Array(t.data)));
    const tok = new ByteTokenizer();
    batch = padBatch(encodeExamples([{ text: 'free money, click here now' }, { text: 'the meeting moved to tuesday' }], tok, 32), tok.padId);
  });
  after(async () => { lm.dispose(); await rm(base, { recursive: true, force: true }); });

  it('equals (λ/2)·Σ‖s·B·A − s_ref·B_ref·A_ref‖², and is zero for the same products in another slot basis', async () => {
    // the reference: half of every B, so each product differs by half of itself
    const half = withTensors(start, (k, t) => (k.endsWith('lora_B.weight') ? t.data.map((x) => x / 2) : new Float32Array(t.data)));
    const t1 = new LoraTrainer(lm, start, { lr: 1e-3, totalSteps: 1 }, () => true, { prox: { weight: lambda, reference: half } });
    try {
      const want = proxByHand(start, half);
      expect(want).to.be.greaterThan(1e-3);
      expect(await t1.proxValue()).to.be.closeTo(want, 1e-4 * want);
    } finally { t1.dispose(); }
    // slots reversed and negated: A' = Q·A, B' = B·Qᵀ with Q orthogonal, so B'·A' = B·A but the factors differ
    const r = 4;
    const rotated = withTensors(start, (k, t) => {
      const out = new Float32Array(t.data.length);
      if (k.endsWith('lora_A.weight')) { const n = t.shape[1]!; for (let i = 0; i < r; i++) for (let j = 0; j < n; j++) out[i * n + j] = -t.data[(r - 1 - i) * n + j]!; }
      else { const rows = t.shape[0]!; for (let i = 0; i < rows; i++) for (let j = 0; j < r; j++) out[i * r + j] = -t.data[i * r + (r - 1 - j)]!; }
      return out;
    });
    expect(rotated.tensors.get(loraAName(adapterModules(start)[0]!))!.data).to.not.deep.equal(start.tensors.get(loraAName(adapterModules(start)[0]!))!.data);
    const t2 = new LoraTrainer(lm, start, { lr: 1e-3, totalSteps: 1 }, () => true, { prox: { weight: lambda, reference: rotated } });
    try { expect(await t2.proxValue()).to.be.lessThan(1e-9); } finally { t2.dispose(); }
  });

  it('adds λ·s·(s·B·A − P)·Aᵀ to the gradient of B (only the tensors being trained), and leaks no tensor', async () => {
    const ref = withTensors(start, (k, t) => (k.endsWith('lora_B.weight') ? t.data.map((x) => x / 2) : new Float32Array(t.data)));
    const onlyB = (n: string) => n.endsWith('lora_B.weight');
    // the model caches a few tensors on its first forward pass at this length: warm it up first
    const warm = new LoraTrainer(lm, start, { lr: 1e-3, totalSteps: 1 }, onlyB);
    try { await warm.gradients(batch); } finally { warm.dispose(); }
    const before = tf.memory().numTensors;
    const plain = new LoraTrainer(lm, start, { lr: 1e-3, totalSteps: 1 }, onlyB);
    const prox = new LoraTrainer(lm, start, { lr: 1e-3, totalSteps: 1 }, onlyB, { prox: { weight: lambda, reference: ref } });
    try {
      const g0 = (await plain.gradients(batch)).grads, g1 = (await prox.gradients(batch)).grads;
      expect([...g1.keys()].every(onlyB)).to.equal(true);
      for (const m of adapterModules(start)) {
        const A = start.tensors.get(loraAName(m))!, B = start.tensors.get(loraBName(m))!;
        const [r, n] = A.shape as [number, number], out = B.shape[0]!;
        const s = moduleScale(start.config, m, r);
        // P = s·(B/2)·A, so s·B·A − P = (s/2)·B·A and the extra gradient is λ·s·(s/2)·B·A·Aᵀ
        const aat = new Float64Array(r * r);
        for (let i = 0; i < r; i++) for (let k = 0; k < r; k++) for (let j = 0; j < n; j++) aat[i * r + k]! += A.data[i * n + j]! * A.data[k * n + j]!;
        const name = loraBName(m);
        const d0 = g0.get(name)!.data, d1 = g1.get(name)!.data;
        let maxErr = 0, maxVal = 0;
        for (let i = 0; i < out; i++) for (let k = 0; k < r; k++) {
          let want = 0;
          for (let q = 0; q < r; q++) want += lambda * s * (s / 2) * B.data[i * r + q]! * aat[q * r + k]!;
          maxErr = Math.max(maxErr, Math.abs(d1[i * r + k]! - d0[i * r + k]! - want));
          maxVal = Math.max(maxVal, Math.abs(want));
        }
        expect(maxVal, m).to.be.greaterThan(0);
        expect(maxErr, m).to.be.lessThan(1e-3 * maxVal + 1e-6);
      }
    } finally { plain.dispose(); prox.dispose(); }
    expect(tf.memory().numTensors).to.equal(before);
  });

  it('keeps trained products closer to the reference than the same training without it', async () => {
    const distAfter = async (weight: number) => {
      const t = new LoraTrainer(lm, start, { lr: 2e-2, totalSteps: 15, schedule: 'constant' }, () => true, weight > 0 ? { prox: { weight, reference: start } } : {});
      try {
        for (let i = 0; i < 15; i++) await t.trainStep([batch]);
        return proxByHand(await t.adapter(), start);
      } finally { t.dispose(); }
    };
    const free = await distAfter(0), held = await distAfter(50);
    expect(free).to.be.greaterThan(0);
    expect(held).to.be.lessThan(0.5 * free);
  });
});
