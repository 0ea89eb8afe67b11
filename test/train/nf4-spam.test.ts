/**
 * QLoRA on the project's spam task: LoRA trained on the spam-llama base stored as NF4 (4-bit
 * NormalFloat, double-quantized block scales; shared/model/frozen) ends within 2 points of the same
 * training on the fp32 base, and both learn (beat the always-majority rate on held-out mail).
 * One training run's accuracy on 320 held-out emails moves by a couple of points with the sample, so
 * the comparison is the mean over two fixed samples of 800 emails (same samples, seeds and steps for
 * both bases).
 */
import { expect } from 'chai';
import { createTrainer } from '../../client/trainer.js';
import { getStrategy } from '../../shared/aggregation/index.js';
import { loadSpamCorpus, splitSpamCorpus, toSpamExample } from '../../simulations/data/spam.js';
import { CORPUS_SPLIT_SEED } from '../../simulations/pretrain.js';
import { Rng } from '../../shared/data/random.js';

const MODEL = 'simulations/models/spam-llama';

describe('QLoRA: LoRA on an nf4-stored base (spam task)', function () {
  this.timeout(300_000);

  it('ends within 2 points of the fp32 base (mean of two samples), and both beat the always-majority rate', async () => {
    // the federated slice: disjoint from the mail the base model was pretrained on
    const { federated } = splitSpamCorpus(loadSpamCorpus(), { pretrainFraction: 0.2, seed: CORPUS_SPLIT_SEED });
    const acc: Record<'fp32' | 'nf4', number[]> = { fp32: [], nf4: [] };
    for (const sample of ['a', 'b']) {
      const picked = new Rng(`nf4-spam-${sample}`).shuffle([...federated]).slice(0, 800);
      const examples = picked.map((e) => toSpamExample(e, { maxChars: 112 }));
      const spamShare = picked.filter((e) => e.label === 'spam').length / picked.length;
      const majority = Math.max(spamShare, 1 - spamShare);
      const line: string[] = [];
      for (const baseDtype of ['fp32', 'nf4'] as const) {
        const trainer = await createTrainer({ modelDir: MODEL, examples, backend: 'wasm', baseDtype, evalFraction: 0.4, seed: 7, maxSeqLen: 128, maxEval: 320 });
        try {
          const shapes = trainer.moduleShapes;
          const targets = [...new Set([...shapes.keys()].map((m) => m.split('.').at(-1)!))];
          const start = getStrategy('fedit').init(shapes, 8, 16, 3, { targetModules: targets, fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' });
          const r = await trainer.train(start, { steps: 80, lr: 5e-3, batchSize: 8, seed: 11, trainable: () => true });
          const m = await trainer.evaluate(r.adapter);
          expect(m.examples).to.equal(320);
          expect(m.accuracy, `${baseDtype} base, sample ${sample}`).to.be.above(majority + 0.05);
          acc[baseDtype].push(m.accuracy);
          line.push(`${baseDtype} ${(100 * m.accuracy).toFixed(1)} %`);
        } finally {
          trainer.dispose();
        }
      }
      console.log(`      sample ${sample}: ${line.join(', ')} (majority share ${(100 * majority).toFixed(1)} %)`);
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    console.log(`      mean: fp32 ${(100 * mean(acc.fp32)).toFixed(1)} %, nf4 ${(100 * mean(acc.nf4)).toFixed(1)} %`);
    expect(Math.abs(mean(acc.nf4) - mean(acc.fp32))).to.be.at.most(0.02);
  });
});
