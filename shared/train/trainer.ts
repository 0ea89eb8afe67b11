/**
 * LoRA training loop: AdamW (decoupled weight decay), global-norm gradient clipping, warmup then
 * cosine/linear decay, gradient accumulation. Only adapter tensors are variables; the base model's
 * weights are read, never copied or updated.
 */
import { tf } from '../backend/index.js';
import type { CausalLM, LoraRuntime } from '../model/causal-lm.js';
import { adapterModules, loraAName, loraBName, moduleScale, type LoraAdapter } from '../lora/adapter.js';
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

export class LoraTrainer {
  readonly lm: CausalLM;
  readonly #template: LoraAdapter;
  readonly #vars = new Map<string, tf.Variable>();
  readonly #m = new Map<string, tf.Variable>();
  readonly #v = new Map<string, tf.Variable>();
  readonly #trainable: string[];
  readonly #scales = new Map<string, number>();
  readonly #optim: OptimConfig;
  #accum = new Map<string, tf.Tensor>();
  #accumCount = 0;
  #step = 0;
  #disposed = false;

  constructor(lm: CausalLM, start: LoraAdapter, optim: OptimConfig, trainable: (peftName: string) => boolean = () => true) {
    lm.validateAdapter(start);
    this.lm = lm;
    this.#template = start;
    this.#optim = optim;
    if (!(optim.lr > 0) || !Number.isFinite(optim.lr)) throw new RangeError(`learning rate must be positive, got ${optim.lr}`);
    for (const m of adapterModules(start)) {
      this.#scales.set(m, moduleScale(start.config, m, start.tensors.get(loraAName(m))!.shape[0]));
      for (const name of [loraAName(m), loraBName(m)]) {
        const t = start.tensors.get(name)!;
        const train = trainable(name);
        this.#vars.set(name, tf.variable(tf.tensor(t.data, t.shape), train, undefined, 'float32'));
        if (train) {
          this.#m.set(name, tf.variable(tf.zeros(t.shape), false));
          this.#v.set(name, tf.variable(tf.zeros(t.shape), false));
        }
      }
    }
    this.#trainable = [...this.#m.keys()];
  }

  get step(): number { return this.#step; }
  get trainableNames(): readonly string[] { return this.#trainable; }

  #runtime(): LoraRuntime {
    const rt: LoraRuntime = new Map();
    for (const [m, scale] of this.#scales) rt.set(m, { A: this.#vars.get(loraAName(m)) as unknown as tf.Tensor2D, B: this.#vars.get(loraBName(m)) as unknown as tf.Tensor2D, scale });
    return rt;
  }

  #tensors(b: Batch): { ids: tf.Tensor2D; lm: tf.Tensor2D; am: tf.Tensor2D } {
    return {
      ids: tf.tensor2d(b.ids, [b.batch, b.length], 'int32'),
      lm: tf.tensor2d(b.lossMask, [b.batch, b.length], 'float32'),
      am: tf.tensor2d(b.attentionMask, [b.batch, b.length], 'float32'),
    };
  }

  /** Forward + backward on one micro-batch; gradients are accumulated. Returns the loss. */
  async accumulate(b: Batch): Promise<number> {
    if (!this.#trainable.length) throw new Error('nothing to train: no adapter tensor is trainable');
    const t = this.#tensors(b);
    try {
      const varList = this.#trainable.map((n) => this.#vars.get(n)!);
      const { value, grads } = tf.variableGrads(() => this.lm.causalLoss(this.lm.forward(t.ids, t.am, this.#runtime()), t.ids, t.lm, t.am), varList);
      for (const n of this.#trainable) {
        const g = grads[this.#vars.get(n)!.name]!;
        const prev = this.#accum.get(n);
        if (prev) { this.#accum.set(n, tf.add(prev, g)); prev.dispose(); g.dispose(); } else this.#accum.set(n, g);
      }
      this.#accumCount++;
      const loss = (await value.data())[0]!;
      value.dispose();
      return loss;
    } finally {
      t.ids.dispose(); t.lm.dispose(); t.am.dispose();
    }
  }

  /** Applies the accumulated gradients (mean over micro-batches) with AdamW. Returns the pre-clip grad norm. */
  async applyUpdate(): Promise<{ gradNorm: number; lr: number }> {
    if (!this.#accumCount) throw new Error('applyUpdate called with no accumulated gradients');
    const o = this.#optim;
    const lr = lrAt(o, this.#step);
    const b1 = o.beta1 ?? 0.9, b2 = o.beta2 ?? 0.999, eps = o.eps ?? 1e-8, wd = o.weightDecay ?? 0;
    const count = this.#accumCount;
    const normT = tf.tidy(() => tf.sqrt(tf.addN(this.#trainable.map((n) => tf.sum(tf.square(this.#accum.get(n)!))))).div(count));
    const gradNorm = (await normT.data())[0]!;
    normT.dispose();
    const clip = o.maxGradNorm ?? 1.0;
    const coef = (clip > 0 && gradNorm > clip ? clip / (gradNorm + 1e-6) : 1) / count;
    this.#step++;
    const bc1 = 1 - b1 ** this.#step, bc2 = 1 - b2 ** this.#step;
    tf.tidy(() => {
      for (const n of this.#trainable) {
        const p = this.#vars.get(n)!, m = this.#m.get(n)!, v = this.#v.get(n)!;
        const g = tf.mul(this.#accum.get(n)!, coef);
        m.assign(tf.add(tf.mul(m, b1), tf.mul(g, 1 - b1)));
        v.assign(tf.add(tf.mul(v, b2), tf.mul(tf.square(g), 1 - b2)));
        const upd = tf.div(tf.div(m, bc1), tf.add(tf.sqrt(tf.div(v, bc2)), eps));
        const decayed = wd > 0 ? tf.mul(p, 1 - lr * wd) : p;
        p.assign(tf.sub(decayed, tf.mul(upd, lr)));
      }
    });
    for (const g of this.#accum.values()) g.dispose();
    this.#accum.clear();
    this.#accumCount = 0;
    return { gradNorm, lr };
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

  /** Mean loss over batches without training (no gradients). */
  async evalLoss(batches: Batch[]): Promise<number> {
    let num = 0, den = 0;
    for (const b of batches) {
      const t = this.#tensors(b);
      const out = tf.tidy(() => {
        const l = this.lm.causalLoss(this.lm.forward(t.ids, t.am, this.#runtime()), t.ids, t.lm, t.am);
        return l;
      });
      let w = 0;
      for (let r = 0; r < b.batch; r++) for (let i = 1; i < b.length; i++) w += b.lossMask[r * b.length + i]! * b.attentionMask[r * b.length + i]!;
      num += (await out.data())[0]! * w; den += w;
      out.dispose(); t.ids.dispose(); t.lm.dispose(); t.am.dispose();
    }
    return den ? num / den : NaN;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const m of [this.#vars, this.#m, this.#v]) for (const v of m.values()) v.dispose();
    for (const g of this.#accum.values()) g.dispose();
  }
}
