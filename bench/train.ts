/**
 * npm run bench:train -- [--backend auto|tensorflow|webgpu|wasm|cpu] [--threads N] [--base-dtype fp32|bf16|int8|nf4] [--steps N] [--warmup N] [--only gpt2|small|qwen2[,…]] [--recompute on|off] [--dora] [--json FILE]
 * LoRA r=16 on every linear layer (attention and MLP projections), AdamW, random init written once to a
 * cache folder (seeded, streamed tensor by tensor): a GPT-2-124M-shaped model, a small Llama-style model
 * and (only when named: --only qwen2) a Qwen2-0.5B-shaped model — hidden 896, 24 layers, 14 query / 2
 * key-value heads, SwiGLU 4864, vocabulary 151,936, tied embeddings, q/k/v biases, stored as bf16 like
 * the released checkpoint. The Qwen2 case needs --base-dtype: fp32 in the heap with both layouts passes
 * the wasm32 heap's 4 GiB. Prints step time, tokens/s, peak RSS (whole case, and while loading) and the
 * wasm heap size (the module's linear memory: it grows, never shrinks, and cannot pass 4 GiB). --json
 * writes the figures for bench:compare. --recompute sets LoadOptions.recomputeBlocks (per-block activation
 * recomputation; default: off).
 */
import { parseArgs } from 'node:util';
import { existsSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { loadCausalLM } from '../shared/model/causal-lm.js';
import { familyOf } from '../shared/model/families/index.js';
import { writeRandomModelStreaming, gpt2SmallConfig, tinyLlamaConfig, qwen2HalfBConfig } from '../shared/model/random-init.js';
import { LoraTrainer, type Batch } from '../shared/train/trainer.js';
import { getStrategy } from '../shared/aggregation/index.js';
import { initDoraFromCheckpoint } from '../shared/lora/dora.js';
import { writeFileSync } from 'node:fs';
import { tf, currentBackend, configureThreads } from '../shared/backend/index.js';

const { values } = parseArgs({ options: {
  backend: { type: 'string', default: 'auto' }, steps: { type: 'string', default: '3' }, warmup: { type: 'string', default: '2' },
  only: { type: 'string' }, threads: { type: 'string', default: '1' }, 'base-dtype': { type: 'string' }, json: { type: 'string' }, dora: { type: 'boolean', default: false }, recompute: { type: 'string' }, cache: { type: 'string', default: join(tmpdir(), 'fedlora-bench-models') },
} });

interface Case { key: string; name: string; config: Record<string, unknown>; batch: number; seq: number; rank: number; fileDtype: 'F32' | 'BF16'; needsBaseDtype?: boolean }
const allCases: Case[] = [
  { key: 'gpt2', name: 'gpt2-124M', config: gpt2SmallConfig(), batch: 1, seq: 128, rank: 16, fileDtype: 'F32' },
  { key: 'small', name: 'small-llama (d=128, 4 layers, byte vocab)', config: tinyLlamaConfig({ hidden: 128, layers: 4, heads: 4, kvHeads: 2 }), batch: 8, seq: 128, rank: 16, fileDtype: 'F32' },
  { key: 'qwen2', name: 'qwen2-0.5B-shape (d=896, 24 layers, 14/2 heads, ff 4864, vocab 151,936, tied)', config: qwen2HalfBConfig(), batch: 1, seq: 128, rank: 16, fileDtype: 'BF16', needsBaseDtype: true },
];
const wanted = values.only ? values.only.split(',') : ['gpt2', 'small'];
for (const w of wanted) if (!allCases.some((c) => c.key === w)) throw new RangeError(`--only: unknown case ${JSON.stringify(w)} (cases: ${allCases.map((c) => c.key).join(', ')})`);
const cases = allCases.filter((c) => wanted.includes(c.key));
const warmup = Number(values.warmup);
if (!Number.isInteger(warmup) || warmup < 1) throw new RangeError(`--warmup must be a whole number ≥ 1, got ${JSON.stringify(values.warmup)}`);
if (values.recompute !== undefined && !['on', 'off'].includes(values.recompute)) throw new RangeError(`--recompute must be on or off, got ${JSON.stringify(values.recompute)}`);
for (const c of cases) if (c.needsBaseDtype && !values['base-dtype']) throw new RangeError(`case ${c.key} needs --base-dtype fp32|bf16|int8|nf4 (in the heap as fp32 it passes the wasm32 heap's 4 GiB)`);

configureThreads(values.threads === 'auto' ? 'auto' : Number(values.threads));
/** Bytes of the wasm module's linear memory (grows, never shrinks); null on other backends. */
function wasmHeapBytes(): number | null {
  const b = tf.backend() as unknown as { wasm?: { HEAPU8?: Uint8Array } };
  return b.wasm?.HEAPU8 ? b.wasm.HEAPU8.buffer.byteLength : null;
}
const results: Array<{ case: string; backend: string; threads: number; baseDtype: string | null; stepMs: number; tokensPerS: number; peakRssMiB: number; loadPeakRssMiB: number; wasmHeapMiB: number | null }> = [];
let peakRss = 0;
const sample = () => { peakRss = Math.max(peakRss, process.memoryUsage().rss); };
const timer = setInterval(sample, 50);

console.log(`fedlora bench:train — node ${process.version}, ${new Date().toISOString()}`);
for (const c of cases) {
  const dir = join(values.cache!, c.name.split(' ')[0]!);
  if (!existsSync(join(dir, 'model.safetensors'))) {
    const t0 = performance.now();
    await writeRandomModelStreaming(dir, c.config, 1, 0.02, c.fileDtype);
    console.log(`  wrote random ${c.name} to ${dir} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  peakRss = 0;
  const lm = await loadCausalLM(dir, { backend: values.backend!, ...(values['base-dtype'] ? { baseDtype: values['base-dtype'] as 'nf4' } : {}), ...(values.recompute ? { recomputeBlocks: values.recompute === 'on' } : {}) });
  sample();
  const loadPeak = peakRss;
  const shapes = lm.linearShapes;
  const adapter = getStrategy('fedit').init(shapes, c.rank, 2 * c.rank, 1, { targetModules: [...new Set([...shapes.keys()].map((m) => m.split('.').slice(-1)[0]!))], fanInFanOut: familyOf(lm.config).fanInFanOut, useRslora: false, taskType: 'CAUSAL_LM' });
  // --dora: the same factors plus a magnitude per module (PEFT's init from the checkpoint)
  const start = values.dora ? await initDoraFromCheckpoint(dir, adapter) : adapter;
  const trainer = new LoraTrainer(lm, start, { lr: 1e-4, totalSteps: 100 });
  const V = lm.config.vocabSize;
  const ids = new Int32Array(c.batch * c.seq).map((_, i) => (i * 7919) % V);
  const batch: Batch = { ids, lossMask: new Float32Array(ids.length).fill(1), attentionMask: new Float32Array(ids.length).fill(1), batch: c.batch, length: c.seq };
  let loraParams = 0;
  for (const t of start.tensors.values()) loraParams += t.data.length;
  // warm-up (kernel compilation, XNNPACK weight packing, heap growth, optimizer state): the second step is still
  // ≈20 % slower than the steady state on wasm, so two by default (torch_step.py gets the same)
  const first = await trainer.trainStep([batch]);
  for (let s = 1; s < warmup; s++) await trainer.trainStep([batch]);
  let last = first;
  const steps = Number(values.steps);
  const t0 = performance.now();
  for (let s = 0; s < steps; s++) { last = await trainer.trainStep([batch]); sample(); }
  const dt = (performance.now() - t0) / steps;
  const toks = (c.batch * c.seq) / (dt / 1000);
  console.log(`\n${c.name} on ${currentBackend()?.name}: base ${(lm.parameterCount / 1e6).toFixed(1)}M params, ${values.dora ? 'DoRA' : 'LoRA'} r=${c.rank} on ${shapes.size} linear layers (${(loraParams / 1e6).toFixed(2)}M trainable)`);
  const heap = wasmHeapBytes();
  const sel = currentBackend()!;
  console.log(`  batch ${c.batch} × seq ${c.seq}, ${sel.threads} thread(s), base ${values['base-dtype'] ?? 'fp32 in the tfjs heap'}${values.recompute ? `, recompute ${values.recompute}` : ''}: step ${dt.toFixed(0)} ms, ${toks.toFixed(0)} tokens/s, peak RSS ${(peakRss / 2 ** 20).toFixed(0)} MiB (loading ${(loadPeak / 2 ** 20).toFixed(0)} MiB), wasm heap ${heap === null ? '—' : `${(heap / 2 ** 20).toFixed(0)} MiB`}, tfjs tensors ${(tf.memory().numBytes / 2 ** 20).toFixed(0)} MiB, loss ${first.loss.toFixed(4)} → ${last.loss.toFixed(4)}, load average ${loadavg()[0]!.toFixed(1)}`);
  results.push({ case: c.name.split(' ')[0]!, backend: sel.name, threads: sel.threads, baseDtype: values['base-dtype'] ?? null, stepMs: dt, tokensPerS: toks, peakRssMiB: peakRss / 2 ** 20, loadPeakRssMiB: loadPeak / 2 ** 20, wasmHeapMiB: heap === null ? null : heap / 2 ** 20 });
  trainer.dispose();
  lm.dispose();
}
clearInterval(timer);
if (values.json) writeFileSync(values.json, JSON.stringify(results));
