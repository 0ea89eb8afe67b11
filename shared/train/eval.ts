/**
 * Evaluation of a causal LM + adapter on held-out examples: mean target loss, and, where the
 * completions come from a small closed set (labels such as " spam" / " ham"), classification by
 * comparing the log-likelihood of every candidate completion — accuracy and macro-F1.
 */
import { tf } from '../backend/index.js';
import type { CausalLM, LoraRuntime } from '../model/causal-lm.js';
import { encodeExamples, isPromptCompletion, padBatch, type Example, type EncodedExample } from '../data/jsonl.js';
import type { TextTokenizer } from '../model/tokenizer.js';

export interface EvalMetrics { loss: number; accuracy: number; f1?: number; examples: number }

/** Most distinct completions for which evaluation treats the task as classification. */
export const MAX_CLASSES = 16;

/** Per-row sum of log p(target) over positions with lossMask 1, and the per-row target count. */
export async function rowLogProbs(lm: CausalLM, encoded: readonly EncodedExample[], padId: number, rt: LoraRuntime | undefined, batchSize: number): Promise<{ logp: Float64Array; count: Float64Array }> {
  const logp = new Float64Array(encoded.length), count = new Float64Array(encoded.length);
  for (let s = 0; s < encoded.length; s += batchSize) {
    const chunk = encoded.slice(s, s + batchSize);
    const b = padBatch(chunk, padId);
    const ids = tf.tensor2d(b.ids, [b.batch, b.length], 'int32');
    const am = tf.tensor2d(b.attentionMask, [b.batch, b.length]);
    const lmask = tf.tensor2d(b.lossMask, [b.batch, b.length]);
    const out = tf.tidy(() => {
      const logits = lm.forward(ids, am, rt);
      const [B, T, V] = logits.shape;
      const lsm = tf.logSoftmax(tf.slice(logits, [0, 0, 0], [B, T - 1, V]));
      const tgt = tf.slice(ids, [0, 1], [B, T - 1]);
      const picked = tf.sum(tf.mul(lsm, tf.oneHot(tgt, V)), -1);
      const w = tf.mul(tf.slice(lmask, [0, 1], [B, T - 1]), tf.slice(am, [0, 1], [B, T - 1]));
      return tf.stack([tf.sum(tf.mul(picked, w), -1), tf.sum(w, -1)]);
    });
    const d = await out.data();
    for (let r = 0; r < chunk.length; r++) { logp[s + r] = d[r]!; count[s + r] = d[chunk.length + r]!; }
    out.dispose(); ids.dispose(); am.dispose(); lmask.dispose();
    await new Promise((resolve) => setImmediate(resolve)); // let socket I/O through between batches
  }
  return { logp, count };
}

export function candidateSet(examples: readonly Example[]): string[] | null {
  const set = new Set<string>();
  for (const e of examples) {
    if (!isPromptCompletion(e)) return null;
    set.add(e.completion);
    if (set.size > MAX_CLASSES) return null;
  }
  return set.size >= 2 ? [...set].sort() : null;
}

/** Macro-F1 over the classes present in truth or prediction. */
export function macroF1(truth: readonly number[], pred: readonly number[], k: number): number {
  let sum = 0, n = 0;
  for (let c = 0; c < k; c++) {
    let tp = 0, fp = 0, fn = 0;
    for (let i = 0; i < truth.length; i++) {
      if (pred[i] === c && truth[i] === c) tp++;
      else if (pred[i] === c) fp++;
      else if (truth[i] === c) fn++;
    }
    if (tp + fp + fn === 0) continue;
    sum += (2 * tp) / (2 * tp + fp + fn); n++;
  }
  return n ? sum / n : 0;
}

export async function evaluate(lm: CausalLM, tok: TextTokenizer, examples: readonly Example[], rt: LoraRuntime | undefined, opts: { maxSeqLen: number; batchSize?: number }): Promise<EvalMetrics> {
  if (!examples.length) return { loss: NaN, accuracy: NaN, examples: 0 };
  const bs = opts.batchSize ?? 16;
  const classes = candidateSet(examples);
  if (!classes) {
    // open-ended text: mean target loss, and next-token accuracy over targets
    const enc = encodeExamples(examples, tok, opts.maxSeqLen);
    const { logp, count } = await rowLogProbs(lm, enc, tok.padId, rt, bs);
    let lp = 0, cnt = 0;
    for (let i = 0; i < enc.length; i++) { lp += logp[i]!; cnt += count[i]!; }
    return { loss: cnt ? -lp / cnt : NaN, accuracy: await tokenAccuracy(lm, enc, tok.padId, rt, bs), examples: examples.length };
  }
  // Score each candidate completion (without eos) after every prompt. The loss reported is the mean
  // negative log-likelihood per token of the true completion, taken from the same scores.
  const pairs: Example[] = [];
  for (const e of examples) for (const c of classes) pairs.push({ prompt: (e as { prompt: string }).prompt, completion: c });
  const encPairs = encodeExamples(pairs, tok, opts.maxSeqLen, { addEos: false });
  const scores = await rowLogProbs(lm, encPairs, tok.padId, rt, bs);
  const truth: number[] = [], pred: number[] = [];
  let lp = 0, cnt = 0;
  examples.forEach((e, i) => {
    const t = classes.indexOf((e as { completion: string }).completion);
    truth.push(t);
    lp += scores.logp[i * classes.length + t]!; cnt += scores.count[i * classes.length + t]!;
    let best = 0;
    for (let c = 1; c < classes.length; c++) if (scores.logp[i * classes.length + c]! > scores.logp[i * classes.length + best]!) best = c;
    pred.push(best);
  });
  const acc = truth.filter((t, i) => t === pred[i]).length / truth.length;
  return { loss: cnt ? -lp / cnt : NaN, accuracy: acc, f1: macroF1(truth, pred, classes.length), examples: examples.length };
}

async function tokenAccuracy(lm: CausalLM, enc: readonly EncodedExample[], padId: number, rt: LoraRuntime | undefined, bs: number): Promise<number> {
  let hit = 0, tot = 0;
  for (let s = 0; s < enc.length; s += bs) {
    const b = padBatch(enc.slice(s, s + bs), padId);
    const ids = tf.tensor2d(b.ids, [b.batch, b.length], 'int32');
    const am = tf.tensor2d(b.attentionMask, [b.batch, b.length]);
    const arg = tf.tidy(() => tf.argMax(lm.forward(ids, am, rt), -1));
    const a = await arg.data();
    for (let r = 0; r < b.batch; r++) for (let t = 1; t < b.length; t++) {
      const k = r * b.length + t;
      if (b.lossMask[k]! * b.attentionMask[k]! > 0) { tot++; if (a[k - 1] === b.ids[k]) hit++; }
    }
    arg.dispose(); ids.dispose(); am.dispose();
  }
  return tot ? hit / tot : NaN;
}
