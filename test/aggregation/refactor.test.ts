import { expect } from 'chai';
import { refactorAdapter, refactorModule, adapterForRank } from '../../shared/aggregation/refactor.js';
import { householderQR, jacobiSVD } from '../../shared/aggregation/linalg.js';
import { loraAName, loraBName, type LoraAdapter } from '../../shared/lora/adapter.js';
import type { Tensor32 } from '../../shared/tensor.js';
import { rng, randTensor, product, matmul, diffFrob, frob, maxAbsDiff, symmetricEigen } from './helpers.js';

/** B [out, r] and A [r, in] with a spread of scales, as after real training. */
function pair(out: number, inF: number, r: number, seed: number): { b: Tensor32; a: Tensor32 } {
  const next = rng(seed);
  return { b: randTensor([out, r], next, 0.1), a: randTensor([r, inF], next, 1 / Math.sqrt(inF)) };
}

function truncProduct(b: Tensor32, a: Tensor32, k: number): Float64Array {
  const [out, r] = b.shape as [number, number];
  const inF = a.shape[1]!;
  const bk = new Float64Array(out * k);
  for (let i = 0; i < out; i++) for (let j = 0; j < k; j++) bk[i * k + j] = b.data[i * r + j]!;
  return matmul(bk, a.data.subarray(0, k * inF), out, k, inF);
}

function transpose(x: ArrayLike<number>, m: number, n: number): Float64Array {
  const t = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) t[j * m + i] = x[i * n + j]!;
  return t;
}

describe('low-rank refactor', () => {
  const sizes: Array<[number, number, number]> = [[12, 10, 6], [40, 30, 8], [7, 9, 7], [20, 5, 5], [64, 48, 16]];

  for (const [out, inF, r] of sizes) {
    it(`preserves B·A and orders slots by singular value (out=${out}, in=${inF}, r=${r})`, () => {
      const { b, a } = pair(out, inF, r, out * 100 + inF);
      const res = refactorModule(b, a);
      const before = product(b, a), after = product(res.b, res.a);
      expect(diffFrob(before, after) / frob(before)).to.be.below(1e-5);
      for (let j = 1; j < r; j++) expect(res.sigma[j]!).to.be.at.most(res.sigma[j - 1]!);
      // A' rows orthogonal with a common norm; B' columns orthogonal with norms σ_j / c
      const aat = matmul(res.a.data, transpose(res.a.data, r, inF), r, inF, r);
      const c2 = aat[0]!;
      const btb = matmul(transpose(res.b.data, out, r), res.b.data, r, out, r);
      for (let i = 0; i < r; i++) for (let j = 0; j < r; j++) {
        expect(Math.abs(aat[i * r + j]! - (i === j ? c2 : 0))).to.be.below(1e-5 * c2);
        const target = i === j ? res.sigma[i]! ** 2 / c2 : 0;
        expect(Math.abs(btb[i * r + j]! - target)).to.be.below(1e-5 * res.sigma[0]! ** 2 / c2);
      }
      // the A scale is kept: same RMS row norm as the input A
      expect(Math.sqrt(c2) / (frob(a.data) / Math.sqrt(r))).to.be.closeTo(1, 1e-5);
    });

    it(`exposes its slot transforms: B' = B·tB, A' = tA·A, tB·tA = tA·tB = I (out=${out}, in=${inF}, r=${r})`, () => {
      const { b, a } = pair(out, inF, r, out * 31 + inF);
      const res = refactorModule(b, a);
      expect(res.tA).to.not.equal(null);
      const bt = matmul(b.data, res.tB, out, r, r), ta = matmul(res.tA!, a.data, r, r, inF);
      expect(maxAbsDiff(bt, res.b.data) / frob(res.b.data)).to.be.below(1e-5);
      expect(maxAbsDiff(ta, res.a.data) / frob(res.a.data)).to.be.below(1e-5);
      const eye = Float64Array.from({ length: r * r }, (_, k) => (Math.floor(k / r) === k % r ? 1 : 0));
      expect(maxAbsDiff(matmul(res.tB, res.tA!, r, r, r), eye)).to.be.below(1e-9);
      expect(maxAbsDiff(matmul(res.tA!, res.tB, r, r, r), eye)).to.be.below(1e-9);
    });

    it(`truncation to every r' < r is the best rank-r' approximation of B·A by a dense eigen-SVD (out=${out}, in=${inF}, r=${r})`, () => {
      const { b, a } = pair(out, inF, r, out * 7 + inF * 3 + r);
      const res = refactorModule(b, a);
      const ba = product(b, a);
      // reference, independent of the code under test: eigen-decomposition of (BA)ᵀ(BA) by two-sided Jacobi
      const gram = matmul(transpose(ba, out, inF), ba, inF, out, inF);
      const { values, vectors } = symmetricEigen(gram, inF);
      const lambda = [...values].map((v) => Math.max(v, 0));
      for (let j = 0; j < r; j++) expect(res.sigma[j]! / Math.sqrt(lambda[0]!)).to.be.closeTo(Math.sqrt(lambda[j]!) / Math.sqrt(lambda[0]!), 1e-6);
      const norm = frob(ba);
      for (let k = 1; k < r; k++) {
        const approx = truncProduct(res.b, res.a, k);
        const err = diffFrob(ba, approx);
        const tail = Math.sqrt(lambda.slice(k).reduce((s, v) => s + v, 0));
        expect(Math.abs(err - tail) / norm, `k=${k}`).to.be.below(1e-5);
        // the best approximation itself: BA projected on the top-k right singular vectors
        const vk = new Float64Array(inF * k);
        for (let i = 0; i < inF; i++) for (let j = 0; j < k; j++) vk[i * k + j] = vectors[i * inF + j]!;
        const best = matmul(matmul(ba, vk, out, inF, k), transpose(vk, inF, k), out, k, inF);
        expect(diffFrob(best, approx) / norm, `k=${k}`).to.be.below(1e-5);
      }
    });
  }

  it('plain truncation of an unrefactored pair is measurably worse than the optimum (the test can fail)', () => {
    const { b, a } = pair(30, 20, 8, 3);
    const ba = product(b, a);
    const refErr = diffFrob(ba, truncProduct(refactorModule(b, a).b, refactorModule(b, a).a, 3));
    const naiveErr = diffFrob(ba, truncProduct(b, a, 3));
    expect(naiveErr).to.be.greaterThan(refErr * 1.05);
  });

  it('handles B = 0 (fresh adapter): product stays 0, A keeps non-zero orthogonal rows at its scale', () => {
    const next = rng(9);
    const a = randTensor([4, 10], next, 1 / Math.sqrt(10));
    const b: Tensor32 = { shape: [6, 4], data: new Float32Array(24) };
    const res = refactorModule(b, a);
    expect(res.b.data.every((v) => v === 0)).to.equal(true);
    expect([...res.sigma]).to.deep.equal([0, 0, 0, 0]);
    const aat = matmul(res.a.data, transpose(res.a.data, 4, 10), 4, 10, 4);
    const c2 = frob(a.data) ** 2 / 4;
    for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) expect(aat[i * 4 + j]!).to.be.closeTo(i === j ? c2 : 0, 1e-6);
  });

  it('handles rank-deficient products (B of rank 2 at r = 5) and repeated refactoring is stable', () => {
    const next = rng(10);
    const u = randTensor([12, 2], next), w = randTensor([2, 5], next);
    const b: Tensor32 = { shape: [12, 5], data: Float32Array.from(matmul(u.data, w.data, 12, 2, 5)) };
    const a = randTensor([5, 8], next, 0.3);
    const once = refactorModule(b, a);
    expect(once.sigma[2]! / once.sigma[0]!).to.be.below(1e-6);
    const ba = product(b, a);
    expect(diffFrob(ba, product(once.b, once.a)) / frob(ba)).to.be.below(1e-5);
    expect(diffFrob(ba, truncProduct(once.b, once.a, 2)) / frob(ba)).to.be.below(1e-5);
    const twice = refactorModule(once.b, once.a);
    expect(maxAbsDiff(twice.sigma, once.sigma) / once.sigma[0]!).to.be.below(1e-6);
    expect(diffFrob(ba, product(twice.b, twice.a)) / frob(ba)).to.be.below(1e-5);
  });

  it('a rank-deficient A has no tA (null); tB still maps B to B\'', () => {
    const { b, a } = pair(9, 8, 4, 5);
    a.data.copyWithin(8, 0, 8); // row 1 = row 0
    const res = refactorModule(b, a);
    expect(res.tA).to.equal(null);
    expect(maxAbsDiff(matmul(b.data, res.tB, 9, 4, 4), res.b.data) / frob(res.b.data)).to.be.below(1e-5);
    const zero = refactorModule(b, { shape: [4, 8], data: new Float32Array(32) });
    expect(zero.tA).to.equal(null);
  });

  it('refactorAdapter: every module refactored, other tensors and over-ranked modules copied, config kept', () => {
    const p1 = pair(16, 12, 4, 1), p2 = pair(3, 20, 4, 2); // p2: r > out, left as is
    const extra: Tensor32 = { shape: [3], data: Float32Array.from([1, 2, 3]) };
    const adapter: LoraAdapter = {
      config: { r: 4, loraAlpha: 8, targetModules: ['x', 'y'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' },
      tensors: new Map([
        [loraAName('x'), p1.a], [loraBName('x'), p1.b], [loraAName('y'), p2.a], [loraBName('y'), p2.b],
        ['base_model.model.score.weight', extra],
      ]),
    };
    const out = refactorAdapter(adapter);
    expect(out.config).to.deep.equal(adapter.config);
    const bx = out.tensors.get(loraBName('x'))!, ax = out.tensors.get(loraAName('x'))!;
    expect(maxAbsDiff(bx.data, p1.b.data)).to.be.greaterThan(1e-3);
    expect(diffFrob(product(bx, ax), product(p1.b, p1.a)) / frob(product(p1.b, p1.a))).to.be.below(1e-5);
    expect([...out.tensors.get(loraAName('y'))!.data]).to.deep.equal([...p2.a.data]);
    expect([...out.tensors.get('base_model.model.score.weight')!.data]).to.deep.equal([1, 2, 3]);
    expect(out.tensors.get('base_model.model.score.weight')!.data).to.not.equal(extra.data);
  });

  it('adapterForRank truncates to the first slots and keeps alpha/r constant', () => {
    const p = pair(16, 12, 8, 4);
    const g: LoraAdapter = {
      config: { r: 8, loraAlpha: 16, targetModules: ['x'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' },
      tensors: new Map([[loraAName('x'), p.a], [loraBName('x'), p.b]]),
    };
    const r3 = adapterForRank(refactorAdapter(g), 3);
    expect(r3.config.r).to.equal(3);
    expect(r3.config.loraAlpha / r3.config.r).to.equal(2);
    expect(r3.tensors.get(loraAName('x'))!.shape).to.deep.equal([3, 12]);
    expect(r3.tensors.get(loraBName('x'))!.shape).to.deep.equal([16, 3]);
    expect(() => adapterForRank(g, 9)).to.throw(RangeError);
    expect(() => adapterForRank(g, 0)).to.throw(RangeError);
  });

  it('refactors GPT-2-sized modules (768→3072 and 3072→768, r=16) in well under a second each', function () {
    this.timeout(20000);
    for (const [out, inF] of [[3072, 768], [768, 3072]] as const) {
      const { b, a } = pair(out, inF, 16, out);
      refactorModule(b, a); // warm-up (JIT)
      const t0 = performance.now();
      const res = refactorModule(b, a);
      const ms = performance.now() - t0;
      expect(ms, `${out}×${inF}`).to.be.below(500);
      expect(res.a.shape).to.deep.equal([16, inF]);
      // product check on a row sample, cheap at this size
      const rows = [0, 17, out - 1];
      for (const i of rows) {
        const bRow = { shape: [1, 16], data: b.data.slice(i * 16, i * 16 + 16) };
        const rRow = { shape: [1, 16], data: res.b.data.slice(i * 16, i * 16 + 16) };
        const x = product(bRow, a), y = product(rRow, res.a);
        expect(diffFrob(x, y) / frob(x)).to.be.below(1e-5);
      }
    }
  });
});

describe('linalg', () => {
  it('householderQR: Q orthonormal and QR = input, even for zero and dependent columns', () => {
    const m = 6, n = 4;
    const next = rng(1);
    const x = new Float64Array(m * n).map(() => next() - 0.5);
    for (let i = 0; i < m; i++) { x[i * n + 1] = 0; x[i * n + 3] = 2 * x[i * n]!; } // column 1 zero, column 3 = 2·column 0
    const { q, r } = householderQR(x, m, n);
    expect(maxAbsDiff(matmul(q, r, m, n, n), x)).to.be.below(1e-12);
    const qtq = matmul(transpose(q, m, n), q, n, m, n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) expect(qtq[i * n + j]!).to.be.closeTo(i === j ? 1 : 0, 1e-12);
    for (let i = 1; i < n; i++) for (let j = 0; j < i; j++) expect(r[i * n + j]).to.equal(0);
    expect(() => householderQR(new Float64Array(6), 2, 3)).to.throw(RangeError);
  });

  it('jacobiSVD: known singular values and M·V = U·Σ', () => {
    // [[3, 0], [4, 5]] has singular values √45 and √5
    const { us, v, sigma } = jacobiSVD(Float64Array.from([3, 0, 4, 5]), 2);
    expect(sigma[0]).to.be.closeTo(Math.sqrt(45), 1e-12);
    expect(sigma[1]).to.be.closeTo(Math.sqrt(5), 1e-12);
    expect(maxAbsDiff(matmul([3, 0, 4, 5], v, 2, 2, 2), us)).to.be.below(1e-12);
    const z = jacobiSVD(new Float64Array(9), 3);
    expect([...z.sigma]).to.deep.equal([0, 0, 0]);
    expect([...z.v]).to.deep.equal([1, 0, 0, 0, 1, 0, 0, 0, 1]);
  });
});
