/**
 * fedlora's wasm kernels (shared/backend/wasm-kernels.ts). Identity shares its input's heap buffer
 * instead of copying it: one buffer, two references, each dispose drops one, and autodiff (which saves
 * tensors through Identity) still gives exact gradients. Slice / Unpack / SplitV copy contiguous ranges
 * from a view of the heap and leave the rest to the stock kernel: every case is checked against
 * index arithmetic in plain JS. rowView shares a parent's memory (the LM head's slices).
 */
import { expect } from 'chai';
import { selectBackend, tf } from '../../shared/backend/index.js';
import { rowView } from '../../shared/backend/wasm-kernels.js';
import { FUSED, numbered, runFused } from '../../shared/backend/fused-kernels.js';

describe('wasm kernels: Identity shares data; Slice, Unpack and SplitV', () => {
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

  /** Values of x[begin : begin + size] for a row-major tensor of `shape` holding 0, 1, 2, …. */
  function expectedSlice(shape: number[], begin: number[], size: number[]): number[] {
    const strides = shape.map((_, i) => shape.slice(i + 1).reduce((p, q) => p * q, 1));
    const out: number[] = [];
    const idx = new Array<number>(shape.length).fill(0);
    const total = size.reduce((p, q) => p * q, 1);
    for (let n = 0; n < total; n++) {
      let rem = n;
      for (let d = shape.length - 1; d >= 0; d--) { idx[d] = rem % size[d]!; rem = Math.floor(rem / size[d]!); }
      out.push(idx.reduce((acc, v, d) => acc + (v + begin[d]!) * strides[d]!, 0));
    }
    return out;
  }

  const ramp = (shape: number[], dtype: 'float32' | 'int32' = 'float32') =>
    tf.tensor(Array.from({ length: shape.reduce((p, q) => p * q, 1) }, (_, i) => i), shape, dtype);

  it('slice: contiguous and strided ranges, empty and -1 sizes, int32, rank 1 to 5 (against index arithmetic)', () => {
    const cases: Array<[number[], number[], number[]]> = [
      [[10], [3], [4]],
      [[4, 6], [1, 0], [2, 6]],        // whole rows: contiguous
      [[4, 6], [0, 2], [4, 3]],        // columns: strided
      [[3, 4, 5], [1, 0, 0], [2, 4, 5]],
      [[3, 4, 5], [0, 1, 2], [3, 2, 3]],
      [[2, 3, 4, 5], [1, 2, 0, 0], [1, 1, 4, 5]],
      [[2, 3, 4, 5], [0, 1, 1, 1], [2, 2, 2, 3]],
      [[2, 2, 3, 2, 2], [1, 0, 1, 0, 0], [1, 2, 2, 2, 2]],
      [[2, 2, 3, 2, 2], [0, 1, 0, 1, 1], [2, 1, 3, 1, 1]], // single elements, many runs
      [[4, 6], [2, 1], [0, 3]],        // empty
    ];
    for (const dtype of ['float32', 'int32'] as const) {
      for (const [shape, begin, size] of cases) {
        const x = ramp(shape, dtype);
        const y = tf.slice(x, begin, size);
        expect(y.dtype).to.equal(dtype);
        expect(y.shape).to.deep.equal(size);
        expect([...y.dataSync()], `${shape} ${begin} ${size}`).to.deep.equal(expectedSlice(shape, begin, size));
        x.dispose(); y.dispose();
      }
    }
    const x = ramp([4, 6]);
    const y = tf.slice(x, [1, 2], [-1, -1]);
    expect([...y.dataSync()]).to.deep.equal(expectedSlice([4, 6], [1, 2], [3, 4]));
    x.dispose(); y.dispose();
  });

  it('transpose of the last two axes: tall, wide, square, tile edges, batched, int32 and bool (against index arithmetic); other permutations unchanged', () => {
    const shapes = [[1, 1], [3, 200], [200, 3], [64, 64], [65, 130], [130, 65], [2, 3, 70, 33], [4, 33, 70], [0, 5]];
    for (const dtype of ['float32', 'int32'] as const) {
      for (const shape of shapes) {
        const rank = shape.length;
        const perm = [...Array(rank).keys()];
        perm[rank - 2] = rank - 1; perm[rank - 1] = rank - 2;
        const x = ramp(shape, dtype);
        const y = tf.transpose(x, perm);
        const r = shape[rank - 2]!, c = shape[rank - 1]!, n = r * c;
        const want: number[] = [];
        const batch = shape.slice(0, -2).reduce((p, q) => p * q, 1);
        for (let b = 0; b < batch; b++) for (let j = 0; j < c; j++) for (let i = 0; i < r; i++) want.push(b * n + i * c + j);
        expect(y.dtype).to.equal(dtype);
        expect(y.shape).to.deep.equal([...shape.slice(0, -2), c, r]);
        expect([...y.dataSync()], `${shape}`).to.deep.equal(want);
        x.dispose(); y.dispose();
      }
    }
    const m = tf.tensor2d([[true, false, false], [false, true, true]], [2, 3], 'bool');
    expect(tf.transpose(m).arraySync()).to.deep.equal([[1, 0], [0, 1], [0, 1]]);
    // permutations that keep the last axis (runs of it), and one that moves it (the stock kernel),
    // against index arithmetic
    for (const [shape, perm] of [[[2, 3, 4], [1, 0, 2]], [[1, 5, 3, 4], [0, 2, 1, 3]], [[2, 3, 4, 5], [2, 0, 1, 3]], [[2, 3, 4], [2, 0, 1]], [[3, 0, 2], [1, 0, 2]]] as Array<[number[], number[]]>) {
      const x = ramp(shape);
      const y = tf.transpose(x, perm);
      const outShape = perm.map((p) => shape[p]!);
      const strides = tf.util.computeStrides(shape).concat(1);
      const want: number[] = [];
      const total = outShape.reduce((p, q) => p * q, 1);
      const idx = new Array<number>(outShape.length).fill(0);
      for (let o = 0; o < total; o++) {
        want.push(idx.reduce((acc, v, d) => acc + v * strides[perm[d]!]!, 0));
        for (let d = outShape.length - 1; d >= 0; d--) { if (++idx[d]! < outShape[d]!) break; idx[d] = 0; }
      }
      expect(y.shape, `${shape} ${perm}`).to.deep.equal(outShape);
      expect([...y.dataSync()], `${shape} ${perm}`).to.deep.equal(want);
      tf.dispose([x, y]);
    }
    m.dispose();
  });

  it('unstack along every axis and split into equal and uneven parts match the slices they stand for', () => {
    const shape = [3, 4, 5];
    const x = ramp(shape);
    for (let axis = 0; axis < 3; axis++) {
      const parts = tf.unstack(x, axis);
      expect(parts.length).to.equal(shape[axis]);
      parts.forEach((p, i) => {
        const begin = [0, 0, 0]; const size = [...shape];
        begin[axis] = i; size[axis] = 1;
        expect(p.shape).to.deep.equal(shape.filter((_, d) => d !== axis));
        expect([...p.dataSync()]).to.deep.equal(expectedSlice(shape, begin, size));
        p.dispose();
      });
    }
    for (const [axis, splits] of [[0, 3], [1, [1, 3]], [2, [2, -1, 1]], [-1, 5]] as Array<[number, number | number[]]>) {
      const parts = tf.split(x, splits, axis);
      const ax = axis < 0 ? axis + 3 : axis;
      let at = 0;
      for (const p of parts) {
        const begin = [0, 0, 0]; begin[ax] = at;
        expect([...p.dataSync()], `axis ${axis} ${JSON.stringify(splits)}`).to.deep.equal(expectedSlice(shape, begin, p.shape));
        at += p.shape[ax]!;
        p.dispose();
      }
      expect(at).to.equal(shape[ax]);
    }
    x.dispose();
  });

  it('gradients through slice, unstack and split are the stock ones (scatter back into zeros)', () => {
    const x = ramp([2, 3, 4]);
    const g = tf.tidy(() => tf.grad((t: tf.Tensor) => {
      const [a] = tf.unstack(t, 0);
      const [, b] = tf.split(t, [1, 2], 1);
      return tf.add(tf.sum(tf.mul(a!, 2)), tf.add(tf.sum(b!), tf.sum(tf.slice(t, [1, 0, 3], [1, 3, 1]))));
    })(x));
    const expected = new Array(24).fill(0).map((_, i) => {
      const [d0, d1, d2] = [Math.floor(i / 12), Math.floor(i / 4) % 3, i % 4];
      return (d0 === 0 ? 2 : 0) + (d1 >= 1 ? 1 : 0) + (d0 === 1 && d2 === 3 ? 1 : 0);
    });
    expect([...g.dataSync()]).to.deep.equal(expected);
    x.dispose(); g.dispose();
  });

  it('rowView: rows of a tensor sharing its memory; products with a view (XNNPACK caches per tensor) equal those with a copy; the memory lives until the parent and every view are gone', () => {
    const backend = tf.backend() as unknown as { refCount(id: object): number };
    const before = tf.memory().numDataBuffers;
    const W = tf.tensor2d(Float32Array.from({ length: 37 * 5 }, (_, i) => Math.sin(i)), [37, 5]);
    const x = tf.tensor2d(Float32Array.from({ length: 3 * 11 }, (_, i) => Math.cos(i)), [3, 11]);
    const v = rowView(W, 13, 11) as tf.Tensor2D;
    expect(v.shape).to.deep.equal([11, 5]);
    expect([...v.dataSync()]).to.deep.equal([...W.dataSync().subarray(13 * 5, 24 * 5)]);
    const vv = rowView(v, 2, 4); // a view of a view: rows 15..18 of W
    expect([...vv.dataSync()]).to.deep.equal([...W.dataSync().subarray(15 * 5, 19 * 5)]);
    const copy = tf.slice(W, [13, 0], [11, 5]) as tf.Tensor2D;
    for (let i = 0; i < 2; i++) tf.tidy(() => { expect([...tf.matMul(x, v).dataSync()]).to.deep.equal([...tf.matMul(x, copy).dataSync()]); });
    // the parent goes first: its buffer stays for the views
    W.dispose();
    expect([...v.dataSync()]).to.deep.equal([...copy.dataSync()]);
    v.dispose();
    expect([...vv.dataSync()]).to.deep.equal([...copy.dataSync().subarray(2 * 5, 6 * 5)]);
    expect(backend.refCount(W.dataId)).to.equal(1); // held by vv alone
    vv.dispose();
    expect(backend.refCount(W.dataId)).to.equal(0);
    // a new view elsewhere in a new parent gets its own product (no stale XNNPACK operator), and the
    // heap still allocates and frees normally after interior views went away
    const W2 = tf.tensor2d(Float32Array.from({ length: 37 * 5 }, (_, i) => Math.cos(3 * i)), [37, 5]);
    const v2 = rowView(W2, 20, 11) as tf.Tensor2D;
    tf.tidy(() => { expect([...tf.matMul(x, v2).dataSync()]).to.deep.equal([...tf.matMul(x, tf.slice(W2, [20, 0], [11, 5]) as tf.Tensor2D).dataSync()]); });
    expect(() => rowView(W2, 30, 11)).to.throw(RangeError, /outside \[0, 37\)/);
    expect(() => rowView(W2, -1, 2)).to.throw(RangeError);
    tf.dispose([v2, W2, x, copy]);
    for (let i = 0; i < 50; i++) tf.tidy(() => tf.sum(tf.ones([1000 + i, 100])).dataSync());
    expect(tf.memory().numDataBuffers).to.equal(before);
  });

  it('FedloraConcatT lays the transposes of its parts side by side (against concat and transpose)', () => {
    const parts = [[5, 7], [64, 7], [130, 7], [1, 7]].map(([r, c], k) => tf.tensor2d(Float32Array.from({ length: r! * c! }, (_, i) => i * 0.5 + k * 1000), [r!, c!]));
    const got = runFused(FUSED.concatT, numbered(parts)) as tf.Tensor;
    const want = tf.transpose(tf.concat(parts, 0));
    expect(got.shape).to.deep.equal([7, 200]);
    expect([...got.dataSync()]).to.deep.equal([...want.dataSync()]);
    tf.dispose([...parts, got, want]);
  });
});
