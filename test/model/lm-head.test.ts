/**
 * The LM head kept in one layout ([V, d]; tied: the embedding table itself) and the training loss fused
 * with it per vocabulary chunk (CausalLM.causalLossOf): logits, loss and LoRA gradients equal the Hugging
 * Face oracle and the unfused path (logits → cross entropy) for one chunk and for many uneven ones, with
 * the head in the tfjs heap and stored outside it; the heap holds no second copy of the head.
 */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { maxAbsDiff } from './compare.js';
import { loadCausalLM, disposeRuntime, type CausalLM, type LoraFactors, type LoraRuntime } from '../../shared/model/causal-lm.js';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { loraAName, loraBName, type LoraAdapter } from '../../shared/lora/adapter.js';
import { loadSafetensors, readTensor, type SafetensorsFile } from '../../shared/model/safetensors.js';
import { tf } from '../../shared/backend/index.js';

const FIX = 'test/fixtures/hf';

/** Loss and LoRA gradients through the full logits (forward → causalLoss), the unfused reference. */
async function viaLogits(lm: CausalLM, ids: number[][], adapter: LoraAdapter, lossMask: number[][], mask: number[][]): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
  const B = ids.length, T = ids[0]!.length;
  const idsT = lm.idsTensor(ids);
  const maskT = tf.tensor2d(mask.flat(), [B, T]), lmT = tf.tensor2d(lossMask.flat(), [B, T]);
  const rt = lm.runtime(adapter);
  const names: string[] = [], xs: tf.Tensor[] = [], mods: Array<[string, 'A' | 'B']> = [];
  for (const [m, f] of rt) { names.push(loraAName(m), loraBName(m)); xs.push(f.A, f.B); mods.push([m, 'A'], [m, 'B']); }
  try {
    const { value, grads } = tf.tidy(() => tf.valueAndGrads((...ts: tf.Tensor[]) => {
      const live: LoraRuntime = new Map();
      ts.forEach((t, i) => {
        const [m, which] = mods[i]!;
        const cur: LoraFactors = live.get(m) ?? { A: t as tf.Tensor2D, B: t as tf.Tensor2D, scale: rt.get(m)!.scale };
        cur[which] = t as tf.Tensor2D;
        live.set(m, cur);
      });
      return lm.causalLoss(lm.forward(idsT, maskT, live), idsT, lmT, maskT);
    })(xs));
    const out = new Map<string, Float32Array>();
    for (let i = 0; i < names.length; i++) out.set(names[i]!, (await grads[i]!.data()) as Float32Array);
    const loss = (await value.data())[0]!;
    value.dispose(); tf.dispose(grads);
    return { loss, grads: out };
  } finally {
    idsT.dispose(); maskT.dispose(); lmT.dispose(); disposeRuntime(rt);
  }
}

function relMax(a: Float32Array, ref: ArrayLike<number>): number {
  let mx = 0;
  for (let i = 0; i < ref.length; i++) mx = Math.max(mx, Math.abs(ref[i]!));
  return maxAbsDiff(a, ref) / mx;
}

for (const backend of ['wasm', 'cpu']) {
  for (const name of ['gpt2-tiny', 'llama-tiny']) {
    describe(`LM head, one layout, chunked fused loss: ${name} on ${backend}`, function () {
      this.timeout(60_000);
      let ex: SafetensorsFile, ids: number[][], adapter: LoraAdapter;
      const meta = JSON.parse(readFileSync(`${FIX}/${name}/expected.json`, 'utf8')) as { loss_with_adapter: number };
      before(async () => {
        ex = await loadSafetensors(`${FIX}/${name}/expected.safetensors`);
        const t = readTensor(ex, 'input_ids');
        const [B, T] = t.shape as [number, number];
        ids = Array.from({ length: B }, (_, b) => [...t.data.subarray(b * T, (b + 1) * T)]);
        adapter = await loadPeftAdapter(`${FIX}/${name}/adapter`);
      });

      // 7 rows per chunk: many chunks, the last one short (no fixture vocabulary is a multiple of 7)
      for (const [label, opts] of [['in heap, one chunk', {}], ['in heap, one weight layout (weightLayouts one)', { weightLayouts: 'one' }], ['in heap, 7-row chunks', { headChunkRows: 7 }], ['stored fp32, 7-row chunks', { baseDtype: 'fp32', headChunkRows: 7 }], ['stored fp32, default chunks', { baseDtype: 'fp32' }]] as const) {
        it(`${label}: logits, loss and gradients match the HF oracle and the unfused logits path; no leaks`, async () => {
          const lm = await loadCausalLM(`${FIX}/${name}/base`, { backend, ...opts });
          try {
            expect(lm.config.vocabSize % 7).to.not.equal(0);
            expect(maxAbsDiff(await lm.logits(ids, { adapter }), readTensor(ex, 'lora_logits').data)).to.be.below(1e-4);
            const fused = await lm.lossAndGrads(ids, { adapter });
            expect(Math.abs(fused.loss - meta.loss_with_adapter) / meta.loss_with_adapter).to.be.below(1e-5);
            for (const [k, g] of fused.grads) expect(relMax(g, readTensor(ex, `grad.${k}`).data), k).to.be.below(1e-4);
            // padding and a partial loss mask: the weights reach the fused loss as they reach causalLoss
            const T = ids[0]!.length;
            const mask = ids.map((_, b) => Array.from({ length: T }, (_, t) => (b === 0 && t >= T - 3 ? 0 : 1)));
            const lossMask = ids.map((_, b) => Array.from({ length: T }, (_, t) => (t % 3 === 1 && b === ids.length - 1 ? 0 : 1)));
            const a = await lm.lossAndGrads(ids, { adapter, mask, lossMask });
            const r = await viaLogits(lm, ids, adapter, lossMask, mask);
            expect(Math.abs(a.loss - r.loss)).to.be.below(1e-5);
            expect(Math.abs(a.loss - fused.loss)).to.be.above(1e-4); // the masks changed the loss
            for (const [k, g] of r.grads) expect(relMax(a.grads.get(k)!, g), k).to.be.below(1e-5);
            const before = tf.memory().numTensors;
            for (let i = 0; i < 2; i++) { await lm.logits(ids, { adapter }); await lm.lossAndGrads(ids, { adapter, mask, lossMask }); await viaLogits(lm, ids, adapter, lossMask, mask); }
            expect(tf.memory().numTensors).to.equal(before);
          } finally {
            lm.dispose();
          }
        });
      }

      it('the tfjs heap holds the head once (in heap) or not at all (stored)', async () => {
        const base = tf.memory().numBytes; // what other tests in this process still hold
        const heap = await loadCausalLM(`${FIX}/${name}/base`, { backend });
        const c = heap.config;
        let linear = 0;
        for (const s of heap.linearShapes.values()) linear += s.in * s.out;
        // a small model on wasm/cpu keeps both layouts of each frozen linear weight (weightLayouts auto);
        // nothing else is duplicated
        expect(tf.memory().numBytes - base).to.equal(4 * (heap.parameterCount + linear));
        heap.dispose();
        const one = await loadCausalLM(`${FIX}/${name}/base`, { backend, weightLayouts: 'one' });
        expect(tf.memory().numBytes - base).to.equal(4 * one.parameterCount);
        one.dispose();
        const stored = await loadCausalLM(`${FIX}/${name}/base`, { backend, baseDtype: 'fp32' });
        const heads = c.tieWordEmbeddings ? 1 : 2;
        expect(tf.memory().numBytes - base).to.equal(4 * (stored.parameterCount - linear - heads * c.vocabSize * c.hiddenSize));
        stored.dispose();
        expect(tf.memory().numBytes).to.equal(base);
      });
    });
  }
}

describe('LM head options', () => {
  it('refuses a headChunkRows that is not a positive integer', async () => {
    for (const bad of [0, -3, 2.5]) {
      let err: unknown;
      try { await loadCausalLM(`${FIX}/gpt2-tiny/base`, { backend: 'cpu', headChunkRows: bad }); } catch (e) { err = e; }
      expect(String(err)).to.match(/headChunkRows must be a positive integer/);
    }
  });
});

describe('block recomputation (LoadOptions.recomputeBlocks)', function () {
  this.timeout(60_000);
  for (const name of ['gpt2-tiny', 'llama-tiny']) {
    for (const kind of ['adapter', 'dora/adapter']) {
      it(`${name}, ${kind.startsWith('dora') ? 'DoRA' : 'LoRA'}: loss and gradients equal those without it (1e-6), no tensor leaks, the tape survives`, async () => {
        const ex = await loadSafetensors(`${FIX}/${name}/expected.safetensors`);
        const t = readTensor(ex, 'input_ids');
        const [B, T] = t.shape as [number, number];
        const ids = Array.from({ length: B }, (_, b) => [...t.data.subarray(b * T, (b + 1) * T)]);
        const adapter = await loadPeftAdapter(`${FIX}/${name}/${kind}`);
        const plain = await loadCausalLM(`${FIX}/${name}/base`, { backend: 'wasm', recomputeBlocks: false });
        const re = await loadCausalLM(`${FIX}/${name}/base`, { backend: 'wasm', recomputeBlocks: true });
        try {
          const a = await plain.lossAndGrads(ids, { adapter }), b = await re.lossAndGrads(ids, { adapter });
          expect(Math.abs(a.loss - b.loss)).to.be.below(1e-6);
          expect([...b.grads.keys()].sort()).to.deep.equal([...a.grads.keys()].sort());
          for (const [k, g] of a.grads) {
            expect(maxAbsDiff(b.grads.get(k)!, g), k).to.be.below(1e-6);
            expect(Math.max(...g.map(Math.abs)), k).to.be.above(0); // every tensor got a real gradient
          }
          const before = tf.memory().numTensors;
          // twice more (a dropped outer tape would fail the second call), and a plain gradient after it
          for (let i = 0; i < 2; i++) await re.lossAndGrads(ids, { adapter });
          await plain.lossAndGrads(ids, { adapter });
          expect(tf.memory().numTensors).to.equal(before);
        } finally {
          plain.dispose(); re.dispose();
        }
      });
    }
  }
});
