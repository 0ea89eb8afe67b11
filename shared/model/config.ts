/**
 * Hugging Face config.json → one normalised description of a decoder-only causal LM. The
 * model_type picks a registered family (families/), whose descriptor reads its config dialect;
 * everything the forward pass needs is resolved here so the model code never looks at raw keys.
 */
import { readFile } from 'node:fs/promises';
import { ModelFormatError } from '../errors.js';
import { familyForModelType, familyOf, supportedModelTypes } from './families/index.js';

/** Name of a registered model family (built in: 'gpt2', 'llama'). */
export type Family = string;
export type Activation = 'gelu_new' | 'gelu' | 'gelu_pytorch_tanh' | 'silu' | 'relu';

export interface ModelConfig {
  /** HF model_type, e.g. 'gpt2', 'llama', 'qwen2', 'mistral'. */
  modelType: string;
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

/** Every model_type a registered family reads (the registry can grow at run time). */
export { supportedModelTypes };

function tokenId(v: unknown): number | null {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v;
  if (Array.isArray(v) && typeof v[0] === 'number') return v[0];
  return null;
}

export function normalizeConfig(raw: unknown, file = 'config.json'): ModelConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ModelFormatError('config is not a JSON object', file);
  const c = raw as Record<string, unknown>;
  const family = familyForModelType(c.model_type, file);
  const modelType = c.model_type as string;
  return {
    ...family.normalize(c, modelType, file),
    modelType, family: family.name,
    raw: c, bosTokenId: tokenId(c.bos_token_id), eosTokenId: tokenId(c.eos_token_id), padTokenId: tokenId(c.pad_token_id),
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

/** Linear layers of one block, as module-path suffixes, with [in, out] sizes and bias. */
export function blockLinears(cfg: ModelConfig): Array<{ name: string; in: number; out: number; bias: boolean }> {
  return familyOf(cfg).blockLinears(cfg);
}

export function layerPrefix(cfg: ModelConfig, i: number): string {
  return familyOf(cfg).layerPrefix(i);
}

/** Whether the checkpoint holds a bias for this linear module (the family's bias rule). */
export function linearHasBias(cfg: ModelConfig, path: string): boolean {
  return blockLinears(cfg).find((l) => path.endsWith(`.${l.name}`))?.bias ?? false;
}

/** Shape of a linear module's weight as stored in the checkpoint ([in, out] under fan_in_fan_out). */
export function linearWeightShape(cfg: ModelConfig, s: { in: number; out: number }): [number, number] {
  return familyOf(cfg).fanInFanOut ? [s.in, s.out] : [s.out, s.in];
}

/** Every linear module path (HF names) with its [in, out] size. */
export function linearModules(cfg: ModelConfig): Map<string, { in: number; out: number }> {
  const fam = familyOf(cfg);
  const linears = fam.blockLinears(cfg);
  const out = new Map<string, { in: number; out: number }>();
  for (let i = 0; i < cfg.numLayers; i++) {
    for (const l of linears) out.set(`${fam.layerPrefix(i)}.${l.name}`, { in: l.in, out: l.out });
  }
  return out;
}

/**
 * Names a checkpoint may store tensor `name` under: itself, and without the family's optional
 * prefix (bare GPT2Model saves).
 */
export function checkpointNames(cfg: ModelConfig, name: string): string[] {
  const pre = familyOf(cfg).optionalPrefix;
  return pre && name.startsWith(pre) ? [name, name.slice(pre.length)] : [name];
}
