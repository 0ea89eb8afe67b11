/**
 * An in-process host for the round engine: a clock the test advances, simulated participants that
 * answer the engine's commands the way client/participant does (verify the signed round:start,
 * run a SecAggClient, seal every message to the coordinator's box key), and no sockets or timers.
 * Commands are queued and carried out after the engine call that emitted them returns, as the
 * socket.io host does, so participants never re-enter the engine from inside it.
 */
import { rng } from '../aggregation/helpers.js';
import { createHash } from 'node:crypto';
import { RoundEngine, type Command, type EngineConfig, type EngineInit } from '../../coordinator/engine/round-engine.js';
import type { RoundRecord } from '../../coordinator/metrics.js';
import { decode, encode } from '../../shared/codec/index.js';
import {
  EV, SIGNED_DOMAINS, layoutLength, openEnvelope, parseRoundEnd, parseRoundStart, parseSessionDone, sealForCoordinator,
  type RoundEnd, type RoundStart, type SealedKind, type Update, type UpdateMetrics,
} from '../../shared/protocol/index.js';
import {
  SecAggClient, encodeUpdate, identityFromSeed, makeCoordinatorBoxKey,
  type Identity, type QuantParams, type ShareKeysMsg, type SharesMsg, type UnmaskMsg,
} from '../../shared/crypto/index.js';
import {
  aggregateRound, elementSlots, flatten, getStrategy, makeLayout, slotWeightSums,
  type FlatLayout, type Strategy, type StrategyServer,
} from '../../shared/aggregation/index.js';
import { readModelInfo, targetShapes } from '../../shared/model/model-info.js';
import type { LoraAdapter } from '../../shared/lora/adapter.js';
import type { TensorMap } from '../../shared/tensor.js';
import { setLogSink, type Level } from '../../shared/log.js';

export const FIXTURE = 'test/fixtures/hf/llama-tiny/base';
const T0 = 1_700_000_000_000;

// ------------------------------------------------------------------------------------- clock

export class FakeClock {
  t = T0;
  readonly now = (): number => this.t;
  advance(ms: number): number { this.t += ms; return this.t; }
}

// ------------------------------------------------------------------------------ contributions

/** A per-label stream from the aggregation tests' independent PRNG. */
function seeded(label: string): () => number {
  return rng(createHash('sha256').update(label).digest().readUInt32LE(0));
}

/**
 * What a participant "trained": a weight-1 contribution, deterministic in (id, round), zero in rank
 * slots at or beyond its rank, with entries in ±1.5·clip so that some of them are clipped.
 */
export function contributionOf(id: string, round: number, rank: number, layout: FlatLayout, clip: number): Float32Array {
  const rnd = seeded(`${id}:${round}`);
  const slots = elementSlots(layout);
  const v = new Float32Array(layout.size);
  for (let i = 0; i < v.length; i++) {
    const x = (rnd() * 2 - 1) * 1.5 * clip;
    if (slots[i]! < rank) v[i] = x;
  }
  return v;
}

/** Σ w·clip(x) in float64: the sum the coordinator should end up with, before rounding. */
export function clippedSum(parts: readonly { x: Float32Array; weight: number }[], clip: number, length: number): Float64Array {
  const acc = new Float64Array(length);
  for (const { x, weight } of parts) for (let i = 0; i < length; i++) acc[i] = acc[i]! + Math.max(-clip, Math.min(clip, x[i]!)) * weight;
  return acc;
}

// ------------------------------------------------------------------------------ participants

export type Stop = 'start' | 'advertise' | 'share' | 'masked' | 'consistency';
export type NoticeEvent = typeof EV.secaggKeys | typeof EV.secaggShares | typeof EV.secaggSurvivors | typeof EV.secaggUnmask;

/** How a participant behaves in one round it was started for. Default: honest. */
export interface Behaviour {
  /** Refuse round:start (the host reports startFailed). */
  refuseStart?: boolean;
  /** The last message it sends; it stays linked and silent afterwards ('start': accepts round:start, sends nothing). */
  stopAfter?: Stop;
  /** Drop the link instead of staying silent when it stops. */
  loseLinkOnStop?: boolean;
  /** The link goes down just before this notice would arrive (the notice is lost with it). */
  loseLinkAt?: NoticeEvent;
  /** Rewrites what it sends (a broken or malicious client). */
  tamper?: {
    share?(m: ShareKeysMsg): ShareKeysMsg;
    /** The fixed-point input, before masking. */
    input?(q: Uint32Array, rs: RoundStart): Uint32Array;
    unmask?(m: UnmaskMsg): UnmaskMsg;
    update?(u: Update): Update;
  };
  /** Runs just before / after a message of `kind` is sent (tests try variants here). */
  before?(kind: string, msg: unknown, p: SimParticipant): void;
  after?(kind: string, p: SimParticipant): void;
}

export interface Delivery { ok: boolean; code?: string; message?: string }

interface PRound {
  rs: RoundStart;
  behaviour: Behaviour;
  weight: number;
  sc?: SecAggClient;
  quant?: QuantParams;
  /** Sealed bytes sent per kind: a repeated round:start or notice is answered with the same bytes. */
  sent: Map<string, Uint8Array>;
  /** The messages behind them. */
  msgs: Map<string, unknown>;
  stopped: boolean;
  ended?: RoundEnd;
}

export class SimParticipant {
  readonly id: string;
  readonly identity: Identity;
  readonly rank: number;
  examples: number;
  linked = false;
  /** Ordinal → behaviour for each new round:start (1-based); default honest. */
  plan: (n: number, rs: RoundStart) => Behaviour = () => ({});
  round: PRound | null = null;
  rounds = 0;
  /** Every message delivery and its outcome, in order. */
  readonly log: { roundId: string; kind: string; size: number; result: Delivery }[] = [];
  readonly ends: RoundEnd[] = [];
  readonly errors: string[] = [];
  sessionDone: number | null = null;

  constructor(id: string, rank: number, examples: number) {
    this.id = id;
    this.rank = rank;
    this.examples = examples;
    this.identity = identityFromSeed(createHash('sha256').update(`engine-harness:${id}`).digest());
  }

  /** Bytes of the messages the engine took (not refused, not acknowledged duplicates) in one round. */
  acceptedBytes(roundId: string): number {
    return this.log.filter((l) => l.roundId === roundId && l.result.ok && l.kind !== 'dup').reduce((s, l) => s + l.size, 0);
  }
}

/** Applies `b` to a participant's first round only; honest afterwards. */
export function firstOnly(b: Behaviour): (n: number) => Behaviour {
  return (n) => (n === 1 ? b : {});
}

// ---------------------------------------------------------------------------------- harness

export interface HarnessOptions {
  /** One entry per participant: rank and declared examples. Ids are p0, p1, … */
  participants: { rank: number; examples: number }[];
  config?: Partial<EngineConfig>;
  /** Wraps the strategy server (e.g. one whose step throws). */
  server?: (inner: StrategyServer) => StrategyServer;
  /** Answer 'checkpoint' commands at once (default true). */
  autoCheckpoint?: boolean;
}

interface Fixture { strategy: Strategy; global: LoraAdapter; layout: FlatLayout }
let fixture: Promise<Fixture> | null = null;

/** The llama-tiny fixture's q/v projections at max rank 4 under rank-aware: 1,792 shared elements. */
function loadFixture(maxRank: number): Promise<Fixture> {
  fixture ??= (async () => {
    const info = await readModelInfo(FIXTURE);
    const targets = ['q_proj', 'v_proj'];
    const strategy = getStrategy('rank-aware');
    const global = strategy.init(targetShapes(info, targets), maxRank, 8, 11, {
      targetModules: targets, fanInFanOut: info.fanInFanOut, useRslora: false, taskType: 'CAUSAL_LM', baseModelNameOrPath: null,
    });
    const layout = makeLayout([...global.tensors].filter(([n]) => strategy.isShared(n)).map(([name, t]) => ({ name, shape: t.shape })));
    return { strategy, global, layout };
  })();
  return fixture;
}

export const MAX_RANK = 4;

export class EngineHarness {
  readonly clock = new FakeClock();
  readonly coordinator: Identity = identityFromSeed(createHash('sha256').update('engine-harness:coordinator').digest());
  readonly box = makeCoordinatorBoxKey(this.coordinator, 365 * 24 * 3600_000, T0);
  readonly parts = new Map<string, SimParticipant>();
  readonly commands: Command[] = [];
  readonly records: RoundRecord[] = [];
  /** The engine's global adapter and completed rounds as each attempt was reported, by round id. */
  readonly globals = new Map<string, { global: LoraAdapter; completedRounds: number }>();
  readonly config: EngineConfig;
  readonly strategy: Strategy;
  readonly layout: FlatLayout;
  readonly initialGlobal: LoraAdapter;
  engine!: RoundEngine;
  done: { completedRounds: number } | null = null;
  autoCheckpoint: boolean;
  readonly #queue: Command[] = [];
  #draining = false;

  private constructor(f: Fixture, o: HarnessOptions) {
    this.strategy = f.strategy;
    this.layout = f.layout;
    this.initialGlobal = f.global;
    this.autoCheckpoint = o.autoCheckpoint ?? true;
    const n = o.participants.length;
    this.config = {
      rounds: 1, clientsPerRound: n, minClients: Math.min(2, n), roundTimeoutMs: 60_000, joinWaitMs: 1_000, rejoinGraceMs: 3_000,
      phaseTimeoutMs: 5_000, maxRank: MAX_RANK, seed: 7, maxExamplesPerClient: 1_000, clip: 1, secure: true, secAgg: {},
      train: { steps: 1, epochs: 0, lr: 1e-3, batchSize: 1 }, refactor: false, readyLimit: { max: 5, windowMs: 10_000 },
      ...o.config,
    };
    o.participants.forEach((p, i) => this.parts.set(`p${i}`, new SimParticipant(`p${i}`, p.rank, p.examples)));
    const inner = f.strategy.createServer({ maxRank: this.config.maxRank, seed: this.config.seed });
    const init: EngineInit = {
      sessionId: 'sess', modelId: createHash('sha256').update('llama-tiny').digest('hex'), fullModelBytes: 1 << 20,
      identity: this.coordinator, boxSecretKey: this.box.keyPair.secretKey, strategy: f.strategy, server: o.server ? o.server(inner) : inner,
      global: f.global, layout: f.layout, elementSlots: elementSlots(f.layout), completedRounds: 0, history: [], attempt: 0,
      now: this.clock.now, randomBytes: (k) => new Uint8Array(createHash('sha512').update(`nonce:${this.clock.t}:${this.records.length}`).digest().subarray(0, k)),
      out: (cmd) => { this.commands.push(cmd); this.#queue.push(cmd); },
      maxMessageBytes: 1 << 20,
    };
    this.engine = new RoundEngine(this.config, init);
  }

  static async create(o: HarnessOptions): Promise<EngineHarness> {
    return new EngineHarness(await loadFixture(o.config?.maxRank ?? MAX_RANK), o);
  }

  p(id: string): SimParticipant {
    const p = this.parts.get(id);
    if (!p) throw new Error(`no participant ${id}`);
    return p;
  }

  // ---- engine events (each carries out what the engine asked for before returning)

  /** Runs an engine call, then carries out the commands it emitted. */
  call<T>(f: () => T): T {
    try { return f(); } finally { this.drain(); }
  }

  join(id: string): void {
    const p = this.p(id);
    p.linked = true;
    this.call(() => this.engine.joined(id, { key: p.identity.publicKey, maxRank: p.rank, personal: () => false }));
  }

  /** `ready` on the current link; returns the error code when refused. */
  ready(id: string, examples = this.p(id).examples): string | null {
    try {
      this.call(() => this.engine.ready(id, examples));
      return null;
    } catch (e) {
      return (e as { code?: string }).code ?? String(e);
    }
  }

  /** Every participant joins and becomes ready, in id order. */
  joinAll(ids: Iterable<string> = this.parts.keys()): void {
    for (const id of ids) { this.join(id); this.ready(id); }
  }

  lose(id: string): void {
    this.p(id).linked = false;
    this.call(() => this.engine.lost(id));
  }

  /** A new link for `id`: hello, then ready. */
  rejoin(id: string): string | null {
    this.join(id);
    return this.ready(id);
  }

  tick(): void { this.call(() => this.engine.tick()); }

  advance(ms: number): void { this.clock.advance(ms); this.tick(); }

  /** Moves the clock to the engine's next wake-up and ticks, until nothing is pending or `steps` ran out. */
  runToEnd(steps = 50): void {
    for (let i = 0; i < steps; i++) {
      if (this.engine.phase === 'done' || this.engine.phase === 'closed') return;
      const at = this.engine.nextWake();
      if (at === null) return;
      this.clock.t = Math.max(this.clock.t, at);
      this.tick();
    }
  }

  // ---- carrying out commands

  drain(): void {
    if (this.#draining) return;
    this.#draining = true;
    try {
      for (let cmd = this.#queue.shift(); cmd; cmd = this.#queue.shift()) this.#execute(cmd);
    } finally {
      this.#draining = false;
    }
  }

  #execute(cmd: Command): void {
    switch (cmd.type) {
      case 'start': this.#onStart(cmd); return;
      case 'notify': {
        const p = this.p(cmd.to);
        if (p.linked) this.#onNotify(p, cmd.event, cmd.bytes);
        return;
      }
      case 'checkpoint':
        if (this.autoCheckpoint) this.engine.checkpointed(cmd.round);
        return;
      case 'round':
        this.records.push(cmd.record);
        this.globals.set(cmd.record.roundId, { global: this.engine.global, completedRounds: this.engine.completedRounds });
        return;
      case 'done': this.done = { completedRounds: cmd.completedRounds }; return;
    }
  }

  starts(id: string): Extract<Command, { type: 'start' }>[] {
    return this.commands.filter((c): c is Extract<Command, { type: 'start' }> => c.type === 'start' && c.to === id);
  }

  notices(id: string, event?: string): Extract<Command, { type: 'notify' }>[] {
    return this.commands.filter((c): c is Extract<Command, { type: 'notify' }> => c.type === 'notify' && c.to === id && (event === undefined || c.event === event));
  }

  #onStart(cmd: Extract<Command, { type: 'start' }>): void {
    const p = this.p(cmd.to);
    if (!p.linked) { this.engine.startFailed(p.id, cmd.roundId, 'not connected'); return; }
    let rs: RoundStart;
    try {
      rs = parseRoundStart(openEnvelope(SIGNED_DOMAINS.roundStart, cmd.bytes, this.coordinator.publicKey, 1 << 30));
      if (rs.roundId !== cmd.roundId) throw new Error('round id differs from the command');
      const me = rs.participants.find((x) => x.id === p.id);
      if (!me || me.rank !== rs.rank || Buffer.compare(Buffer.from(me.key), Buffer.from(p.identity.publicKey)) !== 0) throw new Error('round start does not list me');
      if (p.round?.rs.roundId === rs.roundId) {
        this.#redeliver(p);
      } else {
        const behaviour = p.plan(++p.rounds, rs);
        if (behaviour.refuseStart) throw new Error('refused by plan');
        this.#begin(p, rs, me.weight, behaviour);
      }
    } catch (e) {
      p.errors.push(`round:start: ${(e as Error).message}`);
      this.engine.startFailed(p.id, cmd.roundId, (e as Error).message);
      return;
    }
    if (cmd.then && p.linked) this.#onNotify(p, cmd.then.event, cmd.then.bytes);
  }

  #begin(p: SimParticipant, rs: RoundStart, weight: number, behaviour: Behaviour): void {
    const r: PRound = { rs, behaviour, weight, sent: new Map(), msgs: new Map(), stopped: false };
    p.round = r;
    if (rs.secure) {
      const s = rs.secure;
      r.quant = { ...s.quant };
      r.sc = new SecAggClient({
        params: {
          round: rs.round, modelHash: s.modelHash, vectorLength: layoutLength(rs.layout), participants: rs.participants.map((x) => ({ id: x.id, key: x.key })),
          k: s.k, t: s.t, nonce: s.nonce, coordinatorKey: this.coordinator.publicKey,
        },
        paramsSignature: s.paramsSignature, coordinatorKey: this.coordinator.publicKey, identity: p.identity, id: p.id,
      });
      if (this.#stops(p, 'start')) return;
      this.#send(p, 'secagg/advertise', r.sc.advertiseKeys());
      this.#stops(p, 'advertise');
      return;
    }
    if (this.#stops(p, 'start')) return;
    // a plain client scales by what it trained on (uncapped); the coordinator normalises by it
    const w = Math.max(1, p.examples);
    const x = this.contribution(p.id, rs);
    const vector = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) vector[i] = x[i]! * w;
    let u: Update = { roundId: rs.roundId, rank: rs.rank, weight: w, vector, metrics: metricsOf(p.id) };
    if (behaviour.tamper?.update) u = behaviour.tamper.update(u);
    this.#send(p, 'update', u);
  }

  /** The weight-1 contribution a participant uploads for a round start. */
  contribution(id: string, rs: Pick<RoundStart, 'round' | 'rank'>): Float32Array {
    return contributionOf(id, rs.round, rs.rank, this.layout, this.config.clip);
  }

  /** True (and the participant falls silent or drops its link) when its plan stops after `at`. */
  #stops(p: SimParticipant, at: Stop): boolean {
    const r = p.round!;
    if (r.behaviour.stopAfter !== at) return false;
    r.stopped = true;
    if (r.behaviour.loseLinkOnStop) this.lose(p.id);
    return true;
  }

  /** The same round:start again on a new link: answer from what was already sent, byte for byte. */
  #redeliver(p: SimParticipant): void {
    const r = p.round!;
    if (r.stopped) return;
    for (const kind of ['secagg/advertise', 'update'] as const) {
      const b = r.sent.get(kind);
      if (b) this.deliver(p.id, kind, b, 'dup');
    }
  }

  #onNotify(p: SimParticipant, event: string, bytes: Uint8Array): void {
    if (event === EV.roundEnd) {
      const e = parseRoundEnd(openEnvelope(SIGNED_DOMAINS.roundEnd, bytes, this.coordinator.publicKey));
      p.ends.push(e);
      if (p.round?.rs.roundId === e.roundId) p.round.ended = e;
      return;
    }
    if (event === EV.sessionDone) {
      p.sessionDone = parseSessionDone(openEnvelope(SIGNED_DOMAINS.sessionDone, bytes, this.coordinator.publicKey)).completedRounds;
      return;
    }
    const o = decode(bytes) as { roundId: string; msg: unknown };
    const r = p.round;
    if (!r || r.rs.roundId !== o.roundId) { p.errors.push(`${event} for ${o.roundId}: not my round`); return; }
    if (r.behaviour.loseLinkAt === event && p.linked) { r.behaviour = { ...r.behaviour, loseLinkAt: undefined }; this.lose(p.id); return; }
    if (r.stopped || !r.sc) return;
    const sc = r.sc;
    try {
      switch (event) {
        case EV.secaggKeys: {
          if (sc.phase !== 'share') { this.#again(p, 'secagg/share'); return; }
          let m = sc.shareKeys(o.msg as never);
          if (r.behaviour.tamper?.share) m = r.behaviour.tamper.share(m);
          this.#send(p, 'secagg/share', m);
          this.#stops(p, 'share');
          return;
        }
        case EV.secaggShares: {
          if (sc.phase !== 'mask') { this.#again(p, 'secagg/masked'); return; }
          let q = encodeUpdate(this.contribution(p.id, r.rs), r.weight, r.quant!);
          if (r.behaviour.tamper?.input) q = r.behaviour.tamper.input(q, r.rs);
          this.#send(p, 'secagg/masked', { ...sc.maskedInput(o.msg as SharesMsg, q), metrics: metricsOf(p.id) });
          this.#stops(p, 'masked');
          return;
        }
        case EV.secaggSurvivors: {
          if (sc.phase !== 'consistency') { this.#again(p, 'secagg/consistency'); return; }
          this.#send(p, 'secagg/consistency', sc.consistencyCheck(o.msg as never));
          this.#stops(p, 'consistency');
          return;
        }
        case EV.secaggUnmask: {
          if (sc.phase !== 'unmask') { this.#again(p, 'secagg/unmask'); return; }
          let m = sc.unmask(o.msg as never);
          if (r.behaviour.tamper?.unmask) m = r.behaviour.tamper.unmask(m);
          this.#send(p, 'secagg/unmask', m);
          return;
        }
      }
    } catch (e) {
      p.errors.push(`${event}: ${(e as Error).message}`);
    }
  }

  /** A repeated notice: the bytes already sent for that phase, if any. */
  #again(p: SimParticipant, kind: SealedKind): void {
    const b = p.round!.sent.get(kind);
    if (b) this.deliver(p.id, kind, b, 'dup');
  }

  #send(p: SimParticipant, kind: SealedKind, msg: unknown): void {
    const r = p.round!;
    const label = kind === 'update' ? 'update' : kind.slice('secagg/'.length);
    r.behaviour.before?.(label, msg, p);
    const bytes = this.seal(p.id, kind, encode(msg));
    r.sent.set(kind, bytes);
    r.msgs.set(kind, msg);
    this.deliver(p.id, kind, bytes);
    r.behaviour.after?.(label, p);
  }

  /** Seals a payload as participant `id` for its current round. */
  seal(id: string, kind: SealedKind, payload: Uint8Array): Uint8Array {
    const r = this.p(id).round!;
    return sealForCoordinator(payload, { roundId: r.rs.roundId, round: r.rs.round, sender: id, kind }, this.box.keyPair.publicKey);
  }

  /** Hands sealed bytes to the engine as the host would (decoded, with their size); records the outcome. */
  deliver(id: string, kind: SealedKind, bytes: Uint8Array, label?: 'dup'): Delivery {
    const p = this.p(id);
    let result: Delivery;
    if (!p.linked) result = { ok: false, code: 'OFFLINE' };
    else {
      try {
        this.call(() => this.engine.receive(id, kind === 'update' ? 'update' : 'secagg', decode(bytes), bytes.byteLength));
        result = { ok: true };
      } catch (e) {
        result = { ok: false, code: (e as { code?: string }).code ?? 'THROWN', message: (e as Error).message };
      }
    }
    p.log.push({ roundId: p.round?.rs.roundId ?? '', kind: label ?? kind, size: bytes.byteLength, result });
    return result;
  }

  // ---- expectations

  /** The shared tensors of an adapter as one flat vector in the round layout. */
  flat(a: LoraAdapter): Float32Array {
    const m: TensorMap = new Map(this.layout.entries.map((e) => [e.name, a.tensors.get(e.name)!]));
    return flatten(m, this.layout);
  }

  /**
   * The next global adapter by the book for the given contributors of `round`: Σ w·clip(x), then
   * aggregateRound with a fresh server; and, independently, slot j of every element as that sum
   * over Σ_{rank > j} w (rank-aware, no refactor), or the previous value where nobody trained.
   */
  expected(round: number, contributors: readonly { id: string; rank: number; weight: number }[], previous: LoraAdapter): { viaAggregate: Float32Array; byHand: Float64Array; slotWeights: Float64Array } {
    const c = this.config;
    const sum = clippedSum(contributors.map((x) => ({ x: contributionOf(x.id, round, x.rank, this.layout, c.clip), weight: x.weight })), c.clip, this.layout.size);
    const next = aggregateRound(this.strategy.createServer({ maxRank: c.maxRank, seed: c.seed }), {
      sum: Float32Array.from(sum), layout: this.layout, previous, maxRank: c.maxRank, refactor: false, keepUnrotated: () => false,
      contributors: contributors.map((x) => ({ rank: x.rank, weight: x.weight, personal: () => false })),
    });
    const slotWeights = slotWeightSums(contributors.map((x) => ({ rank: x.rank, weight: x.weight })), c.maxRank);
    const slots = elementSlots(this.layout);
    const prev = this.flat(previous);
    const byHand = new Float64Array(this.layout.size);
    for (let i = 0; i < byHand.length; i++) {
      const w = slotWeights[slots[i]!]!;
      byHand[i] = w > 0 ? sum[i]! / w : prev[i]!;
    }
    return { viaAggregate: this.flat(next), byHand, slotWeights };
  }
}

function metricsOf(id: string): UpdateMetrics {
  return { trainLoss: 1 + (id.charCodeAt(id.length - 1) % 7) / 10, steps: 1, trainMs: 5 };
}

/** Largest |a−b| over two vectors. */
export function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} ≠ ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Collects library log lines for the duration of a suite (and keeps the test output readable). */
export function captureLogs(): { lines: { level: Level; ns: string; msg: string }[]; restore(): void } {
  const lines: { level: Level; ns: string; msg: string }[] = [];
  setLogSink((level, ns, msg) => { lines.push({ level, ns, msg }); });
  return {
    lines,
    restore: () => setLogSink((level, ns, msg) => { process.stderr.write(`${new Date().toISOString().slice(11, 23)} ${level.padEnd(5)} ${ns} ${msg}\n`); }),
  };
}
