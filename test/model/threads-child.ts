/**
 * Child process for threads.test.ts: loads a Hugging Face fixture on `wasm` with the thread count
 * FEDLORA_THREADS asks for, computes LoRA logits, loss and gradients plus one product large enough
 * for XNNPACK to split across threads, and prints them (with the pool size) as one JSON line.
 */
import { readFileSync } from 'node:fs';
import { loadCausalLM } from '../../shared/model/causal-lm.js';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { loadSafetensors, readTensor } from '../../shared/model/safetensors.js';
import { currentBackend, tf } from '../../shared/backend/index.js';

const FIX = 'test/fixtures/hf';
const name = process.argv[2] ?? 'gpt2-tiny';
const lm = await loadCausalLM(`${FIX}/${name}/base`, { backend: 'wasm' });
const adapter = await loadPeftAdapter(`${FIX}/${name}/adapter`);
const ex = await loadSafetensors(`${FIX}/${name}/expected.safetensors`);
const t = readTensor(ex, 'input_ids');
const [B, T] = t.shape as [number, number];
const ids = Array.from({ length: B }, (_, b) => [...t.data.subarray(b * T, (b + 1) * T)]);
const logits = await lm.logits(ids, { adapter });
const { loss, grads } = await lm.lossAndGrads(ids, { adapter });
const n = 384;
const big = tf.tidy(() => tf.matMul(tf.randomNormal([n, n], 0, 1, 'float32', 1), tf.randomNormal([n, n], 0, 1, 'float32', 2)).dataSync());
const sel = currentBackend()!;
const expected = JSON.parse(readFileSync(`${FIX}/${name}/expected.json`, 'utf8')) as { loss_with_adapter: number };
process.stdout.write(`${JSON.stringify({
  backend: sel.name, threads: sel.threads, note: sel.threadsNote ?? null, oracleLoss: expected.loss_with_adapter,
  logits: [...logits], loss, grads: Object.fromEntries([...grads].map(([k, g]) => [k, [...g]])), big: [...big],
})}\n`, () => process.exit(0)); // a pipe takes large writes asynchronously: exit once flushed
