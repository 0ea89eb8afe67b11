/**
 * The round engine: every state a federation goes through, in one place, without sockets, timers
 * or disk. Events go in (a participant joined, became ready, sent a message, lost its link; a
 * request failed; time passed; a checkpoint landed), commands come out through `out` (start a
 * participant's round, send a notice, write a checkpoint, report a round, finish). The host (the
 * socket.io adapter in coordinator.ts, or a test) carries the commands out and calls `tick()` at
 * `nextWake()`.
 *
 *   waiting ──(≥ clientsPerRound ready, or ≥ minClients ready for joinWaitMs)──▶ training
 *   training: the attempt's Collector runs its phases (plain: upload; secure: advertise ▶ share ▶
 *             masked ▶ consistency ▶ unmask); a phase closes when everyone reachable has answered
 *             or at its deadline. A participant that loses its link is reachable for rejoinGraceMs.
 *   training ──result──▶ bound check ▶ aggregate ▶ checkpointing ──checkpointed──▶ waiting | done
 *   training ──failure──▶ waiting (retry under a new round id; culprits sit the retry out)
 *
 * Rules: a participant is an id; a message is validated whole before it changes anything; an
 * error inside an attempt fails that attempt, never the engine; every number a client declares is
 * capped here.
 */
import { createHash } from 'node:crypto';
import { ProtocolError, errorMessage } from '../../shared/errors.js';
import { logger } from '../../shared/log.js';
import { encode, tensorMapToWire } from '../../shared/codec/index.js';
import {
  EV, SIGNED_DOMAINS, openFromClient, parseSealedEnvelope, sha256Hex, signEnvelope,
  type RoundEnd, type RoundParticipant, type RoundStart, type SecureRoundInfo, type UpdateMetrics,
} from '../../shared/protocol/index.js';
import {
  ReplayGuard, chooseQuantParams, defaultSecAggSizes, quantErrorBound, signSecAggParams,
  type Identity, type QuantParams, type SecAggParams,
} from '../../shared/crypto/index.js';
import {
  adapterForRank, aggregateRound, seededStream, type FlatLayout, type Strategy, type StrategyServer,
} from '../../shared/aggregation/index.js';
import type { LoraAdapter } from '../../shared/lora/adapter.js';
import { weightedEval, type ParticipantRecord, type RoundRecord } from '../metrics.js';
import { AttemptFailure, PlainCollector, SecureCollector, type Collector, type CollectResult } from './collect.js';
import { DpEngine, type DpAttempt } from './dp.js';
import type { DpConfig } from '../../shared/privacy/index.js';

const log = logger('fedlora:coordinator:round');

export interface EngineConfig {
  rounds: number;
  clientsPerRound: number;
  minClients: number;
  roundTimeoutMs: number;
  joinWaitMs: number;
  rejoinGraceMs: number;
  /** Deadline of each short secure-aggregation phase. */
  phaseTimeoutMs: number;
  maxRank: number;
  seed: number;
  /** Declared example counts above this are cut to it: a round weight is min(examples, cap), at least 1. */
  maxExamplesPerClient: number;
  /** Per-coordinate clip c of every contribution (secure and plain). */
  clip: number;
  secure: boolean;
  /** Cluster mode (coordinator/cluster): masked inputs are summed at the edges, the engine gets partial sums. */
  hierarchical?: boolean;
  secAgg: { k?: number; t?: number };
  train: { steps: number; epochs: number; lr: number; batchSize: number };
  refactor: boolean;
  /** At most `max` ready messages per participant in `windowMs`. */
  readyLimit: { max: number; windowMs: number };
  /** Client-level differential privacy (docs/PRIVACY.md); absent: off. */
  dp?: DpConfig;
}

export interface EngineInit {
  sessionId: string;
  modelId: string;
  fullModelBytes: number;
  identity: Identity;
  boxSecretKey: Uint8Array;
  strategy: Strategy;
  server: StrategyServer;
  global: LoraAdapter;
  layout: FlatLayout;
  elementSlots: Int32Array;
  completedRounds: number;
  history: RoundRecord[];
  /** Highest attempt number used so far (round ids stay unique across restarts). */
  attempt: number;
  now(): number;
  randomBytes(n: number): Uint8Array;
  out(cmd: Command): void;
  /** Largest decoded sealed payload. */
  maxMessageBytes: number;
}

export type Command =
  /** Request `round:start` (ack + timeout); on success send `then` if given; on failure call startFailed(). */
  | { type: 'start'; to: string; roundId: string; bytes: Uint8Array; then?: { event: string; bytes: Uint8Array } }
  | { type: 'notify'; to: string; event: string; bytes: Uint8Array }
  /** Persist, then call checkpointed(round) (or checkpointFailed). */
  | { type: 'checkpoint'; round: number; adapter: LoraAdapter; strategyState: ReturnType<StrategyServer['serialize']>; history: RoundRecord[] }
  /** Cluster mode: collect the edges' partial sums of these masked inputs, then call partials()/gathered(). */
  | { type: 'gather'; roundId: string; ids: string[] }
  | { type: 'round'; record: RoundRecord }
  | { type: 'done'; completedRounds: number; global: LoraAdapter; reason?: string };

export type EnginePhase = 'waiting' | 'training' | 'aggregating' | 'done' | 'closed';

export interface MemberInfo { key: Uint8Array; maxRank: number; personal(name: string): boolean }

interface Member extends MemberInfo {
  id: string;
  linked: boolean;
  /** Bumped on every (re)join: a round start belongs to the link it was sent on. */
  gen: number;
  ready: boolean;
  examples: number;
  readyTimes: number[];
}

interface Slot extends ParticipantRecord {
  gen: number;
  lostAt?: number;
  startFailed?: boolean;
  lastNotice?: { event: string; bytes: Uint8Array };
}

interface Attempt {
  round: number;
  attempt: number;
  roundId: string;
  startedAt: number;
  deadline: number;
  slots: Map<string, Slot>;
  participants: RoundParticipant[];
  globalHash: string;
  startBytes: Map<number, Uint8Array>;
  collector: Collector;
  secure?: { info: SecureRoundInfo; quant: QuantParams };
  dp?: DpAttempt;
  replay: ReplayGuard;
  /** Digest of each accepted sealed message per `id/kind`: an identical resend is acked, not refused. */
  accepted: Map<string, string>;
  excluded: { clientId: string; reason: string }[];
}

interface Pending { round: number; adapter: LoraAdapter; record: RoundRecord; saved: ReturnType<StrategyServer['serialize']>; dpSaved?: ReturnType<DpEngine['save']> }

export class RoundEngine {
  readonly #c: EngineConfig;
  readonly #i: EngineInit;
  #phase: EnginePhase = 'waiting';
  #global: LoraAdapter;
  #completed: number;
  #attemptNo: number;
  #history: RoundRecord[];
  readonly #members = new Map<string, Member>();
  #open: Attempt | null = null;
  #pending: Pending | null = null;
  #enoughSince: number | null = null;
  #failStreak = 0;
  #retryAt = 0;
  /** Participants that made the last attempt fail: left out of the next one. */
  #sitOut = new Map<string, string>();
  #pumping = false;
  /** now() when the machine last ran: deadlines up to here have been acted on. */
  #pumpedAt = -Infinity;
  /** Differential privacy: accountant, noise, budget (null when off). */
  readonly #dp: DpEngine | null;
  #doneReason: string | undefined;
  /** Round records kept in memory (and so in /status, /metrics and checkpoints). */
  static readonly HISTORY_KEEP = 1000;

  constructor(config: EngineConfig, init: EngineInit) {
    this.#c = config;
    this.#i = init;
    this.#global = init.global;
    this.#completed = init.completedRounds;
    this.#attemptNo = init.attempt;
    this.#history = init.history;
    this.#dp = config.dp ? new DpEngine(config.dp, { clientsPerRound: config.clientsPerRound, minClients: config.minClients, clip: config.clip, length: init.layout.size, history: init.history }) : null;
  }

  /** ε so far and the DP settings, or null without DP. */
  get privacy(): ReturnType<DpEngine['status']> | null { return this.#dp?.status() ?? null; }
  /** Why the run ended early (privacy budget), if it did. */
  get doneReason(): string | undefined { return this.#doneReason; }

  get phase(): EnginePhase { return this.#phase; }
  get completedRounds(): number { return this.#completed; }
  get global(): LoraAdapter { return this.#global; }
  get history(): readonly RoundRecord[] { return this.#history; }
  get round(): number { return this.#open?.round ?? Math.min(this.#completed + 1, this.#c.rounds); }
  /** The open attempt's secure-aggregation phase, if any. */
  get collecting(): string | null { return this.#open?.collector.phase ?? null; }
  isMember(id: string): boolean { return this.#members.has(id); }
  isReady(id: string): boolean { return this.#members.get(id)?.ready ?? false; }
  examplesOf(id: string): number { return this.#members.get(id)?.examples ?? 0; }
  participating(): { clientId: string; rank: number; status: string }[] {
    return this.#open ? [...this.#open.slots.values()].map((s) => ({ clientId: s.clientId, rank: s.rank, status: s.status })) : [];
  }
  /** Does any participant keep this tensor personal? (refactoring must not rotate what someone keeps) */
  #personalSomewhere(name: string): boolean {
    for (const m of this.#members.values()) if (m.personal(name)) return true;
    return false;
  }

  // ------------------------------------------------------------------ events

  /** A participant proved its identity on a new link (replacing any older link of the same id). */
  joined(id: string, info: MemberInfo): void {
    const m = this.#members.get(id);
    if (m) {
      Object.assign(m, info);
      m.gen++;
      m.linked = true;
      m.ready = false;
      // a participant of the open round that came back on a new link (the old one may not have
      // reported its loss yet) has the rejoin grace to send ready and get its round again
      const slot = this.#open?.slots.get(id);
      if (slot && slot.lostAt === undefined) slot.lostAt = this.#i.now();
    } else {
      this.#members.set(id, { id, ...info, linked: true, gen: 1, ready: false, examples: 0, readyTimes: [] });
    }
    this.#pump();
  }

  /** The participant's link went down. */
  lost(id: string): void {
    const m = this.#members.get(id);
    if (!m) return;
    m.linked = false;
    m.ready = false;
    const slot = this.#open?.slots.get(id);
    if (slot && slot.gen === m.gen && slot.lostAt === undefined) {
      slot.lostAt = this.#i.now();
      log.info(`${id} lost its link during round ${this.#open!.round}`);
    }
    this.#pump();
  }

  /** `ready`: the participant holds the base model. Returns what the reply tells it. */
  ready(id: string, examples: number): { completedRounds: number } {
    const m = this.#members.get(id);
    if (!m) throw new ProtocolError('NO_HELLO', 'send hello first');
    const now = this.#i.now();
    const { max, windowMs } = this.#c.readyLimit;
    m.readyTimes = m.readyTimes.filter((t) => now - t < windowMs);
    if (m.readyTimes.length >= max) throw new ProtocolError('RATE_LIMITED', `more than ${max} ready messages in ${windowMs} ms`);
    m.readyTimes.push(now);
    m.ready = true;
    m.examples = Math.min(Math.max(0, Math.floor(examples)), this.#c.maxExamplesPerClient);
    const a = this.#open;
    const slot = a?.slots.get(id);
    // a participant that comes back on a new link during its round gets the round (and the last
    // phase notice) again, once per link; on the link that already has it, nothing is resent
    if (a && slot && this.#phase === 'training' && slot.gen !== m.gen && (slot.status === 'pending' || a.secure)) {
      slot.gen = m.gen;
      delete slot.lostAt;
      delete slot.startFailed;
      if (slot.status === 'dropped') slot.status = 'pending';
      log.info(`${id} rejoined round ${a.round}`);
      this.#sendStart(a, slot, slot.lastNotice);
    }
    if (this.#phase === 'done') this.#i.out({ type: 'notify', to: id, event: EV.sessionDone, bytes: this.#sessionDoneBytes() });
    this.#pump();
    return { completedRounds: this.#completed };
  }

  /** `round:start` was not acknowledged on the link it was sent on. */
  startFailed(id: string, roundId: string, reason: string): void {
    const a = this.#open;
    const slot = a?.slots.get(id);
    if (!a || !slot || a.roundId !== roundId || slot.status !== 'pending') return;
    slot.startFailed = true;
    log.info(`${id} did not accept round ${a.round}: ${reason}`);
    this.#pump();
  }

  /**
   * A sealed message from a participant: `round:update` (kind 'update') or `secagg:msg`. Throws a
   * ProtocolError/CryptoError for the reply and changes nothing when the message is refused.
   */
  receive(id: string, event: 'update' | 'secagg', raw: unknown, size: number): void {
    const a = this.#phase === 'training' ? this.#open : null;
    const slot = a?.slots.get(id);
    if (event === 'update' && this.#c.secure) throw new ProtocolError('SECURE_ONLY', 'this coordinator aggregates securely: plain updates are refused');
    const env = parseSealedEnvelope(raw, event === 'secagg');
    if (!a || !slot || env.roundId !== a.roundId) throw new ProtocolError('STALE_ROUND', `${event} for round ${env.roundId} is not for a round open for you`);
    const kind = event === 'update' ? 'update' : env.kind!;
    const digest = createHash('sha256').update(env.sealed.box).digest('hex');
    const key = `${id}/${kind}`;
    // an honest client redelivers exactly what it sent after a reconnect: acknowledge, change nothing
    if (a.accepted.get(key) === digest) return;
    if (!a.collector.accepts(kind)) throw new ProtocolError(event === 'update' ? 'STALE_ROUND' : 'SECAGG_PHASE', `${kind} is not accepted in phase ${a.collector.phase}`);
    const inner = openFromClient(env, { round: a.round, sender: id, kind: event === 'update' ? 'update' : `secagg/${env.kind!}` }, this.#i.boxSecretKey, this.#i.maxMessageBytes);
    const r = a.collector.receive(id, kind, inner);
    // recorded only once accepted, so a refused message leaves nothing behind (a fresh seal never collides)
    a.replay.check(env.sealed);
    a.accepted.set(key, digest);
    slot.bytesUp += size;
    if (r.uploaded) {
      slot.status = 'uploaded';
      if (r.metrics) applyMetrics(slot, r.metrics);
      log.debug(`${id}: ${kind} for round ${a.round} (${size} bytes)`);
    }
    this.#pump();
  }

  /**
   * Cluster mode: a secagg message an edge opened and validated itself (only `masked` is handled at
   * the edges: the vector stays there, `inner` is `{ id, rejected?, metrics? }`). `digest` is the
   * sealed box's SHA-256, so a redelivery to another edge is acknowledged like a resend. Throws for
   * the reply and changes nothing when refused.
   */
  receiveRelayed(id: string, kind: string, roundId: string, inner: unknown, size: number, digest: string): void {
    const a = this.#phase === 'training' ? this.#open : null;
    const slot = a?.slots.get(id);
    if (!a || !slot || roundId !== a.roundId) throw new ProtocolError('STALE_ROUND', `secagg for round ${roundId} is not for a round open for you`);
    const key = `${id}/${kind}`;
    if (a.accepted.get(key) === digest) return;
    if (!a.collector.accepts(kind)) throw new ProtocolError('SECAGG_PHASE', `${kind} is not accepted in phase ${a.collector.phase}`);
    const r = a.collector.receive(id, kind, inner);
    a.accepted.set(key, digest);
    slot.bytesUp += size;
    if (r.uploaded) {
      slot.status = 'uploaded';
      if (r.metrics) applyMetrics(slot, r.metrics);
    }
    this.#pump();
  }

  /** Cluster mode: one edge's partial sum for the open attempt. A partial that does not fit is logged and left out. */
  partial(roundId: string, ids: string[], sum: Uint32Array): void {
    const a = this.#open;
    if (!a || a.roundId !== roundId || !a.collector.addPartial) return;
    try { a.collector.addPartial(ids, sum); } catch (e) { log.warn(`round ${a.round}: partial sum over ${ids.length} input(s) refused: ${errorMessage(e)}`); }
  }

  /** Cluster mode: every edge answered the gather (or failed to); the masked phase can close. */
  gathered(roundId: string): void {
    const a = this.#open;
    if (!a || a.roundId !== roundId) return;
    a.collector.gathered?.();
    this.#pump();
  }

  /** Time passed: close phases and rounds whose deadlines are due. */
  tick(): void { this.#pump(); }

  /** The earliest time at which tick() has something to do, or null. */
  nextWake(): number | null {
    const c = this.#c;
    if (this.#phase === 'waiting') {
      const t = [this.#retryAt > this.#i.now() ? this.#retryAt : Infinity, this.#enoughSince !== null ? this.#enoughSince + c.joinWaitMs : Infinity];
      const m = Math.min(...t);
      return Number.isFinite(m) ? m : null;
    }
    const a = this.#open;
    if (this.#phase !== 'training' || !a) return null;
    let t = a.collector.deadline;
    for (const s of a.slots.values()) {
      if (s.lostAt === undefined) continue;
      const g = s.lostAt + c.rejoinGraceMs;
      // a grace a pump already went past needs no wake-up: returning `now` for it would have the host tick in a busy loop until the round ends
      if (g > this.#pumpedAt) t = Math.min(t, Math.max(g, this.#i.now()));
    }
    return t;
  }

  checkpointed(round: number): void {
    const p = this.#pending;
    if (!p || p.round !== round || this.#phase !== 'aggregating') return;
    this.#pending = null;
    this.#global = p.adapter;
    this.#completed = round;
    this.#endAttempt(p.record);
  }

  checkpointFailed(round: number, e: unknown): void {
    const p = this.#pending;
    if (!p || p.round !== round) return;
    this.#pending = null;
    // the round did not happen: restore the server state it advanced. Central DP: nothing was
    // released, so the accountant forgets the round too; distributed: the (untrusted) coordinator has
    // seen the noisy sum, so the round stays spent (and its record keeps the accountant state)
    this.#i.server.restore(p.saved);
    if (p.dpSaved && this.#dp!.mode === 'central') { this.#dp!.restore(p.dpSaved); delete p.record.privacy; }
    this.#history.pop();
    p.record.status = 'failed';
    p.record.failure = `checkpoint failed: ${errorMessage(e)}`;
    delete p.record.trainLoss; delete p.record.globalEval; delete p.record.personalEval;
    this.#history.push(p.record);
    log.error(`round ${round}: ${p.record.failure}`);
    this.#endAttempt(p.record);
  }

  close(): void { this.#phase = 'closed'; this.#open = null; }

  // ------------------------------------------------------------------ the machine

  #pump(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    this.#pumpedAt = this.#i.now();
    try {
      for (let guard = 0; guard < 64; guard++) {
        if (this.#phase === 'waiting') { if (!this.#maybeStart()) break; continue; }
        if (this.#phase === 'training' && this.#open) { if (!this.#maybeAdvance(this.#open)) break; continue; }
        break;
      }
    } finally {
      this.#pumping = false;
    }
  }

  #readyIds(): string[] {
    return [...this.#members.values()].filter((m) => m.linked && m.ready).map((m) => m.id);
  }

  /** waiting → training when enough participants are ready. */
  #maybeStart(): boolean {
    const c = this.#c, now = this.#i.now();
    if (this.#completed >= c.rounds) { this.#finish(); return false; }
    const refusal = this.#dp?.refuseNextRound();
    if (refusal) { this.#finish(refusal); return false; }
    if (now < this.#retryAt) return false;
    const sitOut = this.#sitOut;
    const ready = this.#readyIds().filter((id) => !sitOut.has(id));
    if (ready.length < c.minClients) { this.#enoughSince = null; return false; }
    if (ready.length < c.clientsPerRound) {
      this.#enoughSince ??= now;
      if (now < this.#enoughSince + c.joinWaitMs) return false;
    }
    this.#enoughSince = null;
    const excluded = [...sitOut].map(([clientId, reason]) => ({ clientId, reason }));
    this.#sitOut = new Map();
    try {
      this.#startAttempt(ready, excluded);
    } catch (e) {
      this.#open = null;
      this.#failBeforeStart(e);
    }
    return true;
  }

  #startAttempt(ready: string[], excluded: Attempt['excluded']): void {
    const c = this.#c, i = this.#i, now = i.now();
    const round = this.#completed + 1;
    const attempt = ++this.#attemptNo;
    const roundId = `${i.sessionId}:${round}:${attempt}`;
    // seeded Fisher–Yates over ids sorted, so a rerun with the same clients samples the same set
    const rnd = seededStream(c.seed, `sample:${round}:${attempt}`);
    const pool = [...ready].sort();
    for (let k = pool.length - 1; k > 0; k--) {
      const j = rnd() % (k + 1);
      [pool[k], pool[j]] = [pool[j]!, pool[k]!];
    }
    const picked = pool.slice(0, c.clientsPerRound).sort();
    const participants: RoundParticipant[] = picked.map((id) => {
      const m = this.#members.get(id)!;
      // under DP every contribution has weight 1, so one client moves the sum by at most S (McMahan et al. 2018)
      return { id, key: m.key, rank: Math.min(m.maxRank, c.maxRank), weight: this.#dp ? 1 : Math.max(1, m.examples) };
    });
    const deadline = now + c.roundTimeoutMs;
    const slots = new Map<string, Slot>(participants.map((p) => [p.id, {
      clientId: p.id, rank: p.rank, status: 'pending', weight: p.weight, bytesUp: 0, bytesDown: 0, gen: this.#members.get(p.id)!.gen,
    }]));
    const globalHash = sha256Hex(encode(tensorMapToWire(this.#global.tensors)));
    let collector: Collector;
    let secure: Attempt['secure'];
    const dp = this.#dp?.prepare(participants.length, c.secure);
    if (c.secure) {
      const s = this.#prepareSecure(round, participants, globalHash, dp);
      secure = { info: s.info, quant: s.quant };
      collector = new SecureCollector({ params: s.params, identity: i.identity, quant: s.quant, phaseMs: c.phaseTimeoutMs, roundDeadline: deadline, now, ...(c.hierarchical ? { hierarchical: true } : {}) });
    } else {
      collector = new PlainCollector({
        roundId, layout: i.layout, elementSlots: i.elementSlots, clip: c.clip, deadline, ...(dp ? { l2Clip: dp.info.clip } : {}),
        slots: new Map(participants.map((p) => [p.id, { rank: p.rank, weight: p.weight, personal: this.#members.get(p.id)!.personal }])),
      });
    }
    const a: Attempt = {
      round, attempt, roundId, startedAt: now, deadline, slots, participants, globalHash, startBytes: new Map(), collector,
      ...(secure ? { secure } : {}), ...(dp ? { dp } : {}), replay: new ReplayGuard(), accepted: new Map(), excluded,
    };
    this.#open = a;
    this.#phase = 'training';
    log.info(`round ${round}/${c.rounds} (${roundId}) started with ${picked.length} client(s): ${participants.map((p) => `${p.id}@r${p.rank}`).join(', ')}`
      + (excluded.length ? `; sitting out: ${excluded.map((e) => `${e.clientId} (${e.reason})`).join(', ')}` : ''));
    for (const s of slots.values()) this.#sendStart(a, s);
  }

  #prepareSecure(round: number, participants: RoundParticipant[], globalHash: string, dp?: DpAttempt): { params: SecAggParams; info: SecureRoundInfo; quant: QuantParams } {
    const c = this.#c, i = this.#i;
    const n = participants.length;
    const def = defaultSecAggSizes(n);
    let k = Math.min(c.secAgg.k ?? def.k, n - 1);
    if (k < n - 1 && k % 2 === 1) k += 1; // the SecAgg+ graph needs an even degree below n−1
    const t = Math.min(Math.max(2, c.secAgg.t ?? (c.secAgg.k !== undefined ? Math.floor((k + 1) / 2) + 1 : def.t)), k + 1);
    // weights are capped at maxExamplesPerClient, and the config check made sure the cap fits
    const totalWeight = participants.reduce((s, p) => s + p.weight, 0);
    // DP rounds pick their own scale, with headroom for the noise (shared/privacy/dp.ts)
    const quant = dp?.quant ?? chooseQuantParams({ clip: c.clip, maxTotalWeight: totalWeight, maxClients: n });
    const params: SecAggParams = {
      round, modelHash: `${i.modelId}:${globalHash}`, vectorLength: i.layout.size,
      participants: participants.map((p) => ({ id: p.id, key: p.key })), k, t, nonce: i.randomBytes(32), coordinatorKey: i.identity.publicKey,
    };
    const paramsSignature = signSecAggParams(params, i.identity);
    const info: SecureRoundInfo = { k, t, nonce: params.nonce, modelHash: params.modelHash, paramsSignature, quant: { ...quant } };
    log.info(`round ${round}: secure aggregation over ${n} clients, k=${k}, t=${t} (tolerates ${n - t} dropouts), clip ${quant.clip}, 2^-${quant.fracBits} fixed point, error bound ${quantErrorBound(quant).toExponential(2)} on the weighted sum`);
    return { params, info, quant };
  }

  #startBytes(a: Attempt, rank: number): Uint8Array {
    let bytes = a.startBytes.get(rank);
    if (bytes) return bytes;
    const c = this.#c, i = this.#i;
    const g = adapterForRank(this.#global, rank);
    const payload: RoundStart = {
      roundId: a.roundId, round: a.round, rank, maxRank: c.maxRank, strategy: i.strategy.name,
      config: { r: g.config.r, loraAlpha: g.config.loraAlpha, targetModules: g.config.targetModules, fanInFanOut: g.config.fanInFanOut, useRslora: g.config.useRslora, taskType: g.config.taskType, ...(g.config.useDora ? { useDora: true } : {}) },
      global: tensorMapToWire(g.tensors),
      layout: i.layout.entries.map((e) => ({ name: e.name, shape: [...e.shape] })),
      train: { ...c.train, seed: (c.seed + a.round * 7919) >>> 0 },
      deadline: a.deadline,
      modelId: i.modelId,
      globalHash: a.globalHash,
      participants: a.participants,
      ...(a.secure ? { secure: a.secure.info } : {}),
      ...(a.dp ? { dp: a.dp.info } : {}),
    };
    bytes = signEnvelope(SIGNED_DOMAINS.roundStart, payload, i.identity);
    a.startBytes.set(rank, bytes);
    return bytes;
  }

  #sendStart(a: Attempt, slot: Slot, then?: { event: string; bytes: Uint8Array }): void {
    const bytes = this.#startBytes(a, slot.rank);
    slot.bytesDown += bytes.byteLength;
    this.#i.out({ type: 'start', to: slot.clientId, roundId: a.roundId, bytes, ...(then ? { then } : {}) });
  }

  #reachable(a: Attempt, id: string, now: number): boolean {
    const s = a.slots.get(id);
    const m = this.#members.get(id);
    if (!s || !m) return false;
    if (s.lostAt !== undefined) return now - s.lostAt < this.#c.rejoinGraceMs;
    return m.linked && s.gen === m.gen && !s.startFailed;
  }

  /** Closes the collector's phase when nobody reachable still owes a message, or at its deadline. */
  #maybeAdvance(a: Attempt): boolean {
    const now = this.#i.now();
    if (a.collector.holding && now < a.collector.deadline) return false;
    const waiting = a.collector.holding ? [] : a.collector.waitingFor().filter((id) => this.#reachable(a, id, now));
    if (waiting.length > 0 && now < a.collector.deadline) return false;
    const phase = a.collector.phase;
    try {
      const adv = a.collector.close(now);
      if ('gather' in adv) {
        this.#i.out({ type: 'gather', roundId: a.roundId, ids: adv.gather });
        return true;
      }
      if ('notices' in adv) {
        if (phase === 'masked' || phase === 'upload') this.#markMissing(a, now);
        for (const n of adv.notices) {
          const slot = a.slots.get(n.to)!;
          const bytes = encode({ roundId: a.roundId, msg: n.msg });
          slot.lastNotice = { event: n.event, bytes };
          slot.bytesDown += bytes.byteLength;
          if (this.#reachable(a, n.to, now)) this.#i.out({ type: 'notify', to: n.to, event: n.event, bytes });
        }
        return true;
      }
      this.#markMissing(a, now);
      this.#complete(a, adv.result);
    } catch (e) {
      this.#markMissing(a, now);
      this.#failAttempt(a, e);
    }
    return true;
  }

  #markMissing(a: Attempt, now: number): void {
    for (const s of a.slots.values()) {
      if (s.status !== 'pending') continue;
      s.status = this.#reachable(a, s.clientId, now) ? 'timeout' : 'dropped';
    }
  }

  #baseRecord(a: Attempt, status: RoundRecord['status'], contributors: number): RoundRecord {
    const participants = [...a.slots.values()].map(({ gen: _g, lostAt: _l, startFailed: _f, lastNotice: _n, ...rec }) => rec);
    const record: RoundRecord = {
      round: a.round, roundId: a.roundId, attempt: a.attempt, status, startedAt: a.startedAt, endedAt: this.#i.now(), contributors, participants,
      bytesUp: 0, bytesDown: 0, fullModelBytes: this.#i.fullModelBytes,
      ...(a.excluded.length ? { excluded: a.excluded } : {}),
    };
    for (const p of participants) { record.bytesUp += p.bytesUp; record.bytesDown += p.bytesDown; }
    if (a.secure) record.secure = { k: a.secure.info.k, t: a.secure.info.t, clip: a.secure.quant.clip, fracBits: a.secure.quant.fracBits, droppedAfterSharing: [], badShares: 0 };
    return record;
  }

  #complete(a: Attempt, res: CollectResult): void {
    const c = this.#c, i = this.#i;
    const contributors = res.contributors.map((id) => a.slots.get(id)).filter((s): s is Slot => s !== undefined);
    if (contributors.length < c.minClients) throw new AttemptFailure('TOO_FEW', `${contributors.length} update(s) < --min-clients ${c.minClients}`);
    this.#checkBound(a, res.sum, contributors);
    // central DP: Gaussian noise on the checked sum; distributed: it is already in there. Either way the round is accounted
    const dpSaved = this.#dp?.save();
    const privacy = a.dp ? this.#dp!.release(a.dp, res.sum, contributors.length) : undefined;
    const saved = i.server.serialize();
    const next = aggregateRound(i.server, {
      sum: res.sum, layout: i.layout, previous: this.#global, maxRank: c.maxRank, refactor: c.refactor,
      contributors: contributors.map((s) => ({ rank: s.rank, weight: s.weight, personal: this.#members.get(s.clientId)?.personal ?? (() => false) })),
      keepUnrotated: (n) => this.#personalSomewhere(n),
    });
    const record = this.#baseRecord(a, 'completed', contributors.length);
    if (privacy) record.privacy = privacy;
    if (res.secure && record.secure) {
      record.secure.droppedAfterSharing = res.secure.droppedAfterSharing;
      record.secure.badShares = res.secure.badShares;
      if (res.secure.complaints.length) record.secure.complaints = res.secure.complaints;
    }
    const tw = contributors.reduce((s, x) => s + x.weight, 0);
    record.trainLoss = contributors.reduce((s, x) => s + (x.trainLoss ?? 0) * x.weight, 0) / tw;
    const ge = weightedEval(record.participants, 'global');
    const pe = weightedEval(record.participants, 'personal');
    if (ge) record.globalEval = ge;
    if (pe) record.personalEval = pe;
    this.#open = null;
    this.#phase = 'aggregating';
    this.#remember(record);
    this.#pending = { round: a.round, adapter: next, record, saved, ...(dpSaved ? { dpSaved } : {}) };
    log.info(`round ${a.round} aggregated: ${contributors.length}/${a.slots.size} updates, train loss ${fmt(record.trainLoss)}, global eval loss ${fmt(record.globalEval?.loss)}, personal ${fmt(record.personalEval?.loss)}`
      + (privacy ? `, DP ε=${privacy.epsilon.toFixed(4)} at δ=${privacy.delta} (${privacy.mechanism}, z=${privacy.z.toFixed(3)}, S=${privacy.clip}, q=${privacy.q.toFixed(4)}, ${privacy.rounds} round(s))` : ''));
    i.out({ type: 'checkpoint', round: a.round, adapter: next, strategyState: i.server.serialize(), history: this.#history });
  }

  /**
   * Honest contributions are w·clip(x) with zeros beyond the assigned rank and in personal
   * tensors, so every coordinate of the sum lies within c·Σ w over the contributors that share it
   * at that rank slot (+ fixed-point error). Anything beyond is a crafted input: refuse the attempt.
   */
  #checkBound(a: Attempt, sum: Float32Array, contributors: Slot[]): void {
    const c = this.#c, layout = this.#i.layout, slots = this.#i.elementSlots;
    const err = (a.secure ? quantErrorBound(a.secure.quant, contributors.length) : 1e-6 * c.clip * contributors.reduce((s, x) => s + x.weight, 0))
      + (a.dp && a.secure ? a.dp.noiseBound * 2 ** -a.secure.quant.fracBits : 0); // distributed noise is in the sum already
    for (const e of layout.entries) {
      const sharing = contributors.filter((s) => !(this.#members.get(s.clientId)?.personal(e.name) ?? false));
      const w = new Float64Array(c.maxRank);
      for (const s of sharing) for (let j = 0; j < s.rank; j++) w[j] = w[j]! + s.weight;
      // elements outside any rank slot (DoRA magnitudes) are bounded by everyone who shares them
      const all = sharing.reduce((t, s) => t + s.weight, 0);
      for (let k = e.offset; k < e.offset + e.size; k++) {
        const v = sum[k]!;
        const bound = c.clip * (slots[k]! < 0 ? all : w[slots[k]!]!) + err;
        if (!(Math.abs(v) <= bound)) {
          throw new AttemptFailure('BOUND_EXCEEDED', `the unmasked sum of ${e.name} has ${v.toExponential(3)} at element ${k - e.offset}, beyond what honest clipped contributions can reach (${bound.toExponential(3)}): a participant sent a crafted input`);
        }
      }
    }
  }

  #failBeforeStart(e: unknown): void {
    this.#failStreak++;
    this.#retryAt = this.#i.now() + Math.min(30_000, 500 * 2 ** Math.min(6, this.#failStreak - 1));
    log.error(`round ${this.#completed + 1}: could not start: ${errorMessage(e)}`);
  }

  #failAttempt(a: Attempt, e: unknown): void {
    const culprits = e instanceof AttemptFailure ? e.culprits.filter((id) => a.slots.has(id)) : [];
    const record = this.#baseRecord(a, 'failed', 0);
    const code = (e as { code?: unknown }).code;
    record.failure = typeof code === 'string' && !errorMessage(e).startsWith(code) ? `${code}: ${errorMessage(e)}` : errorMessage(e);
    if (culprits.length) record.culprits = culprits;
    for (const id of culprits) this.#sitOut.set(id, `made attempt ${a.roundId} fail: ${errorMessage(e).slice(0, 200)}`);
    this.#open = null;
    this.#remember(record);
    log.warn(`round ${a.round} attempt ${a.roundId} failed: ${record.failure}${culprits.length ? `; ${culprits.join(', ')} sit(s) out the retry` : ''}`);
    this.#failStreak++;
    // a quick retry for a one-off; growing pauses when attempts keep failing
    this.#retryAt = this.#failStreak > 2 ? this.#i.now() + Math.min(30_000, 250 * 2 ** Math.min(7, this.#failStreak - 2)) : 0;
    this.#endAttempt(record);
  }

  /** After a completed (checkpointed) or failed attempt: tell the participants, report, go on. */
  #endAttempt(record: RoundRecord): void {
    if (record.status === 'completed') {
      this.#failStreak = 0;
      log.info(`round ${record.round} completed: ${record.contributors}/${record.participants.length} updates, ${record.bytesUp} B up / ${record.bytesDown} B down (${(record.endedAt - record.startedAt) / 1000}s)`
        + (record.privacy ? `, ε=${record.privacy.epsilon.toFixed(4)} (δ=${record.privacy.delta})` : ''));
    }
    const end: RoundEnd = { roundId: record.roundId, round: record.round, status: record.status, contributors: record.contributors };
    const bytes = signEnvelope(SIGNED_DOMAINS.roundEnd, end, this.#i.identity);
    for (const p of record.participants) if (this.#members.get(p.clientId)?.linked) this.#i.out({ type: 'notify', to: p.clientId, event: EV.roundEnd, bytes });
    this.#phase = 'waiting';
    this.#i.out({ type: 'round', record });
    this.#pump();
  }

  #remember(record: RoundRecord): void {
    this.#history.push(record);
    if (this.#history.length > RoundEngine.HISTORY_KEEP) this.#history.splice(0, this.#history.length - RoundEngine.HISTORY_KEEP);
  }

  #sessionDoneBytes(): Uint8Array {
    return signEnvelope(SIGNED_DOMAINS.sessionDone, { completedRounds: this.#completed }, this.#i.identity);
  }

  #finish(reason?: string): void {
    if (this.#phase === 'done') return;
    this.#phase = 'done';
    this.#doneReason = reason;
    const bytes = this.#sessionDoneBytes();
    for (const m of this.#members.values()) if (m.linked) this.#i.out({ type: 'notify', to: m.id, event: EV.sessionDone, bytes });
    if (reason) log.warn(`run ended after ${this.#completed} of ${this.#c.rounds} rounds: ${reason}`);
    else log.info(`all ${this.#c.rounds} rounds done`);
    this.#i.out({ type: 'done', completedRounds: this.#completed, global: this.#global, ...(reason ? { reason } : {}) });
  }
}

function applyMetrics(slot: Slot, m: UpdateMetrics): void {
  slot.trainLoss = m.trainLoss;
  if (m.global) slot.global = m.global;
  if (m.personal) slot.personal = m.personal;
}

function fmt(x: number | undefined): string { return x === undefined ? '–' : x.toFixed(4); }
