/**
 * `lora-xs`: federated LoRA-XS (shared/lora/xs.ts). Every participant holds the same frozen factors
 * (lora_B = U_r Σ_r, lora_A = V_rᵀ from the truncated SVD of the base weight, computed once by the
 * coordinator and shipped inside the signed global adapter); only the core R [r, r] per module is
 * trained and uploaded: r² values per module instead of (in + out)·r.
 *
 * Averaging R is exact: with shared factors ΔW_i = s·B R_i A is linear in R_i, so at equal ranks the
 * weighted mean of the cores gives exactly the weighted mean of the client updates ΔW_i (with mixed
 * ranks, each core element is the weighted mean over the clients that trained it).
 *
 * Heterogeneous ranks nest because factors are ordered by singular value: a client of rank r' gets
 * the first r' rows of A, columns of B and the leading r'×r' block of R (truncateRank), and uploads
 * that block zero-padded to maxRank×maxRank. Element (i, j) of R belongs to rank slot max(i, j) (the
 * layout's slotAxis 2); it is averaged over the clients whose rank exceeds max(i, j) (rank-aware), and
 * keeps its previous value when nobody trained it. The scale alpha/r is kept equal across ranks (as
 * for every strategy), so R(i, j) means the same thing on every client.
 */
import { ConfigError, FedloraError, ProtocolError } from '../errors.js';
import { logger } from '../log.js';
import { loraAName, loraBName, parseXsName, xsRName, type LoraAdapter, type LoraConfig } from '../lora/adapter.js';
import { checkXsShapes, xsAdapter } from '../lora/xs.js';
import type { Tensor32, TensorMap } from '../tensor.js';
import { initLoraA, seededStream } from './init.js';
import { checkServerOpt } from './server-opt.js';
import {
  checkMaxRank, checkServerOptions, slotWeightSums, validateGlobal,
  type Participant, type SavedServerState, type ServerOptions, type Strategy, type StrategyServer,
} from './strategy.js';

const log = logger('fedlora:aggregation');

export const LORA_XS = 'lora-xs';

function checkWeight(weight: number): void {
  if (typeof weight !== 'number' || !Number.isFinite(weight) || weight < 0) throw new ProtocolError('BAD_WEIGHT', `weight must be a finite number ≥ 0, got ${weight}`);
}

function assertFinite(name: string, data: Float32Array): void {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i]!)) throw new ProtocolError('NON_FINITE', `${name} contains a non-finite value at ${i}`);
  }
}

/** R zero-padded to n×n (leading block kept). */
function padSquare(t: Tensor32, n: number): Tensor32 {
  const r = t.shape[0]!;
  const out = new Float32Array(n * n);
  for (let i = 0; i < Math.min(r, n); i++) out.set(t.data.subarray(i * r, i * r + Math.min(r, n)), i * n);
  return { shape: [n, n], data: out };
}

/** Nothing to remember: the average is the next global adapter. */
class XsServer implements StrategyServer {
  readonly strategy: Strategy;
  constructor(strategy: Strategy, options: ServerOptions) {
    checkServerOptions(options);
    if (options.optimizer !== undefined && checkServerOpt(options.optimizer) !== null) {
      throw new ConfigError(`strategy ${LORA_XS} does not take a server optimiser (its moments are per LoRA factor); use rank-aware or fedit with --server-opt`);
    }
    this.strategy = strategy;
  }

  step(_previous: LoraAdapter, averaged: LoraAdapter): LoraAdapter { return averaged; }

  serialize(): SavedServerState { return { meta: {}, tensors: new Map() }; }

  restore(saved: SavedServerState): void {
    if (!saved || !(saved.tensors instanceof Map)) throw new ConfigError(`${LORA_XS}: saved server state must be { meta, tensors: Map }`);
    if (saved.tensors.size > 0) throw new ConfigError(`${LORA_XS} keeps no server state, but the saved state holds ${saved.tensors.size} tensors (saved under another strategy?)`);
  }
}

export class LoraXsStrategy implements Strategy {
  readonly name = LORA_XS;
  readonly description = 'LoRA-XS: frozen factors from the base weights\' truncated SVD (identical on every client), only the r×r core R per module is trained and averaged rank-aware; upload r² per module';
  readonly refactorable = false;

  isShared(name: string): boolean { return parseXsName(name) !== null; }
  isPersonal(_name: string): boolean { return false; }
  isTrainable(name: string): boolean { return parseXsName(name) !== null; }

  contribution(name: string, t: Tensor32, weight: number, maxRank: number): Tensor32 {
    checkMaxRank(maxRank);
    checkWeight(weight);
    if (!this.isShared(name)) throw new FedloraError('NOT_SHARED', `${this.name}: ${name} is not shared and must not be uploaded`);
    if (t.shape.length !== 2 || t.shape[0] !== t.shape[1] || t.data.length !== t.shape[0]! * t.shape[1]!) throw new ProtocolError('BAD_SHAPE', `${name}: a LoRA-XS core must be a square matrix, got [${t.shape}]`);
    const r = t.shape[0]!;
    if (r < 1 || r > maxRank) throw new ProtocolError('BAD_RANK', `${name}: rank ${r} outside [1, ${maxRank}]`);
    assertFinite(name, t.data);
    const padded = padSquare(t, maxRank);
    const d = padded.data;
    for (let i = 0; i < d.length; i++) d[i] = d[i]! * weight;
    return padded;
  }

  finalize(sum: TensorMap, participants: readonly Participant[], previous: LoraAdapter, maxRank: number): LoraAdapter {
    validateGlobal(previous, maxRank);
    checkXsShapes(previous.tensors, 'global adapter');
    const slotW = slotWeightSums(participants, maxRank);
    for (const k of sum.keys()) {
      if (!this.isShared(k) || !previous.tensors.has(k)) throw new ProtocolError('UNEXPECTED_TENSOR', `${this.name}: sum holds ${k}, which is not a shared tensor of the global adapter`);
    }
    const tensors: TensorMap = new Map();
    for (const [name, prev] of previous.tensors) {
      if (!this.isShared(name)) { tensors.set(name, { shape: [...prev.shape], data: new Float32Array(prev.data) }); continue; }
      const s = sum.get(name);
      if (!s) throw new ProtocolError('MISSING_TENSOR', `${this.name}: sum lacks shared tensor ${name}`);
      if (s.shape.length !== 2 || s.shape[0] !== maxRank || s.shape[1] !== maxRank || s.data.length !== prev.data.length) {
        throw new ProtocolError('BAD_SHAPE', `${name}: sum has shape [${s.shape}], global has [${prev.shape}]`);
      }
      assertFinite(name, s.data);
      const out = new Float32Array(prev.data.length);
      for (let i = 0; i < maxRank; i++) {
        for (let j = 0; j < maxRank; j++) {
          const k = i * maxRank + j;
          const covered = slotW[Math.max(i, j)]!;
          out[k] = covered > 0 ? s.data[k]! / covered : prev.data[k]!;
        }
      }
      tensors.set(name, { shape: [maxRank, maxRank], data: out });
    }
    log.debug(`${this.name}: ${participants.length} participants, ${[...slotW].filter((w) => w === 0).length}/${maxRank} slots kept from previous`);
    return { config: { ...previous.config, targetModules: [...previous.config.targetModules] }, tensors };
  }

  /**
   * Without the base weights (unit tests, in-process harnesses): seeded stand-in factors, A from
   * the PEFT init stream and B from a second seeded stream, R = 0. A real run starts from
   * `xsInitFromCheckpoint` (shared/lora/xs-checkpoint.ts), which the coordinator calls for this strategy.
   */
  init(moduleShapes: Map<string, { in: number; out: number }>, maxRank: number, alpha: number, seed: number, base: Omit<LoraConfig, 'r' | 'loraAlpha'>): LoraAdapter {
    checkMaxRank(maxRank);
    if (moduleShapes.size === 0) throw new ConfigError('no target modules to initialise');
    const factors: TensorMap = new Map();
    for (const module of [...moduleShapes.keys()].sort()) {
      const { in: inF, out } = moduleShapes.get(module)!;
      if (!Number.isInteger(out) || out < 1) throw new ConfigError(`module ${module}: out_features must be a positive integer, got ${out}`);
      factors.set(loraAName(module), initLoraA(module, maxRank, inF, seed));
      const next = seededStream(seed, `lora-xs:B:${module}`);
      const b = new Float32Array(out * maxRank);
      for (let i = 0; i < b.length; i++) b[i] = ((next() + 0.5) / 2 ** 32) * 2 - 1;
      factors.set(loraBName(module), { shape: [out, maxRank], data: b });
    }
    return xsAdapter(factors, maxRank, alpha, base);
  }

  createServer(options: ServerOptions): StrategyServer {
    return new XsServer(this, options);
  }
}

export function loraXsStrategy(): Strategy { return new LoraXsStrategy(); }

/** Whether a strategy needs the LoRA-XS frozen factors from the base checkpoint to start a run. */
export function needsXsFactors(strategy: Strategy): boolean {
  return strategy instanceof LoraXsStrategy;
}

export { xsRName };
