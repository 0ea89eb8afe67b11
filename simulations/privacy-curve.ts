/**
 * The `dp` scenario field: one federation without DP (ε = ∞) and one per budget, each with the
 * Gaussian noise multiplier that spends exactly that budget over the scenario's rounds at
 * q = clientsPerRound / clients (shared/privacy noiseForEpsilon), then the privacy–utility report
 * (simulations/report/privacy.ts). Each point is a whole simulation in its own folder.
 */
import { join } from 'node:path';
import { logger } from '../shared/log.js';
import { noiseForEpsilon, rdpEpsilon } from '../shared/privacy/index.js';
import { writePrivacyReport, type PrivacyPoint, type PrivacyReport } from './report/privacy.js';
import type { Scenario } from './scenario.js';
import type { RunOptions, SimResult } from './runner/run.js';

const log = logger('fedlora:simulate');

export async function runPrivacyCurve(s: Scenario, o: RunOptions, run: (s: Scenario, o: RunOptions) => Promise<SimResult>): Promise<SimResult> {
  const dp = s.dp!;
  const q = s.clientsPerRound / s.clients;
  const base: Scenario = { ...s, dp: null, compare: [], seeds: [] };
  const say = (message: string) => { log.info(message); try { o.onEvent?.({ type: 'log', message }); } catch { /* not ours */ } };
  const points: PrivacyPoint[] = [];
  const point = (budget: number | null, z: number, r: SimResult, dir: string): PrivacyPoint => {
    const rounds = r.report.rounds.length;
    const g = r.report.final.global;
    return {
      // the coordinator's own figure after the last round (the same accountant; recomputed if absent)
      budget, epsilon: budget === null ? null : r.report.rounds.at(-1)?.privacy?.epsilon ?? rdpEpsilon({ q, z, steps: rounds, delta: dp.delta }), z, rounds,
      accuracy: g.accuracy, lastAccuracy: g.last?.accuracy ?? null, f1: g.f1, loss: g.loss, dir, wallMs: r.report.wallMs,
    };
  };
  say(`privacy–utility curve: ε = ∞, ${dp.budgets.join(', ')} at δ=${dp.delta}, q=${q.toFixed(3)}, ${s.rounds} rounds`);
  const inf = await run(base, { ...o, outDir: join(o.outDir, 'eps-inf') });
  points.push(point(null, 0, inf, 'eps-inf'));
  for (const budget of dp.budgets) {
    const z = noiseForEpsilon({ q, steps: s.rounds, delta: dp.delta, epsilon: budget });
    const dir = `eps-${budget}`;
    say(`ε ≤ ${budget}: noise multiplier z = ${z.toFixed(3)} (S = ${dp.clip})`);
    const r = await run({ ...base, baselines: { localOnly: false, centralized: false } }, {
      ...o, outDir: join(o.outDir, dir),
      coordinatorExtra: { ...(o.coordinatorExtra ?? {}), dp: { mode: dp.mode, clip: dp.clip, noise: z, delta: dp.delta, population: s.clients, targetEpsilon: budget } },
    });
    points.push(point(budget, z, r, dir));
  }
  const references: PrivacyReport['references'] = [];
  const lo = inf.report.baselines.localOnly?.final.accuracy;
  if (typeof lo === 'number') references.push({ label: 'local-only', accuracy: lo });
  const maj = inf.report.references?.alwaysMajority;
  const majAcc = (maj?.test ?? maj?.clients)?.accuracy;
  if (typeof majAcc === 'number') references.push({ label: `always ${maj!.label}`, accuracy: majAcc });
  const files = await writePrivacyReport(o.outDir, {
    scenario: s.name, mode: dp.mode, clip: dp.clip, delta: dp.delta, q, clients: s.clients, clientsPerRound: s.clientsPerRound, strategy: s.strategy,
    points, references, command: `fedlora simulate --scenario ${s.name}`,
  });
  say(`privacy–utility: ${points.map((p) => `ε=${p.epsilon === null ? '∞' : p.epsilon.toFixed(2)} → accuracy ${p.accuracy?.toFixed(3) ?? '–'}`).join('; ')} (${files.html})`);
  return inf;
}
