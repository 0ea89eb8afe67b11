/**
 * Runtime guards for state.json. The file is decoded to `unknown` and every field passes through
 * here before the coordinator sees it: a state folder may be hand-edited, copied from another
 * version, or half-written by a crash, and a bad value must fail at load with the file and the
 * field named, not rounds later as a TypeError inside the coordinator.
 *
 * Guards build fresh objects from the known fields only, so unknown keys in a record are dropped
 * rather than carried along unchecked.
 */
import { StateError } from '../../shared/errors.js';
import { LIMITS } from '../../shared/protocol/index.js';
import type { EvalReport } from '../../shared/protocol/index.js';
import type { ParticipantRecord, RoundRecord } from '../metrics.js';

/** A value that survives JSON.stringify → JSON.parse unchanged. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

export const STATE_LIMITS = {
  /** Far beyond any real federation; mostly there so `completedRounds: 1e9` cannot pass. */
  maxRounds: 1e7,
  /** state.json files written before the history cap existed may hold more than HISTORY_CAP records. */
  maxHistoryOnLoad: 100_000,
  maxParticipants: 100_000,
  maxTargetModules: 1024,
  maxString: 1024,
  maxMetaDepth: 64,
  maxStrategyTensors: LIMITS.maxTensors,
};

/** The fields of state.json other than the strategy state, checked. */
export interface CheckedStateFields {
  format: number;
  modelId: string;
  strategy: string;
  maxRank: number;
  seed: number;
  loraAlpha: number;
  targetModules: string[];
  completedRounds: number;
  checkpoint: string;
  history: RoundRecord[];
}

export function checkpointName(round: number): string {
  return `checkpoint-${String(round).padStart(6, '0')}`;
}

/** Field-level guard context: the file every error names. */
export class Guard {
  constructor(readonly file: string) {}

  fail(field: string, message: string): never {
    throw new StateError(message, this.file, field);
  }

  obj(v: unknown, field: string): Record<string, unknown> {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail(field, `expected an object, got ${kind(v)}`);
    return v as Record<string, unknown>;
  }

  arr(v: unknown, field: string, max: number): unknown[] {
    if (!Array.isArray(v)) this.fail(field, `expected an array, got ${kind(v)}`);
    if (v.length > max) this.fail(field, `has ${v.length} entries, more than the limit of ${max}`);
    return v;
  }

  str(v: unknown, field: string, opts: { min?: number; max?: number; re?: RegExp } = {}): string {
    if (typeof v !== 'string') this.fail(field, `expected a string, got ${kind(v)}`);
    const min = opts.min ?? 1, max = opts.max ?? STATE_LIMITS.maxString;
    if (v.length < min || v.length > max) this.fail(field, `string length ${v.length} is outside [${min}, ${max}]`);
    if (opts.re && !opts.re.test(v)) this.fail(field, `${JSON.stringify(v.slice(0, 80))} does not match ${String(opts.re)}`);
    return v;
  }

  int(v: unknown, field: string, min: number, max: number): number {
    if (typeof v !== 'number' || !Number.isInteger(v)) this.fail(field, `expected an integer, got ${show(v)}`);
    if (v < min || v > max) this.fail(field, `${v} is outside [${min}, ${max}]`);
    return v;
  }

  num(v: unknown, field: string, min: number, max: number): number {
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(field, `expected a finite number, got ${show(v)}`);
    if (v < min || v > max) this.fail(field, `${v} is outside [${min}, ${max}]`);
    return v;
  }

  /**
   * A loss or accuracy. JSON has no NaN/Infinity (JSON.stringify writes them as null), and a
   * diverged round legitimately reports NaN, so null is read back as NaN rather than refused:
   * refusing it would make the run impossible to resume.
   */
  metric(v: unknown, field: string, min = -Infinity, max = Infinity): number {
    if (v === null) return NaN;
    if (typeof v !== 'number') this.fail(field, `expected a number or null, got ${kind(v)}`);
    if (Number.isNaN(v)) return v;
    if (v < min || v > max) this.fail(field, `${v} is outside [${min}, ${max}]`);
    return v;
  }

  oneOf<T extends string>(v: unknown, field: string, allowed: readonly T[]): T {
    if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) this.fail(field, `expected one of ${allowed.join(' | ')}, got ${show(v)}`);
    return v as T;
  }

  /** Checks that `v` is plain JSON within the depth limit (and so writes and reads back unchanged). */
  json(v: unknown, field: string, depth = 0): JsonValue {
    if (depth > STATE_LIMITS.maxMetaDepth) this.fail(field, `nested deeper than ${STATE_LIMITS.maxMetaDepth} levels`);
    if (v === null || typeof v === 'boolean' || typeof v === 'string') return v;
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) this.fail(field, `${v} is not representable in JSON`);
      return v;
    }
    if (Array.isArray(v)) return v.map((x, i) => this.json(x, `${field}[${i}]`, depth + 1));
    if (typeof v === 'object' && (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null)) {
      const out: Record<string, JsonValue> = {};
      for (const [k, x] of Object.entries(v)) out[k] = this.json(x, `${field}.${k}`, depth + 1);
      return out;
    }
    this.fail(field, `${kind(v)} is not plain JSON`);
  }
}

function kind(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return v.constructor && v.constructor !== Object ? `a ${v.constructor.name}` : 'an object';
  return `a ${typeof v}`;
}

function show(v: unknown): string {
  if (typeof v === 'number') return String(v);
  if (typeof v === 'string') return JSON.stringify(v.slice(0, 80));
  return kind(v);
}

const MAX_BYTES = Number.MAX_SAFE_INTEGER;
const MAX_TIME = 1e15; // ms since the epoch; year ~33,700
/** Free text the engine writes (failure reasons); generous, so a long message never makes a checkpoint unsavable. */
const MAX_TEXT = 1 << 16;

function evalReport(g: Guard, v: unknown, f: string): EvalReport {
  const o = g.obj(v, f);
  const r: EvalReport = {
    loss: g.metric(o.loss, `${f}.loss`),
    accuracy: g.metric(o.accuracy, `${f}.accuracy`, 0, 1),
    examples: g.num(o.examples, `${f}.examples`, 0, LIMITS.maxExamples),
  };
  if (o.f1 !== undefined) r.f1 = g.metric(o.f1, `${f}.f1`, 0, 1);
  return r;
}

function lossAcc(g: Guard, v: unknown, f: string): { loss: number; accuracy: number } {
  const o = g.obj(v, f);
  return { loss: g.metric(o.loss, `${f}.loss`), accuracy: g.metric(o.accuracy, `${f}.accuracy`, 0, 1) };
}

function participant(g: Guard, v: unknown, f: string, maxRank: number): ParticipantRecord {
  const o = g.obj(v, f);
  const p: ParticipantRecord = {
    clientId: g.str(o.clientId, `${f}.clientId`, { max: 256 }),
    rank: g.int(o.rank, `${f}.rank`, 1, maxRank),
    status: g.oneOf(o.status, `${f}.status`, ['uploaded', 'dropped', 'timeout', 'pending'] as const),
    weight: g.num(o.weight, `${f}.weight`, 0, Number.MAX_VALUE),
    bytesUp: g.int(o.bytesUp, `${f}.bytesUp`, 0, MAX_BYTES),
    bytesDown: g.int(o.bytesDown, `${f}.bytesDown`, 0, MAX_BYTES),
  };
  if (o.trainLoss !== undefined) p.trainLoss = g.metric(o.trainLoss, `${f}.trainLoss`);
  if (o.global !== undefined) p.global = evalReport(g, o.global, `${f}.global`);
  if (o.personal !== undefined) p.personal = evalReport(g, o.personal, `${f}.personal`);
  return p;
}

/** One RoundRecord; `round` must not exceed the rounds the state says are completed. */
export function roundRecord(g: Guard, v: unknown, f: string, ctx: { maxRank: number; completedRounds: number }): RoundRecord {
  const o = g.obj(v, f);
  const participants = g.arr(o.participants, `${f}.participants`, STATE_LIMITS.maxParticipants)
    .map((p, i) => participant(g, p, `${f}.participants[${i}]`, ctx.maxRank));
  const r: RoundRecord = {
    round: g.int(o.round, `${f}.round`, 1, Math.max(1, ctx.completedRounds)),
    roundId: g.str(o.roundId, `${f}.roundId`, { max: 256 }),
    status: g.oneOf(o.status, `${f}.status`, ['completed', 'failed'] as const),
    startedAt: g.num(o.startedAt, `${f}.startedAt`, 0, MAX_TIME),
    endedAt: g.num(o.endedAt, `${f}.endedAt`, 0, MAX_TIME),
    contributors: g.int(o.contributors, `${f}.contributors`, 0, participants.length),
    participants,
    bytesUp: g.int(o.bytesUp, `${f}.bytesUp`, 0, MAX_BYTES),
    bytesDown: g.int(o.bytesDown, `${f}.bytesDown`, 0, MAX_BYTES),
    fullModelBytes: g.int(o.fullModelBytes, `${f}.fullModelBytes`, 0, MAX_BYTES),
  };
  // the optional fields the engine writes must survive a resume too: a load that dropped them would
  // lose them from state.json at the next save (attempt numbers, why an attempt failed, who sat out)
  if (o.attempt !== undefined) r.attempt = g.int(o.attempt, `${f}.attempt`, 0, Number.MAX_SAFE_INTEGER);
  if (o.failure !== undefined) r.failure = g.str(o.failure, `${f}.failure`, { min: 0, max: MAX_TEXT });
  if (o.culprits !== undefined) {
    r.culprits = g.arr(o.culprits, `${f}.culprits`, STATE_LIMITS.maxParticipants).map((x, i) => g.str(x, `${f}.culprits[${i}]`, { max: 256 }));
  }
  if (o.excluded !== undefined) {
    r.excluded = g.arr(o.excluded, `${f}.excluded`, STATE_LIMITS.maxParticipants).map((x, i) => {
      const e = g.obj(x, `${f}.excluded[${i}]`);
      return { clientId: g.str(e.clientId, `${f}.excluded[${i}].clientId`, { max: 256 }), reason: g.str(e.reason, `${f}.excluded[${i}].reason`, { min: 0, max: MAX_TEXT }) };
    });
  }
  if (o.trainLoss !== undefined) r.trainLoss = g.metric(o.trainLoss, `${f}.trainLoss`);
  if (o.globalEval !== undefined) r.globalEval = lossAcc(g, o.globalEval, `${f}.globalEval`);
  if (o.personalEval !== undefined) r.personalEval = lossAcc(g, o.personalEval, `${f}.personalEval`);
  if (o.secure !== undefined) {
    const s = g.obj(o.secure, `${f}.secure`);
    r.secure = {
      k: g.int(s.k, `${f}.secure.k`, 0, STATE_LIMITS.maxParticipants),
      t: g.int(s.t, `${f}.secure.t`, 0, STATE_LIMITS.maxParticipants),
      clip: g.num(s.clip, `${f}.secure.clip`, 0, Number.MAX_VALUE),
      fracBits: g.int(s.fracBits, `${f}.secure.fracBits`, 0, 64),
      droppedAfterSharing: g.arr(s.droppedAfterSharing, `${f}.secure.droppedAfterSharing`, STATE_LIMITS.maxParticipants)
        .map((x, i) => g.str(x, `${f}.secure.droppedAfterSharing[${i}]`, { max: 256 })),
      badShares: g.int(s.badShares, `${f}.secure.badShares`, 0, MAX_BYTES),
    };
    if (s.complaints !== undefined) {
      r.secure.complaints = g.arr(s.complaints, `${f}.secure.complaints`, STATE_LIMITS.maxParticipants).map((x, i) => {
        const c = g.obj(x, `${f}.secure.complaints[${i}]`);
        return {
          from: g.str(c.from, `${f}.secure.complaints[${i}].from`, { max: 256 }),
          about: g.arr(c.about, `${f}.secure.complaints[${i}].about`, STATE_LIMITS.maxParticipants).map((y, j) => g.str(y, `${f}.secure.complaints[${i}].about[${j}]`, { max: 256 })),
        };
      });
    }
  }
  if (o.privacy !== undefined) r.privacy = privacyRecord(g, o.privacy, `${f}.privacy`);
  return r;
}

/** A DP round's record, including the cumulative RDP a resumed accountant continues from. */
function privacyRecord(g: Guard, v: unknown, f: string): NonNullable<RoundRecord['privacy']> {
  const p = g.obj(v, f);
  const acc = g.obj(p.accountant, `${f}.accountant`);
  const orders = g.arr(acc.orders, `${f}.accountant.orders`, 4096).map((x, i) => g.num(x, `${f}.accountant.orders[${i}]`, 1, 1e9));
  const rdp = g.arr(acc.rdp, `${f}.accountant.rdp`, 4096).map((x, i) => g.num(x, `${f}.accountant.rdp[${i}]`, 0, Number.MAX_VALUE));
  if (rdp.length !== orders.length) g.fail(`${f}.accountant.rdp`, `${rdp.length} values for ${orders.length} orders`);
  const r: NonNullable<RoundRecord['privacy']> = {
    mode: g.oneOf(p.mode, `${f}.mode`, ['central', 'distributed'] as const),
    mechanism: g.oneOf(p.mechanism, `${f}.mechanism`, ['gaussian', 'skellam'] as const),
    epsilon: g.num(p.epsilon, `${f}.epsilon`, 0, Number.MAX_VALUE),
    delta: g.num(p.delta, `${f}.delta`, 0, 1),
    z: g.num(p.z, `${f}.z`, 0, Number.MAX_VALUE),
    clip: g.num(p.clip, `${f}.clip`, 0, Number.MAX_VALUE),
    q: g.num(p.q, `${f}.q`, 0, 1),
    rounds: g.int(p.rounds, `${f}.rounds`, 0, Number.MAX_SAFE_INTEGER),
    survivors: g.int(p.survivors, `${f}.survivors`, 0, STATE_LIMITS.maxParticipants),
    accountant: { orders, rdp, rounds: g.int(acc.rounds, `${f}.accountant.rounds`, 0, Number.MAX_SAFE_INTEGER) },
  };
  if (p.clientVariance !== undefined) r.clientVariance = g.num(p.clientVariance, `${f}.clientVariance`, 0, Number.MAX_VALUE);
  if (p.fracBits !== undefined) r.fracBits = g.int(p.fracBits, `${f}.fracBits`, 0, 64);
  return r;
}

/** Everything in state.json except `strategyState`, whose layout depends on `format`. */
export function checkStateFields(g: Guard, o: Record<string, unknown>, formats: readonly number[]): CheckedStateFields {
  const format = g.int(o.format, 'format', 0, Number.MAX_SAFE_INTEGER);
  if (!formats.includes(format)) g.fail('format', `unknown state format ${format} (this build reads ${formats.join(', ')})`);
  const maxRank = g.int(o.maxRank, 'maxRank', 1, LIMITS.maxRank);
  const completedRounds = g.int(o.completedRounds, 'completedRounds', 0, STATE_LIMITS.maxRounds);
  const checkpoint = g.str(o.checkpoint, 'checkpoint', { max: 64, re: /^checkpoint-\d{6,}$/ });
  if (checkpoint !== checkpointName(completedRounds)) {
    g.fail('checkpoint', `names ${checkpoint} but completedRounds is ${completedRounds} (expected ${checkpointName(completedRounds)})`);
  }
  const history = g.arr(o.history, 'history', STATE_LIMITS.maxHistoryOnLoad)
    .map((r, i) => roundRecord(g, r, `history[${i}]`, { maxRank, completedRounds }));
  return {
    format,
    modelId: g.str(o.modelId, 'modelId'),
    strategy: g.str(o.strategy, 'strategy', { max: 128 }),
    maxRank,
    seed: g.int(o.seed, 'seed', Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER),
    loraAlpha: g.num(o.loraAlpha, 'loraAlpha', Number.MIN_VALUE, 1e9),
    targetModules: targetModules(g, o.targetModules),
    completedRounds,
    checkpoint,
    history,
  };
}

function targetModules(g: Guard, v: unknown): string[] {
  const a = g.arr(v, 'targetModules', STATE_LIMITS.maxTargetModules);
  if (!a.length) g.fail('targetModules', 'is empty; a checkpoint always targets at least one module');
  return a.map((m, i) => g.str(m, `targetModules[${i}]`, { max: 256 }));
}
