/**
 * The oracle: logits, loss and LoRA gradients computed by Hugging Face transformers + PEFT
 * (test/fixtures/hf, written by make_fixtures.py) must be reproduced on every CPU backend, with the fused
 * kernels and with the stock-op compositions other backends use.
 */
import { expect } from 'chai';
import { maxAbsDiff } from './compare.js';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCausalLM, type CausalLM } from '../../shared/model/causal-lm.js';
import { loadPeftAdapter, savePeftAdapter } from '../../shared/lora/peft.js';
import { loadSafetensors, readTensor, type SafetensorsFile } from '../../shared/model/safetensors.js';
import type { LoraAdapter } from '../../shared/lora/adapter.js';
import { tf } from '../../shared/backend/index.js';
import { hasFusedKernels, setFusedKernels } from '../../shared/backend/fused-kernels.js';

const FIX = 'test/fixtures/hf';


// fused: the JS kernels of shared/backend/fused-kernels.ts; stock: the same functions composed from stock
// ops, the path webgpu and tfjs-node take
for (const [backend, fused] of [['cpu', true], ['wasm', true], ['cpu', false], ['wasm', false]] as const) {
  for (const name of ['gpt2-tiny', 'llama-tiny']) {
    describe(`HF oracle: ${name} on ${backend}${fused ? '' : ', stock ops instead of the fused kernels'}`, function () {
      let lm: CausalLM, adapter: LoraAdapter, ex: SafetensorsFile, ids: number[][];
      const meta = JSON.parse(readFileSync(`${FIX}/${name}/expected.json`, 'utf8')) as { loss_with_adapter: number; grad_keys: string[] };
      before(async () => {
        setFusedKernels(fused);
        lm = await loadCausalLM(`${FIX}/${name}/base`, { backend });
        expect(hasFusedKernels()).to.equal(fused);
        expect(tf.getBackend()).to.equal(backend);
        adapter = await loadPeftAdapter(`${FIX}/${name}/adapter`);
        ex = await loadSafetensors(`${FIX}/${name}/expected.safetensors`);
        const t = readTensor(ex, 'input_ids');
        const [B, T] = t.shape as [number, number];
        ids = Array.from({ length: B }, (_, b) => [...t.data.subarray(b * T, (b + 1) * T)]);
      });
      after(() => { lm.dispose(); setFusedKernels(true); });

      it('base logits within 1e-4', async () => {
        expect(maxAbsDiff(await lm.logits(ids), readTensor(ex, 'base_logits').data)).to.be.below(1e-4);
      });
      it('LoRA logits within 1e-4 and differ from base', async () => {
        const l = await lm.logits(ids, { adapter });
        expect(maxAbsDiff(l, readTensor(ex, 'lora_logits').data)).to.be.below(1e-4);
        expect(maxAbsDiff(l, readTensor(ex, 'base_logits').data)).to.be.above(1e-3);
      });
      it('merged logits within 1e-4', async () => {
        expect(maxAbsDiff(await lm.logits(ids, { adapter, merged: true }), readTensor(ex, 'merged_logits').data)).to.be.below(1e-4);
      });
      it('loss within 1e-5 relative and every LoRA gradient within 1e-4 of its largest element', async () => {
        const { loss, grads } = await lm.lossAndGrads(ids, { adapter });
        expect(Math.abs(loss - meta.loss_with_adapter) / meta.loss_with_adapter).to.be.below(1e-5);
        expect([...grads.keys()].sort()).to.deep.equal([...meta.grad_keys].sort());
        for (const [k, g] of grads) {
          const e = readTensor(ex, `grad.${k}`).data;
          let mx = 0;
          for (const v of e) mx = Math.max(mx, Math.abs(v));
          expect(maxAbsDiff(g, e) / mx, k).to.be.below(1e-4);
        }
      });
      it('does not leak tensors across calls', async () => {
        await lm.lossAndGrads(ids, { adapter });
        const before = tf.memory().numTensors;
        for (let i = 0; i < 3; i++) { await lm.logits(ids, { adapter }); await lm.lossAndGrads(ids, { adapter }); }
        expect(tf.memory().numTensors).to.equal(before);
      });
    });
  }
}

describe('PEFT adapter export → import', () => {
  for (const name of ['gpt2-tiny', 'llama-tiny']) {
    it(`${name}: round-trips bit-exactly, config included`, async () => {
      const a = await loadPeftAdapter(`${FIX}/${name}/adapter`);
      const dir = await mkdtemp(join(tmpdir(), 'fedlora-peft-'));
      try {
        await savePeftAdapter(a, dir);
        const b = await loadPeftAdapter(dir);
        expect(b.config).to.deep.equal(a.config);
        expect([...b.tensors.keys()]).to.have.members([...a.tensors.keys()]);
        for (const [k, t] of a.tensors) {
          const u = b.tensors.get(k)!;
          expect(u.shape).to.deep.equal(t.shape);
          expect(Buffer.from(u.data.buffer, u.data.byteOffset, u.data.byteLength).equals(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))).to.equal(true);
        }
        const cfg = JSON.parse(await readFile(join(dir, 'adapter_config.json'), 'utf8'));
        expect(cfg).to.include({ peft_type: 'LORA', task_type: 'CAUSAL_LM', bias: 'none', r: 4, lora_alpha: 8 });
        // the original PEFT file's tensor names are what we wrote
        const orig = await loadSafetensors(`${FIX}/${name}/adapter/adapter_model.safetensors`);
        const ours = await loadSafetensors(join(dir, 'adapter_model.safetensors'));
        expect([...ours.entries.keys()].sort()).to.deep.equal([...orig.entries.keys()].sort());
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  }
});
