/**
 * shared/backend/backprop.ts: the backward pass that frees gradients and saved tensors as it goes
 * must give exactly tfjs' own gradients, hold less at its peak, leak nothing, and survive gradient
 * functions that hand back tensors other holders still use.
 */
import { expect } from 'chai';
import { loadCausalLM } from '../../shared/model/causal-lm.js';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { loadSafetensors, readTensor } from '../../shared/model/safetensors.js';
import { addNoSave, geluNew } from '../../shared/model/ops.js';
import { tf, selectBackend } from '../../shared/backend/index.js';
import { installLeanBackprop, uninstallLeanBackprop, leanBackpropInstalled } from '../../shared/backend/backprop.js';

const FIX = 'test/fixtures/hf';

/** Runs f with tfjs' stock engine.gradients, then puts the freeing one back. */
async function withStock<T>(f: () => Promise<T>): Promise<T> {
  uninstallLeanBackprop();
  try { return await f(); } finally { installLeanBackprop(); }
}

describe('backprop that frees as it goes (shared/backend/backprop.ts)', function () {
  this.timeout(120_000);
  it('is installed when the backend module loads', () => {
    expect(leanBackpropInstalled()).to.equal(true);
  });

  for (const backend of ['cpu', 'wasm']) {
    for (const name of ['gpt2-tiny', 'llama-tiny']) {
      it(`${name} on ${backend}: loss and every LoRA gradient identical to tfjs' own backward pass, no leaks`, async () => {
        const lm = await loadCausalLM(`${FIX}/${name}/base`, { backend });
        try {
          const adapter = await loadPeftAdapter(`${FIX}/${name}/adapter`);
          const ex = await loadSafetensors(`${FIX}/${name}/expected.safetensors`);
          const t = readTensor(ex, 'input_ids');
          const [B, T] = t.shape as [number, number];
          const ids = Array.from({ length: B }, (_, b) => [...t.data.subarray(b * T, (b + 1) * T)]);
          const lean = await lm.lossAndGrads(ids, { adapter });
          const before = tf.memory().numTensors;
          await lm.lossAndGrads(ids, { adapter });
          expect(tf.memory().numTensors).to.equal(before);
          const stock = await withStock(() => lm.lossAndGrads(ids, { adapter }));
          expect(lean.loss).to.equal(stock.loss);
          expect([...lean.grads.keys()]).to.deep.equal([...stock.grads.keys()]);
          for (const [k, g] of lean.grads) expect(Buffer.from(g.buffer, g.byteOffset, g.byteLength).equals(Buffer.from(stock.grads.get(k)!.buffer, stock.grads.get(k)!.byteOffset, stock.grads.get(k)!.byteLength)), k).to.equal(true);
        } finally {
          lm.dispose();
        }
      });
    }
  }

  it('near the end of the backward pass of a 12-block stack it holds a fraction of what tfjs holds', async () => {
    await selectBackend('wasm');
    // a probe at the input: its gradient runs last in the backward pass and reads what is held then
    let held = 0;
    const probe = tf.customGrad(((v: tf.Tensor) => ({ value: tf.mul(v, 1), gradFunc: (dy: tf.Tensor) => { held = tf.memory().numBytes; return tf.mul(dy, 1); } })) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (v: tf.Tensor) => tf.Tensor;
    const ws = Array.from({ length: 12 }, (_, i) => tf.variable(tf.randomNormal([64, 64], 0, 0.1, 'float32', i)));
    const x = tf.randomNormal([256, 64], 0, 1, 'float32', 99);
    const loss = () => {
      let h = probe(x);
      for (const w of ws) h = tf.add(h, geluNew(tf.matMul(h, w)));
      return tf.mean(tf.square(h)) as tf.Scalar;
    };
    const run = () => { const { value, grads } = tf.variableGrads(loss, ws); const out = { held, loss: value.dataSync()[0]!, g: ws.map((w) => grads[w.name]!.dataSync().slice()) }; value.dispose(); tf.dispose(Object.values(grads)); return out; };
    const before = tf.memory().numBytes;
    const lean = run();
    const stock = await withStock(async () => run());
    expect(lean.loss).to.equal(stock.loss);
    for (let i = 0; i < ws.length; i++) expect([...lean.g[i]!]).to.deep.equal([...stock.g[i]!]);
    const leanHeld = lean.held - before, stockHeld = stock.held - before;
    expect(leanHeld, `bytes held at the probe: lean ${leanHeld}, tfjs ${stockHeld}`).to.be.below(stockHeld / 4);
    tf.dispose([...ws, x]);
  });

  describe('gradient functions that return tensors other holders keep', () => {
    before(() => selectBackend('cpu'));
    it('the same dy for both inputs of one node (addNoSave(x, x)), then more uses of x', () => {
      const x = tf.tensor1d([1, 2, 3]);
      const before = tf.memory().numTensors;
      // y = sum((x + x) · x): dy/dx = 4x; addNoSave hands dy back for both of its inputs
      const g = tf.grad((v: tf.Tensor) => tf.sum(tf.mul(addNoSave(v, v), v)))(x);
      expect([...g.dataSync()]).to.deep.equal([4, 8, 12]);
      g.dispose();
      expect(tf.memory().numTensors).to.equal(before);
      x.dispose();
    });
    it('a custom gradient that returns its dy unchanged, feeding an intermediate used twice', () => {
      const pass = tf.customGrad(((v: tf.Tensor) => ({ value: tf.mul(v, 1), gradFunc: (dy: tf.Tensor) => dy })) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (v: tf.Tensor) => tf.Tensor;
      const x = tf.tensor1d([0.5, -1, 2]);
      const before = tf.memory().numTensors;
      // y = sum(p² + 3p) with p = pass(x·2): dy/dx = 2·(2p + 3)
      const g = tf.grad((v: tf.Tensor) => { const p = pass(tf.mul(v, 2)); return tf.sum(tf.add(tf.square(p), tf.mul(p, 3))); })(x);
      expect([...g.dataSync()]).to.deep.equal([2 * (2 * 1 + 3), 2 * (2 * -2 + 3), 2 * (2 * 4 + 3)]);
      g.dispose();
      expect(tf.memory().numTensors).to.equal(before);
      x.dispose();
    });
    it('a custom gradient that returns one of its saved tensors', () => {
      // f(v) = v²/2 written with a gradient that returns the saved input itself
      const half = tf.customGrad(((v: tf.Tensor, save: tf.GradSaveFunc) => { save([v]); return { value: tf.mul(tf.square(v), 0.5), gradFunc: (_dy: tf.Tensor, saved: tf.Tensor[]) => saved[0]! }; }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (v: tf.Tensor) => tf.Tensor;
      const x = tf.tensor1d([3, -4]);
      const before = tf.memory().numTensors;
      const g = tf.grad((v: tf.Tensor) => tf.sum(tf.add(half(v), tf.mul(v, 10))))(x);
      expect([...g.dataSync()]).to.deep.equal([13, 6]);
      g.dispose();
      expect(tf.memory().numTensors).to.equal(before);
      x.dispose();
    });
    it('gradients of gradients (a backward pass inside a tape) still work', () => {
      const x = tf.scalar(1.5);
      const d2 = tf.grad((v: tf.Tensor) => tf.grad((w: tf.Tensor) => tf.mul(tf.mul(w, w), w))(v))(x); // d²(x³)/dx² = 6x
      expect(d2.dataSync()[0]).to.be.closeTo(9, 1e-6);
      d2.dispose(); x.dispose();
    });
    it('GELU (a custom gradient with a dozen intermediates) matches tfjs\' own backward pass', async () => {
      const x = tf.randomNormal([64, 96], 0, 2, 'float32', 7);
      const f = (v: tf.Tensor) => tf.sum(tf.mul(geluNew(v), tf.sin(v)));
      const a = tf.grad(f)(x);
      const b = await withStock(async () => tf.grad(f)(x));
      expect([...a.dataSync()]).to.deep.equal([...b.dataSync()]);
      tf.dispose([a, b, x]);
    });
  });
});
