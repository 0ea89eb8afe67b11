/**
 * Deterministic LoRA initialisation. The coordinator and (under `ffa`) every client must derive the
 * same A from a shared seed, so the generator is specified here bit for bit: xoshiro128** seeded by
 * splitmix32 from (seed, FNV-1a of the module path). One stream per module, filled row-major, so the
 * first r rows of A do not depend on the maximum rank they were generated for.
 */
import { ConfigError } from '../errors.js';
import { fnv1a32, splitmix32, xoshiro128ss } from '../data/random.js';
import { loraAName, loraBName, type LoraAdapter, type LoraConfig } from '../lora/adapter.js';
import type { Tensor32, TensorMap } from '../tensor.js';

const utf8 = new TextEncoder();

/** xoshiro128** (shared/data/random.ts) seeded by splitmix32 from (seed, FNV-1a of the label's UTF-8 bytes); yields uint32. */
export function seededStream(seed: number, label: string): () => number {
  if (!Number.isSafeInteger(seed) || seed < 0) throw new ConfigError(`seed must be a non-negative safe integer, got ${seed}`);
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 2 ** 32) >>> 0;
  const st = { s: (lo ^ Math.imul(hi, 0x9e3779b1) ^ fnv1a32(utf8.encode(label))) >>> 0 };
  return xoshiro128ss([splitmix32(st), splitmix32(st), splitmix32(st), splitmix32(st)]);
}

/**
 * PEFT's default A init: kaiming_uniform_(a=√5) on a [r, in] weight, i.e. gain √(1/3) · √(3/in),
 * which is U(−1/√in, 1/√in). Row-major from the module's own stream.
 */
export function initLoraA(module: string, rank: number, inFeatures: number, seed: number): Tensor32 {
  if (!Number.isInteger(rank) || rank < 1) throw new ConfigError(`rank must be a positive integer, got ${rank}`);
  if (!Number.isInteger(inFeatures) || inFeatures < 1) throw new ConfigError(`in_features must be a positive integer, got ${inFeatures}`);
  const next = seededStream(seed, `lora_A:${module}`);
  const bound = 1 / Math.sqrt(inFeatures);
  const data = new Float32Array(rank * inFeatures);
  // 2^-32 · (u + 0.5) ∈ (0, 1): symmetric around 0 after the affine map, never exactly ±bound
  for (let i = 0; i < data.length; i++) data[i] = (((next() + 0.5) / 2 ** 32) * 2 - 1) * bound;
  return { shape: [rank, inFeatures], data };
}

/** Fresh adapter at `maxRank`: A from the seed, B zero, so B·A = 0 and the base model is unchanged. */
export function initLoraAdapter(
  moduleShapes: Map<string, { in: number; out: number }>,
  maxRank: number,
  alpha: number,
  seed: number,
  base: Omit<LoraConfig, 'r' | 'loraAlpha'>,
): LoraAdapter {
  if (!Number.isInteger(maxRank) || maxRank < 1) throw new ConfigError(`max rank must be a positive integer, got ${maxRank}`);
  if (!Number.isFinite(alpha) || alpha <= 0) throw new ConfigError(`lora alpha must be a positive number, got ${alpha}`);
  if (moduleShapes.size === 0) throw new ConfigError('no target modules to initialise');
  const tensors: TensorMap = new Map();
  for (const module of [...moduleShapes.keys()].sort()) {
    const { in: inF, out } = moduleShapes.get(module)!;
    if (!Number.isInteger(out) || out < 1) throw new ConfigError(`module ${module}: out_features must be a positive integer, got ${out}`);
    tensors.set(loraAName(module), initLoraA(module, maxRank, inF, seed));
    tensors.set(loraBName(module), { shape: [out, maxRank], data: new Float32Array(out * maxRank) });
  }
  return { config: { ...base, targetModules: [...base.targetModules], r: maxRank, loraAlpha: alpha }, tensors };
}
