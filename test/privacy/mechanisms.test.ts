import { expect } from 'chai';
import { testRng } from '../crypto/seed.js';
import {
  CryptoUniform, WRAP_PROBABILITY, checkDistributedShare, chooseDpQuant, clipL2, poissonPmf, samplePoisson, sampleSkellam, skellamPmf, skellamTailBound, type Uniform,
} from '../../shared/privacy/index.js';
import { addInto, decodeSum, encodeUpdate } from '../../shared/crypto/index.js';
import { skellamNoise, type UploadContext } from '../../client/upload/index.js';
import { makeLayout } from '../../shared/aggregation/index.js';

/** Pearson χ² over bins with expected count ≥ 10 (tails pooled); returns the Wilson–Hilferty z-score. */
function chiSquareZ(counts: Map<number, number>, pmf: (k: number) => number, n: number, lo: number, hi: number): { chi2: number; df: number; z: number } {
  const bins: { obs: number; exp: number }[] = [];
  let tailExp = 1;
  for (let k = lo; k <= hi; k++) tailExp -= pmf(k);
  let obs = 0, exp = 0;
  // low tail pooled into the first bin, high tail into the last
  for (const [k, c] of counts) if (k < lo) obs += c;
  let lowExp = 0;
  for (let k = lo - 1; k >= lo - 2000 && k >= -1e9; k--) { const p = pmf(k); lowExp += p; if (p < 1e-300 && k < lo - 50) break; }
  exp = lowExp * n;
  for (let k = lo; k <= hi; k++) {
    obs += counts.get(k) ?? 0;
    exp += pmf(k) * n;
    if (exp >= 10) { bins.push({ obs, exp }); obs = 0; exp = 0; }
  }
  for (const [k, c] of counts) if (k > hi) obs += c;
  exp += Math.max(0, tailExp - lowExp) * n;
  if (bins.length && exp < 10) { bins[bins.length - 1]!.obs += obs; bins[bins.length - 1]!.exp += exp; } else bins.push({ obs, exp });
  let chi2 = 0;
  for (const b of bins) chi2 += (b.obs - b.exp) ** 2 / b.exp;
  const df = bins.length - 1;
  const z = (Math.cbrt(chi2 / df) - (1 - 2 / (9 * df))) / Math.sqrt(2 / (9 * df));
  return { chi2, df, z };
}

function counts(draw: () => number, n: number): Map<number, number> {
  const m = new Map<number, number>();
  for (let i = 0; i < n; i++) { const k = draw(); m.set(k, (m.get(k) ?? 0) + 1); }
  return m;
}

describe('DP mechanisms', function () {
  this.timeout(120_000);

  describe('Poisson and Skellam samplers', () => {
    // seeded uniforms make a failure reproducible; the CSPRNG-fed generator is checked too
    const sources: [string, () => Uniform][] = [['seeded', () => testRng('poisson')], ['node:crypto', () => new CryptoUniform()]];
    for (const [name, src] of sources) {
      for (const lambda of [0.7, 4.5, 37, 2500]) {
        it(`Poisson(${lambda}) passes a χ² goodness-of-fit test against the pmf (${name} uniforms, 1e5 draws)`, () => {
          const u = src();
          const n = 100_000;
          const sd = Math.sqrt(lambda);
          const c = counts(() => samplePoisson(lambda, u), n);
          const r = chiSquareZ(c, (k) => poissonPmf(lambda, k), n, Math.max(0, Math.floor(lambda - 6 * sd)), Math.ceil(lambda + 6 * sd + 5));
          console.log(`      λ=${lambda}: χ²=${r.chi2.toFixed(1)} on ${r.df} df (z=${r.z.toFixed(2)})`);
          expect(r.df).to.be.at.least(3);
          expect(r.z).to.be.below(4.4); // p ≈ 5e-6 under the null
        });
      }
    }

    it('Skellam(6) passes a χ² goodness-of-fit test against its pmf (1e5 draws)', () => {
      const u = testRng('skellam-gof');
      const n = 100_000;
      const c = counts(() => sampleSkellam(6, u), n);
      const r = chiSquareZ(c, (k) => skellamPmf(6, k), n, -15, 15);
      console.log(`      Sk(6): χ²=${r.chi2.toFixed(1)} on ${r.df} df (z=${r.z.toFixed(2)})`);
      expect(r.z).to.be.below(4.4);
    });

    it('the summed noise of 10 clients (1e5 draws) has mean 0 and variance 10·μ_client within tolerance', () => {
      const u = new CryptoUniform();
      const clients = 10, mu = 1234.5, n = 100_000;
      let s1 = 0, s2 = 0, s4 = 0;
      for (let i = 0; i < n; i++) {
        let x = 0;
        for (let j = 0; j < clients; j++) x += sampleSkellam(mu, u);
        s1 += x; s2 += x * x; s4 += x ** 4;
      }
      const V = clients * mu;
      const mean = s1 / n, variance = s2 / n - mean * mean;
      // standard errors: √(V/n) for the mean, √((m4 − V²)/n) for the variance
      const seVar = Math.sqrt((s4 / n - V * V) / n);
      console.log(`      mean ${mean.toFixed(3)} (se ${Math.sqrt(V / n).toFixed(3)}), variance ${variance.toFixed(1)} vs ${V} (se ${seVar.toFixed(1)})`);
      expect(Math.abs(mean)).to.be.below(5 * Math.sqrt(V / n));
      expect(Math.abs(variance - V)).to.be.below(5 * seVar);
    });

    it('the skellamNoise mod adds Sk(μ_client) to each encoded coordinate mod 2^32 and nothing in non-distributed rounds', () => {
      const layout = makeLayout([{ name: 'w', shape: [50_000] }]);
      const quant = { clip: 8, fracBits: 16, maxTotalWeight: 3, maxClients: 3 };
      const base: UploadContext = { roundId: 's:1:1', round: 1, rank: 1, maxRank: 1, weight: 1, quant, layout };
      const enc = new Uint32Array(50_000).fill(((-5) >>> 0));
      expect(skellamNoise(enc, base)).to.equal(enc);
      expect(skellamNoise(enc, { ...base, dp: { mode: 'central', clip: 1, noise: 1 } })).to.equal(enc);
      const mu = 400;
      const out = skellamNoise(enc, { ...base, dp: { mode: 'distributed', clip: 1, noise: 1, clientVariance: mu } });
      let s1 = 0, s2 = 0;
      for (const v of out) { const x = (v | 0) + 5; s1 += x; s2 += x * x; }
      const n = out.length, mean = s1 / n, variance = s2 / n - mean * mean;
      expect(Math.abs(mean)).to.be.below(5 * Math.sqrt(mu / n));
      expect(variance).to.be.closeTo(mu, 5 * mu * Math.sqrt(2 / n));
    });
  });

  describe('clipping', () => {
    it('a clipped update\'s norm never exceeds S, in float and after fixed-point rounding (incl. worst-case rounding)', () => {
      const rng = testRng('clip');
      let cases = 0;
      for (let t = 0; t < 300; t++) {
        const d = 1 + rng.int(5000);
        const S = [0.05, 0.5, 1, 3][rng.int(4)]!;
        const f = 10 + rng.int(12);
        const x = new Float32Array(d);
        const scale = [0.001, 0.1, 1, 100][rng.int(4)]!;
        const kind = rng.int(3);
        for (let i = 0; i < d; i++) {
          if (kind === 0) x[i] = rng.normal() * scale;
          // entries sitting on rounding midpoints: every one rounds away from zero
          else if (kind === 1) x[i] = (rng.int(2) ? 1 : -1) * (Math.floor(rng.next() * 50) + 0.5) * 2 ** -f;
          else x[i] = i % 7 === 0 ? scale : 0;
        }
        let y: Float32Array;
        try { y = clipL2(x, S, f); } catch { continue; } // rounding slack above S: refused, never exceeded
        let fl = 0;
        for (const v of clipL2(x, S)) fl += v * v;
        expect(Math.sqrt(fl)).to.be.at.most(S);
        const q = encodeUpdate(y, 1, { clip: S, fracBits: f, maxTotalWeight: 1, maxClients: 1 });
        let sq = 0;
        for (const v of q) sq += (v | 0) ** 2; // exact: integers below 2^26 squared, summed in doubles below 2^53
        expect(Math.sqrt(sq), `case ${t}`).to.be.at.most(S * 2 ** f);
        cases++;
      }
      expect(cases).to.be.at.least(200);
    });
  });

  describe('fixed-point headroom', () => {
    for (const c of [
      { clients: 10, length: 10_000, dpClip: 1, noise: 1, clip: 8 },
      { clients: 200, length: 100_000, dpClip: 0.5, noise: 3, clip: 0.1 },
      { clients: 5000, length: 2_000, dpClip: 2, noise: 0.8, clip: 8 },
    ]) {
      it(`worst case: ${c.clients} clients at the largest coordinate plus noise at its bound do not wrap (d=${c.length}, S=${c.dpClip}, z=${c.noise})`, () => {
        const dq = chooseDpQuant({ ...c, distributed: true, dropoutRate: 0.2 });
        const q = dq.quant;
        const top = Math.min(c.clip, c.dpClip);
        console.log(`      f=${q.fracBits}, μ_client=${dq.clientVariance.toExponential(3)}, noise bound ${dq.noiseBound} (${(dq.noiseBound / Math.sqrt(dq.clientVariance * c.clients)).toFixed(1)} σ)`);
        expect(dq.noiseBound).to.equal(skellamTailBound(dq.clientVariance * c.clients, WRAP_PROBABILITY / c.length));
        for (const sign of [1, -1]) {
          const acc = new Uint32Array(1);
          let exact = 0;
          // each client sends the largest coordinate a clipped update can have, rounded away from zero, plus its part of the noise bound
          for (let i = 0; i < c.clients; i++) {
            const e = encodeUpdate(Float32Array.of(sign * top), 1, q);
            const noise = sign * (Math.floor(dq.noiseBound / c.clients) + (i < dq.noiseBound % c.clients ? 1 : 0));
            exact += (e[0]! | 0) + noise;
            addInto(acc, Uint32Array.of(((e[0]! | 0) + noise) >>> 0));
          }
          expect(Math.abs(exact)).to.be.below(2 ** 31);
          expect(decodeSum(acc, q)[0]).to.equal(Math.fround(exact * 2 ** -q.fracBits));
          expect(Math.sign(decodeSum(acc, q)[0]!)).to.equal(sign);
        }
      });
    }

    it('a client accepts the share chooseDpQuant announces and refuses one below z²(S·2^f)²/(n−1)', () => {
      const dq = chooseDpQuant({ clients: 8, length: 5000, dpClip: 1, noise: 1.3, clip: 8, distributed: true, expectedClients: 7 });
      const info = { mode: 'distributed' as const, clip: 1, noise: 1.3, clientVariance: dq.clientVariance };
      expect(() => checkDistributedShare(info, dq.quant.fracBits, 8)).to.not.throw();
      expect(() => checkDistributedShare({ ...info, clientVariance: dq.clientVariance * 0.99 }, dq.quant.fracBits, 8)).to.throw(/DP_NOISE|below/);
      expect(() => checkDistributedShare(info, dq.quant.fracBits + 1, 8)).to.throw(/below/);
    });

    it('the noise bound holds empirically and scales like √V', () => {
      const u = new CryptoUniform();
      const mu = 5e4, clients = 8;
      const B = skellamTailBound(mu * clients, WRAP_PROBABILITY / 1000);
      let worst = 0;
      for (let i = 0; i < 20_000; i++) { let x = 0; for (let j = 0; j < clients; j++) x += sampleSkellam(mu, u); worst = Math.max(worst, Math.abs(x)); }
      expect(worst).to.be.below(B);
      expect(B / Math.sqrt(mu * clients)).to.be.within(10, 14);
    });
  });
});
