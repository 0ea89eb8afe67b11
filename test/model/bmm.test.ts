/**
 * bmm (shared/model/ops.ts): batched products as one 2-D product per batch entry on wasm give the same
 * value and gradients as the plain batched product, and fall back to it below the size threshold.
 */
import { expect } from 'chai';
import { selectBackend, tf } from '../../shared/backend/index.js';
import { BMM_MIN_SIDE, bmm, matMulBT, mm } from '../../shared/model/ops.js';

function maxRel(a: Float32Array | Int32Array | Uint8Array, b: Float32Array | Int32Array | Uint8Array): number {
  let m = 0, s = 0;
  for (let i = 0; i < a.length; i++) { m = Math.max(m, Math.abs(a[i]! - b[i]!)); s = Math.max(s, Math.abs(b[i]!)); }
  return m / (s || 1);
}

describe('bmm: per-slice batched products (wasm)', () => {
  before(async () => { await selectBackend('wasm'); });

  for (const [shapeA, shapeB] of [[[2, 3, 64, 80], [2, 3, 80, 72]], [[5, 96, 64], [5, 64, 128]]] as const) {
    it(`value and both gradients equal mm's: [${shapeA}] @ [${shapeB}]`, () => {
      const before = tf.memory().numTensors;
      const a = tf.randomNormal([...shapeA], 0, 1, 'float32', 1), b = tf.randomNormal([...shapeB], 0, 1, 'float32', 2);
      const dy = tf.randomNormal([...shapeA.slice(0, -1), shapeB[shapeB.length - 1]!], 0, 1, 'float32', 3);
      const g1 = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(bmm(x, y), dy)))([a, b]);
      const g0 = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(mm(x, y), dy)))([a, b]);
      const v1 = bmm(a, b), v0 = mm(a, b);
      expect(v1.shape).to.deep.equal(v0.shape);
      expect(maxRel(v1.dataSync(), v0.dataSync())).to.be.below(1e-5);
      for (let i = 0; i < 2; i++) expect(maxRel(g1[i]!.dataSync(), g0[i]!.dataSync()), `grad ${i}`).to.be.below(1e-5);
      tf.dispose([a, b, dy, v1, v0, ...g1, ...g0]);
      expect(tf.memory().numTensors).to.equal(before);
    });
  }

  it('mm: both gradients equal tfjs\' own MatMul gradient (2-D and batched, thin and wide)', () => {
    for (const { shapeA, n } of [{ shapeA: [256, 64], n: 4 }, { shapeA: [8, 64], n: 256 }, { shapeA: [3, 7, 5], n: 6 }]) {
      const a = tf.randomNormal(shapeA, 0, 1, 'float32', 7);
      const b = tf.randomNormal([...shapeA.slice(0, -2), shapeA[shapeA.length - 1]!, n], 0, 1, 'float32', 8);
      const dy = tf.randomNormal([...shapeA.slice(0, -1), n], 0, 1, 'float32', 9);
      const g1 = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(mm(x, y), dy)))([a, b]);
      const g0 = tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.mul(tf.matMul(x as tf.Tensor2D, y as tf.Tensor2D), dy)))([a, b]);
      for (let i = 0; i < 2; i++) expect(maxRel(g1[i]!.dataSync(), g0[i]!.dataSync()), `[${shapeA}] @ n=${n}: grad ${i}`).to.be.below(1e-5);
      tf.dispose([a, b, dy, ...g1, ...g0]);
    }
  });

  it('matMulBT (x @ wᵀ): value and both gradients equal tfjs\' own, for a LoRA A (m ≤ k) and a LoRA B (m > k)', () => {
    for (const [N, k, m] of [[256, 128, 16], [256, 16, 320], [5, 7, 7]] as const) {
      const x = tf.randomNormal([N, k], 0, 1, 'float32', 17);
      const w = tf.randomNormal([m, k], 0, 1, 'float32', 18);
      const dy = tf.randomNormal([N, m], 0, 1, 'float32', 19);
      const before = tf.memory().numTensors;
      const v1 = matMulBT(x, w), v0 = tf.matMul(x, w, false, true);
      expect(maxRel(v1.dataSync(), v0.dataSync()), `[${N}, ${k}] @ [${m}, ${k}]ᵀ value`).to.be.below(1e-5);
      const g1 = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(matMulBT(a, b), dy)))([x, w]);
      const g0 = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, false, true), dy)))([x, w]);
      for (let i = 0; i < 2; i++) expect(maxRel(g1[i]!.dataSync(), g0[i]!.dataSync()), `[${N}, ${k}] @ [${m}, ${k}]ᵀ: grad ${i}`).to.be.below(1e-5);
      tf.dispose([v1, v0, ...g1, ...g0]);
      expect(tf.memory().numTensors).to.equal(before);
      tf.dispose([x, w, dy]);
    }
  });

  it(`falls back to mm below the threshold (a side under BMM_MIN_SIDE = ${BMM_MIN_SIDE}) and for a single batch entry`, async () => {
    const a = tf.randomNormal([4, BMM_MIN_SIDE / 2, 64], 0, 1, 'float32', 4), b = tf.randomNormal([4, 64, 64], 0, 1, 'float32', 5);
    const single = tf.randomNormal([1, 64, 64], 0, 1, 'float32', 6);
    const kernels = async (f: () => tf.Tensor) => { const p = await tf.profile(f); tf.dispose(p.result as tf.Tensor); return p.kernelNames; };
    const small = await kernels(() => bmm(a, b));
    const one = await kernels(() => bmm(single, single));
    const big = await kernels(() => bmm(b, b));
    expect(small).to.include('BatchMatMul');
    expect(small).to.not.include('Unpack');
    expect(one).to.not.include('Unpack');
    expect(big).to.include('Unpack'); // the sliced path: unstack, 2-D products, stack
    tf.dispose([a, b, single]);
  });
});
