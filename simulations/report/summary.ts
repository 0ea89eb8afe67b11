/** Final figures of a report as plain rows, and as a terminal table. */
import { formatBytes, formatPercent } from './chart.js';
import type { Report, EvalMetrics } from './types.js';

export interface FinalRow {
  method: string;
  metrics: EvalMetrics;
}

export function finalRows(r: Report): FinalRow[] {
  const rows: FinalRow[] = [
    { method: `federated global (${r.scenario.strategy})`, metrics: r.final.global },
    { method: 'federated + personalized', metrics: r.final.personalized },
  ];
  if (r.baselines.localOnly) rows.push({ method: 'local only', metrics: r.baselines.localOnly.final });
  if (r.baselines.centralized) rows.push({ method: 'centralized (upper bound)', metrics: r.baselines.centralized.final });
  for (const s of r.baselines.strategies) {
    rows.push({ method: `strategy ${s.strategy}`, metrics: s.final.global });
    if (s.final.personalized) rows.push({ method: `strategy ${s.strategy} + personalized`, metrics: s.final.personalized });
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

/** Percentage-point gaps the README quotes: personalized − local-only, centralized − personalized. */
export function gaps(r: Report): { overLocal: number | null; toCentralized: number | null } {
  const p = r.final.personalized.accuracy;
  const l = r.baselines.localOnly?.final.accuracy;
  const c = r.baselines.centralized?.final.accuracy;
  return {
    overLocal: typeof p === 'number' && typeof l === 'number' ? (p - l) * 100 : null,
    toCentralized: typeof p === 'number' && typeof c === 'number' ? (c - p) * 100 : null,
  };
}

const fmtPct = (v: number | null | undefined) => (typeof v === 'number' && Number.isFinite(v) ? formatPercent(v) : '—');
const fmtLoss = (v: number | null | undefined) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(3) : '—');
const fmtPp = (v: number | null) => (v === null ? '—' : `${v >= 0 ? '+' : ''}${v.toFixed(1)} pp`);

/** A box-drawn table of the final figures plus communication totals, for the terminal. */
export function formatSummaryTable(r: Report): string {
  const head = ['method', 'accuracy', 'F1', 'eval loss'];
  const body = finalRows(r).map((row) => [row.method, fmtPct(row.metrics.accuracy), fmtPct(row.metrics.f1), fmtLoss(row.metrics.loss)]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] as string).length)));
  const line = (l: string, m: string, rr: string) => l + widths.map((w) => '─'.repeat(w + 2)).join(m) + rr;
  const fmtRow = (cells: string[]) => '│' + cells.map((c, i) => (i === 0 ? ` ${c.padEnd(widths[i] as number)} ` : ` ${c.padStart(widths[i] as number)} `)).join('│') + '│';
  const t = totals(r);
  const g = gaps(r);
  const out = [
    `${r.title ?? 'fedlora simulation'}: ${r.scenario.name}, ${r.final.rounds} rounds, ${r.clients.length} clients, ${(r.wallMs / 1000).toFixed(1)} s`,
    line('┌', '┬', '┐'),
    fmtRow(head),
    line('├', '┼', '┤'),
    ...body.map(fmtRow),
    line('└', '┴', '┘'),
    `personalized vs local only: ${fmtPp(g.overLocal)}   gap to centralized: ${fmtPp(g.toCentralized)}`,
    `bytes up ${formatBytes(t.bytesUp)}, down ${formatBytes(t.bytesDown)}; full-model equivalent ${formatBytes(t.fullModelEquivalent)}` +
      (t.ratio !== null ? ` (adapters move ${(t.ratio * 100).toPrecision(2)}% of it)` : '') + `; dropouts ${t.dropouts}`,
  ];
  return out.join('\n');
}
