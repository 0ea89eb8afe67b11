/**
 * DoRA oracle (test/fixtures/hf/<model>/dora, written by make_dora_fixtures.py after checking its
 * torch forward against the real transformers + PEFT fixtures): logits with and without merging,
 * loss and the gradient of every lora_A, lora_B and lora_magnitude_vector must be reproduced on
 * every CPU backend, with the LoRA oracle's tolerances.
 */
import { expect } from 'chai';
import { maxAbsDiff } from './compare.js';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCausalLM, type CausalLM } from '../../shared/model/causal-lm.js';
import { loadPeftAdapter, savePeftAdapter } from '../../shared/lora/peft.js';
import { mergeAdapterIntoModel } from '../../shared/lora/merge.js';
import { doraMagnitude, initDoraFromCheckpoint } from '../../shared/lora/dora.js';
import { loadSafetensors, readTensor, type SafetensorsFile } from '../../shared/model/safetensors.js';
import { adapterModules, loraAName, loraBName, loraMName, type LoraAdapter } from '../../shared/lora/adapter.js';
import { tf } from '../../shared/backend/index.js';

const FIX = 'test/fixtures/hf';


function idsOf(ex: SafetensorsFile): number[][] {
  const t = readTensor(ex, 'input_ids');
  const [B, T] = t.shape as [number, number];
  return Array.from({ length: B }, (_, b) => [...t.data.subarray(b * T, (b + 1) * T)]);
}

function bytesOf(d: Float32Array): Buffer { return Buffer.from(d.buffer, d.byteOffset, d.byteLength); }

for (const backend of ['cpu', 'wasm']) {
  for (const name of ['gpt2-tiny', 'llama-tiny']) {
    describe(`DoRA oracle: ${name} on ${backend}`, function () {
      this.timeout(60_000);
      let lm: CausalLM, dora: LoraAdapter, ex: SafetensorsFile, ids: number[][];
      const meta = JSON.parse(readFileSync(`${FIX}/${name}/dora/expected.json`, 'utf8')) as { loss_with_dora: number; grad_keys: string[] };
      before(async () => {
        lm = await loadCausalLM(`${FIX}/${name}/base`, { backend });
        expect(tf.getBackend()).to.equal(backend);
        dora = await loadPeftAdapter(`${FIX}/${name}/dora/adapter`);
        ex = await loadSafetensors(`${FIX}/${name}/dora/expected.safetensors`);
        ids = idsOf(ex);
      });
      after(() => lm.dispose());

      it('imports the PEFT DoRA adapter: use_dora, one [out] magnitude per module', () => {
        expect(dora.config.useDora).to.equal(true);
        const mods = adapterModules(dora);
        expect(mods.length).to.be.greaterThan(0);
        for (const m of mods) expect(dora.tensors.get(loraMName(m))!.shape).to.deep.equal([lm.linearShapes.get(m)!.out]);
      });
      it('DoRA logits within 1e-4 and differ from LoRA with the same A, B', async () => {
        const l = await lm.logits(ids, { adapter: dora });
        expect(maxAbsDiff(l, readTensor(ex, 'dora_logits').data)).to.be.below(1e-4);
        expect(maxAbsDiff(l, readTensor(ex, 'lora_logits').data)).to.be.above(1e-3);
      });
      it('without the magnitudes (plain LoRA, same A, B) the LoRA path is unchanged', async () => {
        const tensors = new Map([...dora.tensors].filter(([k]) => !k.endsWith('lora_magnitude_vector')));
        const lora: LoraAdapter = { config: { ...dora.config, useDora: false }, tensors };
        expect(maxAbsDiff(await lm.logits(ids, { adapter: lora }), readTensor(ex, 'lora_logits').data)).to.be.below(1e-4);
      });
      it('merged DoRA logits within 1e-4', async () => {
        expect(maxAbsDiff(await lm.logits(ids, { adapter: dora, merged: true }), readTensor(ex, 'dora_merged_logits').data)).to.be.below(1e-4);
      });
      it('loss within 1e-5 relative and every A, B and magnitude gradient within 1e-4 of its largest element', async () => {
        const { loss, grads } = await lm.lossAndGrads(ids, { adapter: dora });
        expect(Math.abs(loss - meta.loss_with_dora) / meta.loss_with_dora).to.be.below(1e-5);
        expect([...grads.keys()].sort()).to.deep.equal([...meta.grad_keys].sort());
        expect([...grads.keys()].filter((k) => k.endsWith('lora_magnitude_vector')).length).to.equal(adapterModules(dora).length);
        let worst = 0;
        for (const [k, g] of grads) {
          const e = readTensor(ex, `grad.${k}`).data;
          let mx = 0;
          for (const v of e) mx = Math.max(mx, Math.abs(v));
          const rel = maxAbsDiff(g, e) / mx;
          worst = Math.max(worst, rel);
          expect(rel, k).to.be.below(1e-4);
        }
        console.log(`      worst gradient error ${worst.toExponential(2)} of the tensor's largest element`);
      });
      it('does not leak tensors across calls', async () => {
        await lm.lossAndGrads(ids, { adapter: dora });
        const before = tf.memory().numTensors;
        for (let i = 0; i < 2; i++) {
          await lm.logits(ids, { adapter: dora }); await lm.logits(ids, { adapter: dora, merged: true }); await lm.lossAndGrads(ids, { adapter: dora });
        }
        expect(tf.memory().numTensors).to.equal(before);
      });
    });
  }
}

describe('DoRA adapter files', function () {
  this.timeout(60_000);
  for (const name of ['gpt2-tiny', 'llama-tiny']) {
    it(`${name}: export → import round-trips bit-exactly, PEFT names and use_dora included`, async () => {
      const a = await loadPeftAdapter(`${FIX}/${name}/dora/adapter`);
      const dir = await mkdtemp(join(tmpdir(), 'fedlora-dora-'));
      try {
        await savePeftAdapter(a, dir);
        const b = await loadPeftAdapter(dir);
        expect(b.config).to.deep.equal(a.config);
        expect([...b.tensors.keys()].sort()).to.deep.equal([...a.tensors.keys()].sort());
        for (const [k, t] of a.tensors) {
          const u = b.tensors.get(k)!;
          expect(u.shape).to.deep.equal(t.shape);
          expect(bytesOf(u.data).equals(bytesOf(t.data)), k).to.equal(true);
        }
        const cfg = JSON.parse(await readFile(join(dir, 'adapter_config.json'), 'utf8'));
        expect(cfg).to.include({ peft_type: 'LORA', use_dora: true, r: 4, lora_alpha: 8 });
        // the tensor names in the file are PEFT's saved names, and the bytes of every tensor are the original's
        const orig = await loadSafetensors(`${FIX}/${name}/dora/adapter/adapter_model.safetensors`);
        const ours = await loadSafetensors(join(dir, 'adapter_model.safetensors'));
        expect([...ours.entries.keys()].sort()).to.deep.equal([...orig.entries.keys()].sort());
        for (const k of orig.entries.keys()) expect(bytesOf(readTensor(ours, k).data as Float32Array).equals(bytesOf(readTensor(orig, k).data as Float32Array)), k).to.equal(true);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });

    it(`${name}: magnitude init is PEFT's ‖W + s·BA‖ per output feature (within 1e-6 relative)`, async () => {
      const a = await loadPeftAdapter(`${FIX}/${name}/dora/adapter`);
      const ex = await loadSafetensors(`${FIX}/${name}/dora/expected.safetensors`);
      const init = await initDoraFromCheckpoint(`${FIX}/${name}/base`, a);
      expect(init.config.useDora).to.equal(true);
      for (const m of adapterModules(a)) {
        const want = readTensor(ex, `init_magnitude.${loraMName(m)}`).data;
        const got = init.tensors.get(loraMName(m))!.data;
        let mx = 0;
        for (const v of want) mx = Math.max(mx, Math.abs(v));
        expect(maxAbsDiff(got, want) / mx, m).to.be.below(1e-6);
      }
      // a fresh adapter (B = 0) starts at the base weight's row norms, so DoRA leaves the model unchanged
      const zeroB = new Map(a.tensors);
      for (const m of adapterModules(a)) { const B = a.tensors.get(loraBName(m))!; zeroB.set(loraBName(m), { shape: B.shape, data: new Float32Array(B.data.length) }); }
      const fresh = await initDoraFromCheckpoint(`${FIX}/${name}/base`, { config: a.config, tensors: zeroB });
      const lm = await loadCausalLM(`${FIX}/${name}/base`, { backend: 'cpu' });
      try {
        const ids = idsOf(ex);
        expect(maxAbsDiff(await lm.logits(ids, { adapter: fresh }), readTensor(ex, 'base_logits').data)).to.be.below(1e-5);
      } finally {
        lm.dispose();
      }
      expect(() => doraMagnitude({ shape: [3], data: new Float32Array(3) }, false)).to.throw(/2-D/);
      expect(a.tensors.get(loraAName(adapterModules(a)[0]!))).to.not.equal(undefined);
    });

    it(`${name}: a merged HF folder reproduces PEFT's DoRA merge (bias untouched)`, async () => {
      const dir = await mkdtemp(join(tmpdir(), 'fedlora-dora-merge-'));
      try {
        const a = await loadPeftAdapter(`${FIX}/${name}/dora/adapter`);
        await mergeAdapterIntoModel(`${FIX}/${name}/base`, a, dir, { backend: 'cpu' });
        const lm = await loadCausalLM(dir, { backend: 'cpu' });
        const ex = await loadSafetensors(`${FIX}/${name}/dora/expected.safetensors`);
        const got = await lm.logits(idsOf(ex));
        lm.dispose();
        expect(maxAbsDiff(got, readTensor(ex, 'dora_merged_logits').data)).to.be.below(1e-4);
        if (name === 'gpt2-tiny') {
          const base = await loadSafetensors(`${FIX}/${name}/base/model.safetensors`);
          const merged = await loadSafetensors(join(dir, 'model.safetensors'));
          const bias = [...base.entries.keys()].find((k) => k.endsWith('attn.c_attn.bias'))!;
          expect(bytesOf(readTensor(merged, bias).data as Float32Array).equals(bytesOf(readTensor(base, bias).data as Float32Array))).to.equal(true);
        }
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  }
});
