/**
 * Server optimisers (Reddi et al. 2021, "Adaptive Federated Optimization"): the round's aggregate
 * is read as a pseudo-gradient Δ = averaged − previous and the coordinator takes an optimiser step
 * with it instead of adopting the average as it is:
 *
 *   fedavgm  m ← β1·m + Δ,                          x ← prev + η·m
 *   fedadam  m ← β1·m + (1−β1)·Δ,  v ← β2·v + (1−β2)·Δ²,                 x ← prev + η·m / (√v + τ)
 *   fedyogi  m ← β1·m + (1−β1)·Δ,  v ← v − (1−β2)·Δ²·sign(v − Δ²),       x ← prev + η·m / (√v + τ)
 *
 * elementwise, per shared LoRA tensor, with m = 0 and v = τ² at the start (Reddi's v₋₁ ≥ τ², no bias
 * correction, as in the paper). Any linear strategy's server can be wrapped (StrategyServer.step runs
 * first, the optimiser acts on its output), so it composes with fedit, ffa, rank-aware, fedsa and
 * registered strategies. It runs on the coordinator after unmasking, on the aggregate only, so
 * secure aggregation is unaffected.
 *
 * Only slots somebody trained this round move: untrained slots keep their value and their moments
 * (the TrainedSlots masks of aggregateRound), so stale momentum never pushes a slot nobody saw.
 *
 * Arithmetic: Δ and the new moments are formed in float64 and the step uses them before they are
 * rounded to the float32 buffers that a checkpoint stores; the next step reads the float32 buffers,
 * so a restored server continues bit for bit. With fedavgm, β1 = 0 and η = 1 the result is
 * prev + (avg − prev) in float64, rounded once: exactly `avg` (float32 differences are exact in
 * float64 unless the two values are 2^29 apart in magnitude).
 *
 * Refactor: aggregateRound steps in the basis clients trained in, then refactors, then calls
 * rebase() with each module's slot transforms (B' = B·T_B, A' = T_A·A). First moments are
 * pseudo-gradients of the factors and transform like them: m_A ← T_A·m_A, m_B ← m_B·T_B. The second
 * moment is a per-entry variance; rotating the entries of a vector g by T gives E[(Tg)_i²] =
 * Σ_j T_ij² E[g_j²] when distinct entries are uncorrelated, so v_A ← (T_A∘T_A)·v_A and
 * v_B ← v_B·(T_B∘T_B) (∘: elementwise square). That rule keeps v ≥ 0, is exact for slot
 * permutations and sign flips (what the refactor reduces to once the basis has settled), and keeps
 * Σv for orthogonal T. A module whose A is rank-deficient has no T_A: its moments are reset.
 *
 * Defaults (see SERVER_OPT_DEFAULTS): fedavgm η = 1, β1 = 0.5 (measured on the default scenario:
 * 85.9 % against 84.7 % without momentum; β 0.9 diverged). fedadam/fedyogi η = 1e-2, τ = 1e-3,
 * β1 = 0.9, β2 = 0.99 (Reddi's τ and betas). An adaptive server moves each entry by at most about η
 * per round, and a client's AdamW moves an entry by about its lr per step, so a round's Δ is at most
 * lr × local steps: 5e-3 × 8 = 4e-2 in the default scenario, 1e-3 × 20 = 2e-2 with the CLI defaults,
 * and smaller once averaged over disagreeing clients. η = 1e-2 keeps the server step at the size of
 * a typical client round; τ = 1e-3 sits below typical |Δ| so the step is adaptive there, and damps
 * entries that barely move (their step is ≈ (η/τ)·m). Measured with bench/server-opt.ts on the default
 * scenario (rounds 2–3): |Δ| p10 / p50 / p90 ≈ 1.6e-3 / 8.5e-3 / 2e-2 for A and B alike, so the steady
 * gain η/(|Δ| + τ) is ≈ 3.9 / 1.05 / 0.5 (1 is plain FedAvg) and the first step 0.3–0.5 × Δ.
 */
import { ConfigError } from '../errors.js';
import { logger } from '../log.js';
import { loraAName, loraBName, parseLoraName, type LoraAdapter } from '../lora/adapter.js';
import type { TensorMap } from '../tensor.js';
import type { ModuleTransforms } from './refactor.js';
import type { JsonValue, SavedServerState, ServerOptions, Strategy, StrategyServer, TrainedSlots } from './strategy.js';

const log = logger('fedlora:aggregation:server-opt');

export const SERVER_OPT_NAMES = ['none', 'fedavgm', 'fedadam', 'fedyogi'] as const;
export type ServerOptName = (typeof SERVER_OPT_NAMES)[number];

/** What callers pass (CLI, scenario, CoordinatorOptions): unset numbers take the optimiser's defaults. */
export interface ServerOptConfig {
  name: ServerOptName;
  /** Server learning rate η > 0. */
  lr?: number;
  /** First-moment decay β1 ∈ [0, 1) (fedavgm: the momentum β). */
  beta1?: number;
  /** Second-moment decay β2 ∈ [0, 1) (fedadam, fedyogi only). */
  beta2?: number;
  /** Adaptivity τ > 0 (fedadam, fedyogi only). */
  eps?: number;
}

/** A validated optimiser with every hyper-parameter set (fedavgm has no beta2/eps). */
export type ResolvedServerOpt =
  | { name: 'fedavgm'; lr: number; beta1: number }
  | { name: 'fedadam' | 'fedyogi'; lr: number; beta1: number; beta2: number; eps: number };

export const SERVER_OPT_DEFAULTS = {
  fedavgm: { lr: 1, beta1: 0.5 },
  fedadam: { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-3 },
  fedyogi: { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-3 },
} as const;

/** Prefixes of the moment tensors in SavedServerState (after them: the PEFT tensor name). */
const M_PREFIX = 'server_opt.m:';
const V_PREFIX = 'server_opt.v:';

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Validates a server optimiser setting and fills in the defaults; null for `none`. Every error is a
 * ConfigError naming the field: `serverOpt.lr` (or `<field>.lr`), or with `cli` the flag (`--server-lr`).
 */
export function checkServerOpt(cfg: unknown, field = 'serverOpt', cli = false): ResolvedServerOpt | null {
  const at = (k: string) => (cli ? `--server-${k === 'name' ? 'opt' : k}` : `${field}.${k}`);
  if (!isRecord(cfg)) throw new ConfigError(`${field} must be an object { name, lr?, beta1?, beta2?, eps? }, got ${JSON.stringify(cfg) ?? String(cfg)}`);
  const name = cfg.name;
  if (typeof name !== 'string' || !(SERVER_OPT_NAMES as readonly string[]).includes(name)) {
    throw new ConfigError(`${at('name')} must be one of ${SERVER_OPT_NAMES.join(', ')}, got ${JSON.stringify(name)}`);
  }
  const keys = name === 'none' ? ['name'] : name === 'fedavgm' ? ['name', 'lr', 'beta1'] : ['name', 'lr', 'beta1', 'beta2', 'eps'];
  for (const k of Object.keys(cfg)) {
    if (cfg[k] === undefined) continue;
    if (!keys.includes(k)) {
      throw new ConfigError(`${at(k)} has no meaning for server optimiser ${name}${['lr', 'beta1', 'beta2', 'eps'].includes(k) ? '' : ` (known: ${keys.join(', ')})`}`);
    }
  }
  if (name === 'none') return null;
  const num = (k: 'lr' | 'beta1' | 'beta2' | 'eps', dflt: number, ok: (x: number) => boolean, what: string): number => {
    const v = cfg[k];
    if (v === undefined) return dflt;
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw new ConfigError(`${at(k)} (${name}) must be ${what}, got ${JSON.stringify(v) ?? String(v)}`);
    return v;
  };
  const lrOk = (x: number) => x > 0 && x <= 1e3;
  const betaOk = (x: number) => x >= 0 && x < 1;
  if (name === 'fedavgm') {
    const d = SERVER_OPT_DEFAULTS.fedavgm;
    return { name, lr: num('lr', d.lr, lrOk, 'a number in (0, 1000]'), beta1: num('beta1', d.beta1, betaOk, 'a number in [0, 1)') };
  }
  const d = SERVER_OPT_DEFAULTS[name as 'fedadam' | 'fedyogi'];
  return {
    name: name as 'fedadam' | 'fedyogi',
    lr: num('lr', d.lr, lrOk, 'a number in (0, 1000]'),
    beta1: num('beta1', d.beta1, betaOk, 'a number in [0, 1)'),
    beta2: num('beta2', d.beta2, betaOk, 'a number in [0, 1)'),
    eps: num('eps', d.eps, (x) => x >= 1e-12 && x <= 1, 'a number in [1e-12, 1]'),
  };
}

/** One line for logs and status: `fedadam (lr 0.01, β1 0.9, β2 0.99, τ 0.001)`, or `none`. */
export function describeServerOpt(opt: ResolvedServerOpt | null): string {
  if (!opt) return 'none';
  return opt.name === 'fedavgm' ? `fedavgm (lr ${opt.lr}, β ${opt.beta1})` : `${opt.name} (lr ${opt.lr}, β1 ${opt.beta1}, β2 ${opt.beta2}, τ ${opt.eps})`;
}

/** The optimiser a server was wrapped with (null for a server without one). */
export function serverOptimizerOf(server: StrategyServer): ResolvedServerOpt | null {
  return server instanceof OptimizedServer ? { ...server.optimizer } : null;
}

/** Wraps `inner` (the strategy's own server) in the server optimiser `opt`. */
export function withServerOptimizer(inner: StrategyServer, opt: ResolvedServerOpt, options: Pick<ServerOptions, 'maxRank'>): StrategyServer {
  return new OptimizedServer(inner, opt, options.maxRank);
}

/** Slots of a tensor in which `averaged` differs from `previous` (the fallback when step gets no TrainedSlots). */
function changedSlots(factor: 'A' | 'B', prev: Float32Array, avg: Float32Array, cols: number, maxRank: number): boolean[] {
  const out = new Array<boolean>(maxRank).fill(false);
  for (let k = 0; k < prev.length; k++) {
    if (!Object.is(prev[k], avg[k])) out[factor === 'A' ? Math.floor(k / cols) : k % cols] = true;
  }
  return out;
}

interface Moments { m: Float32Array; v: Float32Array | null }

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

class OptimizedServer implements StrategyServer {
  readonly strategy: Strategy;
  readonly optimizer: ResolvedServerOpt;
  readonly #inner: StrategyServer;
  readonly #maxRank: number;
  /** Per shared tensor at maxRank, created at the first step that sees it. */
  #moments = new Map<string, Moments>();
  #steps = 0;

  constructor(inner: StrategyServer, opt: ResolvedServerOpt, maxRank: number) {
    this.#inner = inner;
    this.strategy = inner.strategy;
    this.optimizer = { ...opt };
    this.#maxRank = maxRank;
  }

  get #adaptive(): boolean { return this.optimizer.name !== 'fedavgm'; }

  step(previous: LoraAdapter, averaged: LoraAdapter, trained?: TrainedSlots): LoraAdapter {
    const name = `${this.strategy.name}+${this.optimizer.name}`;
    const maxRank = this.#maxRank;
    const base = this.#inner.step(previous, averaged, trained);
    for (const k of base.tensors.keys()) if (!previous.tensors.has(k)) throw new ConfigError(`${name}: averaged adapter has ${k}, the previous one does not`);
    for (const k of this.#moments.keys()) {
      if (!previous.tensors.has(k)) throw new ConfigError(`${name}: server state has moments for ${k}, which the global adapter lacks (state from another model?)`);
    }
    const o = this.optimizer;
    const tau = o.name === 'fedavgm' ? 0 : o.eps;
    const staged = new Map<string, Moments>();
    const tensors: TensorMap = new Map();
    let moved = 0;
    for (const [k, prev] of previous.tensors) {
      const avg = base.tensors.get(k);
      if (!avg) throw new ConfigError(`${name}: averaged adapter lacks ${k}`);
      if (!sameShape(avg.shape, prev.shape) || avg.data.length !== prev.data.length) throw new ConfigError(`${name}: ${k} has shape [${avg.shape}] after averaging, [${prev.shape}] before`);
      const p = parseLoraName(k);
      if (!p || !this.strategy.isShared(k) || prev.shape.length !== 2) { tensors.set(k, { shape: [...avg.shape], data: new Float32Array(avg.data) }); continue; }
      const cols = prev.shape[1]!;
      if ((p.factor === 'A' ? prev.shape[0] : cols) !== maxRank) throw new ConfigError(`${name}: ${k} has shape [${prev.shape}], not max rank ${maxRank}`);
      const mask = trained ? trained.get(k) : changedSlots(p.factor, prev.data, avg.data, cols, maxRank);
      if (mask !== undefined && mask.length !== maxRank) throw new ConfigError(`${name}: trained-slot mask for ${k} has ${mask.length} entries, max rank is ${maxRank}`);
      const old = this.#moments.get(k);
      if (old && old.m.length !== prev.data.length) throw new ConfigError(`${name}: moments for ${k} have ${old.m.length} values, the tensor ${prev.data.length}`);
      const m = old ? new Float32Array(old.m) : new Float32Array(prev.data.length);
      const v = !this.#adaptive ? null : old?.v ? new Float32Array(old.v) : new Float32Array(prev.data.length).fill(tau * tau);
      const out = new Float32Array(prev.data);
      if (mask) {
        for (let i = 0; i < out.length; i++) {
          if (!mask[p.factor === 'A' ? Math.floor(i / cols) : i % cols]) continue;
          const x = prev.data[i]!;
          const d = avg.data[i]! - x;
          if (o.name === 'fedavgm') {
            const mi = o.beta1 * m[i]! + d;
            m[i] = mi;
            out[i] = x + o.lr * mi;
          } else {
            const mi = o.beta1 * m[i]! + (1 - o.beta1) * d;
            const d2 = d * d;
            const vo = v![i]!;
            const vi = o.name === 'fedadam' ? o.beta2 * vo + (1 - o.beta2) * d2 : vo - (1 - o.beta2) * d2 * Math.sign(vo - d2);
            m[i] = mi;
            v![i] = vi;
            out[i] = x + (o.lr * mi) / (Math.sqrt(vi) + o.eps);
          }
        }
        moved += mask.filter(Boolean).length;
      }
      staged.set(k, { m, v });
      tensors.set(k, { shape: [...prev.shape], data: out });
    }
    // a refused step (thrown above) leaves the moments as they were
    for (const [k, mo] of staged) this.#moments.set(k, mo);
    this.#steps++;
    log.debug(`${name}: step ${this.#steps}, ${staged.size} tensors, ${moved} trained tensor slots`);
    return { config: { ...base.config, targetModules: [...base.config.targetModules] }, tensors };
  }

  rebase(transforms: ModuleTransforms): void {
    this.#inner.rebase?.(transforms);
    const next = new Map(this.#moments);
    let rotated = 0, reset = 0;
    for (const [module, t] of transforms) {
      const a = loraAName(module), b = loraBName(module);
      const ma = next.get(a), mb = next.get(b);
      if (!ma && !mb) continue;
      const r = t.r;
      if (r !== this.#maxRank || t.tB.length !== r * r || (t.tA && t.tA.length !== r * r)) throw new ConfigError(`${this.strategy.name}+${this.optimizer.name}: transform for ${module} is not ${this.#maxRank}×${this.#maxRank}`);
      if (!t.tA) { next.delete(a); next.delete(b); reset++; continue; }
      if (ma) next.set(a, { m: leftMul(t.tA, ma.m, r, false), v: ma.v && leftMul(t.tA, ma.v, r, true) });
      if (mb) next.set(b, { m: rightMul(mb.m, t.tB, r, false), v: mb.v && rightMul(mb.v, t.tB, r, true) });
      rotated++;
    }
    this.#moments = next;
    if (rotated || reset) log.debug(`${this.strategy.name}+${this.optimizer.name}: moments of ${rotated} module(s) rotated into the refactored basis, ${reset} reset`);
  }

  serialize(): SavedServerState {
    const inner = this.#inner.serialize();
    for (const k of inner.tensors.keys()) if (k.startsWith(M_PREFIX) || k.startsWith(V_PREFIX)) throw new ConfigError(`${this.strategy.name}: inner server state uses the reserved name ${k}`);
    const tensors: TensorMap = new Map(inner.tensors);
    const r = this.#maxRank;
    for (const k of [...this.#moments.keys()].sort()) {
      const mo = this.#moments.get(k)!;
      const other = mo.m.length / r;
      const shape = parseLoraName(k)!.factor === 'A' ? [r, other] : [other, r];
      tensors.set(M_PREFIX + k, { shape, data: new Float32Array(mo.m) });
      if (mo.v) tensors.set(V_PREFIX + k, { shape: [...shape], data: new Float32Array(mo.v) });
    }
    const meta: JsonValue = { serverOptimizer: { ...this.optimizer, steps: this.#steps }, inner: inner.meta };
    return { meta, tensors };
  }

  restore(saved: SavedServerState): void {
    const name = `${this.strategy.name}+${this.optimizer.name}`;
    if (!isRecord(saved) || !(saved.tensors instanceof Map)) throw new ConfigError(`${name}: saved server state must be { meta, tensors: Map }`);
    const meta = saved.meta;
    const so = isRecord(meta) ? meta.serverOptimizer : undefined;
    if (!isRecord(meta) || !isRecord(so)) throw new ConfigError(`${name}: the state was saved without a server optimiser; this run uses ${describeServerOpt(this.optimizer)}`);
    // other hyper-parameters would silently change the optimiser mid-run
    const want = this.optimizer as unknown as Record<string, number | string>;
    const keys = [...new Set([...Object.keys(want), ...Object.keys(so).filter((k) => k !== 'steps')])];
    const differ = keys.filter((k) => so[k] !== want[k]);
    if (differ.length) {
      throw new ConfigError(`${name}: the state was saved with server optimiser ${differ.map((k) => `${k}=${JSON.stringify(so[k]) ?? 'unset'}`).join(', ')}; this run has ${differ.map((k) => `${k}=${want[k] ?? 'unset'}`).join(', ')}`);
    }
    const steps = so.steps;
    if (typeof steps !== 'number' || !Number.isSafeInteger(steps) || steps < 0) throw new ConfigError(`${name}: saved step counter must be a non-negative integer, got ${JSON.stringify(steps)}`);
    const innerTensors: TensorMap = new Map();
    const moments = new Map<string, Moments>();
    const vs = new Map<string, Float32Array>();
    for (const [k, t] of saved.tensors) {
      const isM = k.startsWith(M_PREFIX), isV = k.startsWith(V_PREFIX);
      if (!isM && !isV) { innerTensors.set(k, t); continue; }
      const pk = k.slice((isM ? M_PREFIX : V_PREFIX).length);
      const p = parseLoraName(pk);
      if (!p || !this.strategy.isShared(pk)) throw new ConfigError(`${name}: saved moments for ${pk}, which is not a shared LoRA tensor`);
      if (!t || !(t.data instanceof Float32Array) || !Array.isArray(t.shape) || t.shape.length !== 2 || t.data.length !== t.shape[0]! * t.shape[1]!) {
        throw new ConfigError(`${name}: saved moment ${k} is not a well-formed float32 matrix`);
      }
      const rank = p.factor === 'A' ? t.shape[0] : t.shape[1];
      if (rank !== this.#maxRank) throw new ConfigError(`${name}: saved moment ${k} has rank ${rank}, this server runs max rank ${this.#maxRank}`);
      if (!t.data.every(Number.isFinite) || (isV && t.data.some((x) => x < 0))) throw new ConfigError(`${name}: saved moment ${k} holds ${isV ? 'negative or ' : ''}non-finite values`);
      if (isM) moments.set(pk, { m: new Float32Array(t.data), v: null });
      else vs.set(pk, new Float32Array(t.data));
    }
    for (const [k, v] of vs) {
      const mo = moments.get(k);
      if (!mo || !this.#adaptive || mo.m.length !== v.length) throw new ConfigError(`${name}: saved second moment for ${k} does not pair with a first moment of ${this.optimizer.name}`);
      mo.v = v;
    }
    if (this.#adaptive) for (const [k, mo] of moments) if (!mo.v) throw new ConfigError(`${name}: saved state lacks the second moment of ${k}`);
    // the inner server checks (and refuses) its own part first, so a refused restore changes nothing here
    this.#inner.restore({ meta: meta.inner ?? {}, tensors: innerTensors });
    this.#moments = moments;
    this.#steps = steps;
  }
}

/** T·X for r×r T and X [r, n] (row-major); with `squared`, (T∘T)·X. Rounded to float32 once. */
function leftMul(t: Float64Array, x: Float32Array, r: number, squared: boolean): Float32Array {
  const n = x.length / r;
  const acc = new Float64Array(x.length);
  for (let i = 0; i < r; i++) {
    for (let k = 0; k < r; k++) {
      const w = squared ? t[i * r + k]! * t[i * r + k]! : t[i * r + k]!;
      if (w === 0) continue;
      for (let j = 0; j < n; j++) acc[i * n + j] = acc[i * n + j]! + w * x[k * n + j]!;
    }
  }
  return Float32Array.from(acc);
}

/** X·T for X [n, r] and r×r T (row-major); with `squared`, X·(T∘T). Rounded to float32 once. */
function rightMul(x: Float32Array, t: Float64Array, r: number, squared: boolean): Float32Array {
  const n = x.length / r;
  const out = new Float32Array(x.length);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < r; j++) {
      let s = 0;
      for (let k = 0; k < r; k++) {
        const w = squared ? t[k * r + j]! * t[k * r + j]! : t[k * r + j]!;
        s += x[i * r + k]! * w;
      }
      out[i * r + j] = s;
    }
  }
  return out;
}
