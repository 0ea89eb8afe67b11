/**
 * Request/reply over socket.io acks. `request` always sets a deadline (`socket.timeout(ms).emitWithAck`)
 * and turns `{ ok:false }` replies into ProtocolErrors; `serveRequest` wraps a handler so every inbound
 * request is decoded, guarded and answered — bad input gets `{ ok:false, code, message }`, never silence.
 */
import { FedloraError, ProtocolError, errorMessage } from '../errors.js';
import { decode, encode, DEFAULT_MAX_MESSAGE_BYTES } from '../codec/index.js';
import { obj } from './guard.js';

export interface ErrorReply { ok: false; code: string; message: string }
export type Reply = ({ ok: true } & Record<string, unknown>) | ErrorReply;

export function okReply(body: Record<string, unknown> = {}): Uint8Array {
  return encode({ ...body, ok: true });
}

export function errorReply(e: unknown): Uint8Array {
  const code = e instanceof FedloraError ? e.code : 'INTERNAL';
  // internal errors are not echoed verbatim: they may carry paths or state the peer has no business seeing
  const message = e instanceof FedloraError ? e.message.slice(0, 500) : 'internal error';
  return encode({ ok: false, code, message } satisfies ErrorReply);
}

/** Decodes an ack reply; throws ProtocolError(code) for `{ ok:false }`. */
export function parseReply(raw: unknown, maxBytes = DEFAULT_MAX_MESSAGE_BYTES): Record<string, unknown> {
  const o = obj(decode(raw, maxBytes), 'reply');
  if (o.ok === true) return o;
  if (o.ok === false) {
    const code = typeof o.code === 'string' ? o.code.slice(0, 64) : 'UNKNOWN';
    const message = typeof o.message === 'string' ? o.message.slice(0, 500) : '';
    throw new ProtocolError(code, `peer refused: ${message}`);
  }
  throw new ProtocolError('BAD_MESSAGE', 'reply has no boolean ok');
}

/** Anything with socket.io's `timeout(ms).emitWithAck(...)` (client Socket or server-side Socket). */
export interface AckEmitter {
  timeout(ms: number): { emitWithAck(ev: string, ...args: unknown[]): Promise<unknown> };
}

export async function request(socket: AckEmitter, event: string, payload: unknown, timeoutMs: number, maxReplyBytes = DEFAULT_MAX_MESSAGE_BYTES): Promise<Record<string, unknown>> {
  return requestEncoded(socket, event, encode(payload), timeoutMs, maxReplyBytes);
}

/** Same as `request` for a payload already encoded (so the caller can count or reuse the bytes). */
export async function requestEncoded(socket: AckEmitter, event: string, bytes: Uint8Array, timeoutMs: number, maxReplyBytes = DEFAULT_MAX_MESSAGE_BYTES): Promise<Record<string, unknown>> {
  let raw: unknown;
  try {
    raw = await socket.timeout(timeoutMs).emitWithAck(event, bytes);
  } catch (e) {
    throw new ProtocolError('TIMEOUT', `${event}: no reply within ${timeoutMs} ms (${errorMessage(e)})`);
  }
  return parseReply(raw, maxReplyBytes);
}

export interface ServeOptions {
  maxBytes: number;
  /** Called for every refused request (metrics, strike counting). */
  onError?: (event: string, e: unknown) => void;
}

/** socket.io `on` handler for a request event: decode → handler → ack, with every failure acked as an error. */
export function serveRequest(event: string, handler: (msg: unknown, bytes: number) => Promise<Record<string, unknown> | Uint8Array> | Record<string, unknown> | Uint8Array, opts: ServeOptions): (...args: unknown[]) => void {
  return (...args: unknown[]) => {
    const ack = args.length > 0 && typeof args[args.length - 1] === 'function' ? (args[args.length - 1] as (r: unknown) => void) : null;
    const send = (r: Uint8Array) => { try { ack?.(r); } catch { /* peer gone */ } };
    if (!ack) {
      opts.onError?.(event, new ProtocolError('NO_ACK', `${event} sent without an ack callback`));
      return;
    }
    if (args.length !== 2) {
      const e = new ProtocolError('BAD_MESSAGE', `${event}: expected exactly one payload argument, got ${args.length - 1}`);
      opts.onError?.(event, e);
      send(errorReply(e));
      return;
    }
    let msg: unknown;
    const size = args[0] instanceof Uint8Array ? args[0].byteLength : args[0] instanceof ArrayBuffer ? args[0].byteLength : 0;
    try {
      msg = decode(args[0], opts.maxBytes);
    } catch (e) {
      opts.onError?.(event, e);
      send(errorReply(e));
      return;
    }
    Promise.resolve()
      .then(() => handler(msg, size))
      .then((body) => send(body instanceof Uint8Array ? body : okReply(body)), (e: unknown) => {
        opts.onError?.(event, e);
        send(errorReply(e));
      });
  };
}
