import { expect } from 'chai';
import type { CryptoError } from '../../shared/errors.js';
import {
  splitSecret, combineShares, reconstructVerified, shareCommitment, verifyShareCommitment, type Share,
  deriveMaskKey, expandMask, expandMaskWebCrypto, addMask,
  encodeUpdate, decodeSum, checkQuantParams, chooseQuantParams, quantErrorBound, addInto, hashCanonical, bytesEqual,
} from '../../shared/crypto/index.js';
import { seededBytes, testRng } from './seed.js';

function code(f: () => unknown): string {
  try { f(); } catch (e) { return (e as CryptoError).code ?? 'no-code'; }
  return 'did-not-throw';
}
function subsets<T>(xs: T[], r: number): T[][] {
  if (r === 0) return [[]];
  return xs.flatMap((x, i) => subsets(xs.slice(i + 1), r - 1).map((s) => [x, ...s]));
}
const eq = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));

describe('crypto/shamir', () => {
  // secrets to split are seeded test cases; the Shamir coefficients stay real randomness (splitSecret's default)
  const rng = testRng('shamir');
  it('every t-subset reconstructs; every (t−1)-subset does not', () => {
    for (const [n, t] of [[6, 3], [7, 4], [5, 5], [4, 2]] as const) {
      const secret = seededBytes(rng, 32);
      const shares = splitSecret(secret, n, t);
      for (const sub of subsets(shares, t)) expect(eq(combineShares(sub), secret), `n=${n} t=${t}`).to.equal(true);
      for (const sub of subsets(shares, t - 1)) if (sub.length) expect(eq(combineShares(sub), secret)).to.equal(false);
    }
  });

  it('t−1 shares are consistent with any secret (they carry no information)', () => {
    const shares = splitSecret(seededBytes(rng, 32), 5, 3);
    const known = shares.slice(0, 2);
    const other = seededBytes(rng, 32);
    // search a third share value byte-wise: for each byte there is exactly one y making the secret byte `other`
    const third: Share = { x: 4, y: new Uint8Array(32) };
    for (let j = 0; j < 32; j++) {
      let found = -1;
      for (let v = 0; v < 256; v++) { third.y[j] = v; if (combineShares([...known, third])[j] === other[j]) { found = v; break; } }
      expect(found).to.be.at.least(0);
      third.y[j] = found;
    }
    expect(eq(combineShares([...known, third]), other)).to.equal(true);
  });

  it('single share bytes are uniform over many splits of a fixed secret', () => {
    const secret = new Uint8Array(32).fill(7);
    const counts = new Uint32Array(256);
    for (let i = 0; i < 400; i++) for (const b of splitSecret(secret, 3, 2)[0]!.y) counts[b]!++;
    // 12,800 samples over 256 bins: expected 50 per bin; a constant or biased share would fail this
    expect(Math.max(...counts)).to.be.below(110);
    expect(Math.min(...counts)).to.be.above(10);
  });

  it('a tampered share is caught by its commitment or by the secret check', () => {
    const secret = seededBytes(rng, 32);
    const shares = splitSecret(secret, 5, 3);
    const salt = seededBytes(rng, 16);
    const label = { dealer: 'a', holder: 'b', kind: 'b' };
    const c = shareCommitment(label, shares[1]!, salt);
    expect(verifyShareCommitment(label, shares[1]!, salt, c)).to.equal(true);
    const bad = { x: shares[1]!.x, y: shares[1]!.y.slice() }; bad.y[0]! ^= 1;
    expect(verifyShareCommitment(label, bad, salt, c)).to.equal(false);
    expect(verifyShareCommitment({ ...label, holder: 'c' }, shares[1]!, salt, c)).to.equal(false);
    const commit = hashCanonical('t', secret);
    const check = (s: Uint8Array) => bytesEqual(hashCanonical('t', s), commit);
    expect(code(() => reconstructVerified([shares[0]!, bad, shares[2]!], 3, check))).to.equal('CRYPTO_RECONSTRUCT');
    expect(eq(reconstructVerified([shares[0]!, bad, shares[2]!, shares[3]!], 3, check), secret)).to.equal(true);
    expect(code(() => reconstructVerified(shares.slice(0, 2), 3, check))).to.equal('CRYPTO_SHARE_INSUFFICIENT');
    expect(code(() => combineShares([shares[0]!, shares[0]!]))).to.equal('CRYPTO_SHARE_INVALID');
    expect(code(() => splitSecret(secret, 256, 3))).to.equal('CRYPTO_SHARE_INVALID');
  });
});

describe('crypto/prg', () => {
  const seed = seededBytes(testRng('prg'), 32);
  const d = { session: 'sess', round: 1, purpose: 'pair', pair: ['a', 'b'] as const };

  it('is deterministic and domain-separated', () => {
    const k = deriveMaskKey(seed, d);
    expect(eq(k, deriveMaskKey(seed, d))).to.equal(true);
    for (const other of [{ ...d, round: 2 }, { ...d, session: 'x' }, { ...d, purpose: 'self' }, { ...d, pair: ['a', 'c'] as const }, { ...d, tensor: 'w' }]) {
      expect(eq(k, deriveMaskKey(seed, other))).to.equal(false);
    }
    expect([...expandMask(k, 1000)]).to.deep.equal([...expandMask(k, 1000)]);
  });

  it('Node AES-CTR path equals the WebCrypto path; add then subtract cancels; offsets work', async () => {
    const k = deriveMaskKey(seed, d);
    const a = expandMask(k, 70_001);
    expect([...(await expandMaskWebCrypto(k, 70_001))]).to.deep.equal([...a]);
    const acc = new Uint32Array(70_001).map((_, i) => i * 2654435761);
    const orig = acc.slice();
    addMask(acc, k, 1); addMask(acc, k, -1);
    expect([...acc]).to.deep.equal([...orig]);
    const part = new Uint32Array(10);
    addMask(part, k, 1, 3, 5);
    expect([...part.subarray(3, 8)]).to.deep.equal([...a.subarray(0, 5)]);
    expect(part[0]).to.equal(0); expect(part[9]).to.equal(0);
  });
});

describe('crypto/quantize', () => {
  it('quantize → aggregate → dequantize stays within the documented bound', () => {
    const rng = testRng('quantize');
    const N = 50, L = 20_000, clip = 0.5;
    const weights = Array.from({ length: N }, (_, i) => 1 + (i % 17) * 13);
    const W = weights.reduce((a, b) => a + b, 0);
    const q = chooseQuantParams({ clip, maxTotalWeight: W, maxClients: N });
    expect(q.fracBits).to.be.at.least(10);
    const sum = new Uint32Array(L);
    const exact = new Float64Array(L);
    for (let c = 0; c < N; c++) {
      const x = new Float32Array(L);
      for (let i = 0; i < L; i++) x[i] = (rng.next() * 2 - 1) * 0.6; // some values outside [−c, c]
      addInto(sum, encodeUpdate(x, weights[c]!, q));
      for (let i = 0; i < L; i++) exact[i]! += weights[c]! * Math.max(-clip, Math.min(clip, x[i]!));
    }
    const dec = decodeSum(sum, q);
    const bound = quantErrorBound(q, N);
    let maxErr = 0;
    for (let i = 0; i < L; i++) maxErr = Math.max(maxErr, Math.abs(dec[i]! - exact[i]!));
    expect(maxErr).to.be.at.most(bound);
    expect(maxErr).to.be.above(0); // the bound is not vacuous
    expect(bound / W).to.be.below(1e-3); // mean error after dividing by W
  });

  it('refuses parameters that could overflow, and bad inputs', () => {
    expect(code(() => checkQuantParams({ clip: 1, fracBits: 20, maxTotalWeight: 4096, maxClients: 10 }))).to.equal('CRYPTO_QUANT_OVERFLOW');
    expect(() => checkQuantParams({ clip: 1, fracBits: 19, maxTotalWeight: 4095, maxClients: 10 })).to.not.throw();
    expect(code(() => chooseQuantParams({ clip: 1e12, maxTotalWeight: 1e6, maxClients: 10 }))).to.equal('CRYPTO_QUANT_OVERFLOW');
    const q = chooseQuantParams({ clip: 1, maxTotalWeight: 100, maxClients: 4 });
    expect(code(() => encodeUpdate(new Float32Array([0, NaN]), 1, q))).to.equal('CRYPTO_QUANT_INPUT');
    expect(code(() => encodeUpdate(new Float32Array([Infinity]), 1, q))).to.equal('CRYPTO_QUANT_INPUT');
    expect(code(() => encodeUpdate(new Float32Array([0]), 101, q))).to.equal('CRYPTO_QUANT_INPUT');
    expect(code(() => encodeUpdate(new Float32Array([0]), -1, q))).to.equal('CRYPTO_QUANT_INPUT');
  });

  it('the worst case at the limit does not wrap: all clients at +c and at −c', () => {
    const N = 8, W = 8;
    const q = chooseQuantParams({ clip: 1, maxTotalWeight: W, maxClients: N });
    for (const v of [1, -1]) {
      const sum = new Uint32Array(1);
      for (let i = 0; i < N; i++) addInto(sum, encodeUpdate(new Float32Array([v * 5]), 1, q));
      expect(decodeSum(sum, q)[0]).to.be.closeTo(v * W, quantErrorBound(q, N));
    }
  });
});
