import { expect } from 'chai';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { writeReport, sampleReport, formatSummaryTable, renderReportHtml, renderMainChartPng, assertReport, totals, gaps, encodePng, PNG_WIDTH, PNG_HEIGHT, type Report } from '../../simulations/report/index.js';
import { crc32 } from '../../simulations/report/png.js';
import { niceTicks } from '../../simulations/report/chart.js';

/** Independent PNG decoder (RGBA8, non-interlaced, all five filter types) to check what we write. */
function decodePng(buf: Uint8Array): { width: number; height: number; rgba: Uint8Array } {
  const sig = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  sig.forEach((b, i) => expect(buf[i]).to.equal(b));
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let off = 8, width = 0, height = 0;
  const idat: Uint8Array[] = [];
  for (;;) {
    const len = dv.getUint32(off);
    const type = String.fromCharCode(...buf.subarray(off + 4, off + 8));
    const data = buf.subarray(off + 8, off + 8 + len);
    expect(dv.getUint32(off + 8 + len), `${type} CRC`).to.equal((crc32(buf.subarray(off + 4, off + 8 + len)) ^ 0xffffffff) >>> 0);
    if (type === 'IHDR') {
      width = dv.getUint32(off + 8); height = dv.getUint32(off + 12);
      expect([...data.subarray(8, 13)]).to.deep.equal([8, 6, 0, 0, 0]);
    } else if (type === 'IDAT') idat.push(data);
    off += 12 + len;
    if (type === 'IEND') break;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * 4;
  expect(raw.length).to.equal(height * (stride + 1));
  const out = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)]!;
    expect(f, 'filter type').to.be.at.most(4);
    for (let i = 0; i < stride; i++) {
      const x = raw[y * (stride + 1) + 1 + i]!;
      const a = i >= 4 ? out[y * stride + i - 4]! : 0;
      const b = y > 0 ? out[(y - 1) * stride + i]! : 0;
      const c = i >= 4 && y > 0 ? out[(y - 1) * stride + i - 4]! : 0;
      const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c);
      const pred = [0, a, b, (a + b) >> 1, pa <= pb && pa <= pc ? a : pb <= pc ? b : c][f];
      out[y * stride + i] = (x + pred!) & 0xff;
    }
  }
  return { width, height, rgba: out };
}

describe('simulation report', () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-report-')); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  it('PNG encoder round-trips exact pixels', () => {
    const w = 7, h = 5;
    const px = new Uint8Array(w * h * 4).map((_, i) => (i * 37 + 11) & 0xff);
    const d = decodePng(encodePng(w, h, px));
    expect([d.width, d.height]).to.deep.equal([w, h]);
    expect(Buffer.from(d.rgba).equals(Buffer.from(px))).to.equal(true);
    expect(() => encodePng(2, 2, new Uint8Array(3))).to.throw(RangeError);
  });

  it('writes report.json, report.html and a non-blank report.png', async () => {
    const report = sampleReport();
    const out = await writeReport(dir, report);
    const back = JSON.parse(await readFile(out.json, 'utf8')) as unknown;
    assertReport(back);
    expect(back).to.deep.equal(JSON.parse(JSON.stringify(report)));

    const png = decodePng(new Uint8Array(await readFile(out.png)));
    expect([png.width, png.height]).to.deep.equal([PNG_WIDTH, PNG_HEIGHT]);
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
    expect(inkIn(150, 100, 1150, 600)).to.be.greaterThan(2000);

    const html = await readFile(out.html, 'utf8');
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
    expect(renderMainChartPng(r, 400, 300).byteLength).to.be.greaterThan(1000);
    expect(formatSummaryTable(r)).to.contain('—');
  });

  it('summary table states the final figures, the gaps and the communication ratio', () => {
    const r = sampleReport();
    const table = formatSummaryTable(r);
    const g = gaps(r);
    const t = totals(r);
    expect(table).to.contain(`${(r.final.personalized.accuracy! * 100).toFixed(1)}%`);
    expect(table).to.contain(`${(r.baselines.localOnly!.final.accuracy! * 100).toFixed(1)}%`);
    expect(table).to.match(/personalized vs local only: [+-]\d+\.\d pp/);
    expect(table).to.match(/gap to centralized: [+-]?\d+\.\d pp/);
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
