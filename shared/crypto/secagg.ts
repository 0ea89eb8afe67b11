import nacl from 'tweetnacl';
import { logger } from '../log.js';
import { CryptoError } from '../errors.js';
import { type DealerBlame, SecAggBlameError, fail, cryptoError } from './errors.js';
import { type Canonical, bytesEqual, canonicalEncode, hashCanonical, isBytes } from './encoding.js';
import { type Identity, signMessage, verifyMessage } from './identity.js';
import { type Sealed, openWithKey, sealWithKey, sharedKey } from './seal.js';
import { type Share, reconstructVerified, shareCommitment, splitSecret, verifyShareCommitment } from './shamir.js';
import { addMask, deriveMaskKey } from './prg.js';
import { NeighbourGraph } from './graph.js';
import { x25519 as x25519Raw, x25519Base, x25519KeyPair } from './x25519.js';

const log = logger('fedlora:crypto:secagg');

/**
 * Secure aggregation (Bonawitz et al. 2017) over the SecAgg+ sparse neighbour graph, as two pure
 * state machines. Messages are plain objects of Uint8Array / Uint32Array / number / string, ready
 * for msgpackr; the transport (socket.io) and timeouts belong to the caller.
 *
 *   client                              server
 *   advertiseKeys()          ─Advertise→  receiveAdvertise(from, m)
 *                           ←Keys──────   closeAdvertise() → Map<id, KeysMsg>
 *   shareKeys(keys)          ─ShareKeys→  receiveShareKeys(from, m)
 *                           ←Shares────   closeShareKeys() → Map<id, SharesMsg>
 *   maskedInput(shares, v)   ─Masked───→  receiveMasked(from, m)      (added to a running sum, not kept)
 *                           ←Survivors─   closeMaskedInput() → SurvivorListMsg (coordinator-signed)
 *   consistencyCheck(list)   ─Consist──→  receiveConsistency(from, m)
 *                           ←Unmask req   closeConsistency() → Map<id, UnmaskRequestMsg>
 *   unmask(req)              ─Unmask───→  receiveUnmask(from, m)
 *                                         finalize() → { sum, survivors, … }
 *
 * `from` is the participant id the transport authenticated (join proof); messages naming another id
 * are refused. Inputs are already fixed-point encoded (quantize.ts); arithmetic is mod 2^32.
 *
 * One malicious participant must not be able to sink a round it cannot read:
 *  - the server validates each message whole before touching state, so a refused message can be
 *    resent corrected;
 *  - a client that cannot open or verify a neighbour's share envelope does not abort: it keeps the
 *    pair mask with that neighbour, holds and reveals no share of it, and lists it in
 *    `MaskedInputMsg.rejected` (optional on the wire; older clients omit it);
 *  - when a dealer's secret can no longer be recovered (fewer than t valid shares, or shares that
 *    match its commitments but not its secret), closeMaskedInput or finalize throws a
 *    SecAggBlameError whose `culprits` the coordinator leaves out of the retry; `blame` says why
 *    (complaints from holders vs. holders that dropped), since dropouts alone can cause it too.
 */

// ---------------------------------------------------------------------------------------------
// Parameters

export interface Participant {
  id: string;          // 1..128 chars, unique
  key: Uint8Array;     // Ed25519 identity key (enrolled)
}

export interface SecAggParams {
  round: number;
  modelHash: string;             // hash of what this round trains (base model + global adapter)
  vectorLength: number;
  participants: Participant[];   // sorted by id
  k: number;                     // neighbours per client (n−1 = complete graph)
  t: number;                     // Shamir threshold over the k+1 holders of a client's secrets
  nonce: Uint8Array;             // 32 fresh random bytes from the coordinator
  coordinatorKey: Uint8Array;    // coordinator Ed25519 identity key
}

export const SECAGG_DOMAINS = {
  params: 'fedlora/secagg/params/v1',
  advertise: 'fedlora/secagg/advertise/v1',
  keys: 'fedlora/secagg/keys/v1',
  shareCommit: 'fedlora/secagg/share-commitments/v1',
  survivors: 'fedlora/secagg/survivors/v1',
  consistency: 'fedlora/secagg/consistency/v1',
} as const;

export const MAX_PARTICIPANTS = 100_000;
export const MAX_VECTOR = 1 << 28;
const SHARE_KIND = 'secagg/share';
const SHARE_PAYLOAD = 1 + 32 + 32 + 16 + 16;

function paramsCanonical(p: SecAggParams): Canonical {
  return {
    round: p.round, modelHash: p.modelHash, vectorLength: p.vectorLength,
    participants: p.participants.map((q) => [q.id, q.key]), k: p.k, t: p.t, nonce: p.nonce, coordinatorKey: p.coordinatorKey,
  };
}

export function validateSecAggParams(p: SecAggParams): void {
  const bad = (m: string): never => fail('SECAGG_PARAMS', m);
  if (!p || typeof p !== 'object') bad('params missing');
  if (!Number.isSafeInteger(p.round) || p.round < 0) bad('round must be a non-negative integer');
  if (typeof p.modelHash !== 'string' || p.modelHash.length === 0 || p.modelHash.length > 256) bad('modelHash must be a non-empty string');
  if (!Number.isInteger(p.vectorLength) || p.vectorLength < 1 || p.vectorLength > MAX_VECTOR) bad(`vectorLength must be 1..${MAX_VECTOR}`);
  if (!Array.isArray(p.participants) || p.participants.length < 2 || p.participants.length > MAX_PARTICIPANTS) bad(`need 2..${MAX_PARTICIPANTS} participants`);
  const keys = new Set<string>();
  let prev = '';
  for (const q of p.participants) {
    if (!q || typeof q.id !== 'string' || q.id.length === 0 || q.id.length > 128) bad('participant ids must be 1..128 chars');
    if (!isBytes(q.key, 32)) bad(`participant ${q.id}: key must be 32 bytes`);
    if (q.id <= prev) bad('participants must be sorted by id with unique ids');
    prev = q.id;
    const kk = Buffer.from(q.key).toString('hex');
    if (keys.has(kk)) bad(`participant ${q.id}: key used twice`);
    keys.add(kk);
  }
  const n = p.participants.length;
  if (!Number.isInteger(p.k) || p.k < 1 || p.k > n - 1 || (p.k < n - 1 && p.k % 2)) bad(`k must be even in 2..n−2 or exactly n−1 (n=${n}, k=${p.k})`);
  if (!Number.isInteger(p.t) || p.t < 2 || p.t > p.k + 1 || p.t > 255) bad(`t must be in 2..k+1 (k=${p.k}, t=${p.t})`);
  if (!isBytes(p.nonce, 32)) bad('nonce must be 32 bytes');
  if (!isBytes(p.coordinatorKey, 32)) bad('coordinatorKey must be 32 bytes');
}

/** Coordinator signs the round's secure-aggregation parameters (part of the signed round start). */
export function signSecAggParams(p: SecAggParams, coordinator: Identity): Uint8Array {
  validateSecAggParams(p);
  if (!bytesEqual(p.coordinatorKey, coordinator.publicKey)) fail('SECAGG_PARAMS', 'params name another coordinator key');
  return signMessage(SECAGG_DOMAINS.params, paramsCanonical(p), coordinator.secretKey);
}

/** Round-level session id (before keys are known): binds round, model hash, roster, k, t, nonce. */
export function secAggSessionSeed(p: SecAggParams): Uint8Array {
  return hashCanonical('fedlora/secagg/session0/v1', paramsCanonical(p));
}

// ---------------------------------------------------------------------------------------------
// Messages

export interface AdvertiseMsg {
  id: string;
  cPk: Uint8Array;      // X25519 key for sealing shares between neighbours
  sPk: Uint8Array;      // X25519 key for pairwise masks
  bCommit: Uint8Array;  // hash commitment of the self-mask seed
  signature: Uint8Array;
}

export interface KeysMsg {
  advertised: string[];       // U1, sorted
  keysDigest: Uint8Array;     // hash of all advertisements in U1
  signature: Uint8Array;      // coordinator, over {session0, advertised, keysDigest}
  neighbours: AdvertiseMsg[]; // the recipient's neighbours in U1
}

export interface ShareCommitments { holder: string; b: Uint8Array; s: Uint8Array }

export interface ShareKeysMsg {
  id: string;
  envelopes: { to: string; sealed: Sealed }[];
  commitments: ShareCommitments[];   // one per holder, including the dealer itself
  signature: Uint8Array;             // dealer, over {session, id, commitments}
}

export interface SharesMsg {
  envelopes: { from: string; sealed: Sealed }[];
}

export interface MaskedInputMsg {
  id: string;
  masked: Uint32Array;
  /** Neighbours whose share envelope this client could not open or verify (absent: none, or an
   *  older client). It still masks with them; it holds and will reveal no share of theirs. */
  rejected?: string[];
}

export interface SurvivorListMsg {
  survivors: string[];      // U3: ids whose masked input the server accepted, sorted
  signature: Uint8Array;    // coordinator
}

export interface ConsistencyMsg {
  id: string;
  signature: Uint8Array;    // client, over {session, survivors}
}

export interface UnmaskRequestMsg {
  survivorList: SurvivorListMsg;
  signatures: { id: string; signature: Uint8Array }[];  // consistency signatures of the recipient's holders
}

export interface RevealedShare {
  dealer: string;
  kind: 'b' | 's';          // b: self-mask seed share (dealer survived); s: mask key share (dealer dropped)
  x: number;
  y: Uint8Array;
  salt: Uint8Array;
}

export interface UnmaskMsg {
  id: string;
  reveals: RevealedShare[];
}

export interface SecAggResult {
  sum: Uint32Array;               // Σ_{u ∈ survivors} x_u mod 2^32
  survivors: string[];            // U3
  droppedAfterSharing: string[];  // U2 \ U3: masks recovered from key shares
  badShares: { dealer: string; holder: string }[];  // revealed shares that failed their commitment
  complaints: { dealer: string; holder: string }[]; // holder could not open/verify dealer's share envelope
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

class Roster {
  readonly params: SecAggParams;
  readonly n: number;
  readonly index = new Map<string, number>();
  readonly graph: NeighbourGraph;
  readonly session0: Uint8Array;
  constructor(p: SecAggParams) {
    validateSecAggParams(p);
    this.params = p;
    this.n = p.participants.length;
    p.participants.forEach((q, i) => this.index.set(q.id, i));
    this.session0 = secAggSessionSeed(p);
    this.graph = new NeighbourGraph(this.n, p.k, this.session0);
  }
  idx(id: string): number {
    const i = this.index.get(id);
    if (i === undefined) fail('SECAGG_MESSAGE', `unknown participant ${JSON.stringify(String(id).slice(0, 64))}`);
    return i;
  }
  id(i: number): string { return this.params.participants[i]!.id; }
  key(id: string): Uint8Array { return this.params.participants[this.idx(id)]!.key; }
  neighbourIds(id: string): string[] { return this.graph.neighbours(this.idx(id)).map((j) => this.id(j)); }
  areNeighbours(a: string, b: string): boolean { return this.graph.areNeighbours(this.idx(a), this.idx(b)); }
  /** Shamir x coordinate of `holder` for secrets dealt by `dealer`: 1 + rank in dealer's full neighbourhood ∪ {dealer}. */
  xOf(dealer: string, holder: string): number {
    const d = this.idx(dealer), h = this.idx(holder);
    if (d !== h && !this.graph.areNeighbours(d, h)) fail('SECAGG_MESSAGE', `${holder} is not a neighbour of ${dealer}`);
    const all = [...this.graph.neighbours(d), d].sort((a, b) => a - b);
    return all.indexOf(h) + 1;
  }
  /** +1 if a's index is below b's (a adds the pair mask), else −1 */
  sign(a: string, b: string): 1 | -1 { return this.idx(a) < this.idx(b) ? 1 : -1; }
}

function advertiseBody(session0: Uint8Array, m: { id: string; cPk: Uint8Array; sPk: Uint8Array; bCommit: Uint8Array }): Canonical {
  return { session0, id: m.id, cPk: m.cPk, sPk: m.sPk, bCommit: m.bCommit };
}

function keysBody(session0: Uint8Array, advertised: string[], keysDigest: Uint8Array): Canonical {
  return { session0, advertised, keysDigest };
}

function fullSession(session0: Uint8Array, advertised: string[], keysDigest: Uint8Array): Uint8Array {
  return hashCanonical('fedlora/secagg/session/v1', { session0, advertised, keysDigest });
}

function bCommitment(session0: Uint8Array, id: string, b: Uint8Array): Uint8Array {
  return hashCanonical('fedlora/secagg/b-commit/v1', { session0, id, b });
}

function commitLabel(session: Uint8Array, dealer: string, holder: string, kind: 'b' | 's'): Canonical {
  return { session, dealer, holder, kind };
}

function commitmentsBody(session: Uint8Array, id: string, c: ShareCommitments[]): Canonical {
  return { session, id, commitments: c.map((x) => [x.holder, x.b, x.s]) };
}

function pairKey(session: Uint8Array, round: number, a: string, b: string, secret: Uint8Array): Uint8Array {
  const pair: [string, string] = a < b ? [a, b] : [b, a];
  return deriveMaskKey(secret, { session, round, purpose: 'pair', pair });
}

function selfKey(session: Uint8Array, round: number, id: string, b: Uint8Array): Uint8Array {
  return deriveMaskKey(b, { session, round, purpose: 'self', owner: id });
}

function x25519(sk: Uint8Array, pk: Uint8Array): Uint8Array {
  const s = x25519Raw(sk, pk);
  let z = 0;
  for (let i = 0; i < 32; i++) z |= s[i]!;
  if (z === 0) fail('SECAGG_MESSAGE', 'peer mask key is a low-order point (all-zero shared secret)');
  return s;
}

function checkIdList(list: unknown, what: string): asserts list is string[] {
  if (!Array.isArray(list) || list.length > MAX_PARTICIPANTS || list.some((x) => typeof x !== 'string')) {
    fail('SECAGG_MESSAGE', `${what}: must be an array of ids`);
  }
}

function sortedUnique(list: string[]): boolean {
  for (let i = 1; i < list.length; i++) if (!(list[i - 1]! < list[i]!)) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Client

export type ClientPhase = 'advertise' | 'share' | 'mask' | 'consistency' | 'unmask' | 'done' | 'aborted';

export interface SecAggClientOptions {
  params: SecAggParams;
  paramsSignature: Uint8Array;   // coordinator signature from the round start
  coordinatorKey: Uint8Array;    // pinned (or TOFU) coordinator key; must match params.coordinatorKey
  identity: Identity;            // this client's enrolled identity
  id: string;                    // this client's participant id
}

interface PeerKeys { cPk: Uint8Array; sPk: Uint8Array }

export class SecAggClient {
  readonly id: string;
  readonly #r: Roster;
  readonly #identity: Identity;
  #phase: ClientPhase = 'advertise';
  #abortReason: string | undefined;
  // own secrets
  #c = x25519KeyPair();
  #s = x25519KeyPair();
  #b = nacl.randomBytes(32);
  // round state
  #session: Uint8Array | undefined;
  #advertised = new Set<string>();
  #peers = new Map<string, PeerKeys>();    // neighbours in U1
  #holders: string[] = [];                 // neighbours in U1 ∪ {me}
  #held = new Map<string, { b: Share; s: Share; bSalt: Uint8Array; sSalt: Uint8Array }>(); // dealer → my shares
  #rejected = new Set<string>();           // neighbours that dealt shares I could not open or verify
  #survivors: string[] | undefined;
  #survivorSig: Uint8Array | undefined;
  #revealed = new Map<string, 'b' | 's'>();

  constructor(o: SecAggClientOptions) {
    this.#r = new Roster(o.params);
    if (!bytesEqual(o.params.coordinatorKey, o.coordinatorKey)) fail('CRYPTO_UNKNOWN_KEY', 'secagg params name a different coordinator key than the pinned one');
    if (!verifyMessage(SECAGG_DOMAINS.params, paramsCanonical(o.params), o.paramsSignature, o.coordinatorKey)) {
      fail('CRYPTO_BAD_SIGNATURE', 'secagg params are not signed by the coordinator');
    }
    this.id = o.id;
    if (!bytesEqual(this.#r.key(o.id), o.identity.publicKey)) fail('CRYPTO_UNKNOWN_KEY', `participant ${o.id} is listed with another identity key`);
    this.#identity = o.identity;
  }

  get phase(): ClientPhase { return this.#phase; }
  get abortReason(): string | undefined { return this.#abortReason; }
  /** Session id after key advertisement (binds round, model hash and all advertised keys). */
  get session(): Uint8Array | undefined { return this.#session; }
  /** Neighbours whose share envelope failed to open or verify (sorted); set by maskedInput. */
  get rejectedPeers(): string[] { return [...this.#rejected].sort(); }

  #step<T>(expected: ClientPhase, next: ClientPhase, f: () => T): T {
    if (this.#phase !== expected) {
      fail('SECAGG_PHASE', this.#phase === 'aborted' ? `client aborted earlier: ${this.#abortReason}` : `expected phase ${expected}, client is in ${this.#phase}`);
    }
    try {
      const v = f();
      this.#phase = next;
      return v;
    } catch (e) {
      this.#phase = 'aborted';
      this.#abortReason = (e as Error).message;
      this.#wipe();
      log.warn(`client ${this.id} aborts secure aggregation: ${this.#abortReason}`);
      throw e;
    }
  }

  #wipe(): void {
    this.#c.secretKey.fill(0); this.#s.secretKey.fill(0); this.#b.fill(0);
    for (const h of this.#held.values()) { h.b.y.fill(0); h.s.y.fill(0); }
  }

  advertiseKeys(): AdvertiseMsg {
    return this.#step('advertise', 'share', () => {
      const body = { id: this.id, cPk: this.#c.publicKey, sPk: this.#s.publicKey, bCommit: bCommitment(this.#r.session0, this.id, this.#b) };
      return { ...body, signature: signMessage(SECAGG_DOMAINS.advertise, advertiseBody(this.#r.session0, body), this.#identity.secretKey) };
    });
  }

  shareKeys(keys: KeysMsg): ShareKeysMsg {
    return this.#step('share', 'mask', () => {
      const r = this.#r, p = r.params;
      if (!keys || typeof keys !== 'object') fail('SECAGG_MESSAGE', 'keys message missing');
      checkIdList(keys.advertised, 'advertised');
      if (!sortedUnique(keys.advertised)) fail('SECAGG_MESSAGE', 'advertised list must be sorted without duplicates');
      if (!isBytes(keys.keysDigest, 32)) fail('SECAGG_MESSAGE', 'keysDigest must be 32 bytes');
      if (!verifyMessage(SECAGG_DOMAINS.keys, keysBody(r.session0, keys.advertised, keys.keysDigest), keys.signature, p.coordinatorKey)) {
        fail('CRYPTO_BAD_SIGNATURE', 'key list is not signed by the coordinator');
      }
      for (const id of keys.advertised) r.idx(id);
      this.#advertised = new Set(keys.advertised);
      if (!this.#advertised.has(this.id)) fail('SECAGG_SURVIVORS', 'key list omits this client');
      const expected = r.neighbourIds(this.id).filter((v) => this.#advertised.has(v));
      if (!Array.isArray(keys.neighbours)) fail('SECAGG_MESSAGE', 'neighbours must be an array');
      for (const a of keys.neighbours) {
        if (!a || typeof a.id !== 'string' || !isBytes(a.cPk, 32) || !isBytes(a.sPk, 32) || !isBytes(a.bCommit, 32)) fail('SECAGG_MESSAGE', 'malformed advertisement');
        if (a.id === this.id) continue;
        if (!r.areNeighbours(this.id, a.id) || !this.#advertised.has(a.id)) fail('SECAGG_MESSAGE', `advertisement from non-neighbour ${a.id}`);
        if (this.#peers.has(a.id)) fail('SECAGG_MESSAGE', `duplicate advertisement from ${a.id}`);
        if (!verifyMessage(SECAGG_DOMAINS.advertise, advertiseBody(r.session0, a), a.signature, r.key(a.id))) {
          fail('CRYPTO_BAD_SIGNATURE', `advertisement of ${a.id} is not signed by its identity key`);
        }
        this.#peers.set(a.id, { cPk: a.cPk, sPk: a.sPk });
      }
      for (const v of expected) if (!this.#peers.has(v)) fail('SECAGG_MESSAGE', `missing advertisement of neighbour ${v}`);
      this.#holders = [...expected, this.id];
      if (this.#holders.length < p.t) fail('SECAGG_THRESHOLD', `only ${this.#holders.length} holders advertised keys, threshold is ${p.t}`);
      const session = fullSession(r.session0, keys.advertised, keys.keysDigest);
      this.#session = session;

      const xs = this.#holders.map((h) => r.xOf(this.id, h));
      const n = this.#holders.length;
      const bShares = splitSecret(this.#b, n, p.t, xs);
      const sShares = splitSecret(this.#s.secretKey, n, p.t, xs);
      const envelopes: ShareKeysMsg['envelopes'] = [];
      const commitments: ShareCommitments[] = [];
      this.#holders.forEach((h, i) => {
        const b = bShares[i]!, s = sShares[i]!;
        const bSalt = nacl.randomBytes(16), sSalt = nacl.randomBytes(16);
        commitments.push({
          holder: h,
          b: shareCommitment(commitLabel(session, this.id, h, 'b'), b, bSalt),
          s: shareCommitment(commitLabel(session, this.id, h, 's'), s, sSalt),
        });
        if (h === this.id) { this.#held.set(h, { b, s, bSalt, sSalt }); return; }
        const payload = new Uint8Array(SHARE_PAYLOAD);
        payload[0] = b.x; payload.set(b.y, 1); payload.set(s.y, 33); payload.set(bSalt, 65); payload.set(sSalt, 81);
        const key = sharedKey(this.#peers.get(h)!.cPk, this.#c.secretKey);
        envelopes.push({ to: h, sealed: sealWithKey(payload, { session, round: p.round, sender: this.id, recipient: h, kind: SHARE_KIND }, key) });
        payload.fill(0); s.y.fill(0); b.y.fill(0);
      });
      const signature = signMessage(SECAGG_DOMAINS.shareCommit, commitmentsBody(session, this.id, commitments), this.#identity.secretKey);
      return { id: this.id, envelopes, commitments, signature };
    });
  }

  maskedInput(shares: SharesMsg, vector: Uint32Array): MaskedInputMsg {
    return this.#step('mask', 'consistency', () => {
      const r = this.#r, p = r.params, session = this.#session!;
      if (!(vector instanceof Uint32Array) || vector.length !== p.vectorLength) {
        fail('SECAGG_MESSAGE', `input must be a Uint32Array of length ${p.vectorLength}`);
      }
      if (!shares || !Array.isArray(shares.envelopes)) fail('SECAGG_MESSAGE', 'shares message missing');
      for (const e of shares.envelopes) {
        if (!e || typeof e.from !== 'string') fail('SECAGG_MESSAGE', 'malformed share envelope');
        const peer = this.#peers.get(e.from);
        // Misaddressed or duplicated envelopes can only come from the relay, which we must not trust
        // to be honest; abort rather than guess.
        if (!peer) fail('SECAGG_MESSAGE', `share envelope from non-neighbour ${e.from}`);
        if (this.#held.has(e.from) || this.#rejected.has(e.from)) fail('SECAGG_MESSAGE', `duplicate share envelope from ${e.from}`);
        const opened = this.#openShare(e.from, e.sealed, peer, session);
        if (typeof opened === 'string') {
          // A garbage envelope is one malicious (or broken) neighbour's doing: aborting would let it
          // veto every round. Treat it like a dealer whose shares we never got — still mask with it
          // (it dealt, so its pair masks must cancel or be recovered), just never reveal for it.
          this.#rejected.add(e.from);
          log.warn(`client ${this.id}: share envelope of ${e.from} rejected (${opened}); continuing without its shares`);
          continue;
        }
        this.#held.set(e.from, opened);
      }
      // U2 as seen here: neighbours that dealt me shares (plus me); only valid holders count toward t
      if (this.#held.size < p.t) {
        fail('SECAGG_THRESHOLD', `only ${this.#held.size} of my holders dealt me valid shares${this.#rejected.size ? ` (${this.#rejected.size} rejected)` : ''}, threshold is ${p.t}`);
      }
      const masked = vector.slice();
      const own = selfKey(session, p.round, this.id, this.#b);
      addMask(masked, own, 1);
      own.fill(0);
      for (const v of this.#dealers()) {
        if (v === this.id) continue;
        const sec = x25519(this.#s.secretKey, this.#peers.get(v)!.sPk);
        const key = pairKey(session, p.round, this.id, v, sec);
        sec.fill(0);
        addMask(masked, key, r.sign(this.id, v));
        key.fill(0);
      }
      if (this.#rejected.size) return { id: this.id, masked, rejected: this.rejectedPeers };
      return { id: this.id, masked };
    });
  }

  /** Neighbours that dealt shares this round, valid or not (plus me): the ones I pair-mask with. */
  #dealers(): string[] { return [...this.#held.keys(), ...this.#rejected]; }

  /** My share from `from`'s envelope, or why it cannot be used. */
  #openShare(from: string, sealed: Sealed, peer: PeerKeys, session: Uint8Array): { b: Share; s: Share; bSalt: Uint8Array; sSalt: Uint8Array } | string {
    const r = this.#r;
    let plain: Uint8Array;
    try {
      plain = openWithKey(sealed, { session, round: r.params.round, sender: from, recipient: this.id, kind: SHARE_KIND }, sharedKey(peer.cPk, this.#c.secretKey));
    } catch (e) {
      if (e instanceof CryptoError) return e.code;
      throw e;
    }
    try {
      if (plain.length !== SHARE_PAYLOAD) return 'CRYPTO_SHARE_INVALID: wrong size';
      const x = plain[0]!;
      if (x !== r.xOf(from, this.id)) return 'CRYPTO_SHARE_INVALID: wrong x coordinate';
      return { b: { x, y: plain.slice(1, 33) }, s: { x, y: plain.slice(33, 65) }, bSalt: plain.slice(65, 81), sSalt: plain.slice(81, 97) };
    } finally {
      plain.fill(0);
    }
  }

  consistencyCheck(list: SurvivorListMsg): ConsistencyMsg {
    return this.#step('consistency', 'unmask', () => {
      const r = this.#r, p = r.params, session = this.#session!;
      if (!list || typeof list !== 'object') fail('SECAGG_SURVIVORS', 'survivor list missing');
      checkIdList(list.survivors, 'survivors');
      if (!verifyMessage(SECAGG_DOMAINS.survivors, { session, survivors: list.survivors }, list.signature, p.coordinatorKey)) {
        fail('SECAGG_SURVIVORS', 'survivor list is unsigned or not signed by the coordinator');
      }
      const seen = new Set<string>();
      for (const id of list.survivors) {
        if (seen.has(id)) fail('SECAGG_SURVIVORS', `survivor list names ${id} twice`);
        seen.add(id);
        if (!r.index.has(id) || !this.#advertised.has(id)) fail('SECAGG_SURVIVORS', `survivor list names unknown or unadvertised id ${JSON.stringify(id.slice(0, 64))}`);
        if (r.areNeighbours(this.id, id) && !this.#held.has(id) && !this.#rejected.has(id)) fail('SECAGG_SURVIVORS', `survivor list names neighbour ${id}, which never shared keys`);
      }
      if (!seen.has(this.id)) fail('SECAGG_SURVIVORS', 'survivor list marks this client as dropped although it uploaded');
      if (!sortedUnique(list.survivors)) fail('SECAGG_SURVIVORS', 'survivor list must be sorted');
      const alive = this.#holders.filter((h) => seen.has(h)).length;
      if (alive < p.t) fail('SECAGG_SURVIVORS', `only ${alive} of my holders survive, fewer than t=${p.t}`);
      this.#survivors = list.survivors;
      this.#survivorSig = list.signature;
      return { id: this.id, signature: signMessage(SECAGG_DOMAINS.consistency, { session, survivors: list.survivors }, this.#identity.secretKey) };
    });
  }

  unmask(req: UnmaskRequestMsg): UnmaskMsg {
    return this.#step('unmask', 'done', () => {
      const r = this.#r, p = r.params, session = this.#session!, mine = this.#survivors!;
      if (!req || !req.survivorList || !Array.isArray(req.signatures)) fail('SECAGG_MESSAGE', 'unmask request malformed');
      const l = req.survivorList;
      checkIdList(l.survivors, 'survivors');
      if (!bytesEqual(canonicalEncode(l.survivors), canonicalEncode(mine)) || !isBytes(l.signature, 64) || !bytesEqual(l.signature, this.#survivorSig!)) {
        fail('SECAGG_SURVIVORS', 'survivor list changed between consistency check and unmasking');
      }
      const surv = new Set(mine);
      const signers = new Set<string>();
      const body = { session, survivors: mine };
      for (const s of req.signatures) {
        if (!s || typeof s.id !== 'string') fail('SECAGG_MESSAGE', 'malformed consistency signature');
        if (!surv.has(s.id) || !this.#holders.includes(s.id)) continue; // only my surviving holders count
        if (signers.has(s.id)) fail('SECAGG_SURVIVORS', `duplicate consistency signature from ${s.id}`);
        if (!verifyMessage(SECAGG_DOMAINS.consistency, body, s.signature, r.key(s.id))) {
          fail('SECAGG_SURVIVORS', `consistency signature of ${s.id} does not verify: the server showed clients different survivor lists`);
        }
        signers.add(s.id);
      }
      if (signers.size < p.t) fail('SECAGG_SURVIVORS', `only ${signers.size} of my holders confirmed the survivor list, threshold is ${p.t}`);
      const reveals: RevealedShare[] = [];
      for (const [dealer, h] of this.#held) {
        const kind: 'b' | 's' = surv.has(dealer) ? 'b' : 's';
        const prior = this.#revealed.get(dealer);
        if (prior && prior !== kind) fail('SECAGG_PHASE', `refusing to reveal both shares of ${dealer}`);
        this.#revealed.set(dealer, kind);
        const sh = kind === 'b' ? h.b : h.s;
        reveals.push({ dealer, kind, x: sh.x, y: sh.y.slice(), salt: (kind === 'b' ? h.bSalt : h.sSalt).slice() });
      }
      this.#wipe();
      return { id: this.id, reveals };
    });
  }

  /** Which kind of share was revealed per dealer (tests and audits). */
  revealedKinds(): ReadonlyMap<string, 'b' | 's'> { return this.#revealed; }
}

// ---------------------------------------------------------------------------------------------
// Server

export type ServerPhase = 'advertise' | 'share' | 'mask' | 'consistency' | 'unmask' | 'done' | 'failed';

export interface SecAggServerOptions {
  params: SecAggParams;
  identity: Identity;     // coordinator identity; signs key lists and survivor lists
}

interface Dealer {
  advert: AdvertiseMsg;
  commitments?: Map<string, { b: Uint8Array; s: Uint8Array }>;
}

/**
 * Every receive* below first validates the whole message and only then changes state, so a refused
 * message leaves the server exactly as it was and a corrected resend is accepted. (A half-applied
 * message would turn one malformed field into a permanent 'duplicate' for the honest retry.)
 */
export class SecAggServer {
  readonly #r: Roster;
  readonly #identity: Identity;
  #phase: ServerPhase = 'advertise';
  #dealers = new Map<string, Dealer>();            // U1 (advertised)
  #u1: string[] = [];
  #session: Uint8Array | undefined;
  #inbox = new Map<string, { from: string; sealed: Sealed }[]>();
  #u2 = new Set<string>();
  #u3 = new Set<string>();
  /** Masked inputs held by an edge, not yet in #sum (hierarchical sums). */
  #u3ref = new Set<string>();
  #sum: Uint32Array;
  #survivorList: SurvivorListMsg | undefined;
  #consistency = new Map<string, Uint8Array>();
  #u4 = new Set<string>();
  #unmasked = new Set<string>();
  #bShares = new Map<string, Map<string, Share>>();  // dealer → holder → valid revealed share
  #sShares = new Map<string, Map<string, Share>>();
  #badShares: { dealer: string; holder: string }[] = [];
  #complaints = new Map<string, Set<string>>();    // holder → dealers whose envelope it rejected

  constructor(o: SecAggServerOptions) {
    this.#r = new Roster(o.params);
    if (!bytesEqual(o.params.coordinatorKey, o.identity.publicKey)) fail('SECAGG_PARAMS', 'params name another coordinator key');
    this.#identity = o.identity;
    this.#sum = new Uint32Array(o.params.vectorLength);
  }

  get phase(): ServerPhase { return this.#phase; }
  get session(): Uint8Array | undefined { return this.#session; }
  /** Neighbours of a participant (for relaying, metrics). */
  neighbours(id: string): string[] { return this.#r.neighbourIds(id); }

  #expect(ph: ServerPhase): void {
    if (this.#phase !== ph) fail('SECAGG_PHASE', `server is in phase ${this.#phase}, not ${ph}`);
  }

  #member(from: string, set: { has(id: string): boolean }, what: string): void {
    this.#r.idx(from);
    if (!set.has(from)) fail('SECAGG_MESSAGE', `${from} is not in ${what}`);
  }

  receiveAdvertise(from: string, m: AdvertiseMsg): void {
    this.#expect('advertise');
    this.#r.idx(from);
    if (!m || m.id !== from) fail('SECAGG_MESSAGE', `advertisement names ${m?.id}, sender is ${from}`);
    if (this.#dealers.has(from)) fail('SECAGG_MESSAGE', `duplicate advertisement from ${from}`);
    if (!isBytes(m.cPk, 32) || !isBytes(m.sPk, 32) || !isBytes(m.bCommit, 32)) fail('SECAGG_MESSAGE', 'malformed advertisement');
    if (!verifyMessage(SECAGG_DOMAINS.advertise, advertiseBody(this.#r.session0, m), m.signature, this.#r.key(from))) {
      fail('CRYPTO_BAD_SIGNATURE', `advertisement of ${from} is not signed by its identity key`);
    }
    // copies: the caller's buffers (a decoder's pool, a test's tamper hook) must not reach our state
    this.#dealers.set(from, { advert: { id: m.id, cPk: m.cPk.slice(), sPk: m.sPk.slice(), bCommit: m.bCommit.slice(), signature: m.signature.slice() } });
  }

  closeAdvertise(): Map<string, KeysMsg> {
    this.#expect('advertise');
    const p = this.#r.params;
    this.#u1 = [...this.#dealers.keys()].sort();
    if (this.#u1.length < p.t) { this.#phase = 'failed'; fail('SECAGG_THRESHOLD', `only ${this.#u1.length} clients advertised keys, threshold is ${p.t}`); }
    const keysDigest = hashCanonical('fedlora/secagg/keys-digest/v1', this.#u1.map((id) => {
      const a = this.#dealers.get(id)!.advert;
      return [a.id, a.cPk, a.sPk, a.bCommit];
    }));
    const signature = signMessage(SECAGG_DOMAINS.keys, keysBody(this.#r.session0, this.#u1, keysDigest), this.#identity.secretKey);
    this.#session = fullSession(this.#r.session0, this.#u1, keysDigest);
    const out = new Map<string, KeysMsg>();
    for (const id of this.#u1) {
      const neighbours = this.#r.neighbourIds(id).filter((v) => this.#dealers.has(v)).map((v) => this.#dealers.get(v)!.advert);
      out.set(id, { advertised: this.#u1, keysDigest, signature, neighbours });
    }
    this.#phase = 'share';
    return out;
  }

  #holders(dealer: string): string[] {
    return [...this.#r.neighbourIds(dealer).filter((v) => this.#dealers.has(v)), dealer].sort();
  }

  receiveShareKeys(from: string, m: ShareKeysMsg): void {
    this.#expect('share');
    this.#member(from, this.#dealers, 'the advertised set');
    if (!m || m.id !== from) fail('SECAGG_MESSAGE', `share message names ${m?.id}, sender is ${from}`);
    const d = this.#dealers.get(from)!;
    if (d.commitments) fail('SECAGG_MESSAGE', `duplicate share message from ${from}`);
    if (!Array.isArray(m.envelopes) || !Array.isArray(m.commitments)) fail('SECAGG_MESSAGE', 'malformed share message');
    const holders = this.#holders(from);
    if (m.commitments.length !== holders.length || m.envelopes.length !== holders.length - 1) {
      fail('SECAGG_MESSAGE', `${from} must commit to shares for exactly its ${holders.length} holders and send one envelope to each of its ${holders.length - 1} neighbours`);
    }
    const commits = new Map<string, { b: Uint8Array; s: Uint8Array }>();
    for (const c of m.commitments) {
      if (!c || typeof c.holder !== 'string' || !isBytes(c.b, 32) || !isBytes(c.s, 32) || commits.has(c.holder)) fail('SECAGG_MESSAGE', 'malformed or duplicate share commitment');
      commits.set(c.holder, { b: c.b.slice(), s: c.s.slice() });
    }
    if (holders.some((h) => !commits.has(h))) fail('SECAGG_MESSAGE', `${from} must commit to shares for exactly its ${holders.length} holders`);
    if (!verifyMessage(SECAGG_DOMAINS.shareCommit, commitmentsBody(this.#session!, from, m.commitments), m.signature, this.#r.key(from))) {
      fail('CRYPTO_BAD_SIGNATURE', `share commitments of ${from} are not signed by its identity key`);
    }
    const accepted = new Map<string, Sealed>();
    for (const e of m.envelopes) {
      if (!e || typeof e.to !== 'string' || !e.sealed || !isBytes(e.sealed.nonce, 24) || !isBytes(e.sealed.box) || e.sealed.box.length > 1024) {
        fail('SECAGG_MESSAGE', 'malformed share envelope');
      }
      if (e.to === from || !commits.has(e.to) || accepted.has(e.to)) fail('SECAGG_MESSAGE', `share envelope addressed to ${e.to} is not expected`);
      accepted.set(e.to, { nonce: e.sealed.nonce.slice(), box: e.sealed.box.slice() });
    }
    // validated in full; from here on nothing throws
    for (const [to, sealed] of accepted) {
      let box = this.#inbox.get(to);
      if (!box) this.#inbox.set(to, box = []);
      box.push({ from, sealed });
    }
    d.commitments = commits;
    this.#u2.add(from);
  }

  closeShareKeys(): Map<string, SharesMsg> {
    this.#expect('share');
    const out = new Map<string, SharesMsg>();
    for (const id of [...this.#u2].sort()) {
      out.set(id, { envelopes: (this.#inbox.get(id) ?? []).filter((e) => this.#u2.has(e.from)) });
    }
    this.#inbox.clear();
    this.#phase = 'mask';
    return out;
  }

  /** Adds the masked vector to the running sum; the vector itself is not retained. */
  receiveMasked(from: string, m: MaskedInputMsg): void {
    this.#expect('mask');
    this.#member(from, this.#u2, 'the set that shared keys');
    if (!m || m.id !== from) fail('SECAGG_MESSAGE', `masked input names ${m?.id}, sender is ${from}`);
    if (this.#u3.has(from)) fail('SECAGG_MESSAGE', `duplicate masked input from ${from}`);
    const v = m.masked;
    if (!(v instanceof Uint32Array) || v.length !== this.#sum.length) {
      fail('SECAGG_MESSAGE', `masked input of ${from} must be a Uint32Array of length ${this.#sum.length}`);
    }
    const rejected = new Set<string>();
    if (m.rejected !== undefined) {
      checkIdList(m.rejected, 'rejected');
      for (const u of m.rejected) {
        // a complaint is only meaningful about a neighbour that actually dealt `from` an envelope
        if (u === from || rejected.has(u) || !this.#u2.has(u) || !this.#r.areNeighbours(from, u)) {
          fail('SECAGG_MESSAGE', `${from} reports a rejected envelope from ${JSON.stringify(u.slice(0, 64))}, which dealt it none (or twice)`);
        }
        rejected.add(u);
      }
    }
    const s = this.#sum;
    for (let i = 0; i < s.length; i++) s[i] = (s[i]! + v[i]!) >>> 0;
    this.#u3.add(from);
    if (rejected.size) {
      this.#complaints.set(from, rejected);
      log.warn(`${from} rejected the share envelopes of ${[...rejected].sort().join(', ')}`);
    }
  }

  /**
   * Hierarchical sums (coordinator/cluster): an edge validated and kept `from`'s masked vector and
   * reports only that it has it. Same checks as receiveMasked except the vector; the input counts
   * (joins U3) only once addPartial brings a sum that includes it.
   */
  receiveMaskedRef(from: string, m: { id: unknown; rejected?: unknown }): void {
    this.#expect('mask');
    this.#member(from, this.#u2, 'the set that shared keys');
    if (!m || m.id !== from) fail('SECAGG_MESSAGE', `masked input names ${String(m?.id)}, sender is ${from}`);
    if (this.#u3.has(from) || this.#u3ref.has(from)) fail('SECAGG_MESSAGE', `duplicate masked input from ${from}`);
    const rejected = new Set<string>();
    if (m.rejected !== undefined) {
      checkIdList(m.rejected, 'rejected');
      for (const u of m.rejected as string[]) {
        if (u === from || rejected.has(u) || !this.#u2.has(u) || !this.#r.areNeighbours(from, u)) {
          fail('SECAGG_MESSAGE', `${from} reports a rejected envelope from ${JSON.stringify(u.slice(0, 64))}, which dealt it none (or twice)`);
        }
        rejected.add(u);
      }
    }
    this.#u3ref.add(from);
    if (rejected.size) this.#complaints.set(from, rejected);
  }

  /** Adds an edge's sum of the masked inputs of `ids` (each reported by receiveMaskedRef, none counted yet). */
  addPartial(ids: string[], v: Uint32Array): void {
    this.#expect('mask');
    if (!Array.isArray(ids) || ids.length === 0 || new Set(ids).size !== ids.length) fail('SECAGG_MESSAGE', 'partial sum: empty or duplicate id list');
    for (const id of ids) if (!this.#u3ref.has(id) || this.#u3.has(id)) fail('SECAGG_MESSAGE', `partial sum includes ${String(id).slice(0, 64)}, which is not an uncounted masked input`);
    if (!(v instanceof Uint32Array) || v.length !== this.#sum.length) fail('SECAGG_MESSAGE', `partial sum must be a Uint32Array of length ${this.#sum.length}`);
    const s = this.#sum;
    for (let i = 0; i < s.length; i++) s[i] = (s[i]! + v[i]!) >>> 0;
    for (const id of ids) this.#u3.add(id);
  }

  /** Holders that rejected `dealer`'s envelope, sorted. */
  #complainers(dealer: string): string[] {
    return [...this.#complaints].filter(([, ds]) => ds.has(dealer)).map(([h]) => h).sort();
  }

  /**
   * Dealers whose secret can no longer be recovered now that U3 is known: holders outside U3 never
   * get to reveal, and holders that rejected the envelope have nothing to reveal. Failing here
   * instead of at finalize saves two message rounds and names the same culprits.
   */
  #unrecoverable(): DealerBlame[] {
    const p = this.#r.params, out: DealerBlame[] = [];
    for (const u of [...this.#u2].sort()) {
      const kind: 'b' | 's' = this.#u3.has(u) ? 'b' : 's';
      const complaints = this.#complainers(u);
      const others = this.#holders(u).filter((h) => !complaints.includes(h));
      const able = others.filter((h) => this.#u3.has(h)).length;
      if (able < p.t) out.push({ dealer: u, kind, reason: 'insufficient-shares', shares: able, complaints, missing: others.filter((h) => !this.#u3.has(h) && h !== u) });
    }
    return out;
  }

  #blame(blame: DealerBlame[], when: string): never {
    this.#phase = 'failed';
    const code = blame.every((b) => b.reason === 'inconsistent-shares') ? 'CRYPTO_RECONSTRUCT' : 'SECAGG_THRESHOLD';
    const what = blame.map((b) => `${b.dealer} (${b.kind === 'b' ? 'self-mask seed' : 'mask key of dropped client'}: ${b.reason === 'inconsistent-shares' ? 'shares do not reconstruct the committed secret' : `${b.shares} valid shares, threshold ${this.#r.params.t}`}${b.complaints.length ? `; envelope rejected by ${b.complaints.join(', ')}` : ''})`);
    throw new SecAggBlameError(code, `${when}: cannot recover the secrets of ${what.join('; ')}`, blame);
  }

  closeMaskedInput(): SurvivorListMsg {
    this.#expect('mask');
    const survivors = [...this.#u3].sort();
    if (survivors.length < this.#r.params.t) { this.#phase = 'failed'; fail('SECAGG_THRESHOLD', `only ${survivors.length} masked inputs, threshold is ${this.#r.params.t}`); }
    const lost = this.#unrecoverable();
    if (lost.length) this.#blame(lost, 'closing masked inputs');
    this.#survivorList = {
      survivors,
      signature: signMessage(SECAGG_DOMAINS.survivors, { session: this.#session!, survivors }, this.#identity.secretKey),
    };
    this.#phase = 'consistency';
    return this.#survivorList;
  }

  receiveConsistency(from: string, m: ConsistencyMsg): void {
    this.#expect('consistency');
    this.#member(from, this.#u3, 'the survivor list');
    if (!m || m.id !== from) fail('SECAGG_MESSAGE', `consistency message names ${m?.id}, sender is ${from}`);
    if (this.#consistency.has(from)) fail('SECAGG_MESSAGE', `duplicate consistency message from ${from}`);
    if (!isBytes(m.signature, 64) || !verifyMessage(SECAGG_DOMAINS.consistency, { session: this.#session!, survivors: this.#survivorList!.survivors }, m.signature, this.#r.key(from))) {
      fail('CRYPTO_BAD_SIGNATURE', `consistency signature of ${from} does not verify`);
    }
    this.#consistency.set(from, m.signature.slice());
  }

  closeConsistency(): Map<string, UnmaskRequestMsg> {
    this.#expect('consistency');
    this.#u4 = new Set(this.#consistency.keys());
    const out = new Map<string, UnmaskRequestMsg>();
    for (const id of [...this.#u4].sort()) {
      const signatures = this.#holders(id).filter((h) => this.#consistency.has(h)).map((h) => ({ id: h, signature: this.#consistency.get(h)! }));
      out.set(id, { survivorList: this.#survivorList!, signatures });
    }
    this.#phase = 'unmask';
    return out;
  }

  receiveUnmask(from: string, m: UnmaskMsg): void {
    this.#expect('unmask');
    this.#member(from, this.#u4, 'the set that confirmed the survivor list');
    if (!m || m.id !== from || !Array.isArray(m.reveals)) fail('SECAGG_MESSAGE', `unmask message malformed or names ${m?.id}, sender is ${from}`);
    if (this.#unmasked.has(from)) fail('SECAGG_MESSAGE', `duplicate unmask message from ${from}`);
    if (m.reveals.length > this.#r.params.k + 1) fail('SECAGG_MESSAGE', `${from} revealed more shares than it can hold`);
    const rejected = this.#complaints.get(from);
    const dealers = new Set<string>();
    const good: { dealer: string; kind: 'b' | 's'; share: Share }[] = [];
    const bad: { dealer: string; holder: string }[] = [];
    for (const s of m.reveals) {
      if (!s || typeof s.dealer !== 'string' || (s.kind !== 'b' && s.kind !== 's') || !Number.isInteger(s.x) || !isBytes(s.y, 32) || !isBytes(s.salt, 16)) {
        fail('SECAGG_MESSAGE', 'malformed revealed share');
      }
      if (dealers.has(s.dealer)) fail('SECAGG_MESSAGE', `${from} revealed two shares of ${s.dealer}`);
      dealers.add(s.dealer);
      if (!this.#u2.has(s.dealer)) fail('SECAGG_MESSAGE', `${from} revealed a share of ${s.dealer}, which never dealt shares`);
      if (rejected?.has(s.dealer)) fail('SECAGG_MESSAGE', `${from} revealed a share of ${s.dealer} after reporting its envelope as rejected`);
      const want = this.#u3.has(s.dealer) ? 'b' : 's';
      if (s.kind !== want) fail('SECAGG_MESSAGE', `${from} revealed a ${s.kind}-share of ${s.dealer}; expected ${want}`);
      const c = this.#dealers.get(s.dealer)!.commitments!.get(from);
      if (!c) fail('SECAGG_MESSAGE', `${from} holds no share of ${s.dealer}`);
      const share = { x: s.x, y: s.y };
      if (s.x !== this.#r.xOf(s.dealer, from) || !verifyShareCommitment(commitLabel(this.#session!, s.dealer, from, s.kind), share, s.salt, s.kind === 'b' ? c.b : c.s)) {
        // a well-formed share that fails its commitment is evidence against its holder, not a reason to refuse the rest
        bad.push({ dealer: s.dealer, holder: from });
        continue;
      }
      good.push({ dealer: s.dealer, kind: s.kind, share: { x: share.x, y: share.y.slice() } });
    }
    // validated in full; from here on nothing throws
    for (const b of bad) log.warn(`share of ${b.dealer} revealed by ${from} fails its commitment; ignored`);
    this.#badShares.push(...bad);
    for (const g of good) {
      const bucket = g.kind === 'b' ? this.#bShares : this.#sShares;
      let list = bucket.get(g.dealer);
      if (!list) bucket.set(g.dealer, list = new Map());
      list.set(from, g.share);
    }
    this.#unmasked.add(from);
  }

  /** Complaints as reported with the masked inputs, one entry per (dealer, holder). */
  complaints(): { dealer: string; holder: string }[] {
    const out: { dealer: string; holder: string }[] = [];
    for (const [holder, ds] of this.#complaints) for (const dealer of ds) out.push({ dealer, holder });
    return out.sort((a, b) => (a.dealer === b.dealer ? (a.holder < b.holder ? -1 : 1) : a.dealer < b.dealer ? -1 : 1));
  }

  /**
   * Removes all masks and returns the sum of the survivors' inputs. Every secret is recovered before
   * the sum is touched, so a failure names all culprits at once (SecAggBlameError.culprits).
   */
  finalize(): SecAggResult {
    this.#expect('unmask');
    const r = this.#r, p = r.params, session = this.#session!;
    const sum = this.#sum;
    try {
      const blame: DealerBlame[] = [];
      const recover = (u: string, kind: 'b' | 's', check: (cand: Uint8Array) => boolean): Uint8Array | undefined => {
        const got = (kind === 'b' ? this.#bShares : this.#sShares).get(u) ?? new Map<string, Share>();
        const shares = [...got.values()];
        const complaints = this.#complainers(u);
        // a dropped dealer is not expected to reveal its own mask key share
        const missing = this.#holders(u).filter((h) => !got.has(h) && !complaints.includes(h) && !(kind === 's' && h === u));
        const entry = { dealer: u, kind, shares: shares.length, complaints, missing };
        if (shares.length < p.t) { blame.push({ ...entry, reason: 'insufficient-shares' }); return undefined; }
        try {
          return reconstructVerified(shares, p.t, check);
        } catch (e) {
          // every share here matched the dealer's own signed commitment, so only the dealer can be at fault
          if (e instanceof CryptoError && e.code === 'CRYPTO_RECONSTRUCT') { blame.push({ ...entry, reason: 'inconsistent-shares' }); return undefined; }
          throw e;
        }
      };
      const seeds = new Map<string, Uint8Array>();
      for (const u of [...this.#u3].sort()) {
        const commit = this.#dealers.get(u)!.advert.bCommit;
        const b = recover(u, 'b', (cand) => bytesEqual(bCommitment(r.session0, u, cand), commit));
        if (b) seeds.set(u, b);
      }
      const dropped = [...this.#u2].filter((u) => !this.#u3.has(u)).sort();
      const keys = new Map<string, Uint8Array>();
      for (const dId of dropped) {
        const sPk = this.#dealers.get(dId)!.advert.sPk;
        const sk = recover(dId, 's', (cand) => bytesEqual(x25519Base(cand), sPk));
        if (sk) keys.set(dId, sk);
      }
      if (blame.length) {
        for (const x of [...seeds.values(), ...keys.values()]) x.fill(0);
        this.#blame(blame, 'finalize');
      }
      for (const [u, b] of seeds) { const k = selfKey(session, p.round, u, b); addMask(sum, k, -1); k.fill(0); b.fill(0); }
      for (const [dId, sk] of keys) {
        for (const v of r.neighbourIds(dId)) {
          if (!this.#u3.has(v)) continue;
          const sec = x25519(sk, this.#dealers.get(v)!.advert.sPk);
          const key = pairKey(session, p.round, v, dId, sec);
          sec.fill(0);
          // v added sign(v,d)·PRG(s_vd); take it out
          addMask(sum, key, r.sign(v, dId) === 1 ? -1 : 1);
          key.fill(0);
        }
        sk.fill(0);
      }
      this.#phase = 'done';
      return { sum, survivors: [...this.#u3].sort(), droppedAfterSharing: dropped, badShares: [...this.#badShares], complaints: this.complaints() };
    } catch (e) {
      this.#phase = 'failed';
      throw e instanceof Error ? e : cryptoError('SECAGG_THRESHOLD', String(e));
    }
  }
}
