/**
 * An edge process (`fedlora coordinator --cluster redis://… --role edge`): holds client sockets
 * and relays them to the leader over the cluster bus, except the one message that is large and
 * additive: SecAgg+ masked inputs. Those are opened, validated (sender bound to the socket, vector
 * id and length, resend digest, attempt id — the leader confirms the attempt, phase and length) and
 * added into a running sum per attempt (HeldMasked); at the end of the masked phase the leader asks
 * for one partial sum (mod 2^32) over the ids it assigns to this edge. The protocol the client sees is unchanged.
 */
import { createServer, type Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Server, type Socket } from 'socket.io';
import { ConfigError, ProtocolError, errorMessage } from '../../shared/errors.js';
import { logger } from '../../shared/log.js';
import { decode, encode } from '../../shared/codec/index.js';
import { EV, openFromClient, parseSealedEnvelope } from '../../shared/protocol/index.js';
import { socketIoLink, type Link } from '../../shared/link/index.js';
import { Bus } from './bus.js';
import { protocolVersionGate } from '../http/version-gate.js';

const log = logger('fedlora:cluster:edge');
const RELAYED = [EV.authChallenge, EV.hello, EV.modelChunk, EV.ready, EV.update, EV.secagg] as const;
/** Attempts whose masked inputs are kept (the open one and the one before it). */
const KEEP_ATTEMPTS = 2;

/**
 * One attempt's masked inputs at an edge. An input the leader confirmed (attempt, phase, membership,
 * length) is added into a running sum mod 2^32 and only its id and digest are kept, so an edge holds
 * one vector per attempt instead of one per client; an input whose confirmation is in flight is held
 * whole (`hold`), taken back out if the leader refuses it (`drop`), summed when confirmed (`confirm`),
 * and added to the partial if the leader asks for it before this edge saw the confirmation.
 */
export class HeldMasked {
  #sum: Uint32Array | null = null;
  readonly #summed = new Map<string, string>();
  readonly #pending = new Map<string, { digest: string; vector: Uint32Array }>();

  /** The digest held for `id` (summed or pending), if any. */
  digestOf(id: string): string | undefined { return this.#summed.get(id) ?? this.#pending.get(id)?.digest; }
  ids(): string[] { return [...this.#summed.keys(), ...this.#pending.keys()].sort(); }
  get size(): number { return this.#summed.size + this.#pending.size; }
  /** Full-length vectors in memory: the running sum and the inputs awaiting confirmation. */
  get vectors(): number { return (this.#sum ? 1 : 0) + this.#pending.size; }

  hold(id: string, digest: string, vector: Uint32Array): object {
    if (this.digestOf(id) !== undefined) throw new ProtocolError('SECAGG_MESSAGE', `duplicate masked input from ${id.slice(0, 64)}`);
    const token = { digest, vector };
    this.#pending.set(id, token);
    return token;
  }
  drop(id: string, token: object): void { if (this.#pending.get(id) === token) this.#pending.delete(id); }
  confirm(id: string, token: object): void {
    const p = this.#pending.get(id);
    if (p !== token || !p) return;
    if (this.#sum && this.#sum.length !== p.vector.length) throw new ProtocolError('SECAGG_MESSAGE', 'masked inputs of different lengths');
    this.#pending.delete(id);
    addInto(this.#sum ??= new Uint32Array(p.vector.length), p.vector);
    this.#summed.set(id, p.digest);
  }

  /** The sum over exactly `ids` (every summed input must be among them: a sum cannot give one back). */
  partial(ids: readonly string[]): Uint32Array {
    const want = new Set(ids);
    if (!want.size) throw new ProtocolError('BAD_MESSAGE', 'partial request names no input');
    for (const id of this.#summed.keys()) if (!want.has(id)) throw new ProtocolError('SECAGG_MESSAGE', `partial request leaves out ${id.slice(0, 64)}, whose masked input is already in this edge's sum`);
    let sum = this.#sum ? this.#sum.slice() : null;
    for (const id of want) {
      if (this.#summed.has(id)) continue;
      const v = this.#pending.get(id)?.vector;
      if (!v) throw new ProtocolError('SECAGG_MESSAGE', `no masked input held for ${id.slice(0, 64)}`);
      if (!sum) sum = new Uint32Array(v.length);
      else if (v.length !== sum.length) throw new ProtocolError('SECAGG_MESSAGE', 'masked inputs of different lengths');
      addInto(sum, v);
    }
    return sum!;
  }
}

function addInto(acc: Uint32Array, v: Uint32Array): void {
  for (let i = 0; i < acc.length; i++) acc[i] = (acc[i]! + v[i]!) >>> 0;
}

export interface EdgeOptions {
  cluster: string;
  prefix?: string;
  host?: string;
  tls?: { cert: string | Uint8Array; key: string | Uint8Array };
  /** How long a relayed client request may wait for the leader. */
  relayTimeoutMs?: number;
  /** How long serve() waits for a leader to exist. */
  leaderWaitMs?: number;
  /**
   * Lifetime of the edge's presence key in Redis, refreshed every third of it (default 10 s). The
   * leader counts an edge whose key expired as crashed and drops its clients; an edge stalled that
   * long finds its key gone at the next refresh and closes its client connections, so its clients
   * reconnect and join again instead of waiting on links the leader no longer has.
   */
  presenceMs?: number;
}

interface EdgeConn { socket: Socket; link: Link; clientId?: string }

export class ClusterEdge {
  readonly o: Required<Omit<EdgeOptions, 'tls'>> & Pick<EdgeOptions, 'tls'>;
  readonly bus: Bus;
  #leader = '';
  #boxSecretKey?: Uint8Array;
  #maxBytes = 1 << 20;
  #http?: HttpServer;
  #io?: Server;
  readonly #conns = new Map<string, EdgeConn>();
  /** roundId → the masked inputs this edge holds for that attempt (see HeldAttempt). */
  readonly #masked = new Map<string, HeldMasked>();
  #closed = false;
  #watch?: NodeJS.Timeout;
  readonly #blobs = new Map<string, Promise<Uint8Array>>();
  #beat?: NodeJS.Timeout;
  #switching = false;

  constructor(o: EdgeOptions) {
    if (!/^rediss?:\/\//.test(o.cluster)) throw new ConfigError(`--cluster must be a redis:// URL, got ${o.cluster}`);
    this.o = { prefix: 'fedlora', host: '127.0.0.1', relayTimeoutMs: 60_000, leaderWaitMs: 30_000, presenceMs: 10_000, ...o };
    if (!Number.isInteger(this.o.presenceMs) || this.o.presenceMs < 300) throw new ConfigError(`presenceMs must be a whole number of milliseconds ≥ 300, got ${this.o.presenceMs}`);
    this.bus = new Bus({ url: o.cluster, prefix: this.o.prefix });
  }

  get nodeId(): string { return this.bus.nodeId; }

  /** Masked inputs held over all kept attempts (tests, metrics). */
  heldCount(): number { let n = 0; for (const a of this.#masked.values()) n += a.size; return n; }
  /** Masked inputs held for an attempt, summed or awaiting the leader's confirmation (tests, metrics). */
  heldInputs(roundId: string): string[] { return this.#masked.get(roundId)?.ids() ?? []; }
  /** Full-length vectors in memory: one running sum per attempt plus the inputs awaiting confirmation (tests, metrics). */
  heldVectors(): number { let n = 0; for (const a of this.#masked.values()) n += a.vectors; return n; }

  async serve(port = 0): Promise<string> {
    const bus = this.bus;
    await bus.start();
    bus.onRequest('c:send', (b) => this.#send(b));
    bus.onRequest('c:kick', (b) => { this.#conns.get(String((b as { sock?: unknown })?.sock))?.link.close(); return {}; });
    bus.onRequest('partial', (b) => this.#partial(b));
    await this.#findLeader();
    // presence, set before any client can connect: the leader asks only live edges for partial sums
    // and drops the links of an edge whose key expired (a crash)
    const key = `${this.o.prefix}:edge:${this.nodeId}`;
    const ttl = this.o.presenceMs;
    await this.bus.redis.set(key, '1', 'PX', ttl);
    const beat = async () => {
      try {
        // XX: refresh only a key that still exists; null means it expired while this edge stalled
        if ((await this.bus.redis.set(key, '1', 'PX', ttl, 'XX')) !== null || this.#closed) return;
        await this.bus.redis.set(key, '1', 'PX', ttl);
        const n = this.#conns.size;
        log.warn(`presence key expired (this edge stalled for more than ${ttl} ms): the leader dropped its ${n} client link(s); closing them so the clients join again`);
        this.#closeClientTransports();
      } catch (e) {
        log.debug(`presence refresh failed: ${errorMessage(e)}`);
      }
    };
    this.#beat = setInterval(() => void beat(), Math.max(100, Math.floor(ttl / 3)));
    const tls = this.o.tls;
    const pem = async (v: string | Uint8Array): Promise<string | Buffer> => (typeof v !== 'string' ? Buffer.from(v) : v.includes('-----BEGIN') ? v : readFile(v));
    const handler = (_req: unknown, res: { writeHead(c: number): void; end(s?: string): void }) => { res.writeHead(404); res.end(); };
    const http: HttpServer = tls ? createHttpsServer({ cert: await pem(tls.cert), key: await pem(tls.key) }, handler as never) : createServer(handler as never);
    this.#http = http;
    const io = this.#io = new Server(http, { maxHttpBufferSize: this.#maxBytes + 4096, pingTimeout: 60_000, pingInterval: 10_000, serveClient: false, cors: { origin: false } });
    io.use(protocolVersionGate);
    io.on('connection', (s) => this.#onConnection(s));
    await new Promise<void>((res, rej) => { http.once('error', rej); http.listen(port, this.o.host, () => { http.off('error', rej); res(); }); });
    const addr = http.address() as AddressInfo;
    const url = `${tls ? 'https' : 'http'}://${this.o.host.includes(':') ? `[${this.o.host}]` : this.o.host}:${addr.port}`;
    log.info(`edge ${this.nodeId} serving on ${url}, leader ${this.#leader}`);
    this.#watch = setInterval(() => void this.#checkLeader(), 250);

    return url;
  }

  /** Closes every client's transport, as a network failure would: the clients reconnect and join again. */
  #closeClientTransports(): void {
    for (const c of [...this.#conns.values()]) (c.socket as unknown as { conn?: { close(): void } }).conn?.close();
  }

  async #findLeader(): Promise<void> {
    const until = Date.now() + this.o.leaderWaitMs;
    for (;;) {
      const leader = await this.bus.redis.get(`${this.o.prefix}:leader`);
      if (leader) {
        try {
          const r = await this.bus.request(leader, 'edge:hello', {}, 5000) as { boxSecretKey?: unknown; maxMessageBytes?: unknown };
          if (!(r?.boxSecretKey instanceof Uint8Array) || r.boxSecretKey.length !== 32 || typeof r.maxMessageBytes !== 'number') throw new ProtocolError('BAD_MESSAGE', 'malformed edge:hello reply');
          this.#leader = leader;
          this.#boxSecretKey = r.boxSecretKey;
          this.#maxBytes = r.maxMessageBytes;
          return;
        } catch (e) {
          log.debug(`leader ${leader} did not answer yet: ${errorMessage(e)}`);
        }
      }
      if (Date.now() > until || this.#closed) throw new ConfigError(`no cluster leader answered within ${this.o.leaderWaitMs} ms`);
      await new Promise((res) => setTimeout(res, 100));
    }
  }

  /**
   * Failover: when another process holds the leader lease, fetch its box key and drop every client
   * transport (as a network failure would): the clients reconnect, join the new leader and get the
   * interrupted round again from its last checkpoint.
   */
  async #checkLeader(): Promise<void> {
    if (this.#switching || this.#closed) return;
    this.#switching = true;
    try {
      const leader = await this.bus.redis.get(`${this.o.prefix}:leader`);
      if (!leader || leader === this.#leader) return;
      log.warn(`leader changed ${this.#leader} → ${leader}: clients reconnect`);
      await this.#findLeader();
      this.#masked.clear();
      this.#closeClientTransports();
    } catch (e) {
      log.warn(`leader check: ${errorMessage(e)}`);
    } finally {
      this.#switching = false;
    }
  }

  #onConnection(socket: Socket): void {
    const link = socketIoLink(socket as never, { maxBytes: this.#maxBytes });
    const conn: EdgeConn = { socket, link };
    const sock = socket.id;
    this.#conns.set(sock, conn);
    // bus messages from one publisher arrive in order: the leader sees the open before any request
    void this.bus.emit(this.#leader, 'c:open', { sock }).catch(() => undefined);
    for (const event of RELAYED) {
      link.onRequest(event, async (msg) => {
        if (event === EV.secagg && (msg as { kind?: unknown } | null)?.kind === 'masked') return this.#masked1(conn, msg);
        const r = await this.bus.request(this.#leader, 'c:req', { sock, event, bytes: encode(msg) }, this.o.relayTimeoutMs) as { raw?: unknown };
        if (!r || !(r.raw instanceof Uint8Array)) throw new ProtocolError('BAD_MESSAGE', `${event}: malformed reply from the leader`);
        // bound once the leader admitted it: masked inputs on this socket are opened for this id only
        if (event === EV.hello && typeof (msg as { clientId?: unknown }).clientId === 'string' && isOk(r.raw)) conn.clientId = (msg as { clientId: string }).clientId;
        return r.raw;
      });
    }
    link.onClose((reason) => {
      this.#conns.delete(sock);
      if (!this.#closed) void this.bus.emit(this.#leader, 'c:close', { sock, reason }).catch(() => undefined);
    });
  }

  /** A masked input: validated here, confirmed by the leader (attempt, phase, membership, duplicates), then kept. */
  async #masked1(conn: EdgeConn, msg: unknown): Promise<Record<string, unknown>> {
    const id = conn.clientId;
    if (!id) throw new ProtocolError('NO_HELLO', 'send hello first');
    const env = parseSealedEnvelope(msg, true);
    const round = Number(env.roundId.split(':')[1]);
    if (!Number.isSafeInteger(round) || round < 1) throw new ProtocolError('STALE_ROUND', `malformed round id ${env.roundId.slice(0, 64)}`);
    const digest = createHash('sha256').update(env.sealed.box).digest('hex');
    const inner = openFromClient(env, { round, sender: id, kind: 'secagg/masked' }, this.#boxSecretKey!, this.#maxBytes);
    if (!inner || typeof inner !== 'object') throw new ProtocolError('BAD_MESSAGE', 'secagg masked: expected an object');
    const m = inner as Record<string, unknown>;
    if (m.id !== id) throw new ProtocolError('SECAGG_MESSAGE', `masked input names ${String(m.id).slice(0, 64)}, sender is ${id}`);
    if (!(m.masked instanceof Uint32Array)) throw new ProtocolError('SECAGG_MESSAGE', 'masked input must be a Uint32Array');
    const prior = this.#masked.get(env.roundId);
    const held = prior?.digestOf(id);
    if (held !== undefined && held !== digest) throw new ProtocolError('SECAGG_MESSAGE', `duplicate masked input from ${id}`);
    // kept before the leader hears of it: the leader may close the phase and ask for the partial sum
    // as soon as this (last) reference arrives; a refused reference takes the vector back out
    let att = prior;
    if (!att) {
      this.#masked.set(env.roundId, att = new HeldMasked());
      while (this.#masked.size > KEEP_ATTEMPTS) this.#masked.delete(this.#masked.keys().next().value!);
    }
    const token = held === undefined ? att.hold(id, digest, m.masked) : null;
    let reply: unknown;
    try {
      reply = await this.bus.request(this.#leader, 'c:masked', {
        sock: conn.socket.id, roundId: env.roundId, digest, size: env.sealed.box.byteLength, length: m.masked.length,
        ref: { id: m.id, ...(m.rejected !== undefined ? { rejected: m.rejected } : {}), ...(m.metrics !== undefined ? { metrics: m.metrics } : {}) },
      }, this.o.relayTimeoutMs);
    } catch (e) {
      if (token) att.drop(id, token);
      throw e;
    }
    // confirmed by the leader: into the running sum, the vector itself is let go — unless another live
    // edge already summed the same input (the client reconnected here and re-sent it): then it stays there
    if (token) {
      if ((reply as { heldAt?: unknown } | null)?.heldAt !== undefined) att.drop(id, token);
      else att.confirm(id, token);
    }
    return {};
  }

  #partial(b: unknown): { sum: Uint32Array } {
    const o = b as { roundId?: unknown; ids?: unknown };
    if (!o || typeof o.roundId !== 'string' || !Array.isArray(o.ids)) throw new ProtocolError('BAD_MESSAGE', 'malformed partial request');
    const att = this.#masked.get(o.roundId);
    if (!att) throw new ProtocolError('STALE_ROUND', `no masked inputs held for ${o.roundId.slice(0, 64)}`);
    const sum = att.partial(o.ids.map(String));
    this.#masked.delete(o.roundId); // one partial per attempt: nothing of it is needed any more
    return { sum };
  }

  async #send(b: unknown): Promise<Record<string, unknown>> {
    const o = b as { sock?: unknown; event?: unknown; bytes?: unknown; blob?: unknown; timeoutMs?: unknown; notify?: unknown };
    if (o && typeof o.blob === 'string') o.bytes = await this.#blob(o.blob);
    if (!o || typeof o.sock !== 'string' || typeof o.event !== 'string' || !(o.bytes instanceof Uint8Array) || typeof o.timeoutMs !== 'number') throw new ProtocolError('BAD_MESSAGE', 'malformed c:send');
    const c = this.#conns.get(o.sock);
    if (!c || !c.link.open) throw new ProtocolError('LINK_CLOSED', `${o.event}: the client is not connected here`);
    if (o.notify === true) return { ok: await c.link.notify(o.event, o.bytes, o.timeoutMs) };
    let raw: unknown;
    try {
      raw = await c.socket.timeout(o.timeoutMs).emitWithAck(o.event, o.bytes);
    } catch (e) {
      throw new ProtocolError('TIMEOUT', `${o.event}: no reply within ${o.timeoutMs} ms (${errorMessage(e)})`);
    }
    const bytes = raw instanceof Uint8Array ? raw : raw instanceof ArrayBuffer ? new Uint8Array(raw) : null;
    if (!bytes || bytes.byteLength > this.#maxBytes) throw new ProtocolError('BAD_MESSAGE', `${o.event}: the client's reply is not bytes within bounds`);
    return { raw: new Uint8Array(bytes) };
  }

  /** A payload the leader stored once by hash (see BlobStore): fetched once per edge, checked, cached. */
  async #blob(hash: string): Promise<Uint8Array> {
    if (!/^[0-9a-f]{64}$/.test(hash)) throw new ProtocolError('BAD_MESSAGE', 'malformed blob reference');
    let p = this.#blobs.get(hash);
    if (!p) {
      p = this.bus.redis.getBuffer(`${this.o.prefix}:blob:${hash}`).then((buf) => {
        if (!buf || buf.byteLength > this.#maxBytes + (1 << 20)) throw new ProtocolError('BAD_MESSAGE', `blob ${hash.slice(0, 12)}… missing or too large`);
        const bytes = new Uint8Array(buf);
        if (createHash('sha256').update(bytes).digest('hex') !== hash) throw new ProtocolError('BAD_MESSAGE', `blob ${hash.slice(0, 12)}… does not match its hash`);
        return bytes;
      });
      this.#blobs.set(hash, p);
      p.catch(() => this.#blobs.delete(hash));
      while (this.#blobs.size > 16) this.#blobs.delete(this.#blobs.keys().next().value!);
    }
    return p;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#watch);
    clearInterval(this.#beat);
    await this.bus.redis.del(`${this.o.prefix}:edge:${this.nodeId}`).catch(() => undefined);
    const io = this.#io;
    if (io) await new Promise<void>((res) => { void io.close(() => res()); });
    else if (this.#http) await new Promise<void>((res) => this.#http!.close(() => res()));
    await this.bus.close();
  }
}

function isOk(raw: Uint8Array): boolean {
  try { return (decode(raw) as { ok?: unknown } | null)?.ok === true; } catch { return false; }
}
