/**
 * The leader's side of a client connection held by an edge: a Link whose transport is the cluster
 * bus. Requests and notices go to the edge holding the socket (`c:send`), which returns the
 * client's raw ack; inbound client requests arrive from the edge (`c:req`) and are answered here
 * exactly like socketIoLink answers them (decoded with a bound, `{ ok:false, code, message }` on refusal).
 */
import { createHash } from 'node:crypto';
import { ProtocolError } from '../../shared/errors.js';
import { decode } from '../../shared/codec/index.js';
import { errorReply, okReply, parseReply } from '../../shared/protocol/rpc.js';
import type { Link, RequestHandler } from '../../shared/link/index.js';
import type { Bus } from './bus.js';

/** Extra time the bus gives an edge beyond the client's own deadline. */
const RELAY_MARGIN_MS = 2000;
/** Payloads at least this large (round:start with the global adapter) go through Redis once, by hash. */
export const BLOB_MIN_BYTES = 32 * 1024;
/** How long a stored payload stays in Redis. */
const BLOB_TTL_MS = 30 * 60_000;

/**
 * Large outbound payloads are the same bytes for many clients (round:start is signed once per rank):
 * stored once in Redis under their SHA-256 and sent to edges as a reference, so the leader's
 * outbound traffic per round is O(edges × distinct payloads), not O(clients × payload).
 */
export class BlobStore {
  readonly #bus: Bus;
  readonly #stored = new Map<string, Promise<void>>();
  /** The hash of a payload object already hashed: one round:start goes to every client of a rank. */
  readonly #hashes = new WeakMap<Uint8Array, string>();
  constructor(bus: Bus) { this.#bus = bus; }
  async put(bytes: Uint8Array): Promise<string> {
    let hash = this.#hashes.get(bytes);
    if (hash === undefined) {
      hash = createHash('sha256').update(bytes).digest('hex');
      this.#hashes.set(bytes, hash);
    }
    let p = this.#stored.get(hash);
    if (!p) {
      p = this.#bus.redis.set(`${this.#bus.prefix}:blob:${hash}`, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), 'PX', BLOB_TTL_MS).then(() => undefined);
      this.#stored.set(hash, p);
      p.catch(() => this.#stored.delete(hash));
      // bounded: older entries are forgotten (re-stored if needed again)
      while (this.#stored.size > 64) this.#stored.delete(this.#stored.keys().next().value!);
    }
    await p;
    return hash;
  }
}

export class RemoteLink implements Link {
  readonly id: string;
  readonly edge: string;
  readonly #bus: Bus;
  readonly #maxBytes: number;
  readonly #onRefused: ((event: string, e: unknown) => void) | undefined;
  readonly #handlers = new Map<string, RequestHandler>();
  readonly #closers: ((reason: string) => void)[] = [];
  #closed = false;

  readonly #blobs: BlobStore | undefined;

  constructor(bus: Bus, edge: string, socketId: string, o: { maxBytes: number; onRefused?: (event: string, e: unknown) => void; blobs?: BlobStore }) {
    this.#bus = bus;
    this.#blobs = o.blobs;
    this.edge = edge;
    this.id = socketId;
    this.#maxBytes = o.maxBytes;
    this.#onRefused = o.onRefused;
  }

  get open(): boolean { return !this.#closed; }
  get busy(): boolean { return false; }
  drained(): Promise<void> { return Promise.resolve(); }

  async request(event: string, bytes: Uint8Array, timeoutMs: number, maxReplyBytes?: number): Promise<Record<string, unknown>> {
    if (this.#closed) throw new ProtocolError('LINK_CLOSED', `${event}: link is closed`);
    const r = await this.#bus.request(this.edge, 'c:send', { sock: this.id, event, ...(await this.#payload(bytes)), timeoutMs }, timeoutMs + RELAY_MARGIN_MS) as { raw?: unknown };
    if (!r || !(r.raw instanceof Uint8Array)) throw new ProtocolError('BAD_MESSAGE', `${event}: malformed relayed reply`);
    return parseReply(r.raw, maxReplyBytes);
  }

  async notify(event: string, bytes: Uint8Array, timeoutMs: number): Promise<boolean> {
    if (this.#closed) return false;
    try {
      const r = await this.#bus.request(this.edge, 'c:send', { sock: this.id, event, ...(await this.#payload(bytes)), timeoutMs, notify: true }, timeoutMs + RELAY_MARGIN_MS) as { ok?: unknown };
      return r?.ok === true;
    } catch {
      return false;
    }
  }

  onRequest(event: string, handler: RequestHandler): void { this.#handlers.set(event, handler); }

  async #payload(bytes: Uint8Array): Promise<{ bytes: Uint8Array } | { blob: string }> {
    return this.#blobs && bytes.byteLength >= BLOB_MIN_BYTES ? { blob: await this.#blobs.put(bytes) } : { bytes };
  }

  /** An inbound client request relayed by the edge: always answers with reply bytes. */
  async dispatch(event: string, bytes: unknown): Promise<Uint8Array> {
    const h = this.#handlers.get(event);
    try {
      if (!h) throw new ProtocolError('UNKNOWN_EVENT', `unknown event ${String(event).slice(0, 40)}`);
      if (!(bytes instanceof Uint8Array)) throw new ProtocolError('BAD_MESSAGE', `${event}: expected bytes`);
      const msg = decode(bytes, this.#maxBytes);
      const body = await h(msg, bytes.byteLength);
      return body instanceof Uint8Array ? body : okReply(body);
    } catch (e) {
      this.#onRefused?.(event, e);
      return errorReply(e);
    }
  }

  onClose(fn: (reason: string) => void): void {
    if (this.#closed) { fn('closed'); return; }
    this.#closers.push(fn);
  }

  /** The edge reported the socket gone (or the edge itself is gone). */
  closed(reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const f of this.#closers.splice(0)) {
      try { f(reason); } catch { /* one listener must not stop the others */ }
    }
  }

  close(): void {
    if (this.#closed) return;
    void this.#bus.emit(this.edge, 'c:kick', { sock: this.id }).catch(() => undefined);
    this.closed('closed by the coordinator');
  }
}
