/**
 * Request/reply between the processes of one cluster over Redis pub/sub. Every process (the
 * leader, each edge) subscribes to its own channel `<prefix>:node:<nodeId>`; a request names the
 * node it is for and carries a deadline, the reply comes back on the sender's channel. Messages are
 * the project codec (msgpack), bounded on decode. Nothing here knows about rounds.
 */
import { Redis } from 'ioredis';
import { randomBytes } from 'node:crypto';
import { FedloraError, ProtocolError, errorMessage } from '../../shared/errors.js';
import { decode, encode } from '../../shared/codec/index.js';
import { logger } from '../../shared/log.js';

const log = logger('fedlora:cluster:bus');

export type BusHandler = (body: unknown, from: string) => Promise<unknown> | unknown;

interface Wire { k: 'q' | 'r' | 'e'; id: string; from: string; type?: string; body?: unknown; ok?: boolean; code?: string; message?: string }

export interface BusOptions {
  url: string;
  /** Key/channel namespace shared by the processes of one federation. */
  prefix?: string;
  nodeId?: string;
  /** Largest decoded message (a partial sum of the round layout fits). */
  maxBytes?: number;
}

export class Bus {
  readonly nodeId: string;
  readonly prefix: string;
  /** Commands (lease, keys). */
  readonly redis: Redis;
  readonly #sub: Redis;
  readonly #maxBytes: number;
  readonly #handlers = new Map<string, BusHandler>();
  readonly #pending = new Map<string, { resolve(v: unknown): void; reject(e: unknown): void; timer: NodeJS.Timeout }>();
  #closed = false;
  /** Bytes of messages received (for the benchmark's inbound-bytes figure). */
  inboundBytes = 0;

  constructor(o: BusOptions) {
    this.nodeId = o.nodeId ?? randomBytes(6).toString('hex');
    this.prefix = o.prefix ?? 'fedlora';
    this.#maxBytes = o.maxBytes ?? 256 << 20;
    const opts = { lazyConnect: true, maxRetriesPerRequest: 2, enableOfflineQueue: true } as const;
    this.redis = new Redis(o.url, opts);
    this.#sub = new Redis(o.url, opts);
    for (const r of [this.redis, this.#sub]) r.on('error', (e: unknown) => { if (!this.#closed) log.warn(`redis: ${errorMessage(e)}`); });
  }

  channel(node: string): string { return `${this.prefix}:node:${node}`; }

  async start(): Promise<void> {
    await Promise.all([this.redis.connect(), this.#sub.connect()]);
    this.#sub.on('messageBuffer', (_ch: Buffer, raw: Buffer) => this.#onMessage(raw));
    await this.#sub.subscribe(this.channel(this.nodeId));
  }

  onRequest(type: string, h: BusHandler): void { this.#handlers.set(type, h); }

  /** Sends a request to `node`; resolves with its reply body, rejects with a ProtocolError on refusal or timeout. */
  request(node: string, type: string, body: unknown, timeoutMs: number): Promise<unknown> {
    if (this.#closed) return Promise.reject(new ProtocolError('LINK_CLOSED', 'cluster bus is closed'));
    const id = randomBytes(8).toString('hex');
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.#pending.delete(id); reject(new ProtocolError('TIMEOUT', `${type} to ${node}: no reply within ${timeoutMs} ms`)); }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      this.#publish(node, { k: 'q', id, from: this.nodeId, type, body }).catch((e: unknown) => {
        clearTimeout(timer);
        this.#pending.delete(id);
        reject(new ProtocolError('LINK_CLOSED', `${type} to ${node}: ${errorMessage(e)}`));
      });
    });
  }

  /** One-way event (no reply). */
  async emit(node: string, type: string, body: unknown): Promise<void> {
    if (this.#closed) return;
    await this.#publish(node, { k: 'e', id: '', from: this.nodeId, type, body });
  }

  async #publish(node: string, w: Wire): Promise<void> {
    await this.redis.publish(this.channel(node), Buffer.from(encode(w)));
  }

  #onMessage(raw: Buffer): void {
    this.inboundBytes += raw.byteLength;
    let w: Wire;
    try {
      w = decode(new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength), this.#maxBytes) as Wire;
      if (!w || typeof w !== 'object' || typeof w.id !== 'string' || typeof w.from !== 'string') throw new ProtocolError('BAD_MESSAGE', 'malformed bus message');
    } catch (e) {
      log.warn(`dropped a bus message: ${errorMessage(e)}`);
      return;
    }
    if (w.k === 'r') {
      const p = this.#pending.get(w.id);
      if (!p) return;
      this.#pending.delete(w.id);
      clearTimeout(p.timer);
      if (w.ok) p.resolve(w.body);
      else p.reject(new ProtocolError(String(w.code ?? 'REMOTE_ERROR').slice(0, 64), String(w.message ?? '').slice(0, 500)));
      return;
    }
    const h = this.#handlers.get(String(w.type));
    if (w.k === 'e') {
      if (h) Promise.resolve().then(() => h(w.body, w.from)).catch((e: unknown) => log.warn(`${w.type} from ${w.from}: ${errorMessage(e)}`));
      return;
    }
    if (w.k !== 'q') return;
    Promise.resolve()
      .then(() => { if (!h) throw new ProtocolError('UNKNOWN_EVENT', `no bus handler for ${String(w.type).slice(0, 40)}`); return h(w.body, w.from); })
      .then(
        (body) => this.#publish(w.from, { k: 'r', id: w.id, from: this.nodeId, ok: true, body: body ?? null }),
        (e: unknown) => this.#publish(w.from, { k: 'r', id: w.id, from: this.nodeId, ok: false, code: e instanceof FedloraError ? e.code : 'INTERNAL', message: errorMessage(e).slice(0, 500) }),
      )
      .catch((e: unknown) => { if (!this.#closed) log.warn(`reply to ${w.from}: ${errorMessage(e)}`); });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const [id, p] of this.#pending) { clearTimeout(p.timer); p.reject(new ProtocolError('LINK_CLOSED', 'cluster bus closed')); this.#pending.delete(id); }
    await Promise.allSettled([this.#sub.quit(), this.redis.quit()]);
    this.#sub.disconnect();
    this.redis.disconnect();
  }
}
