import nacl from 'tweetnacl';
import { fail } from './errors.js';
import { type Canonical, bytesEqual, hashCanonical, isBytes } from './encoding.js';

/**
 * t-of-n Shamir sharing over GF(2^8), byte-wise (each byte of the secret is the constant term of its
 * own random degree t−1 polynomial; all bytes share the x coordinate).
 *
 * Why GF(2^8) rather than a prime field: secrets are 32 arbitrary bytes (X25519 secret keys, PRG
 * seeds) which do not fit below a 255-bit prime without splitting or bias, while GF(2^8) maps bytes
 * to field elements exactly, needs no bignum arithmetic and is constant-size (a share is 32 bytes).
 * The cost is n ≤ 255 holders per secret; SecAgg+ deals shares only inside a neighbourhood of
 * k+1 ≪ 255 clients, and x is the holder's position in that neighbourhood, so this never binds.
 * Perfect secrecy holds as in any field: t−1 shares are consistent with every possible secret.
 */
export interface Share {
  x: number;          // 1..255
  y: Uint8Array;      // same length as the secret
}

const EXP = new Uint8Array(512);
const LOG = new Uint8Array(256);
{
  // generator 3 of GF(2^8) with the AES polynomial x^8+x^4+x^3+x+1
  let v = 1;
  for (let i = 0; i < 255; i++) {
    EXP[i] = v; LOG[v] = i;
    v ^= (v << 1) ^ ((v & 0x80) ? 0x11b : 0); // v *= 3
    v &= 0xff;
  }
  for (let i = 255; i < 512; i++) EXP[i] = EXP[i - 255]!;
}

function mul(a: number, b: number): number {
  return a === 0 || b === 0 ? 0 : EXP[LOG[a]! + LOG[b]!]!;
}
function div(a: number, b: number): number {
  if (b === 0) throw new RangeError('GF(256) division by zero');
  return a === 0 ? 0 : EXP[LOG[a]! + 255 - LOG[b]!]!;
}

export const MAX_SHARES = 255;

function checkParams(n: number, t: number): void {
  if (!Number.isInteger(n) || !Number.isInteger(t) || t < 1 || n < t || n > MAX_SHARES) {
    fail('CRYPTO_SHARE_INVALID', `Shamir parameters need 1 ≤ t ≤ n ≤ ${MAX_SHARES} (got t=${t}, n=${n})`);
  }
}

/**
 * Splits `secret` into shares at x = xs (default 1..n). `random(k)` must return k uniformly random
 * bytes (tests may inject a seeded source).
 */
export function splitSecret(secret: Uint8Array, n: number, t: number, xs?: readonly number[], random: (k: number) => Uint8Array = nacl.randomBytes): Share[] {
  checkParams(n, t);
  if (!(secret instanceof Uint8Array) || secret.length === 0 || secret.length > 1024) fail('CRYPTO_SHARE_INVALID', 'secret must be 1..1024 bytes');
  const x = xs ? [...xs] : Array.from({ length: n }, (_, i) => i + 1);
  if (x.length !== n || new Set(x).size !== n || x.some((v) => !Number.isInteger(v) || v < 1 || v > 255)) {
    fail('CRYPTO_SHARE_INVALID', 'share x coordinates must be n distinct integers in 1..255');
  }
  const L = secret.length;
  const coeffs = random((t - 1) * L); // coefficient c of byte j at coeffs[(c-1)*L + j]
  const shares: Share[] = x.map((xi) => ({ x: xi, y: new Uint8Array(L) }));
  for (const s of shares) {
    const y = s.y, lx = LOG[s.x]!;
    for (let j = 0; j < L; j++) {
      // Horner: ((c_{t-1} x + c_{t-2}) x + … ) x + secret
      let acc = 0;
      for (let c = t - 1; c >= 1; c--) {
        acc ^= coeffs[(c - 1) * L + j]!;
        acc = acc === 0 ? 0 : EXP[LOG[acc]! + lx]!;
      }
      y[j] = acc ^ secret[j]!;
    }
  }
  coeffs.fill(0);
  return shares;
}

function checkShares(shares: readonly Share[]): number {
  if (shares.length === 0 || shares.length > MAX_SHARES) fail('CRYPTO_SHARE_INSUFFICIENT', 'no shares to combine');
  const L = shares[0]!.y?.length ?? 0;
  const seen = new Set<number>();
  for (const s of shares) {
    if (!s || !Number.isInteger(s.x) || s.x < 1 || s.x > 255 || !isBytes(s.y) || s.y.length !== L || L === 0) {
      fail('CRYPTO_SHARE_INVALID', 'malformed share (x must be 1..255, all y the same non-zero length)');
    }
    if (seen.has(s.x)) fail('CRYPTO_SHARE_INVALID', `duplicate share x=${s.x}`);
    seen.add(s.x);
  }
  return L;
}

/** Lagrange interpolation at x=0 of all given shares. With fewer than t shares the result is unrelated to the secret. */
export function combineShares(shares: readonly Share[]): Uint8Array {
  return interpolateAt(shares, 0);
}

/** Value at `x` of the polynomial through the given shares (x = 0: the secret; else to extend / check consistency). */
export function interpolateAt(shares: readonly Share[], x: number): Uint8Array {
  const L = checkShares(shares);
  const out = new Uint8Array(L);
  for (let i = 0; i < shares.length; i++) {
    let li = 1;
    const xi = shares[i]!.x;
    for (let j = 0; j < shares.length; j++) {
      if (j === i) continue;
      const xj = shares[j]!.x;
      li = mul(li, div(x ^ xj, xi ^ xj));
    }
    if (li === 0) continue;
    // multiply the share's bytes by the basis value via log tables (zero bytes contribute nothing)
    const ll = LOG[li]!;
    const y = shares[i]!.y;
    for (let b = 0; b < L; b++) { const v = y[b]!; if (v) out[b]! ^= EXP[LOG[v]! + ll]!; }
  }
  return out;
}

/**
 * Per-share commitment: H(label, x, y, salt). The dealer signs the list of commitments; whoever
 * later receives a revealed share (the coordinator) checks it and knows exactly which holder lied.
 */
export function shareCommitment(label: Canonical, share: Share, salt: Uint8Array): Uint8Array {
  return hashCanonical('fedlora/shamir/share-commit/v1', { label, x: share.x, y: share.y, salt });
}

export function verifyShareCommitment(label: Canonical, share: Share, salt: Uint8Array, commitment: Uint8Array): boolean {
  if (!isBytes(salt) || !isBytes(commitment, 32)) return false;
  try { return bytesEqual(shareCommitment(label, share, salt), commitment); } catch { return false; }
}

/**
 * Reconstructs from at least t shares and checks the result with `check` (e.g. hash commitment of
 * the secret, or public key derived from it). If more than t shares are given and the first t fail,
 * other t-subsets are tried (bounded), so a minority of bad shares without commitments is survived.
 */
export function reconstructVerified(shares: readonly Share[], t: number, check: (secret: Uint8Array) => boolean, maxTries = 256): Uint8Array {
  if (shares.length < t) fail('CRYPTO_SHARE_INSUFFICIENT', `need ${t} shares, have ${shares.length}`);
  checkShares(shares);
  let tries = 0;
  const idx = Array.from({ length: t }, (_, i) => i);
  for (;;) {
    const s = combineShares(idx.map((i) => shares[i]!));
    if (check(s)) return s;
    if (++tries >= maxTries) break;
    // next t-combination in lexicographic order
    let i = t - 1;
    while (i >= 0 && idx[i] === shares.length - t + i) i--;
    if (i < 0) break;
    idx[i]!++;
    for (let j = i + 1; j < t; j++) idx[j] = idx[j - 1]! + 1;
  }
  return fail('CRYPTO_RECONSTRUCT', `no ${t}-subset of ${shares.length} shares reconstructs a secret matching its commitment`);
}
