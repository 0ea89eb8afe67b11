/**
 * report.html: one self-contained page (inline CSS and SVG, no scripts, no external URLs) that opens
 * offline. Charts are drawn server-side by chart.ts through the SVG painter.
 */
import { drawLineChart, drawBarChart, formatBytes, formatPercent, type LineChartSpec, type BarChartSpec } from './chart.js';
import { SvgPainter, escapeXml as esc } from './svg.js';
import { accuracyChart, lossChart, perClientChart, bytesChart, strategiesChart, phaseChart } from './specs.js';
import { finalRows, totals, gaps, rowCells, fmtPct, windowNote, ON_LABEL, globalOn } from './summary.js';
import type { Report, EvalMetrics, FinalFigure } from './types.js';

const W = 960;
const H = 420;

function svgOf(spec: LineChartSpec | BarChartSpec, kind: 'line' | 'bar', w = W, h = H): string {
  const p = new SvgPainter(w, h);
  if (kind === 'line') drawLineChart(p, spec as LineChartSpec);
  else drawBarChart(p, spec as BarChartSpec);
  return p.toString();
}

const pct = (v: number | null | undefined) => (typeof v === 'number' && Number.isFinite(v) ? formatPercent(v) : '—');
const num = (v: number | null | undefined, d = 3) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(d) : '—');

/** Cells are trusted HTML (callers escape); columns listed in `text` stay left-aligned, others are numeric. */
function table(head: string[], rows: string[][], text: number[] = [0]): string {
  const cls = (i: number) => (text.includes(i) ? '' : ' class="n"');
  const th = head.map((h, i) => `<th${cls(i)}>${esc(h)}</th>`).join('');
  const trs = rows.map((r) => `<tr>${r.map((c, i) => `<td${cls(i)}>${c}</td>`).join('')}</tr>`).join('\n');
  return `<table><thead><tr>${th}</tr></thead><tbody>\n${trs}\n</tbody></table>`;
}

function card(label: string, value: string, sub = ''): string {
  return `<div class="card"><div class="v">${value}</div><div class="l">${esc(label)}</div>${sub ? `<div class="s">${sub}</div>` : ''}</div>`;
}

const CSS = `
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif; margin: 0; background: #f6f7f9; color: #1d1f23; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 20px 60px; }
h1 { font-size: 1.5rem; margin: 0 0 4px; }
h2 { font-size: 1.1rem; margin: 32px 0 10px; }
.meta { color: #5b616b; font-size: .9rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 10px; margin: 18px 0; }
.card { background: #fff; border: 1px solid #e1e4e8; border-radius: 8px; padding: 12px 14px; }
.card .v { font-size: 1.45rem; font-weight: 600; }
.card .l { color: #5b616b; font-size: .85rem; }
.card .s { color: #5b616b; font-size: .78rem; margin-top: 2px; }
figure { background: #fff; border: 1px solid #e1e4e8; border-radius: 8px; margin: 12px 0; padding: 8px; }
figure svg { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: .88rem; }
th, td { border-bottom: 1px solid #eceef1; padding: 5px 8px; text-align: left; }
th { background: #f0f2f5; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; border: 1px solid #e1e4e8; border-radius: 8px; }
pre { background: #fff; border: 1px solid #e1e4e8; border-radius: 8px; padding: 12px; overflow-x: auto; font-size: .8rem; }
.good { color: #0a7a43; } .bad { color: #b3261e; }
`;

export function renderReportHtml(r: Report): string {
  const t = totals(r);
  const g = gaps(r);
  const fmtPp = (v: number | null, goodIfPositive: boolean) =>
    v === null ? '—' : `<span class="${(v >= 0) === goodIfPositive ? 'good' : 'bad'}">${v >= 0 ? '+' : ''}${v.toFixed(1)} pp</span>`;
  const last = r.rounds[r.rounds.length - 1];
  const localBy = new Map(r.baselines.localOnly?.perClient.map((p) => [p.clientId, p.metrics]) ?? []);
  const finalBy = new Map(last?.clients.map((c) => [c.clientId, c]) ?? []);
  const strat = strategiesChart(r);

  const multi = !!r.seeds?.length;
  const figures: string[] = [
    `<figure id="chart-accuracy">${svgOf(accuracyChart(r), 'line')}</figure>`,
    `<figure id="chart-loss">${svgOf(lossChart(r), 'line')}</figure>`,
    ...(r.clients.length ? [`<figure id="chart-clients">${svgOf(perClientChart(r), 'bar')}</figure>`] : []),
    ...(strat ? [`<figure id="chart-strategies">${svgOf(strat, 'line')}</figure>`] : []),
    `<figure id="chart-bytes">${svgOf(bytesChart(r), 'bar')}</figure>`,
    `<figure id="chart-phases">${svgOf(phaseChart(r), 'bar', W, 340)}</figure>`,
  ];

  const finalTable = table(['method', 'measured on', 'accuracy', 'F1', 'eval loss', 'last round acc'], finalRows(r).map((row) => {
    const c = rowCells(row.metrics);
    return [row.reference ? `<i>${esc(row.method)}</i>` : esc(row.method), esc(ON_LABEL[row.on]), esc(c.accuracy), esc(c.f1), row.reference ? '—' : esc(c.loss), row.reference ? '—' : esc(c.last)];
  }), [0, 1]);
  const ev = r.evaluation;
  const evalNote = ev
    ? `Global adapter and centralized baseline measured on ${ev.global === 'test' ? `a pooled test set of ${ev.testExamples} emails held out of the corpus before the partition` : "every client's eval split (unweighted mean)"}; personalized and local-only on the clients' own eval splits (${ev.perClient.min}–${ev.perClient.max} emails per client, ${ev.perClient.total} in all). Accuracy, F1 and loss: ${windowNote(r)}. Reference rows (italic) predict a label without reading the email.`
    : '';
  const seedList = multi
    ? `<h2>Seeds</h2><p class="meta">Each seed's own report (per-client figures, rounds, notes):</p><ul>${r.seeds!.map((x) => `<li><a href="${esc(encodeURI(`${x.dir}/report.html`))}">seed ${esc(String(x.seed))}</a> · ${(x.wallMs / 1000).toFixed(1)} s</li>`).join('')}</ul>`
    : '';
  const clientTable = table(
    ['client', 'rank', 'train', 'eval', 'labels', 'global acc', 'personalized acc', 'local-only acc'],
    r.clients.map((c) => [
      esc(c.id), String(c.rank), String(c.trainExamples), String(c.evalExamples),
      esc(Object.entries(c.labelCounts ?? {}).map(([k, v]) => `${k} ${v}`).join(', ')),
      pct(finalBy.get(c.id)?.global?.accuracy), pct(finalBy.get(c.id)?.personalized?.accuracy), pct((localBy.get(c.id) as EvalMetrics | undefined)?.accuracy),
    ]),
    [0, 4],
  );
  // client-level DP: the ε the coordinator's accountant had spent after each round, at the run's δ
  const dpRounds = r.rounds.some((x) => x.privacy);
  const lastPrivacy = [...r.rounds].reverse().find((x) => x.privacy)?.privacy;
  const dp = r.scenario.dp as { mode?: unknown; clip?: unknown } | null | undefined;
  const privacyCard = lastPrivacy
    ? card('privacy spent (client-level DP)', `ε = ${lastPrivacy.epsilon.toFixed(3)}`, `at δ = ${lastPrivacy.delta.toExponential(0)}${dp ? ` · ${esc(String(dp.mode))} noise · clip S = ${esc(String(dp.clip))}` : ''} · after round ${r.rounds[r.rounds.length - 1]?.round ?? 0}`)
    : '';
  const roundTable = table(
    ['round', 'participants', 'dropouts', 'train loss', 'global acc', 'personalized acc', ...(dpRounds ? ['ε spent'] : []), 'bytes up', 'bytes down', 'full-model eq.', 'wall'],
    r.rounds.map((x) => [
      String(x.round), String(x.participants.length), esc(x.dropouts.join(', ') || '—'), num(x.trainLoss), pct(x.global.accuracy), pct(x.personalized.accuracy),
      ...(dpRounds ? [x.privacy ? x.privacy.epsilon.toFixed(3) : '—'] : []),
      formatBytes(x.bytes.up), formatBytes(x.bytes.down), formatBytes(x.bytes.fullModelEquivalent), `${(x.wallMs / 1000).toFixed(2)} s`,
    ]),
    [2],
  );
  const sdPct = (m: FinalFigure | undefined) => esc(fmtPct(m?.accuracy, m?.sd?.accuracy));
  const stratTable = r.baselines.strategies.length
    ? table(['strategy', 'global acc', 'global F1', 'global loss', 'personalized acc', 'bytes up (total)'], r.baselines.strategies.map((s) => {
      const g = rowCells(s.final.global);
      return [esc(s.strategy), esc(g.accuracy), esc(g.f1), esc(g.loss), sdPct(s.final.personalized), s.bytesUpTotal !== undefined ? formatBytes(s.bytesUpTotal) : '—'];
    }))
    : '<p class="meta">No strategy comparison in this run.</p>';
  const majority = globalOn(r) === 'test' ? r.references?.alwaysMajority.test : r.references?.alwaysMajority.clients;

  const title = r.title ?? `fedlora simulation: ${r.scenario.name}`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>${esc(title)}</title>
<style>${CSS}</style>
</head>
<body>
<main>
<h1>${esc(title)}</h1>
<div class="meta">scenario <b>${esc(r.scenario.name)}</b> · strategy <b>${esc(r.scenario.strategy)}</b> · ${multi ? `${r.seeds!.length} seeds (${esc(String(r.scenario.seed))}), mean ± sd` : `seed ${esc(String(r.scenario.seed))} · ${r.clients.length} clients`} · ${r.final.rounds} rounds · ${(r.wallMs / 1000).toFixed(1)} s · ${esc(r.createdAt)}</div>
<div class="cards">
${card(`federated global accuracy (${ON_LABEL[globalOn(r)]})`, sdPct(r.final.global), `vs always-majority ${esc(fmtPct(majority?.accuracy))}: ${fmtPp(g.overMajority, true)}`)}
${card('federated + personalized accuracy', sdPct(r.final.personalized), `clients' eval, mean`)}
${card('local-only accuracy', sdPct(r.baselines.localOnly?.final), `personalized vs local: ${fmtPp(g.overLocal, true)}`)}
${card('centralized accuracy (pooled data)', sdPct(r.baselines.centralized?.final), `centralized − global: ${g.toCentralized === null ? '—' : `${g.toCentralized.toFixed(1)} pp`}`)}
${card('bytes moved (up + down)', formatBytes(t.bytesUp + t.bytesDown), t.ratio !== null ? `${(t.ratio * 100).toPrecision(2)}% of full-model equivalent (${formatBytes(t.fullModelEquivalent)})` : '')}
${multi ? '' : card('dropouts survived', String(t.dropouts), `over ${r.rounds.length} rounds`)}
${privacyCard}
</div>
<h2>Charts</h2>
${figures.join('\n')}
<h2>Final figures</h2>
${finalTable}
${evalNote ? `<p class="meta">${esc(evalNote)}</p>` : ''}
${r.metricsNote ? `<p class="meta">${esc(r.metricsNote)}</p>` : ''}
${seedList}
<h2>Strategies</h2>
${stratTable}
${r.clients.length ? `<h2>Clients</h2>\n<div class="scroll">${clientTable}</div>` : ''}
<h2>Rounds</h2>
<div class="scroll">${roundTable}</div>
${r.notes?.length ? `<h2>Notes</h2><ul>${r.notes.map((n) => `<li>${esc(n)}</li>`).join('')}</ul>` : ''}
<h2>Scenario and versions</h2>
<pre>${esc(JSON.stringify({ scenario: r.scenario, versions: r.versions, environment: r.environment, model: r.model }, null, 2))}</pre>
</main>
</body>
</html>
`;
}
