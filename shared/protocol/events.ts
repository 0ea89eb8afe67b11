/**
 * Typed socket.io event maps. Event names are strings; every payload is one MessagePack-encoded
 * Uint8Array (shared/codec) and every request carries an ack whose reply is also MessagePack:
 * `{ ok: true, ... }` or `{ ok: false, code, message }`. See docs/PROTOCOL.md.
 */

/** Bumped on any incompatible change to events or payloads. Checked in the socket.io handshake and in `hello`. */
export const PROTOCOL_VERSION = 3;

export type Ack = (reply: Uint8Array) => void;
export type Request = (payload: Uint8Array, ack: Ack) => void;
export type Notice = (payload: Uint8Array, ack?: Ack) => void;

export const EV = {
  authChallenge: 'auth:challenge',
  hello: 'hello',
  modelChunk: 'model:chunk',
  ready: 'ready',
  update: 'round:update',
  roundStart: 'round:start',
  roundEnd: 'round:end',
  sessionDone: 'session:done',
  secagg: 'secagg:msg',
  secaggKeys: 'secagg:keys',
  secaggShares: 'secagg:shares',
  secaggSurvivors: 'secagg:survivors',
  secaggUnmask: 'secagg:unmask',
} as const;

export interface ClientToServerEvents {
  /** {} → AuthChallengeReply: a single-use join challenge bound to this connection + the certified box key. */
  'auth:challenge': Request;
  /** Hello (with a join proof) → HelloReply. Nothing about the session is sent before it succeeds. */
  'hello': Request;
  /** ChunkRequest → ChunkReply: one byte range of one base-model file. */
  'model:chunk': Request;
  /** Ready → {ok}: the client holds the verified base model and can be sampled. */
  'ready': Request;
  /** SealedUpdate → {ok}: the client's flat contribution for a round (insecure aggregation only). */
  'round:update': Request;
  /** SealedSecAgg → {ok}: one secure-aggregation message (advertise, share, masked, consistency, unmask). */
  'secagg:msg': Request;
}

export interface ServerToClientEvents {
  /** RoundStart → {ok}: the client accepts (it then trains and sends round:update). */
  'round:start': Request;
  /** RoundEnd notice (acked by the client when it passes one; the coordinator never waits for it): the round finished or was abandoned. */
  'round:end': Notice;
  /** Signed SessionDone notice (acked; close() waits briefly for the acks): all rounds are done; the client may exit. */
  'session:done': Notice;
  /** SecAgg phase notices {roundId, msg}; the msgs carry their own coordinator signatures / pairwise seals. */
  'secagg:keys': Notice;
  'secagg:shares': Notice;
  'secagg:survivors': Notice;
  'secagg:unmask': Notice;
}

/** socket.io handshake `auth` object. */
export interface HandshakeAuth { protocolVersion: number }
