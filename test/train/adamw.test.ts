/**
 * The AdamW optimizer (shared/train/trainer.ts) against the update written out in double precision in
 * this file: two micro-batches accumulated per step, clipping by the global gradient norm, bias
 * correction, decoupled weight decay on matrices only, a cosine schedule; as one fused kernel per tensor
 * (wasm, cpu) and as the stock ops other backends run.
 */
import { expect } from 'chai';
import { selectBackend, tf } from '../../shared/backend/index.js';
import { AdamW, lrAt, ownVariable, type OptimConfig } from '../../shared/train/trainer.js';
import { mulberry32 } from '../../shared/data/random.js';
import { hasFusedKernels, setFusedKernels } from '../../shared/backend/fused-kernels.js';

function reference(cfg: OptimConfig, p0: Float64Array[], gradsPerStep: Float64Array[][][], decays: boolean[]): { params: Float64Array[]; norms: number[] } {
  const b1 = cfg.beta1 ?? 0.9, b2 = cfg.beta2 ?? 0.999, eps = cfg.eps ?? 1e-8, wd = cfg.weightDecay ?? 0, clip = cfg.maxGradNorm ?? 1;
  const p = p0.map((a) => Float64Array.from(a)), m = p0.map((a) => new Float64Array(a.length)), v = p0.map((a) => new Float64Array(a.length));
  const norms: number[] = [];
  gradsPerStep.forEach((micro, step) => {
    const count = micro.length;
    const sum = p.map((_, k) => { const s = new Float64Array(p[k]!.length); for (const g of micro) g[k]!.forEach((x, i) => { s[i] = s[i]! + x; }); return s; });
    let sq = 0;
    for (const s of sum) for (const x of s) sq += x * x;
    const norm = Math.sqrt(sq) / count;
    norms.push(norm);
    const coef = (clip > 0 && norm > clip ? clip / (norm + 1e-6) : 1) / count;
    const lr = lrAt(cfg, step), t = step + 1;
    const bc1 = 1 - b1 ** t, bc2 = 1 - b2 ** t;
    p.forEach((pk, k) => {
      for (let i = 0; i < pk.length; i++) {
        const g = sum[k]![i]! * coef;
        m[k]![i] = b1 * m[k]![i]! + (1 - b1) * g;
        v[k]![i] = b2 * v[k]![i]! + (1 - b2) * g * g;
        const upd = (m[k]![i]! / bc1) / (Math.sqrt(v[k]![i]! / bc2) + eps);
        pk[i] = pk[i]! * (decays[k] && wd > 0 ? 1 - lr * wd : 1) - lr * upd;
      }
    });
  });
  return { params: p, norms };
}

for (const [backend, fused] of [['wasm', true], ['cpu', true], ['wasm', false]] as const) {
  describe(`AdamW (${backend}, ${fused ? 'one fused kernel per tensor' : 'stock ops, as on webgpu/tfjs-node'})`, () => {
    before(async () => { await selectBackend(backend); setFusedKernels(fused); expect(hasFusedKernels()).to.equal(fused); });
    after(() => setFusedKernels(true));

    for (const maxGradNorm of [0.5, 100]) {
      it(`matches the written-out update over 3 steps of 2 micro-batches (clipping ${maxGradNorm === 0.5 ? 'active' : 'inactive'}, weight decay on the matrix only)`, async () => {
        const rng = mulberry32(`adamw-${maxGradNorm}`);
        const shapes = [[6, 5], [5]];
        const init = shapes.map((s) => Float64Array.from({ length: s.reduce((a, b) => a * b, 1) }, () => rng() - 0.5));
        const vars = new Map(shapes.map((s, k) => [`t${k}`, ownVariable(tf.tensor(Float32Array.from(init[k]!), s), true)] as const));
        const cfg: OptimConfig = { lr: 0.05, weightDecay: 0.1, maxGradNorm, totalSteps: 3, warmupSteps: 1 };
        const opt = new AdamW(vars, cfg);
        const before = tf.memory().numTensors;
        // loss Σ c ⊙ p has gradient c: each micro-batch brings its own c
        const grads: Float64Array[][][] = [];
        const norms: number[] = [];
        for (let step = 0; step < 3; step++) {
          const micro: Float64Array[][] = [];
          for (let mb = 0; mb < 2; mb++) {
            const cs = shapes.map((s) => Float32Array.from({ length: s.reduce((a, b) => a * b, 1) }, () => 2 * (rng() - 0.5)));
            micro.push(cs.map((c) => Float64Array.from(c)));
            await opt.accumulate(() => tf.tidy(() => tf.addN([...vars.values()].map((v, k) => tf.sum(tf.mul(v, tf.tensor(cs[k]!, shapes[k]!))))) as tf.Scalar));
          }
          grads.push(micro);
          norms.push((await opt.apply()).gradNorm);
        }
        const ref = reference(cfg, init, grads, [true, false]);
        for (let s = 0; s < 3; s++) expect(Math.abs(norms[s]! - ref.norms[s]!)).to.be.below(1e-5 * ref.norms[s]!);
        let worst = 0;
        [...vars.values()].forEach((v, k) => {
          const got = v.dataSync();
          for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - ref.params[k]![i]!));
        });
        expect(worst).to.be.below(2e-6);
        // the parameters moved (a vacuous comparison would pass with no update at all)
        expect(Math.abs(ref.params[0]![0]! - init[0]![0]!)).to.be.above(1e-3);
        expect(tf.memory().numTensors).to.equal(before);
        opt.dispose();
        for (const v of vars.values()) v.dispose();
      });
    }
  });
}
