/**
 * What the coordinator (and simulations) need to know about the base model without loading it: the LoRA-targetable
 * linear modules and their [in, out] sizes, from config.json, cross-checked against the
 * safetensors header (only the header is read, so this is cheap for multi-GB checkpoints).
 */
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError, ModelFormatError } from '../errors.js';
import { loadConfig, linearModules, linearWeightShape, checkpointNames, type ModelConfig } from './config.js';
import { familyOf } from './families/index.js';
import { MAX_HEADER_BYTES } from './safetensors.js';
import { matchesTarget } from '../lora/adapter.js';

export interface ModelInfo {
  config: ModelConfig;
  fanInFanOut: boolean;
  /** Every linear module (HF path) → {in, out}. */
  linears: Map<string, { in: number; out: number }>;
}

/** Default LoRA targets of the config's family: every linear layer of the blocks. */
export function defaultTargetModules(cfg: ModelConfig): string[] {
  return [...familyOf(cfg).defaultTargetModules];
}

/** Tensor name → shape from a safetensors header, reading only the header bytes. */
export async function readSafetensorsShapes(file: string): Promise<Map<string, number[]>> {
  const fh = await open(file, 'r').catch((e: NodeJS.ErrnoException) => { throw new ModelFormatError(`cannot open (${e.code ?? e.message})`, file); });
  try {
    const len = Buffer.alloc(8);
    const { bytesRead } = await fh.read(len, 0, 8, 0);
    if (bytesRead < 8) throw new ModelFormatError('truncated: no header length', file);
    const n = len.readBigUInt64LE(0);
    if (n > BigInt(MAX_HEADER_BYTES)) throw new ModelFormatError(`header length ${n} exceeds the cap`, file);
    const hb = Buffer.alloc(Number(n));
    const r2 = await fh.read(hb, 0, hb.length, 8);
    if (r2.bytesRead < hb.length) throw new ModelFormatError('truncated header', file);
    let header: unknown;
    try { header = JSON.parse(hb.toString('utf8')); } catch { throw new ModelFormatError('header is not JSON', file); }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new ModelFormatError('header is not an object', file);
    const out = new Map<string, number[]>();
    for (const [k, v] of Object.entries(header as Record<string, unknown>)) {
      if (k === '__metadata__') continue;
      const shape = (v as { shape?: unknown } | null)?.shape;
      if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new ModelFormatError(`tensor ${k}: bad shape`, file);
      out.set(k, shape as number[]);
    }
    return out;
  } finally {
    await fh.close();
  }
}

export async function readModelInfo(modelDir: string): Promise<ModelInfo> {
  const config = await loadConfig(modelDir);
  const shapes = await readSafetensorsShapes(join(modelDir, 'model.safetensors'));
  const linears = linearModules(config);
  const fanInFanOut = familyOf(config).fanInFanOut;
  for (const [mod, s] of linears) {
    // some families' checkpoints exist with and without a prefix (GPT-2's `transformer.`)
    const w = checkpointNames(config, `${mod}.weight`).map((n) => shapes.get(n)).find((x) => x !== undefined);
    if (!w) throw new ModelFormatError(`config.json implies ${mod}.weight but the checkpoint has no such tensor`, join(modelDir, 'model.safetensors'));
    const expect = linearWeightShape(config, s);
    if (w.length !== 2 || w[0] !== expect[0] || w[1] !== expect[1]) {
      throw new ModelFormatError(`${mod}.weight has shape [${w}], config implies [${expect}]`, join(modelDir, 'model.safetensors'));
    }
  }
  return { config, fanInFanOut, linears };
}

/** Module shapes for the chosen targets (PEFT `target_modules` suffix semantics). */
export function targetShapes(info: ModelInfo, targets: string[]): Map<string, { in: number; out: number }> {
  const out = new Map<string, { in: number; out: number }>();
  for (const [m, s] of info.linears) if (matchesTarget(m, targets)) out.set(m, s);
  if (out.size === 0) throw new ConfigError(`--target-modules ${targets.join(',')} matches no linear module of this ${info.config.modelType} model`);
  return out;
}
