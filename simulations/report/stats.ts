/**
 * The arithmetic behind a report's figures, kept apart so it can be tested on its own:
 * - `finalFigure`: the mean over the last K evaluated rounds (plus the last round alone);
 * - `meanSd` / `aggregateMetrics`: mean ± sample sd over seeds;
 * - `aggregateReports`: one multi-seed report whose every figure is mean ± sd over per-seed reports.
 */
import type { CurvePoint, EvalMetrics, FinalFigure, ReferenceRates, Report, RoundRecord, SeedRun, StrategyResult } from './types.js';

type Key = 'loss' | 'accuracy' | 'f1';
const KEYS: readonly Key[] = ['loss', 'accuracy', 'f1'];

const finite = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);

/** Mean and sample standard deviation (n − 1) of the finite values; sd is null below two values. */
export function meanSd(xs: readonly (number | null | undefined)[]): { mean: number | null; sd: number | null; n: number } {
  const v = xs.filter(finite);
  if (v.length === 0) return { mean: null, sd: null, n: 0 };
  const mean = v.reduce((a, b) => a + b, 0) / v.length;
  if (v.length < 2) return { mean, sd: null, n: 1 };
  const ss = v.reduce((a, b) => a + (b - mean) ** 2, 0);
  return { mean, sd: Math.sqrt(ss / (v.length - 1)), n: v.length };
}

/** Unweighted mean of each metric over the figures that have it (no sd): the "mean over clients". */
export function meanMetrics(ms: readonly (EvalMetrics | undefined | null)[]): EvalMetrics {
  const have = ms.filter((m): m is EvalMetrics => !!m);
  const pick = (k: Key) => meanSd(have.map((m) => m[k])).mean;
  return { loss: pick('loss'), accuracy: pick('accuracy'), f1: pick('f1'), n: have.reduce((s, m) => s + (m.n ?? 0), 0) };
}

const evaluated = (p: CurvePoint | EvalMetrics | undefined): boolean => !!p && (finite(p.accuracy) || finite(p.loss));

/**
 * The final figure of a curve: the mean over its last `window` evaluated points (points without a
 * figure are skipped; the window is clamped to the points there are), and the last one alone.
 */
export function finalFigure(points: readonly (CurvePoint | EvalMetrics | undefined)[], window: number): FinalFigure {
  const ev = points.filter(evaluated) as (CurvePoint | EvalMetrics)[];
  const k = Math.max(0, Math.min(Math.max(1, Math.floor(window)), ev.length));
  if (k === 0) return { loss: null, accuracy: null, f1: null, window: 0 };
  const tail = ev.slice(ev.length - k);
  const last = ev[ev.length - 1]!;
  const lastM: EvalMetrics = { loss: last.loss ?? null, accuracy: last.accuracy ?? null, f1: last.f1 ?? null, ...('n' in last && last.n !== undefined ? { n: last.n } : {}) };
  const m = (key: Key) => meanSd(tail.map((p) => p[key])).mean;
  return { loss: m('loss'), accuracy: m('accuracy'), f1: m('f1'), ...(lastM.n !== undefined ? { n: lastM.n } : {}), last: lastM, window: k };
}

/** Mean ± sd over seeds of one figure. `null`s stay out of both; sd is absent for a single seed. */
export function aggregateMetrics(ms: readonly (EvalMetrics | undefined | null)[]): EvalMetrics {
  const have = ms.filter((m): m is EvalMetrics => !!m);
  const out: EvalMetrics = { loss: null, accuracy: null, f1: null };
  const sd: NonNullable<EvalMetrics['sd']> = { loss: null, accuracy: null, f1: null };
  for (const k of KEYS) {
    const r = meanSd(have.map((m) => m[k]));
    out[k] = r.mean;
    sd[k] = r.sd;
  }
  const ns = have.map((m) => m.n).filter(finite);
  if (ns.length) out.n = Math.round(ns.reduce((a, b) => a + b, 0) / ns.length);
  if (have.length > 1) out.sd = sd;
  out.seeds = have.length;
  return out;
}

/** Mean ± sd over seeds of a final figure, and of its last-round value. */
export function aggregateFinal(fs: readonly (FinalFigure | undefined | null)[]): FinalFigure {
  const have = fs.filter((f): f is FinalFigure => !!f);
  const out: FinalFigure = aggregateMetrics(have);
  const lasts = have.map((f) => f.last).filter((l): l is EvalMetrics => !!l);
  if (lasts.length) out.last = aggregateMetrics(lasts);
  const w = have.map((f) => f.window).filter(finite);
  if (w.length) out.window = Math.min(...w);
  return out;
}

/** Point-wise mean ± sd over seeds, matched by round. */
export function aggregateCurves(curves: readonly (readonly CurvePoint[] | undefined)[]): CurvePoint[] {
  const rounds = [...new Set(curves.flatMap((c) => c?.map((p) => p.round) ?? []))].sort((a, b) => a - b);
  return rounds.map((round) => {
    const m = aggregateMetrics(curves.map((c) => {
      const p = c?.find((q) => q.round === round);
      return p ? { loss: p.loss ?? null, accuracy: p.accuracy ?? null, f1: p.f1 ?? null } : undefined;
    }));
    return { round, loss: m.loss, accuracy: m.accuracy, f1: m.f1, ...(m.sd ? { sd: m.sd } : {}) };
  });
}

function aggregateReferences(rs: readonly (ReferenceRates | undefined)[]): ReferenceRates | undefined {
  const have = rs.filter((r): r is ReferenceRates => !!r);
  if (!have.length) return undefined;
  const labels = [...new Set(have.map((r) => r.alwaysMajority.label))];
  const tests = have.map((r) => r.alwaysMajority.test).filter((t): t is EvalMetrics => !!t);
  return {
    alwaysMajority: {
      label: labels.join(' / '),
      ...(tests.length ? { test: aggregateMetrics(tests) } : {}),
      clients: aggregateMetrics(have.map((r) => r.alwaysMajority.clients)),
    },
    perClientMajority: { clients: aggregateMetrics(have.map((r) => r.perClientMajority.clients)) },
  };
}

const avg = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);

/**
 * One report from per-seed reports of the same scenario: every figure (final rows, curves, reference
 * rates, per-round means) becomes mean ± sample sd over the seeds. Per-client detail differs by seed
 * (each seed has its own partition), so it stays in the per-seed reports listed in `seeds`.
 */
export function aggregateReports(reports: readonly Report[], runs: readonly SeedRun[]): Report {
  if (reports.length === 0) throw new RangeError('aggregateReports needs at least one report');
  if (reports.length !== runs.length) throw new RangeError(`aggregateReports: ${reports.length} reports but ${runs.length} seed runs`);
  const first = reports[0]!;
  const roundNos = [...new Set(reports.flatMap((r) => r.rounds.map((x) => x.round)))].sort((a, b) => a - b);
  const rounds: RoundRecord[] = roundNos.map((round) => {
    const rs = reports.map((r) => r.rounds.find((x) => x.round === round)).filter((x): x is RoundRecord => !!x);
    const phases = [...new Set(rs.flatMap((x) => Object.keys(x.phaseMs)))];
    return {
      round, participants: [], dropouts: [], clients: [],
      trainLoss: meanSd(rs.map((x) => x.trainLoss)).mean,
      global: aggregateMetrics(rs.map((x) => x.global)),
      personalized: aggregateMetrics(rs.map((x) => x.personalized)),
      bytes: { up: avg(rs.map((x) => x.bytes.up)), down: avg(rs.map((x) => x.bytes.down)), fullModelEquivalent: avg(rs.map((x) => x.bytes.fullModelEquivalent)) },
      phaseMs: Object.fromEntries(phases.map((p) => [p, avg(rs.map((x) => x.phaseMs[p] ?? 0))])),
      wallMs: avg(rs.map((x) => x.wallMs)),
    };
  });
  const names = [...new Set(reports.flatMap((r) => r.baselines.strategies.map((s) => s.strategy)))];
  const strategies: StrategyResult[] = names.map((name) => {
    const ss = reports.map((r) => r.baselines.strategies.find((s) => s.strategy === name));
    const pers = ss.map((s) => s?.final.personalized).filter((p): p is FinalFigure => !!p);
    const pc = ss.map((s) => s?.personalizedCurve).filter((c): c is CurvePoint[] => !!c && c.length > 0);
    const bytes = ss.map((s) => s?.bytesUpTotal).filter(finite);
    const wall = ss.map((s) => s?.wallMs).filter(finite);
    return {
      strategy: name,
      final: { global: aggregateFinal(ss.map((s) => s?.final.global)), ...(pers.length ? { personalized: aggregateFinal(pers) } : {}) },
      curve: aggregateCurves(ss.map((s) => s?.curve)),
      ...(pc.length ? { personalizedCurve: aggregateCurves(pc) } : {}),
      ...(bytes.length ? { bytesUpTotal: avg(bytes) } : {}),
      ...(wall.length ? { wallMs: avg(wall) } : {}),
    };
  });
  const locals = reports.map((r) => r.baselines.localOnly).filter((l): l is NonNullable<typeof l> => !!l);
  const centrals = reports.map((r) => r.baselines.centralized).filter((c): c is NonNullable<typeof c> => !!c);
  const centralClients = centrals.map((c) => c.clients).filter((c): c is NonNullable<typeof c> => !!c);
  const refs = aggregateReferences(reports.map((r) => r.references));
  const evals = reports.map((r) => r.evaluation).filter((e): e is NonNullable<typeof e> => !!e);
  const seedList = runs.map((r) => r.seed);
  const notes = [
    `Every figure is the mean ± sample standard deviation over ${runs.length} seed(s) (${seedList.join(', ')}): each seed draws its own partition, ranks, adapter init, sampling and dropouts; the pooled test set is the same for every seed. Per-client figures are in each seed's own report.`,
    ...[...new Set(reports.flatMap((r) => r.notes ?? []))].filter((n) => !/^Client c\d+ was killed/.test(n)),
  ];
  return {
    schemaVersion: first.schemaVersion,
    title: first.title ? `${first.title} (${runs.length} seeds)` : undefined,
    createdAt: new Date().toISOString(),
    scenario: { ...first.scenario, seed: seedList.join(', '), seeds: seedList },
    versions: first.versions,
    ...(first.environment ? { environment: first.environment } : {}),
    ...(first.model ? { model: first.model } : {}),
    ...(first.metricsNote ? { metricsNote: first.metricsNote } : {}),
    clients: [],
    rounds,
    final: {
      global: aggregateFinal(reports.map((r) => r.final.global)),
      personalized: aggregateFinal(reports.map((r) => r.final.personalized)),
      rounds: Math.min(...reports.map((r) => r.final.rounds)),
    },
    ...(evals.length ? {
      evaluation: {
        ...evals[0]!,
        perClient: { min: Math.min(...evals.map((e) => e.perClient.min)), max: Math.max(...evals.map((e) => e.perClient.max)), total: Math.round(avg(evals.map((e) => e.perClient.total))) },
      },
    } : {}),
    ...(refs ? { references: refs } : {}),
    seeds: [...runs],
    baselines: {
      ...(locals.length ? {
        localOnly: {
          final: aggregateFinal(locals.map((l) => l.final)), perClient: [],
          ...(locals.some((l) => l.curve?.length) ? { curve: aggregateCurves(locals.map((l) => l.curve)) } : {}),
        },
      } : {}),
      ...(centrals.length ? {
        centralized: {
          final: aggregateFinal(centrals.map((c) => c.final)),
          ...(centrals.some((c) => c.curve?.length) ? { curve: aggregateCurves(centrals.map((c) => c.curve)) } : {}),
          ...(centralClients.length ? { clients: { final: aggregateFinal(centralClients.map((c) => c.final)), curve: aggregateCurves(centralClients.map((c) => c.curve)) } } : {}),
        },
      } : {}),
      strategies,
    },
    wallMs: reports.reduce((a, r) => a + r.wallMs, 0),
    notes,
  };
}
