import nacl from 'tweetnacl';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { atomicWrite } from '../fs/atomic.js';
import { sign as nodeSign, verify as nodeVerify } from 'node:crypto';
import { KeyObjectCache } from './node-keys.js';
import { dirname } from 'node:path';
import { logger } from '../log.js';
import { fail, cryptoError } from './errors.js';
import {
  type Canonical, bytesEqual, canonicalEncode, concatBytes, domainPrefix, fromBase64Url, isBytes, toBase64Url,
} from './encoding.js';

const log = logger('fedlora:crypto:identity');

/** A long-term Ed25519 identity (coordinator or client). secretKey is tweetnacl's 64-byte form. */
export interface Identity {
  publicKey: Uint8Array;  // 32 bytes
  secretKey: Uint8Array;  // 64 bytes (seed ‖ public key)
}

const KEY_PREFIX = 'ed25519:';
const FILE_TYPE = 'fedlora-ed25519-identity';
const MAX_IDENTITY_FILE = 4096;

export function generateIdentity(): Identity {
  const kp = nacl.sign.keyPair();
  return { publicKey: kp.publicKey, secretKey: kp.secretKey };
}

export function identityFromSeed(seed: Uint8Array): Identity {
  if (!isBytes(seed, 32)) fail('CRYPTO_BAD_ENCODING', 'identity seed must be 32 bytes');
  const kp = nacl.sign.keyPair.fromSeed(seed);
  return { publicKey: kp.publicKey, secretKey: kp.secretKey };
}

/** Printable public key: `ed25519:<base64url, 43 chars>`. */
export function formatPublicKey(pk: Uint8Array): string {
  if (!isBytes(pk, 32)) fail('CRYPTO_BAD_ENCODING', 'Ed25519 public key must be 32 bytes');
  return KEY_PREFIX + toBase64Url(pk);
}

export function parsePublicKey(text: string): Uint8Array {
  const s = text.trim();
  if (!s.startsWith(KEY_PREFIX) || s.length !== KEY_PREFIX.length + 43) {
    fail('CRYPTO_BAD_ENCODING', `not an ed25519 public key (expected "ed25519:" + 43 base64url chars): ${JSON.stringify(s.slice(0, 60))}`);
  }
  const pk = fromBase64Url(s.slice(KEY_PREFIX.length));
  if (pk.length !== 32) fail('CRYPTO_BAD_ENCODING', 'ed25519 public key must decode to 32 bytes');
  return pk;
}

/** Short fingerprint for logs and prompts (first 16 chars of the base64url key). */
export function keyFingerprint(pk: Uint8Array): string {
  return formatPublicKey(pk).slice(KEY_PREFIX.length, KEY_PREFIX.length + 16);
}

export function serializeIdentity(id: Identity): string {
  return JSON.stringify({
    type: FILE_TYPE, version: 1,
    publicKey: formatPublicKey(id.publicKey),
    seed: toBase64Url(id.secretKey.subarray(0, 32)),
  }, null, 2) + '\n';
}

export function parseIdentity(text: string, file = 'identity'): Identity {
  if (text.length > MAX_IDENTITY_FILE) fail('CRYPTO_BAD_ENCODING', `${file}: identity file too large`);
  let j: unknown;
  try { j = JSON.parse(text); } catch (e) { return fail('CRYPTO_BAD_ENCODING', `${file}: not JSON`, e); }
  if (typeof j !== 'object' || j === null) fail('CRYPTO_BAD_ENCODING', `${file}: not an object`);
  const o = j as Record<string, unknown>;
  if (o.type !== FILE_TYPE || o.version !== 1) fail('CRYPTO_BAD_ENCODING', `${file}: not a ${FILE_TYPE} v1 file`);
  if (typeof o.seed !== 'string' || typeof o.publicKey !== 'string') fail('CRYPTO_BAD_ENCODING', `${file}: missing seed/publicKey`);
  const seed = fromBase64Url(o.seed);
  if (seed.length !== 32) fail('CRYPTO_BAD_ENCODING', `${file}: seed must be 32 bytes`);
  const id = identityFromSeed(seed);
  if (!bytesEqual(id.publicKey, parsePublicKey(o.publicKey))) {
    fail('CRYPTO_BAD_ENCODING', `${file}: public key does not match the seed (file corrupted or edited)`);
  }
  return id;
}

/**
 * Writes the identity atomically with mode 0600 (shared/fs/atomic.ts: a temp file created exclusively
 * with 0600 in the same directory, fsynced, renamed over the target, directory fsynced). The secret
 * never exists in a wider-mode file.
 */
export async function saveIdentity(file: string, id: Identity): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  await atomicWrite(file, serializeIdentity(id), { mode: 0o600 });
}

export async function loadIdentity(file: string): Promise<Identity> {
  const st = await stat(file);
  if (st.size > MAX_IDENTITY_FILE) fail('CRYPTO_BAD_ENCODING', `${file}: identity file too large`);
  if (process.platform !== 'win32' && (st.mode & 0o077) !== 0) {
    log.warn(`${file} is readable by group/others (mode ${(st.mode & 0o777).toString(8)}); run chmod 600 ${file}`);
  }
  return parseIdentity(await readFile(file, 'utf8'), file);
}

export async function loadOrCreateIdentity(file: string): Promise<{ identity: Identity; created: boolean }> {
  try {
    return { identity: await loadIdentity(file), created: false };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const identity = generateIdentity();
  await saveIdentity(file, identity);
  log.info(`created identity ${file}: ${formatPublicKey(identity.publicKey)}`);
  return { identity, created: true };
}

// ---------------------------------------------------------------------------------------------
// Authorized clients

export interface AuthorizedClient {
  publicKey: Uint8Array;
  key: string;          // formatted `ed25519:...`
  name: string | undefined;
  revoked: boolean;
}

/** Parsed allowlist: look-ups by formatted key. */
export class AuthorizedClients {
  readonly #entries = new Map<string, AuthorizedClient>();
  constructor(entries: Iterable<AuthorizedClient>) { for (const e of entries) this.#entries.set(e.key, e); }
  get size(): number { return this.#entries.size; }
  entries(): AuthorizedClient[] { return [...this.#entries.values()]; }
  /** Entry for a key, revoked or not. */
  get(pk: Uint8Array): AuthorizedClient | undefined { return this.#entries.get(formatPublicKey(pk)); }
  /** Active (enrolled, not revoked) entry for a key, else undefined. */
  lookup(pk: Uint8Array): AuthorizedClient | undefined {
    const e = this.#entries.get(formatPublicKey(pk));
    return e && !e.revoked ? e : undefined;
  }
  /** Throws CRYPTO_UNKNOWN_KEY / CRYPTO_REVOKED; returns the active entry. */
  check(pk: Uint8Array): AuthorizedClient {
    const e = this.#entries.get(formatPublicKey(pk));
    if (!e) fail('CRYPTO_UNKNOWN_KEY', `client key ${keyFingerprint(pk)}… is not enrolled`);
    if (e.revoked) fail('CRYPTO_REVOKED', `client key ${keyFingerprint(pk)}… is revoked`);
    return e;
  }
}

const MAX_AUTH_LINES = 100_000;
const MAX_NAME = 128;

/**
 * Allowlist format, one entry per line:
 *   ed25519:<key> [name words…]          enrolled
 *   revoked ed25519:<key> [name…]        revoked (wins over an enrolled line for the same key, in any order)
 *   # comment                            blank lines and text after ` #` are ignored
 * Names are printable, at most 128 chars. The same key enrolled twice is an error (ambiguous name).
 */
export function parseAuthorizedClients(text: string, file = 'authorized-clients'): AuthorizedClients {
  const lines = text.split(/\r?\n/);
  if (lines.length > MAX_AUTH_LINES) fail('CRYPTO_BAD_ENCODING', `${file}: more than ${MAX_AUTH_LINES} lines`);
  const active = new Map<string, AuthorizedClient>();
  const revoked = new Map<string, AuthorizedClient>();
  lines.forEach((raw, i) => {
    const where = `${file}:${i + 1}`;
    const hash = raw.search(/(^|\s)#/);
    const line = (hash >= 0 ? raw.slice(0, hash) : raw).trim();
    if (!line) return;
    const words = line.split(/\s+/);
    let isRevoked = false;
    if (words[0]?.toLowerCase() === 'revoked') { isRevoked = true; words.shift(); }
    const keyText = words.shift();
    if (!keyText) fail('CRYPTO_BAD_ENCODING', `${where}: "revoked" needs a key`);
    let pk: Uint8Array;
    try { pk = parsePublicKey(keyText); } catch (e) { return fail('CRYPTO_BAD_ENCODING', `${where}: ${(e as Error).message}`, e); }
    const name = words.length ? words.join(' ') : undefined;
    if (name !== undefined && (name.length > MAX_NAME || /[\u0000-\u001f\u007f]/.test(name))) {
      fail('CRYPTO_BAD_ENCODING', `${where}: name too long or has control characters`);
    }
    const key = formatPublicKey(pk);
    const entry: AuthorizedClient = { publicKey: pk, key, name, revoked: isRevoked };
    if (isRevoked) { revoked.set(key, entry); return; }
    if (active.has(key)) fail('CRYPTO_BAD_ENCODING', `${where}: key ${keyFingerprint(pk)}… listed twice`);
    active.set(key, entry);
  });
  for (const [key, r] of revoked) active.set(key, { ...r, name: r.name ?? active.get(key)?.name, revoked: true });
  return new AuthorizedClients(active.values());
}

// ---------------------------------------------------------------------------------------------
// Domain-separated signatures over canonical values

function signedBytes(domain: string, obj: Canonical): Uint8Array {
  return concatBytes(domainPrefix('fedlora-sig-v1', domain), canonicalEncode(obj));
}

// Ed25519 is deterministic (RFC 8032), so OpenSSL (node:crypto) and tweetnacl produce and accept
// the same signatures; OpenSSL verifies ~35× faster, which matters when a coordinator checks
// thousands of signatures per round. tweetnacl remains the fallback and the reference in tests.
const edKeys = new KeyObjectCache('Ed25519', 4096);
let nodeEd25519 = true;

/** Raw Ed25519 detached signature (tweetnacl 64-byte secret key form). */
export function ed25519Sign(data: Uint8Array, secretKey: Uint8Array): Uint8Array {
  if (nodeEd25519) {
    try {
      return new Uint8Array(nodeSign(null, data, edKeys.privateKey(secretKey, () => secretKey.subarray(32, 64))));
    } catch { nodeEd25519 = false; }
  }
  return nacl.sign.detached(data, secretKey);
}

export function ed25519Verify(data: Uint8Array, signature: Uint8Array, publicKey: Uint8Array): boolean {
  if (!isBytes(signature, 64) || !isBytes(publicKey, 32)) return false;
  if (nodeEd25519) {
    try { return nodeVerify(null, data, edKeys.publicKey(publicKey), signature); } catch { /* invalid key encoding → reject below */ }
  }
  try { return nacl.sign.detached.verify(data, signature, publicKey); } catch { return false; }
}

/** Detached Ed25519 signature (64 bytes) over `fedlora-sig-v1 ‖ domain ‖ canonical(obj)`. */
export function signMessage(domain: string, obj: Canonical, secretKey: Uint8Array): Uint8Array {
  if (!isBytes(secretKey, 64)) fail('CRYPTO_BAD_ENCODING', 'Ed25519 secret key must be 64 bytes');
  return ed25519Sign(signedBytes(domain, obj), secretKey);
}

export function verifyMessage(domain: string, obj: Canonical, signature: unknown, publicKey: Uint8Array): boolean {
  if (!isBytes(signature, 64) || !isBytes(publicKey, 32)) return false;
  try {
    return ed25519Verify(signedBytes(domain, obj), signature, publicKey);
  } catch {
    return false;
  }
}

/** verifyMessage that throws CRYPTO_BAD_SIGNATURE with a readable reason. */
export function assertSigned(domain: string, obj: Canonical, signature: unknown, publicKey: Uint8Array, what = domain): void {
  if (!verifyMessage(domain, obj, signature, publicKey)) fail('CRYPTO_BAD_SIGNATURE', `${what}: signature does not verify`);
}

/** A value with its signer and detached signature, ready to travel. */
export interface Signed<T extends Canonical> {
  body: T;
  signer: Uint8Array;
  signature: Uint8Array;
}

export function signed<T extends Canonical>(domain: string, body: T, identity: Identity): Signed<T> {
  return { body, signer: identity.publicKey, signature: signMessage(domain, body, identity.secretKey) };
}

/** Checks a Signed<T> against the expected signer key (pinned coordinator key, enrolled client key). */
export function openSigned<T extends Canonical>(domain: string, msg: Signed<T>, expectedSigner: Uint8Array): T {
  if (!msg || !isBytes(msg.signer, 32)) fail('CRYPTO_BAD_ENCODING', `${domain}: missing signer`);
  if (!bytesEqual(msg.signer, expectedSigner)) fail('CRYPTO_UNKNOWN_KEY', `${domain}: signed by ${keyFingerprint(msg.signer)}…, expected ${keyFingerprint(expectedSigner)}…`);
  assertSigned(domain, msg.body, msg.signature, expectedSigner);
  return msg.body;
}

/** Domains for coordinator messages that steer a round. Clients verify before acting. */
export const SIGNING_DOMAINS = {
  roundStart: 'fedlora/round-start/v1',
  participants: 'fedlora/participants/v1',
  survivors: 'fedlora/survivors/v1',
  adapterHash: 'fedlora/adapter-hash/v1',
  modelHash: 'fedlora/model-hash/v1',
  join: 'fedlora/join/v1',
  boxKey: 'fedlora/coordinator-box-key/v1',
} as const;

// ---------------------------------------------------------------------------------------------
// Join: challenge-response bound to the connection

export interface JoinChallenge {
  nonce: Uint8Array;        // 32 random bytes
  coordinator: Uint8Array;  // coordinator Ed25519 public key (proof cannot be relayed to another coordinator)
  expiresAt: number;        // ms since epoch
}

export interface JoinProof {
  nonce: Uint8Array;
  clientKey: Uint8Array;
  signature: Uint8Array;
}

/** `binding` names the transport connection (e.g. socket id or TLS exporter); the proof is only valid on it. */
export function makeJoinChallenge(coordinator: Uint8Array, ttlMs = 30_000, now = Date.now()): JoinChallenge {
  return { nonce: nacl.randomBytes(32), coordinator, expiresAt: now + ttlMs };
}

function joinBody(c: { nonce: Uint8Array; coordinator: Uint8Array; expiresAt: number }, binding: string | Uint8Array, clientKey: Uint8Array): Canonical {
  return { nonce: c.nonce, coordinator: c.coordinator, expiresAt: c.expiresAt, binding, client: clientKey };
}

export function proveJoin(challenge: JoinChallenge, connectionBinding: string | Uint8Array, identity: Identity): JoinProof {
  if (!isBytes(challenge.nonce, 32) || !isBytes(challenge.coordinator, 32)) fail('CRYPTO_BAD_ENCODING', 'malformed join challenge');
  return {
    nonce: challenge.nonce,
    clientKey: identity.publicKey,
    signature: signMessage(SIGNING_DOMAINS.join, joinBody(challenge, connectionBinding, identity.publicKey), identity.secretKey),
  };
}

export interface JoinVerifierOptions {
  coordinator: Identity | Uint8Array;     // coordinator key that challenges name
  authorized?: AuthorizedClients;         // absent ⇒ allowAny must be true
  allowAny?: boolean;                     // development: accept any key that proves possession
  ttlMs?: number;
  maxPending?: number;
  now?: () => number;
}

interface Pending { binding: string; expiresAt: number }

/**
 * Issues single-use challenges and checks proofs. A challenge is consumed on the first proof that
 * names it, whatever the outcome, so a refused proof cannot be retried and a captured proof cannot
 * be replayed. Error codes do not depend on any round state: a refused party learns nothing else.
 */
export class JoinVerifier {
  readonly #coordinator: Uint8Array;
  readonly #authorized: AuthorizedClients | undefined;
  readonly #allowAny: boolean;
  readonly #ttl: number;
  readonly #maxPending: number;
  readonly #now: () => number;
  readonly #pending = new Map<string, Pending>();
  readonly #used = new Map<string, number>(); // nonce → expiry, to name replays precisely

  constructor(o: JoinVerifierOptions) {
    this.#coordinator = o.coordinator instanceof Uint8Array ? o.coordinator : o.coordinator.publicKey;
    this.#authorized = o.authorized;
    this.#allowAny = o.allowAny ?? false;
    if (!this.#authorized && !this.#allowAny) throw cryptoError('CRYPTO_UNKNOWN_KEY', 'JoinVerifier needs an allowlist or allowAny');
    this.#ttl = o.ttlMs ?? 30_000;
    this.#maxPending = o.maxPending ?? 10_000;
    this.#now = o.now ?? Date.now;
  }

  #bindingKey(b: string | Uint8Array): string { return typeof b === 'string' ? `s:${b}` : `b:${toBase64Url(b)}`; }

  #gc(now: number): void {
    for (const [k, p] of this.#pending) if (p.expiresAt <= now) this.#pending.delete(k);
    for (const [k, exp] of this.#used) if (exp <= now) this.#used.delete(k);
  }

  get pendingCount(): number { return this.#pending.size; }

  challenge(connectionBinding: string | Uint8Array): JoinChallenge {
    const now = this.#now();
    if (this.#pending.size >= this.#maxPending) this.#gc(now);
    if (this.#pending.size >= this.#maxPending) fail('CRYPTO_JOIN_REPLAY', 'too many pending join challenges');
    const c = makeJoinChallenge(this.#coordinator, this.#ttl, now);
    this.#pending.set(toBase64Url(c.nonce), { binding: this.#bindingKey(connectionBinding), expiresAt: c.expiresAt });
    return c;
  }

  /** Returns the enrolled entry (or an anonymous one under allowAny); throws a CryptoError otherwise. */
  verify(proof: unknown, connectionBinding: string | Uint8Array): AuthorizedClient {
    const p = proof as Partial<JoinProof> | null;
    if (!p || !isBytes(p.nonce, 32) || !isBytes(p.clientKey, 32) || !isBytes(p.signature, 64)) {
      fail('CRYPTO_BAD_ENCODING', 'malformed join proof');
    }
    const now = this.#now();
    const nk = toBase64Url(p.nonce);
    const pending = this.#pending.get(nk);
    if (!pending) {
      fail('CRYPTO_JOIN_REPLAY', this.#used.has(nk) ? 'join challenge already used' : 'unknown join challenge');
    }
    this.#pending.delete(nk);
    this.#used.set(nk, pending.expiresAt);
    if (this.#used.size > this.#maxPending * 2) this.#gc(now);
    if (pending.expiresAt <= now) fail('CRYPTO_JOIN_EXPIRED', 'join challenge expired');
    if (pending.binding !== this.#bindingKey(connectionBinding)) fail('CRYPTO_JOIN_BINDING', 'join proof made for another connection');
    const body = joinBody({ nonce: p.nonce, coordinator: this.#coordinator, expiresAt: pending.expiresAt }, connectionBinding, p.clientKey);
    if (!verifyMessage(SIGNING_DOMAINS.join, body, p.signature, p.clientKey)) {
      fail('CRYPTO_BAD_SIGNATURE', 'join proof signature does not verify (wrong key, coordinator or connection)');
    }
    if (this.#authorized) {
      // revoked keys stay refused even in allowAny mode
      if (!this.#allowAny || this.#authorized.get(p.clientKey)) return this.#authorized.check(p.clientKey);
    }
    return { publicKey: p.clientKey, key: formatPublicKey(p.clientKey), name: undefined, revoked: false };
  }
}
