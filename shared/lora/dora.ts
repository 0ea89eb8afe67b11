/**
 * DoRA (Liu et al. 2024; PEFT `use_dora: true`) helpers outside tfjs: the magnitude vector's
 * initial value, as PEFT's DoraLinearLayer.update_layer computes it, m = ‖W + scale·B A‖ per output
 * feature (row of W as [out, in]; column of a fan_in_fan_out [in, out] weight). A fresh adapter has
 * B = 0, so m starts as the base weight's row norms and the DoRA model equals the base model.
 */
import { ModelFormatError } from '../errors.js';
import { checkpointNames, linearModules, loadConfig } from '../model/config.js';
import { familyOf } from '../model/families/index.js';
import { loadSafetensors, readFloatTensor } from '../model/safetensors.js';
import type { Tensor32, TensorMap } from '../tensor.js';
import { adapterModules, loraAName, loraBName, loraMName, moduleScale, type LoraAdapter } from './adapter.js';

/**
 * ‖W + scale·B A‖ per output feature, accumulated in float64. `w` is [out, in], or [in, out] when
 * `fanInFanOut`; A [r, in] and B [out, r] may be omitted (or B all zero) for the plain row norms.
 */
export function doraMagnitude(w: Tensor32, fanInFanOut: boolean, lora?: { A: Tensor32; B: Tensor32; scale: number }): Float32Array {
  if (w.shape.length !== 2) throw new ModelFormatError(`DoRA: base weight must be 2-D, has shape [${w.shape}]`);
  const [d0, d1] = w.shape as [number, number];
  const out = fanInFanOut ? d1 : d0, inF = fanInFanOut ? d0 : d1;
  const useLora = lora !== undefined && lora.B.data.some((v) => v !== 0);
  if (lora && (lora.A.shape[1] !== inF || lora.B.shape[0] !== out || lora.A.shape[0] !== lora.B.shape[1])) {
    throw new ModelFormatError(`DoRA: A [${lora.A.shape}] and B [${lora.B.shape}] do not fit a weight with in ${inF}, out ${out}`);
  }
  const r = lora ? lora.A.shape[0]! : 0;
  const res = new Float32Array(out);
  const row = new Float64Array(inF);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) row[i] = w.data[fanInFanOut ? i * out + o : o * inF + i]!;
    if (useLora) {
      for (let k = 0; k < r; k++) {
        const b = lora!.B.data[o * r + k]! * lora!.scale;
        if (b === 0) continue;
        const a = lora!.A.data.subarray(k * inF, (k + 1) * inF);
        for (let i = 0; i < inF; i++) row[i] = row[i]! + b * a[i]!;
      }
    }
    let s = 0;
    for (let i = 0; i < inF; i++) s += row[i]! * row[i]!;
    res[o] = Math.sqrt(s);
  }
  return res;
}

/**
 * The adapter with use_dora set and a magnitude per module initialised from the base checkpoint in
 * `modelDir` (PEFT's init: m = ‖W + scale·B A‖ with the adapter's current A, B). Existing magnitudes
 * are replaced.
 */
export async function initDoraFromCheckpoint(modelDir: string, adapter: LoraAdapter): Promise<LoraAdapter> {
  const cfg = await loadConfig(modelDir);
  const shapes = linearModules(cfg);
  const fifo = familyOf(cfg).fanInFanOut;
  const mods = adapterModules(adapter);
  const wanted = new Map<string, string>();
  for (const m of mods) {
    if (!shapes.has(m)) throw new ModelFormatError(`LoRA module "${m}" is not a linear layer of this ${cfg.modelType} model`, modelDir);
    for (const n of checkpointNames(cfg, `${m}.weight`)) wanted.set(n, m);
  }
  const { checkpointFiles } = await import('../model/causal-lm.js');
  const weights = new Map<string, Tensor32>();
  for (const f of await checkpointFiles(modelDir)) {
    const st = await loadSafetensors(f);
    for (const n of st.entries.keys()) {
      const m = wanted.get(n);
      if (m && !weights.has(m)) weights.set(m, readFloatTensor(st, n));
    }
  }
  const tensors: TensorMap = new Map(adapter.tensors);
  for (const m of mods) {
    const w = weights.get(m);
    if (!w) throw new ModelFormatError(`checkpoint has no weight for module "${m}"`, modelDir);
    const A = adapter.tensors.get(loraAName(m))!, B = adapter.tensors.get(loraBName(m))!;
    const mag = doraMagnitude(w, fifo, { A, B, scale: moduleScale(adapter.config, m, A.shape[0]) });
    tensors.set(loraMName(m), { shape: [mag.length], data: mag });
  }
  return { config: { ...adapter.config, targetModules: [...adapter.config.targetModules], useDora: true }, tensors };
}

