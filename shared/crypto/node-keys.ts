/**
 * node:crypto KeyObjects for raw 32-byte curve keys (Ed25519, X25519), cached: building a
 * KeyObject dominates the cost of one small signature or DH. Public keys are cached by value
 * (bounded); private keys by array identity, re-checked against a prefix of the bytes so a wiped
 * (zeroed) array is never served its old key.
 */
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { concatBytes } from './encoding.js';

export interface RawKeyObjects {
  publicKey(pk: Uint8Array): KeyObject;
  /** `holder`'s first 32 bytes are the raw private key (tweetnacl's 64-byte Ed25519 form included). */
  privateKey(holder: Uint8Array): KeyObject;
}

/** `oid` is the curve's algorithm identifier bytes (06 03 2b 65 70 for Ed25519, … 6e for X25519). */
export function rawKeyObjects(oid: readonly number[], maxPublic: number): RawKeyObjects {
  const spki = new Uint8Array([0x30, 0x2a, 0x30, 0x05, ...oid, 0x03, 0x21, 0x00]);
  const pkcs8 = new Uint8Array([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, ...oid, 0x04, 0x22, 0x04, 0x20]);
  const pubCache = new Map<string, KeyObject>();
  const privCache = new WeakMap<Uint8Array, { key: KeyObject; tag: string }>();
  return {
    publicKey(pk) {
      const id = Buffer.from(pk).toString('base64');
      let k = pubCache.get(id);
      if (!k) {
        k = createPublicKey({ key: Buffer.from(concatBytes(spki, pk)), format: 'der', type: 'spki' });
        if (pubCache.size >= maxPublic) pubCache.clear();
        pubCache.set(id, k);
      }
      return k;
    },
    privateKey(holder) {
      const tag = String(holder.subarray(0, 12));
      const c = privCache.get(holder);
      if (c && c.tag === tag) return c.key;
      const key = createPrivateKey({ key: Buffer.from(concatBytes(pkcs8, holder.subarray(0, 32))), format: 'der', type: 'pkcs8' });
      privCache.set(holder, { key, tag });
      return key;
    },
  };
}
