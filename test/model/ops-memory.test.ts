/**
 * Ops that keep fewer activations for the backward pass (shared/model/ops.ts): addNoSave, silu,
 * geluNew and the fused norms give the values and gradients of tfjs' own autodiff of the plain
 * expressions.
 */
import { expect } from 'chai';
import { maxAbsDiff } from './compare.js';
import { tf, selectBackend } from '../../shared/backend/index.js';
import { addNoSave, silu, geluNew, fusedNorm } from '../../shared/model/ops.js';
import { fastExp, hasFusedKernels } from '../../shared/backend/fused-kernels.js';
import { LAYER_NORM, RMS_NORM } from '../../shared/model/families/norms.js';
import { mulberry32 } from '../../shared/data/random.js';

function rand(shape: number[], seed: string, scale = 3): tf.Tensor {
  const rng = mulberry32(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(Float32Array.from({ length: n }, () => (rng() - 0.5) * 2 * scale), shape);
}

/** Value and gradient (w.r.t. every input) of sum(f(xs) ⊙ probe), a probe making each output count differently. */
function vg(f: (...xs: tf.Tensor[]) => tf.Tensor, xs: tf.Tensor[], probe: tf.Tensor): { value: Float32Array; grads: Float32Array[] } {
  return tf.tidy(() => {
    const value = f(...xs).dataSync() as Float32Array;
    const g = tf.grads((...ys: tf.Tensor[]) => tf.sum(tf.mul(f(...ys), probe)))(xs);
    return { value, grads: g.map((t) => t.dataSync() as Float32Array) };
  });
}

for (const backend of ['cpu', 'wasm']) {
  describe(`activation-saving ops (${backend})`, () => {
    before(async () => { await selectBackend(backend); });

    it('silu and geluNew: values and gradients equal autodiff of the plain expressions (1e-5)', () => {
      const x = rand([7, 33], 'act-x', 6), probe = rand([7, 33], 'act-p', 1);
      const plainSilu = (t: tf.Tensor) => tf.mul(t, tf.sigmoid(t));
      const plainGelu = (t: tf.Tensor) => tf.mul(tf.mul(t, 0.5), tf.add(1, tf.tanh(tf.mul(tf.add(t, tf.mul(tf.mul(tf.mul(t, t), t), 0.044715)), Math.sqrt(2 / Math.PI)))));
      for (const [mine, plain] of [[silu, plainSilu], [geluNew, plainGelu]] as const) {
        const a = vg(mine, [x], probe), b = vg(plain, [x], probe);
        // fused kernels (double precision, own exp) on wasm/cpu: float32 rounding apart, |x| ≤ 6
        expect(maxAbsDiff(a.value, b.value)).to.be.below(2e-6);
        expect(maxAbsDiff(a.grads[0]!, b.grads[0]!)).to.be.below(1e-5);
        expect(Math.max(...b.grads[0]!.map(Math.abs))).to.be.above(0.1); // not a vacuous comparison
      }
      tf.dispose([x, probe]);
    });

    it('addNoSave: same-shape and bias sums with their gradients; other shapes are refused', () => {
      const a = rand([5, 6], 'add-a'), b = rand([5, 6], 'add-b'), bias = rand([6], 'add-bias'), probe = rand([5, 6], 'add-p', 1);
      for (const y of [b, bias]) {
        const m = vg((p: tf.Tensor, q: tf.Tensor) => addNoSave(p, q), [a, y], probe), p = vg(tf.add, [a, y], probe);
        expect(maxAbsDiff(m.value, p.value)).to.equal(0);
        expect(maxAbsDiff(m.grads[0]!, p.grads[0]!)).to.be.below(1e-6);
        expect(maxAbsDiff(m.grads[1]!, p.grads[1]!)).to.be.below(1e-5);
        expect(m.grads[1]!.length).to.equal(y.size);
      }
      // a constant bias: the value and x's gradient are the same, and the bias gets none
      const c = vg((t: tf.Tensor) => addNoSave(t, bias, { constB: true }), [a], probe), p = vg(tf.add, [a, bias], probe);
      expect(maxAbsDiff(c.value, p.value)).to.equal(0);
      expect(maxAbsDiff(c.grads[0]!, p.grads[0]!)).to.be.below(1e-6);
      const bad = rand([5], 'add-bad');
      expect(() => addNoSave(a, bad)).to.throw(RangeError, /neither equal nor a bias/);
      tf.dispose([a, b, bias, probe, bad]);
    });

    it('fusedNorm: LayerNorm and RMSNorm values and input gradients equal autodiff of the composed norms (1e-5)', () => {
      expect(hasFusedKernels()).to.equal(true);
      const x = rand([9, 40], 'norm-x', 4), probe = rand([9, 40], 'norm-p', 1);
      const w = rand([40], 'norm-w', 2) as tf.Tensor1D, b = rand([40], 'norm-b', 1) as tf.Tensor1D;
      for (const [kind, spec, bias] of [['layer', LAYER_NORM, b], ['layer', LAYER_NORM, null], ['rms', RMS_NORM, null]] as const) {
        const mine = vg((t: tf.Tensor) => fusedNorm(kind, t as tf.Tensor2D, w, bias, 1e-5), [x], probe);
        const plain = vg((t: tf.Tensor) => spec.apply(tf, t as tf.Tensor2D, w, bias, 1e-5), [x], probe);
        expect(maxAbsDiff(mine.value, plain.value), `${kind} value`).to.be.below(1e-5);
        expect(maxAbsDiff(mine.grads[0]!, plain.grads[0]!), `${kind} gradient`).to.be.below(1e-5);
        expect(Math.max(...plain.grads[0]!.map(Math.abs))).to.be.above(0.1);
      }
      tf.dispose([x, probe, w, b]);
    });

    it('fastExp: relative error below 1e-8 over [-100, 100]', () => {
      let worst = 0;
      for (let v = -100; v <= 100; v += 0.0137) worst = Math.max(worst, Math.abs(fastExp(v) - Math.exp(v)) / Math.exp(v));
      expect(worst).to.be.below(1e-8);
    });
  });
}
