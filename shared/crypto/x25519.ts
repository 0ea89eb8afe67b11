import { diffieHellman, randomFillSync } from 'node:crypto';
import { x25519 as nobleX25519 } from '@noble/curves/ed25519.js';
import { KeyObjectCache, importPrivateKey } from './node-keys.js';

/**
 * X25519 (RFC 7748). The DH runs in OpenSSL (node:crypto, ~40 µs, what a coordinator recovering
 * many dropped clients' pair masks needs); a public key is derived from a raw private key with
 * @noble/curves (node:crypto cannot import a raw private key without its public half). RFC 7748 is
 * fully specified (clamping included), so both libraries and tweetnacl give identical bytes
 * (test/crypto/seal.test.ts checks it).
 */
const keys = new KeyObjectCache('X25519', 8192);

/** Raw X25519(sk, pk). Returns all zeros for low-order points (callers reject that). */
export function x25519(sk: Uint8Array, pk: Uint8Array): Uint8Array {
  const privateKey = keys.privateKey(sk, x25519Base);
  const publicKey = keys.publicKey(pk);
  try {
    return new Uint8Array(diffieHellman({ privateKey, publicKey }));
  } catch (e) {
    // OpenSSL refuses to output the all-zero secret of a low-order point; anything else is a real error
    if ((e as { code?: string }).code === 'ERR_OSSL_FAILED_DURING_DERIVATION') return new Uint8Array(32);
    throw e;
  }
}

/** X25519 public key of a raw 32-byte private key. */
export function x25519Base(sk: Uint8Array): Uint8Array {
  return nobleX25519.getPublicKey(sk);
}

/**
 * A fresh key pair: 32 bytes from the OS CSPRNG (RFC 7748 clamps any 32 bytes into a valid scalar) and
 * the public key from @noble/curves. Not node:crypto's generateKeyPairSync + export: in Node 20 a
 * garbage collection that runs while a generated key is exported to JWK can finalize the key's
 * generation job, whose destructor waits on the mutex the export holds, and the process hangs in
 * futex_wait (seen in the test suite, a native stack taken with gdb).
 */
export function x25519KeyPair(): { publicKey: Uint8Array; secretKey: Uint8Array } {
  const secretKey = randomFillSync(new Uint8Array(32));
  const publicKey = nobleX25519.getPublicKey(secretKey);
  keys.remember(secretKey, importPrivateKey('X25519', secretKey, publicKey));
  return { publicKey, secretKey };
}
