/**
 * The client's local trainer: base model (frozen, shared) + private data → an updated adapter and
 * evaluation metrics. This is the only place a client's examples are read; nothing here touches
 * the network.
 */
import { loadCausalLM, CausalLM } from '../shared/model/causal-lm.js';
import { ByteTokenizer, loadTokenizer, type TextTokenizer } from '../shared/model/tokenizer.js';
import { encodeExamples, loadJsonlDataset, padBatch, splitEval, type Example, type EncodedExample } from '../shared/data/jsonl.js';
import { Rng } from '../shared/data/random.js';
import { LoraTrainer, type Batch, type OptimizerState } from '../shared/train/trainer.js';
import { evaluate, type EvalMetrics } from '../shared/train/eval.js';
import { disposeRuntime } from '../shared/model/causal-lm.js';
import { DataError, ModelFormatError } from '../shared/errors.js';
import type { LoraAdapter } from '../shared/lora/adapter.js';
import { hasXs, xsToLora } from '../shared/lora/xs.js';

export type { EvalMetrics };

export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export interface TrainOptions {
  steps: number;
  lr: number;
  batchSize: number;
  seed: number;
  trainable: (peftName: string) => boolean;
  onProgress?: (step: number, total: number, loss: number) => void;
  gradAccum?: number;
  weightDecay?: number;
  warmupSteps?: number;
  /** Learning-rate schedule within one train() call (default constant). */
  schedule?: 'constant' | 'cosine' | 'linear';
  /** Carry AdamW moments over from the previous train() call (default true). */
  keepOptimizerState?: boolean;
  /**
   * What carried AdamW moments do when the incoming adapter's rank slots are in a new basis (the
   * coordinator refactored the global adapter, see inRefactoredBasis): 'reset' (default) starts a
   * fresh optimizer, 'keep' carries them anyway. The moments are per slot; after a refactor slot j
   * is another direction, so carried moments no longer line up (reset measured better: 75.5 % vs
   * 72.8 % on the default scenario, issue 10).
   */
  onBasisChange?: 'reset' | 'keep';
  /**
   * Which carried AdamW state this call uses (default 'main'). A side run such as the client's
   * personalization fine-tuning passes its own key ('personal'), so its moments and the main
   * training's never mix; each key carries its own moments from call to call.
   */
  optimizerKey?: string;
  /** A proximal term towards `reference` (LoraTrainerOptions.prox): Ditto-style personalization. */
  prox?: { weight: number; reference: LoraAdapter };
}

export interface TrainResult {
  adapter: LoraAdapter;
  trainLoss: number;
  steps: number;
  examples: number;
  /** AdamW moments this call started from: none yet, carried from the previous call, or dropped (basis change / keepOptimizerState false). */
  optimizer?: 'fresh' | 'carried' | 'reset';
}

/** Relative tolerance of the refactored-form check (float32 rounding of a refactor is ~1e-7). */
const REFACTORED_RTOL = 1e-4;

/**
 * true when some module's lora_A (rank ≥ 2) is in the form the coordinator's QR+SVD refactor leaves
 * it in: rows mutually orthogonal with one common norm (shared/aggregation/refactor.ts). A seeded
 * init, a client's trained A and a plain average are never in that form (to 1e-4), so this is the
 * cheapest reliable signal that the slot basis changed since the last round, with no protocol field.
 * Rank-1 modules cannot tell (a rank-1 refactor is at most a sign flip); modules a client keeps
 * personal are never rotated and never match; LoRA-XS adapters (frozen orthonormal A) never count.
 */
export function inRefactoredBasis(adapter: LoraAdapter): boolean {
  // LoRA-XS: A = V_rᵀ is frozen with orthonormal rows by construction and never refactored
  if (hasXs(adapter)) return false;
  for (const [name, t] of adapter.tensors) {
    if (!name.endsWith('.lora_A.weight') || t.shape.length !== 2) continue;
    const [r, n] = t.shape as [number, number];
    if (r < 2 || n < r) continue;
    const d = t.data;
    const gram = new Float64Array(r * r);
    for (let i = 0; i < r; i++) {
      for (let j = i; j < r; j++) {
        let s = 0;
        for (let k = 0; k < n; k++) s += d[i * n + k]! * d[j * n + k]!;
        gram[i * r + j] = s;
      }
    }
    let mean = 0;
    for (let i = 0; i < r; i++) mean += gram[i * r + i]! / r;
    if (!(mean > 0)) continue;
    let ok = true;
    for (let i = 0; i < r && ok; i++) {
      for (let j = i; j < r; j++) {
        const want = i === j ? mean : 0;
        if (Math.abs(gram[i * r + j]! - want) > REFACTORED_RTOL * mean) { ok = false; break; }
      }
    }
    if (ok) return true;
  }
  return false;
}

export interface LocalTrainer {
  /** module path → {in, out} for every linear layer of the base model. */
  readonly moduleShapes: Map<string, { in: number; out: number }>;
  readonly trainExamples: number;
  readonly evalExamples: number;
  train(start: LoraAdapter, opts: TrainOptions): Promise<TrainResult>;
  evaluate(adapter: LoraAdapter): Promise<EvalMetrics>;
  dispose(): void;
}

export interface CreateTrainerOptions {
  modelDir: string;
  /** JSONL file with {"text"} or {"prompt","completion"} lines; or pass `examples`. */
  dataFile?: string;
  examples?: Example[];
  backend?: string;
  /** LoadOptions.baseDtype: the frozen linear weights stored outside the tfjs heap. */
  baseDtype?: 'fp32' | 'bf16' | 'int8' | 'nf4';
  /** LoadOptions.recomputeBlocks. */
  recomputeBlocks?: boolean;
  evalFraction?: number;
  seed?: number;
  maxSeqLen?: number;
  /** Share one loaded model among many trainers in a process (not disposed by the trainer). */
  lm?: CausalLM;
  tokenizer?: TextTokenizer;
  /** Cap on eval examples scored each round (default 256). */
  maxEval?: number;
}

export async function resolveTokenizer(modelDir: string, vocabSize: number): Promise<TextTokenizer> {
  try {
    return await loadTokenizer(modelDir);
  } catch (e) {
    // tokenizer-less checkpoints (e.g. test fixtures) fall back to bytes when the vocabulary can hold them
    if (e instanceof ModelFormatError && /no fedlora_tokenizer.json or tokenizer.json/.test(e.message) && vocabSize >= 259) return new ByteTokenizer();
    throw e;
  }
}

export async function createTrainer(opts: CreateTrainerOptions): Promise<LocalTrainer> {
  const seed = opts.seed ?? 0;
  const examples = opts.examples ?? (opts.dataFile ? await loadJsonlDataset(opts.dataFile) : undefined);
  if (!examples) throw new DataError('createTrainer needs dataFile or examples');
  if (examples.length < 2) throw new DataError(`need at least 2 examples, got ${examples.length}`);
  const lm = opts.lm ?? (await loadCausalLM(opts.modelDir, { backend: opts.backend ?? 'auto', ...(opts.baseDtype ? { baseDtype: opts.baseDtype } : {}), ...(opts.recomputeBlocks ? { recomputeBlocks: true } : {}) }));
  const ownsModel = !opts.lm;
  try {
    const tok = opts.tokenizer ?? (await resolveTokenizer(opts.modelDir, lm.config.vocabSize));
    if (tok.vocabSize > lm.config.vocabSize) throw new ModelFormatError(`tokenizer produces ids up to ${tok.vocabSize - 1} but the model's vocabulary has ${lm.config.vocabSize} entries`, opts.modelDir);
    const maxSeqLen = Math.min(opts.maxSeqLen ?? 256, lm.config.maxPositions);
    const split = splitEval(examples, opts.evalFraction ?? 0.2, seed);
    const evalSet = split.eval.slice(0, opts.maxEval ?? 256);
    const train = encodeExamples(split.train, tok, maxSeqLen).filter((e) => e.lossMask.some((m) => m > 0));
    if (!train.length) throw new DataError('no training example has a target token after tokenization');
    return new Trainer(lm, ownsModel, tok, train, evalSet, maxSeqLen);
  } catch (e) {
    if (ownsModel) lm.dispose();
    throw e;
  }
}

class Trainer implements LocalTrainer {
  readonly moduleShapes: Map<string, { in: number; out: number }>;
  readonly #lm: CausalLM;
  readonly #owns: boolean;
  readonly #tok: TextTokenizer;
  readonly #train: EncodedExample[];
  readonly #eval: Example[];
  readonly #maxSeqLen: number;
  #round = 0;
  /** AdamW moments carried from one round to the next (private client state, in memory). */
  #optStates = new Map<string, OptimizerState>();

  constructor(lm: CausalLM, owns: boolean, tok: TextTokenizer, train: EncodedExample[], evalSet: Example[], maxSeqLen: number) {
    this.#lm = lm; this.#owns = owns; this.#tok = tok; this.#train = train; this.#eval = evalSet; this.#maxSeqLen = maxSeqLen;
    this.moduleShapes = lm.linearShapes;
  }

  get trainExamples(): number { return this.#train.length; }
  get evalExamples(): number { return this.#eval.length; }

  async train(start: LoraAdapter, o: TrainOptions): Promise<TrainResult> {
    if (!Number.isInteger(o.steps) || o.steps < 1) throw new RangeError(`steps must be a positive integer, got ${o.steps}`);
    if (!Number.isInteger(o.batchSize) || o.batchSize < 1) throw new RangeError(`batch size must be a positive integer, got ${o.batchSize}`);
    const accum = o.gradAccum ?? 1;
    const rng = new Rng(`train:${o.seed}:${this.#round++}`);
    let order: number[] = [];
    const next = (): EncodedExample => {
      if (!order.length) order = rng.shuffle(this.#train.map((_, i) => i));
      return this.#train[order.pop()!]!;
    };
    const key = o.optimizerKey ?? 'main';
    const saved = this.#optStates.get(key) ?? null;
    const basisChanged = saved !== null && (o.onBasisChange ?? 'reset') === 'reset' && inRefactoredBasis(start);
    const carry = saved !== null && o.keepOptimizerState !== false && !basisChanged;
    const optimizer: TrainResult['optimizer'] = saved === null ? 'fresh' : carry ? 'carried' : 'reset';
    // Federated local training: constant learning rate (the rounds are the outer loop), with a
    // short warmup only while the optimizer has no history.
    const trainer = new LoraTrainer(this.#lm, start, {
      lr: o.lr, totalSteps: o.steps, warmupSteps: o.warmupSteps ?? (carry ? 0 : Math.min(10, Math.floor(o.steps / 4))),
      schedule: o.schedule ?? 'constant', weightDecay: o.weightDecay ?? 0, maxGradNorm: 1.0, minLrRatio: 0.1,
    }, o.trainable, o.prox ? { prox: o.prox } : {});
    // Restarting Adam every round makes its first steps sign-like (≈ lr per entry in every direction),
    // which swamps the few steps a round has; carrying the moments keeps local steps well-scaled.
    // A refactored start (new slot basis) drops them: see TrainOptions.onBasisChange.
    if (carry) trainer.importOptimizerState(saved);
    try {
      const losses: number[] = [];
      for (let s = 0; s < o.steps; s++) {
        const micro: Batch[] = [];
        for (let a = 0; a < accum; a++) micro.push(padBatch(Array.from({ length: o.batchSize }, next), this.#tok.padId));
        const { loss } = await trainer.trainStep(micro);
        if (!Number.isFinite(loss)) throw new Error(`training diverged: loss ${loss} at step ${s + 1}`);
        losses.push(loss);
        o.onProgress?.(s + 1, o.steps, loss);
        // a macrotask turn per step: the process keeps answering its sockets while it trains
        await yieldToEventLoop();
      }
      this.#optStates.set(key, await trainer.exportOptimizerState());
      const tail = losses.slice(-Math.max(1, Math.ceil(losses.length / 4)));
      return { adapter: await trainer.adapter(), trainLoss: tail.reduce((a, b) => a + b, 0) / tail.length, steps: o.steps, examples: this.#train.length, optimizer };
    } finally {
      trainer.dispose();
    }
  }

  async evaluate(adapter: LoraAdapter): Promise<EvalMetrics> {
    // a LoRA-XS adapter is evaluated as the plain LoRA it equals (B' = B·R)
    const rt = this.#lm.runtime(hasXs(adapter) ? xsToLora(adapter) : adapter);
    try {
      return await evaluate(this.#lm, this.#tok, this.#eval, rt, { maxSeqLen: this.#maxSeqLen });
    } finally {
      disposeRuntime(rt);
    }
  }

  dispose(): void {
    if (this.#owns) this.#lm.dispose();
  }
}
