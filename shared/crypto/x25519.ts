import { createPublicKey, diffieHellman } from 'node:crypto';
import nacl from 'tweetnacl';
import { rawKeyObjects } from './node-keys.js';

/**
 * X25519 with OpenSSL (node:crypto) when available, tweetnacl otherwise. RFC 7748 is fully
 * specified (clamping included), so both give identical bytes; OpenSSL is ~10× faster, which is
 * what a coordinator recovering many dropped clients' pair masks needs.
 */
let useNode = true;
const keys = rawKeyObjects([0x06, 0x03, 0x2b, 0x65, 0x6e], 8192);

/** Raw X25519(sk, pk). Returns all zeros for low-order points (callers reject that). */
export function x25519(sk: Uint8Array, pk: Uint8Array): Uint8Array {
  if (useNode) {
    try {
      return new Uint8Array(diffieHellman({ privateKey: keys.privateKey(sk), publicKey: keys.publicKey(pk) }));
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
      const der = createPublicKey(keys.privateKey(sk)).export({ format: 'der', type: 'spki' });
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
