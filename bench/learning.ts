/**
 * Socket-free learning experiment on the default scenario's partition: the same modules the
 * coordinator and clients use (rank-aware contribution/finalize, refactor, server optimiser,
 * the client trainer), without the transport, so many variants can be compared quickly.
 *
 *   npm run bench:learning -- --rounds 10 --steps 3 [--seed 42] [--strategy rank-aware]
 *       [--server-opt fedavgm|fedadam|fedyogi --server-lr X --server-beta1 X] [--no-refactor]
 *       [--reset-moments] [--personal-steps 8] [--skip-baselines]
 *
 * No secure aggregation, no dropouts, every client every round. Prints the mean per-client accuracy
 * (clients' own eval splits) of the global adapter after every round, of the final global adapter
 * fine-tuned locally (personal layer only / all tensors, fresh optimizer), and the local-only and
 * centralized baselines at the same budget in examples seen. Exploration only: claims come from
 * `fedlora simulate --preset benchmark`.
 */
import { parseArgs } from 'node:util';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadScenario } from '../simulations/scenario.js';
import { prepareClients, labelOf } from '../simulations/runner/data.js';
import { loadCausalLM } from '../shared/model/causal-lm.js';
import { createTrainer, resolveTokenizer, type LocalTrainer } from '../client/trainer.js';
import { aggregateRound, getStrategy, makeLayout, flatten, adapterForRank } from '../shared/aggregation/index.js';
import { readModelInfo, targetShapes, defaultTargetModules } from '../shared/model/model-info.js';
import { globMatcher } from '../shared/protocol/glob.js';
import type { LoraAdapter } from '../shared/lora/adapter.js';
import type { TensorMap } from '../shared/tensor.js';

const { values: a } = parseArgs({
  options: {
    scenario: { type: 'string', default: 'default' }, seed: { type: 'string', default: '42' }, rounds: { type: 'string', default: '10' },
    steps: { type: 'string', default: '3' }, 'personal-steps': { type: 'string', default: '8' }, personal: { type: 'string', default: '*.layers.1.*' },
    strategy: { type: 'string', default: 'rank-aware' }, 'max-eval': { type: 'string', default: '64' }, lr: { type: 'string' },
    'no-refactor': { type: 'boolean', default: false }, 'server-opt': { type: 'string' }, 'server-lr': { type: 'string' }, 'server-beta1': { type: 'string' },
    'skip-baselines': { type: 'boolean', default: false }, 'reset-moments': { type: 'boolean', default: false },
  },
});
const s = await loadScenario(a.scenario!);
s.seed = Number(a.seed); s.rounds = Number(a.rounds); s.train.localSteps = Number(a.steps); s.maxEvalPerClient = Number(a['max-eval']);
if (a.lr) s.train.lr = Number(a.lr);
const out = await mkdtemp(join(tmpdir(), 'fl-exp-'));
const clients = await prepareClients(s, out);
const lm = await loadCausalLM(s.model, { backend: s.backend });
const tok = await resolveTokenizer(s.model, lm.config.vocabSize);
const info = await readModelInfo(s.model);
const maxRank = Math.max(...Object.keys(s.rankMix).map(Number));
const strategy = getStrategy(a.strategy!);
const isPersonal = globMatcher([a.personal!]);
const mk = (examples: typeof clients[0]['train']) => createTrainer({ modelDir: s.model, examples, lm, tokenizer: tok, evalFraction: 0, seed: s.seed, maxSeqLen: s.train.maxSeqLen });
import { evaluate } from '../shared/train/eval.js';
import { disposeRuntime } from '../shared/model/causal-lm.js';
async function evalOn(ad: LoraAdapter, i: number): Promise<number> {
  const rt = lm.runtime(ad);
  try { return (await evaluate(lm, tok, clients[i]!.eval, rt, { maxSeqLen: s.train.maxSeqLen })).accuracy; } finally { disposeRuntime(rt); }
}
const mean = (xs: number[]) => xs.reduce((p, q) => p + q, 0) / xs.length;
console.log(`seed ${s.seed}: ${clients.length} clients, ranks ${clients.map((c) => c.rank)}, eval ${clients.map((c) => c.eval.length)}, train ${clients.map((c) => c.train.length)}`);
const labels = clients.map((c) => c.eval.map((e) => labelOf(e)));
const trainMaj = clients.map((c) => { const m = new Map<string, number>(); for (const e of c.train) { const l = labelOf(e); m.set(l, (m.get(l) ?? 0) + 1); } return [...m].sort((x, y) => y[1] - x[1])[0]![0]; });
const pooled = new Map<string, number>(); for (const c of clients) for (const e of c.train) { const l = labelOf(e); pooled.set(l, (pooled.get(l) ?? 0) + 1); }
const poolMaj = [...pooled].sort((x, y) => y[1] - x[1])[0]![0];
console.log(`always-majority(${JSON.stringify(poolMaj)}) ${(100 * mean(labels.map((ls) => ls.filter((l) => l === poolMaj).length / ls.length))).toFixed(1)} %, per-client majority ${(100 * mean(labels.map((ls, i) => ls.filter((l) => l === trainMaj[i]).length / ls.length))).toFixed(1)} %`);

const shapes = targetShapes(info, defaultTargetModules(info.config));
let global: LoraAdapter = strategy.init(shapes, maxRank, s.loraAlpha, s.seed, { targetModules: defaultTargetModules(info.config), fanInFanOut: info.fanInFanOut, useRslora: false, taskType: 'CAUSAL_LM', baseModelNameOrPath: null });
const optimizer = a['server-opt'] ? { name: a['server-opt'] as 'fedadam', ...(a['server-lr'] ? { lr: Number(a['server-lr']) } : {}), ...(a['server-beta1'] ? { beta1: Number(a['server-beta1']) } : {}) } : undefined;
const server = strategy.createServer({ maxRank, seed: s.seed, ...(optimizer ? { optimizer } : {}) });
const layout = makeLayout([...global.tensors].filter(([n]) => strategy.isShared(n)).map(([name, t]) => ({ name, shape: t.shape })));
const trainers: LocalTrainer[] = await Promise.all(clients.map((c) => mk(c.train)));
const t0 = Date.now();
for (let r = 1; r <= s.rounds; r++) {
  const sum = new Float32Array(layout.size);
  const contributors = [];
  for (let i = 0; i < clients.length; i++) {
    const c = clients[i]!;
    const start = adapterForRank(global, c.rank);
    const res = await trainers[i]!.train(start, { steps: s.train.localSteps, lr: s.train.lr, batchSize: s.train.batchSize, seed: s.seed * 1000 + i, trainable: (n) => strategy.isTrainable(n), keepOptimizerState: !a['reset-moments'] });
    const w = c.train.length;
    const parts: TensorMap = new Map();
    for (const e of layout.entries) parts.set(e.name, strategy.contribution(e.name, res.adapter.tensors.get(e.name)!, w, maxRank));
    const v = flatten(parts, layout);
    for (let k = 0; k < v.length; k++) sum[k]! += v[k]!;
    contributors.push({ rank: c.rank, weight: w, personal: () => false });
  }
  global = aggregateRound(server, { sum, layout, contributors, previous: global, maxRank, refactor: !a['no-refactor'], keepUnrotated: () => false });
  const accs = await Promise.all(clients.map((c, i) => evalOn(adapterForRank(global, c.rank), i)));
  console.log(`round ${r}: global ${(100 * mean(accs)).toFixed(1)} %  (${Math.round((Date.now() - t0) / 1000)} s)`);
}
// personalization on top of the final global: fine-tune from it, fresh optimizer
const pSteps = Number(a['personal-steps']);
for (const [label, trainable] of [['personal layer', (n: string) => isPersonal(n)], ['all tensors', () => true]] as const) {
  for (const k of [pSteps]) {
    const accs: number[] = [];
    for (let i = 0; i < clients.length; i++) {
      const c = clients[i]!;
      const t = await mk(c.train);
      const res = await t.train(adapterForRank(global, c.rank), { steps: k, lr: s.train.lr, batchSize: s.train.batchSize, seed: 7 + i, trainable: (n) => trainable(n) && strategy.isTrainable(n), keepOptimizerState: false });
      accs.push(await evalOn(res.adapter, i));
      t.dispose();
    }
    console.log(`personalized (${label}, ${k} steps from final global): ${(100 * mean(accs)).toFixed(1)} %`);
  }
}
if (!a['skip-baselines']) {
  const budget = s.rounds * s.train.localSteps;
  const accs: number[] = [];
  for (let i = 0; i < clients.length; i++) {
    const c = clients[i]!;
    const t = await mk(c.train);
    const res = await t.train(adapterForRank(strategy.init(shapes, maxRank, s.loraAlpha, s.seed, global.config), c.rank), { steps: budget, lr: s.train.lr, batchSize: s.train.batchSize, seed: 11 + i, trainable: () => true });
    accs.push(await evalOn(res.adapter, i));
    t.dispose();
  }
  console.log(`local-only (${budget} steps each): ${(100 * mean(accs)).toFixed(1)} %`);
  const central = await mk(clients.flatMap((c) => c.train));
  const init = strategy.init(shapes, maxRank, s.loraAlpha, s.seed, global.config);
  const res = await central.train(init, { steps: budget * clients.length, lr: s.train.lr, batchSize: s.train.batchSize, seed: 5, trainable: () => true });
  const caccs = await Promise.all(clients.map((_, i) => evalOn(res.adapter, i)));
  console.log(`centralized (${budget * clients.length} steps): ${(100 * mean(caccs)).toFixed(1)} %`);
}
console.log(`wall ${Math.round((Date.now() - t0) / 1000)} s`);
process.exit(0);
