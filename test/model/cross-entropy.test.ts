/**
 * The written-out cross-entropy gradient (shared/model/ops.ts weightedCrossEntropy) against the exact
 * (double-precision) value and gradient, and tfjs' own autodiff of logSumExp − pick as a yardstick, on
 * random logits, on every CPU backend, with masked positions.
 */
import { expect } from 'chai';
import { selectBackend, tf } from '../../shared/backend/index.js';
import { weightedCrossEntropy } from '../../shared/model/ops.js';

for (const backend of ['cpu', 'wasm']) {
  describe(`weighted cross entropy with its own gradient (${backend})`, () => {
    before(async () => { await selectBackend(backend); });

    for (const [n, V, seed] of [[6, 11, 3], [40, 257, 4], [5, 50257, 5]] as const) {
      it(`value and gradient match the exact ones (double precision) at least as well as autodiff's: n=${n}, V=${V}, seed ${seed}`, () => {
        const before = tf.memory().numTensors;
        const init = tf.tidy(() => tf.mul(tf.randomNormal([n, V], 0, 1, 'float32', seed), 4)) as tf.Tensor2D;
        const x = tf.variable(init);
        init.dispose(); // large spread: stresses the max shift
        const tgt = tf.tensor1d(Array.from({ length: n }, (_, i) => (i * 7 + seed) % V), 'int32');
        const w = tf.tensor1d(Array.from({ length: n }, (_, i) => (i % 3 === 2 ? 0 : 1)));
        const mine = tf.variableGrads(() => weightedCrossEntropy(x, tgt, w));
        const ref = tf.variableGrads(() => {
          const lse = tf.logSumExp(x, -1);
          const picked = tf.sum(tf.mul(x, tf.oneHot(tgt, V)), -1);
          return tf.div(tf.sum(tf.mul(tf.sub(lse, picked), w)), tf.maximum(tf.sum(w), 1)) as tf.Scalar;
        });
        const a = Object.values(mine.grads)[0]!.dataSync(), b = Object.values(ref.grads)[0]!.dataSync();
        // the exact value and gradient, in double precision: both float32 computations sum V exps, so
        // with V = 50,257 each is off by ~1e-5 relative, and they are compared with the exact one
        const xs = x.dataSync(), ts = tgt.dataSync(), ws = w.dataSync();
        const exact = new Float64Array(n * V);
        let loss = 0;
        const wsum = Math.max(Array.from(ws).reduce((p, q) => p + q, 0), 1);
        for (let r = 0; r < n; r++) {
          let mx = -Infinity;
          for (let j = 0; j < V; j++) mx = Math.max(mx, xs[r * V + j]!);
          let se = 0;
          for (let j = 0; j < V; j++) se += Math.exp(xs[r * V + j]! - mx);
          loss += ws[r]! * (mx + Math.log(se) - xs[r * V + ts[r]!]!);
          for (let j = 0; j < V; j++) exact[r * V + j] = ws[r]! * (Math.exp(xs[r * V + j]! - mx) / se - (j === ts[r] ? 1 : 0)) / wsum;
        }
        loss /= wsum;
        const relErr = (g: ArrayLike<number>) => {
          let m = 0, s = 0;
          for (let i = 0; i < g.length; i++) { m = Math.max(m, Math.abs(g[i]! - exact[i]!)); s = Math.max(s, Math.abs(exact[i]!)); }
          return m / s;
        };
        const mineErr = relErr(a), refErr = relErr(b);
        console.log(`      gradient error vs exact: ours ${mineErr.toExponential(2)}, tfjs autodiff ${refErr.toExponential(2)}`);
        expect(Math.abs(mine.value.dataSync()[0]! - loss)).to.be.below(1e-5 * Math.abs(loss));
        expect(Math.abs(ref.value.dataSync()[0]! - loss)).to.be.below(1e-5 * Math.abs(loss)); // the reference is sane
        expect(mineErr).to.be.below(Math.max(1e-5, 2 * refErr));
        // masked rows get no gradient
        for (let r = 2; r < n; r += 3) for (let j = 0; j < V; j++) expect(a[r * V + j]).to.equal(0);
        tf.dispose([mine.value, ref.value, ...Object.values(mine.grads), ...Object.values(ref.grads), x, tgt, w]);
        expect(tf.memory().numTensors).to.equal(before);
      });
    }

    it('all weights 0: loss 0 and a zero gradient (no division by zero)', () => {
      const x = tf.variable(tf.randomNormal([4, 5], 0, 1, 'float32', 9) as tf.Tensor2D);
      const r = tf.variableGrads(() => weightedCrossEntropy(x, tf.tensor1d([0, 1, 2, 3], 'int32'), tf.zeros([4]) as tf.Tensor1D));
      expect(r.value.dataSync()[0]).to.equal(0);
      expect([...Object.values(r.grads)[0]!.dataSync()].every((v) => v === 0)).to.equal(true);
      tf.dispose([r.value, ...Object.values(r.grads), x]);
    });
  });
}
