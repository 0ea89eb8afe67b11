/**
 * Aggregation strategies as pure functions over PEFT-named adapter tensors.
 *
 * Split into a client side (`contribution`) and a server side (`finalize`) because under secure
 * aggregation the coordinator only ever learns Σ_i contribution_i plus the public per-client
 * (rank, weight). Every strategy is therefore linear in what clients send: the client zero-pads its
 * tensors to maxRank and multiplies by its weight; the server divides by public weight sums.
 *
 * Scaling across ranks (design decision): the LoRA scale alpha/r is kept the same for every rank.
 * A client at rank r_i runs with lora_alpha_i = alpha·r_i/maxRank (alpha·√(r_i/maxRank) under
 * rsLoRA), so rank slot j means the same thing on every client and zero-padding / truncation never
 * rescale values (padRank/truncateRank in shared/lora/adapter.ts adjust lora_alpha accordingly).
 * Averaging slot j across clients is then averaging like with like.
 *
 * Slots nobody trained this round (no participant with positive weight has r_i > j) keep their
 * previous global values under every strategy: nobody saw them, so nobody may overwrite them.
 * Tensors that are not LoRA A/B weights are never shared; finalize carries them over unchanged.
 *
 * Anything a strategy needs beyond the linear average (server momentum, adaptive server optimisers)
 * lives in its `StrategyServer`, which runs on the coordinator after `finalize` and can therefore be
 * non-linear without breaking secure aggregation. Strategies are looked up by name in registry.ts.
 */
import { ConfigError, FedloraError, ProtocolError } from '../errors.js';
import { logger } from '../log.js';
import { parseLoraName, parseMagnitudeName, resizeCols, resizeRows, type LoraAdapter, type LoraConfig } from '../lora/adapter.js';
import type { Tensor32, TensorMap } from '../tensor.js';
import { initLoraAdapter } from './init.js';
import { makeLayout, type FlatLayout } from './layout.js';
import type { ModuleTransforms } from './refactor.js';
import { checkServerOpt, withServerOptimizer, type ServerOptConfig } from './server-opt.js';

const log = logger('fedlora:aggregation');

/** Any registered strategy's name (see registry.ts); kept as an alias so call sites read as intent. */
export type StrategyName = string;

/** Public facts about one participant of a round. `weight` is its example count (any finite value ≥ 0). */
export interface Participant { rank: number; weight: number }

/** A value that survives JSON.stringify → JSON.parse unchanged. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/**
 * A strategy server's state as it goes into a checkpoint: `meta` for the JSON state file, `tensors`
 * for a safetensors file. Float32 tensors and JSON numbers both round-trip exactly, so a restored
 * server continues bit for bit.
 */
export interface SavedServerState {
  meta: JsonValue;
  tensors: TensorMap;
}

export interface ServerOptions {
  maxRank: number;
  /** Run seed, for strategies whose server update is randomised. */
  seed: number;
  /**
   * Server optimiser (FedAvgM, FedAdam, FedYogi; server-opt.ts) wrapped around the strategy's own
   * server by createServer; absent or `{ name: 'none' }`: none.
   */
  optimizer?: ServerOptConfig;
}

/**
 * Per shared tensor: which rank slots somebody trained this round (a contributor sharing the tensor
 * with positive weight and rank above the slot). A tensor that is absent had no such contributor.
 */
export type TrainedSlots = ReadonlyMap<string, readonly boolean[]>;

/** Server-side state of one federated run under one strategy. */
export interface StrategyServer {
  readonly strategy: Strategy;
  /**
   * The global adapter for the next round from the previous one and this round's linear average
   * (the output of finalize, possibly refactored). Identity for the linear strategies. Without
   * `trained`, a slot counts as trained when any of its values differs from `previous` (finalize keeps
   * untrained slots bit-exactly, so this only differs when a trained average lands exactly on the old value).
   */
  step(previous: LoraAdapter, averaged: LoraAdapter, trained?: TrainedSlots): LoraAdapter;
  serialize(): SavedServerState;
  /** Replaces this server's state with a saved one; refuses state saved under another configuration. */
  restore(saved: SavedServerState): void;
  /**
   * Called after the step's result was refactored: the per-module slot transforms (B' = B·tB,
   * A' = tA·A) for state kept per rank slot to follow. Servers without such state leave it out.
   */
  rebase?(transforms: ModuleTransforms): void;
}

export interface Strategy {
  readonly name: StrategyName;
  readonly description: string;
  /** true if this PEFT tensor travels to the coordinator (fedsa: A only, B personal; ffa: B only, A frozen). */
  isShared(name: string): boolean;
  /** true if the strategy itself keeps this tensor on the client, trained and never uploaded (fedsa: B). */
  isPersonal(name: string): boolean;
  /** true if clients train this tensor (ffa: A is the frozen shared projection). */
  isTrainable(name: string): boolean;
  /** Client side: the tensor the client adds into the (secure) sum: zero-padded to maxRank, times weight. */
  contribution(name: string, t: Tensor32, weight: number, maxRank: number): Tensor32;
  /** Server side: new global tensors at maxRank from Σ contributions and the public participant list.
   *  Slots nobody trained keep the previous global values. */
  finalize(sum: TensorMap, participants: readonly Participant[], previous: LoraAdapter, maxRank: number): LoraAdapter;
  /** May the coordinator refactor (QR+SVD) the result before redistribution? */
  readonly refactorable: boolean;
  /** Fresh global adapter at maxRank: A from the seeded PEFT init, B zero. */
  init(moduleShapes: Map<string, { in: number; out: number }>, maxRank: number, alpha: number, seed: number, base: Omit<LoraConfig, 'r' | 'loraAlpha'>): LoraAdapter;
  /** Fresh server-side state for one run. */
  createServer(options: ServerOptions): StrategyServer;
}

/** The declarative description of a strategy that is linear in what clients send. */
export interface LinearStrategySpec {
  name: StrategyName;
  description: string;
  shareA: boolean;
  shareB: boolean;
  /** kept on each client, trained locally, never uploaded */
  personalA: boolean;
  personalB: boolean;
  /** false: A is frozen (never trained by clients) */
  trainA: boolean;
  /** 'total': divide by Σ w_i over all participants; 'slot': divide slot j by Σ_{i: r_i>j} w_i. */
  divisor: 'total' | 'slot';
  refactorable: boolean;
  /** Server-side state; default: stateless (step is the identity). */
  server?: (strategy: Strategy, options: ServerOptions) => StrategyServer;
}

/** Rank of a LoRA factor stored PEFT-style: rows of A [r, in], columns of B [out, r]. */
export function slotDim(factor: 'A' | 'B', t: { shape: readonly number[] }): number {
  return factor === 'A' ? t.shape[0]! : t.shape[1]!;
}

export function checkMaxRank(maxRank: number): void {
  if (!Number.isInteger(maxRank) || maxRank < 1) throw new ConfigError(`max rank must be a positive integer, got ${maxRank}`);
}

function checkWeight(weight: number): void {
  if (typeof weight !== 'number' || !Number.isFinite(weight) || weight < 0) throw new ProtocolError('BAD_WEIGHT', `weight must be a finite number ≥ 0, got ${weight}`);
}

export function validateParticipants(participants: readonly Participant[], maxRank: number): void {
  checkMaxRank(maxRank);
  if (!Array.isArray(participants)) throw new ProtocolError('BAD_PARTICIPANTS', 'participants must be an array');
  for (const p of participants) {
    if (!Number.isInteger(p.rank) || p.rank < 1 || p.rank > maxRank) throw new ProtocolError('BAD_RANK', `participant rank must be an integer in [1, ${maxRank}], got ${p.rank}`);
    checkWeight(p.weight);
  }
}

/** W_j = Σ_{i: r_i > j} w_i for j < maxRank: the public per-slot weight sums. */
export function slotWeightSums(participants: readonly Participant[], maxRank: number): Float64Array {
  validateParticipants(participants, maxRank);
  const w = new Float64Array(maxRank);
  for (const p of participants) for (let j = 0; j < p.rank; j++) w[j] = w[j]! + p.weight;
  return w;
}

/** Checks that `previous` is a well-formed adapter at maxRank (A [maxRank, in], B [out, maxRank], matching pairs). */
export function validateGlobal(previous: LoraAdapter, maxRank: number): void {
  checkMaxRank(maxRank);
  if (previous.config.r !== maxRank) throw new ConfigError(`global adapter has r=${previous.config.r}, expected max rank ${maxRank}`);
  const inOut = new Map<string, { a?: number; b?: number }>();
  for (const [name, t] of previous.tensors) {
    const p = parseLoraName(name);
    if (!p) continue;
    if (t.shape.length !== 2 || t.data.length !== t.shape[0]! * t.shape[1]!) throw new ConfigError(`global ${name} is not a well-formed matrix`);
    if (slotDim(p.factor, t) !== maxRank) throw new ConfigError(`global ${name} has rank ${slotDim(p.factor, t)}, expected ${maxRank}`);
    const e = inOut.get(p.module) ?? {};
    if (p.factor === 'A') e.a = t.shape[1]!; else e.b = t.shape[0]!;
    inOut.set(p.module, e);
  }
  for (const [module, e] of inOut) {
    if (e.a === undefined || e.b === undefined) throw new ConfigError(`global adapter has only one LoRA factor for module ${module}`);
  }
}

function assertFinite(name: string, data: Float32Array): void {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i]!)) throw new ProtocolError('NON_FINITE', `${name} contains a non-finite value at ${i}`);
  }
}

export function checkServerOptions(options: ServerOptions): void {
  if (typeof options !== 'object' || options === null) throw new ConfigError('server options must be an object { maxRank, seed }');
  checkMaxRank(options.maxRank);
  if (!Number.isSafeInteger(options.seed) || options.seed < 0) throw new ConfigError(`seed must be a non-negative safe integer, got ${options.seed}`);
  if (options.optimizer !== undefined) checkServerOpt(options.optimizer);
}

/** The server of a linear strategy: nothing to remember, the average is the next global adapter. */
class StatelessServer implements StrategyServer {
  readonly strategy: Strategy;

  constructor(strategy: Strategy, options: ServerOptions) {
    checkServerOptions(options);
    this.strategy = strategy;
  }

  step(_previous: LoraAdapter, averaged: LoraAdapter): LoraAdapter {
    return averaged;
  }

  serialize(): SavedServerState {
    return { meta: {}, tensors: new Map() };
  }

  restore(saved: SavedServerState): void {
    // meta is ignored on purpose: checkpoints written before servers existed carry unrelated fields there
    if (!saved || !(saved.tensors instanceof Map)) throw new ConfigError(`${this.strategy.name}: saved server state must be { meta, tensors: Map }`);
    const opt = typeof saved.meta === 'object' && saved.meta !== null && !Array.isArray(saved.meta) ? saved.meta.serverOptimizer : undefined;
    if (opt !== undefined) throw new ConfigError(`${this.strategy.name}: the state was saved with server optimizer ${JSON.stringify(opt)}; this run has none (pass the same --server-opt settings to resume)`);
    if (saved.tensors.size > 0) throw new ConfigError(`${this.strategy.name} keeps no server state, but the saved state holds ${saved.tensors.size} tensors (saved under another strategy?)`);
  }
}

class LinearStrategy implements Strategy {
  readonly name: StrategyName;
  readonly description: string;
  readonly refactorable: boolean;
  readonly #spec: LinearStrategySpec;

  constructor(spec: LinearStrategySpec) {
    this.#spec = { ...spec };
    this.name = spec.name;
    this.description = spec.description;
    this.refactorable = spec.refactorable;
  }

  isShared(name: string): boolean {
    const p = parseLoraName(name);
    // DoRA magnitude vectors are shared under every linear strategy (a client may keep them by glob)
    if (!p) return parseMagnitudeName(name) !== null;
    return p.factor === 'A' ? this.#spec.shareA : this.#spec.shareB;
  }

  isPersonal(name: string): boolean {
    const p = parseLoraName(name);
    if (!p) return false;
    return p.factor === 'A' ? this.#spec.personalA : this.#spec.personalB;
  }

  isTrainable(name: string): boolean {
    const p = parseLoraName(name);
    if (!p) return parseMagnitudeName(name) !== null;
    return p.factor === 'A' ? this.#spec.trainA : true;
  }

  contribution(name: string, t: Tensor32, weight: number, maxRank: number): Tensor32 {
    checkMaxRank(maxRank);
    checkWeight(weight);
    const p = parseLoraName(name);
    if (!p && parseMagnitudeName(name) && this.isShared(name)) return magnitudeContribution(name, t, weight);
    if (!p || !this.isShared(name)) throw new FedloraError('NOT_SHARED', `${this.name}: ${name} is not shared and must not be uploaded`);
    if (t.shape.length !== 2 || t.data.length !== t.shape[0]! * t.shape[1]!) throw new ProtocolError('BAD_SHAPE', `${name}: not a well-formed matrix [${t.shape}]`);
    const r = slotDim(p.factor, t);
    if (r < 1 || r > maxRank) throw new ProtocolError('BAD_RANK', `${name}: rank ${r} outside [1, ${maxRank}]`);
    assertFinite(name, t.data);
    const padded = p.factor === 'A' ? resizeRows(t, maxRank) : resizeCols(t, maxRank);
    const d = padded.data;
    for (let i = 0; i < d.length; i++) d[i] = d[i]! * weight;
    return padded;
  }

  finalize(sum: TensorMap, participants: readonly Participant[], previous: LoraAdapter, maxRank: number): LoraAdapter {
    validateGlobal(previous, maxRank);
    const slotW = slotWeightSums(participants, maxRank);
    const total = participants.reduce((s, p) => s + p.weight, 0);
    const shared = [...previous.tensors.keys()].filter((k) => this.isShared(k));
    for (const k of sum.keys()) {
      if (!this.isShared(k) || !previous.tensors.has(k)) throw new ProtocolError('UNEXPECTED_TENSOR', `${this.name}: sum holds ${k}, which is not a shared tensor of the global adapter`);
    }
    const tensors: TensorMap = new Map();
    for (const [name, prev] of previous.tensors) {
      if (!this.isShared(name)) { tensors.set(name, { shape: [...prev.shape], data: new Float32Array(prev.data) }); continue; }
      const s = sum.get(name);
      if (!s) throw new ProtocolError('MISSING_TENSOR', `${this.name}: sum lacks shared tensor ${name}`);
      if (parseMagnitudeName(name)) { tensors.set(name, finalizeMagnitude(name, s, prev, total)); continue; }
      if (s.shape.length !== 2 || s.shape[0] !== prev.shape[0] || s.shape[1] !== prev.shape[1] || s.data.length !== prev.data.length) {
        throw new ProtocolError('BAD_SHAPE', `${name}: sum has shape [${s.shape}], global has [${prev.shape}]`);
      }
      assertFinite(name, s.data);
      const factor = parseLoraName(name)!.factor;
      const cols = prev.shape[1]!;
      const out = new Float32Array(prev.data.length);
      for (let k = 0; k < out.length; k++) {
        const slot = factor === 'A' ? Math.floor(k / cols) : k % cols;
        const covered = slotW[slot]!;
        if (covered > 0) out[k] = s.data[k]! / (this.#spec.divisor === 'slot' ? covered : total);
        else out[k] = prev.data[k]!;
      }
      tensors.set(name, { shape: [...prev.shape], data: out });
    }
    const untrained = [...slotW].filter((w) => w === 0).length;
    log.debug(`${this.name}: ${participants.length} participants, total weight ${total}, ${shared.length} shared tensors, ${untrained}/${maxRank} slots kept from previous`);
    return { config: { ...previous.config, targetModules: [...previous.config.targetModules] }, tensors };
  }

  init(moduleShapes: Map<string, { in: number; out: number }>, maxRank: number, alpha: number, seed: number, base: Omit<LoraConfig, 'r' | 'loraAlpha'>): LoraAdapter {
    return initLoraAdapter(moduleShapes, maxRank, alpha, seed, base);
  }

  createServer(options: ServerOptions): StrategyServer {
    checkServerOptions(options);
    const make = this.#spec.server;
    const { optimizer, ...plain } = options;
    const opt = optimizer === undefined ? null : checkServerOpt(optimizer);
    if (opt && make) throw new ConfigError(`strategy ${this.name} keeps its own server state; a server optimiser would stack on it (use a linear strategy such as rank-aware with the optimiser instead)`);
    const inner = make ? make(this, plain) : new StatelessServer(this, plain);
    return opt ? withServerOptimizer(inner, opt, plain) : inner;
  }
}

/** A DoRA magnitude vector [out] as a contribution: no rank slots, so no padding; weight times the values. */
export function magnitudeContribution(name: string, t: Tensor32, weight: number): Tensor32 {
  checkWeight(weight);
  if (t.shape.length !== 1 || t.data.length !== t.shape[0]) throw new ProtocolError('BAD_SHAPE', `${name}: a DoRA magnitude must be a vector, has shape [${t.shape}]`);
  assertFinite(name, t.data);
  const out = new Float32Array(t.data.length);
  for (let i = 0; i < out.length; i++) out[i] = t.data[i]! * weight;
  return { shape: [...t.shape], data: out };
}

/** Σ w_i m_i / Σ w_i over the clients sharing the magnitude; with no weight the previous value stays. */
export function finalizeMagnitude(name: string, s: Tensor32, prev: Tensor32, total: number): Tensor32 {
  if (s.shape.length !== 1 || prev.shape.length !== 1 || s.shape[0] !== prev.shape[0] || s.data.length !== prev.data.length) {
    throw new ProtocolError('BAD_SHAPE', `${name}: sum has shape [${s.shape}], global has [${prev.shape}]`);
  }
  assertFinite(name, s.data);
  const out = new Float32Array(prev.data);
  if (total > 0) for (let k = 0; k < out.length; k++) out[k] = s.data[k]! / total;
  return { shape: [...prev.shape], data: out };
}

/** A strategy from its declarative spec (register it with registerStrategy to make it selectable by name). */
export function linearStrategy(spec: LinearStrategySpec): Strategy {
  if (typeof spec !== 'object' || spec === null) throw new ConfigError('strategy spec must be an object');
  for (const k of ['shareA', 'shareB', 'personalA', 'personalB', 'trainA', 'refactorable'] as const) {
    if (typeof spec[k] !== 'boolean') throw new ConfigError(`strategy ${spec.name}: ${k} must be true or false`);
  }
  if (spec.divisor !== 'total' && spec.divisor !== 'slot') throw new ConfigError(`strategy ${spec.name}: divisor must be "total" or "slot"`);
  // a personal factor is never uploaded, and an untrained (frozen) factor has nothing personal to keep
  if ((spec.personalA && spec.shareA) || (spec.personalB && spec.shareB)) throw new ConfigError(`strategy ${spec.name}: a factor cannot be both shared and personal`);
  if (spec.personalA && !spec.trainA) throw new ConfigError(`strategy ${spec.name}: a frozen A cannot be personal`);
  if (!spec.shareA && !spec.shareB) throw new ConfigError(`strategy ${spec.name}: shares nothing`);
  return new LinearStrategy(spec);
}

/** The tensors of `global` that travel under `strategy`, as the round's flat secure-aggregation layout. */
export function sharedLayout(strategy: Strategy, global: LoraAdapter): FlatLayout {
  return makeLayout([...global.tensors].filter(([k]) => strategy.isShared(k)).map(([name, t]) => ({ name, shape: t.shape })));
}

export interface ClientUpdate { tensors: TensorMap; rank: number; weight: number }

/**
 * Aggregation without secure aggregation (`--insecure-aggregation`, tests): Σ contributions in
 * float64, then finalize. Only shared tensors are read; each must be present at the client's rank.
 */
export function aggregatePlain(strategy: Strategy, updates: readonly ClientUpdate[], previous: LoraAdapter, maxRank: number): LoraAdapter {
  validateGlobal(previous, maxRank);
  const participants = updates.map((u) => ({ rank: u.rank, weight: u.weight }));
  validateParticipants(participants, maxRank);
  const shared = [...previous.tensors].filter(([k]) => strategy.isShared(k));
  const acc = new Map(shared.map(([k, t]) => [k, new Float64Array(t.data.length)]));
  updates.forEach((u, i) => {
    for (const k of u.tensors.keys()) {
      if (strategy.isShared(k) && !previous.tensors.has(k)) throw new ProtocolError('UNEXPECTED_TENSOR', `update ${i}: ${k} is not in the global adapter`);
    }
    for (const [name, prev] of shared) {
      const t = u.tensors.get(name);
      if (!t) throw new ProtocolError('MISSING_TENSOR', `update ${i}: missing shared tensor ${name}`);
      if (parseMagnitudeName(name)) {
        if (t.shape.length !== 1 || t.shape[0] !== prev.shape[0]) throw new ProtocolError('BAD_SHAPE', `update ${i}: ${name} has shape [${t.shape}], global has [${prev.shape}]`);
        const c = strategy.contribution(name, t, u.weight, maxRank);
        const a = acc.get(name)!;
        for (let k = 0; k < a.length; k++) a[k] = a[k]! + c.data[k]!;
        continue;
      }
      const factor = parseLoraName(name)?.factor;
      // a LoRA-XS core R is [rank, rank]; A is [rank, in], B [out, rank]
      const other = factor === 'A' ? [t.shape[1], prev.shape[1]] : factor === 'B' ? [t.shape[0], prev.shape[0]] : [t.shape[1], u.rank];
      if (t.shape.length !== 2 || (factor ? slotDim(factor, t) : t.shape[0]) !== u.rank || other[0] !== other[1]) {
        throw new ProtocolError('BAD_SHAPE', `update ${i}: ${name} has shape [${t.shape}], expected rank ${u.rank} and global shape [${prev.shape}]`);
      }
      const c = strategy.contribution(name, t, u.weight, maxRank);
      const a = acc.get(name)!;
      for (let k = 0; k < a.length; k++) a[k] = a[k]! + c.data[k]!;
    }
  });
  const sum: TensorMap = new Map(shared.map(([k, t]) => [k, { shape: [...t.shape], data: Float32Array.from(acc.get(k)!) }]));
  return strategy.finalize(sum, participants, previous, maxRank);
}
