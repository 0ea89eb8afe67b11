import { createCipheriv } from 'node:crypto';
import nacl from 'tweetnacl';
import { fail } from './errors.js';
import { hashCanonical, isBytes } from './encoding.js';

/**
 * Mask PRG: AES-256-CTR keystream (zero IV, fresh key per use) read as little-endian uint32 words.
 *
 * The key is SHA-512/256-style derived from the 32-byte seed (pairwise X25519 secret or self-mask
 * seed) and a domain: session, round, pair or owner, purpose, optional tensor name. Every mask in a
 * session therefore has its own key, so a zero IV never repeats under one key.
 *
 * Chosen over XSalsa20 (tweetnacl) after measuring on 1,179,648 words (see docs/SECURITY.md): Node's
 * AES-NI path in 64 KiB chunks is ~5× faster. The byte stream is identical to WebCrypto AES-CTR
 * (counter block 0, 64-bit counter), so a browser client can expand the same masks with
 * `expandMaskWebCrypto`.
 */
export interface MaskDomain {
  session: string | Uint8Array;
  round: number;
  purpose: string;                    // 'self' | 'pair' | …
  pair?: readonly [string, string];   // ordered (low id, high id) for pairwise masks
  owner?: string;                     // for self masks
  tensor?: string;                    // optional per-tensor separation
}

export function deriveMaskKey(seed: Uint8Array, d: MaskDomain): Uint8Array {
  if (!isBytes(seed, 32)) fail('CRYPTO_BAD_ENCODING', 'mask seed must be 32 bytes');
  if (!Number.isSafeInteger(d.round) || d.round < 0) fail('CRYPTO_BAD_ENCODING', 'mask domain: bad round');
  return hashCanonical('fedlora/prg/v1', {
    seed, session: d.session, round: d.round, purpose: d.purpose,
    pair: d.pair ? [d.pair[0], d.pair[1]] : undefined, owner: d.owner, tensor: d.tensor,
  });
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

/** XSalsa20 keystream (tweetnacl), kept for the PRG benchmark in bench/secagg.ts. Not used for masks. */
export function xsalsa20Keystream(key: Uint8Array, bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  (nacl as unknown as { lowlevel: { crypto_stream(c: Uint8Array, cpos: number, b: number, n: Uint8Array, k: Uint8Array): number } })
    .lowlevel.crypto_stream(out, 0, bytes, new Uint8Array(24), key);
  return out;
}
