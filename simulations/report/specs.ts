/** Which charts a report has, as renderer-independent specs built from report.json. */
import { PALETTE, formatBytesSI, formatPercent, formatNumber, type LineChartSpec, type BarChartSpec, type LineSeries, type RefLine } from './chart.js';
import type { Report, CurvePoint } from './types.js';

export const COLORS = {
  alwaysMajority: '#555555',
  perClientMajority: '#8c564b',
  global: PALETTE[0] as string,
  personalized: PALETTE[1] as string,
  centralized: PALETTE[2] as string,
  localOnly: PALETTE[3] as string,
  up: PALETTE[0] as string,
  down: PALETTE[5] as string,
  full: PALETTE[1] as string,
};

type MetricKey = 'accuracy' | 'loss' | 'f1';

/**
 * The label-only reference rates as dashed horizontal lines: always-majority where the global
 * adapter is measured (the pooled test set, or else the clients' eval splits), and per-client
 * majority on the clients' eval splits (where personalized and local-only are measured).
 */
export function referenceLines(r: Report): RefLine[] {
  const ref = r.references;
  if (!ref) return [];
  const out: RefLine[] = [];
  const onTest = r.evaluation?.global === 'test' && ref.alwaysMajority.test;
  const always = onTest ? ref.alwaysMajority.test : ref.alwaysMajority.clients;
  if (typeof always?.accuracy === 'number') {
    out.push({ name: `always "${ref.alwaysMajority.label}" (${onTest ? 'test set' : "clients' eval"})`, color: COLORS.alwaysMajority, y: always.accuracy, dash: [2, 4] });
  }
  const per = ref.perClientMajority.clients.accuracy;
  if (typeof per === 'number') out.push({ name: "per-client majority (clients' eval)", color: COLORS.perClientMajority, y: per, dash: [10, 4] });
  return out;
}

function curveSeries(name: string, color: string, curve: CurvePoint[] | undefined, key: MetricKey, dash?: number[]): LineSeries | undefined {
  if (!curve || curve.length === 0) return undefined;
  return { name, color, dash, points: curve.map((c) => ({ x: c.round, y: c[key] ?? null, ...(c.sd ? { err: c.sd[key] } : {}) })) };
}

function metricChart(r: Report, key: 'accuracy' | 'loss'): LineChartSpec {
  const rounds = r.rounds.map((x) => x.round);
  const onTest = r.evaluation?.global === 'test';
  const series: LineSeries[] = [
    { name: `global adapter (${r.scenario.strategy})${onTest ? ', test set' : ''}`, color: COLORS.global, points: r.rounds.map((x) => ({ x: x.round, y: x.global[key], ...(x.global.sd ? { err: x.global.sd[key] } : {}) })) },
    { name: `personalized${onTest ? " (clients' eval)" : ''}`, color: COLORS.personalized, points: r.rounds.map((x) => ({ x: x.round, y: x.personalized[key], ...(x.personalized.sd ? { err: x.personalized.sd[key] } : {}) })) },
  ];
  // rounds that were not evaluated (evalEvery) have no figure: join the evaluated ones
  for (const sr of series) sr.points = sr.points.filter((q) => typeof q.y === 'number');
  if (key === 'loss') series.push({ name: 'train loss', color: '#777777', dash: [2, 4], points: r.rounds.map((x) => ({ x: x.round, y: x.trainLoss })) });
  const refLines: RefLine[] = key === 'accuracy' ? referenceLines(r) : [];
  const c = r.baselines.centralized;
  const cs = curveSeries(`centralized (pooled data)${onTest ? ', test set' : ''}`, COLORS.centralized, c?.curve, key, [8, 5]);
  if (cs) series.push(cs);
  else if (typeof c?.final[key] === 'number') refLines.push({ name: 'centralized (final)', color: COLORS.centralized, y: c.final[key] as number, dash: [8, 5] });
  const l = r.baselines.localOnly;
  const ls = curveSeries(`local only${onTest ? " (clients' eval)" : ''}`, COLORS.localOnly, l?.curve, key, [3, 4]);
  if (ls) series.push(ls);
  else if (typeof l?.final[key] === 'number') refLines.push({ name: 'local only (final)', color: COLORS.localOnly, y: l.final[key] as number, dash: [3, 4] });
  const seeds = r.seeds?.length ? `, mean ± sd of ${r.seeds.length} seeds` : '';
  return key === 'accuracy'
    ? { title: `Eval accuracy per round${onTest ? '' : ' (mean over clients)'}${seeds}`, xLabel: 'round', yLabel: 'accuracy', series, refLines, yMax: 1, yFormat: formatPercent }
    : { title: `Loss per round${rounds.length ? '' : ''}`, xLabel: 'round', yLabel: 'loss (nats/token)', series, refLines, yMin: 0 };
}

/** The main chart (also the PNG): accuracy per round, global vs personalized vs baselines. */
export function accuracyChart(r: Report): LineChartSpec {
  return metricChart(r, 'accuracy');
}

export function lossChart(r: Report): LineChartSpec {
  return metricChart(r, 'loss');
}

/** Final round, per client: global vs personalized vs local-only accuracy. */
export function perClientChart(r: Report): BarChartSpec {
  const last = r.rounds[r.rounds.length - 1];
  const ids = r.clients.map((c) => c.id);
  const byId = new Map(last?.clients.map((c) => [c.clientId, c]) ?? []);
  const local = new Map(r.baselines.localOnly?.perClient.map((p) => [p.clientId, p.metrics]) ?? []);
  const groups = [
    { name: 'global', color: COLORS.global, values: ids.map((id) => byId.get(id)?.global?.accuracy ?? null) },
    { name: 'personalized', color: COLORS.personalized, values: ids.map((id) => byId.get(id)?.personalized?.accuracy ?? null) },
  ];
  if (local.size) groups.push({ name: 'local only', color: COLORS.localOnly, values: ids.map((id) => local.get(id)?.accuracy ?? null) });
  return { title: 'Final accuracy per client', xLabel: 'client', yLabel: 'accuracy', categories: ids, groups, yMax: 1, yFormat: formatPercent };
}

export function bytesChart(r: Report): BarChartSpec {
  return {
    title: 'Bytes moved per round (log scale)',
    xLabel: 'round',
    yLabel: 'bytes',
    categories: r.rounds.map((x) => String(x.round)),
    groups: [
      { name: 'up (all clients)', color: COLORS.up, values: r.rounds.map((x) => x.bytes.up) },
      { name: 'down (all clients)', color: COLORS.down, values: r.rounds.map((x) => x.bytes.down) },
    ],
    lines: [{ name: 'full-model equivalent', color: COLORS.full, dash: [6, 4], points: r.rounds.map((x, i) => ({ x: i, y: x.bytes.fullModelEquivalent })) }],
    log: true,
    yFormat: formatBytesSI,
  };
}

export function strategiesChart(r: Report): LineChartSpec | undefined {
  const s = r.baselines.strategies;
  if (s.length === 0) return undefined;
  const series: LineSeries[] = [];
  s.forEach((st, i) => {
    const col = PALETTE[(i + 4) % PALETTE.length] as string;
    const g = curveSeries(`${st.strategy}`, col, st.curve, 'accuracy');
    if (g) series.push(g);
    const p = curveSeries(`${st.strategy} personalized`, col, st.personalizedCurve, 'accuracy', [6, 4]);
    if (p) series.push(p);
  });
  const c = curveSeries('centralized', COLORS.centralized, r.baselines.centralized?.curve, 'accuracy', [8, 5]);
  if (c) series.push({ ...c, width: 2 });
  return { title: 'Strategies side by side: accuracy per round', xLabel: 'round', yLabel: 'accuracy', series, refLines: referenceLines(r), yMax: 1, yFormat: formatPercent };
}

export function phaseChart(r: Report): BarChartSpec {
  const phases = [...new Set(r.rounds.flatMap((x) => Object.keys(x.phaseMs)))];
  return {
    title: 'Wall time per round, by phase',
    xLabel: 'round',
    yLabel: 'seconds',
    categories: r.rounds.map((x) => String(x.round)),
    groups: phases.map((ph, i) => ({ name: ph, color: PALETTE[i % PALETTE.length] as string, values: r.rounds.map((x) => (x.phaseMs[ph] ?? 0) / 1000) })),
    stacked: true,
    yFormat: formatNumber,
  };
}
