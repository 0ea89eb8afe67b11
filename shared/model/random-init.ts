/**
 * Writes a randomly initialised checkpoint in Hugging Face layout (config.json + model.safetensors):
 * used for benchmarks (GPT-2-124M shape), tests, and as the starting point of `npm run pretrain`.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { atomicWrite, encodeSafetensors } from './safetensors.js';
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

/** Random weights for a normalised config (HF-style init: N(0, std), norms at 1, biases 0). */
export function randomWeights(cfg: ModelConfig, seed: number, std = 0.02): TensorMap {
  const rng = mulberry32(`init:${seed}`);
  const t: TensorMap = new Map();
  const d = cfg.hiddenSize;
  const put = (name: string, shape: number[], data: Float32Array) => t.set(name, { shape, data });
  const ones = (n: number) => new Float32Array(n).fill(1);
  const fam = familyOf(cfg), names = fam.tensors;
  // draw order fixes the weights a seed produces: embeddings, positions, head, then block linears
  put(names.embeddings, [cfg.vocabSize, d], normal(rng, cfg.vocabSize * d, std));
  if (names.positions) put(names.positions, [cfg.maxPositions, d], normal(rng, cfg.maxPositions * d, std / 2));
  if (!cfg.tieWordEmbeddings) put(names.lmHead, [cfg.vocabSize, d], normal(rng, cfg.vocabSize * d, std));
  for (const [path, s] of linearModules(cfg)) {
    put(`${path}.weight`, linearWeightShape(cfg, s), normal(rng, s.in * s.out, std));
    if (linearHasBias(cfg, path)) put(`${path}.bias`, [s.out], new Float32Array(s.out));
  }
  const norm = (prefix: string) => {
    put(`${prefix}.weight`, [d], ones(d));
    if (fam.norm.bias) put(`${prefix}.bias`, [d], new Float32Array(d));
  };
  for (let i = 0; i < cfg.numLayers; i++) for (const n of fam.layerNorms) norm(`${fam.layerPrefix(i)}.${n}`);
  norm(names.finalNorm);
  return t;
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
