/**
 * LoRA adapter state: PEFT-named A/B tensors plus the PEFT config that gives them meaning.
 * `base_model.model.<module>.lora_A.weight` is [r, in]; `...lora_B.weight` is [out, r].
 * W' = W + scale · B A with scale = alpha / r (or alpha / √r under rsLoRA).
 */
import { ModelFormatError } from '../errors.js';
import type { Tensor32, TensorMap } from '../tensor.js';

export interface LoraConfig {
  r: number;
  loraAlpha: number;
  targetModules: string[];
  fanInFanOut: boolean;
  useRslora: boolean;
  taskType: string;
  baseModelNameOrPath?: string | null;
  /** Optional per-module rank / alpha overrides (PEFT `rank_pattern` / `alpha_pattern`). */
  rankPattern?: Record<string, number>;
  alphaPattern?: Record<string, number>;
  /** DoRA (PEFT `use_dora`): each module also carries a magnitude vector m [out]. Absent = false. */
  useDora?: boolean;
}

export interface LoraAdapter {
  config: LoraConfig;
  /** PEFT names → tensors. */
  tensors: TensorMap;
}

export const PEFT_PREFIX = 'base_model.model.';

export function loraAName(module: string): string { return `${PEFT_PREFIX}${module}.lora_A.weight`; }
export function loraBName(module: string): string { return `${PEFT_PREFIX}${module}.lora_B.weight`; }

/** DoRA magnitude vector of a module, [out], under the name PEFT's save_pretrained writes. */
export function loraMName(module: string): string { return `${PEFT_PREFIX}${module}.lora_magnitude_vector`; }

/** Module path of a DoRA magnitude name (saved form, or the live `.weight` / `.default.weight` forms), or null. */
export function parseMagnitudeName(name: string): { module: string } | null {
  const m = /^base_model\.model\.(.+)\.lora_magnitude_vector(?:\.default)?(?:\.weight)?$/.exec(name);
  return m ? { module: m[1]! } : null;
}

/** A tensor an adapter may hold: a LoRA factor or a DoRA magnitude vector. */
export function isAdapterTensorName(name: string): boolean {
  return parseLoraName(name) !== null || parseMagnitudeName(name) !== null;
}

/** Splits a PEFT tensor name into module path and factor, or null if it is not a LoRA A/B weight. */
export function parseLoraName(name: string): { module: string; factor: 'A' | 'B' } | null {
  const m = /^base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight$/.exec(name);
  return m ? { module: m[1]!, factor: m[2] as 'A' | 'B' } : null;
}

/** LoRA-XS core R [r, r] of a module (shared/lora/xs.ts): ΔW = s · B R A with A, B frozen. */
export function xsRName(module: string): string { return `${PEFT_PREFIX}${module}.lora_R.weight`; }

/** Module path of a LoRA-XS core name, or null. */
export function parseXsName(name: string): { module: string } | null {
  const m = /^base_model\.model\.(.+)\.lora_R(?:\.default)?\.weight$/.exec(name);
  return m ? { module: m[1]! } : null;
}

/** Module paths present in an adapter, sorted. */
export function adapterModules(adapter: { tensors: TensorMap }): string[] {
  const mods = new Set<string>();
  for (const k of adapter.tensors.keys()) {
    const p = parseLoraName(k);
    if (p) mods.add(p.module);
  }
  return [...mods].sort();
}

/** PEFT target_modules semantics: a string list matches a module whose name equals an entry or ends with `.entry`. */
export function matchesTarget(module: string, targets: string[] | string): boolean {
  if (typeof targets === 'string') {
    if (targets === 'all-linear') return true;
    return new RegExp(`^(?:${targets})$`).test(module);
  }
  return targets.some((t) => module === t || module.endsWith(`.${t}`));
}

export function loraScale(alpha: number, r: number, rslora: boolean): number {
  return rslora ? alpha / Math.sqrt(r) : alpha / r;
}

/** Rank of one module as stored (rows of A). */
export function moduleRank(adapter: LoraAdapter, module: string): number {
  const a = adapter.tensors.get(loraAName(module));
  if (!a) throw new ModelFormatError(`adapter has no lora_A for module ${module}`);
  return a.shape[0]!;
}

/** Scale used for one module, honouring rank_pattern/alpha_pattern by suffix match as PEFT does. */
export function moduleScale(config: LoraConfig, module: string, rank?: number): number {
  const pick = (pat: Record<string, number> | undefined): number | undefined => {
    if (!pat) return undefined;
    for (const [k, v] of Object.entries(pat)) if (module === k || module.endsWith(`.${k}`)) return v;
    return undefined;
  };
  const r = rank ?? pick(config.rankPattern) ?? config.r;
  const alpha = pick(config.alphaPattern) ?? config.loraAlpha;
  return loraScale(alpha, r, config.useRslora);
}

/** Zero-pads A (rows) and B (columns) of every module to rank `r`. */
export function padRank(adapter: LoraAdapter, r: number): LoraAdapter {
  return changeRank(adapter, r, 'pad');
}

/** Keeps the first `r` slots (rows of A, columns of B) of every module. */
export function truncateRank(adapter: LoraAdapter, r: number): LoraAdapter {
  return changeRank(adapter, r, 'truncate');
}

function changeRank(adapter: LoraAdapter, r: number, mode: 'pad' | 'truncate'): LoraAdapter {
  if (!Number.isInteger(r) || r < 1) throw new RangeError(`rank must be a positive integer, got ${r}`);
  const tensors: TensorMap = new Map();
  for (const [name, t] of adapter.tensors) {
    if (parseXsName(name)) {
      // a LoRA-XS core [r, r] keeps its leading r×r block (zero-padded when growing)
      const cur = t.shape[0]!;
      if (mode === 'pad' && r < cur) throw new RangeError(`padRank: ${name} already has rank ${cur} > ${r}`);
      if (mode === 'truncate' && r > cur) throw new RangeError(`truncateRank: ${name} has rank ${cur} < ${r}`);
      tensors.set(name, resizeCols(resizeRows(t, r), r));
      continue;
    }
    const p = parseLoraName(name);
    if (!p) { tensors.set(name, { shape: [...t.shape], data: new Float32Array(t.data) }); continue; }
    const cur = p.factor === 'A' ? t.shape[0]! : t.shape[1]!;
    if (mode === 'pad' && r < cur) throw new RangeError(`padRank: ${name} already has rank ${cur} > ${r}`);
    if (mode === 'truncate' && r > cur) throw new RangeError(`truncateRank: ${name} has rank ${cur} < ${r}`);
    tensors.set(name, p.factor === 'A' ? resizeRows(t, r) : resizeCols(t, r));
  }
  // keep alpha/r constant so the product's scale does not change with the rank (see docs/ARCHITECTURE.md)
  const ratio = r / adapter.config.r;
  return { config: { ...adapter.config, r, loraAlpha: adapter.config.useRslora ? adapter.config.loraAlpha * Math.sqrt(ratio) : adapter.config.loraAlpha * ratio }, tensors };
}

export function resizeRows(t: Tensor32, rows: number): Tensor32 {
  const [r0, c] = t.shape as [number, number];
  const out = new Float32Array(rows * c);
  out.set(t.data.subarray(0, Math.min(rows, r0) * c));
  return { shape: [rows, c], data: out };
}

export function resizeCols(t: Tensor32, cols: number): Tensor32 {
  const [r, c0] = t.shape as [number, number];
  const out = new Float32Array(r * cols);
  const k = Math.min(cols, c0);
  for (let i = 0; i < r; i++) out.set(t.data.subarray(i * c0, i * c0 + k), i * cols);
  return { shape: [r, cols], data: out };
}
