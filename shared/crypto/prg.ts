import { createCipheriv } from 'node:crypto';
import { hkdf } from '@noble/hashes/hkdf.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { chacha20 } from '@noble/ciphers/chacha.js';
import { fail } from './errors.js';
import { canonicalEncode, concatBytes, domainPrefix, isBytes } from './encoding.js';

/**
 * Mask PRG: AES-256-CTR keystream (zero IV, fresh key per use) read as little-endian uint32 words.
 *
 * The key is HKDF-SHA256 (RFC 5869, @noble/hashes) of the 32-byte seed (pairwise X25519 secret or
 * self-mask seed) with the domain as `info`: session, round, pair or owner, purpose, optional tensor
 * name. Every mask in a session therefore has its own key, so a zero IV never repeats under one key.
 *
 * AES-256-CTR comes from node:crypto (OpenSSL, AES-NI): measured against the audited pure-JS
 * stream ciphers of @noble/ciphers (ChaCha20) and tweetnacl's XSalsa20 on 1,179,648 words it is
 * several times faster (docs/SECURITY.md, `npm run bench:secagg`). The byte stream is identical to
 * WebCrypto AES-CTR (counter block 0, 64-bit counter), so a browser client can expand the same masks
 * with `expandMaskWebCrypto`.
 */
export interface MaskDomain {
  session: string | Uint8Array;
  round: number;
  purpose: string;                    // 'self' | 'pair' | …
  pair?: readonly [string, string];   // ordered (low id, high id) for pairwise masks
  owner?: string;                     // for self masks
  tensor?: string;                    // optional per-tensor separation
}

/** HKDF `info` prefix of mask keys: "fedlora-hkdf-v1" ‖ 0x00 ‖ u32be(len) ‖ "fedlora/prg/v2". */
export const MASK_KEY_INFO_DOMAIN = 'fedlora/prg/v2';
const MASK_KEY_INFO_PREFIX = domainPrefix('fedlora-hkdf-v1', MASK_KEY_INFO_DOMAIN);

/**
 * key = HKDF-SHA256(IKM = seed, salt = none (32 zero bytes), info = prefix ‖ canonical(domain), L = 32)
 * with canonical(domain) = canonicalEncode({session, round, purpose, pair?, owner?, tensor?}).
 */
export function deriveMaskKey(seed: Uint8Array, d: MaskDomain): Uint8Array {
  if (!isBytes(seed, 32)) fail('CRYPTO_BAD_ENCODING', 'mask seed must be 32 bytes');
  if (!Number.isSafeInteger(d.round) || d.round < 0) fail('CRYPTO_BAD_ENCODING', 'mask domain: bad round');
  const info = concatBytes(MASK_KEY_INFO_PREFIX, canonicalEncode({
    session: d.session, round: d.round, purpose: d.purpose,
    pair: d.pair ? [d.pair[0], d.pair[1]] : undefined, owner: d.owner, tensor: d.tensor,
  }));
  return hkdf(sha256, seed, undefined, info, 32);
}

const CHUNK = 64 * 1024;
const ZERO = new Uint8Array(CHUNK);
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
const IV0 = new Uint8Array(16);

function words(b: Uint8Array, scratch: Uint32Array): Uint32Array {
  const n = b.length >>> 2;
  if (LITTLE_ENDIAN && (b.byteOffset & 3) === 0) return new Uint32Array(b.buffer, b.byteOffset, n);
  const dv = new DataView(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < n; i++) scratch[i] = dv.getUint32(i * 4, true);
  return scratch.subarray(0, n);
}

/**
 * acc[offset + i] += sign · PRG(key)[i]  (mod 2^32) for i < count (default: to the end of acc).
 * Streams 64 KiB of keystream at a time: no allocation proportional to the vector.
 */
export function addMask(acc: Uint32Array, key: Uint8Array, sign: 1 | -1, offset = 0, count = acc.length - offset): void {
  if (!isBytes(key, 32)) fail('CRYPTO_BAD_ENCODING', 'mask key must be 32 bytes');
  if (offset < 0 || count < 0 || offset + count > acc.length) throw new RangeError('addMask: range outside accumulator');
  const c = createCipheriv('aes-256-ctr', key, IV0);
  const scratch = new Uint32Array(CHUNK / 4);
  let done = 0;
  while (done < count) {
    const nWords = Math.min(CHUNK / 4, count - done);
    const ks = c.update(nWords === CHUNK / 4 ? ZERO : ZERO.subarray(0, nWords * 4));
    const m = words(ks, scratch);
    const base = offset + done;
    if (sign === 1) for (let i = 0; i < nWords; i++) acc[base + i] = (acc[base + i]! + m[i]!) >>> 0;
    else for (let i = 0; i < nWords; i++) acc[base + i] = (acc[base + i]! - m[i]!) >>> 0;
    done += nWords;
  }
}

/** The mask itself (tests, small vectors). */
export function expandMask(key: Uint8Array, length: number): Uint32Array {
  const out = new Uint32Array(length);
  addMask(out, key, 1);
  return out;
}

/** Same bytes as expandMask through WebCrypto (browsers); async. */
export async function expandMaskWebCrypto(key: Uint8Array, length: number): Promise<Uint32Array> {
  if (!isBytes(key, 32)) fail('CRYPTO_BAD_ENCODING', 'mask key must be 32 bytes');
  const k = await globalThis.crypto.subtle.importKey('raw', new Uint8Array(key), 'AES-CTR', false, ['encrypt']);
  const ks = new Uint8Array(await globalThis.crypto.subtle.encrypt({ name: 'AES-CTR', counter: new Uint8Array(16), length: 64 }, k, new Uint8Array(length * 4)));
  return words(ks, new Uint32Array(length)).slice();
}

/** ChaCha20 keystream (@noble/ciphers, zero nonce), kept for the PRG comparison in bench/secagg.ts. Not used for masks. */
export function chacha20Keystream(key: Uint8Array, bytes: number): Uint8Array {
  return chacha20(key, new Uint8Array(12), new Uint8Array(bytes));
}
