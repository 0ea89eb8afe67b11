/**
 * Tokenizers behind one small interface.
 *
 * - Hugging Face models: `tokenizer.json` (+ `tokenizer_config.json` when present) through
 *   `@huggingface/tokenizers`.
 * - The project's built-in tiny models: `ByteTokenizer`, described by `fedlora_tokenizer.json`
 *   (`{"type":"bytes",...}`), which `loadTokenizer` prefers when present.
 *
 * `encode` never adds special tokens: callers (e.g. `encodeExamples`) place bos/eos explicitly so that
 * the same rule holds for every tokenizer family.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { ModelFormatError, errorMessage } from '../errors.js';
import { atomicWrite } from './safetensors.js';

export interface TextTokenizer {
  /** Token ids of `text`, without bos/eos. */
  encode(text: string): number[];
  /** Text of `ids`; special tokens (bos/eos/pad) are dropped. */
  decode(ids: readonly number[]): string;
  /** One more than the largest id this tokenizer can produce (the embedding table size it needs). */
  readonly vocabSize: number;
  readonly bosId?: number;
  readonly eosId?: number;
  /** Always defined: the tokenizer's pad token, else eos, else 0 (padding is masked out anyway). */
  readonly padId: number;
}

export const BYTE_TOKENIZER_FILE = 'fedlora_tokenizer.json';
const MAX_TOKENIZER_BYTES = 64 * 1024 * 1024;
const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

/** JSON description stored beside a built-in model. */
export interface ByteTokenizerJson {
  type: 'bytes';
  version: 1;
  vocab_size: number;
  bos_id: number;
  eos_id: number;
  pad_id: number;
}

/**
 * Byte-level tokenizer: ids 0–255 are the UTF-8 bytes of the text, 256 = bos, 257 = eos, 258 = pad;
 * vocabSize 259. Lossless for any string, no merges, no files beyond the 100-byte description.
 */
export class ByteTokenizer implements TextTokenizer {
  static readonly BOS = 256;
  static readonly EOS = 257;
  static readonly PAD = 258;
  readonly vocabSize = 259;
  readonly bosId = ByteTokenizer.BOS;
  readonly eosId = ByteTokenizer.EOS;
  readonly padId = ByteTokenizer.PAD;
  static readonly #enc = new TextEncoder();
  static readonly #dec = new TextDecoder('utf-8', { fatal: false });

  encode(text: string): number[] {
    return Array.from(ByteTokenizer.#enc.encode(text));
  }

  decode(ids: readonly number[]): string {
    const bytes: number[] = [];
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) throw new RangeError(`ByteTokenizer.decode: id ${id} is outside [0, ${this.vocabSize})`);
      if (id < 256) bytes.push(id);
    }
    // Invalid UTF-8 (e.g. a model sampling half a code point) decodes to U+FFFD rather than throwing.
    return ByteTokenizer.#dec.decode(Uint8Array.from(bytes));
  }

  toJSON(): ByteTokenizerJson {
    return { type: 'bytes', version: 1, vocab_size: this.vocabSize, bos_id: this.bosId, eos_id: this.eosId, pad_id: this.padId };
  }

  /** Writes `fedlora_tokenizer.json` into a model directory. */
  async save(dir: string): Promise<string> {
    const path = join(dir, BYTE_TOKENIZER_FILE);
    await atomicWrite(path, JSON.stringify(this.toJSON(), null, 2) + '\n');
    return path;
  }

  static fromJSON(raw: unknown, file = BYTE_TOKENIZER_FILE): ByteTokenizer {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ModelFormatError('tokenizer description is not a JSON object', file);
    const j = raw as Record<string, unknown>;
    if (j.type !== 'bytes') throw new ModelFormatError(`unknown tokenizer type ${JSON.stringify(j.type)} (this version knows "bytes")`, file);
    if (j.version !== 1) throw new ModelFormatError(`unsupported byte tokenizer version ${JSON.stringify(j.version)}`, file);
    const want = new ByteTokenizer().toJSON();
    for (const k of ['vocab_size', 'bos_id', 'eos_id', 'pad_id'] as const) {
      if (j[k] !== want[k]) throw new ModelFormatError(`${k} is ${JSON.stringify(j[k])}, the byte tokenizer defines ${want[k]}`, file);
    }
    return new ByteTokenizer();
  }
}

/** Adapter over `@huggingface/tokenizers`. */
export class HfTokenizer implements TextTokenizer {
  readonly #tok: Tokenizer;
  readonly #special: Set<number>;
  readonly #unkId: number | undefined;
  readonly vocabSize: number;
  readonly bosId?: number;
  readonly eosId?: number;
  readonly padId: number;

  constructor(tokenizerJson: unknown, config: unknown = {}, file = 'tokenizer.json') {
    if (typeof tokenizerJson !== 'object' || tokenizerJson === null || Array.isArray(tokenizerJson)) {
      throw new ModelFormatError('not a JSON object', file);
    }
    const tj = tokenizerJson as Record<string, unknown>;
    const model = tj.model;
    if (typeof model !== 'object' || model === null || typeof (model as Record<string, unknown>).type !== 'string') {
      throw new ModelFormatError('missing "model" object with a "type" (BPE, WordLevel, WordPiece, Unigram)', file);
    }
    if (tj.added_tokens !== undefined && !Array.isArray(tj.added_tokens)) throw new ModelFormatError('"added_tokens" is not an array', file);
    if (typeof config !== 'object' || config === null || Array.isArray(config)) throw new ModelFormatError('tokenizer_config.json is not a JSON object', file);
    // The library requires these keys to exist (null is allowed) and an added_tokens array.
    const normalized: Record<string, unknown> = { normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, added_tokens: [], ...tj };
    try {
      this.#tok = new Tokenizer(normalized, config as object);
    } catch (e) {
      throw new ModelFormatError(`cannot build tokenizer: ${errorMessage(e)}`, file, { cause: e });
    }
    const vocab = this.#tok.get_vocab(true);
    let max = -1;
    for (const id of vocab.values()) if (Number.isInteger(id) && id > max) max = id;
    if (max < 0) throw new ModelFormatError('empty vocabulary', file);
    this.vocabSize = max + 1;

    const cfg = config as Record<string, unknown>;
    const idOf = (key: string, fallbacks: string[]): number | undefined => {
      const v = cfg[key];
      const name = typeof v === 'string' ? v : typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string' ? (v as { content: string }).content : undefined;
      if (name !== undefined) {
        const id = this.#tok.token_to_id(name);
        if (id === undefined) throw new ModelFormatError(`${key} ${JSON.stringify(name)} is not in the vocabulary`, file);
        return id;
      }
      if (key in cfg && v !== null) throw new ModelFormatError(`${key} must be a string or {content}`, file);
      for (const f of fallbacks) {
        const id = this.#tok.token_to_id(f);
        if (id !== undefined) return id;
      }
      return undefined;
    };
    const bos = idOf('bos_token', ['<s>', '<|begin_of_text|>', '<bos>', '[CLS]']);
    const eos = idOf('eos_token', ['</s>', '<|endoftext|>', '<|end_of_text|>', '<eos>', '[SEP]']);
    const pad = idOf('pad_token', ['<pad>', '[PAD]']);
    if (bos !== undefined) this.bosId = bos;
    if (eos !== undefined) this.eosId = eos;
    this.padId = pad ?? eos ?? 0;
    const unkName = (model as Record<string, unknown>).unk_token ?? cfg.unk_token;
    this.#unkId = typeof unkName === 'string' ? this.#tok.token_to_id(unkName) : undefined;
    this.#special = new Set<number>([...this.#tok.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id));
    for (const id of [bos, eos, pad]) if (id !== undefined) this.#special.add(id);
  }

  encode(text: string): number[] {
    const ids = this.#tok.encode(text, { add_special_tokens: false }).ids;
    // Some models (WordLevel) report an out-of-vocabulary word as undefined rather than unk.
    for (let i = 0; i < ids.length; i++) {
      if (!Number.isInteger(ids[i])) {
        if (this.#unkId === undefined) throw new ModelFormatError(`text has a token outside the vocabulary and the tokenizer has no unk token`);
        ids[i] = this.#unkId;
      }
    }
    return ids;
  }

  decode(ids: readonly number[]): string {
    const kept = ids.filter((id) => !this.#special.has(id));
    if (kept.length === 0) return '';
    for (const id of kept) if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) throw new RangeError(`decode: id ${id} is outside [0, ${this.vocabSize})`);
    return this.#tok.decode(kept, { skip_special_tokens: true });
  }
}

async function readJsonBounded(path: string, maxBytes: number): Promise<unknown> {
  const s = await stat(path);
  if (!s.isFile()) throw new ModelFormatError('not a regular file', path);
  if (s.size > maxBytes) throw new ModelFormatError(`${s.size} bytes exceeds the ${maxBytes}-byte cap`, path);
  const text = await readFile(path, 'utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ModelFormatError(`invalid JSON (${errorMessage(e)})`, path, { cause: e });
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Loads a model directory's tokenizer: `fedlora_tokenizer.json` if present, else `tokenizer.json`
 * (with `tokenizer_config.json` when present). Throws ModelFormatError when neither exists or a file
 * is malformed.
 */
export async function loadTokenizer(dir: string): Promise<TextTokenizer> {
  const own = join(dir, BYTE_TOKENIZER_FILE);
  if (await exists(own)) return ByteTokenizer.fromJSON(await readJsonBounded(own, MAX_CONFIG_BYTES), own);
  const tj = join(dir, 'tokenizer.json');
  if (!(await exists(tj))) throw new ModelFormatError(`no ${BYTE_TOKENIZER_FILE} or tokenizer.json in the model directory`, dir);
  const tokJson = await readJsonBounded(tj, MAX_TOKENIZER_BYTES);
  const cfgPath = join(dir, 'tokenizer_config.json');
  const cfg = (await exists(cfgPath)) ? await readJsonBounded(cfgPath, MAX_CONFIG_BYTES) : {};
  return new HfTokenizer(tokJson, cfg, tj);
}
