/**
 * Base-weight storage codecs (shared/model/frozen/quant.ts) against their definitions: NF4 (QLoRA),
 * int8 per-output-channel absmax, bf16 round-to-nearest-even. Hand-worked vectors plus a brute-force
 * reference on seeded random weights (seed printed).
 */
import { expect } from 'chai';
import {
  NF4_LEVELS, NF4_BLOCK, nf4Index, quantizeNf4, dequantizeNf4, quantizeInt8, dequantizeInt8, toBf16, fromBf16, storageBytes,
} from '../../shared/model/frozen/quant.js';

function normals(n: number, seed: number): Float32Array {
  // xorshift32 + Box–Muller: reproducible without tfjs
  let s = seed >>> 0 || 1;
  const u = () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return (s + 0.5) / 4294967296; };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
  return out;
}

/** The definition, by brute force: the level nearest to v (lowest index on a tie). */
function nearestLevel(v: number): number {
  let best = 0;
  for (let i = 1; i < 16; i++) if (Math.abs(v - NF4_LEVELS[i]!) < Math.abs(v - NF4_LEVELS[best]!)) best = i;
  return best;
}

describe('base-weight codecs', () => {
  describe('nf4 (QLoRA NormalFloat, blocks of 64)', () => {
    it('has the 16 published levels: sorted, ±1 at the ends, an exact 0', () => {
      expect(NF4_LEVELS).to.have.length(16);
      for (let i = 1; i < 16; i++) expect(NF4_LEVELS[i]!).to.be.above(NF4_LEVELS[i - 1]!);
      expect([NF4_LEVELS[0], NF4_LEVELS[7], NF4_LEVELS[15]]).to.deep.equal([-1, 0, 1]);
      expect(NF4_LEVELS[13]).to.equal(0.5626170039176941);
    });

    it('hand-worked block: codes, packing (first value in the high nibble) and dequantized values', () => {
      // absmax 2 → scaled [1, −0.5, 0.25, 0, 0.51, 0.5]
      const w = new Float32Array([2, -1, 0.5, 0, 1.02, 1]);
      expect([...w].map((v) => nf4Index(v / 2))).to.deep.equal([15, 2, 10, 7, 13, 12]);
      const q = quantizeNf4(w);
      expect([...q.packed]).to.deep.equal([0xf2, 0xa7, 0xdc]);
      expect(q.absmax![0]).to.equal(2);
      const d = dequantizeNf4(q);
      const want = [15, 2, 10, 7, 13, 12].map((c) => Math.fround(NF4_LEVELS[c]! * 2));
      expect([...d]).to.deep.equal(want);
    });

    it('matches the brute-force definition on 10,000 seeded normals (odd length, partial last block) and bounds the error', () => {
      const seed = 20261202;
      console.log(`      seed ${seed}`);
      const w = normals(10_001, seed);
      const q = quantizeNf4(w);
      const d = dequantizeNf4(q);
      let maxGap = 0;
      for (let i = 1; i < 16; i++) maxGap = Math.max(maxGap, NF4_LEVELS[i]! - NF4_LEVELS[i - 1]!);
      for (let b = 0; b * NF4_BLOCK < w.length; b++) {
        let m = 0;
        for (let i = b * NF4_BLOCK; i < Math.min(w.length, (b + 1) * NF4_BLOCK); i++) m = Math.max(m, Math.abs(w[i]!));
        expect(q.absmax![b]).to.equal(Math.fround(m));
        for (let i = b * NF4_BLOCK; i < Math.min(w.length, (b + 1) * NF4_BLOCK); i++) {
          const code = (i & 1) === 0 ? q.packed[i >> 1]! >> 4 : q.packed[i >> 1]! & 15;
          expect(code, `value ${i}`).to.equal(nearestLevel(w[i]! / q.absmax![b]!));
          expect(Math.abs(d[i]! - w[i]!)).to.be.at.most((maxGap / 2) * m * (1 + 1e-6));
        }
      }
      expect(q.packed.length).to.equal(5001);
    });

    it('double quantization: 600 block scales in 3 second-level blocks, RMS error within 5 % of plain NF4, fewer bytes', () => {
      const w = normals(64 * 600, 7); // 600 blocks → 3 double-quant blocks of 256
      const plain = quantizeNf4(w), dq = quantizeNf4(w, { doubleQuant: true });
      expect(dq.absmax).to.equal(null);
      expect(dq.dq!.codes.length).to.equal(600);
      expect(dq.dq!.scale.length).to.equal(3);
      const a = dequantizeNf4(plain), b = dequantizeNf4(dq);
      let errA = 0, errB = 0;
      for (let i = 0; i < w.length; i++) { errA += (a[i]! - w[i]!) ** 2; errB += (b[i]! - w[i]!) ** 2; }
      expect(Math.sqrt(errB / w.length)).to.be.below(Math.sqrt(errA / w.length) * 1.05);
      expect(storageBytes('nf4', w.length, 1, true)).to.be.below(storageBytes('nf4', w.length));
    });

    it('an all-zero block stays exactly zero', () => {
      const d = dequantizeNf4(quantizeNf4(new Float32Array(70)));
      expect([...d].every((v) => v === 0)).to.equal(true);
    });
  });

  describe('int8 (per output channel absmax)', () => {
    it('hand-worked rows', () => {
      const w = new Float32Array([0.5, -1.27, 0.01, /* row 2 */ 0, 0, 0]);
      const q = quantizeInt8(w, 2, 3);
      expect([...q.q]).to.deep.equal([50, -127, 1, 0, 0, 0]);
      expect(q.scale[0]).to.be.closeTo(0.01, 1e-9);
      expect(q.scale[1]).to.equal(0);
      const d = dequantizeInt8(q);
      for (let i = 0; i < 3; i++) expect(d[i]).to.be.closeTo(w[i]!, 1e-7);
    });
    it('error at most half a step per row on seeded normals; refuses a wrong shape', () => {
      const rows = 33, cols = 70, w = normals(rows * cols, 11);
      const q = quantizeInt8(w, rows, cols), d = dequantizeInt8(q);
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) expect(Math.abs(d[r * cols + c]! - w[r * cols + c]!)).to.be.at.most(q.scale[r]! / 2 * (1 + 1e-5));
      expect(() => quantizeInt8(w, rows, cols + 1)).to.throw(RangeError, /int8/);
    });
  });

  describe('bf16', () => {
    it('rounds to nearest, ties to even; keeps sign, zero, infinities and NaN', () => {
      const one = 1, half = 1 + 2 ** -8, threeHalves = 1 + 3 * 2 ** -8, justAbove = 1 + 2 ** -8 + 2 ** -20;
      expect([...toBf16(new Float32Array([one, half, threeHalves, justAbove, -0, Infinity, -2]))]).to.deep.equal([0x3f80, 0x3f80, 0x3f82, 0x3f81, 0x8000, 0x7f80, 0xc000]);
      expect(Number.isNaN(fromBf16(toBf16(new Float32Array([NaN])))[0])).to.equal(true);
      const w = normals(1000, 3), d = fromBf16(toBf16(w));
      for (let i = 0; i < w.length; i++) expect(Math.abs(d[i]! - w[i]!)).to.be.at.most(Math.abs(w[i]!) * 2 ** -8);
    });
  });

  it('storage sizes: nf4 ≈ 4.5 bits/value (4.13 with double quantization), int8 ≈ 8, bf16 16', () => {
    const n = 896 * 4864;
    expect(storageBytes('fp32', n)).to.equal(4 * n);
    expect(storageBytes('bf16', n)).to.equal(2 * n);
    expect(storageBytes('int8', n, 4864)).to.equal(n + 4 * 4864);
    expect((8 * storageBytes('nf4', n)) / n).to.be.closeTo(4.5, 0.01);
    expect((8 * storageBytes('nf4', n, 1, true)) / n).to.be.closeTo(4.127, 0.01);
  });
});
