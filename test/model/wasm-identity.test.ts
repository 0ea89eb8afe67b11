/**
 * The wasm Identity kernel shares its input's heap buffer (shared/backend: shareIdentityOnWasm) instead
 * of copying it: one buffer, two references, each dispose drops one, and autodiff (which saves tensors
 * through Identity) still gives exact gradients.
 */
import { expect } from 'chai';
import { selectBackend, tf } from '../../shared/backend/index.js';

describe('wasm Identity shares data', () => {
  before(async () => { expect((await selectBackend('wasm')).name).to.equal('wasm'); });

  it('clone (the Identity kernel) returns the same buffer with one more reference; the data outlives the first dispose', () => {
    const backend = tf.backend() as unknown as { refCount(id: object): number };
    const before = tf.memory().numDataBuffers;
    const x = tf.tensor1d([1.5, -2, 3.25, 4]);
    const y = tf.clone(x);
    expect(y.dataId).to.equal(x.dataId);
    expect(backend.refCount(x.dataId)).to.equal(2);
    expect(tf.memory().numDataBuffers - before).to.equal(1); // one buffer for both tensors (the stock kernel makes two)
    x.dispose();
    expect(backend.refCount(y.dataId)).to.equal(1);
    expect([...y.dataSync()]).to.deep.equal([1.5, -2, 3.25, 4]);
    y.dispose();
    expect(backend.refCount(y.dataId)).to.equal(0);
    expect(tf.memory().numDataBuffers).to.equal(before);
  });

  it('a value written after a clone (a variable assigned a new value) leaves the shared copy unchanged', () => {
    const v = tf.variable(tf.tensor1d([1, 2, 3]));
    const snapshot = tf.clone(v);
    v.assign(tf.tensor1d([7, 8, 9]));
    expect([...snapshot.dataSync()]).to.deep.equal([1, 2, 3]);
    expect([...v.dataSync()]).to.deep.equal([7, 8, 9]);
    snapshot.dispose(); v.dispose();
  });

  it('gradients through saved tensors are exact: d/dx Σ x·exp(x) = (1 + x)·exp(x)', () => {
    const xs = [-1.5, -0.25, 0, 0.5, 2];
    const start = tf.memory().numTensors;
    const g = tf.tidy(() => tf.grad((x: tf.Tensor) => tf.sum(tf.mul(x, tf.exp(x))))(tf.tensor1d(xs)));
    const got = [...g.dataSync()];
    g.dispose();
    xs.forEach((x, i) => expect(got[i]).to.be.closeTo((1 + x) * Math.exp(x), 1e-5));
    expect(tf.memory().numTensors).to.equal(start);
  });
});
