/**
 * The written-out cross-entropy gradient (shared/model/ops.ts weightedCrossEntropy) against tfjs'
 * own autodiff of logSumExp − pick on random logits, on every CPU backend, with masked positions.
 */
import { expect } from 'chai';
import { selectBackend, tf } from '../../shared/backend/index.js';
import { weightedCrossEntropy } from '../../shared/model/ops.js';

for (const backend of ['cpu', 'wasm']) {
  describe(`weighted cross entropy with its own gradient (${backend})`, () => {
    before(async () => { await selectBackend(backend); });

    for (const [n, V, seed] of [[6, 11, 3], [40, 257, 4]] as const) {
      it(`value and gradient equal autodiff's: n=${n}, V=${V}, seed ${seed}`, () => {
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
        let m = 0, s = 0;
        for (let i = 0; i < a.length; i++) { m = Math.max(m, Math.abs(a[i]! - b[i]!)); s = Math.max(s, Math.abs(b[i]!)); }
        expect(Math.abs(mine.value.dataSync()[0]! - ref.value.dataSync()[0]!)).to.be.below(1e-5 * Math.abs(ref.value.dataSync()[0]!));
        expect(m / s).to.be.below(1e-5);
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
