import { expect } from 'chai';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Resvg } from '@resvg/resvg-js';
import { writeReport, sampleReport, formatSummaryTable, renderReportHtml, renderMainChartPng, mainChartSvg, assertReport, totals, gaps, PNG_WIDTH, type Report } from '../../simulations/report/index.js';
import { niceTicks } from '../../simulations/report/chart.js';

/** PNG signature and IHDR (size, 8-bit RGBA or RGB). */
function pngHeader(buf: Uint8Array): { width: number; height: number } {
  expect([...buf.subarray(0, 8)]).to.deep.equal([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  expect(String.fromCharCode(...buf.subarray(12, 16))).to.equal('IHDR');
  expect(buf[24], 'bit depth').to.equal(8);
  expect([2, 6]).to.include(buf[25]);
  return { width: dv.getUint32(16), height: dv.getUint32(20) };
}

/** Decodes a PNG file to RGBA by letting resvg draw it as an <image> (an independent decoder of what we wrote). */
function decodePng(buf: Uint8Array): { width: number; height: number; rgba: Uint8Array } {
  const { width, height } = pngHeader(buf);
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}"><image width="${width}" height="${height}" href="data:image/png;base64,${Buffer.from(buf).toString('base64')}"/></svg>`;
  const img = new Resvg(svg, { font: { loadSystemFonts: false } }).render();
  expect([img.width, img.height]).to.deep.equal([width, height]);
  return { width, height, rgba: new Uint8Array(img.pixels) };
}

describe('simulation report', () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-report-')); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  it('writes report.json, report.html and a non-blank report.png', async () => {
    const report = sampleReport();
    const out = await writeReport(dir, report);
    const back = JSON.parse(await readFile(out.json, 'utf8')) as unknown;
    assertReport(back);
    expect(back).to.deep.equal(JSON.parse(JSON.stringify(report)));

    const html = await readFile(out.html, 'utf8');
    // report.png is the HTML's own accuracy chart: same SVG, same aspect ratio
    const svg = mainChartSvg(report, html);
    expect(html).to.contain(`<figure id="chart-accuracy">${svg}</figure>`);
    const [, sw, sh] = /viewBox="0 0 (\d+) (\d+)"/.exec(svg)!.map(Number);
    const png = decodePng(new Uint8Array(await readFile(out.png)));
    expect([png.width, png.height]).to.deep.equal([PNG_WIDTH, Math.round((PNG_WIDTH * sh!) / sw!)]);
    // Not blank: plenty of non-white pixels, and the series colours are present.
    const colours = new Map<string, number>();
    let ink = 0;
    for (let i = 0; i < png.rgba.length; i += 4) {
      const key = `${png.rgba[i]},${png.rgba[i + 1]},${png.rgba[i + 2]}`;
      if (key !== '255,255,255') ink++;
      colours.set(key, (colours.get(key) ?? 0) + 1);
    }
    expect(ink / (png.width * png.height)).to.be.within(0.02, 0.5);
    for (const c of ['0,114,178', '213,94,0', '0,158,115']) expect(colours.get(c) ?? 0, `colour ${c}`).to.be.greaterThan(200);
    // Ink in the title band (text drawn) and in the plot area (lines drawn).
    const inkIn = (x0: number, y0: number, x1: number, y1: number) => {
      let n = 0;
      for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) if (png.rgba[(y * png.width + x) * 4]! < 128) n++;
      return n;
    };
    expect(inkIn(300, 0, 900, 40)).to.be.greaterThan(300);
    expect(inkIn(150, 100, 1150, png.height - 75)).to.be.greaterThan(2000);
    // Text is drawn (a font was found): the x-axis label band under the plot has ink.
    expect(inkIn(500, png.height - 40, 700, png.height)).to.be.greaterThan(50);

    expect(html).to.not.match(/<script|https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
    expect((html.match(/<svg /g) ?? []).length).to.equal(6);
  });

  it('escapes untrusted names in HTML and survives missing baselines and null metrics', () => {
    const r: Report = sampleReport({ clients: 3, rounds: 2 });
    r.scenario.name = '<img src=x onerror=alert(1)>';
    r.clients[0]!.id = '</svg><script>x</script>';
    r.rounds[0]!.clients[0]!.clientId = r.clients[0]!.id;
    delete r.baselines.localOnly;
    delete r.baselines.centralized;
    r.baselines.strategies = [];
    r.rounds[1]!.global = { loss: null, accuracy: null, f1: null };
    const html = renderReportHtml(r);
    expect(html).to.not.contain('<script>');
    expect(html).to.not.contain('<img src=x');
    expect(html).to.contain('&lt;/svg&gt;&lt;script&gt;');
    expect(pngHeader(renderMainChartPng(r, 400)).width).to.equal(400);
    expect(formatSummaryTable(r)).to.contain('—');
  });

  it('a DP run shows the ε spent (card and per-round column); a run without DP shows neither', () => {
    const r: Report = sampleReport({ clients: 3, rounds: 3 });
    const plain = renderReportHtml(r);
    expect(plain).to.not.contain('privacy spent');
    expect(plain).to.not.contain('ε spent');
    r.scenario.dp = { mode: 'distributed', clip: 0.5, delta: 1e-5, budgets: [4] };
    r.rounds.forEach((x, i) => { x.privacy = { epsilon: 0.75 * (i + 1), delta: 1e-5 }; });
    const html = renderReportHtml(r);
    expect(html).to.contain('privacy spent (client-level DP)');
    expect(html).to.contain('ε = 2.250'); // the last round's figure, not the first
    expect(html).to.contain('at δ = 1e-5');
    expect(html).to.contain('distributed noise · clip S = 0.5');
    expect(html).to.contain('<th class="n">ε spent</th>');
    for (const e of ['0.750', '1.500', '2.250']) expect(html).to.contain(`<td class="n">${e}</td>`);
  });

  it('summary table states the final figures, the gaps and the communication ratio', () => {
    const r = sampleReport();
    const table = formatSummaryTable(r);
    const g = gaps(r);
    const t = totals(r);
    expect(table).to.contain(`${(r.final.personalized.accuracy! * 100).toFixed(1)}%`);
    expect(table).to.contain(`${(r.baselines.localOnly!.final.accuracy! * 100).toFixed(1)}%`);
    expect(table).to.match(/personalized vs local only: [+-]\d+\.\d pp/);
    expect(table).to.match(/centralized − global: [+-]?\d+\.\d pp/);
    expect(table).to.match(/global vs always-majority: [+-]\d+\.\d pp/);
    expect(g.toCentralized).to.be.closeTo((r.baselines.centralized!.final.accuracy! - r.final.global.accuracy!) * 100, 1e-9);
    expect(g.overMajority).to.be.closeTo((r.final.global.accuracy! - r.references!.alwaysMajority.test!.accuracy!) * 100, 1e-9);
    // the reference rows and the window are stated; a single-seed report has no ± sd
    expect(table).to.contain('always-majority ("ham")').and.contain('per-client majority').and.contain('mean of the last 3 evaluated round(s)');
    expect(table).to.not.contain('±');
    expect(g.overLocal).to.be.closeTo((r.final.personalized.accuracy! - r.baselines.localOnly!.final.accuracy!) * 100, 1e-9);
    expect(t.bytesUp).to.equal(r.rounds.reduce((s, x) => s + x.bytes.up, 0));
    expect(t.ratio).to.be.greaterThan(0).and.lessThan(1);
    for (const s of ['fedit', 'ffa', 'rank-aware', 'fedsa']) expect(table).to.contain(`strategy ${s}`);
    const lines = table.split('\n').filter((l) => l.startsWith('│'));
    expect(new Set(lines.map((l) => l.length)).size, 'aligned columns').to.equal(1);
  });

  it('assertReport rejects malformed reports; niceTicks gives round steps', () => {
    expect(() => assertReport({})).to.throw(TypeError, /schemaVersion/);
    const bad = JSON.parse(JSON.stringify(sampleReport({ rounds: 2 })));
    delete bad.rounds[1].bytes;
    expect(() => assertReport(bad)).to.throw(TypeError, /rounds\[1\]\.bytes/);
    expect(niceTicks(0.62, 0.97, 5)).to.deep.equal([0.6, 0.7, 0.8, 0.9, 1]);
    expect(niceTicks(0, 1, 5)).to.deep.equal([0, 0.2, 0.4, 0.6, 0.8, 1]);
  });
});
