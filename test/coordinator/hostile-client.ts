/**
 * Building blocks for tests in which one enrolled client attacks the coordinator over a real
 * socket: a hostile participant made of raw socket.io-client plus the protocol's own crypto and
 * codec helpers (it can run a real SecAggClient and tamper with any phase), a resource tracker
 * that closes everything in afterEach, a deadline-bounded poll, a seeded PRNG and a coordinator
 * running in a worker thread (for attacks that would freeze the test's own event loop).
 *
 * This module is also the worker's entry point: imported in a worker with COORDINATOR_WORKER data,
 * it starts a Coordinator there and answers the parent's messages.
 */
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { io, type Socket } from 'socket.io-client';
import { Coordinator, type CoordinatorOptions } from '../../coordinator/index.js';
import type { Client } from '../../client/index.js';
import { decode, encode } from '../../shared/codec/index.js';
import {
  PROTOCOL_VERSION, SIGNED_DOMAINS, layoutLength, openEnvelope, parseAuthChallengeReply, parseRoundStart, sealForCoordinator,
  type RoundStart, type SecAggKind,
} from '../../shared/protocol/index.js';
import {
  SecAggClient, encodeUpdate, generateIdentity, proveJoin, verifyCoordinatorBoxKey,
  type Identity, type KeysMsg, type ShareKeysMsg, type SharesMsg, type SurvivorListMsg, type UnmaskMsg, type UnmaskRequestMsg,
} from '../../shared/crypto/index.js';
import { setLogLevel } from '../../shared/log.js';
import { mulberry32FromState } from '../../shared/data/random.js';
import { ask, rawJoin, type Reply } from './helpers.js';

// ---------------------------------------------------------------------------------------------
// Waiting without sleeping-then-asserting

/** Polls `cond` every `everyMs` until it returns a truthy value; throws `what` (with the last value) after `ms`. */
export async function waitFor<T>(what: string, cond: () => T | Promise<T>, ms: number, everyMs = 20): Promise<NonNullable<T>> {
  const end = Date.now() + ms;
  let last: T | undefined;
  for (;;) {
    last = await cond();
    if (last) return last as NonNullable<T>;
    if (Date.now() >= end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Resolves with the promise's value, or rejects naming `what` after `ms`. */
export async function within<T>(what: string, p: Promise<T>, ms: number): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, rej) => { t = setTimeout(() => rej(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms); });
  try { return await Promise.race([p, timeout]); } finally { clearTimeout(t); }
}

/** GET <url>/status; resolves with the HTTP status and how long it took, or rejects after `ms`. */
export async function getStatus(url: string, ms = 5000): Promise<{ status: number; body: Record<string, unknown>; ms: number }> {
  const t0 = performance.now();
  const r = await fetch(`${url}/status`, { signal: AbortSignal.timeout(ms) });
  const body = await r.json() as Record<string, unknown>;
  return { status: r.status, body, ms: performance.now() - t0 };
}

// ---------------------------------------------------------------------------------------------
// Seeded randomness

/** mulberry32 (shared/data/random.ts) from the raw seed; the seed is printed so a failure reproduces with FEDLORA_TEST_SEED=<seed>. */
export function seededRandom(label: string): { seed: number; next: () => number; bytes: (n: number) => Uint8Array } {
  const env = Number(process.env.FEDLORA_TEST_SEED);
  const seed = Number.isInteger(env) && env > 0 ? env >>> 0 : (Date.now() ^ (Math.random() * 2 ** 32)) >>> 0;
  console.log(`      [${label}] seed ${seed}`);
  const next = mulberry32FromState(seed);
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => Math.floor(next() * 256));
  return { seed, next, bytes };
}

// ---------------------------------------------------------------------------------------------
// Everything a test opens, closed in afterEach whatever happened

export class Resources {
  readonly #coords: Coordinator[] = [];
  readonly #clients: Client[] = [];
  readonly #sockets: Socket[] = [];
  readonly #workers: CoordinatorWorker[] = [];
  readonly #cleanups: (() => void)[] = [];

  coordinator(c: Coordinator): Coordinator { this.#coords.push(c); return c; }
  client<T extends Client>(c: T): T { this.#clients.push(c); return c; }
  socket(s: Socket): Socket { this.#sockets.push(s); return s; }
  worker(w: CoordinatorWorker): CoordinatorWorker { this.#workers.push(w); return w; }
  /** Any other undo step (listeners, env vars). */
  defer(f: () => void): void { this.#cleanups.push(f); }

  /** Closes everything; never throws (afterEach must not hide the test's own failure). */
  async closeAll(): Promise<void> {
    for (const f of this.#cleanups.splice(0).reverse()) try { f(); } catch { /* best effort */ }
    for (const s of this.#sockets.splice(0)) try { s.close(); } catch { /* already gone */ }
    await Promise.all(this.#clients.splice(0).map((c) => c.stop().catch(() => undefined)));
    await Promise.all(this.#workers.splice(0).map((w) => w.close().catch(() => undefined)));
    await Promise.all(this.#coords.splice(0).map((c) => within('coordinator close', c.close(), 5000).catch(() => undefined)));
  }
}

/** A raw socket.io connection (no reconnection) speaking our protocol version, connected. */
export async function openSocket(url: string, r: Resources): Promise<Socket> {
  const s = r.socket(io(url, { auth: { protocolVersion: PROTOCOL_VERSION }, transports: ['websocket'], reconnection: false, forceNew: true }));
  await within('socket connect', new Promise<void>((res, rej) => { s.once('connect', () => res()); s.once('connect_error', rej); }), 5000);
  return s;
}

// ---------------------------------------------------------------------------------------------
// The hostile participant

export interface HostileOptions {
  clientId?: string;
  identity?: Identity;
  /** Declared in hello. */
  examples?: number;
  maxRank?: number;
  personal?: string[];
}

/** What a hostile SecAgg participant may tamper with; every hook defaults to honest behaviour. */
export interface SecAggHooks {
  /** Runs on the first round:start of an attempt, before advertising (the round stays open meanwhile). */
  onStart?(rs: RoundStart, h: Hostile): Promise<void> | void;
  share?(m: ShareKeysMsg, rs: RoundStart): ShareKeysMsg;
  /** The fixed-point input before masking (default: zeros encoded at the participant's public weight). */
  input?(q: Uint32Array, rs: RoundStart): Uint32Array;
  /** Sends the unmask message (default: `send(m)`). */
  unmask?(m: UnmaskMsg, rs: RoundStart, send: (msg: unknown) => Promise<Reply>): Promise<void>;
}

export interface SentRecord { roundId: string; kind: SecAggKind | 'update'; reply: Reply }

export class Hostile {
  readonly socket: Socket;
  readonly clientId: string;
  readonly identity: Identity;
  boxKey: Uint8Array = new Uint8Array(32);
  coordinatorKey: Uint8Array = new Uint8Array(32);
  modelId = '';
  hello: Reply = { ok: false };
  /** Every verified round:start received, in order (re-sends included). */
  readonly starts: RoundStart[] = [];
  readonly sent: SentRecord[] = [];
  #sa: { rs: RoundStart; sc: SecAggClient } | null = null;
  #hooks: SecAggHooks | null = null;
  /** Errors inside the hostile's own handlers: a test bug, not a coordinator one; tests assert it stays empty. */
  readonly errors: string[] = [];

  private constructor(socket: Socket, clientId: string, identity: Identity) {
    this.socket = socket;
    this.clientId = clientId;
    this.identity = identity;
    socket.on('round:start', (p: unknown, ack: (r: Uint8Array) => void) => {
      let rs: RoundStart;
      try { rs = parseRoundStart(openEnvelope(SIGNED_DOMAINS.roundStart, p, this.coordinatorKey, 1 << 30)); } catch (e) {
        this.errors.push(`round:start: ${String(e)}`);
        ack(encode({ ok: false, code: 'BAD_SIGNATURE', message: 'unverifiable' }));
        return;
      }
      this.starts.push(rs);
      ack(encode({ ok: true }));
      if (this.#hooks && rs.secure && this.#sa?.rs.roundId !== rs.roundId) void this.#secureStart(rs).catch((e: unknown) => this.errors.push(`secure start: ${String(e)}`));
    });
    for (const ev of ['secagg:keys', 'secagg:shares', 'secagg:survivors', 'secagg:unmask']) {
      socket.on(ev, (p: unknown) => void this.#notice(ev, p).catch((e: unknown) => this.errors.push(`${ev}: ${String(e)}`)));
    }
  }

  /** Connects, joins with a real challenge-response proof, and (unless `ready: false`) declares ready. */
  static async join(url: string, r: Resources, o: HostileOptions & { ready?: number | false } = {}): Promise<Hostile> {
    const s = await openSocket(url, r);
    const identity = o.identity ?? generateIdentity();
    const h = new Hostile(s, o.clientId ?? 'evil', identity);
    if (o.personal) {
      // rawJoin sends no globs; the same join with them
      const { hello, challenge, boxKey } = await rawJoinWithPersonal(s, identity, h.clientId, o.examples ?? 5, o.maxRank ?? 4, o.personal);
      Object.assign(h, { hello, boxKey, coordinatorKey: challenge.challenge.coordinator });
    } else {
      const { hello, challenge, boxKey } = await rawJoin(s, identity, h.clientId, o.examples ?? 5, o.maxRank ?? 4);
      Object.assign(h, { hello, boxKey, coordinatorKey: challenge.challenge.coordinator });
    }
    if (!h.hello.ok) throw new Error(`hostile join refused: ${JSON.stringify(h.hello)}`);
    h.modelId = h.hello.modelId as string;
    if (o.ready !== false) {
      const rr = await h.ready(o.ready ?? o.examples ?? 5);
      if (!rr.ok) throw new Error(`hostile ready refused: ${JSON.stringify(rr)}`);
    }
    return h;
  }

  ready(examples: number): Promise<Reply> {
    return ask(this.socket, 'ready', encode({ modelId: this.modelId, examples }));
  }

  /** Resolves with the first round:start at index ≥ `index` (in arrival order). */
  nextStart(index: number, ms = 15_000): Promise<RoundStart> {
    return waitFor(`round:start #${index + 1} at ${this.clientId}`, () => this.starts[index], ms);
  }

  layoutLength(rs: RoundStart): number { return layoutLength(rs.layout); }

  /** A plain (insecure-mode) update sealed to the coordinator. */
  sealUpdate(rs: RoundStart, body: { vector: Float32Array; weight: number; rank?: number }): Uint8Array {
    const u = { roundId: rs.roundId, rank: body.rank ?? rs.rank, weight: body.weight, vector: body.vector, metrics: { trainLoss: 1, steps: 1, trainMs: 1 } };
    return sealForCoordinator(encode(u), { roundId: rs.roundId, round: rs.round, sender: this.clientId, kind: 'update' }, this.boxKey);
  }

  async update(rs: RoundStart, body: { vector: Float32Array; weight: number; rank?: number }): Promise<Reply> {
    const reply = await ask(this.socket, 'round:update', this.sealUpdate(rs, body));
    this.sent.push({ roundId: rs.roundId, kind: 'update', reply });
    return reply;
  }

  /** Seals and sends one secagg message exactly as client/client.ts does. */
  async sendSecAgg(rs: RoundStart, kind: SecAggKind, msg: unknown): Promise<Reply> {
    const bytes = sealForCoordinator(encode(msg), { roundId: rs.roundId, round: rs.round, sender: this.clientId, kind: `secagg/${kind}` }, this.boxKey);
    const reply = await ask(this.socket, 'secagg:msg', bytes);
    this.sent.push({ roundId: rs.roundId, kind, reply });
    return reply;
  }

  /** Takes part in every secure round it is sampled for with a real SecAggClient, through the given hooks. */
  participate(hooks: SecAggHooks = {}): this {
    this.#hooks = hooks;
    const last = this.starts.at(-1);
    if (last?.secure && this.#sa?.rs.roundId !== last.roundId) void this.#secureStart(last).catch((e: unknown) => this.errors.push(`secure start: ${String(e)}`));
    return this;
  }

  async #secureStart(rs: RoundStart): Promise<void> {
    const sec = rs.secure!;
    const sc = new SecAggClient({
      params: {
        round: rs.round, modelHash: sec.modelHash, vectorLength: layoutLength(rs.layout), participants: rs.participants.map((p) => ({ id: p.id, key: p.key })),
        k: sec.k, t: sec.t, nonce: sec.nonce, coordinatorKey: this.coordinatorKey,
      },
      paramsSignature: sec.paramsSignature, coordinatorKey: this.coordinatorKey, identity: this.identity, id: this.clientId,
    });
    this.#sa = { rs, sc };
    await this.#hooks?.onStart?.(rs, this);
    await this.sendSecAgg(rs, 'advertise', sc.advertiseKeys());
  }

  async #notice(ev: string, payload: unknown): Promise<void> {
    const sa = this.#sa;
    const o = decode(payload, 64 << 20) as { roundId?: string; msg?: unknown };
    if (!sa || o.roundId !== sa.rs.roundId) return;
    const { rs, sc } = sa;
    const hooks = this.#hooks ?? {};
    if (ev === 'secagg:keys' && sc.phase === 'share') {
      const m = sc.shareKeys(o.msg as KeysMsg);
      await this.sendSecAgg(rs, 'share', hooks.share ? hooks.share(m, rs) : m);
    } else if (ev === 'secagg:shares' && sc.phase === 'mask') {
      const me = rs.participants.find((p) => p.id === this.clientId)!;
      let q = encodeUpdate(new Float32Array(layoutLength(rs.layout)), me.weight, sec(rs).quant);
      if (hooks.input) q = hooks.input(q, rs);
      const m = sc.maskedInput(o.msg as SharesMsg, q);
      await this.sendSecAgg(rs, 'masked', { ...m, metrics: { trainLoss: 1, steps: 1, trainMs: 1 } });
    } else if (ev === 'secagg:survivors' && sc.phase === 'consistency') {
      await this.sendSecAgg(rs, 'consistency', sc.consistencyCheck(o.msg as SurvivorListMsg));
    } else if (ev === 'secagg:unmask' && sc.phase === 'unmask') {
      const m = sc.unmask(o.msg as UnmaskRequestMsg);
      const send = (msg: unknown) => this.sendSecAgg(rs, 'unmask', msg);
      if (hooks.unmask) await hooks.unmask(m, rs, send); else await send(m);
    }
  }

  close(): void { this.socket.close(); }
}

function sec(rs: RoundStart): NonNullable<RoundStart['secure']> {
  if (!rs.secure) throw new Error(`round ${rs.roundId} is not secure`);
  return rs.secure;
}

async function rawJoinWithPersonal(s: Socket, identity: Identity, clientId: string, examples: number, maxRank: number, personal: string[]) {
  const challenge = parseAuthChallengeReply(await ask(s, 'auth:challenge', encode({})));
  const boxKey = verifyCoordinatorBoxKey(challenge.boxKey, challenge.challenge.coordinator);
  const proof = proveJoin(challenge.challenge, s.id!, identity);
  const hello = await ask(s, 'hello', encode({ protocolVersion: PROTOCOL_VERSION, clientId, capabilities: { maxRank, backend: 'cpu', examples }, personal, proof }));
  return { hello, challenge, boxKey };
}

/**
 * Stops the coordinator's replies from being read: pauses the TCP socket under the client's
 * websocket (socket.io-client → engine.io websocket transport → ws → net.Socket).
 */
export function stopReading(s: Socket): { resume: () => void } {
  const tcp = (s.io.engine as unknown as { transport?: { ws?: { _socket?: { pause(): void; resume(): void } } } }).transport?.ws?._socket;
  if (!tcp) throw new Error('cannot reach the TCP socket under this socket.io-client connection');
  tcp.pause();
  return { resume: () => tcp.resume() };
}

// ---------------------------------------------------------------------------------------------
// A coordinator in a worker thread: an attack that blocks the coordinator's event loop must not
// block the test's (which has to measure it and time out)

const WORKER_FLAG = 'fedloraCoordinatorWorker';
type ToWorker = { type: 'close' };
type FromWorker = { type: 'url'; url: string } | { type: 'done'; completedRounds: number } | { type: 'error'; message: string } | { type: 'closed' };

export class CoordinatorWorker {
  readonly worker: Worker;
  readonly url: Promise<string>;
  readonly done: Promise<{ completedRounds: number }>;
  #closed = false;

  constructor(options: CoordinatorOptions) {
    const here = import.meta.url;
    const api = pathToFileURL(createRequire(here).resolve('tsx/esm/api').replace(/\.cjs$/, '.mjs')).href;
    // the test process loads TypeScript through tsx; a worker has to register it itself before importing this file
    const boot = `const { register } = await import(${JSON.stringify(api)}); register(); await import(${JSON.stringify(here)});`;
    this.worker = new Worker(new URL(`data:text/javascript,${encodeURIComponent(boot)}`), { workerData: { [WORKER_FLAG]: true, options } });
    const failed = new Promise<never>((_, rej) => {
      this.worker.once('error', rej);
      this.worker.once('exit', (code) => rej(new Error(`coordinator worker exited (${code})`)));
    });
    failed.catch(() => undefined);
    const from = <T extends FromWorker['type']>(type: T) => new Promise<Extract<FromWorker, { type: T }>>((res, rej) => {
      this.worker.on('message', (m: FromWorker) => {
        if (m.type === type) res(m as Extract<FromWorker, { type: T }>);
        else if (m.type === 'error') rej(new Error(m.message));
      });
    });
    this.url = Promise.race([from('url').then((m) => m.url), failed]);
    this.done = Promise.race([from('done').then((m) => ({ completedRounds: m.completedRounds })), failed]);
    this.url.catch(() => undefined);
    this.done.catch(() => undefined);
  }

  /** Asks the coordinator to close; terminates the thread if it does not answer (a frozen event loop). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closed = new Promise<void>((res) => this.worker.on('message', (m: FromWorker) => { if (m.type === 'closed') res(); }));
    this.worker.postMessage({ type: 'close' } satisfies ToWorker);
    await within('coordinator worker close', closed, 2000).catch(() => undefined);
    await this.worker.terminate();
  }
}

if (!isMainThread && (workerData as Record<string, unknown> | null)?.[WORKER_FLAG]) {
  setLogLevel('error');
  const port = parentPort!;
  const coord = new Coordinator((workerData as { options: CoordinatorOptions }).options);
  port.on('message', (m: ToWorker) => {
    if (m.type === 'close') void coord.close().finally(() => port.postMessage({ type: 'closed' } satisfies FromWorker));
  });
  coord.done.then((d) => port.postMessage({ type: 'done', completedRounds: d.completedRounds } satisfies FromWorker),
    (e: unknown) => port.postMessage({ type: 'error', message: String(e) } satisfies FromWorker));
  coord.serve(0).then((url) => port.postMessage({ type: 'url', url } satisfies FromWorker),
    (e: unknown) => port.postMessage({ type: 'error', message: String(e) } satisfies FromWorker));
}
