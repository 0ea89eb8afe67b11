/**
 * Frozen base weights stored outside the tfjs heap (LoadOptions.baseDtype, shared/model/frozen):
 * fp32 storage reproduces the in-heap model and the Hugging Face oracle; a quantized base (nf4, int8,
 * bf16) gives the logits of the same model whose checkpoint holds the dequantized weights as fp32.
 */
import { expect } from 'chai';
import { maxAbsDiff } from './compare.js';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { loadCausalLM, type CausalLM } from '../../shared/model/causal-lm.js';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { loadSafetensors, readFloatTensor, readTensor, saveSafetensors, type WritableTensor } from '../../shared/model/safetensors.js';
import { StoredWeight } from '../../shared/model/frozen/stored.js';
import { tf } from '../../shared/backend/index.js';

const FIX = 'test/fixtures/hf';


async function idsOf(name: string): Promise<number[][]> {
  const ex = await loadSafetensors(`${FIX}/${name}/expected.safetensors`);
  const t = readTensor(ex, 'input_ids');
  const [B, T] = t.shape as [number, number];
  return Array.from({ length: B }, (_, b) => [...t.data.subarray(b * T, (b + 1) * T)]);
}

for (const name of ['gpt2-tiny', 'llama-tiny']) {
  describe(`stored base weights: ${name} (wasm)`, function () {
    this.timeout(60_000);
    let heap: CausalLM, stored: CausalLM, ids: number[][];
    const adapterP = loadPeftAdapter(`${FIX}/${name}/adapter`);
    before(async () => {
      heap = await loadCausalLM(`${FIX}/${name}/base`, { backend: 'wasm' });
      stored = await loadCausalLM(`${FIX}/${name}/base`, { backend: 'wasm', baseDtype: 'fp32' });
      ids = await idsOf(name);
    });
    after(() => { heap.dispose(); stored.dispose(); });

    it('fp32 storage: logits, loss and LoRA gradients equal the in-heap model (and the HF oracle), no tensor leaks', async () => {
      const adapter = await adapterP;
      expect(maxAbsDiff(await stored.logits(ids, { adapter }), await heap.logits(ids, { adapter }))).to.be.below(1e-6);
      const a = await heap.lossAndGrads(ids, { adapter }), b = await stored.lossAndGrads(ids, { adapter });
      const meta = JSON.parse(readFileSync(`${FIX}/${name}/expected.json`, 'utf8')) as { loss_with_adapter: number };
      expect(Math.abs(b.loss - meta.loss_with_adapter) / meta.loss_with_adapter).to.be.below(1e-5);
      expect(Math.abs(b.loss - a.loss)).to.be.below(1e-6);
      for (const [k, g] of a.grads) expect(maxAbsDiff(b.grads.get(k)!, g), k).to.be.below(1e-6);
      const before = tf.memory().numTensors;
      for (let i = 0; i < 2; i++) { await stored.logits(ids, { adapter }); await stored.lossAndGrads(ids, { adapter }); }
      expect(tf.memory().numTensors).to.equal(before);
    });

    for (const dtype of ['nf4', 'int8', 'bf16'] as const) {
      it(`${dtype}: logits equal those of the checkpoint rewritten with the dequantized weights as fp32 (1e-5)`, async () => {
        const adapter = await adapterP;
        const dir = await mkdtemp(join(tmpdir(), `fedlora-${dtype}-`));
        let q: CausalLM | null = null, deq: CausalLM | null = null;
        try {
          const st = await loadSafetensors(`${FIX}/${name}/base/model.safetensors`);
          const out = new Map<string, WritableTensor>();
          const io = name.startsWith('gpt2'); // Conv1D: [in, out] in the checkpoint
          for (const key of st.entries.keys()) {
            const t = readFloatTensor(st, key);
            let data = t.data;
            if (heap.linearShapes.has(key.replace(/\.weight$/, '')) && key.endsWith('.weight')) {
              const [r, c] = t.shape as [number, number];
              const [outDim, inDim] = io ? [c, r] : [r, c];
              const oi = new Float32Array(t.data.length);
              for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) { if (io) oi[j * r + i] = t.data[i * c + j]!; else oi[i * c + j] = t.data[i * c + j]!; }
              const v = new StoredWeight(oi, outDim, inDim, dtype).values();
              data = new Float32Array(t.data.length);
              for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) data[i * c + j] = io ? v[j * r + i]! : v[i * c + j]!;
            }
            out.set(key, { shape: [...t.shape], data });
          }
          await saveSafetensors(join(dir, 'model.safetensors'), out);
          await copyFile(`${FIX}/${name}/base/config.json`, join(dir, 'config.json'));
          q = await loadCausalLM(`${FIX}/${name}/base`, { backend: 'wasm', baseDtype: dtype });
          deq = await loadCausalLM(dir, { backend: 'wasm' });
          const lq = await q.logits(ids, { adapter }), ld = await deq.logits(ids, { adapter }), l0 = await heap.logits(ids, { adapter });
          expect(maxAbsDiff(lq, ld)).to.be.below(1e-5);
          // and the quantization did change something (the comparison is not vacuous)
          expect(maxAbsDiff(lq, l0)).to.be.above(dtype === 'bf16' ? 1e-7 : 1e-4);
        } finally {
          q?.dispose(); deq?.dispose();
          await rm(dir, { recursive: true, force: true });
        }
      });
    }
  });
}

describe('stored base weights: options', () => {
  it('refuses an unknown baseDtype and the combination with trainableBase', async () => {
    let e1: unknown, e2: unknown;
    try { await loadCausalLM(`${FIX}/gpt2-tiny/base`, { backend: 'wasm', baseDtype: 'fp8' as 'fp32' }); } catch (e) { e1 = e; }
    try { await loadCausalLM(`${FIX}/gpt2-tiny/base`, { backend: 'wasm', baseDtype: 'nf4', trainableBase: true }); } catch (e) { e2 = e; }
    expect(String(e1)).to.match(/baseDtype must be one of fp32, bf16, int8, nf4, got "fp8"/);
    expect(String(e2)).to.match(/cannot be combined with trainableBase/);
  });
});

describe('stored base weights: a client trainer with baseDtype', function () {
  this.timeout(120_000);
  it('trains LoRA on an nf4-stored base (llama-tiny): loss falls, the adapter is ordinary, and fp32 storage tracks the in-heap run', async () => {
    const { createTrainer } = await import('../../client/trainer.js');
    const { ByteTokenizer } = await import('../../shared/model/tokenizer.js');
    const { getStrategy } = await import('../../shared/aggregation/index.js');
    const BASE = `${FIX}/llama-tiny/base`;
    const examples = Array.from({ length: 16 }, (_, i) => ({ prompt: `message ${i}: win cash now ${i % 3}`, completion: i % 2 ? ' spam' : ' ham' }));
    const run = async (baseDtype?: 'nf4' | 'fp32') => {
      const t = await createTrainer({ modelDir: BASE, examples, backend: 'wasm', tokenizer: new ByteTokenizer(), evalFraction: 0.25, seed: 3, maxSeqLen: 48, ...(baseDtype ? { baseDtype } : {}) });
      try {
        const probe = await loadCausalLM(BASE, { backend: 'wasm' });
        const shapes = probe.linearShapes;
        probe.dispose();
        let a = getStrategy('fedit').init(shapes, 4, 8, 5, { targetModules: ['q_proj', 'v_proj'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' });
        const losses: number[] = [];
        for (let r = 0; r < 3; r++) {
          const res = await t.train(a, { steps: 3, lr: 1e-2, batchSize: 4, seed: r, trainable: () => true });
          a = res.adapter;
          losses.push(res.trainLoss);
        }
        return { losses, adapter: a };
      } finally { t.dispose(); }
    };
    const nf4 = await run('nf4'), fp32s = await run('fp32'), heapRun = await run();
    console.log(`      mean train loss per round: nf4 ${nf4.losses.map((x) => x.toFixed(4)).join(' ')}; fp32 stored ${fp32s.losses.map((x) => x.toFixed(4)).join(' ')}; in heap ${heapRun.losses.map((x) => x.toFixed(4)).join(' ')}`);
    expect(nf4.losses[2]!).to.be.below(nf4.losses[0]!);
    for (let i = 0; i < 3; i++) expect(Math.abs(fp32s.losses[i]! - heapRun.losses[i]!)).to.be.below(1e-4);
    expect([...nf4.adapter.tensors.keys()].sort()).to.deep.equal([...heapRun.adapter.tensors.keys()].sort());
    expect(nf4.adapter.config).to.deep.equal(heapRun.adapter.config);
  });
});
