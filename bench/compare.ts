/**
 * npm run bench:compare -- [--rounds 2] [--steps 3] [--warmup 2] [--only gpt2|small]
 * The LoRA training steps of bench:train beside the same steps in PyTorch (bench/torch_step.py), each
 * configuration in its own process, alternating fedlora and torch runs in one window so both see the
 * same machine load. fedlora: wasm with 1 and 2 threads; torch: 1 and 2 threads (OMP_WAIT_POLICY=PASSIVE).
 * Prints the median step time, tokens/s and peak RSS of each, and the ratios the CPU-speed targets use:
 * fedlora's best against torch's 2-thread step (GPT-2) and against torch's faster setting (small Llama).
 * Needs Debian's python3-torch (`/usr/bin/python3 -c "import torch"`); without it, says so and exits 0.
 */
import { parseArgs } from 'node:util';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '2' }, steps: { type: 'string', default: '3' }, warmup: { type: 'string', default: '2' }, only: { type: 'string' }, python: { type: 'string', default: '/usr/bin/python3' } } });
const PY = values.python!;
const probe = spawnSync(PY, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
if (probe.status !== 0) {
  console.log(`bench:compare: no PyTorch at ${PY} (Debian: apt-get install python3-torch libopenblas0-pthread); nothing to compare`);
  process.exit(0);
}
const cases = [{ name: 'gpt2-124M', only: 'gpt2' }, { name: 'small-llama', only: 'small' }].filter((c) => !values.only || c.only === values.only);
const rounds = Number(values.rounds), steps = Number(values.steps), warmup = Number(values.warmup);
interface Row { stepMs: number; tokensPerS: number; peakRssMiB: number; wasmHeapMiB?: number | null }
const dir = mkdtempSync(join(tmpdir(), 'fedlora-compare-'));
const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2; };

function fedlora(only: string, threads: number): Row {
  const out = join(dir, `f-${only}-${threads}.json`);
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/train.ts', '--only', only, '--threads', String(threads), '--steps', String(steps), '--warmup', String(warmup), '--json', out], { encoding: 'utf8', env: { ...process.env, FEDLORA_LOG: 'warn' } });
  if (r.status !== 0) throw new Error(`bench/train.ts failed: ${r.stderr.slice(-400)}`);
  return (JSON.parse(readFileSync(out, 'utf8')) as Row[])[0]!;
}
function torch(name: string, threads: number): Row {
  const r = spawnSync(PY, ['bench/torch_step.py', name, String(threads), String(steps), String(warmup)], { encoding: 'utf8', env: { ...process.env, OMP_WAIT_POLICY: 'PASSIVE' } });
  if (r.status !== 0) throw new Error(`torch_step.py failed: ${r.stderr.slice(-400)}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Row;
}

console.log(`fedlora bench:compare — torch ${probe.stdout.trim()}, node ${process.version}, ${rounds} alternating round(s) × ${steps} steps after ${warmup} warm-up step(s), load ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
for (const c of cases) {
  const runs: Record<string, Row[]> = { 'fedlora 1 thread': [], 'fedlora 2 threads': [], 'torch 1 thread': [], 'torch 2 threads': [] };
  for (let i = 0; i < rounds; i++) {
    runs['fedlora 1 thread']!.push(fedlora(c.only, 1));
    runs['torch 1 thread']!.push(torch(c.name, 1));
    runs['fedlora 2 threads']!.push(fedlora(c.only, 2));
    runs['torch 2 threads']!.push(torch(c.name, 2));
  }
  console.log(`\n${c.name}`);
  const med: Record<string, number> = {};
  for (const [k, rs] of Object.entries(runs)) {
    med[k] = median(rs.map((r) => r.stepMs));
    const heap = rs[0]!.wasmHeapMiB;
    console.log(`  ${k.padEnd(18)} step ${med[k]!.toFixed(0).padStart(6)} ms (runs ${rs.map((r) => r.stepMs.toFixed(0)).join(', ')}), ${median(rs.map((r) => r.tokensPerS)).toFixed(0)} tokens/s, peak RSS ${Math.max(...rs.map((r) => r.peakRssMiB)).toFixed(0)} MiB${heap ? `, wasm heap ${heap.toFixed(0)} MiB` : ''}`);
  }
  const best = Math.min(med['fedlora 1 thread']!, med['fedlora 2 threads']!);
  const t2 = med['torch 2 threads']!, tBest = Math.min(med['torch 1 thread']!, t2);
  console.log(`  ratio fedlora best / torch 2 threads: ${(best / t2).toFixed(2)}×; fedlora best / torch's faster setting: ${(best / tBest).toFixed(2)}×`);
}
console.log(`\nload after: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
rmSync(dir, { recursive: true, force: true });
