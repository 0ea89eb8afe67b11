/**
 * The security layer of the wire: signed envelopes for coordinator messages that steer a round,
 * sealed envelopes for client→coordinator payloads, and guards for the auth / secagg messages.
 *
 *   signed envelope:  { body: <MessagePack bytes>, signature }   signature = Ed25519 over
 *                     SHA-256(body) in a per-message domain, by the coordinator identity key
 *   sealed envelope:  { roundId, kind?, sealed: {nonce, box, ephemeral} }   nacl box from a fresh
 *                     ephemeral key to the coordinator's certified X25519 key; the sealed plaintext
 *                     carries its context (session = round id, round, sender, 'coordinator', kind),
 *                     so moving it to another round, client or message kind fails on open.
 */
import { createHash } from 'node:crypto';
import { ProtocolError } from '../errors.js';
import { decode, describe, encode } from '../codec/index.js';
import {
  type AnonSealed, type BoxKeyCertificate, type Identity, type JoinChallenge, type SealContext,
  openAnonymous, sealAnonymous, signMessage, verifyMessage,
} from '../crypto/index.js';
import { bad, obj, oneOf, str } from './guard.js';
import { ID_RE } from './messages.js';

export const SIGNED_DOMAINS = {
  roundStart: 'fedlora/round-start/v1',
  roundEnd: 'fedlora/round-end/v1',
  sessionDone: 'fedlora/session-done/v1',
} as const;

function digest(body: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(body).digest());
}

export function sha256Hex(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Encodes `value` and signs it: the bytes a coordinator emits for a message that steers a round. */
export function signEnvelope(domain: string, value: unknown, identity: Identity): Uint8Array {
  const body = encode(value);
  return encode({ body, signature: signMessage(domain, { sha256: digest(body) }, identity.secretKey) });
}

/** Verifies a signed envelope against the pinned coordinator key; returns the decoded body (unknown, guard it). */
export function openEnvelope(domain: string, raw: unknown, coordinatorKey: Uint8Array, maxBytes?: number): unknown {
  const o = obj(decode(raw, maxBytes), 'envelope');
  if (!(o.body instanceof Uint8Array)) bad('envelope.body', `expected bytes, got ${describe(o.body)}`);
  if (!verifyMessage(domain, { sha256: digest(o.body) }, o.signature, coordinatorKey)) {
    throw new ProtocolError('BAD_SIGNATURE', `${domain}: not signed by the pinned coordinator key`);
  }
  return decode(o.body, maxBytes);
}

export interface AuthChallengeReply { challenge: JoinChallenge; boxKey: BoxKeyCertificate }

export function parseAuthChallengeReply(v: Record<string, unknown>): AuthChallengeReply {
  const c = obj(v.challenge, 'challenge');
  const b = obj(v.boxKey, 'boxKey');
  const bytes = (x: unknown, p: string, n: number): Uint8Array => { if (!(x instanceof Uint8Array) || x.length !== n) bad(p, `expected ${n} bytes`); return x; };
  const int = (x: unknown, p: string): number => { if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) bad(p, 'expected a timestamp'); return x; };
  return {
    challenge: { nonce: bytes(c.nonce, 'challenge.nonce', 32), coordinator: bytes(c.coordinator, 'challenge.coordinator', 32), expiresAt: int(c.expiresAt, 'challenge.expiresAt') },
    boxKey: {
      boxPublicKey: bytes(b.boxPublicKey, 'boxKey.boxPublicKey', 32), coordinator: bytes(b.coordinator, 'boxKey.coordinator', 32),
      issuedAt: int(b.issuedAt, 'boxKey.issuedAt'), expiresAt: int(b.expiresAt, 'boxKey.expiresAt'), signature: bytes(b.signature, 'boxKey.signature', 64),
    },
  };
}

export const SECAGG_KINDS = ['advertise', 'share', 'masked', 'consistency', 'unmask'] as const;
export type SecAggKind = (typeof SECAGG_KINDS)[number];
export type SealedKind = 'update' | `secagg/${SecAggKind}`;

export function sealContext(roundId: string, round: number, sender: string, kind: SealedKind): SealContext {
  return { session: roundId, round, sender, recipient: 'coordinator', kind };
}

/** Client side: seals `payload` (already encoded) for the coordinator and wraps it for the wire. */
export function sealForCoordinator(payload: Uint8Array, ctx: { roundId: string; round: number; sender: string; kind: SealedKind }, boxKey: Uint8Array): Uint8Array {
  const sealed = sealAnonymous(payload, sealContext(ctx.roundId, ctx.round, ctx.sender, ctx.kind), boxKey);
  const kind = ctx.kind === 'update' ? undefined : ctx.kind.slice('secagg/'.length);
  return encode({ roundId: ctx.roundId, ...(kind ? { kind } : {}), sealed });
}

export interface SealedEnvelope { roundId: string; kind?: SecAggKind; sealed: AnonSealed }

export function parseSealedEnvelope(v: unknown, withKind: boolean): SealedEnvelope {
  const o = obj(v, 'sealed');
  const roundId = str(o.roundId, 'sealed.roundId', { re: ID_RE });
  const kind = withKind ? oneOf(o.kind, 'sealed.kind', SECAGG_KINDS) : undefined;
  const s = obj(o.sealed, 'sealed.sealed');
  for (const [f, n] of [['nonce', 24], ['ephemeral', 32]] as const) {
    if (!(s[f] instanceof Uint8Array) || s[f].length !== n) bad(`sealed.${f}`, `expected ${n} bytes`);
  }
  if (!(s.box instanceof Uint8Array)) bad('sealed.box', 'expected bytes');
  return { roundId, ...(kind ? { kind } : {}), sealed: { nonce: s.nonce as Uint8Array, box: s.box as Uint8Array, ephemeral: s.ephemeral as Uint8Array } };
}

/** Coordinator side: opens a sealed envelope for the expected context; returns the decoded payload. */
export function openFromClient(env: SealedEnvelope, ctx: { round: number; sender: string; kind: SealedKind }, boxSecretKey: Uint8Array, maxBytes?: number): unknown {
  const plain = openAnonymous(env.sealed, sealContext(env.roundId, ctx.round, ctx.sender, ctx.kind), boxSecretKey);
  return decode(plain, maxBytes);
}
