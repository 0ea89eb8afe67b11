/**
 * Decoder-only causal LM in TensorFlow.js, with LoRA applied on the fly:
 * y = x W + b + scale · (x Aᵀ) Bᵀ, or under DoRA (PEFT `use_dora`)
 * y = g ⊙ (x W + scale · (x Aᵀ) Bᵀ) + b with g = m / ‖W + scale·B A‖ per output feature, the norm
 * computed from the current A, B but detached (no gradient flows through it, as in PEFT). Base weights are loaded once, frozen, and shared by every
 * adapter; an adapter is a set of small A/B tensors passed to each call. Tensor names, weight
 * layout and the block forward come from the config's family descriptor (families/).
 */
import { readFile, stat } from 'node:fs/promises';
import { tf, selectBackend, type BackendChoice } from '../backend/index.js';
import { ModelFormatError } from '../errors.js';
import { loadConfig, linearModules, linearHasBias, linearWeightShape, type ModelConfig } from './config.js';
import { familyOf, type FamilyDescriptor, type BlockKit } from './families/index.js';
import { openSafetensors, type SafetensorsReader } from './safetensors.js';
import { addNoSave, bmm, fusedNorm, geluNew, matMulBT, mm, frozenMatMul, silu, t2, weightedCrossEntropy } from './ops.js';
import { FUSED, hasFusedKernels, numbered, runFused } from '../backend/fused-kernels.js';
import { rowView } from '../backend/wasm-kernels.js';
import { StoredWeight, storedMatMul } from './frozen/stored.js';
import { BASE_DTYPES, type BaseDtype } from './frozen/quant.js';
import { adapterModules, matchesTarget, loraAName, loraBName, loraMName, moduleScale, type LoraAdapter } from '../lora/adapter.js';

/** LoRA factors of one module as live tensors: A [r, in], B [out, r]; under DoRA also the magnitude m [out]. */
export interface LoraFactors { A: tf.Tensor2D; B: tf.Tensor2D; scale: number; m?: tf.Tensor1D }
export type LoraRuntime = Map<string, LoraFactors>;

export interface LoadOptions {
  backend?: BackendChoice | string;
  /** Largest checkpoint accepted, bytes (default 16 GiB). */
  maxBytes?: number;
  /** Load base weights as trainable variables (full-parameter pretraining); default false. */
  trainableBase?: boolean;
  /**
   * Keep the frozen linear weights outside the tfjs heap in this storage type and materialise one at a
   * time (shared/model/frozen): fp32, bf16, int8 (per output channel) or nf4 (QLoRA). Unset: every
   * weight is a tensor (fastest, largest). Not with trainableBase.
   */
  baseDtype?: BaseDtype;
  /**
   * Vocabulary rows per chunk of the LM head in the training loss (and, for a stored head, in the
   * logits; for an in-heap head on wasm, rows per slice of the logits' products, default 4,096): the
   * [N, V] logits never exist whole. Default: 2^23 values of the head per chunk. The loss is
   * fused and chunked for a stored head, with recomputeBlocks, for more than 2^24 logits, and always
   * when this is set.
   */
  headChunkRows?: number;
  /**
   * Recompute each block's activations in the backward pass instead of keeping them (activation
   * checkpointing per block): training memory no longer grows with the tfjs tape over all layers, for
   * one more forward pass. Default: off. Since the backward pass frees each gradient and saved tensor once
   * used (shared/backend/backprop.ts) it saves little and costs much: a Qwen2-0.5B-shaped nf4 step peaks at
   * 1,540 MiB RSS with it and 1,780 MiB without, but takes 43.5 s instead of 21.4 s.
   */
  recomputeBlocks?: boolean;
  /**
   * In-heap frozen linear weights on wasm/cpu: `both` keeps each as [in, out] and [out, in] so the backward
   * product is dy @ W[out, in]; `one` keeps [in, out] only and computes the backward product with the
   * weight as the left operand (ops.ts frozenMatMul), which on wasm also spares XNNPACK's packed copy of
   * the second layout: two copies of each weight in the heap instead of four, for two transposes of
   * [N, ·] activations per product. `auto` (default): `both` while the linear weights total at most
   * DUAL_LAYOUT_MAX_BYTES (small models, where the transposes weigh most and the copies least), else `one`.
   */
  weightLayouts?: 'auto' | 'one' | 'both';
}

/** Linear weights (fp32 bytes) up to which `weightLayouts: 'auto'` keeps both layouts (see LoadOptions). */
export const DUAL_LAYOUT_MAX_BYTES = 64 * 2 ** 20;

/** Default size of an LM-head chunk, in values of the head ([rows, d]). */
const HEAD_CHUNK_VALUES = 1 << 23;
/**
 * Rows per slice of an in-heap LM head on wasm (#headViews). The head's products have K = V on the
 * way back (dy W), which XNNPACK runs at ≈40 GFLOP/s for GPT-2's 50,257 rows; in slices of 4,096 rows
 * (K = 4,096 each) measured 222 → 151 ms (2 threads; 2,048: 152, 8,192: 190, 16,384: 213), and the
 * forward W xᵀ 203–251 → 131–148 ms.
 */
const HEAD_VIEW_ROWS = 4096;
/** Logit count (B·T·V) above which an in-heap head's loss is fused and chunked (64 MB as fp32). */
const FUSE_MIN_LOGITS = 1 << 24;

/** A frozen linear layer: W as [in, out] for the forward pass, and as [out, in] where the backend's
 *  transposed matMul is slow (see ops.ts) so the backward pass stays a plain product too. */
interface Linear { wIo: tf.Tensor2D; wOi: tf.Tensor2D | null; b: tf.Tensor1D | null; in: number; out: number; stored?: StoredWeight }

export class CausalLM {
  readonly config: ModelConfig;
  readonly dir: string;
  /** HF module path → {in, out} of every linear layer LoRA may target. */
  readonly linearShapes: Map<string, { in: number; out: number }>;
  readonly #family: FamilyDescriptor;
  #w = new Map<string, tf.Tensor>();
  #lin = new Map<string, Linear>();
  #rope = new Map<number, { cos: tf.Tensor2D; sin: tf.Tensor2D }>();
  /** rotate_half as a signed permutation [hd, hd] and its transpose (see #rotateHalf). */
  #rot: { r: tf.Tensor2D; rT: tf.Tensor2D } | null = null;
  /**
   * The LM head as [V, d], one layout (tied: the embedding table itself): logits are computed as
   * (W xᵀ)ᵀ and dx as dy W, both plain products, so no transposed copy of the head is kept. In-heap
   * unless baseDtype is set, then #headStored (and #embStored) hold it outside the tfjs heap as fp32.
   */
  #head: tf.Tensor2D | null = null;
  /** Row slices of #head sharing its memory (wasm, made on first use): [v0, view]. */
  #headViews: Array<[number, tf.Tensor2D]> | null = null;
  #headStored: StoredWeight | null = null;
  #embStored: StoredWeight | null = null;
  #headChunkRows = 0;
  #headViewRows = HEAD_VIEW_ROWS;
  #recompute = false;
  #fuseAlways = false;
  /** Keep [out, in] copies of frozen weights (wasm/cpu: transposed matMul kernels are slow). */
  #dual = false;
  #params = 0;
  #trainable = false;
  #baseDtype: BaseDtype | null = null;
  /** Weights kept out of the tfjs heap (baseDtype set), quantized as they are read: module path → weight. */
  #stored = new Map<string, StoredWeight>();
  #hfNames: string[] = [];
  #disposed = false;

  private constructor(dir: string, config: ModelConfig) {
    this.dir = dir;
    this.config = config;
    this.#family = familyOf(config);
    this.linearShapes = linearModules(config);
  }

  static async load(dir: string, opts: LoadOptions = {}): Promise<CausalLM> {
    await selectBackend(opts.backend ?? 'auto');
    const config = await loadConfig(dir);
    const files = await checkpointFiles(dir);
    const lm = new CausalLM(dir, config);
    lm.#trainable = opts.trainableBase === true;
    if (opts.baseDtype !== undefined) {
      if (!BASE_DTYPES.includes(opts.baseDtype)) throw new RangeError(`baseDtype must be one of ${BASE_DTYPES.join(', ')}, got ${JSON.stringify(opts.baseDtype)}`);
      if (lm.#trainable) throw new RangeError('baseDtype keeps the base frozen: it cannot be combined with trainableBase');
      lm.#baseDtype = opts.baseDtype;
    }
    if (opts.headChunkRows !== undefined && !(Number.isInteger(opts.headChunkRows) && opts.headChunkRows > 0)) throw new RangeError(`headChunkRows must be a positive integer, got ${opts.headChunkRows}`);
    lm.#headChunkRows = opts.headChunkRows ?? Math.max(256, Math.floor(HEAD_CHUNK_VALUES / config.hiddenSize));
    lm.#fuseAlways = opts.headChunkRows !== undefined;
    lm.#headViewRows = opts.headChunkRows ?? HEAD_VIEW_ROWS;
    const layouts = opts.weightLayouts ?? 'auto';
    if (!['auto', 'one', 'both'].includes(layouts)) throw new RangeError(`weightLayouts must be auto, one or both, got ${JSON.stringify(layouts)}`);
    let linearBytes = 0;
    for (const s of lm.linearShapes.values()) linearBytes += 4 * s.in * s.out;
    lm.#dual = !lm.#trainable && ['wasm', 'cpu'].includes(tf.getBackend()) && (layouts === 'both' || (layouts === 'auto' && linearBytes <= DUAL_LAYOUT_MAX_BYTES));
    lm.#recompute = !lm.#trainable && (opts.recomputeBlocks ?? false);
    try {
      for (const f of files) {
        // tensor by tensor: the checkpoint is never in memory whole
        const st = await openSafetensors(f, opts.maxBytes ?? 16 * 1024 ** 3);
        try { await lm.#ingest(st); } finally { await st.close(); }
      }
      lm.#finish();
    } catch (e) {
      lm.dispose();
      throw e;
    }
    return lm;
  }

  async #ingest(st: SafetensorsReader): Promise<void> {
    const fam = this.#family, c = this.config;
    for (const name of st.entries.keys()) {
      if (fam.isBuffer?.(name)) continue;
      // older checkpoints save RoPE's inverse frequencies; they are recomputed from rope_theta
      if (name.endsWith('rotary_emb.inv_freq')) continue;
      const pre = fam.optionalPrefix;
      const key = !pre || name.startsWith(pre) || name === fam.tensors.lmHead ? name : `${pre}${name}`;
      const t = await st.readFloat(name);
      this.#params += t.data.length;
      this.#hfNames.push(key);
      const path = key.endsWith('.weight') ? key.slice(0, -'.weight'.length) : '';
      const s = this.linearShapes.get(path);
      if (this.#baseDtype && s) {
        // stored as [out, in] and quantized now, so only one fp32 weight is alive at a time
        const want = linearWeightShape(c, s);
        if (t.shape.length !== 2 || t.shape[0] !== want[0] || t.shape[1] !== want[1]) throw new ModelFormatError(`tensor "${key}" has shape [${t.shape}], expected [${want}]`, this.dir);
        let oi = t.data;
        if (fam.fanInFanOut) { // Conv1D-style checkpoints ([in, out]) are transposed once, here
          oi = new Float32Array(t.data.length);
          for (let i = 0; i < s.in; i++) for (let o = 0; o < s.out; o++) oi[o * s.in + i] = t.data[i * s.out + o]!;
        }
        this.#stored.set(path, new StoredWeight(oi, s.out, s.in, this.#baseDtype));
        continue;
      }
      if (this.#baseDtype && (key === fam.tensors.embeddings || (key === fam.tensors.lmHead && !c.tieWordEmbeddings))) {
        // the embedding table / LM head [V, d] stays fp32 (as QLoRA keeps them unquantized), outside the heap
        if (t.shape.length !== 2 || t.shape[0] !== c.vocabSize || t.shape[1] !== c.hiddenSize) throw new ModelFormatError(`tensor "${key}" has shape [${t.shape}], expected [${c.vocabSize},${c.hiddenSize}]`, this.dir);
        this.#stored.set(key, new StoredWeight(t.data, c.vocabSize, c.hiddenSize, 'fp32'));
        continue;
      }
      const tensor = tf.tensor(t.data, t.shape, 'float32');
      this.#w.set(key, this.#trainable ? tf.variable(tensor, true, `base/${key}`) : tensor);
      if (this.#trainable) tensor.dispose();
    }
  }

  #get(name: string, shape: number[]): tf.Tensor {
    const t = this.#w.get(name);
    if (!t) throw new ModelFormatError(`checkpoint has no tensor "${name}"`, this.dir);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new ModelFormatError(`tensor "${name}" has shape [${t.shape}], expected [${shape}]`, this.dir);
    }
    return t;
  }

  #finish(): void {
    const c = this.config, fam = this.#family, names = fam.tensors;
    const d = c.hiddenSize;
    const storedRows = (name: string) => {
      const w = this.#stored.get(name);
      if (!w) throw new ModelFormatError(`checkpoint has no tensor "${name}"`, this.dir);
      return w;
    };
    if (this.#baseDtype) {
      this.#embStored = storedRows(names.embeddings);
      this.#headStored = c.tieWordEmbeddings ? this.#embStored : storedRows(names.lmHead);
    } else {
      this.#get(names.embeddings, [c.vocabSize, d]);
      if (!c.tieWordEmbeddings) this.#get(names.lmHead, [c.vocabSize, d]);
    }
    if (names.positions) this.#get(names.positions, [c.maxPositions, d]);
    // Conv1D-style families store [in, out] (the layout the forward multiplies by); nn.Linear [out, in]
    const io = fam.fanInFanOut;
    for (const [path, s] of this.linearShapes) {
      const b = linearHasBias(c, path) ? (this.#get(`${path}.bias`, [s.out]) as tf.Tensor1D) : null;
      if (this.#baseDtype) {
        const stored = this.#stored.get(path);
        if (!stored) throw new ModelFormatError(`checkpoint has no tensor "${path}.weight"`, this.dir);
        // wIo/wOi are never read for a stored weight (#linear and #weightIo check `stored` first)
        this.#lin.set(path, { wIo: null as unknown as tf.Tensor2D, wOi: null, b, in: s.in, out: s.out, stored });
        continue;
      }
      const w = this.#get(`${path}.weight`, linearWeightShape(c, s)) as tf.Tensor2D;
      if (this.#trainable) {
        // gradients must reach the variable itself: no pre-transposed copies
        this.#lin.set(path, io ? { wIo: w, wOi: null, b, in: s.in, out: s.out } : { wIo: w, wOi: w, b, in: s.in, out: s.out });
        continue;
      }
      const t = tf.transpose(w) as tf.Tensor2D;
      const wIo = io ? w : t;
      const wOi = io ? (this.#dual ? t : (t.dispose(), null)) : this.#dual ? w : null;
      this.#lin.set(path, { wIo, wOi, b, in: s.in, out: s.out });
      // keep only the layouts in use: the [out, in] original of a Linear goes unless it serves backward
      if (!io && !this.#dual) { this.#w.delete(`${path}.weight`); w.dispose(); this.#w.set(`${path}.weight.io`, wIo); }
      if (!io && this.#dual) this.#w.set(`${path}.weight.io`, wIo);
      if (io && this.#dual) this.#w.set(`${path}.weight.oi`, t);
    }
    const normParams = fam.norm.bias ? ['weight', 'bias'] : ['weight'];
    for (let i = 0; i < c.numLayers; i++) {
      const p = fam.layerPrefix(i);
      for (const n of fam.layerNorms) for (const k of normParams) this.#get(`${p}.${n}.${k}`, [d]);
    }
    for (const k of normParams) this.#get(`${names.finalNorm}.${k}`, [d]);
    if (!this.#baseDtype) this.#head = this.#w.get(c.tieWordEmbeddings ? names.embeddings : names.lmHead)! as tf.Tensor2D;
  }

  /** Module paths matched by PEFT `target_modules` (suffix match). */
  targetModules(targets: string[] | string): string[] {
    return [...this.linearShapes.keys()].filter((m) => matchesTarget(m, targets));
  }

  /** Checks an adapter against this model: every module exists, shapes agree. */
  validateAdapter(adapter: LoraAdapter, where = 'adapter'): void {
    for (const m of adapterModules(adapter)) {
      const s = this.linearShapes.get(m);
      if (!s) throw new ModelFormatError(`LoRA module "${m}" is not a linear layer of this ${this.config.modelType} model`, where);
      const A = adapter.tensors.get(loraAName(m)), B = adapter.tensors.get(loraBName(m));
      if (!A || !B) throw new ModelFormatError(`module "${m}" needs both lora_A and lora_B`, where);
      const r = A.shape[0]!;
      if (A.shape.length !== 2 || A.shape[1] !== s.in) throw new ModelFormatError(`${loraAName(m)} has shape [${A.shape}], model needs [${r}, ${s.in}]`, where);
      if (B.shape.length !== 2 || B.shape[0] !== s.out || B.shape[1] !== r) throw new ModelFormatError(`${loraBName(m)} has shape [${B.shape}], model needs [${s.out}, ${r}]`, where);
      const M = adapter.tensors.get(loraMName(m));
      if (adapter.config.useDora === true && !M) throw new ModelFormatError(`module "${m}" has no ${loraMName(m)} (use_dora: true)`, where);
      if (M && adapter.config.useDora !== true) throw new ModelFormatError(`${loraMName(m)} in an adapter without use_dora`, where);
      if (M && (M.shape.length !== 1 || M.shape[0] !== s.out)) throw new ModelFormatError(`${loraMName(m)} has shape [${M.shape}], model needs [${s.out}]`, where);
    }
  }

  /** Uploads an adapter as live tensors (caller disposes with disposeRuntime). */
  runtime(adapter: LoraAdapter): LoraRuntime {
    this.validateAdapter(adapter);
    const rt: LoraRuntime = new Map();
    for (const m of adapterModules(adapter)) {
      const A = adapter.tensors.get(loraAName(m))!, B = adapter.tensors.get(loraBName(m))!, M = adapter.tensors.get(loraMName(m));
      rt.set(m, {
        A: tf.tensor2d(A.data, A.shape as [number, number]),
        B: tf.tensor2d(B.data, B.shape as [number, number]),
        scale: moduleScale(adapter.config, m, A.shape[0]),
        ...(M ? { m: tf.tensor1d(M.data) } : {}),
      });
    }
    return rt;
  }

  #ropeTables(T: number): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
    let r = this.#rope.get(T);
    if (!r) {
      const hd = this.config.headDim, half = hd / 2;
      const cos = new Float32Array(T * hd), sin = new Float32Array(T * hd);
      for (let i = 0; i < half; i++) {
        // HF computes inv_freq in float32; match it so long positions agree too
        const inv = Math.fround(1 / Math.fround(this.config.ropeTheta ** Math.fround((2 * i) / hd)));
        for (let p = 0; p < T; p++) {
          const a = Math.fround(p * inv);
          cos[p * hd + i] = cos[p * hd + i + half] = Math.cos(a);
          sin[p * hd + i] = sin[p * hd + i + half] = Math.sin(a);
        }
      }
      r = { cos: tf.keep(tf.tensor2d(cos, [T, hd])), sin: tf.keep(tf.tensor2d(sin, [T, hd])) };
      this.#rope.set(T, r);
    }
    return r;
  }

  /**
   * HF's rotate_half, concat(−x₂, x₁) over the last axis, as one product with a signed permutation:
   * each output is exactly ±one input (the other terms are +0), so it equals the split/neg/concat
   * form bit for bit, and on wasm one XNNPACK product over [tokens·heads, hd] costs less than the
   * split and concat kernels with their gradients (measured on the small Llama of bench:train).
   */
  #rotateHalf(t: tf.Tensor): tf.Tensor {
    const hd = t.shape[t.rank - 1]!, half = hd / 2;
    if (!this.#rot || this.#rot.r.shape[0] !== hd) {
      this.#rot?.r.dispose(); this.#rot?.rT.dispose();
      const r = new Float32Array(hd * hd), rT = new Float32Array(hd * hd);
      for (let j = 0; j < half; j++) {
        r[(half + j) * hd + j] = -1; rT[j * hd + half + j] = -1; // out j = −in (half + j)
        r[j * hd + half + j] = 1; rT[(half + j) * hd + j] = 1; // out half + j = in j
      }
      this.#rot = { r: tf.keep(tf.tensor2d(r, [hd, hd])), rT: tf.keep(tf.tensor2d(rT, [hd, hd])) };
    }
    return tf.reshape(frozenMatMul(tf.reshape(t, [-1, hd]) as tf.Tensor2D, this.#rot.r, this.#rot.rT), t.shape);
  }

  /** W as [in, out] (a view of the trainable variable when the base is trainable). */
  #weightIo(l: Linear): tf.Tensor2D {
    if (l.stored) return l.stored.materializeIo(); // a new tensor: callers run inside a tidy
    return this.#trainable && l.wOi ? (t2(l.wOi) as tf.Tensor2D) : l.wIo;
  }

  /**
   * DoRA's ‖W + scale·B A‖ per output feature, as [out]. Detached as PEFT detaches it: the result
   * carries no gradient to A, B or W (only the magnitude and the LoRA branch are trained through g).
   */
  #doraNorm(l: Linear, f: LoraFactors): tf.Tensor1D {
    const wIo = this.#weightIo(l);
    const norm = tf.customGrad(((a: tf.Tensor, b: tf.Tensor) => ({
      value: tf.tidy(() => {
        const w = tf.add(wIo, tf.mul(tf.matMul(t2(a) as tf.Tensor2D, t2(b) as tf.Tensor2D), f.scale)); // [in, out]
        return tf.sqrt(tf.sum(tf.square(w), 0));
      }),
      gradFunc: () => [tf.zerosLike(a), tf.zerosLike(b)],
    })) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (a: tf.Tensor, b: tf.Tensor) => tf.Tensor;
    return norm(f.A, f.B) as tf.Tensor1D;
  }

  #linear(x: tf.Tensor2D, path: string, lora?: LoraRuntime, merged?: Map<string, tf.Tensor2D>): tf.Tensor2D {
    const l = this.#lin.get(path)!;
    const mw = merged?.get(path);
    let y: tf.Tensor2D = mw ? tf.matMul(x, mw) : l.stored ? storedMatMul(x, l.stored) : this.#trainable ? (mm(x, l.wOi ? t2(l.wOi) : l.wIo) as tf.Tensor2D) : frozenMatMul(x, l.wIo, l.wOi);
    const f = mw ? undefined : lora?.get(path);
    if (f?.m) {
      // DoRA: base + (g − 1)·base_without_bias + g·scale·lora = g ⊙ (x W + scale·lora) + b
      const g = tf.div(f.m, this.#doraNorm(l, f));
      const lo = mm(mm(x, t2(f.A)), t2(f.B));
      y = tf.mul(tf.add(y, tf.mul(lo, f.scale)), g) as tf.Tensor2D;
      return (l.b ? tf.add(y, l.b) : y) as tf.Tensor2D;
    }
    // sums that keep no activation for the backward pass, and the scale applied to the rank-r h (not
    // to the [N, out] product, which Mul would keep)
    if (l.b) y = addNoSave(y, l.b, { constB: !this.#trainable }) as tf.Tensor2D;
    if (f) {
      const h = matMulBT(x, f.A);
      y = addNoSave(y, matMulBT(tf.mul(h, f.scale), f.B)) as tf.Tensor2D;
    }
    return y;
  }

  #act(x: tf.Tensor): tf.Tensor {
    switch (this.config.activation) {
      case 'silu': return silu(x);
      case 'relu': return tf.relu(x);
      case 'gelu': return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));
      default: return geluNew(x); // gelu_new / gelu_pytorch_tanh
    }
  }

  #norm(x: tf.Tensor2D, prefix: string): tf.Tensor2D {
    const spec = this.#family.norm;
    const w = this.#w.get(`${prefix}.weight`) as tf.Tensor1D;
    const b = spec.bias ? (this.#w.get(`${prefix}.bias`) as tf.Tensor1D) : null;
    if (spec.fused && !this.#trainable && x.dtype === 'float32' && hasFusedKernels()) return fusedNorm(spec.fused, x, w, b, this.config.normEps);
    return spec.apply(tf, x, w, b, this.config.normEps);
  }

  /**
   * Logits [B, T, V] for int32 ids [B, T]. `mask` [B, T] (1 = token, 0 = padding) hides padded keys.
   * Must run inside tf.tidy (or a gradient scope): intermediate tensors are not disposed here.
   */
  forward(ids: tf.Tensor2D, mask: tf.Tensor2D | null, lora?: LoraRuntime, merged?: Map<string, tf.Tensor2D>): tf.Tensor3D {
    const [Bsz, T] = ids.shape;
    const x = this.#hidden(ids, mask, lora, merged);
    const logits = this.#trainable ? mm(x, t2(this.#head!)) : this.#headLogits(x);
    return tf.reshape(logits, [Bsz, T, this.config.vocabSize]);
  }

  /** Final hidden states [B·T, d] (after the last norm), the input of the LM head. Inside a tidy/tape. */
  #hidden(ids: tf.Tensor2D, mask: tf.Tensor2D | null, lora?: LoraRuntime, merged?: Map<string, tf.Tensor2D>): tf.Tensor2D {
    const c = this.config, fam = this.#family;
    const [Bsz, T] = ids.shape;
    // a learned position table has exactly maxPositions rows; rotary positions extrapolate
    if (fam.tensors.positions && T > c.maxPositions) throw new RangeError(`sequence length ${T} exceeds n_positions ${c.maxPositions}`);
    const d = c.hiddenSize, H = c.numHeads, Hkv = c.numKvHeads, hd = c.headDim, N = Bsz * T;
    const flatIds = tf.reshape(ids, [N]);
    let x: tf.Tensor2D;
    if (this.#embStored) {
      // stored table: the rows of these ids are gathered in JS; only [N, d] enters the heap
      x = tf.tensor2d(this.#embStored.gatherRows(flatIds.dataSync()), [N, d]);
    } else {
      const emb = this.#w.get(fam.tensors.embeddings)!;
      // trainable embeddings: one-hot product (the wasm backend lacks gather's gradient kernel)
      x = (this.#trainable ? mm(tf.oneHot(flatIds, c.vocabSize), emb) : tf.gather(emb, flatIds)) as tf.Tensor2D;
    }
    if (fam.tensors.positions) {
      const wpe = tf.slice(this.#w.get(fam.tensors.positions)!, [0, 0], [T, d]);
      x = tf.reshape(tf.add(tf.reshape(x, [Bsz, T, d]), wpe), [N, d]) as tf.Tensor2D;
    }
    // additive attention bias [B, 1, T, T]: causal + padded keys
    const causal = tf.linalg.bandPart(tf.ones([T, T]), -1, 0);
    let allowed: tf.Tensor = tf.reshape(causal, [1, 1, T, T]);
    if (mask) allowed = tf.mul(allowed, tf.reshape(tf.cast(mask, 'float32'), [Bsz, 1, 1, T]));
    const bias = tf.mul(tf.sub(1, allowed), -1e9);
    const kitFor = (lr: LoraRuntime | undefined, bias: tf.Tensor): BlockKit => ({
      tf, config: c,
      linear: (t, path) => this.#linear(t, path, lr, merged),
      norm: (t, prefix) => this.#norm(t, prefix),
      act: (t) => this.#act(t),
      heads: (t, h) => tf.transpose(tf.reshape(t, [Bsz, T, h, hd]), [0, 2, 1, 3]) as tf.Tensor4D,
      rope: (t) => {
        const rope = this.#ropeTables(T);
        return tf.add(tf.mul(t, rope.cos), tf.mul(this.#rotateHalf(t), rope.sin));
      },
      attend: (q, k, v) => {
        // Grouped-query attention without materialising repeated K/V: query heads h = kv·g + j share
        // kv head `kv`, so [B, H, T, hd] viewed as [B, Hkv, g·T, hd] multiplies K/V of [B, Hkv, T, hd].
        const g = H / Hkv;
        const qg = tf.reshape(q, [Bsz, Hkv, g * T, hd]) as tf.Tensor4D;
        const sc = tf.reshape(bmm(qg, t2(k)), [Bsz, H, T, T]);
        const probs = tf.softmax(tf.add(tf.mul(sc, 1 / Math.sqrt(hd)), bias));
        const att = tf.reshape(bmm(tf.reshape(probs, [Bsz, Hkv, g * T, T]), v), [Bsz, H, T, hd]);
        return tf.reshape(tf.transpose(att, [0, 2, 1, 3]), [N, H * hd]) as tf.Tensor2D;
      },
    });
    for (let i = 0; i < c.numLayers; i++) {
      const xi = x, p = fam.layerPrefix(i);
      x = this.#recompute && lora && !merged ? this.#recomputedBlock(xi, p, lora, bias, kitFor) : tf.tidy(() => fam.forwardBlock(kitFor(lora, bias), xi, p));
    }
    return this.#norm(x, fam.tensors.finalNorm);
  }

  /**
   * One block under activation recomputation (LoadOptions.recomputeBlocks): the forward pass keeps only
   * the block's input (and the attention bias); the backward pass runs the block again under its own
   * gradient tape, inside a tidy, and returns dx and the gradients of the block's LoRA tensors. tfjs
   * otherwise holds every activation the backward pass needs plus, until the whole backward pass ends,
   * the gradient of every intermediate tensor: its memory grew by ~72 MB per Qwen2-0.5B layer at 128
   * tokens, and this bounds it to one block. Costs one more forward pass per block.
   */
  #recomputedBlock(x: tf.Tensor2D, prefix: string, lora: LoraRuntime, bias: tf.Tensor, kitFor: (lr: LoraRuntime, bias: tf.Tensor) => BlockKit): tf.Tensor2D {
    const fam = this.#family;
    const mods: Array<[string, 'A' | 'B' | 'm']> = [];
    const factors: tf.Tensor[] = [];
    for (const [m, f] of lora) {
      if (!m.startsWith(`${prefix}.`)) continue;
      mods.push([m, 'A'], [m, 'B']); factors.push(f.A, f.B);
      if (f.m) { mods.push([m, 'm']); factors.push(f.m); }
    }
    const run = (xx: tf.Tensor, fs: tf.Tensor[], b: tf.Tensor): tf.Tensor2D => {
      const live: LoraRuntime = new Map(lora);
      fs.forEach((t, i) => {
        const [m, which] = mods[i]!;
        const cur: LoraFactors = { ...live.get(m)! };
        if (which === 'm') cur.m = t as tf.Tensor1D; else cur[which] = t as tf.Tensor2D;
        live.set(m, cur);
      });
      return fam.forwardBlock(kitFor(live, b), xx as tf.Tensor2D, prefix);
    };
    const n = 1 + factors.length;
    const f = tf.customGrad(((...args: unknown[]) => {
      const save = args[n] as tf.GradSaveFunc;
      const ins = args.slice(0, n) as tf.Tensor[];
      save([...ins, bias]);
      return {
        value: run(ins[0]!, ins.slice(1), bias),
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const xs = saved.slice(0, n), b = saved[n]!;
          // a gradient computed inside a gradient function: tfjs' engine drops the outer tape when the
          // inner one ends (it thinks the outermost one did), so it is put back
          const engine = tf.engine() as unknown as { state: { activeTape: unknown } };
          const outer = engine.state.activeTape;
          try {
            return tf.grads((...ys: tf.Tensor[]) => run(ys[0]!, ys.slice(1), b))(xs, dy);
          } finally {
            engine.state.activeTape = outer;
          }
        },
      };
    }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (...xs: tf.Tensor[]) => tf.Tensor;
    return f(x, ...factors) as tf.Tensor2D;
  }

  /** Rows [v0, v1) of the frozen LM head as a tensor [v1 − v0, d]; `owned`: a copy the caller disposes. */
  #headRows(v0: number, v1: number): { w: tf.Tensor2D; owned: boolean } {
    const d = this.config.hiddenSize;
    if (this.#headStored) return { w: tf.tensor2d(this.#headStored.rows(v0, v1), [v1 - v0, d]), owned: true };
    if (v0 === 0 && v1 === this.config.vocabSize) return { w: this.#head!, owned: false };
    return { w: tf.slice(this.#head!, [v0, 0], [v1 - v0, d]), owned: true };
  }

  /** Head rows of the given token ids, [n, d] (a new tensor). */
  #headGather(ids: Int32Array): tf.Tensor2D {
    if (this.#headStored) return tf.tensor2d(this.#headStored.gatherRows(ids), [ids.length, this.config.hiddenSize]);
    return tf.tidy(() => tf.gather(this.#head!, tf.tensor1d(ids, 'int32')) as tf.Tensor2D);
  }

  /** Vocabulary chunks [v0, v1) of the head: one for an in-heap head (no copies), else #headChunkRows each. */
  #chunks(whole: boolean): Array<[number, number]> {
    const V = this.config.vocabSize, step = whole ? V : this.#headChunkRows;
    const out: Array<[number, number]> = [];
    for (let v0 = 0; v0 < V; v0 += step) out.push([v0, Math.min(V, v0 + step)]);
    return out;
  }

  /**
   * Logits x Wᵀ [N, V] of the frozen head W [V, d], computed as (W xᵀ)ᵀ per vocabulary chunk; only dx
   * flows back, dy W per chunk. Every product is a plain one (see ops.ts) without a transposed copy of W.
   */
  #headLogits(x: tf.Tensor2D): tf.Tensor2D {
    if (this.#head && !this.#headStored && tf.getBackend() === 'wasm' && hasFusedKernels() && this.config.vocabSize > this.#headViewRows) return this.#headLogitsSliced(x);
    const chunks = this.#chunks(!this.#headStored);
    const f = tf.customGrad(((xx: tf.Tensor) => {
      const xT = tf.transpose(xx);
      const parts = chunks.map(([v0, v1]) => tf.tidy(() => {
        const { w } = this.#headRows(v0, v1);
        return tf.transpose(tf.matMul(w, xT as tf.Tensor2D));
      }));
      xT.dispose();
      const value = parts.length === 1 ? parts[0]! : tf.concat(parts, 1);
      if (parts.length > 1) tf.dispose(parts);
      return {
        value,
        gradFunc: (dy: tf.Tensor) => headDx(dy, chunks.map(([v0, v1]) => [v0, v1, () => this.#headRows(v0, v1).w])),
      };
    }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;
    return f(x) as tf.Tensor2D;
  }

  /**
   * #headLogits on wasm for an in-heap head, per slice of HEAD_VIEW_ROWS (or headChunkRows) rows that share the head's
   * memory (no copies; each slice's XNNPACK packing replaces the packing of the whole head): forward
   * Wᵢ xᵀ per slice, laid side by side transposed in one pass (FedloraConcatT); backward Σᵢ dyᵢ Wᵢ.
   */
  #headLogitsSliced(x: tf.Tensor2D): tf.Tensor2D {
    if (!this.#headViews) {
      const V = this.config.vocabSize, R = this.#headViewRows, views: Array<[number, tf.Tensor2D]> = [];
      for (let v0 = 0; v0 < V; v0 += R) views.push([v0, tf.keep(rowView(this.#head!, v0, Math.min(R, V - v0)) as tf.Tensor2D)]);
      this.#headViews = views;
    }
    const views = this.#headViews;
    const f = tf.customGrad(((xx: tf.Tensor) => {
      const value = tf.tidy(() => {
        const xT = tf.transpose(xx) as tf.Tensor2D;
        return runFused(FUSED.concatT, numbered(views.map(([, w]) => tf.matMul(w, xT)))) as tf.Tensor2D;
      });
      return {
        value,
        gradFunc: (dy: tf.Tensor) => headDx(dy, views.map(([v0, w]) => [v0, v0 + w.shape[0], () => w])),
      };
    }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;
    return f(x) as tf.Tensor2D;
  }

  /**
   * Weighted mean next-token cross entropy straight from the hidden states x [N, d], fused with the LM
   * head and computed one vocabulary chunk at a time: Σ w·(logSumExp_v(x·W_v) − x·W_tgt) / max(Σ w, 1).
   * Forward keeps one logSumExp per chunk ([N] each); backward recomputes each chunk's logits and adds
   * (softmax − onehot)·w/Σw times that chunk of W to dx. Neither pass holds the [N, V] logits. `tgt` are
   * constants (JS ints in [0, V)); only x gets a gradient.
   */
  #headLoss(x: tf.Tensor2D, tgt: Int32Array, w: tf.Tensor1D): tf.Scalar {
    const chunks = this.#chunks(false);
    const f = tf.customGrad(((xx: tf.Tensor, ww: tf.Tensor, save: tf.GradSaveFunc) => {
      const x2 = xx as tf.Tensor2D;
      const xT = tf.transpose(x2) as tf.Tensor2D; // [d, N]
      const parts = chunks.map(([v0, v1]) => tf.tidy(() => {
        const { w: hw, owned } = this.#headRows(v0, v1);
        const lT = tf.matMul(hw, xT); // [Vc, N]
        if (owned) hw.dispose();
        const m = tf.max(lT, 0);
        return tf.add(tf.log(tf.sum(tf.exp(tf.sub(lT, m)), 0)), m) as tf.Tensor1D;
      }));
      xT.dispose();
      const lse = parts.length === 1 ? parts[0]! : tf.logSumExp(tf.stack(parts), 0) as tf.Tensor1D;
      if (parts.length > 1) tf.dispose(parts);
      const rows = this.#headGather(tgt);
      const picked = tf.sum(tf.mul(x2, rows), -1);
      rows.dispose();
      const denom = tf.maximum(tf.sum(ww), 1);
      const value = tf.div(tf.sum(tf.mul(tf.sub(lse, picked), ww)), denom);
      save([x2, lse, ww, denom]);
      return {
        value,
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const [sx, slse, sw, sden] = saved as [tf.Tensor2D, tf.Tensor1D, tf.Tensor1D, tf.Scalar];
          const n = sx.shape[0];
          const scale = tf.div(tf.mul(sw, dy), sden); // [N]
          const scaleRow = tf.reshape(scale, [1, n]), lseRow = tf.reshape(slse, [1, n]);
          const xTb = tf.transpose(sx) as tf.Tensor2D;
          let dx: tf.Tensor = tf.tidy(() => {
            const r = this.#headGather(tgt);
            return tf.neg(tf.mul(r, tf.reshape(scale, [n, 1])));
          });
          for (const [v0, v1] of chunks) {
            const next: tf.Tensor = tf.tidy(() => {
              const { w: hw } = this.#headRows(v0, v1);
              const gT = tf.mul(tf.exp(tf.sub(tf.matMul(hw, xTb), lseRow)), scaleRow); // [Vc, N]
              return tf.add(dx, tf.matMul(tf.transpose(gT) as tf.Tensor2D, hw));
            });
            dx.dispose();
            dx = next;
          }
          xTb.dispose();
          return [dx, tf.zerosLike(sw)];
        },
      };
    }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor, w: tf.Tensor) => tf.Tensor;
    return f(x, w) as tf.Scalar;
  }

  /**
   * The causal-LM loss of `causalLoss(forward(…))`, computed without the [B, T, V] logits: the LM head
   * and cross entropy run fused, one vocabulary chunk at a time (#headLoss), when the head is stored,
   * blocks are recomputed or the logits are large (see headChunkRows). A trainable base (whose head gets a gradient) and small
   * in-heap logits go through the logits. Inside a tidy/tape.
   */
  causalLossOf(ids: tf.Tensor2D, mask: tf.Tensor2D | null, lossMask: tf.Tensor2D, lora?: LoraRuntime): tf.Scalar {
    const [B, T] = ids.shape;
    // small in-heap logits go the unfused way: one head product forward, one back (the fused loss
    // recomputes each chunk's logits: GPT-2-124M at 128 tokens, 3.2 s vs 4.0 s a step for 265 MiB less)
    const fuse = this.#headStored !== null || this.#recompute || this.#fuseAlways || B * T * this.config.vocabSize > FUSE_MIN_LOGITS;
    if (this.#trainable || !fuse) return this.causalLoss(this.forward(ids, mask, lora), ids, lossMask, mask);
    const x = this.#hidden(ids, mask, lora);
    const idv = ids.dataSync();
    const tgt = new Int32Array(B * T);
    for (let b = 0; b < B; b++) for (let t = 0; t + 1 < T; t++) tgt[b * T + t] = idv[b * T + t + 1]!;
    const next = (t: tf.Tensor2D) => tf.concat([tf.slice(t, [0, 1], [B, T - 1]), tf.zerosLike(tf.slice(t, [0, 0], [B, 1]))], 1);
    let w = next(lossMask);
    if (mask) w = tf.mul(w, next(mask));
    return this.#headLoss(x, tgt, tf.reshape(w, [B * T]) as tf.Tensor1D);
  }

  /** Merged linear weights W + scale·ΔW (DoRA: m/‖W + scale·ΔW‖ · (W + scale·ΔW), per output feature)
   *  in the layout #linear multiplies by ([in, out]). The bias is untouched. */
  mergedWeights(lora: LoraRuntime): Map<string, tf.Tensor2D> {
    const out = new Map<string, tf.Tensor2D>();
    for (const [m, f] of lora) {
      const l = this.#lin.get(m)!;
      out.set(m, tf.tidy(() => {
        const delta = tf.mul(tf.matMul(t2(f.A) as tf.Tensor2D, t2(f.B) as tf.Tensor2D), f.scale); // [in, out]
        const w = tf.add(this.#weightIo(l), delta) as tf.Tensor2D;
        if (!f.m) return w;
        return tf.mul(w, tf.div(f.m, tf.sqrt(tf.sum(tf.square(w), 0)))) as tf.Tensor2D;
      }));
    }
    return out;
  }

  /** Validated int32 ids tensor [B, T] from a rectangular number[][]. */
  idsTensor(ids: number[][]): tf.Tensor2D {
    const B = ids.length, T = ids[0]?.length ?? 0;
    if (!B || !T) throw new RangeError('ids must be a non-empty number[][]');
    const flat = new Int32Array(B * T);
    for (let b = 0; b < B; b++) {
      const row = ids[b]!;
      if (row.length !== T) throw new RangeError(`ids row ${b} has length ${row.length}, expected ${T} (pad rows to one length)`);
      for (let t = 0; t < T; t++) {
        const v = row[t]!;
        if (!Number.isInteger(v) || v < 0 || v >= this.config.vocabSize) throw new RangeError(`token id ${v} at [${b}, ${t}] is outside the vocabulary (size ${this.config.vocabSize})`);
        flat[b * T + t] = v;
      }
    }
    return tf.tensor2d(flat, [B, T], 'int32');
  }

  /** Logits as a flat Float32Array [B*T*V]. */
  async logits(ids: number[][], opts: { adapter?: LoraAdapter; merged?: boolean; mask?: number[][] } = {}): Promise<Float32Array> {
    const idsT = this.idsTensor(ids);
    const maskT = opts.mask ? tf.tensor2d(opts.mask.flat(), [ids.length, ids[0]!.length], 'float32') : null;
    const rt = opts.adapter ? this.runtime(opts.adapter) : undefined;
    const mw = rt && opts.merged ? this.mergedWeights(rt) : undefined;
    try {
      const out = tf.tidy(() => this.forward(idsT, maskT, mw ? undefined : rt, mw));
      const data = (await out.data()) as Float32Array;
      out.dispose();
      return data;
    } finally {
      idsT.dispose(); maskT?.dispose();
      if (rt) disposeRuntime(rt);
      if (mw) for (const t of mw.values()) t.dispose();
    }
  }

  /**
   * Causal-LM loss (mean over predicted tokens: labels = ids shifted left; positions whose *target*
   * has lossMask 0 are ignored, as HF's -100) and gradients for every LoRA tensor of the adapter.
   */
  async lossAndGrads(ids: number[][], opts: { adapter: LoraAdapter; lossMask?: number[][]; mask?: number[][] }): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
    const idsT = this.idsTensor(ids);
    const B = ids.length, T = ids[0]!.length;
    const maskT = opts.mask ? tf.tensor2d(opts.mask.flat(), [B, T], 'float32') : null;
    const lmT = tf.tensor2d(opts.lossMask ? opts.lossMask.flat() : new Array(B * T).fill(1), [B, T], 'float32');
    const rt = this.runtime(opts.adapter);
    const names: string[] = [], xs: tf.Tensor[] = [], mods: Array<[string, 'A' | 'B' | 'm']> = [];
    for (const [m, f] of rt) {
      names.push(loraAName(m), loraBName(m)); xs.push(f.A, f.B); mods.push([m, 'A'], [m, 'B']);
      if (f.m) { names.push(loraMName(m)); xs.push(f.m); mods.push([m, 'm']); }
    }
    try {
      const { value, grads } = tf.tidy(() => tf.valueAndGrads((...ts: tf.Tensor[]) => {
        const live: LoraRuntime = new Map();
        ts.forEach((t, i) => {
          const [m, which] = mods[i]!;
          const cur: LoraFactors = live.get(m) ?? { A: t as tf.Tensor2D, B: t as tf.Tensor2D, scale: rt.get(m)!.scale };
          if (which === 'm') cur.m = t as tf.Tensor1D; else cur[which] = t as tf.Tensor2D;
          live.set(m, cur);
        });
        return this.causalLossOf(idsT, maskT, lmT, live);
      })(xs));
      const loss = (await value.data())[0]!;
      const out = new Map<string, Float32Array>();
      for (let i = 0; i < names.length; i++) out.set(names[i]!, (await grads[i]!.data()) as Float32Array);
      value.dispose(); tf.dispose(grads);
      return { loss, grads: out };
    } finally {
      idsT.dispose(); maskT?.dispose(); lmT.dispose(); disposeRuntime(rt);
    }
  }

  /** Mean next-token cross entropy over targets with lossMask 1 (and attention mask 1). */
  causalLoss(logits: tf.Tensor3D, ids: tf.Tensor2D, lossMask: tf.Tensor2D, mask: tf.Tensor2D | null): tf.Scalar {
    const [B, T, V] = logits.shape;
    // every position predicts the next token; the last one has no target (weight 0), so the logits
    // are used whole, without a slice (and its copy) of [B, T − 1, V]
    const next = (t: tf.Tensor2D) => tf.concat([tf.slice(t, [0, 1], [B, T - 1]), tf.zerosLike(tf.slice(t, [0, 0], [B, 1]))], 1);
    const tgt = tf.reshape(next(tf.cast(ids, 'int32') as tf.Tensor2D), [B * T]) as tf.Tensor1D;
    let w = next(lossMask);
    if (mask) w = tf.mul(w, next(mask));
    return weightedCrossEntropy(tf.reshape(logits, [B * T, V]) as tf.Tensor2D, tgt, tf.reshape(w, [B * T]) as tf.Tensor1D);
  }

  /** Trainable base variables (only with `trainableBase`), by HF name. */
  baseVariables(): Map<string, tf.Variable> {
    if (!this.#trainable) throw new Error('model was not loaded with trainableBase');
    return new Map(this.#hfNames.map((n) => [n, this.#w.get(n) as tf.Variable]));
  }

  /** Current base weights in HF layout (names and shapes as in the checkpoint). */
  async baseWeights(): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
    if (this.#baseDtype) throw new Error('baseWeights: the linear weights are stored compactly (baseDtype); load without it');
    const out = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const n of this.#hfNames) {
      const t = this.#w.get(n);
      if (t) { out.set(n, { shape: [...t.shape], data: (await t.data()) as Float32Array }); continue; }
      // a frozen nn.Linear weight kept only as [in, out] (#finish): back to the checkpoint's [out, in]
      const oi = tf.transpose(this.#w.get(`${n}.io`)!);
      out.set(n, { shape: [...oi.shape], data: (await oi.data()) as Float32Array });
      oi.dispose();
    }
    return out;
  }

  /** Number of base parameters (for reports: full-model-equivalent bytes). */
  get parameterCount(): number {
    return this.#params;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#headViews) for (const [, v] of this.#headViews) v.dispose();
    this.#headViews = null;
    for (const t of this.#w.values()) t.dispose();
    for (const r of this.#rope.values()) { r.cos.dispose(); r.sin.dispose(); }
    this.#rot?.r.dispose(); this.#rot?.rT.dispose(); this.#rot = null;
    this.#w.clear(); this.#lin.clear(); this.#rope.clear();
  }
}

/**
 * dx of logits x Wᵀ from dy [N, V], one vocabulary slice [v0, v1) of the head at a time: Σ dy[:, v0:v1] W[v0:v1]
 * (a slice's W comes from `w()` inside the slice's tidy: a copy is freed there, a kept tensor stays).
 */
function headDx(dy: tf.Tensor, slices: Array<[number, number, () => tf.Tensor2D]>): tf.Tensor {
  const [n, V] = dy.shape as [number, number];
  let dx: tf.Tensor | null = null;
  for (const [v0, v1, w] of slices) {
    const next: tf.Tensor = tf.tidy(() => {
      const g = v0 === 0 && v1 === V ? dy : tf.slice(dy, [0, v0], [n, v1 - v0]);
      const p = tf.matMul(g as tf.Tensor2D, w());
      return dx ? tf.add(dx, p) : p;
    });
    dx?.dispose();
    dx = next;
  }
  return dx!;
}

export function disposeRuntime(rt: LoraRuntime): void {
  for (const f of rt.values()) { f.A.dispose(); f.B.dispose(); f.m?.dispose(); }
}

/** model.safetensors, or the shards listed by model.safetensors.index.json. */
export async function checkpointFiles(dir: string): Promise<string[]> {
  const single = `${dir}/model.safetensors`;
  if (await exists(single)) return [single];
  const indexFile = `${dir}/model.safetensors.index.json`;
  if (!(await exists(indexFile))) throw new ModelFormatError('no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)', dir);
  let index: unknown;
  try { index = JSON.parse(await readFile(indexFile, 'utf8')); } catch (e) { throw new ModelFormatError(`not valid JSON (${(e as Error).message})`, indexFile); }
  const wm = (index as { weight_map?: unknown }).weight_map;
  if (typeof wm !== 'object' || wm === null) throw new ModelFormatError('missing weight_map', indexFile);
  const shards = new Set<string>();
  for (const v of Object.values(wm)) {
    if (typeof v !== 'string' || v.includes('/') || v.includes('\\') || !v.endsWith('.safetensors')) throw new ModelFormatError(`bad shard name ${JSON.stringify(v)}`, indexFile);
    shards.add(v);
  }
  return [...shards].sort().map((s) => `${dir}/${s}`);
}

async function exists(p: string): Promise<boolean> {
  try { await stat(p); return true; } catch { return false; }
}

/** Public API: load a Hugging Face causal LM folder. */
export async function loadCausalLM(dir: string, opts: LoadOptions = {}): Promise<CausalLM> {
  return CausalLM.load(dir, opts);
}
