/**
 * Hugging Face config.json → one normalised description of a decoder-only causal LM.
 * GPT-2 and the Llama family (llama, mistral, qwen2) share one block shape apiece; everything the
 * forward pass needs is resolved here so the model code never looks at raw config keys.
 */
import { readFile } from 'node:fs/promises';
import { ModelFormatError } from '../errors.js';

export type Family = 'gpt2' | 'llama';
export type Activation = 'gelu_new' | 'gelu' | 'gelu_pytorch_tanh' | 'silu' | 'relu';

export interface ModelConfig {
  modelType: 'gpt2' | 'llama' | 'qwen2' | 'mistral';
  family: Family;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  maxPositions: number;
  normEps: number;
  activation: Activation;
  ropeTheta: number;
  tieWordEmbeddings: boolean;
  attentionBias: boolean; // q/k/v bias (qwen2, llama attention_bias)
  oBias: boolean;         // o_proj bias (llama attention_bias only)
  mlpBias: boolean;
  bosTokenId: number | null;
  eosTokenId: number | null;
  padTokenId: number | null;
  /** The raw config, kept so the model can be written back unchanged. */
  raw: Record<string, unknown>;
}

export const SUPPORTED_MODEL_TYPES = ['gpt2', 'llama', 'qwen2', 'mistral'] as const;
const ACTS = new Set<string>(['gelu_new', 'gelu', 'gelu_pytorch_tanh', 'silu', 'relu', 'swish']);

function int(raw: Record<string, unknown>, key: string, file: string, fallback?: number): number {
  const v = raw[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0 || v > 1 << 24) {
    throw new ModelFormatError(`"${key}" must be a positive integer, got ${JSON.stringify(raw[key])}`, file);
  }
  return v;
}

function num(raw: Record<string, unknown>, key: string, file: string, fallback: number): number {
  const v = raw[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new ModelFormatError(`"${key}" must be a positive number, got ${JSON.stringify(raw[key])}`, file);
  return v;
}

function tokenId(v: unknown): number | null {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v;
  if (Array.isArray(v) && typeof v[0] === 'number') return v[0];
  return null;
}

export function normalizeConfig(raw: unknown, file = 'config.json'): ModelConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ModelFormatError('config is not a JSON object', file);
  const c = raw as Record<string, unknown>;
  const mt = c.model_type;
  if (typeof mt !== 'string' || !(SUPPORTED_MODEL_TYPES as readonly string[]).includes(mt)) {
    throw new ModelFormatError(`unsupported model_type ${JSON.stringify(mt)}; fedlora supports ${SUPPORTED_MODEL_TYPES.join(', ')}`, file);
  }
  const common = { raw: c, bosTokenId: tokenId(c.bos_token_id), eosTokenId: tokenId(c.eos_token_id), padTokenId: tokenId(c.pad_token_id) };
  if (mt === 'gpt2') {
    const hidden = int(c, 'n_embd', file);
    const heads = int(c, 'n_head', file);
    if (hidden % heads !== 0) throw new ModelFormatError(`n_embd ${hidden} is not divisible by n_head ${heads}`, file);
    const act = (c.activation_function ?? 'gelu_new') as string;
    if (!ACTS.has(act)) throw new ModelFormatError(`unsupported activation_function ${JSON.stringify(act)}`, file);
    if (c.scale_attn_by_inverse_layer_idx === true || c.reorder_and_upcast_attn === true) {
      throw new ModelFormatError('scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported', file);
    }
    return {
      ...common, modelType: 'gpt2', family: 'gpt2',
      vocabSize: int(c, 'vocab_size', file), hiddenSize: hidden, numLayers: int(c, 'n_layer', file),
      numHeads: heads, numKvHeads: heads, headDim: hidden / heads,
      intermediateSize: c.n_inner == null ? 4 * hidden : int(c, 'n_inner', file),
      maxPositions: int(c, 'n_positions', file, 1024), normEps: num(c, 'layer_norm_epsilon', file, 1e-5),
      activation: act as Activation, ropeTheta: 0,
      tieWordEmbeddings: c.tie_word_embeddings !== false, attentionBias: true, oBias: true, mlpBias: true,
    };
  }
  const hidden = int(c, 'hidden_size', file);
  const heads = int(c, 'num_attention_heads', file);
  const kv = int(c, 'num_key_value_heads', file, heads);
  if (heads % kv !== 0) throw new ModelFormatError(`num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kv}`, file);
  const headDim = c.head_dim == null ? hidden / heads : int(c, 'head_dim', file);
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) throw new ModelFormatError(`head_dim ${headDim} must be an even integer`, file);
  const rp = c.rope_parameters as Record<string, unknown> | undefined;
  const rs = c.rope_scaling as Record<string, unknown> | null | undefined;
  const ropeType = (rp?.rope_type ?? rp?.type ?? rs?.rope_type ?? rs?.type ?? 'default') as string;
  if (ropeType !== 'default') throw new ModelFormatError(`rope type ${JSON.stringify(ropeType)} is not supported (only default RoPE)`, file);
  const theta = (rp && typeof rp.rope_theta === 'number' ? rp.rope_theta : undefined) ?? (typeof c.rope_theta === 'number' ? c.rope_theta : 10000);
  if (!(theta > 0)) throw new ModelFormatError(`rope_theta must be positive, got ${theta}`, file);
  const act = (c.hidden_act ?? 'silu') as string;
  if (!ACTS.has(act)) throw new ModelFormatError(`unsupported hidden_act ${JSON.stringify(act)}`, file);
  const attnBias = mt === 'qwen2' ? true : c.attention_bias === true;
  return {
    ...common, modelType: mt as 'llama' | 'qwen2' | 'mistral', family: 'llama',
    vocabSize: int(c, 'vocab_size', file), hiddenSize: hidden, numLayers: int(c, 'num_hidden_layers', file),
    numHeads: heads, numKvHeads: kv, headDim, intermediateSize: int(c, 'intermediate_size', file),
    maxPositions: int(c, 'max_position_embeddings', file, 2048), normEps: num(c, 'rms_norm_eps', file, 1e-6),
    activation: (act === 'swish' ? 'silu' : act) as Activation, ropeTheta: theta,
    tieWordEmbeddings: c.tie_word_embeddings === true,
    attentionBias: attnBias, oBias: mt !== 'qwen2' && c.attention_bias === true, mlpBias: c.mlp_bias === true,
  };
}

export async function loadConfig(dir: string): Promise<ModelConfig> {
  const file = `${dir}/config.json`;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new ModelFormatError(`cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, file);
  }
  if (text.length > 1 << 20) throw new ModelFormatError('config.json larger than 1 MiB', file);
  let raw: unknown;
  try { raw = JSON.parse(text); } catch (e) { throw new ModelFormatError(`not valid JSON (${(e as Error).message})`, file); }
  return normalizeConfig(raw, file);
}

/** Linear layers of one block, as module-path suffixes, with [in, out] sizes. */
export function blockLinears(cfg: ModelConfig): Array<{ name: string; in: number; out: number }> {
  const d = cfg.hiddenSize;
  if (cfg.family === 'gpt2') {
    return [
      { name: 'attn.c_attn', in: d, out: 3 * d },
      { name: 'attn.c_proj', in: d, out: d },
      { name: 'mlp.c_fc', in: d, out: cfg.intermediateSize },
      { name: 'mlp.c_proj', in: cfg.intermediateSize, out: d },
    ];
  }
  const q = cfg.numHeads * cfg.headDim, kv = cfg.numKvHeads * cfg.headDim;
  return [
    { name: 'self_attn.q_proj', in: d, out: q },
    { name: 'self_attn.k_proj', in: d, out: kv },
    { name: 'self_attn.v_proj', in: d, out: kv },
    { name: 'self_attn.o_proj', in: q, out: d },
    { name: 'mlp.gate_proj', in: d, out: cfg.intermediateSize },
    { name: 'mlp.up_proj', in: d, out: cfg.intermediateSize },
    { name: 'mlp.down_proj', in: cfg.intermediateSize, out: d },
  ];
}

export function layerPrefix(cfg: ModelConfig, i: number): string {
  return cfg.family === 'gpt2' ? `transformer.h.${i}` : `model.layers.${i}`;
}

/** Whether the checkpoint holds a bias for this linear module (GPT-2: all; Llama family per config). */
export function linearHasBias(cfg: ModelConfig, path: string): boolean {
  if (cfg.family === 'gpt2') return true;
  if (/\.(q|k|v)_proj$/.test(path)) return cfg.attentionBias;
  if (/\.o_proj$/.test(path)) return cfg.oBias;
  return /\.mlp\./.test(path) && cfg.mlpBias;
}

/** Every linear module path (HF names) with its [in, out] size. */
export function linearModules(cfg: ModelConfig): Map<string, { in: number; out: number }> {
  const out = new Map<string, { in: number; out: number }>();
  for (let i = 0; i < cfg.numLayers; i++) {
    for (const l of blockLinears(cfg)) out.set(`${layerPrefix(cfg, i)}.${l.name}`, { in: l.in, out: l.out });
  }
  return out;
}
