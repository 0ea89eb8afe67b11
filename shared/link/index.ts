/**
 * A Link is one authenticated-or-not connection to a peer, as the round engine's host sees it:
 * requests always carry an ack and a deadline, notices may be acked, handlers answer every inbound
 * request (bad input gets `{ ok:false, code, message }`), and close() drops the peer. socket.io is
 * the one transport today (`socketIoLink`); nothing above this file names a socket.
 */
import { ProtocolError } from '../errors.js';
import { errorReply, parseReply, requestEncoded, serveRequest, type AckEmitter } from '../protocol/rpc.js';

export type RequestHandler = (msg: unknown, bytes: number) => Promise<Record<string, unknown> | Uint8Array> | Record<string, unknown> | Uint8Array;

export interface Link {
  /** Transport-level id of this connection (what a join proof is bound to). */
  readonly id: string;
  readonly open: boolean;
  /** Sends `bytes` and resolves with the peer's `{ ok:true }` reply; rejects with a ProtocolError on refusal or timeout. */
  request(event: string, bytes: Uint8Array, timeoutMs: number, maxReplyBytes?: number): Promise<Record<string, unknown>>;
  /** Sends a notice; resolves true when the peer acked it with ok, false on refusal, timeout or a closed link. Never rejects. */
  notify(event: string, bytes: Uint8Array, timeoutMs: number): Promise<boolean>;
  /** Registers the handler for one inbound request event. */
  onRequest(event: string, handler: RequestHandler): void;
  /** Called once when the link goes down, whoever closed it. */
  onClose(fn: (reason: string) => void): void;
  /** True while earlier writes have not reached the OS yet (a peer that does not read). */
  readonly busy: boolean;
  /** Resolves once everything queued so far reached the OS (or the link closed). */
  drained(): Promise<void>;
  close(reason?: string): void;
}

export interface SocketIoLinkOptions {
  /** Largest inbound message decoded. */
  maxBytes: number;
  /** Every refused inbound request and every unknown event (strike counting, metrics). */
  onRefused?: (event: string, e: unknown) => void;
}

/** What socketIoLink needs of a socket.io Socket (server side or client side). */
export interface SocketLike extends AckEmitter {
  readonly id?: string | undefined;
  readonly connected: boolean;
  emit(ev: string, ...args: unknown[]): unknown;
  on(ev: string, fn: (...args: unknown[]) => void): unknown;
  onAny?(fn: (ev: string, ...args: unknown[]) => void): unknown;
  disconnect(close?: boolean): unknown;
}

interface Emitter { once?(ev: string, fn: () => void): unknown; off?(ev: string, fn: () => void): unknown }
interface EngineConn extends Emitter { writeBuffer?: unknown[]; transport?: Emitter & { writable?: boolean } }

/** A Link over one socket.io socket. Unknown events are refused (acked with an error when they carry an ack). */
export function socketIoLink(socket: SocketLike, opts: SocketIoLinkOptions): Link {
  const handlers = new Map<string, RequestHandler>();
  const closers: ((reason: string) => void)[] = [];
  let closed = false;
  const conn = (): EngineConn | undefined => (socket as unknown as { conn?: EngineConn }).conn;
  socket.on('disconnect', (...a: unknown[]) => {
    if (closed) return;
    closed = true;
    const reason = String(a[0] ?? 'closed');
    for (const f of closers.splice(0)) {
      try { f(reason); } catch { /* a close listener must not stop the others */ }
    }
  });
  socket.onAny?.((ev: string, ...args: unknown[]) => {
    if (handlers.has(ev)) return;
    const e = new ProtocolError('UNKNOWN_EVENT', `unknown event ${String(ev).slice(0, 40)}`);
    opts.onRefused?.(String(ev), e);
    const ack = args.at(-1);
    if (typeof ack === 'function') try { (ack as (r: Uint8Array) => void)(errorReply(e)); } catch { /* gone */ }
  });
  return {
    get id() { return socket.id ?? ''; },
    get open() { return !closed && socket.connected; },
    get busy() {
      const c = conn();
      return !closed && !!c && ((Array.isArray(c.writeBuffer) && c.writeBuffer.length > 0) || c.transport?.writable === false);
    },
    drained() {
      return new Promise<void>((res) => {
        const c = conn();
        const t = c?.transport;
        const idle = () => closed || !c || ((!Array.isArray(c.writeBuffer) || c.writeBuffer.length === 0) && t?.writable !== false);
        if (idle() || !t?.once) { res(); return; }
        // the websocket transport emits 'drain' once its last frame reached the OS; recheck then
        const check = () => {
          if (idle()) { t.off?.('drain', check); c!.off?.('close', finish); res(); } else t.once!('drain', check);
        };
        const finish = () => { t.off?.('drain', check); res(); };
        t.once('drain', check);
        c!.once?.('close', finish);
      });
    },
    request(event, bytes, timeoutMs, maxReplyBytes) {
      if (closed || !socket.connected) return Promise.reject(new ProtocolError('LINK_CLOSED', `${event}: link is closed`));
      return requestEncoded(socket, event, bytes, timeoutMs, maxReplyBytes);
    },
    async notify(event, bytes, timeoutMs) {
      if (closed || !socket.connected) return false;
      try {
        const raw = await socket.timeout(timeoutMs).emitWithAck(event, bytes);
        parseReply(raw);
        return true;
      } catch {
        return false;
      }
    },
    onRequest(event, handler) {
      handlers.set(event, handler);
      socket.on(event, serveRequest(event, handler, { maxBytes: opts.maxBytes, onError: (ev, e) => opts.onRefused?.(ev, e) }));
    },
    onClose(fn) {
      if (closed) { fn('closed'); return; }
      closers.push(fn);
    },
    close() {
      // socket.io flushes what is already queued (acks included) before it closes the transport
      socket.disconnect(true);
    },
  };
}
