/** Final figures of a report as plain rows, and as a terminal table. */
import { formatBytes, formatPercent } from './chart.js';
import type { Report, EvalMetrics, FinalFigure } from './types.js';

export interface FinalRow {
  method: string;
  /** Where the figure was measured: the pooled test set, or the mean over clients' eval splits. */
  on: 'test' | 'clients';
  /** The final figure (mean over the last evaluated rounds, with `last` and `sd` where known). */
  metrics: FinalFigure;
  /** A label-only reference rate, not a trained adapter. */
  reference?: boolean;
}

/** Where the report measured the global adapter (reports without `evaluation` measured it on clients). */
export function globalOn(r: Report): 'test' | 'clients' {
  return r.evaluation?.global ?? 'clients';
}

export const ON_LABEL: Record<'test' | 'clients', string> = { test: 'pooled test set', clients: "clients' eval (mean)" };

export function finalRows(r: Report): FinalRow[] {
  const g = globalOn(r);
  const rows: FinalRow[] = [
    { method: `federated global (${r.scenario.strategy})`, on: g, metrics: r.final.global },
    { method: 'federated + personalized', on: 'clients', metrics: r.final.personalized },
  ];
  if (r.baselines.localOnly) rows.push({ method: 'local only', on: 'clients', metrics: r.baselines.localOnly.final });
  if (r.baselines.centralized) {
    rows.push({ method: 'centralized (pooled data)', on: g, metrics: r.baselines.centralized.final });
    if (r.baselines.centralized.clients) rows.push({ method: 'centralized (pooled data)', on: 'clients', metrics: r.baselines.centralized.clients.final });
  }
  const ref = r.references;
  if (ref) {
    const label = ref.alwaysMajority.label;
    if (ref.alwaysMajority.test) rows.push({ method: `always-majority ("${label}")`, on: 'test', metrics: ref.alwaysMajority.test, reference: true });
    rows.push({ method: `always-majority ("${label}")`, on: 'clients', metrics: ref.alwaysMajority.clients, reference: true });
    rows.push({ method: 'per-client majority', on: 'clients', metrics: ref.perClientMajority.clients, reference: true });
  }
  for (const s of r.baselines.strategies) {
    rows.push({ method: `strategy ${s.strategy}`, on: g, metrics: s.final.global });
    if (s.final.personalized) rows.push({ method: `strategy ${s.strategy} + personalized`, on: 'clients', metrics: s.final.personalized });
  }
  return rows;
}

export interface Totals {
  bytesUp: number;
  bytesDown: number;
  fullModelEquivalent: number;
  /** (up + down) / full-model-equivalent. */
  ratio: number | null;
  dropouts: number;
}

export function totals(r: Report): Totals {
  const up = r.rounds.reduce((s, x) => s + x.bytes.up, 0);
  const down = r.rounds.reduce((s, x) => s + x.bytes.down, 0);
  const full = r.rounds.reduce((s, x) => s + x.bytes.fullModelEquivalent, 0);
  return { bytesUp: up, bytesDown: down, fullModelEquivalent: full, ratio: full > 0 ? (up + down) / full : null, dropouts: r.rounds.reduce((s, x) => s + x.dropouts.length, 0) };
}

/**
 * Percentage-point gaps (issue 10's acceptance figures): personalized − local-only; centralized −
 * global (same evaluation set); global − always-majority (same evaluation set).
 */
export function gaps(r: Report): { overLocal: number | null; toCentralized: number | null; overMajority: number | null } {
  const d = (a: number | null | undefined, b: number | null | undefined) => (typeof a === 'number' && typeof b === 'number' ? (a - b) * 100 : null);
  const ref = r.references?.alwaysMajority;
  const majority = globalOn(r) === 'test' ? ref?.test : ref?.clients;
  return {
    overLocal: d(r.final.personalized.accuracy, r.baselines.localOnly?.final.accuracy),
    toCentralized: d(r.baselines.centralized?.final.accuracy, r.final.global.accuracy),
    overMajority: d(r.final.global.accuracy, majority?.accuracy),
  };
}

const fin = (v: number | null | undefined): v is number => typeof v === 'number' && Number.isFinite(v);
/** 84.7% or, with an sd over seeds, 84.7% ± 1.2 (sd in points). */
export function fmtPct(v: number | null | undefined, sd?: number | null): string {
  if (!fin(v)) return '—';
  return `${formatPercent(v)}${fin(sd) ? ` ± ${(sd * 100).toFixed(1)}` : ''}`;
}
export function fmtLoss(v: number | null | undefined, sd?: number | null): string {
  if (!fin(v)) return '—';
  return `${v.toFixed(3)}${fin(sd) ? ` ± ${sd.toFixed(3)}` : ''}`;
}
const fmtPp = (v: number | null) => (v === null ? '—' : `${v >= 0 ? '+' : ''}${v.toFixed(1)} pp`);

/** The cells of one final row: accuracy, F1, eval loss (each mean over the window, ± sd over seeds) and the last round's accuracy. */
export function rowCells(m: FinalFigure): { accuracy: string; f1: string; loss: string; last: string } {
  return {
    accuracy: fmtPct(m.accuracy, m.sd?.accuracy),
    f1: fmtPct(m.f1, m.sd?.f1),
    loss: fmtLoss(m.loss, m.sd?.loss),
    last: m.last ? fmtPct(m.last.accuracy, m.last.sd?.accuracy) : '—',
  };
}

/** The header line of the final-figures table: what "accuracy" means here. */
export function windowNote(r: Report): string {
  const k = r.evaluation?.finalWindow;
  const seeds = r.seeds?.length;
  return `${k ? `mean of the last ${Math.min(k, r.final.rounds)} evaluated round(s)` : 'last round'}${seeds ? `, mean ± sd over ${seeds} seeds` : ''}`;
}

/**
 * One evaluated round as the console prints it: the same figures (and names) as the report's
 * RoundRecord — global adapter after this round's aggregation, personalized after local training.
 */
export function formatRoundLine(e: {
  run: string; round: number; rounds: number; contributors: number; participants: number; dropouts: string[]; trainLoss: number | null;
  global: EvalMetrics; personalized: EvalMetrics; globalOn: 'test' | 'clients'; wallMs: number;
}): string {
  const m = (x: EvalMetrics) => `acc ${fmtPct(x.accuracy)} F1 ${fmtPct(x.f1)} loss ${fmtLoss(x.loss)}`;
  const head = `${e.run}: round ${e.round}/${e.rounds} done in ${(e.wallMs / 1000).toFixed(1)}s — ${e.contributors}/${e.participants} updates${e.dropouts.length ? ` (dropped: ${e.dropouts.join(', ')})` : ''}, train loss ${fmtLoss(e.trainLoss)}; `;
  const none = (x: EvalMetrics) => !fin(x.accuracy) && !fin(x.loss) && !fin(x.f1);
  if (none(e.global) && none(e.personalized)) return `${head}not an evaluated round`;
  return `${head}global [${ON_LABEL[e.globalOn]}] ${m(e.global)}; personalized [${ON_LABEL.clients}] ${m(e.personalized)}`;
}

/** A box-drawn table of the final figures plus communication totals, for the terminal. */
export function formatSummaryTable(r: Report): string {
  const head = ['method', 'measured on', 'accuracy', 'F1', 'eval loss', 'last round acc'];
  const body = finalRows(r).map((row) => {
    const c = rowCells(row.metrics);
    return [row.method, ON_LABEL[row.on], c.accuracy, c.f1, row.reference ? '—' : c.loss, row.reference ? '—' : c.last];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] as string).length)));
  const line = (l: string, m: string, rr: string) => l + widths.map((w) => '─'.repeat(w + 2)).join(m) + rr;
  const fmtRow = (cells: string[]) => '│' + cells.map((c, i) => (i < 2 ? ` ${c.padEnd(widths[i] as number)} ` : ` ${c.padStart(widths[i] as number)} `)).join('│') + '│';
  const t = totals(r);
  const g = gaps(r);
  const out = [
    `${r.title ?? 'fedlora simulation'}: ${r.scenario.name}, ${r.final.rounds} rounds, ${r.seeds ? `${r.seeds.length} seeds` : `${r.clients.length} clients`}, ${(r.wallMs / 1000).toFixed(1)} s`,
    `figures: ${windowNote(r)}`,
    line('┌', '┬', '┐'),
    fmtRow(head),
    line('├', '┼', '┤'),
    ...body.map(fmtRow),
    line('└', '┴', '┘'),
    `personalized vs local only: ${fmtPp(g.overLocal)}   centralized − global: ${fmtPp(g.toCentralized)}   global vs always-majority: ${fmtPp(g.overMajority)}`,
    `bytes up ${formatBytes(t.bytesUp)}, down ${formatBytes(t.bytesDown)}; full-model equivalent ${formatBytes(t.fullModelEquivalent)}` +
      (t.ratio !== null ? ` (adapters move ${(t.ratio * 100).toPrecision(2)}% of it)` : '') + (r.seeds ? ' (mean per seed; dropouts in the per-seed reports)' : `; dropouts ${t.dropouts}`),
  ];
  return out.join('\n');
}
