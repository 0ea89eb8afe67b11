/**
 * npm run bench:profile -- [--only gpt2|small] [--threads N] [--top K]
 * One LoRA training step of a bench:train case under tf.profile: kernel time per kernel name and per
 * (name, input shapes), with the share of the step's kernel time and the number of calls. The model
 * folder is bench:train's cache (run bench:train once first, or this writes it).
 */
import { parseArgs } from 'node:util';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCausalLM } from '../shared/model/causal-lm.js';
import { familyOf } from '../shared/model/families/index.js';
import { writeRandomModelStreaming, gpt2SmallConfig, tinyLlamaConfig } from '../shared/model/random-init.js';
import { LoraTrainer, type Batch } from '../shared/train/trainer.js';
import { getStrategy } from '../shared/aggregation/index.js';
import { tf, currentBackend, configureThreads } from '../shared/backend/index.js';

const { values } = parseArgs({ options: {
  only: { type: 'string', default: 'small' }, threads: { type: 'string', default: '1' }, top: { type: 'string', default: '25' },
  backend: { type: 'string', default: 'wasm' }, cache: { type: 'string', default: join(tmpdir(), 'fedlora-bench-models') },
} });
const cases = {
  gpt2: { name: 'gpt2-124M', config: gpt2SmallConfig(), batch: 1, seq: 128, rank: 16 },
  small: { name: 'small-llama', config: tinyLlamaConfig({ hidden: 128, layers: 4, heads: 4, kvHeads: 2 }), batch: 8, seq: 128, rank: 16 },
} as const;
const c = cases[values.only as keyof typeof cases];
if (!c) throw new RangeError(`--only must be gpt2 or small, got ${JSON.stringify(values.only)}`);
configureThreads(Number(values.threads));
const dir = join(values.cache!, c.name);
if (!existsSync(join(dir, 'model.safetensors'))) await writeRandomModelStreaming(dir, c.config as Record<string, unknown>, 1, 0.02, 'F32');
const lm = await loadCausalLM(dir, { backend: values.backend! });
const shapes = lm.linearShapes;
const adapter = getStrategy('fedit').init(shapes, c.rank, 2 * c.rank, 1, { targetModules: [...new Set([...shapes.keys()].map((m) => m.split('.').slice(-1)[0]!))], fanInFanOut: familyOf(lm.config).fanInFanOut, useRslora: false, taskType: 'CAUSAL_LM' });
const trainer = new LoraTrainer(lm, adapter, { lr: 1e-4, totalSteps: 100 });
const V = lm.config.vocabSize;
const ids = new Int32Array(c.batch * c.seq).map((_, i) => (i * 7919) % V);
const batch: Batch = { ids, lossMask: new Float32Array(ids.length).fill(1), attentionMask: new Float32Array(ids.length).fill(1), batch: c.batch, length: c.seq };
await trainer.trainStep([batch]);
await trainer.trainStep([batch]);
const t0 = performance.now();
await trainer.trainStep([batch]);
const plain = performance.now() - t0;
const heldBefore = tf.memory().numBytes;
const prof = await tf.profile(async () => { await trainer.trainStep([batch]); });
const byName = new Map<string, { ms: number; n: number }>();
const byShape = new Map<string, { ms: number; n: number }>();
let total = 0;
for (const k of prof.kernels) {
  const ms = Number(k.kernelTimeMs) || 0;
  total += ms;
  const a = byName.get(k.name) ?? { ms: 0, n: 0 }; a.ms += ms; a.n++; byName.set(k.name, a);
  const key = `${k.name} ${JSON.stringify(k.inputShapes)}`;
  const b = byShape.get(key) ?? { ms: 0, n: 0 }; b.ms += ms; b.n++; byShape.set(key, b);
}
const top = Number(values.top);
console.log(`${c.name} on ${currentBackend()?.name} (${currentBackend()?.threads} thread(s)): step ${plain.toFixed(0)} ms unprofiled; ${prof.kernels.length} kernel calls, ${total.toFixed(0)} ms kernel time`);
const show = (m: Map<string, { ms: number; n: number }>) => [...m].sort((x, y) => y[1].ms - x[1].ms).slice(0, top)
  .forEach(([k, v]) => console.log(`  ${(100 * v.ms / total).toFixed(1).padStart(5)} %  ${v.ms.toFixed(1).padStart(8)} ms  ${String(v.n).padStart(5)}×  ${k}`));
console.log(`tfjs tensors: ${(heldBefore / 2 ** 20).toFixed(0)} MiB held before the step, peak ${(prof.peakBytes / 2 ** 20).toFixed(0)} MiB during it (XNNPACK's packed weights are not tensors and not counted)`);
console.log('by kernel:'); show(byName);
console.log('by kernel and input shapes:'); show(byShape);
trainer.dispose();
lm.dispose();
