/**
 * Writes a randomly initialised checkpoint in Hugging Face layout (config.json + model.safetensors):
 * used for benchmarks (GPT-2-124M shape), tests, and as the starting point of `npm run pretrain`.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { atomicWrite, encodeSafetensors, writeSafetensorsStreaming } from './safetensors.js';
import { normalizeConfig, linearModules, linearHasBias, linearWeightShape, type ModelConfig } from './config.js';
import { familyOf } from './families/index.js';
import { mulberry32 } from '../data/random.js';
import type { TensorMap } from '../tensor.js';

function normal(rng: () => number, n: number, std: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(rng(), 1e-12), v = rng();
    const r = Math.sqrt(-2 * Math.log(u)) * std;
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** One tensor of a random init, in draw order: N(0, std) values, ones (norm scales) or zeros (biases). */
interface InitSpec { name: string; shape: number[]; fill: { normal: number } | 'ones' | 'zeros' }

/** Every tensor of a random init in the order the values are drawn (the order fixes what a seed gives). */
function initSpecs(cfg: ModelConfig, std: number): InitSpec[] {
  const d = cfg.hiddenSize;
  const out: InitSpec[] = [];
  const fam = familyOf(cfg), names = fam.tensors;
  // draw order: embeddings, positions, head, then block linears
  out.push({ name: names.embeddings, shape: [cfg.vocabSize, d], fill: { normal: std } });
  if (names.positions) out.push({ name: names.positions, shape: [cfg.maxPositions, d], fill: { normal: std / 2 } });
  if (!cfg.tieWordEmbeddings) out.push({ name: names.lmHead, shape: [cfg.vocabSize, d], fill: { normal: std } });
  for (const [path, s] of linearModules(cfg)) {
    out.push({ name: `${path}.weight`, shape: linearWeightShape(cfg, s), fill: { normal: std } });
    if (linearHasBias(cfg, path)) out.push({ name: `${path}.bias`, shape: [s.out], fill: 'zeros' });
  }
  const norm = (prefix: string) => {
    out.push({ name: `${prefix}.weight`, shape: [d], fill: 'ones' });
    if (fam.norm.bias) out.push({ name: `${prefix}.bias`, shape: [d], fill: 'zeros' });
  };
  for (let i = 0; i < cfg.numLayers; i++) for (const n of fam.layerNorms) norm(`${fam.layerPrefix(i)}.${n}`);
  norm(names.finalNorm);
  return out;
}

function fillOf(spec: InitSpec, rng: () => number): Float32Array {
  const n = spec.shape.reduce((a, b) => a * b, 1);
  if (spec.fill === 'ones') return new Float32Array(n).fill(1);
  if (spec.fill === 'zeros') return new Float32Array(n);
  return normal(rng, n, spec.fill.normal);
}

/** Random weights for a normalised config (HF-style init: N(0, std), norms at 1, biases 0). */
export function randomWeights(cfg: ModelConfig, seed: number, std = 0.02): TensorMap {
  const rng = mulberry32(`init:${seed}`);
  const t: TensorMap = new Map();
  for (const spec of initSpecs(cfg, std)) t.set(spec.name, { shape: spec.shape, data: fillOf(spec, rng) });
  return t;
}

/**
 * The checkpoint writeRandomModel writes (same seed, same values), generated and written one tensor at a
 * time: a model larger than memory never exists whole (a Qwen2-0.5B shape is 2 GB as fp32). `dtype`
 * 'BF16' stores the values rounded to bfloat16, as Hugging Face ships most checkpoints.
 */
export async function writeRandomModelStreaming(dir: string, rawConfig: Record<string, unknown>, seed = 0, std = 0.02, dtype: 'F32' | 'BF16' = 'F32'): Promise<ModelConfig> {
  const cfg = normalizeConfig(rawConfig);
  const rng = mulberry32(`init:${seed}`);
  const specs = initSpecs(cfg, std);
  const byName = new Map(specs.map((s) => [s.name, s]));
  await mkdir(dir, { recursive: true });
  await writeSafetensorsStreaming(join(dir, 'model.safetensors'), specs.map((s) => ({ name: s.name, shape: s.shape, dtype })), (s) => fillOf(byName.get(s.name)!, rng), { format: 'pt' });
  await atomicWrite(join(dir, 'config.json'), `${JSON.stringify(rawConfig, null, 2)}\n`);
  return cfg;
}

/** Writes config.json + model.safetensors (+ any extra files) and returns the normalised config. */
export async function writeModel(dir: string, rawConfig: Record<string, unknown>, weights: TensorMap, extra: Record<string, string> = {}): Promise<ModelConfig> {
  const cfg = normalizeConfig(rawConfig);
  await mkdir(dir, { recursive: true });
  await atomicWrite(join(dir, 'model.safetensors'), encodeSafetensors(weights, { format: 'pt' }));
  await atomicWrite(join(dir, 'config.json'), `${JSON.stringify(rawConfig, null, 2)}\n`);
  for (const [f, text] of Object.entries(extra)) await atomicWrite(join(dir, f), text);
  return cfg;
}

export async function writeRandomModel(dir: string, rawConfig: Record<string, unknown>, seed = 0, std = 0.02, extra: Record<string, string> = {}): Promise<ModelConfig> {
  const cfg = normalizeConfig(rawConfig);
  return writeModel(dir, rawConfig, randomWeights(cfg, seed, std), extra);
}

/** A small Llama-style config with the byte tokenizer's vocabulary. */
export function tinyLlamaConfig(o: { hidden?: number; layers?: number; heads?: number; kvHeads?: number; intermediate?: number; vocab?: number; maxPositions?: number } = {}): Record<string, unknown> {
  const hidden = o.hidden ?? 64;
  return {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: o.vocab ?? 259, hidden_size: hidden,
    intermediate_size: o.intermediate ?? hidden * 2 + hidden / 2, num_hidden_layers: o.layers ?? 2, num_attention_heads: o.heads ?? 4,
    num_key_value_heads: o.kvHeads ?? 2, max_position_embeddings: o.maxPositions ?? 512, rms_norm_eps: 1e-6,
    rope_theta: 10000.0, tie_word_embeddings: false, hidden_act: 'silu', attention_bias: false, mlp_bias: false,
    bos_token_id: 256, eos_token_id: 257, pad_token_id: 258, torch_dtype: 'float32',
  };
}

/** GPT-2 small (124M) shape. */
export function gpt2SmallConfig(): Record<string, unknown> {
  return {
    architectures: ['GPT2LMHeadModel'], model_type: 'gpt2', vocab_size: 50257, n_positions: 1024, n_embd: 768, n_layer: 12,
    n_head: 12, n_inner: null, activation_function: 'gelu_new', layer_norm_epsilon: 1e-5, tie_word_embeddings: true,
    bos_token_id: 50256, eos_token_id: 50256,
  };
}

/**
 * Qwen2-0.5B shape (Qwen/Qwen2-0.5B config.json): hidden 896, 24 layers, 14 query / 2 key-value heads,
 * SwiGLU 4864, vocabulary 151,936, tied embeddings, q/k/v biases; 494 M parameters.
 */
export function qwen2HalfBConfig(): Record<string, unknown> {
  return {
    architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', vocab_size: 151936, hidden_size: 896, intermediate_size: 4864,
    num_hidden_layers: 24, num_attention_heads: 14, num_key_value_heads: 2, max_position_embeddings: 131072, rms_norm_eps: 1e-6,
    rope_theta: 1000000.0, tie_word_embeddings: true, hidden_act: 'silu', sliding_window: 131072, use_sliding_window: false,
    bos_token_id: 151643, eos_token_id: 151643, torch_dtype: 'bfloat16',
  };
}
