/**
 * PEFT on-disk format: adapter_config.json + adapter_model.safetensors, as
 * `PeftModel.from_pretrained` reads and `save_pretrained` writes them.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { ModelFormatError } from '../errors.js';
import { atomicWrite, encodeSafetensors, loadSafetensors, readFloatTensor } from '../model/safetensors.js';
import { adapterModules, loraAName, loraBName, loraMName, parseLoraName, parseMagnitudeName, type LoraAdapter, type LoraConfig, parseXsName } from './adapter.js';
import { checkXsShapes } from './xs.js';
import type { TensorMap } from '../tensor.js';

export const MAX_ADAPTER_BYTES = 4 * 1024 ** 3;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function numRecord(v: unknown, key: string, file: string): Record<string, number> | undefined {
  if (v == null) return undefined;
  if (!isRecord(v) || !Object.values(v).every((x) => typeof x === 'number' && x > 0)) throw new ModelFormatError(`"${key}" must map module names to positive numbers`, file);
  return Object.keys(v).length ? (v as Record<string, number>) : undefined;
}

/** Validates a parsed adapter_config.json. */
export function parsePeftConfig(raw: unknown, file = 'adapter_config.json'): LoraConfig {
  if (!isRecord(raw)) throw new ModelFormatError('not a JSON object', file);
  if (raw.peft_type !== 'LORA') throw new ModelFormatError(`peft_type ${JSON.stringify(raw.peft_type)} is not supported (only "LORA")`, file);
  const r = raw.r;
  if (typeof r !== 'number' || !Number.isInteger(r) || r < 1 || r > 65536) throw new ModelFormatError(`"r" must be a positive integer, got ${JSON.stringify(r)}`, file);
  const alpha = raw.lora_alpha ?? 8;
  if (typeof alpha !== 'number' || !Number.isFinite(alpha) || alpha <= 0) throw new ModelFormatError(`"lora_alpha" must be a positive number, got ${JSON.stringify(alpha)}`, file);
  const tm = raw.target_modules;
  let targetModules: string[];
  if (typeof tm === 'string') targetModules = [tm];
  else if (Array.isArray(tm) && tm.length && tm.every((x) => typeof x === 'string')) targetModules = [...(tm as string[])].sort();
  else throw new ModelFormatError(`"target_modules" must be a list of module names, got ${JSON.stringify(tm)}`, file);
  if (raw.bias != null && raw.bias !== 'none') throw new ModelFormatError(`bias "${String(raw.bias)}" is not supported (only "none")`, file);
  if (raw.use_dora != null && typeof raw.use_dora !== 'boolean') throw new ModelFormatError(`"use_dora" must be true or false, got ${JSON.stringify(raw.use_dora)}`, file);
  if (raw.modules_to_save != null && !(Array.isArray(raw.modules_to_save) && raw.modules_to_save.length === 0)) {
    throw new ModelFormatError('modules_to_save is not supported', file);
  }
  const cfg: LoraConfig = {
    r, loraAlpha: alpha, targetModules,
    fanInFanOut: raw.fan_in_fan_out === true,
    useRslora: raw.use_rslora === true,
    taskType: typeof raw.task_type === 'string' ? raw.task_type : 'CAUSAL_LM',
    baseModelNameOrPath: typeof raw.base_model_name_or_path === 'string' ? raw.base_model_name_or_path : null,
  };
  const rp = numRecord(raw.rank_pattern, 'rank_pattern', file);
  const ap = numRecord(raw.alpha_pattern, 'alpha_pattern', file);
  if (rp) cfg.rankPattern = rp;
  if (ap) cfg.alphaPattern = ap;
  if (raw.use_dora === true) cfg.useDora = true;
  return cfg;
}

/** Checks tensor names, A/B pairing and DoRA magnitudes (one [out] vector per module iff use_dora); returns the adapter. */
export function checkAdapterTensors(config: LoraConfig, tensors: TensorMap, file: string): LoraAdapter {
  const dora = config.useDora === true;
  for (const [name, t] of tensors) {
    const p = parseLoraName(name);
    const mag = p ? null : parseMagnitudeName(name);
    // LoRA-XS core R [r, r] (shared/lora/xs.ts): only in fedlora's own checkpoints; exports fold it into lora_B
    if (!p && !mag && parseXsName(name)) {
      if (t.shape.length !== 2) throw new ModelFormatError(`tensor "${name}" must be 2-D, has shape [${t.shape}]`, file);
      for (const v of t.data) if (!Number.isFinite(v)) throw new ModelFormatError(`tensor "${name}" holds a non-finite value`, file);
      continue;
    }
    if (mag && !dora) throw new ModelFormatError(`unexpected tensor "${name}": a DoRA magnitude in an adapter without use_dora`, file);
    if (mag && name !== loraMName(mag.module)) throw new ModelFormatError(`DoRA magnitude "${name}" must be named "${loraMName(mag.module)}"`, file);
    if (!p && !mag) throw new ModelFormatError(`unexpected tensor "${name}" (only lora_A/lora_B weights${dora ? ' and lora_magnitude_vector' : ''} are supported)`, file);
    if (mag && t.shape.length !== 1) throw new ModelFormatError(`tensor "${name}" must be 1-D, has shape [${t.shape}]`, file);
    if (p && t.shape.length !== 2) throw new ModelFormatError(`tensor "${name}" must be 2-D, has shape [${t.shape}]`, file);
    for (const v of t.data) if (!Number.isFinite(v)) throw new ModelFormatError(`tensor "${name}" holds a non-finite value`, file);
  }
  const adapter: LoraAdapter = { config, tensors };
  for (const m of adapterModules(adapter)) {
    const A = tensors.get(loraAName(m)), B = tensors.get(loraBName(m));
    if (!A || !B) throw new ModelFormatError(`module "${m}" has ${A ? 'lora_A' : 'lora_B'} but not ${A ? 'lora_B' : 'lora_A'}`, file);
    if (A.shape[0] !== B.shape[1]) throw new ModelFormatError(`module "${m}": lora_A rank ${A.shape[0]} ≠ lora_B rank ${B.shape[1]}`, file);
    if (!dora) continue;
    const M = tensors.get(loraMName(m));
    if (!M) throw new ModelFormatError(`module "${m}" has no lora_magnitude_vector (use_dora: true needs one per module)`, file);
    if (M.shape[0] !== B.shape[0]) throw new ModelFormatError(`module "${m}": lora_magnitude_vector has ${M.shape[0]} entries, lora_B has ${B.shape[0]} output features`, file);
  }
  const mods = new Set(adapterModules(adapter));
  for (const name of tensors.keys()) {
    const mag = parseMagnitudeName(name);
    if (mag && !mods.has(mag.module)) throw new ModelFormatError(`DoRA magnitude "${name}" has no lora_A/lora_B`, file);
  }
  if (!mods.size) throw new ModelFormatError('adapter holds no LoRA tensors', file);
  checkXsShapes(tensors, file);
  return adapter;
}

/** Public API: load a PEFT LoRA adapter folder. */
export async function loadPeftAdapter(dir: string): Promise<LoraAdapter> {
  const cfgFile = join(dir, 'adapter_config.json');
  let text: string;
  try { text = await readFile(cfgFile, 'utf8'); } catch (e) { throw new ModelFormatError(`cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, cfgFile); }
  if (text.length > 1 << 20) throw new ModelFormatError('larger than 1 MiB', cfgFile);
  let raw: unknown;
  try { raw = JSON.parse(text); } catch (e) { throw new ModelFormatError(`not valid JSON (${(e as Error).message})`, cfgFile); }
  const config = parsePeftConfig(raw, cfgFile);
  const stFile = join(dir, 'adapter_model.safetensors');
  const st = await loadSafetensors(stFile, MAX_ADAPTER_BYTES);
  const tensors: TensorMap = new Map();
  for (const name of st.entries.keys()) {
    const t = readFloatTensor(st, name);
    // live-model names (`.default.weight`) map to the saved ones; a magnitude is saved without `.weight`
    const mag = parseMagnitudeName(name);
    const key = mag ? loraMName(mag.module) : name.replace('.default.weight', '.weight');
    if (tensors.has(key)) throw new ModelFormatError(`tensor "${key}" appears twice (as "${name}")`, stFile);
    tensors.set(key, t);
  }
  return checkAdapterTensors(config, tensors, stFile);
}

/** adapter_config.json content PEFT accepts unchanged. */
export function peftConfigJson(config: LoraConfig): Record<string, unknown> {
  return {
    peft_type: 'LORA',
    task_type: config.taskType || 'CAUSAL_LM',
    base_model_name_or_path: config.baseModelNameOrPath ?? null,
    r: config.r,
    lora_alpha: config.loraAlpha,
    lora_dropout: 0.0,
    target_modules: [...config.targetModules],
    fan_in_fan_out: config.fanInFanOut,
    use_rslora: config.useRslora,
    bias: 'none',
    use_dora: config.useDora === true,
    init_lora_weights: true,
    inference_mode: true,
    modules_to_save: null,
    rank_pattern: config.rankPattern ?? {},
    alpha_pattern: config.alphaPattern ?? {},
    layers_to_transform: null,
    layers_pattern: null,
    revision: null,
    auto_mapping: null,
  };
}

/** Public API: write a PEFT adapter folder (atomic per file). */
export async function savePeftAdapter(adapter: LoraAdapter, outDir: string): Promise<void> {
  checkAdapterTensors(adapter.config, adapter.tensors, outDir);
  await mkdir(outDir, { recursive: true });
  await atomicWrite(join(outDir, 'adapter_model.safetensors'), encodeSafetensors(adapter.tensors, { format: 'pt' }));
  await atomicWrite(join(outDir, 'adapter_config.json'), `${JSON.stringify(peftConfigJson(adapter.config), null, 2)}\n`);
}

/**
 * What an exported adapter records as `base_model_name_or_path`: config.json's `_name_or_path`
 * (the Hugging Face id or path transformers saved the model from) when it is a non-empty string,
 * else the model folder's name. PEFT's loaders read the field to find the base model, so a hub id
 * is the most useful value; the folder name at least tells a reader which local model it was.
 */
export async function baseModelName(modelDir: string): Promise<string> {
  try {
    const cfg = JSON.parse(await readFile(join(modelDir, 'config.json'), 'utf8')) as { _name_or_path?: unknown };
    const n = cfg?._name_or_path;
    if (typeof n === 'string' && n.trim() !== '' && n.length <= 512 && !/[\u0000-\u001f]/.test(n)) return n.trim();
  } catch { /* a missing or odd config.json falls back to the folder name */ }
  return basename(resolve(modelDir));
}
