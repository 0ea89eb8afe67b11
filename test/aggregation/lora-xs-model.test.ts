/**
 * LoRA-XS on a real model: the trainer's gradient for R (autograd through A_eff = R·A) against the
 * chain rule through plain LoRA and against a finite difference of the loss; training R alone cuts
 * the loss and leaves the frozen factors bit-identical; the exported plain PEFT adapter, loaded from
 * disk through the ordinary LoRA path (and merged), gives fedlora's LoRA-XS logits within 1e-5.
 */
import { expect } from 'chai';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCausalLM, type CausalLM } from '../../shared/model/causal-lm.js';
import { ByteTokenizer } from '../../shared/model/tokenizer.js';
import { encodeExamples, padBatch } from '../../shared/data/jsonl.js';
import { LoraTrainer, type Batch } from '../../shared/train/trainer.js';
import { getStrategy } from '../../shared/aggregation/index.js';
import { tf } from '../../shared/backend/index.js';
import { writeRandomModel, tinyLlamaConfig } from '../../shared/model/random-init.js';
import { loraAName, loraBName, xsRName, type LoraAdapter } from '../../shared/lora/adapter.js';
import { xsToLora } from '../../shared/lora/xs.js';
import { xsInitFromCheckpoint } from '../../shared/lora/xs-checkpoint.js';
import { loadPeftAdapter, savePeftAdapter } from '../../shared/lora/peft.js';
import { loadSafetensors } from '../../shared/model/safetensors.js';
import { rng, randTensor } from './helpers.js';

const SEED = 4242;
const TEXTS = ['the quick brown fox jumps over the lazy dog', 'federated low rank adapters, tiny cores', 'spam or ham? win a prize now', 'meeting moved to thursday at ten'];

/** The adapter with every core R set to small seeded random values (R = 0 would make ΔW vanish). */
function withRandomCores(a: LoraAdapter, seed: number, scale: number): LoraAdapter {
  const next = rng(seed);
  const tensors = new Map(a.tensors);
  for (const [k, t] of a.tensors) if (k.endsWith('.lora_R.weight')) tensors.set(k, randTensor(t.shape as [number, number], next, scale));
  return { config: a.config, tensors };
}

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

describe('LoRA-XS on a model: gradients, training, export', function () {
  this.timeout(120_000);
  let dir: string;
  let lm: CausalLM;
  let batch: Batch;
  let start: LoraAdapter;
  const targets = ['q_proj', 'v_proj', 'down_proj'];

  before(async () => {
    console.log(`      lora-xs model test seed ${SEED}`);
    dir = await mkdtemp(join(tmpdir(), 'fedlora-xs-'));
    await writeRandomModel(join(dir, 'base'), tinyLlamaConfig({ hidden: 48, layers: 2 }), 3, 0.1);
    lm = await loadCausalLM(join(dir, 'base'), { backend: 'wasm' });
    const tok = new ByteTokenizer();
    batch = padBatch(encodeExamples(TEXTS.map((text) => ({ text })), tok, 48), tok.padId);
    // the coordinator's path: factors from the checkpoint's truncated SVD, R = 0
    start = await xsInitFromCheckpoint(join(dir, 'base'), 6, 12, { targetModules: targets, fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' });
  });
  after(async () => { lm?.dispose(); await rm(dir, { recursive: true, force: true }); });

  it('dL/dR from the trainer equals (dL/dA_eff)·Aᵀ of plain LoRA at A_eff = R·A, and a finite difference of the loss', async () => {
    const xs = getStrategy('lora-xs');
    const adapter = withRandomCores(start, SEED, 0.05);
    const tr = new LoraTrainer(lm, adapter, { lr: 1e-3, totalSteps: 1 }, (n) => xs.isTrainable(n));
    // the same model as plain LoRA with A_eff = R·A trainable and B frozen
    const effA = new Map(adapter.tensors);
    for (const [k] of adapter.tensors) {
      if (!k.endsWith('.lora_R.weight')) continue;
      const m = k.replace(/^base_model\.model\.|\.lora_R\.weight$/g, '');
      const A = adapter.tensors.get(loraAName(m))!, R = adapter.tensors.get(k)!;
      const eff = tf.tidy(() => tf.matMul(tf.tensor2d(R.data, R.shape as [number, number]), tf.tensor2d(A.data, A.shape as [number, number])));
      effA.set(loraAName(m), { shape: [...eff.shape], data: (await eff.data()) as Float32Array });
      eff.dispose();
    }
    for (const k of [...effA.keys()]) if (k.endsWith('.lora_R.weight')) effA.delete(k);
    const ref = new LoraTrainer(lm, { config: adapter.config, tensors: effA }, { lr: 1e-3, totalSteps: 1 }, (n) => n.endsWith('.lora_A.weight'));
    try {
      expect([...tr.trainableNames].every((n) => n.endsWith('.lora_R.weight'))).to.equal(true);
      expect(tr.trainableNames).to.have.length(targets.length * 2);
      const g = await tr.gradients(batch);
      const gEff = await ref.gradients(batch);
      expect(g.loss).to.be.closeTo(gEff.loss, 1e-5);
      let norm2 = 0;
      for (const [k, gr] of g.grads) {
        const m = k.replace(/^base_model\.model\.|\.lora_R\.weight$/g, '');
        const A = adapter.tensors.get(loraAName(m))!, ga = gEff.grads.get(loraAName(m))!;
        const [r, inF] = A.shape as [number, number];
        const want = new Float64Array(r * r);
        for (let i = 0; i < r; i++) for (let j = 0; j < r; j++) {
          let s = 0;
          for (let c = 0; c < inF; c++) s += ga.data[i * inF + c]! * A.data[j * inF + c]!;
          want[i * r + j] = s;
        }
        const scale = Math.max(...[...want].map(Math.abs));
        expect(scale, k).to.be.greaterThan(0);
        expect(maxAbs(gr.data, want) / scale, k).to.be.below(1e-3);
        for (const x of gr.data) norm2 += x * x;
      }
      // directional finite difference along the gradient: (L(R + εĝ) − L(R − εĝ)) / 2ε ≈ ‖g‖
      const norm = Math.sqrt(norm2), eps = 1e-2;
      const shifted = (sign: number): LoraAdapter => {
        const t = new Map(adapter.tensors);
        for (const [k, gr] of g.grads) {
          const R = adapter.tensors.get(k)!;
          t.set(k, { shape: [...R.shape], data: R.data.map((x, i) => x + (sign * eps * gr.data[i]!) / norm) });
        }
        return { config: adapter.config, tensors: t };
      };
      const lossOf = async (a: LoraAdapter) => { const t = new LoraTrainer(lm, a, { lr: 1e-3, totalSteps: 1 }, () => false); try { return await t.evalLoss([batch]); } finally { t.dispose(); } };
      const fd = ((await lossOf(shifted(1))) - (await lossOf(shifted(-1)))) / (2 * eps);
      console.log(`      ‖dL/dR‖ = ${norm.toExponential(4)}, finite difference along it ${fd.toExponential(4)}`);
      expect(Math.abs(fd - norm) / norm).to.be.below(0.02);
    } finally {
      tr.dispose();
      ref.dispose();
    }
  });

  it('training only R cuts the loss, leaves the frozen factors bit-identical, and leaks no tensors', async () => {
    const xs = getStrategy('lora-xs');
    const tr = new LoraTrainer(lm, start, { lr: 5e-2, totalSteps: 30, warmupSteps: 2, schedule: 'constant' }, (n) => xs.isTrainable(n));
    try {
      const first = await tr.evalLoss([batch]);
      await tr.trainStep([batch]);
      const tensors = tf.memory().numTensors;
      for (let s = 1; s < 30; s++) await tr.trainStep([batch]);
      expect(tf.memory().numTensors).to.equal(tensors);
      const last = await tr.evalLoss([batch]);
      console.log(`      LoRA-XS r=6, 30 steps: loss ${first.toFixed(4)} → ${last.toFixed(4)}`);
      expect(last).to.be.below(first * 0.9);
      const after = await tr.adapter();
      for (const [k, t] of start.tensors) {
        const same = Buffer.from(after.tensors.get(k)!.data.buffer).equals(Buffer.from(t.data.buffer));
        expect(same, k).to.equal(!k.endsWith('.lora_R.weight'));
      }
    } finally {
      tr.dispose();
    }
  });

  for (const backend of ['wasm', 'cpu'] as const) {
    it(`the exported plain PEFT adapter, loaded from disk, gives fedlora's LoRA-XS logits within 1e-5 (${backend}, also merged)`, async () => {
      const model = backend === 'wasm' ? lm : await loadCausalLM(join(dir, 'base'), { backend });
      const adapter = withRandomCores(start, SEED + 1, 0.5);
      const tr = new LoraTrainer(model, adapter, { lr: 1e-3, totalSteps: 1 }, () => false);
      const out = join(dir, `export-${backend}`);
      try {
        const ids = [Array.from(batch.ids.subarray(0, batch.length)), Array.from(batch.ids.subarray(batch.length, 2 * batch.length))];
        const xsLogits = await tr.logits(ids);
        const none = await model.logits(ids);
        await savePeftAdapter(xsToLora(adapter), out);
        const cfg = JSON.parse(await readFile(join(out, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
        expect(cfg).to.include({ peft_type: 'LORA', r: 6, lora_alpha: 12, use_dora: false, use_rslora: false });
        const st = await loadSafetensors(join(out, 'adapter_model.safetensors'));
        expect([...st.entries.keys()].every((k) => /\.lora_[AB]\.weight$/.test(k))).to.equal(true);
        const loaded = await loadPeftAdapter(out);
        for (const m of ['model.layers.0.self_attn.q_proj', 'model.layers.1.mlp.down_proj']) {
          expect([...loaded.tensors.get(loraAName(m))!.data]).to.deep.equal([...adapter.tensors.get(loraAName(m))!.data]);
          expect(loaded.tensors.get(loraBName(m))!.shape).to.deep.equal(adapter.tensors.get(loraBName(m))!.shape);
          expect(adapter.tensors.has(xsRName(m))).to.equal(true);
        }
        const viaLora = await model.logits(ids, { adapter: loaded });
        const merged = await model.logits(ids, { adapter: loaded, merged: true });
        const moved = maxAbs(xsLogits, none);
        console.log(`      ${backend}: adapter moves logits by ${moved.toExponential(2)}; export differs by ${maxAbs(xsLogits, viaLora).toExponential(2)}, merged by ${maxAbs(xsLogits, merged).toExponential(2)}`);
        expect(moved).to.be.greaterThan(1e-2);
        expect(maxAbs(xsLogits, viaLora)).to.be.below(1e-5);
        expect(maxAbs(xsLogits, merged)).to.be.below(1e-5);
      } finally {
        tr.dispose();
        if (model !== lm) model.dispose();
      }
    });
  }
});
