import nacl from 'tweetnacl';
import { hkdf } from '@noble/hashes/hkdf.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { fail } from './errors.js';
import { bytesEqual, concatBytes, domainPrefix, fromUtf8, isBytes, toBase64Url, utf8 } from './encoding.js';
import { x25519, x25519KeyPair } from './x25519.js';
import { type Identity, keyFingerprint, signMessage, verifyMessage, SIGNING_DOMAINS } from './identity.js';

/**
 * Where a sealed payload belongs. It is encrypted together with the payload and compared on open,
 * so a payload moved to another session, round, sender, recipient or message kind is refused even
 * though its MAC is fine.
 */
export interface SealContext {
  session: string | Uint8Array;
  round: number;
  sender: string;
  recipient: string;
  kind: string;
}

/** nacl.box / secretbox output: 24-byte nonce and MAC ‖ ciphertext. */
export interface Sealed {
  nonce: Uint8Array;
  box: Uint8Array;
}

/** Sealed with a fresh ephemeral sender key (sender authenticated by the transport, not the box). */
export interface AnonSealed extends Sealed {
  ephemeral: Uint8Array;
}

export interface BoxKeyPair {
  publicKey: Uint8Array;  // X25519, 32 bytes
  secretKey: Uint8Array;  // 32 bytes
}

export const MAX_SEALED_PAYLOAD = 256 * 1024 * 1024;
const CTX_VERSION = 1;
const CTX_FIELDS = ['session', 'round', 'sender', 'recipient', 'kind'] as const;

export function generateBoxKeyPair(): BoxKeyPair {
  return x25519KeyPair();
}

/** HKDF `info` of the seal key: "fedlora-hkdf-v1" ‖ 0x00 ‖ u32be(len) ‖ "fedlora/seal-key/v2". */
export const SEAL_KEY_INFO_DOMAIN = 'fedlora/seal-key/v2';
const SEAL_KEY_INFO = domainPrefix('fedlora-hkdf-v1', SEAL_KEY_INFO_DOMAIN);

/**
 * Key shared by (my secret, their public): HKDF-SHA256(IKM = X25519(sk, pk), salt = none,
 * info = SEAL_KEY_INFO, L = 32). A low-order public key (all-zero X25519 output) is refused.
 */
export function sharedKey(theirPublicKey: Uint8Array, mySecretKey: Uint8Array): Uint8Array {
  if (!isBytes(theirPublicKey, 32) || !isBytes(mySecretKey, 32)) fail('CRYPTO_BAD_ENCODING', 'X25519 keys must be 32 bytes');
  const s = x25519(mySecretKey, theirPublicKey);
  let z = 0;
  for (let i = 0; i < 32; i++) z |= s[i]!;
  if (z === 0) fail('CRYPTO_BAD_ENCODING', 'X25519 public key is a low-order point (all-zero shared secret)');
  const key = hkdf(sha256, s, undefined, SEAL_KEY_INFO, 32);
  s.fill(0);
  return key;
}

function ctxArray(c: SealContext): unknown[] {
  if (!Number.isSafeInteger(c.round) || c.round < 0) fail('CRYPTO_BAD_ENCODING', 'seal context: round must be a non-negative integer');
  for (const f of ['sender', 'recipient', 'kind'] as const) {
    if (typeof c[f] !== 'string' || c[f].length > 256) fail('CRYPTO_BAD_ENCODING', `seal context: ${f} must be a string ≤ 256 chars`);
  }
  const session = typeof c.session === 'string' ? `s:${c.session}` : `b:${toBase64Url(c.session)}`;
  return [CTX_VERSION, session, c.round, c.sender, c.recipient, c.kind];
}

/** The plaintext that gets sealed: u32be(len(context)) ‖ context (JSON array, UTF-8) ‖ payload. */
export function sealFrame(payload: Uint8Array, ctx: SealContext): Uint8Array {
  if (!(payload instanceof Uint8Array)) fail('CRYPTO_BAD_ENCODING', 'seal: payload must be a Uint8Array');
  if (payload.length > MAX_SEALED_PAYLOAD) fail('CRYPTO_BAD_ENCODING', 'seal: payload too large');
  const c = utf8(JSON.stringify(ctxArray(ctx)));
  const head = new Uint8Array(4);
  new DataView(head.buffer).setUint32(0, c.length, false);
  return concatBytes(head, c, payload);
}

function unframe(plain: Uint8Array, expected: SealContext): Uint8Array {
  if (plain.length < 4) fail('CRYPTO_SEAL_CONTEXT', 'sealed payload has no context');
  const n = new DataView(plain.buffer, plain.byteOffset, 4).getUint32(0, false);
  if (n > 4096 || 4 + n > plain.length) fail('CRYPTO_SEAL_CONTEXT', 'sealed payload context is malformed');
  let got: unknown;
  try { got = JSON.parse(fromUtf8(plain.subarray(4, 4 + n))); } catch (e) { return fail('CRYPTO_SEAL_CONTEXT', 'sealed payload context is malformed', e); }
  const want = ctxArray(expected);
  if (!Array.isArray(got) || got.length !== want.length || got[0] !== CTX_VERSION) fail('CRYPTO_SEAL_CONTEXT', 'sealed payload context has an unknown version');
  for (let i = 1; i < want.length; i++) {
    if (got[i] !== want[i]) {
      fail('CRYPTO_SEAL_CONTEXT', `sealed payload belongs to another ${CTX_FIELDS[i - 1]} (got ${JSON.stringify(got[i])}, expected ${JSON.stringify(want[i])})`);
    }
  }
  return plain.subarray(4 + n);
}

function checkSealed(s: unknown): asserts s is Sealed {
  const o = s as Partial<Sealed> | null;
  if (!o || !isBytes(o.nonce, nacl.secretbox.nonceLength) || !isBytes(o.box) || o.box.length < nacl.secretbox.overheadLength) {
    fail('CRYPTO_BAD_ENCODING', 'sealed payload is malformed (nonce/box)');
  }
  if (o.box.length > MAX_SEALED_PAYLOAD + 8192) fail('CRYPTO_BAD_ENCODING', 'sealed payload too large');
}

/** Seal with a precomputed shared key (sharedKey()) — the fast path for many messages per pair. */
export function sealWithKey(payload: Uint8Array, ctx: SealContext, key: Uint8Array): Sealed {
  if (!isBytes(key, 32)) fail('CRYPTO_BAD_ENCODING', 'seal key must be 32 bytes');
  const nonce = nacl.randomBytes(nacl.secretbox.nonceLength);
  return { nonce, box: nacl.secretbox(sealFrame(payload, ctx), nonce, key) };
}

export function openWithKey(sealed: unknown, expected: SealContext, key: Uint8Array): Uint8Array {
  checkSealed(sealed);
  if (!isBytes(key, 32)) fail('CRYPTO_BAD_ENCODING', 'seal key must be 32 bytes');
  const plain = nacl.secretbox.open(sealed.box, sealed.nonce, key);
  if (!plain) fail('CRYPTO_SEAL_TAMPERED', `sealed ${expected.kind} from ${expected.sender} failed authentication (tampered, or wrong key)`);
  return unframe(plain, expected);
}

export function sealTo(payload: Uint8Array, ctx: SealContext, recipientPublicKey: Uint8Array, senderSecretKey: Uint8Array): Sealed {
  return sealWithKey(payload, ctx, sharedKey(recipientPublicKey, senderSecretKey));
}

export function openFrom(sealed: unknown, expected: SealContext, senderPublicKey: Uint8Array, recipientSecretKey: Uint8Array): Uint8Array {
  return openWithKey(sealed, expected, sharedKey(senderPublicKey, recipientSecretKey));
}

/** Sealed-box style: fresh ephemeral X25519 key per message. */
export function sealAnonymous(payload: Uint8Array, ctx: SealContext, recipientPublicKey: Uint8Array): AnonSealed {
  const eph = x25519KeyPair();
  const s = sealTo(payload, ctx, recipientPublicKey, eph.secretKey);
  eph.secretKey.fill(0);
  return { ...s, ephemeral: eph.publicKey };
}

export function openAnonymous(sealed: unknown, expected: SealContext, recipientSecretKey: Uint8Array): Uint8Array {
  const o = sealed as Partial<AnonSealed> | null;
  if (!o || !isBytes(o.ephemeral, 32)) fail('CRYPTO_BAD_ENCODING', 'sealed payload is malformed (ephemeral key)');
  return openFrom(o, expected, o.ephemeral, recipientSecretKey);
}

// ---------------------------------------------------------------------------------------------
// Coordinator box key: tweetnacl has no Ed25519→X25519 conversion, so the coordinator holds a
// separate X25519 key pair and vouches for it with its Ed25519 identity.

export interface BoxKeyCertificate {
  boxPublicKey: Uint8Array;
  coordinator: Uint8Array;  // Ed25519 identity key of the signer
  issuedAt: number;
  expiresAt: number;
  signature: Uint8Array;
}

function certBody(c: Omit<BoxKeyCertificate, 'signature'>) {
  return { boxPublicKey: c.boxPublicKey, coordinator: c.coordinator, issuedAt: c.issuedAt, expiresAt: c.expiresAt };
}

export function makeCoordinatorBoxKey(identity: Identity, ttlMs = 7 * 24 * 3600_000, now = Date.now(), keyPair = generateBoxKeyPair()): { keyPair: BoxKeyPair; certificate: BoxKeyCertificate } {
  const body = { boxPublicKey: keyPair.publicKey, coordinator: identity.publicKey, issuedAt: now, expiresAt: now + ttlMs };
  return { keyPair, certificate: { ...body, signature: signMessage(SIGNING_DOMAINS.boxKey, body, identity.secretKey) } };
}

/** Checks the certificate against the pinned (or TOFU-stored) coordinator key; returns the X25519 key. */
export function verifyCoordinatorBoxKey(cert: unknown, coordinatorKey: Uint8Array, now = Date.now()): Uint8Array {
  const c = cert as Partial<BoxKeyCertificate> | null;
  if (!c || !isBytes(c.boxPublicKey, 32) || !isBytes(c.coordinator, 32) || !isBytes(c.signature, 64)
    || typeof c.issuedAt !== 'number' || typeof c.expiresAt !== 'number') {
    fail('CRYPTO_BAD_ENCODING', 'coordinator box-key certificate is malformed');
  }
  if (!bytesEqual(c.coordinator, coordinatorKey)) fail('CRYPTO_UNKNOWN_KEY', `box key certified by ${keyFingerprint(c.coordinator)}…, not the pinned coordinator`);
  if (!verifyMessage(SIGNING_DOMAINS.boxKey, certBody(c as BoxKeyCertificate), c.signature, coordinatorKey)) {
    fail('CRYPTO_BAD_SIGNATURE', 'coordinator box-key certificate signature does not verify');
  }
  if (now >= c.expiresAt || now + 5 * 60_000 < c.issuedAt) fail('CRYPTO_JOIN_EXPIRED', 'coordinator box-key certificate is expired or not yet valid');
  return c.boxPublicKey;
}

/**
 * Remembers nonces of accepted sealed messages so the same ciphertext is not accepted twice
 * (bounded: oldest entries are forgotten first; pair it with round/kind checks in the context).
 */
export class ReplayGuard {
  readonly #seen = new Set<string>();
  readonly #max: number;
  constructor(max = 100_000) { this.#max = max; }
  /** Throws SECAGG_MESSAGE when the nonce was seen. */
  check(sealed: Sealed): void {
    const k = toBase64Url(sealed.nonce);
    if (this.#seen.has(k)) fail('SECAGG_MESSAGE', 'replayed sealed message');
    this.#seen.add(k);
    if (this.#seen.size > this.#max) { const first = this.#seen.values().next().value; if (first !== undefined) this.#seen.delete(first); }
  }
}
