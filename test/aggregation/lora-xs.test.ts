/**
 * LoRA-XS without a model: the deterministic truncated SVD (accuracy, ordering, sign rule, both
 * Gram routes, backend independence of the factor hash, rank nesting), the checkpoint factors, and
 * the lora-xs strategy's averaging (exact in ΔW, rank-aware nesting, secure-sum path, layout slots).
 */
import { expect } from 'chai';
import { getStrategy, aggregatePlain, sharedLayout, flatten, unflatten, elementSlots, makeLayout, type ClientUpdate } from '../../shared/aggregation/index.js';
import { selectBackend, tf } from '../../shared/backend/index.js';
import { loraAName, loraBName, truncateRank, xsRName, type LoraAdapter, type LoraConfig } from '../../shared/lora/adapter.js';
import { factorsHash, moduleFactors, truncatedSvd, xsAdapter, xsToLora } from '../../shared/lora/xs.js';
import { xsFactorsFromCheckpoint } from '../../shared/lora/xs-checkpoint.js';
import { loadSafetensors, readFloatTensor } from '../../shared/model/safetensors.js';
import type { TensorMap } from '../../shared/tensor.js';
import { rng, randTensor } from './helpers.js';

const SEED = 20241;
const BASE: Omit<LoraConfig, 'r' | 'loraAlpha'> = { targetModules: ['q', 'v'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' };

function randMatrix(rows: number, cols: number, seed: number): Float64Array {
  const next = rng(seed);
  return Float64Array.from({ length: rows * cols }, () => next() * 2 - 1);
}

/** A rows×cols matrix with prescribed singular values (random orthonormal bases by QR of noise). */
function withSpectrum(rows: number, cols: number, sigma: number[], seed: number): Float64Array {
  const orth = (n: number, k: number, s: number): Float64Array => {
    const a = randMatrix(n, k, s);
    // Gram–Schmidt (test-side, float64): columns orthonormal
    for (let j = 0; j < k; j++) {
      for (let p = 0; p < j; p++) {
        let d = 0;
        for (let i = 0; i < n; i++) d += a[i * k + j]! * a[i * k + p]!;
        for (let i = 0; i < n; i++) a[i * k + j] = a[i * k + j]! - d * a[i * k + p]!;
      }
      let nn = 0;
      for (let i = 0; i < n; i++) nn += a[i * k + j]! ** 2;
      for (let i = 0; i < n; i++) a[i * k + j] = a[i * k + j]! / Math.sqrt(nn);
    }
    return a;
  };
  const k = sigma.length;
  const u = orth(rows, k, seed), v = orth(cols, k, seed + 1);
  const m = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) {
    let s = 0;
    for (let l = 0; l < k; l++) s += u[i * k + l]! * sigma[l]! * v[j * k + l]!;
    m[i * cols + j] = s;
  }
  return m;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

/** ΔW = s · B R A (or s · B A without R) in float64, [out, in]. */
function deltaW(ad: LoraAdapter, m: string): Float64Array {
  const A = ad.tensors.get(loraAName(m))!, B = ad.tensors.get(loraBName(m))!, R = ad.tensors.get(xsRName(m));
  const r = A.shape[0]!, inF = A.shape[1]!, out = B.shape[0]!;
  const s = ad.config.loraAlpha / ad.config.r;
  const br = new Float64Array(out * r);
  for (let i = 0; i < out; i++) for (let j = 0; j < r; j++) {
    if (!R) { br[i * r + j] = B.data[i * r + j]!; continue; }
    let x = 0;
    for (let l = 0; l < r; l++) x += B.data[i * r + l]! * R.data[l * r + j]!;
    br[i * r + j] = x;
  }
  const d = new Float64Array(out * inF);
  for (let i = 0; i < out; i++) for (let c = 0; c < inF; c++) {
    let x = 0;
    for (let l = 0; l < r; l++) x += br[i * r + l]! * A.data[l * inF + c]!;
    d[i * inF + c] = s * x;
  }
  return d;
}

describe('LoRA-XS factors (deterministic truncated SVD)', function () {
  this.timeout(60_000);
  before(() => console.log(`      lora-xs test seed ${SEED}`));

  for (const [rows, cols, label] of [[12, 30, 'wide, full Jacobi'], [150, 110, 'tall, subspace iteration']] as const) {
    it(`recovers a known spectrum, ordered, with orthonormal V and U·Σ = M·V (${rows}×${cols}, ${label})`, () => {
      const sigma = [9, 7, 5, 3.5, 2, 1.2, 0.7, 0.4, 0.2, 0.1];
      const m = withSpectrum(rows, cols, sigma, SEED);
      const k = 6;
      const f = truncatedSvd(m, rows, cols, k);
      expect(maxDiff(f.sigma, sigma.slice(0, k))).to.be.below(1e-9);
      for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) {
        let d = 0;
        for (let c = 0; c < cols; c++) d += f.vt[i * cols + c]! * f.vt[j * cols + c]!;
        expect(Math.abs(d - (i === j ? 1 : 0)), `VᵀV[${i},${j}]`).to.be.below(1e-9);
      }
      const mv = new Float64Array(rows * k);
      for (let r = 0; r < rows; r++) for (let j = 0; j < k; j++) {
        let x = 0;
        for (let c = 0; c < cols; c++) x += m[r * cols + c]! * f.vt[j * cols + c]!;
        mv[r * k + j] = x;
      }
      expect(maxDiff(mv, f.us)).to.be.below(1e-9);
    });
  }

  it('sign rule: the largest-|entry| of every left singular vector is positive, and both Gram routes agree', () => {
    for (const [rows, cols] of [[20, 35], [140, 100]] as const) {
      const m = withSpectrum(rows, cols, [10, 8, 6, 4, 3, 2, 1], SEED + rows);
      const k = 5;
      const a = truncatedSvd(m, rows, cols, k, 'left'), b = truncatedSvd(m, rows, cols, k, 'right');
      for (const f of [a, b]) for (let j = 0; j < k; j++) {
        let best = 0, val = 0;
        for (let r = 0; r < rows; r++) { const x = f.us[r * k + j]!; if (Math.abs(x) > best) { best = Math.abs(x); val = x; } }
        expect(val, `column ${j}`).to.be.greaterThan(0);
      }
      // the two routes do different arithmetic, so they agree to rounding, never by a sign flip
      expect(maxDiff(a.us, b.us), `${rows}×${cols} U·Σ`).to.be.below(1e-8);
      expect(maxDiff(a.vt, b.vt), `${rows}×${cols} Vᵀ`).to.be.below(1e-8);
      // and a negated input gives the same factors up to the sign of the product: U·Σ fixed, Vᵀ flipped
      const neg = truncatedSvd(m.map((x) => -x), rows, cols, k);
      const same = truncatedSvd(m, rows, cols, k);
      expect(maxDiff(neg.us, same.us)).to.be.below(1e-8);
      expect(maxDiff(neg.vt, same.vt.map((x) => -x))).to.be.below(1e-8);
    }
  });

  it('ranks nest: the rank-r′ factors are the first r′ rows/columns of the rank-r ones', () => {
    const m = withSpectrum(40, 24, [6, 5, 4, 3, 2, 1.5, 1, 0.5], SEED + 3);
    const w = { shape: [40, 24], data: Float32Array.from(m) };
    const big = moduleFactors(w, { in: 24, out: 40 }, false, 6), small = moduleFactors(w, { in: 24, out: 40 }, false, 3);
    expect(maxDiff(small.A.data, big.A.data.subarray(0, 3 * 24))).to.be.below(1e-6);
    const bCols = Float32Array.from({ length: 40 * 3 }, (_, i) => big.B.data[Math.floor(i / 3) * 6 + (i % 3)]!);
    expect(maxDiff(small.B.data, bCols)).to.be.below(1e-6);
  });

  it('fan_in_fan_out (GPT-2 Conv1D [in, out]) gives the factors of the transposed weight', () => {
    const m = withSpectrum(18, 10, [4, 3, 2, 1], SEED + 4); // [out=18, in=10]
    const t = new Float32Array(10 * 18);
    for (let o = 0; o < 18; o++) for (let i = 0; i < 10; i++) t[i * 18 + o] = m[o * 10 + i]!;
    const lin = moduleFactors({ shape: [18, 10], data: Float32Array.from(m) }, { in: 10, out: 18 }, false, 3);
    const conv = moduleFactors({ shape: [10, 18], data: t }, { in: 10, out: 18 }, true, 3);
    expect(factorsHash(new Map([['a', lin.A], ['b', lin.B]]))).to.equal(factorsHash(new Map([['a', conv.A], ['b', conv.B]])));
    expect(() => moduleFactors({ shape: [18, 10], data: Float32Array.from(m) }, { in: 10, out: 18 }, false, 11)).to.throw(/rank 11/);
  });

  it('factors of a checkpoint hash the same under the cpu and the wasm backend (pure float64 JS, no tfjs)', async () => {
    const dir = 'test/fixtures/hf/gpt2-tiny/base';
    await selectBackend('cpu');
    expect(tf.getBackend()).to.equal('cpu');
    const onCpu = await xsFactorsFromCheckpoint(dir, ['c_attn', 'c_proj', 'c_fc'], 8);
    await selectBackend('wasm');
    expect(tf.getBackend()).to.equal('wasm');
    const onWasm = await xsFactorsFromCheckpoint(dir, ['c_attn', 'c_proj', 'c_fc'], 8);
    const h = factorsHash(onCpu);
    console.log(`      gpt2-tiny factors at r=8: ${onCpu.size} tensors, sha256 ${h.slice(0, 16)}…`);
    expect(factorsHash(onWasm)).to.equal(h);
    // and they describe the checkpoint: U·Σ·Vᵀ at full rank 64 = W for a square module (attn.c_proj is 64×64)
    const full = await xsFactorsFromCheckpoint(dir, ['attn.c_proj'], 64);
    const st = await loadSafetensors(`${dir}/model.safetensors`);
    const name = [...st.entries.keys()].find((n) => /h\.0\.attn\.c_proj\.weight$/.test(n))!;
    const W = readFloatTensor(st, name); // Conv1D [in, out]
    const mod = [...full.keys()].find((k) => /h\.0\.attn\.c_proj\.lora_A/.test(k))!.replace(/^base_model\.model\.|\.lora_A\.weight$/g, '');
    const A = full.get(loraAName(mod))!, B = full.get(loraBName(mod))!;
    let worst = 0;
    for (let o = 0; o < 64; o++) for (let i = 0; i < 64; i++) {
      let x = 0;
      for (let l = 0; l < 64; l++) x += B.data[o * 64 + l]! * A.data[l * 64 + i]!;
      worst = Math.max(worst, Math.abs(x - W.data[i * 64 + o]!));
    }
    expect(worst).to.be.below(1e-5);
  });
});

describe('lora-xs strategy', () => {
  const xs = getStrategy('lora-xs');
  const SHAPES = new Map([['layers.0.q', { in: 7, out: 9 }], ['layers.0.v', { in: 5, out: 6 }]]);
  const MAX = 4;
  const global = (): LoraAdapter => {
    const factors: TensorMap = new Map();
    let s = SEED;
    for (const [m, sh] of SHAPES) {
      const f = moduleFactors({ shape: [sh.out, sh.in], data: Float32Array.from(randMatrix(sh.out, sh.in, s++)) }, sh, false, MAX);
      factors.set(loraAName(m), f.A); factors.set(loraBName(m), f.B);
    }
    return xsAdapter(factors, MAX, 8, BASE);
  };
  /** A client's trained adapter at `rank`: the global truncated to its rank (factors, R block) with a new random R. */
  const client = (g: LoraAdapter, rank: number, weight: number, seed: number): ClientUpdate & { adapter: LoraAdapter } => {
    const mine = truncateRank(g, rank);
    const next = rng(seed);
    for (const m of SHAPES.keys()) mine.tensors.set(xsRName(m), randTensor([rank, rank], next, 0.3));
    return { tensors: mine.tensors, rank, weight, adapter: mine };
  };

  it('uploads only the r×r cores: r² values per module instead of (in + out)·r', () => {
    const g = global();
    const layout = sharedLayout(xs, g);
    expect(layout.entries.map((e) => e.name)).to.deep.equal([...SHAPES.keys()].map(xsRName).sort());
    expect(layout.size).to.equal(SHAPES.size * MAX * MAX);
    expect(sharedLayout(getStrategy('fedit'), g).size).to.equal([...SHAPES.values()].reduce((s, x) => s + (x.in + x.out) * MAX, 0));
    // layout slot of core element (i, j) is max(i, j)
    const slots = elementSlots(makeLayout([{ name: xsRName('m'), shape: [3, 3] }]));
    expect([...slots]).to.deep.equal([0, 1, 2, 1, 1, 2, 2, 2, 2]);
  });

  it('averaging R is exact: the global ΔW is the weighted mean of the client ΔW (equal ranks)', () => {
    const g = global();
    const cs = [client(g, MAX, 3, 1), client(g, MAX, 1, 2), client(g, MAX, 6, 3)];
    const out = aggregatePlain(xs, cs, g, MAX);
    for (const m of SHAPES.keys()) {
      const want = new Float64Array(SHAPES.get(m)!.out * SHAPES.get(m)!.in);
      const total = cs.reduce((s, c) => s + c.weight, 0);
      for (const c of cs) deltaW(c.adapter, m).forEach((x, i) => { want[i] = want[i]! + (c.weight / total) * x; });
      expect(maxDiff(deltaW(out, m), want), m).to.be.below(1e-5);
      // the frozen factors are untouched
      expect([...out.tensors.get(loraAName(m))!.data]).to.deep.equal([...g.tensors.get(loraAName(m))!.data]);
      expect([...out.tensors.get(loraBName(m))!.data]).to.deep.equal([...g.tensors.get(loraBName(m))!.data]);
    }
  });

  it('heterogeneous ranks nest: element (i, j) is averaged over the clients whose rank exceeds max(i, j); untrained elements keep their values', () => {
    const g = global();
    for (const m of SHAPES.keys()) g.tensors.get(xsRName(m))!.data.set(randTensor([MAX, MAX], rng(99), 0.1).data);
    const cs = [client(g, 1, 2, 11), client(g, 2, 1, 12), client(g, 3, 1, 13)]; // nobody at rank 4
    const out = aggregatePlain(xs, cs, g, MAX);
    for (const m of SHAPES.keys()) {
      const R = out.tensors.get(xsRName(m))!.data, prev = g.tensors.get(xsRName(m))!.data;
      for (let i = 0; i < MAX; i++) for (let j = 0; j < MAX; j++) {
        const slot = Math.max(i, j);
        const have = cs.filter((c) => c.rank > slot);
        const w = have.reduce((s, c) => s + c.weight, 0);
        const want = w ? have.reduce((s, c) => s + c.weight * c.tensors.get(xsRName(m))!.data[i * c.rank + j]!, 0) / w : prev[i * MAX + j]!;
        expect(R[i * MAX + j]!, `${m}[${i},${j}]`).to.be.closeTo(want, 1e-6);
      }
    }
  });

  it('through the secure path (flat Σ of contributions) gives the same global as plain aggregation', () => {
    const g = global();
    const cs = [client(g, 2, 3, 21), client(g, 4, 5, 22)];
    const layout = sharedLayout(xs, g);
    const acc = new Float64Array(layout.size);
    for (const c of cs) {
      const parts: TensorMap = new Map(layout.entries.map((e) => [e.name, xs.contribution(e.name, c.tensors.get(e.name)!, c.weight, MAX)]));
      flatten(parts, layout).forEach((x, i) => { acc[i] = acc[i]! + x; });
    }
    const viaSum = xs.finalize(unflatten(Float32Array.from(acc), layout), cs.map((c) => ({ rank: c.rank, weight: c.weight })), g, MAX);
    const plain = aggregatePlain(xs, cs, g, MAX);
    for (const [k, t] of plain.tensors) expect(maxDiff(viaSum.tensors.get(k)!.data, t.data), k).to.be.below(1e-7);
  });

  it('xsToLora folds R into B (same ΔW, plain A/B names only) and a rank-r′ client sees the leading block', () => {
    const g = global();
    const c = client(g, 3, 1, 31);
    const plain = xsToLora(c.adapter);
    expect([...plain.tensors.keys()].some((k) => k.includes('lora_R'))).to.equal(false);
    for (const m of SHAPES.keys()) expect(maxDiff(deltaW(plain, m), deltaW(c.adapter, m)), m).to.be.below(1e-6);
    const t = truncateRank(g, 2);
    for (const m of SHAPES.keys()) {
      expect(t.tensors.get(xsRName(m))!.shape).to.deep.equal([2, 2]);
      expect(t.tensors.get(loraAName(m))!.shape[0]).to.equal(2);
    }
    expect(t.config.loraAlpha / t.config.r).to.equal(g.config.loraAlpha / g.config.r);
  });

  it('refuses a non-square or over-rank core and a server optimiser', () => {
    expect(() => xs.contribution(xsRName('m'), { shape: [2, 3], data: new Float32Array(6) }, 1, MAX)).to.throw(/square/);
    expect(() => xs.contribution(xsRName('m'), { shape: [5, 5], data: new Float32Array(25) }, 1, MAX)).to.throw(/rank 5/);
    expect(() => xs.contribution(loraBName('m'), { shape: [3, 2], data: new Float32Array(6) }, 1, MAX)).to.throw(/not shared/);
    expect(() => xs.createServer({ maxRank: MAX, seed: 1, optimizer: { name: 'fedadam' } })).to.throw(/server optimiser/);
  });
});
