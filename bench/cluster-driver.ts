/**
 * Child process of bench/cluster.ts: many synthetic clients in one process. Each speaks the real
 * protocol over its own socket.io connection (TCP loopback): auth:challenge → pinned coordinator key
 * and certified box key → join proof bound to the connection → hello → ready. It does not fetch the
 * base model (it never trains; model distribution is bench:traffic's subject) and says ready for the
 * modelId the hello reply names. Each round is the client's own ParticipantRound (client/participant):
 * SecAgg+ advertise, key shares, masked input, consistency, unmask, sealed to the coordinator; the
 * "training" returns a seeded random update of the layout's size.
 *
 * Bounded: clients connect in batches; an update is made only once the client's key shares are in
 * (so it is not held while the round waits for others), at most `concurrency` per process between
 * making the update and having its masked input built; the round drops the contribution and the
 * sealed bytes once the coordinator took them.
 *
 * argv[2]: JSON { urls: string[], first: number, count: number, seed: number, coordinatorKey: string, concurrency: number }
 * stdout: JSON lines { joined }, { done, rounds, failed, failures, hwmKiB (peak RSS) }, { error }.
 */
import { readFileSync } from 'node:fs';
import { io, type Socket } from 'socket.io-client';
import { decode } from '../shared/codec/index.js';
import { errorMessage } from '../shared/errors.js';
import { setLogLevel } from '../shared/log.js';
import { mulberry32 } from '../shared/data/random.js';
import {
  EV, PROTOCOL_VERSION, SIGNED_DOMAINS, errorReply, okReply, openEnvelope, parseAuthChallengeReply, parseHelloReply, parseRoundEnd,
  parseRoundStart, parseSessionDone, request, requestEncoded, sealForCoordinator, type RoundStart,
} from '../shared/protocol/index.js';
import { bytesEqual, generateIdentity, parsePublicKey, proveJoin, verifyCoordinatorBoxKey, type Identity } from '../shared/crypto/index.js';
import { getStrategy, type Strategy } from '../shared/aggregation/index.js';
import { ParticipantRound, type LocalResult, type ParticipantHost, type SecAggNotice } from '../client/participant/index.js';
import { personalRule } from '../client/upload/index.js';
import type { TensorMap } from '../shared/tensor.js';

interface Args { urls: string[]; first: number; count: number; seed: number; coordinatorKey: string; concurrency: number }

const TIMEOUT = 600_000;
const CONNECT_BATCH = 50;

/** A counting semaphore: at most `n` holders. */
class Gate {
  #free: number;
  #waiting: (() => void)[] = [];
  constructor(n: number) { this.#free = n; }
  async acquire(): Promise<() => void> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((res) => this.#waiting.push(res));
    // one heavy step per turn of the event loop: socket reads (pings, acks) in between are not starved
    await new Promise<void>((res) => setImmediate(res));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#waiting.shift();
      if (next) next(); else this.#free++;
    };
  }
}

class SyntheticClient {
  readonly id: string;
  readonly #identity: Identity = generateIdentity();
  readonly #socket: Socket;
  readonly #coordinatorKey: Uint8Array;
  readonly #gate: Gate;
  readonly #seed: number;
  #boxKey?: Uint8Array;
  #strategy?: Strategy;
  #round: ParticipantRound | null = null;
  /** Resolves once this client's key shares for the current round arrived. */
  #sharesIn: { roundId: string; promise: Promise<void>; resolve: () => void } | null = null;
  #release: (() => void) | null = null;
  #local: TensorMap | null = null;
  readonly joined: Promise<void>;
  readonly finished: Promise<{ rounds: number }>;
  rounds = 0;
  disconnects = 0;

  readonly #parse: Gate;
  #everJoined = false;

  constructor(index: number, url: string, a: Args, gate: Gate, parse: Gate) {
    this.id = `bench-${String(index).padStart(5, '0')}`;
    this.#coordinatorKey = parsePublicKey(a.coordinatorKey);
    this.#gate = gate;
    this.#parse = parse;
    this.#seed = (a.seed * 100_003 + index) >>> 0;
    // reconnects and joins again like the real client (a coordinator that blocked past the ping timeout drops sockets)
    this.#socket = io(url, { auth: { protocolVersion: PROTOCOL_VERSION }, transports: ['websocket'], reconnection: true, reconnectionDelay: 500, reconnectionDelayMax: 5000, timeout: 60_000 });
    const on = this.#socket.on.bind(this.#socket) as (ev: string, fn: (...x: unknown[]) => void) => void;
    on(EV.roundStart, (p, ack) => void this.#onRoundStart(p, ack as (b: Uint8Array) => void));
    on(EV.roundEnd, (p, ack) => this.#guard(ack, () => {
      const e = parseRoundEnd(this.#open(SIGNED_DOMAINS.roundEnd, p));
      if (this.#round?.roundId === e.roundId) { this.#round.end(e); if (e.status === 'completed') this.rounds++; }
      this.#release?.(); this.#release = null; this.#local = null;
    }));
    for (const ev of [EV.secaggKeys, EV.secaggShares, EV.secaggSurvivors, EV.secaggUnmask] as SecAggNotice[]) {
      on(ev, (p, ack) => this.#guard(ack, () => {
        const o = decode(p, 64 << 20) as { roundId?: unknown; msg?: unknown };
        const round = this.#round;
        if (!round || round.roundId !== o?.roundId) throw new Error(`${ev} for a round this client is not in`);
        round.notice(ev, o.msg);
        if (ev === EV.secaggShares && this.#sharesIn?.roundId === round.roundId) this.#sharesIn.resolve();
      }));
    }
    this.finished = new Promise((res) => {
      on(EV.sessionDone, (p, ack) => this.#guard(ack, () => {
        parseSessionDone(this.#open(SIGNED_DOMAINS.sessionDone, p));
        setImmediate(() => { this.#socket.disconnect(); res({ rounds: this.rounds }); });
      }));
    });
    this.#socket.on('disconnect', (reason) => { if (reason !== 'io client disconnect') { this.disconnects++; process.stderr.write(`${this.id}: disconnected (${reason}); reconnecting\n`); } });
    this.joined = new Promise<void>((res, rej) => {
      this.#socket.on('connect', () => void this.#join().then(() => { this.#everJoined = true; res(); }, (e: unknown) => {
        process.stderr.write(`${this.id}: join failed: ${errorMessage(e)}\n`);
        if (!this.#everJoined) rej(e); else this.#socket.disconnect().connect();
      }));
      this.#socket.once('connect_error', (e) => { if (!this.#everJoined) rej(new Error(`${this.id}: cannot connect to ${url}: ${e.message}`)); });
    });
  }

  #open(domain: string, payload: unknown, max = 1 << 16): unknown { return openEnvelope(domain, payload, this.#coordinatorKey, max); }

  #guard(ack: unknown, f: () => void): void {
    const reply = (b: Uint8Array) => { if (typeof ack === 'function') (ack as (x: Uint8Array) => void)(b); };
    try { f(); reply(okReply()); } catch (e) { reply(errorReply(e)); }
  }

  async #join(): Promise<void> {
    const s = this.#socket;
    const ch = parseAuthChallengeReply(await request(s, EV.authChallenge, {}, TIMEOUT));
    if (!bytesEqual(ch.challenge.coordinator, this.#coordinatorKey)) throw new Error(`${this.id}: the coordinator presents another key than the pinned one`);
    this.#boxKey = verifyCoordinatorBoxKey(ch.boxKey, this.#coordinatorKey);
    const proof = proveJoin(ch.challenge, s.id ?? '', this.#identity);
    const hello = parseHelloReply(await request(s, EV.hello, {
      protocolVersion: PROTOCOL_VERSION, clientId: this.id, capabilities: { maxRank: 8, backend: 'cpu', examples: 1, gpu: false }, personal: [], proof,
    }, TIMEOUT));
    this.#strategy = getStrategy(hello.strategy);
    await request(s, EV.ready, { modelId: hello.modelId, examples: 1 }, TIMEOUT);
  }

  async #onRoundStart(payload: unknown, ack: (b: Uint8Array) => void): Promise<void> {
    // verifying and decoding a 4.7 MB round:start is the heavy part of receiving it: one at a time per process
    const done = await this.#parse.acquire();
    try {
      const rs = parseRoundStart(this.#open(SIGNED_DOMAINS.roundStart, payload, 1 << 30));
      const me = rs.participants.find((p) => p.id === this.id);
      if (!me || !bytesEqual(me.key, this.#identity.publicKey)) throw new Error('round start does not list this client with its key');
      if (this.#round?.roundId === rs.roundId) { ack(okReply()); this.#round.redeliver(payload instanceof Uint8Array ? payload.byteLength : 0); return; }
      this.#round?.abort(`round ${rs.roundId} started`);
      let resolve!: () => void;
      const promise = new Promise<void>((r) => { resolve = r; });
      this.#sharesIn = { roundId: rs.roundId, promise, resolve };
      // the global adapter is not needed by a client that does not train: the round keeps only what it uses
      const strategy = this.#strategy!;
      this.#round = new ParticipantRound({
        rs: { ...rs, global: [] }, weight: me.weight, host: this.#host(), strategy, isPersonal: personalRule(strategy, () => false),
        keys: { identity: this.#identity, coordinatorKey: this.#coordinatorKey },
        observe: { upload: () => { this.#local?.clear(); this.#local = null; this.#release?.(); this.#release = null; } },
      });
      void this.#round.start();
      ack(okReply());
    } catch (e) {
      ack(errorReply(e));
    } finally {
      done();
    }
  }

  #host(): ParticipantHost {
    const s = this.#socket;
    return {
      clientId: this.id,
      exclusive: (fn) => fn(),
      train: async (rs: RoundStart): Promise<LocalResult> => {
        await this.#sharesIn?.promise;
        this.#release = await this.#gate.acquire();
        const rand = mulberry32(this.#seed ^ rs.round);
        const tensors: TensorMap = new Map();
        for (const e of rs.layout) {
          const n = e.shape.reduce((x, y) => x * y, 1);
          const data = new Float32Array(n);
          for (let i = 0; i < n; i++) data[i] = (rand() - 0.5) * 0.02;
          tensors.set(e.name, { shape: [...e.shape], data });
        }
        this.#local = tensors;
        return { tensors, examples: 1, metrics: { trainLoss: 0, steps: 1, trainMs: 0 }, trainLoss: 0, steps: 1 };
      },
      seal: (payload, ctx) => sealForCoordinator(payload, { ...ctx, sender: this.id }, this.#boxKey!),
      online: async () => s.connected,
      send: async (event, bytes) => {
        try { await requestEncoded(s, event, bytes, TIMEOUT); return true; } catch (e) {
          process.stderr.write(`${this.id}: ${event} refused: ${errorMessage(e)}\n`);
          return false;
        }
      },
    };
  }
}

async function main(): Promise<void> {
  setLogLevel('error');
  const a = JSON.parse(process.argv[2] ?? '{}') as Args;
  const gate = new Gate(a.concurrency), parse = new Gate(1);
  const clients: SyntheticClient[] = [];
  for (let b = 0; b < a.count; b += CONNECT_BATCH) {
    const batch: SyntheticClient[] = [];
    for (let i = b; i < Math.min(a.count, b + CONNECT_BATCH); i++) {
      const index = a.first + i;
      batch.push(new SyntheticClient(index, a.urls[index % a.urls.length]!, a, gate, parse));
    }
    await Promise.all(batch.map((c) => c.joined));
    clients.push(...batch);
  }
  process.stdout.write(`${JSON.stringify({ joined: clients.length })}\n`);
  const res = await Promise.allSettled(clients.map((c) => c.finished));
  const failed = res.filter((r) => r.status === 'rejected').map((r) => errorMessage((r as PromiseRejectedResult).reason));
  // peak RSS of this process (the parent cannot read it once we exited)
  const hwmKiB = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? NaN);
  process.stdout.write(`${JSON.stringify({ done: clients.length - failed.length, rounds: Math.min(...clients.map((c) => c.rounds)), failed: failed.slice(0, 5), failures: failed.length, disconnects: clients.reduce((n, c) => n + c.disconnects, 0), hwmKiB })}\n`);
}

main().catch((e: unknown) => { process.stdout.write(`${JSON.stringify({ error: errorMessage(e) })}\n`); process.exit(1); });
