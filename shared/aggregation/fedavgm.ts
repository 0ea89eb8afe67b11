/**
 * FedAvgM (Hsu, Qi & Brown 2019, "Measuring the effects of non-identical data distribution"):
 * the round's rank-aware slot average is treated as a pseudo-gradient step Δ = avg − prev, and the
 * server applies heavy-ball momentum to it:
 *
 *   m ← β·m + Δ,   next = prev + η·m        (β = 0.5, η = 1 by default)
 *
 * Clients see an ordinary linear strategy (A and B shared, averaged per slot), so secure aggregation
 * is unaffected: the momentum is applied after unmasking, on the coordinator only.
 *
 * Not refactorable: the QR+SVD refactor rotates each module's rank slots, and momentum accumulated
 * in the old slot basis would then be added to unrelated directions.
 *
 * Slots nobody trained this round keep both their value and their momentum, so a slot that only
 * high-rank clients reach is not pushed by stale momentum in rounds those clients sit out.
 * Momentum is kept in float32 (it is what a checkpoint stores), so a restored server continues bit for bit.
 */
import { ConfigError } from '../errors.js';
import { logger } from '../log.js';
import { parseLoraName, type LoraAdapter } from '../lora/adapter.js';
import type { TensorMap } from '../tensor.js';
import {
  checkServerOptions, linearStrategy, slotDim, validateGlobal,
  type JsonValue, type SavedServerState, type ServerOptions, type Strategy, type StrategyServer, type TrainedSlots,
} from './strategy.js';

const log = logger('fedlora:aggregation:fedavgm');

export interface FedAvgMOptions {
  /** Registry name; default `fedavgm`. */
  name?: string;
  description?: string;
  /** Momentum β ∈ [0, 1); default 0.5. */
  beta?: number;
  /** Server learning rate η > 0; default 1. */
  eta?: number;
}

export const FEDAVGM_DEFAULTS = { beta: 0.5, eta: 1 } as const;

export function fedAvgMStrategy(options: FedAvgMOptions = {}): Strategy {
  const beta = options.beta ?? FEDAVGM_DEFAULTS.beta;
  const eta = options.eta ?? FEDAVGM_DEFAULTS.eta;
  if (typeof beta !== 'number' || !(beta >= 0 && beta < 1)) throw new ConfigError(`fedavgm: beta must be in [0, 1), got ${beta}`);
  if (typeof eta !== 'number' || !Number.isFinite(eta) || eta <= 0) throw new ConfigError(`fedavgm: eta must be a finite number > 0, got ${eta}`);
  return linearStrategy({
    name: options.name ?? 'fedavgm',
    description: options.description
      ?? `FedAvgM: rank-aware slot average, then server momentum (β = ${beta}, η = ${eta}) on the round's change; slots nobody trained keep value and momentum; never refactored`,
    shareA: true, shareB: true, personalA: false, personalB: false, trainA: true, divisor: 'slot', refactorable: false,
    server: (strategy, opts) => new MomentumServer(strategy, opts, beta, eta),
  });
}

/** Slots of `name` in which `averaged` differs from `previous` (the fallback when step gets no TrainedSlots). */
function changedSlots(factor: 'A' | 'B', prev: Float32Array, avg: Float32Array, cols: number, maxRank: number): boolean[] {
  const out = new Array<boolean>(maxRank).fill(false);
  for (let k = 0; k < prev.length; k++) {
    // Object.is: −0 vs +0 is a change, NaN never occurs (finalize refuses non-finite sums)
    if (!Object.is(prev[k], avg[k])) out[factor === 'A' ? Math.floor(k / cols) : k % cols] = true;
  }
  return out;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

class MomentumServer implements StrategyServer {
  readonly strategy: Strategy;
  readonly #maxRank: number;
  readonly #beta: number;
  readonly #eta: number;
  /** Per shared tensor, at maxRank; created at the first step that sees the tensor. */
  #momentum: Map<string, Float32Array> = new Map();
  #steps = 0;

  constructor(strategy: Strategy, options: ServerOptions, beta: number, eta: number) {
    checkServerOptions(options);
    this.strategy = strategy;
    this.#maxRank = options.maxRank;
    this.#beta = beta;
    this.#eta = eta;
  }

  step(previous: LoraAdapter, averaged: LoraAdapter, trained?: TrainedSlots): LoraAdapter {
    const maxRank = this.#maxRank;
    validateGlobal(previous, maxRank);
    validateGlobal(averaged, maxRank);
    const name = this.strategy.name;
    for (const k of averaged.tensors.keys()) if (!previous.tensors.has(k)) throw new ConfigError(`${name}: averaged adapter has ${k}, the previous one does not`);
    for (const k of this.#momentum.keys()) {
      if (!previous.tensors.has(k)) throw new ConfigError(`${name}: server state has momentum for ${k}, which the global adapter lacks (state from another model?)`);
    }
    // stage everything first: a refused step must leave the state as it was
    const staged = new Map<string, Float32Array>();
    const tensors: TensorMap = new Map();
    let trainedSlots = 0;
    for (const [k, prev] of previous.tensors) {
      const avg = averaged.tensors.get(k);
      if (!avg) throw new ConfigError(`${name}: averaged adapter lacks ${k}`);
      if (avg.shape.length !== prev.shape.length || avg.shape.some((d, i) => d !== prev.shape[i]) || avg.data.length !== prev.data.length) {
        throw new ConfigError(`${name}: ${k} has shape [${avg.shape}] after averaging, [${prev.shape}] before`);
      }
      // DoRA magnitudes (no rank slots) take the plain average, without momentum
      if (!this.strategy.isShared(k) || !parseLoraName(k)) { tensors.set(k, { shape: [...avg.shape], data: new Float32Array(avg.data) }); continue; }
      const factor = parseLoraName(k)!.factor;
      const cols = prev.shape[1]!;
      const mask = trained ? trained.get(k) : changedSlots(factor, prev.data, avg.data, cols, maxRank);
      if (mask !== undefined && mask.length !== maxRank) throw new ConfigError(`${name}: trained-slot mask for ${k} has ${mask.length} entries, max rank is ${maxRank}`);
      const old = this.#momentum.get(k);
      if (old !== undefined && old.length !== prev.data.length) throw new ConfigError(`${name}: momentum for ${k} has ${old.length} values, the tensor ${prev.data.length}`);
      const m = old ? new Float32Array(old) : new Float32Array(prev.data.length);
      const out = new Float32Array(prev.data);
      if (mask) {
        for (let i = 0; i < out.length; i++) {
          if (!mask[factor === 'A' ? Math.floor(i / cols) : i % cols]) continue;
          m[i] = this.#beta * m[i]! + (avg.data[i]! - prev.data[i]!);
          out[i] = prev.data[i]! + this.#eta * m[i]!;
        }
        trainedSlots += mask.filter(Boolean).length;
      }
      staged.set(k, m);
      tensors.set(k, { shape: [...prev.shape], data: out });
    }
    for (const [k, m] of staged) this.#momentum.set(k, m);
    this.#steps++;
    log.debug(`${name}: step ${this.#steps}, ${staged.size} tensors, ${trainedSlots} trained tensor slots`);
    return { config: { ...averaged.config, targetModules: [...averaged.config.targetModules] }, tensors };
  }

  serialize(): SavedServerState {
    const meta: JsonValue = { beta: this.#beta, eta: this.#eta, steps: this.#steps };
    const tensors: TensorMap = new Map();
    for (const k of [...this.#momentum.keys()].sort()) {
      const m = this.#momentum.get(k)!;
      const p = parseLoraName(k)!;
      const other = m.length / this.#maxRank;
      tensors.set(k, { shape: p.factor === 'A' ? [this.#maxRank, other] : [other, this.#maxRank], data: new Float32Array(m) });
    }
    return { meta, tensors };
  }

  restore(saved: SavedServerState): void {
    const name = this.strategy.name;
    if (!isRecord(saved) || !(saved.tensors instanceof Map)) throw new ConfigError(`${name}: saved server state must be { meta, tensors: Map }`);
    const meta = saved.meta;
    if (!isRecord(meta)) throw new ConfigError(`${name}: saved server meta must be an object`);
    // a checkpoint written with another β or η would silently change the optimiser mid-run
    if (meta.beta !== this.#beta || meta.eta !== this.#eta) {
      throw new ConfigError(`${name}: state was saved with beta=${JSON.stringify(meta.beta)}, eta=${JSON.stringify(meta.eta)}; this server runs beta=${this.#beta}, eta=${this.#eta}`);
    }
    const steps = meta.steps;
    if (typeof steps !== 'number' || !Number.isSafeInteger(steps) || steps < 0) throw new ConfigError(`${name}: saved step counter must be a non-negative integer, got ${JSON.stringify(steps)}`);
    const momentum = new Map<string, Float32Array>();
    for (const [k, t] of saved.tensors) {
      const p = parseLoraName(k);
      if (!p || !this.strategy.isShared(k)) throw new ConfigError(`${name}: saved momentum for ${k}, which is not a shared LoRA tensor`);
      if (!t || !(t.data instanceof Float32Array) || !Array.isArray(t.shape) || t.shape.length !== 2 || t.data.length !== t.shape[0]! * t.shape[1]!) {
        throw new ConfigError(`${name}: saved momentum ${k} is not a well-formed float32 matrix`);
      }
      if (slotDim(p.factor, t) !== this.#maxRank) throw new ConfigError(`${name}: saved momentum ${k} has rank ${slotDim(p.factor, t)}, this server runs max rank ${this.#maxRank}`);
      if (!t.data.every(Number.isFinite)) throw new ConfigError(`${name}: saved momentum ${k} holds non-finite values`);
      momentum.set(k, new Float32Array(t.data));
    }
    this.#momentum = momentum;
    this.#steps = steps;
  }
}
