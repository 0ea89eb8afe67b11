import { createPrivateKey, createPublicKey, diffieHellman, type KeyObject } from 'node:crypto';
import nacl from 'tweetnacl';
import { concatBytes } from './encoding.js';

/**
 * X25519 with OpenSSL (node:crypto) when available, tweetnacl otherwise. RFC 7748 is fully
 * specified (clamping included), so both give identical bytes; OpenSSL is ~10× faster, which is
 * what a coordinator recovering many dropped clients' pair masks needs.
 */
const SPKI = new Uint8Array([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00]);
const PKCS8 = new Uint8Array([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20]);
let useNode = true;

// KeyObject creation dominates small DH calls; cache per key. Private keys are cached by array
// identity and re-checked against a prefix of the bytes, so a wiped (zeroed) array is not reused.
const privCache = new WeakMap<Uint8Array, { k: KeyObject; tag: string }>();
const pubCache = new Map<string, KeyObject>();
function priv(sk: Uint8Array): KeyObject {
  const tag = String(sk.subarray(0, 12));
  const c = privCache.get(sk);
  if (c && c.tag === tag) return c.k;
  const k = createPrivateKey({ key: Buffer.from(concatBytes(PKCS8, sk)), format: 'der', type: 'pkcs8' });
  privCache.set(sk, { k, tag });
  return k;
}
function pub(pk: Uint8Array): KeyObject {
  const id = Buffer.from(pk).toString('base64');
  let k = pubCache.get(id);
  if (!k) {
    k = createPublicKey({ key: Buffer.from(concatBytes(SPKI, pk)), format: 'der', type: 'spki' });
    if (pubCache.size >= 8192) pubCache.clear();
    pubCache.set(id, k);
  }
  return k;
}

/** Raw X25519(sk, pk). Returns all zeros for low-order points (callers reject that). */
export function x25519(sk: Uint8Array, pk: Uint8Array): Uint8Array {
  if (useNode) {
    try {
      return new Uint8Array(diffieHellman({ privateKey: priv(sk), publicKey: pub(pk) }));
    } catch (e) {
      // OpenSSL refuses low-order points (all-zero result); anything else means no usable X25519 here
      if (!/zero|invalid|failed/i.test(String((e as Error).message))) useNode = false;
      else return new Uint8Array(32);
    }
  }
  return nacl.scalarMult(sk, pk);
}

export function x25519Base(sk: Uint8Array): Uint8Array {
  if (useNode) {
    try {
      const der = createPublicKey(priv(sk)).export({ format: 'der', type: 'spki' });
      return new Uint8Array(der.subarray(der.length - 32));
    } catch { useNode = false; }
  }
  return nacl.scalarMult.base(sk);
}

export function x25519KeyPair(): { publicKey: Uint8Array; secretKey: Uint8Array } {
  const secretKey = nacl.randomBytes(32);
  return { publicKey: x25519Base(secretKey), secretKey };
}

const SIGMA = new TextEncoder().encode('expand 32-byte k');
const ZERO16 = new Uint8Array(16);

/** Same as nacl.box.before(pk, sk): HSalsa20 of the X25519 secret. */
export function boxBefore(pk: Uint8Array, sk: Uint8Array): Uint8Array {
  const s = x25519(sk, pk);
  const k = new Uint8Array(32);
  (nacl as unknown as { lowlevel: { crypto_core_hsalsa20(o: Uint8Array, i: Uint8Array, k: Uint8Array, c: Uint8Array): number } })
    .lowlevel.crypto_core_hsalsa20(k, ZERO16, s, SIGMA);
  return k;
}
