/**
 * JSON-lines datasets for local training: one example per line, either
 *   {"text": "..."}                              (language modelling: every token is a target), or
 *   {"prompt": "...", "completion": "..."}       (only the completion is a target).
 * Other keys on a line are ignored (e.g. an id or label kept for bookkeeping). Blank lines are skipped.
 * The file is untrusted: its size, the number of records and each line's length are bounded, and every
 * error names the line.
 */
import { open } from 'node:fs/promises';
import { DataError } from '../errors.js';
import { Rng } from './random.js';
import type { TextTokenizer } from '../model/tokenizer.js';

export type Example = { text: string } | { prompt: string; completion: string };

export interface JsonlOptions {
  /** Largest file accepted (default 256 MiB). */
  maxBytes?: number;
  /** Most records accepted (default 1,000,000). */
  maxRecords?: number;
  /** Longest line accepted, in UTF-16 code units (default 1 MiB). */
  maxLineChars?: number;
}

export function isPromptCompletion(e: Example): e is { prompt: string; completion: string } {
  return 'prompt' in e;
}

/** Validates one parsed record; `where` prefixes the error (e.g. "data.jsonl:12"). */
export function toExample(raw: unknown, where: string): Example {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new DataError(`${where}: expected a JSON object`);
  const r = raw as Record<string, unknown>;
  const hasText = 'text' in r;
  const hasPrompt = 'prompt' in r || 'completion' in r;
  if (hasText && hasPrompt) throw new DataError(`${where}: has both "text" and "prompt"/"completion"; use one form`);
  if (hasText) {
    if (typeof r.text !== 'string') throw new DataError(`${where}: "text" must be a string`);
    if (r.text.length === 0) throw new DataError(`${where}: "text" is empty`);
    return { text: r.text };
  }
  if (hasPrompt) {
    if (typeof r.prompt !== 'string') throw new DataError(`${where}: "prompt" must be a string`);
    if (typeof r.completion !== 'string') throw new DataError(`${where}: "completion" must be a string`);
    if (r.completion.length === 0) throw new DataError(`${where}: "completion" is empty`);
    return { prompt: r.prompt, completion: r.completion };
  }
  throw new DataError(`${where}: needs "text" or "prompt" + "completion"`);
}

/** Parses JSONL text already in memory (same rules as loadJsonlDataset). */
export function parseJsonl(content: string, name = '<jsonl>', opts: JsonlOptions = {}): Example[] {
  const maxRecords = opts.maxRecords ?? 1_000_000;
  const maxLine = opts.maxLineChars ?? 1024 * 1024;
  const out: Example[] = [];
  let lineNo = 0;
  let pos = 0;
  while (pos <= content.length) {
    let nl = content.indexOf('\n', pos);
    if (nl < 0) nl = content.length;
    lineNo++;
    let line = content.slice(pos, nl);
    pos = nl + 1;
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (lineNo === 1 && line.charCodeAt(0) === 0xfeff) line = line.slice(1);
    if (line.trim() === '') continue;
    const where = `${name}:${lineNo}`;
    if (line.length > maxLine) throw new DataError(`${where}: line is ${line.length} characters, over the ${maxLine} limit`);
    if (out.length >= maxRecords) throw new DataError(`${where}: more than ${maxRecords} records`);
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch (e) {
      throw new DataError(`${where}: invalid JSON (${(e as Error).message})`, { cause: e });
    }
    out.push(toExample(raw, where));
  }
  return out;
}

/** Reads and validates a JSONL dataset file. Throws DataError naming the line on any bad record. */
export async function loadJsonlDataset(file: string, opts: JsonlOptions = {}): Promise<Example[]> {
  const maxBytes = opts.maxBytes ?? 256 * 1024 * 1024;
  let fh;
  try {
    fh = await open(file, 'r');
  } catch (e) {
    throw new DataError(`${file}: cannot open (${(e as Error).message})`, { cause: e });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new DataError(`${file}: not a regular file`);
    if (st.size > maxBytes) throw new DataError(`${file}: ${st.size} bytes exceeds the ${maxBytes}-byte limit`);
    const buf = await fh.readFile();
    if (buf.byteLength > maxBytes) throw new DataError(`${file}: grew past the ${maxBytes}-byte limit while reading`);
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(buf);
    } catch (e) {
      throw new DataError(`${file}: not valid UTF-8`, { cause: e });
    }
    const examples = parseJsonl(text, file, opts);
    if (examples.length === 0) throw new DataError(`${file}: no records`);
    return examples;
  } finally {
    await fh.close();
  }
}

/**
 * Deterministic hold-out split: a seeded shuffle, then the first round(fraction·n) examples are eval.
 * With fraction > 0 and n ≥ 2 both sides get at least one example.
 */
export function splitEval<T>(examples: readonly T[], fraction: number, seed: number | string): { train: T[]; eval: T[] } {
  if (!(fraction >= 0 && fraction < 1)) throw new RangeError(`eval fraction must be in [0, 1), got ${fraction}`);
  const n = examples.length;
  let k = Math.round(fraction * n);
  if (fraction > 0 && n >= 2) k = Math.min(n - 1, Math.max(1, k));
  const s = new Rng(`eval:${String(seed)}`).shuffle(examples);
  return { eval: s.slice(0, k), train: s.slice(k) };
}

export interface EncodedExample {
  /** Token ids, unpadded: [bos?] prompt completion [eos?]. */
  ids: number[];
  /**
   * Aligned with `ids`: 1 where `ids[i]` is a training target, i.e. the loss term for predicting
   * `ids[i]` from `ids[0..i-1]`. `lossMask[0]` is always 0 (nothing predicts the first token). A trainer
   * using inputs `ids[0..L-2]` and labels `ids[1..L-1]` uses `lossMask[1..L-1]` as label weights.
   */
  lossMask: number[];
}

export interface EncodeOptions {
  /** Prepend the tokenizer's bos id when it has one (default true). */
  addBos?: boolean;
  /** Append the tokenizer's eos id when it has one (default true); it is a target, so the model learns to stop. */
  addEos?: boolean;
}

/**
 * Tokenizes examples for causal-LM fine-tuning.
 *
 * - text: `[bos] text [eos]`; every token after bos is a target. Too long → cut on the right (eos is
 *   dropped with the tail).
 * - prompt/completion: prompt and completion are tokenized separately (so a completion such as " spam"
 *   has the same ids in every example) and joined as `[bos] prompt completion [eos]`. Only completion
 *   tokens and the eos are targets. Too long → prompt tokens are dropped from the left (bos is kept) so
 *   the completion survives; if the completion alone does not fit, the prompt is emptied and the
 *   completion is cut on the right.
 *
 * Sequences are not padded; see `padBatch`.
 */
export function encodeExamples(examples: readonly Example[], tokenizer: TextTokenizer, maxLen: number, opts: EncodeOptions = {}): EncodedExample[] {
  if (!Number.isSafeInteger(maxLen) || maxLen < 2) throw new RangeError(`maxLen must be an integer ≥ 2, got ${maxLen}`);
  const bos = opts.addBos === false ? [] : tokenizer.bosId !== undefined ? [tokenizer.bosId] : [];
  const eos = opts.addEos === false ? [] : tokenizer.eosId !== undefined ? [tokenizer.eosId] : [];
  return examples.map((ex) => {
    if (!isPromptCompletion(ex)) {
      const ids = [...bos, ...tokenizer.encode(ex.text), ...eos].slice(0, maxLen);
      const lossMask = ids.map((_, i) => (i < bos.length ? 0 : 1));
      lossMask[0] = 0;
      return { ids, lossMask };
    }
    let prompt = tokenizer.encode(ex.prompt);
    let target = [...tokenizer.encode(ex.completion), ...eos];
    const room = maxLen - bos.length;
    if (target.length > room) {
      target = target.slice(0, room);
      prompt = [];
    } else if (prompt.length + target.length > room) {
      prompt = prompt.slice(prompt.length - (room - target.length));
    }
    const ids = [...bos, ...prompt, ...target];
    const lossMask = ids.map((_, i) => (i >= bos.length + prompt.length ? 1 : 0));
    lossMask[0] = 0;
    return { ids, lossMask };
  });
}

/**
 * Right-pads encoded examples to one length (default: the longest) into flat row-major arrays:
 * `ids` padded with `padId`, `lossMask` and `attentionMask` with 0. Shape [batch, length].
 */
export function padBatch(batch: readonly EncodedExample[], padId: number, length?: number): { ids: Int32Array; lossMask: Float32Array; attentionMask: Float32Array; batch: number; length: number } {
  const len = length ?? Math.max(1, ...batch.map((b) => b.ids.length));
  const ids = new Int32Array(batch.length * len).fill(padId);
  const lossMask = new Float32Array(batch.length * len);
  const attentionMask = new Float32Array(batch.length * len);
  batch.forEach((b, r) => {
    const n = Math.min(len, b.ids.length);
    for (let i = 0; i < n; i++) {
      ids[r * len + i] = b.ids[i] as number;
      lossMask[r * len + i] = b.lossMask[i] as number;
      attentionMask[r * len + i] = 1;
    }
  });
  return { ids, lossMask, attentionMask, batch: batch.length, length: len };
}
