/**
 * The client trainer's carried AdamW moments across rounds (client/trainer.ts): carried while the
 * slot basis stays, dropped when the coordinator refactored the global adapter (a new slot basis),
 * unless the client asks to keep them.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTrainer, inRefactoredBasis, type LocalTrainer } from '../../client/trainer.js';
import { aggregatePlain, getStrategy, refactorAdapter } from '../../shared/aggregation/index.js';
import { loadCausalLM, type CausalLM } from '../../shared/model/causal-lm.js';
import { writeRandomModel, tinyLlamaConfig } from '../../shared/model/random-init.js';
import { ByteTokenizer } from '../../shared/model/tokenizer.js';
import type { LoraAdapter } from '../../shared/lora/adapter.js';

const SEED = 11;

describe('client trainer: AdamW moments across a basis change', function () {
  this.timeout(120_000);
  let dir = '';
  let lm: CausalLM;
  let shapes: Map<string, { in: number; out: number }>;
  const base = { targetModules: ['q_proj', 'v_proj'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' };
  const init = (): LoraAdapter => getStrategy('rank-aware').init(shapes, 4, 8, SEED, base);

  before(async () => {
    console.log(`      seed ${SEED}`);
    dir = await mkdtemp(join(tmpdir(), 'fedlora-moments-'));
    await writeRandomModel(dir, tinyLlamaConfig({ hidden: 32, layers: 1 }), SEED, 0.1);
    lm = await loadCausalLM(dir, { backend: 'wasm' });
    shapes = new Map([...lm.linearShapes].filter(([m]) => /(q_proj|v_proj)$/.test(m)));
  });
  after(async () => { lm.dispose(); await rm(dir, { recursive: true, force: true }); });

  async function trainer(): Promise<LocalTrainer> {
    const examples = Array.from({ length: 12 }, (_, i) => ({ prompt: `message number ${i} says`, completion: i % 2 ? ' spam' : ' ham' }));
    return createTrainer({ modelDir: dir, examples, lm, tokenizer: new ByteTokenizer(), evalFraction: 0.25, seed: 1, maxSeqLen: 48 });
  }

  it('inRefactoredBasis: true for a refactored adapter (also truncated to a lower rank), false for the init, a trained adapter and an average', async () => {
    const g = init();
    expect(inRefactoredBasis(g)).to.equal(false);
    const t = await trainer();
    try {
      const trained = (await t.train(g, { steps: 2, lr: 5e-3, batchSize: 4, seed: 1, trainable: () => true })).adapter;
      expect(inRefactoredBasis(trained)).to.equal(false);
      const avg = aggregatePlain(getStrategy('rank-aware'), [{ tensors: trained.tensors, rank: 4, weight: 1 }, { tensors: g.tensors, rank: 4, weight: 2 }], g, 4);
      expect(inRefactoredBasis(avg)).to.equal(false);
      const refd = refactorAdapter(avg);
      expect(inRefactoredBasis(refd)).to.equal(true);
      // what a rank-2 client receives: the first 2 slots, still orthogonal with a common norm
      const tensors = new Map([...refd.tensors].map(([k, x]) => [k, k.endsWith('lora_A.weight') ? { shape: [2, x.shape[1]!], data: x.data.slice(0, 2 * x.shape[1]!) } : x]));
      expect(inRefactoredBasis({ config: refd.config, tensors })).to.equal(true);
    } finally {
      t.dispose();
    }
  });

  it('carries the moments while the basis stays, resets them on a refactored start, keeps them with onBasisChange "keep"', async () => {
    const opts = { steps: 2, lr: 5e-3, batchSize: 4, trainable: () => true };
    const t = await trainer();
    try {
      const r1 = await t.train(init(), { ...opts, seed: 1 });
      expect(r1.optimizer).to.equal('fresh');
      const r2 = await t.train(r1.adapter, { ...opts, seed: 2 });
      expect(r2.optimizer).to.equal('carried');
      const refactored = refactorAdapter(r2.adapter);
      const r3 = await t.train(refactored, { ...opts, seed: 3 });
      expect(r3.optimizer).to.equal('reset');
      const r4 = await t.train(refactorAdapter(r3.adapter), { ...opts, seed: 4, onBasisChange: 'keep' });
      expect(r4.optimizer).to.equal('carried');
      const r5 = await t.train(r4.adapter, { ...opts, seed: 5, keepOptimizerState: false });
      expect(r5.optimizer).to.equal('reset');
      // the reset is real: the same refactored start trained with the moments kept lands elsewhere
      const t2 = await trainer();
      try {
        await t2.train(init(), { ...opts, seed: 1 });
        await t2.train(r1.adapter, { ...opts, seed: 2 });
        const kept = await t2.train(refactored, { ...opts, seed: 3, onBasisChange: 'keep' });
        expect(kept.optimizer).to.equal('carried');
        const name = [...r3.adapter.tensors.keys()].find((k) => k.endsWith('lora_B.weight'))!;
        expect([...kept.adapter.tensors.get(name)!.data]).to.not.deep.equal([...r3.adapter.tensors.get(name)!.data]);
      } finally {
        t2.dispose();
      }
    } finally {
      t.dispose();
    }
  });
});
