/**
 * LoRA-XS frozen factors from a base checkpoint folder (model IO kept apart from shared/lora/xs.ts
 * and the strategy, which stay free of tfjs and file access).
 */
import { ConfigError, ModelFormatError } from '../errors.js';
import { loadConfig, checkpointNames, linearModules, linearWeightShape } from '../model/config.js';
import { familyOf } from '../model/families/index.js';
import { loadSafetensors, readFloatTensor } from '../model/safetensors.js';
import { checkpointFiles } from '../model/causal-lm.js';
import { loraAName, loraBName, matchesTarget, type LoraAdapter, type LoraConfig } from './adapter.js';
import { moduleFactors, xsAdapter } from './xs.js';
import type { Tensor32, TensorMap } from '../tensor.js';

/** Frozen factors (PEFT-named lora_A / lora_B) of every target module of a checkpoint folder. */
export async function xsFactorsFromCheckpoint(modelDir: string, targets: string[], rank: number): Promise<TensorMap> {
  const cfg = await loadConfig(modelDir);
  const fanInFanOut = familyOf(cfg).fanInFanOut;
  const shapes = [...linearModules(cfg)].filter(([m]) => matchesTarget(m, targets));
  if (!shapes.length) throw new ConfigError(`target modules ${targets.join(',')} match no linear module of this ${cfg.modelType} model`);
  const wanted = new Map<string, string>(); // checkpoint name → module
  for (const [m] of shapes) for (const n of checkpointNames(cfg, `${m}.weight`)) wanted.set(n, m);
  const weights = new Map<string, Tensor32>();
  for (const f of await checkpointFiles(modelDir)) {
    const st = await loadSafetensors(f);
    for (const n of st.entries.keys()) { const m = wanted.get(n); if (m && !weights.has(m)) weights.set(m, readFloatTensor(st, n)); }
  }
  const out: TensorMap = new Map();
  for (const [m, s] of shapes.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const w = weights.get(m);
    if (!w) throw new ModelFormatError(`checkpoint has no weight for module "${m}"`, modelDir);
    if (w.shape.join() !== linearWeightShape(cfg, s).join()) throw new ModelFormatError(`${m}.weight has shape [${w.shape}], config implies [${linearWeightShape(cfg, s)}]`, modelDir);
    const f = moduleFactors(w, s, fanInFanOut, rank);
    out.set(loraAName(m), f.A);
    out.set(loraBName(m), f.B);
  }
  return out;
}

/**
 * The real start of a LoRA-XS run: factors from the truncated SVD of the checkpoint's weights at
 * maxRank (deterministic, see shared/lora/xs.ts), R = 0.
 */
export async function xsInitFromCheckpoint(modelDir: string, maxRank: number, alpha: number, base: Omit<LoraConfig, 'r' | 'loraAlpha'>): Promise<LoraAdapter> {
  const factors = await xsFactorsFromCheckpoint(modelDir, base.targetModules, maxRank);
  return xsAdapter(factors, maxRank, alpha, base);
}

