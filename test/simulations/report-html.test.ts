/**
 * End-to-end check of report.html in a real headless Chromium: the page renders offline, every chart
 * is an SVG with drawn paths, nothing is fetched from the network, and the console stays clean.
 * Needs Chromium at /usr/bin/chromium (Debian: `apt-get install -y chromium`), or CHROMIUM_PATH.
 */
import { expect } from 'chai';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium, type Browser } from 'playwright-core';
import { writeReport, sampleReport } from '../../simulations/report/index.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

describe('report.html in headless Chromium', function () {
  this.timeout(60_000);
  let dir: string;
  let browser: Browser;

  before(async function () {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`Chromium not found at ${CHROMIUM}. Install it with \`apt-get install -y chromium\` (Debian/Ubuntu) or set CHROMIUM_PATH to a Chromium binary; this e2e test does not skip.`);
    }
    dir = await mkdtemp(join(tmpdir(), 'fedlora-report-e2e-'));
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
  });
  after(async () => {
    await browser?.close();
    if (dir && !process.env.KEEP_REPORT) await rm(dir, { recursive: true, force: true });
  });

  it('renders every chart, loads nothing external, logs no errors; screenshot taken', async () => {
    const written = await writeReport(dir, sampleReport({ clients: 10, rounds: 12, seed: 4 }));
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    const problems: string[] = [];
    const requests: string[] = [];
    page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') problems.push(`${m.type()}: ${m.text()}`); });
    page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
    page.on('request', (r) => requests.push(r.url()));
    await page.goto(pathToFileURL(written.html).href, { waitUntil: 'load' });

    const charts = await page.$$eval('figure svg', (svgs) => svgs.map((s) => {
      const box = s.getBoundingClientRect();
      const paths = [...s.querySelectorAll('path')];
      return {
        id: s.parentElement?.id ?? '',
        w: box.width,
        h: box.height,
        paths: paths.length,
        drawn: paths.filter((p) => (p.getAttribute('d') ?? '').length > 10 && (p as SVGGeometryElement).getTotalLength() > 20).length,
        rects: s.querySelectorAll('rect').length,
        texts: [...s.querySelectorAll('text')].map((t) => t.textContent ?? ''),
      };
    }));
    expect(charts.map((c) => c.id)).to.deep.equal(['chart-accuracy', 'chart-loss', 'chart-clients', 'chart-strategies', 'chart-bytes', 'chart-phases']);
    for (const c of charts) {
      expect(c.w, c.id).to.be.greaterThan(500);
      expect(c.h, c.id).to.be.greaterThan(200);
      expect(c.drawn, `${c.id} has drawn paths`).to.be.greaterThan(3);
      expect(c.texts.join(' '), c.id).to.match(/round|client/);
    }
    // Bars really are bars: the per-client chart has one rect per client per group (plus background/legend).
    const clients = charts.find((c) => c.id === 'chart-clients')!;
    expect(clients.rects).to.be.at.least(10 * 3);
    // The accuracy chart shows every series in its legend.
    const acc = charts.find((c) => c.id === 'chart-accuracy')!.texts.join('|');
    for (const name of ['global adapter', 'personalized', 'centralized', 'local only', 'always "ham"', 'per-client majority']) expect(acc).to.contain(name);
    const tables = await page.$$eval('table', (ts) => ts.map((t) => t.querySelectorAll('tbody tr').length));
    expect(tables[0]).to.be.at.least(4); // final figures
    expect(tables).to.include(12); // one row per round
    expect(await page.textContent('h1')).to.contain('fedlora simulation');

    const shot = await page.screenshot({ fullPage: true });
    await writeFile(join(dir, 'report-screenshot.png'), shot);
    expect(shot.byteLength).to.be.greaterThan(50_000);
    expect(requests.filter((u) => !u.startsWith('file:') && !u.startsWith('data:')), 'external requests').to.deep.equal([]);
    expect(problems, 'console errors').to.deep.equal([]);
    await page.close();
  });
});
