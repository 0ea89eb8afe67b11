/**
 * LoRA training loop: AdamW (decoupled weight decay), global-norm gradient clipping, warmup then
 * cosine/linear decay, gradient accumulation. Only adapter tensors are variables; the base model's
 * weights are read, never copied or updated.
 */
import { tf } from '../backend/index.js';
import { FUSED, hasFusedKernels, numbered, runFused } from '../backend/fused-kernels.js';
import type { CausalLM, LoraRuntime } from '../model/causal-lm.js';
import { adapterModules, loraAName, loraBName, loraMName, moduleScale, xsRName, type LoraAdapter } from '../lora/adapter.js';
import { checkXsShapes } from '../lora/xs.js';
import type { TensorMap } from '../tensor.js';

export type Schedule = 'cosine' | 'linear' | 'constant';

export interface OptimConfig {
  lr: number;
  weightDecay?: number;  // default 0
  beta1?: number;        // 0.9
  beta2?: number;        // 0.999
  eps?: number;          // 1e-8
  maxGradNorm?: number;  // 1.0; 0 disables clipping
  warmupSteps?: number;  // 0
  schedule?: Schedule;   // 'cosine'
  totalSteps: number;    // optimizer steps the schedule spans
  minLrRatio?: number;   // floor of the decay, fraction of lr (0)
}

export interface Batch {
  ids: Int32Array;
  lossMask: Float32Array;
  attentionMask: Float32Array;
  batch: number;
  length: number;
}

/** Learning rate at optimizer step `step` (0-based). */
export function lrAt(cfg: OptimConfig, step: number): number {
  const warm = cfg.warmupSteps ?? 0;
  if (warm > 0 && step < warm) return (cfg.lr * (step + 1)) / warm;
  const sched = cfg.schedule ?? 'cosine';
  if (sched === 'constant') return cfg.lr;
  const span = Math.max(1, cfg.totalSteps - warm);
  const p = Math.min(1, Math.max(0, (step - warm) / span));
  const floor = cfg.minLrRatio ?? 0;
  const f = sched === 'linear' ? 1 - p : 0.5 * (1 + Math.cos(Math.PI * p));
  return cfg.lr * (floor + (1 - floor) * f);
}

/**
 * AdamW over named variables with gradient accumulation and global-norm clipping. Shared by LoRA
 * fine-tuning and full-parameter pretraining.
 */
/** A variable initialised from `init`, which is then released (the variable keeps its own reference). */
export function ownVariable(init: tf.Tensor, trainable: boolean): tf.Variable {
  const v = tf.variable(init, trainable, undefined, 'float32');
  init.dispose();
  return v;
}

export interface OptimizerState { step: number; m: Map<string, Float32Array>; v: Map<string, Float32Array> }

export class AdamW {
  readonly #vars: Map<string, tf.Variable>;
  readonly #m = new Map<string, tf.Variable>();
  readonly #v = new Map<string, tf.Variable>();
  readonly #cfg: OptimConfig;
  #accum = new Map<string, tf.Tensor>();
  #count = 0;
  #step = 0;
  #local = 0;

  constructor(vars: Map<string, tf.Variable>, cfg: OptimConfig) {
    if (!(cfg.lr > 0) || !Number.isFinite(cfg.lr)) throw new RangeError(`learning rate must be positive, got ${cfg.lr}`);
    this.#vars = vars;
    this.#cfg = cfg;
    for (const [n, v] of vars) {
      this.#m.set(n, ownVariable(tf.zeros(v.shape), false));
      this.#v.set(n, ownVariable(tf.zeros(v.shape), false));
    }
  }

  get step(): number { return this.#step; }

  /** Moment estimates and step count, to carry optimizer state across federated rounds. */
  async exportState(): Promise<OptimizerState> {
    const m = new Map<string, Float32Array>(), v = new Map<string, Float32Array>();
    for (const [n, t] of this.#m) m.set(n, (await t.data()) as Float32Array);
    for (const [n, t] of this.#v) v.set(n, (await t.data()) as Float32Array);
    return { step: this.#step, m, v };
  }

  /** Restores moments for the variables whose sizes match; returns how many were restored. */
  importState(st: OptimizerState): number {
    let n = 0;
    for (const [name, mv] of this.#m) {
      const a = st.m.get(name), b = st.v.get(name);
      if (!a || !b || a.length !== mv.size || b.length !== mv.size) continue;
      tf.tidy(() => { mv.assign(tf.tensor(a, mv.shape)); this.#v.get(name)!.assign(tf.tensor(b, mv.shape)); });
      n++;
    }
    if (n) this.#step = st.step;
    return n;
  }

  /** Forward + backward of `loss` (a scalar-returning closure); adds the gradients to the accumulator. */
  async accumulate(loss: () => tf.Scalar): Promise<number> {
    const names = [...this.#vars.keys()];
    const { value, grads } = tf.variableGrads(loss, names.map((n) => this.#vars.get(n)!));
    for (const n of names) {
      const g = grads[this.#vars.get(n)!.name]!;
      const prev = this.#accum.get(n);
      if (prev) { this.#accum.set(n, tf.add(prev, g)); prev.dispose(); g.dispose(); } else this.#accum.set(n, g);
    }
    this.#count++;
    const l = (await value.data())[0]!;
    value.dispose();
    return l;
  }

  /** Applies the mean accumulated gradient. Returns the pre-clip gradient norm and the lr used. */
  async apply(): Promise<{ gradNorm: number; lr: number }> {
    if (!this.#count) throw new Error('AdamW.apply called with no accumulated gradients');
    const o = this.#cfg;
    const lr = lrAt(o, this.#local++); // the schedule spans this optimizer's life; bias correction its whole history
    const b1 = o.beta1 ?? 0.9, b2 = o.beta2 ?? 0.999, eps = o.eps ?? 1e-8, wd = o.weightDecay ?? 0;
    const count = this.#count;
    const names = [...this.#accum.keys()];
    const fused = hasFusedKernels();
    const normT = tf.tidy(() => {
      if (!fused) return tf.div(tf.sqrt(tf.addN(names.map((n) => tf.sum(tf.square(this.#accum.get(n)!))))), count);
      return tf.div(tf.sqrt(runFused(FUSED.sumSquares, numbered(names.map((n) => this.#accum.get(n)!))) as tf.Scalar), count);
    });
    const gradNorm = (await normT.data())[0]!;
    normT.dispose();
    const clip = o.maxGradNorm ?? 1.0;
    const coef = (clip > 0 && gradNorm > clip ? clip / (gradNorm + 1e-6) : 1) / count;
    this.#step++;
    const bc1 = 1 - b1 ** this.#step, bc2 = 1 - b2 ** this.#step;
    tf.tidy(() => {
      for (const n of names) {
        const p = this.#vars.get(n)!, m = this.#m.get(n)!, v = this.#v.get(n)!;
        if (fused) {
          // one pass per tensor (shared/backend/fused-kernels.ts), the same update in double precision
          const decay = wd > 0 && p.rank > 1 ? 1 - lr * wd : 1;
          const [np, nm, nv] = runFused(FUSED.adamW, { p, g: this.#accum.get(n)!, m, v }, { coef, b1, b2, bc1, bc2, eps, lr, decay }) as tf.Tensor[];
          m.assign(nm!); v.assign(nv!); p.assign(np!);
          continue;
        }
        const g = tf.mul(this.#accum.get(n)!, coef);
        m.assign(tf.add(tf.mul(m, b1), tf.mul(g, 1 - b1)));
        v.assign(tf.add(tf.mul(v, b2), tf.mul(tf.square(g), 1 - b2)));
        const upd = tf.div(tf.div(m, bc1), tf.add(tf.sqrt(tf.div(v, bc2)), eps));
        const decayed = wd > 0 && p.rank > 1 ? tf.mul(p, 1 - lr * wd) : p; // no decay on norms/biases
        p.assign(tf.sub(decayed, tf.mul(upd, lr)));
      }
    });
    for (const g of this.#accum.values()) g.dispose();
    this.#accum.clear();
    this.#count = 0;
    return { gradNorm, lr };
  }

  dispose(): void {
    for (const m of [this.#m, this.#v]) for (const v of m.values()) v.dispose();
    for (const g of this.#accum.values()) g.dispose();
    this.#accum.clear();
  }
}

export interface LoraTrainerOptions {
  /**
   * A proximal term added to the training loss (Ditto-style personalization): (weight/2) ·
   * Σ_m ‖s·B_m·A_m − s_ref·B_ref,m·A_ref,m‖²_F over the modules with a trainable A, B or LoRA-XS core
   * that `reference` also holds. On the products ΔW, not on the factors, so a reference whose rank
   * slots are in another basis (or of another rank) pulls towards the same function.
   */
  prox?: { weight: number; reference: LoraAdapter };
}

export class LoraTrainer {
  readonly lm: CausalLM;
  readonly #template: LoraAdapter;
  readonly #vars = new Map<string, tf.Variable>();
  readonly #scales = new Map<string, number>();
  readonly #opt: AdamW;
  readonly #trainable: string[];
  /** The proximal term's weight and, per module, the reference product s_ref·B_ref·A_ref. */
  readonly #prox: { weight: number; products: Map<string, tf.Tensor2D> } | null = null;
  #disposed = false;

  constructor(lm: CausalLM, start: LoraAdapter, optim: OptimConfig, trainable: (peftName: string) => boolean = () => true, extra: LoraTrainerOptions = {}) {
    if (extra.prox && !(Number.isFinite(extra.prox.weight) && extra.prox.weight >= 0)) throw new RangeError(`prox weight must be a finite number ≥ 0, got ${extra.prox.weight}`);
    lm.validateAdapter(start);
    checkXsShapes(start.tensors);
    this.lm = lm;
    this.#template = start;
    const train = new Map<string, tf.Variable>();
    for (const m of adapterModules(start)) {
      this.#scales.set(m, moduleScale(start.config, m, start.tensors.get(loraAName(m))!.shape[0]));
      // DoRA: the magnitude vector is a variable like A and B (rank 1, so AdamW never decays it)
      // LoRA-XS: the core R [r, r] is a variable too; the forward pass uses A_eff = R·A (see #runtime)
      const names = [loraAName(m), loraBName(m), ...(start.tensors.has(loraMName(m)) ? [loraMName(m)] : []), ...(start.tensors.has(xsRName(m)) ? [xsRName(m)] : [])];
      for (const name of names) {
        const t = start.tensors.get(name)!;
        const v = ownVariable(tf.tensor(t.data, t.shape), trainable(name));
        this.#vars.set(name, v);
        if (trainable(name)) train.set(name, v);
      }
    }
    this.#trainable = [...train.keys()];
    try {
      this.#opt = new AdamW(train, optim);
    } catch (e) {
      for (const v of this.#vars.values()) v.dispose();
      throw e;
    }
    if (extra.prox && extra.prox.weight > 0) {
      const ref = extra.prox.reference;
      const products = new Map<string, tf.Tensor2D>();
      for (const m of this.#scales.keys()) {
        const own = [loraAName(m), loraBName(m), xsRName(m)].some((n) => train.has(n));
        const a = ref.tensors.get(loraAName(m)), b = ref.tensors.get(loraBName(m)), r = ref.tensors.get(xsRName(m));
        if (!own || !a || !b) continue;
        const scale = moduleScale(ref.config, m, a.shape[0]);
        products.set(m, tf.tidy(() => {
          const A = tf.tensor2d(a.data, a.shape as [number, number]);
          const Aeff = r ? tf.matMul(tf.tensor2d(r.data, r.shape as [number, number]), A) : A;
          return tf.mul(tf.matMul(tf.tensor2d(b.data, b.shape as [number, number]), Aeff), scale) as tf.Tensor2D;
        }));
      }
      this.#prox = { weight: extra.prox.weight, products };
    }
  }

  /** The proximal term for runtime `rt` (a scalar; zero without one). Called inside the caller's tape. */
  #proxLoss(rt: LoraRuntime): tf.Scalar {
    if (!this.#prox || !this.#prox.products.size) return tf.scalar(0);
    const terms: tf.Scalar[] = [];
    for (const [m, ref] of this.#prox.products) {
      const e = rt.get(m)!;
      terms.push(tf.sum(tf.square(tf.sub(tf.mul(tf.matMul(e.B, e.A), e.scale), ref))));
    }
    return tf.mul(tf.addN(terms), this.#prox.weight / 2);
  }

  /** The training loss of one batch: causal LM loss plus the proximal term when there is one. */
  #loss(t: { ids: tf.Tensor2D; lm: tf.Tensor2D; am: tf.Tensor2D }): tf.Scalar {
    const rt = this.#runtime();
    const ce = this.lm.causalLossOf(t.ids, t.am, t.lm, rt);
    return this.#prox ? tf.add(ce, this.#proxLoss(rt)) : ce;
  }

  /** The proximal term at the current values (0 without one): tests, diagnostics. */
  async proxValue(): Promise<number> {
    const v = tf.tidy(() => this.#proxLoss(this.#runtime()));
    try { return (await v.data())[0]!; } finally { v.dispose(); }
  }

  get step(): number { return this.#opt.step; }
  get trainableNames(): readonly string[] { return this.#trainable; }

  #runtime(): LoraRuntime {
    const rt: LoraRuntime = new Map();
    for (const [m, scale] of this.#scales) {
      const mag = this.#vars.get(loraMName(m)) as unknown as tf.Tensor1D | undefined;
      const core = this.#vars.get(xsRName(m)) as unknown as tf.Tensor2D | undefined;
      const A = this.#vars.get(loraAName(m)) as unknown as tf.Tensor2D;
      // LoRA-XS reparametrisation: ΔW = s·B·(R·A), so autograd gives dL/dR = (dL/dA_eff)·Aᵀ. Called
      // inside the caller's tape/tidy, which owns the product.
      rt.set(m, { A: core ? tf.matMul(core, A) : A, B: this.#vars.get(loraBName(m)) as unknown as tf.Tensor2D, scale, ...(mag ? { m: mag } : {}) });
    }
    return rt;
  }

  /** Forward + backward on one micro-batch; gradients are accumulated. Returns the loss. */
  async accumulate(b: Batch): Promise<number> {
    if (!this.#trainable.length) throw new Error('nothing to train: no adapter tensor is trainable');
    const t = batchTensors(b);
    try {
      return await this.#opt.accumulate(() => this.#loss(t));
    } finally {
      t.ids.dispose(); t.lm.dispose(); t.am.dispose();
    }
  }

  /**
   * Gradient of one micro-batch's loss with respect to every trainable tensor, without touching the
   * optimizer or its accumulator (tests, diagnostics).
   */
  async gradients(b: Batch): Promise<{ loss: number; grads: TensorMap }> {
    const names = this.#trainable;
    if (!names.length) throw new Error('nothing to train: no adapter tensor is trainable');
    const t = batchTensors(b);
    try {
      const { value, grads } = tf.variableGrads(() => this.#loss(t), names.map((n) => this.#vars.get(n)!));
      const out: TensorMap = new Map();
      for (const n of names) {
        const g = grads[this.#vars.get(n)!.name]!;
        out.set(n, { shape: [...g.shape], data: (await g.data()) as Float32Array });
      }
      const loss = (await value.data())[0]!;
      value.dispose();
      for (const g of Object.values(grads)) g.dispose();
      return { loss, grads: out };
    } finally {
      t.ids.dispose(); t.lm.dispose(); t.am.dispose();
    }
  }

  exportOptimizerState(): Promise<OptimizerState> { return this.#opt.exportState(); }
  importOptimizerState(st: OptimizerState): number { return this.#opt.importState(st); }

  /** Applies the accumulated gradients (mean over micro-batches) with AdamW. */
  async applyUpdate(): Promise<{ gradNorm: number; lr: number }> {
    return this.#opt.apply();
  }

  /** One optimizer step over `micro` batches (gradient accumulation). Returns the mean loss. */
  async trainStep(micro: Batch[]): Promise<{ loss: number; gradNorm: number; lr: number }> {
    let sum = 0;
    for (const b of micro) sum += await this.accumulate(b);
    const u = await this.applyUpdate();
    return { loss: sum / micro.length, ...u };
  }

  /** Current adapter values (a fresh copy). */
  async adapter(): Promise<LoraAdapter> {
    const tensors: TensorMap = new Map();
    for (const [name, v] of this.#vars) tensors.set(name, { shape: [...v.shape], data: (await v.data()) as Float32Array });
    return { config: { ...this.#template.config }, tensors };
  }

  /** Logits [batch, length, vocab] of the current adapter, through the same runtime training uses (no gradients). */
  async logits(ids: number[][]): Promise<Float32Array> {
    const idsT = this.lm.idsTensor(ids);
    try {
      const out = tf.tidy(() => this.lm.forward(idsT, null, this.#runtime()));
      const data = (await out.data()) as Float32Array;
      out.dispose();
      return data;
    } finally {
      idsT.dispose();
    }
  }

  /** Mean loss over batches without training (no gradients). */
  async evalLoss(batches: Batch[]): Promise<number> {
    return meanLoss(this.lm, batches, () => this.#runtime());
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const v of this.#vars.values()) v.dispose();
    for (const p of this.#prox?.products.values() ?? []) p.dispose();
    this.#opt.dispose();
  }
}

export function batchTensors(b: Batch): { ids: tf.Tensor2D; lm: tf.Tensor2D; am: tf.Tensor2D } {
  return {
    ids: tf.tensor2d(b.ids, [b.batch, b.length], 'int32'),
    lm: tf.tensor2d(b.lossMask, [b.batch, b.length], 'float32'),
    am: tf.tensor2d(b.attentionMask, [b.batch, b.length], 'float32'),
  };
}

/** Token-weighted mean loss over batches, no gradients. */
export async function meanLoss(lm: CausalLM, batches: Batch[], runtime?: () => LoraRuntime): Promise<number> {
  let num = 0, den = 0;
  for (const b of batches) {
    const t = batchTensors(b);
    const out = tf.tidy(() => lm.causalLossOf(t.ids, t.am, t.lm, runtime?.()));
    let w = 0;
    for (let r = 0; r < b.batch; r++) for (let i = 1; i < b.length; i++) w += b.lossMask[r * b.length + i]! * b.attentionMask[r * b.length + i]!;
    num += (await out.data())[0]! * w; den += w;
    out.dispose(); t.ids.dispose(); t.lm.dispose(); t.am.dispose();
  }
  return den ? num / den : NaN;
}
