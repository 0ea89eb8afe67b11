/**
 * Merge a LoRA adapter into a base checkpoint and write a standalone Hugging Face folder
 * (PEFT's merge_and_unload, on disk): W' = W + scale · ΔW in the checkpoint's own layout; under DoRA
 * W' = m / ‖W + scale·ΔW‖ · (W + scale·ΔW) per output feature. Biases are never touched.
 */
import { copyFile, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { tf, selectBackend } from '../backend/index.js';
import { loadConfig, linearModules, checkpointNames } from '../model/config.js';
import { familyOf } from '../model/families/index.js';
import { checkpointFiles } from '../model/causal-lm.js';
import { loadSafetensors, readFloatTensor, encodeSafetensors, atomicWrite } from '../model/safetensors.js';
import { ModelFormatError } from '../errors.js';
import { adapterModules, loraAName, loraBName, loraMName, moduleScale, type LoraAdapter } from './adapter.js';
import type { TensorMap } from '../tensor.js';

export async function mergeAdapterIntoModel(modelDir: string, adapter: LoraAdapter, outDir: string, opts: { backend?: string } = {}): Promise<{ merged: number }> {
  await selectBackend(opts.backend ?? 'auto');
  const cfg = await loadConfig(modelDir);
  const shapes = linearModules(cfg);
  const fanInFanOut = familyOf(cfg).fanInFanOut;
  const weights: TensorMap = new Map();
  for (const f of await checkpointFiles(modelDir)) {
    const st = await loadSafetensors(f);
    for (const n of st.entries.keys()) weights.set(n, readFloatTensor(st, n));
  }
  let merged = 0;
  for (const m of adapterModules(adapter)) {
    const s = shapes.get(m);
    if (!s) throw new ModelFormatError(`LoRA module "${m}" is not a linear layer of this ${cfg.modelType} model`, modelDir);
    const name = checkpointNames(cfg, `${m}.weight`).find((n) => weights.has(n));
    if (!name) throw new ModelFormatError(`checkpoint has no weight for module "${m}"`, modelDir);
    const W = weights.get(name)!;
    const A = adapter.tensors.get(loraAName(m))!, B = adapter.tensors.get(loraBName(m))!;
    const r = A.shape[0]!;
    if (A.shape[1] !== s.in || B.shape[0] !== s.out || B.shape[1] !== r) throw new ModelFormatError(`adapter shapes for "${m}" do not fit the model ([${A.shape}], [${B.shape}] vs in ${s.in}, out ${s.out})`, modelDir);
    const scale = moduleScale(adapter.config, m, r);
    const M = adapter.config.useDora === true ? adapter.tensors.get(loraMName(m)) : undefined;
    if (adapter.config.useDora === true && (!M || M.shape.length !== 1 || M.shape[0] !== s.out)) throw new ModelFormatError(`DoRA module "${m}" needs a lora_magnitude_vector of shape [${s.out}]`, modelDir);
    const out = tf.tidy(() => {
      const a = tf.tensor2d(A.data, [r, s.in]), b = tf.tensor2d(B.data, [s.out, r]);
      // B·A is [out, in] (nn.Linear layout); Conv1D-style checkpoints store [in, out]
      const delta = fanInFanOut ? tf.matMul(tf.transpose(a), tf.transpose(b)) : tf.matMul(b, a);
      const w = tf.add(tf.tensor2d(W.data, W.shape as [number, number]), tf.mul(delta, scale));
      if (!M) return w;
      // the norm runs over the input features: axis 0 of [in, out], axis 1 of [out, in]
      const axis = fanInFanOut ? 0 : 1;
      const g = tf.div(tf.tensor1d(M.data), tf.sqrt(tf.sum(tf.square(w), axis)));
      return tf.mul(w, fanInFanOut ? g : tf.reshape(g, [s.out, 1]));
    });
    weights.set(name, { shape: W.shape, data: (await out.data()) as Float32Array });
    out.dispose();
    merged++;
  }
  await mkdir(outDir, { recursive: true });
  await atomicWrite(join(outDir, 'model.safetensors'), encodeSafetensors(weights, { format: 'pt' }));
  // carry over config and tokenizer files unchanged
  for (const f of await readdir(modelDir)) {
    if (/^(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|fedlora_tokenizer)\.json$|\.model$|^vocab\.|^merges\.txt$/.test(f)) await copyFile(join(modelDir, f), join(outDir, f));
  }
  return { merged };
}
