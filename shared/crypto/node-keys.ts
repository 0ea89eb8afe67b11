/**
 * node:crypto KeyObjects for raw 32-byte curve keys (Ed25519, X25519), imported through the
 * documented JWK form (RFC 8037 `{kty:"OKP", crv, x, d}`) and cached: building a KeyObject dominates
 * the cost of one small signature or DH.
 *
 * - Public keys are cached by value (bounded Map keyed by the key's hex; public data).
 * - Private keys are cached by array identity (WeakMap: an entry dies with its array). An entry also
 *   keeps a salted SHA-256 digest of the secret bytes, so a wiped (zeroed) or overwritten array is
 *   never served its old key; no part of the secret itself is kept outside the KeyObject.
 * - The JWK strings built for an import are transient (JS strings cannot be wiped); the Buffers
 *   this module allocates for secret bytes are zeroed after use.
 */
import { createHash, createPrivateKey, createPublicKey, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto';

export type OkpCurve = 'Ed25519' | 'X25519';

function b64u(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('base64url');
}

export function importPublicKey(crv: OkpCurve, pk: Uint8Array): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv, x: b64u(pk) }, format: 'jwk' });
}

/** `sk` and `pk` are the raw 32-byte private and public keys (`pk` must belong to `sk`). */
export function importPrivateKey(crv: OkpCurve, sk: Uint8Array, pk: Uint8Array): KeyObject {
  return createPrivateKey({ key: { kty: 'OKP', crv, d: b64u(sk), x: b64u(pk) }, format: 'jwk' });
}

export class KeyObjectCache {
  readonly #crv: OkpCurve;
  readonly #maxPublic: number;
  readonly #pub = new Map<string, KeyObject>();
  readonly #priv = new WeakMap<Uint8Array, { key: KeyObject; digest: Buffer }>();
  readonly #salt = randomBytes(16);

  constructor(crv: OkpCurve, maxPublic: number) {
    this.#crv = crv;
    this.#maxPublic = maxPublic;
  }

  publicKey(pk: Uint8Array): KeyObject {
    const id = Buffer.from(pk.buffer, pk.byteOffset, pk.length).toString('hex');
    let k = this.#pub.get(id);
    if (!k) {
      k = importPublicKey(this.#crv, pk);
      if (this.#pub.size >= this.#maxPublic) this.#pub.clear();
      this.#pub.set(id, k);
    }
    return k;
  }

  #digest(sk: Uint8Array): Buffer {
    return createHash('sha256').update(this.#salt).update(sk).digest();
  }

  /**
   * The KeyObject for the raw private key `holder.subarray(0, 32)`; `publicOf()` gives its public key
   * when it has to be imported (not called on a cache hit).
   */
  privateKey(holder: Uint8Array, publicOf: (sk: Uint8Array) => Uint8Array): KeyObject {
    const sk = holder.subarray(0, 32);
    const digest = this.#digest(sk);
    const c = this.#priv.get(holder);
    if (c && timingSafeEqual(c.digest, digest)) return c.key;
    const key = importPrivateKey(this.#crv, sk, publicOf(sk));
    this.#priv.set(holder, { key, digest });
    return key;
  }

  /** Records a KeyObject made elsewhere (key generation) for `holder`. */
  remember(holder: Uint8Array, key: KeyObject): void {
    this.#priv.set(holder, { key, digest: this.#digest(holder.subarray(0, 32)) });
  }
}
