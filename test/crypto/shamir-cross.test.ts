import { expect } from 'chai';
import { split, combine } from 'shamir-secret-sharing';
import { combineShares, reconstructVerified, splitSecret, type Share } from '../../shared/crypto/index.js';
import { gfMulReference } from './gf256-reference.js';
import { seededBytes, testRng } from './seed.js';
import type { Rng } from '../../shared/data/random.js';

/**
 * Our Shamir (shared/crypto/shamir.ts: chosen x coordinates, log/exp tables with generator 3) against
 * the independently audited `shamir-secret-sharing` (tables with generator 0xe5, random x). Both work
 * in GF(2^8) with the AES polynomial 0x11b — the generator only changes the tables, not the field — and
 * both share a byte-wise degree t−1 polynomial per secret byte, so shares are interchangeable: theirs
 * is `y ‖ x` (x in the last byte), ours `{x, y}`.
 */
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const toTheirs = (s: Share) => new Uint8Array([...s.y, s.x]);
const fromTheirs = (b: Uint8Array): Share => ({ x: b[b.length - 1]!, y: b.slice(0, -1) });

function pick<T>(rng: Rng, xs: readonly T[], k: number): T[] {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) { const j = rng.int(i + 1); [a[i], a[j]] = [a[j]!, a[i]!]; }
  return a.slice(0, k);
}

describe('crypto/shamir against shamir-secret-sharing (independent implementation)', () => {
  const rng = testRng('shamir-cross');
  const cases = [[2, 2, 1], [5, 3, 32], [10, 4, 32], [21, 11, 32], [255, 7, 16], [6, 6, 100]] as const;

  it('their shares, random t-subsets: our combineShares / reconstructVerified recover the secret', async () => {
    for (const [n, t, len] of cases) {
      const secret = seededBytes(rng, len);
      const theirs = (await split(secret, n, t)).map(fromTheirs);
      for (let r = 0; r < 5; r++) {
        const sub = pick(rng, theirs, t);
        expect(hex(combineShares(sub)), `n=${n} t=${t}`).to.equal(hex(secret));
        expect(hex(reconstructVerified(sub, t, (s) => hex(s) === hex(secret))), `n=${n} t=${t}`).to.equal(hex(secret));
      }
    }
  });

  it('our shares at chosen x coordinates, random t-subsets: their combine recovers the secret', async () => {
    for (const [n, t, len] of cases) {
      const secret = seededBytes(rng, len);
      const xs = pick(rng, Array.from({ length: 255 }, (_, i) => i + 1), n);
      const ours = splitSecret(secret, n, t, xs);
      for (let r = 0; r < 5; r++) {
        const sub = pick(rng, ours, t);
        expect(hex(await combine(sub.map(toTheirs))), `n=${n} t=${t} xs=${sub.map((s) => s.x)}`).to.equal(hex(secret));
      }
    }
  });

  it('fewer than t shares: neither implementation recovers the secret (same wrong value from both)', async () => {
    const secret = seededBytes(rng, 32);
    const ours = splitSecret(secret, 7, 4);
    for (let r = 0; r < 5; r++) {
      const sub = pick(rng, ours, 3);
      const a = combineShares(sub), b = await combine(sub.map(toTheirs));
      expect(hex(a)).to.not.equal(hex(secret));
      expect(hex(a)).to.equal(hex(b));
    }
  });

  it('field arithmetic: every share byte at every x in 1..255 equals a table-free reference evaluation', () => {
    const secret = seededBytes(rng, 16), t = 4, L = secret.length;
    const coeffs = seededBytes(rng, (t - 1) * L);
    const xs = Array.from({ length: 255 }, (_, i) => i + 1);
    const shares = splitSecret(secret, 255, t, xs, (k) => { expect(k).to.equal(coeffs.length); return coeffs.slice(); });
    for (const s of shares) {
      for (let j = 0; j < L; j++) {
        let acc = 0;
        for (let c = t - 1; c >= 1; c--) acc = gfMulReference(acc ^ coeffs[(c - 1) * L + j]!, s.x);
        expect(s.y[j], `x=${s.x} byte ${j}`).to.equal(acc ^ secret[j]!);
      }
    }
  });
});
