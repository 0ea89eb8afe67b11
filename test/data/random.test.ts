import { expect } from 'chai';
import { Rng, mulberry32, mulberry32FromState, hashSeed, fnv1a32, xoshiro128ss, splitmix32 } from '../../shared/data/random.js';
import { seededStream } from '../../shared/aggregation/init.js';

describe('seeded random', () => {
  // Pinned outputs: scenarios, partitions, LoRA A init (shared across machines) and client seeds depend
  // on these exact numbers; they were taken from the generators before they were merged into one module.
  it('pinned outputs: FNV-1a, hashSeed, mulberry32, xoshiro128** (LoRA init stream)', () => {
    expect(['c1', 'client-abc', 'héllo✓'].map((s) => fnv1a32(s))).to.deep.equal([2284445657, 4098507895, 409292196]);
    expect(['a', 'héllo✓'].map((s) => fnv1a32(new TextEncoder().encode(s)))).to.deep.equal([3826002220, 3147764295]);
    expect(fnv1a32('')).to.equal(0x811c9dc5);
    expect([0, 1, 2, 42, 'abc', '', 'héllo✓', 'init:42'].map((s) => hashSeed(s))).to.deep.equal([2462723854, 2527132011, 3024231355, 939911724, 834765511, 164558732, 112129279, 1960346385]);
    expect(Array.from({ length: 4 }, mulberry32(1))).to.deep.equal([0.1657054431270808, 0.3910158311482519, 0.39401109516620636, 0.5869032314512879]);
    expect(Array.from({ length: 3 }, mulberry32FromState(123))).to.deep.equal([0.7872516233474016, 0.1785435655619949, 0.49531551403924823]);
    expect(Array.from({ length: 4 }, seededStream(42, 'lora_A:model.layers.0.q_proj'))).to.deep.equal([1896763255, 2322578158, 3865525592, 3015422992]);
    // seededStream(seed 0, label '') = xoshiro128** from four splitmix32 words of FNV-1a('')
    const st = { s: fnv1a32('') };
    const words = [splitmix32(st), splitmix32(st), splitmix32(st), splitmix32(st)] as const;
    expect(Array.from({ length: 3 }, xoshiro128ss(words))).to.deep.equal(Array.from({ length: 3 }, seededStream(0, '')));
    expect(xoshiro128ss([0, 0, 0, 0])()).to.equal(xoshiro128ss([1, 0, 0, 0])());
  });

  it('same seed → same stream; nearby seeds → different streams', () => {
    const a = mulberry32(1), b = mulberry32(1), c = mulberry32(2);
    const xa = Array.from({ length: 5 }, a), xb = Array.from({ length: 5 }, b), xc = Array.from({ length: 5 }, c);
    expect(xa).to.deep.equal(xb);
    expect(xa).to.not.deep.equal(xc);
    expect(hashSeed('abc')).to.equal(hashSeed('abc'));
    expect(hashSeed('abc')).to.not.equal(hashSeed('abd'));
    for (const x of xa) expect(x).to.be.within(0, 1);
  });
  it('uniform mean/variance and normal moments are right', () => {
    const r = new Rng(7);
    const n = 50_000;
    let s = 0, s2 = 0;
    for (let i = 0; i < n; i++) { const x = r.next(); s += x; s2 += x * x; }
    expect(s / n).to.be.closeTo(0.5, 0.01);
    expect(s2 / n - (s / n) ** 2).to.be.closeTo(1 / 12, 0.003);
    let m = 0, v = 0;
    for (let i = 0; i < n; i++) { const x = r.normal(); m += x; v += x * x; }
    expect(m / n).to.be.closeTo(0, 0.02);
    expect(v / n).to.be.closeTo(1, 0.03);
  });
  for (const shape of [0.1, 0.5, 1, 3.5]) {
    it(`gamma(${shape}) has mean ≈ shape and variance ≈ shape`, () => {
      const r = new Rng(`g${shape}`);
      const n = 40_000;
      let s = 0, s2 = 0, neg = 0;
      for (let i = 0; i < n; i++) { const x = r.gamma(shape); if (!(x >= 0)) neg++; s += x; s2 += x * x; }
      expect(neg).to.equal(0);
      const mean = s / n;
      expect(mean).to.be.closeTo(shape, 0.05 * Math.max(1, shape));
      expect(s2 / n - mean * mean).to.be.closeTo(shape, 0.12 * Math.max(1, shape));
    });
  }
  it('dirichlet sums to 1 and concentrates for small alpha', () => {
    const r = new Rng(3);
    const p = r.dirichlet(10, 0.05);
    expect(p.reduce((a, b) => a + b, 0)).to.be.closeTo(1, 1e-9);
    expect(Math.max(...p)).to.be.greaterThan(0.5);
    const q = r.dirichlet(10, 1000);
    for (const x of q) expect(x).to.be.closeTo(0.1, 0.03);
  });
  it('shuffle is a permutation and leaves the input alone', () => {
    const xs = Array.from({ length: 50 }, (_, i) => i);
    const s = new Rng(1).shuffle(xs);
    expect(s).to.not.deep.equal(xs);
    expect([...s].sort((a, b) => a - b)).to.deep.equal(xs);
    expect(xs[0]).to.equal(0);
  });
});
