/**
 * How large is a round's pseudo-gradient Δ = averaged − previous on a scenario, and what would the
 * adaptive server optimisers' defaults do with it? Runs a few socket-free rounds of the plain
 * strategy (the project's client trainer, contribution/finalize, aggregateRound with the refactor)
 * and prints, per round and factor, percentiles of |Δ| over the entries somebody trained, then the
 * FedAdam/FedYogi gain η/(|Δ| + τ) at those sizes (the per-entry step ÷ |Δ| once m ≈ Δ, v ≈ Δ²) and
 * the first-round step ratio η·(1−β1)/(√((1−β2)Δ² + β2τ²) + τ). Gain 1 is plain FedAvg.
 *
 *   npx tsx bench/server-opt.ts [--scenario default] [--rounds 3] [--steps N] [--lr X] [--server-lr X] [--server-eps X]
 *                               [--server-opt none|fedavgm|fedadam|fedyogi] [--eval]
 *
 * With --server-opt the rounds run under that optimiser (its defaults, or --server-lr / --server-eps);
 * with --eval the global adapter is scored after every round on the clients' eval splits (mean
 * per-client accuracy, the figure bench/learning.ts prints).
 *
 * Figures go to stdout; nothing is asserted. Used for the defaults in shared/aggregation/server-opt.ts.
 */
import { parseArgs } from 'node:util';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadScenario } from '../simulations/scenario.js';
import { prepareClients } from '../simulations/runner/data.js';
import { loadCausalLM } from '../shared/model/causal-lm.js';
import { createTrainer, resolveTokenizer } from '../client/trainer.js';
import {
  SERVER_OPT_DEFAULTS, adapterForRank, aggregateRound, checkServerOpt, describeServerOpt, flatten, getStrategy, makeLayout,
  type ModuleTransforms, type ServerOptConfig,
} from '../shared/aggregation/index.js';
import { evaluate } from '../shared/train/eval.js';
import { disposeRuntime } from '../shared/model/causal-lm.js';
import { defaultTargetModules, readModelInfo, targetShapes } from '../shared/model/model-info.js';
import { parseLoraName, type LoraAdapter } from '../shared/lora/adapter.js';
import type { TensorMap } from '../shared/tensor.js';

const { values: a } = parseArgs({
  options: {
    scenario: { type: 'string', default: 'default' }, rounds: { type: 'string', default: '3' }, steps: { type: 'string' }, lr: { type: 'string' },
    'server-lr': { type: 'string' }, 'server-eps': { type: 'string' }, 'server-opt': { type: 'string', default: 'none' }, eval: { type: 'boolean', default: false },
  },
});
const s = await loadScenario(a.scenario!);
s.rounds = Number(a.rounds);
if (a.steps) s.train.localSteps = Number(a.steps);
if (a.lr) s.train.lr = Number(a.lr);
const d = SERVER_OPT_DEFAULTS.fedadam;
const eta = a['server-lr'] ? Number(a['server-lr']) : d.lr;
const tau = a['server-eps'] ? Number(a['server-eps']) : d.eps;
const out = await mkdtemp(join(tmpdir(), 'fedlora-bench-serveropt-'));
try {
  const clients = await prepareClients(s, out);
  const lm = await loadCausalLM(s.model, { backend: s.backend });
  const tok = await resolveTokenizer(s.model, lm.config.vocabSize);
  const info = await readModelInfo(s.model);
  const maxRank = Math.max(...Object.keys(s.rankMix).map(Number));
  const strategy = getStrategy(s.strategy);
  const targets = defaultTargetModules(info.config);
  let global: LoraAdapter = strategy.init(targetShapes(info, targets), maxRank, s.loraAlpha, s.seed, { targetModules: targets, fanInFanOut: info.fanInFanOut, useRslora: false, taskType: 'CAUSAL_LM', baseModelNameOrPath: null });
  const optName = a['server-opt'] as ServerOptConfig['name'];
  const optimizer: ServerOptConfig = { name: optName, ...(a['server-lr'] && optName !== 'none' ? { lr: eta } : {}), ...(a['server-eps'] && optName !== 'none' && optName !== 'fedavgm' ? { eps: tau } : {}) };
  const server = strategy.createServer({ maxRank, seed: s.seed, optimizer });
  const layout = makeLayout([...global.tensors].filter(([n]) => strategy.isShared(n)).map(([name, t]) => ({ name, shape: t.shape })));
  const trainers = await Promise.all(clients.map((c) => createTrainer({ modelDir: s.model, examples: c.train, lm, tokenizer: tok, evalFraction: 0, seed: s.seed, maxSeqLen: s.train.maxSeqLen })));
  console.log(`${s.name}: ${clients.length} clients, ranks ${clients.map((c) => c.rank).join('/')}, ${s.train.localSteps} local steps at lr ${s.train.lr}, strategy ${s.strategy}; server η ${eta}, τ ${tau}, β1 ${d.beta1}, β2 ${d.beta2}`);
  const pct = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor(p * xs.length))]!;
  const t0 = Date.now();
  for (let r = 1; r <= s.rounds; r++) {
    const sum = new Float32Array(layout.size);
    const contributors = [];
    for (let i = 0; i < clients.length; i++) {
      const c = clients[i]!;
      const res = await trainers[i]!.train(adapterForRank(global, c.rank), { steps: s.train.localSteps, lr: s.train.lr, batchSize: s.train.batchSize, seed: s.seed * 1000 + r * 31 + i, trainable: (n) => strategy.isTrainable(n) });
      const w = c.train.length;
      const parts: TensorMap = new Map(layout.entries.map((e) => [e.name, strategy.contribution(e.name, res.adapter.tensors.get(e.name)!, w, maxRank)]));
      const v = flatten(parts, layout);
      for (let k = 0; k < v.length; k++) sum[k] = sum[k]! + v[k]!;
      contributors.push({ rank: c.rank, weight: w, personal: () => false });
    }
    // the step sees Δ before the refactor: record it by stepping a recording server
    const deltas: Record<'A' | 'B', number[]> = { A: [], B: [] };
    const recorder = {
      strategy, serialize: () => server.serialize(), restore: (x: Parameters<typeof server.restore>[0]) => server.restore(x),
      rebase: (t: ModuleTransforms) => server.rebase?.(t),
      step(prev: LoraAdapter, avg: LoraAdapter, trained?: ReadonlyMap<string, readonly boolean[]>) {
        for (const [k, p] of prev.tensors) {
          const f = parseLoraName(k)?.factor;
          const mask = trained?.get(k);
          if (!f || !mask) continue;
          const cols = p.shape[1]!;
          const x = avg.tensors.get(k)!.data;
          for (let e = 0; e < x.length; e++) if (mask[f === 'A' ? Math.floor(e / cols) : e % cols]) deltas[f].push(Math.abs(x[e]! - p.data[e]!));
        }
        return server.step(prev, avg, trained);
      },
    };
    global = aggregateRound(recorder, { sum, layout, contributors, previous: global, maxRank, refactor: true, keepUnrotated: () => false });
    for (const f of ['A', 'B'] as const) {
      const xs = deltas[f].sort((p, q) => p - q);
      const q = [0.1, 0.5, 0.9, 0.99].map((p) => pct(xs, p));
      const gain = q.map((x) => eta / (x + tau));
      const first = q.map((x) => (eta * (1 - d.beta1)) / (Math.sqrt((1 - d.beta2) * x * x + d.beta2 * tau * tau) + tau));
      console.log(`round ${r} ${f}: |Δ| p10/p50/p90/p99 ${q.map((x) => x.toExponential(2)).join(' / ')} over ${xs.length} entries; `
        + `steady gain η/(|Δ|+τ) ${gain.map((x) => x.toFixed(2)).join(' / ')}; first-step ratio ${first.map((x) => x.toFixed(2)).join(' / ')}`);
    }
    if (a.eval) {
      const accs: number[] = [];
      for (let i = 0; i < clients.length; i++) {
        const rt = lm.runtime(adapterForRank(global, clients[i]!.rank));
        try { accs.push((await evaluate(lm, tok, clients[i]!.eval, rt, { maxSeqLen: s.train.maxSeqLen })).accuracy); } finally { disposeRuntime(rt); }
      }
      console.log(`round ${r}: global accuracy ${(100 * accs.reduce((p, q) => p + q, 0) / accs.length).toFixed(1)} % (mean over clients, server ${describeServerOpt(checkServerOpt(optimizer))})`);
    }
    console.log(`  (${Math.round((Date.now() - t0) / 1000)} s)`);
  }
  for (const t of trainers) t.dispose();
  lm.dispose();
} finally {
  await rm(out, { recursive: true, force: true });
}
