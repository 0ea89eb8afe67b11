/**
 * The privacy–utility report of a `dp` scenario: accuracy of the final global adapter against the
 * client-level ε it was trained under (ε = ∞: no DP), as privacy.json, privacy.svg and a small
 * privacy.html beside the per-budget reports (eps-inf/, eps-<E>/).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface PrivacyPoint {
  /** Target budget (null: no DP). */
  budget: number | null;
  /** ε actually spent over the rounds that completed (null: no DP). */
  epsilon: number | null;
  /** Noise multiplier z calibrated to the budget (0: no DP). */
  z: number;
  rounds: number;
  /** Final global accuracy (mean over the scenario's final window) and its last evaluated round. */
  accuracy: number | null;
  lastAccuracy: number | null;
  f1: number | null;
  /** Final global eval loss (mean token cross-entropy of the label, nats): moves even where accuracy sits at the majority rate. */
  loss: number | null;
  /** This point's own report folder, relative to the curve's folder. */
  dir: string;
  wallMs: number;
}

export interface PrivacyReport {
  scenario: string;
  mode: 'central' | 'distributed';
  clip: number;
  delta: number;
  q: number;
  clients: number;
  clientsPerRound: number;
  strategy: string;
  points: PrivacyPoint[];
  /** Reference accuracies from the ε = ∞ run (local-only baseline, always-majority). */
  references: { label: string; accuracy: number }[];
  command: string;
}

const W = 640, H = 400, M = { l: 64, r: 24, t: 40, b: 56 };

function esc(s: string): string { return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;'); }

/** Accuracy against ε on a log axis; ε = ∞ sits at the right edge. */
export function privacySvg(r: PrivacyReport): string {
  const finite = r.points.filter((p) => p.epsilon !== null).map((p) => p.epsilon!);
  const lo = Math.min(...finite, 1) / 1.5, hi = Math.max(...finite, 1) * 1.5;
  const pw = W - M.l - M.r, ph = H - M.t - M.b;
  // ∞ sits inside the right edge so its label fits; the finite points spread over the rest
  const xInf = M.l + pw - 50;
  const x = (e: number | null) => (e === null ? xInf : M.l + 20 + ((Math.log(e) - Math.log(lo)) / (Math.log(hi) - Math.log(lo))) * (pw - 140));
  const accs = r.points.map((p) => p.accuracy).filter((a): a is number => a !== null).concat(r.references.map((x) => x.accuracy));
  const aLo = Math.max(0, Math.floor((Math.min(...accs, 1) - 0.05) * 10) / 10), aHi = 1;
  const y = (a: number) => M.t + ph - ((a - aLo) / (aHi - aLo)) * ph;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="#fff"/>`);
  out.push(`<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${esc(`${r.scenario}: final global accuracy vs client-level ε (δ=${r.delta}, ${r.mode} noise, S=${r.clip}, q=${r.q.toFixed(3)})`)}</text>`);
  out.push(`<line x1="${M.l}" y1="${M.t + ph}" x2="${M.l + pw}" y2="${M.t + ph}" stroke="#333"/><line x1="${M.l}" y1="${M.t}" x2="${M.l}" y2="${M.t + ph}" stroke="#333"/>`);
  for (let a = aLo; a <= aHi + 1e-9; a += 0.1) out.push(`<line x1="${M.l}" x2="${M.l + pw}" y1="${y(a)}" y2="${y(a)}" stroke="#eee"/><text x="${M.l - 6}" y="${y(a) + 4}" text-anchor="end">${a.toFixed(1)}</text>`);
  for (const p of r.points) out.push(`<text x="${x(p.epsilon)}" y="${M.t + ph + 18}" text-anchor="middle">${p.epsilon === null ? '∞' : p.epsilon.toFixed(2)}</text>`);
  out.push(`<text x="${M.l + pw / 2}" y="${H - 12}" text-anchor="middle">ε spent after ${Math.max(...r.points.map((p) => p.rounds))} rounds (log scale; ∞ = no DP)</text>`);
  out.push(`<text transform="translate(16 ${M.t + ph / 2}) rotate(-90)" text-anchor="middle">accuracy</text>`);
  const colours = ['#888', '#c60'];
  r.references.forEach((ref, i) => {
    out.push(`<line x1="${M.l}" x2="${M.l + pw}" y1="${y(ref.accuracy)}" y2="${y(ref.accuracy)}" stroke="${colours[i % 2]}" stroke-dasharray="5 4"/>`);
    out.push(`<text x="${M.l + 4}" y="${y(ref.accuracy) - 4}" fill="${colours[i % 2]}">${esc(`${ref.label} ${ref.accuracy.toFixed(3)}`)}</text>`);
  });
  const pts = r.points.filter((p) => p.accuracy !== null).sort((a, b) => (a.epsilon ?? Infinity) - (b.epsilon ?? Infinity));
  out.push(`<polyline fill="none" stroke="#1f6feb" stroke-width="2" points="${pts.map((p) => `${x(p.epsilon)},${y(p.accuracy!)}`).join(' ')}"/>`);
  for (const p of pts) out.push(`<circle cx="${x(p.epsilon)}" cy="${y(p.accuracy!)}" r="4" fill="#1f6feb"/><text x="${x(p.epsilon)}" y="${y(p.accuracy!) - 8}" text-anchor="${p.epsilon === null ? 'end' : 'middle'}">${p.accuracy!.toFixed(3)}${p.loss !== null ? ` (loss ${p.loss.toFixed(3)})` : ''}</text>`);
  out.push('</svg>');
  return out.join('\n');
}

export async function writePrivacyReport(dir: string, r: PrivacyReport): Promise<{ json: string; svg: string; html: string }> {
  await mkdir(dir, { recursive: true });
  const files = { json: join(dir, 'privacy.json'), svg: join(dir, 'privacy.svg'), html: join(dir, 'privacy.html') };
  const svg = privacySvg(r);
  await writeFile(files.json, JSON.stringify(r, null, 2) + '\n');
  await writeFile(files.svg, svg + '\n');
  const rows = r.points.map((p) => `<tr><td>${p.budget ?? '∞'}</td><td>${p.epsilon === null ? '∞' : p.epsilon.toFixed(3)}</td><td>${p.z ? p.z.toFixed(3) : '–'}</td><td>${p.rounds}</td><td>${p.accuracy?.toFixed(3) ?? '–'}</td><td>${p.lastAccuracy?.toFixed(3) ?? '–'}</td><td>${p.f1?.toFixed(3) ?? '–'}</td><td>${p.loss?.toFixed(3) ?? '–'}</td><td><a href="${esc(p.dir)}/report.html">${esc(p.dir)}</a></td><td>${(p.wallMs / 1000).toFixed(0)} s</td></tr>`).join('\n');
  await writeFile(files.html, `<!doctype html><meta charset="utf-8"><title>${esc(r.scenario)}: privacy–utility</title>
<body style="font-family:sans-serif;max-width:760px;margin:2em auto">
<h1>${esc(r.scenario)}: privacy–utility</h1>
<p>${esc(`${r.strategy}, ${r.clients} clients, ${r.clientsPerRound} sampled per round (q=${r.q.toFixed(3)}), ${r.mode} noise, L2 clip S=${r.clip}, δ=${r.delta}. Each finite budget runs with the noise multiplier z that spends it over the run (RDP accountant).`)}</p>
${svg}
<table border="1" cellpadding="4" style="border-collapse:collapse"><tr><th>budget</th><th>ε spent</th><th>z</th><th>rounds</th><th>accuracy (final window)</th><th>last round</th><th>F1</th><th>eval loss</th><th>report</th><th>wall</th></tr>
${rows}</table>
<p>Command: <code>${esc(r.command)}</code></p></body>
`);
  return files;
}
