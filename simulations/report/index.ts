/**
 * Simulation reports: `writeReport(dir, report)` writes report.json, report.html (self-contained) and
 * report.png (the accuracy chart, rasterised by our own painter), and returns their paths.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { atomicWrite } from '../../shared/model/safetensors.js';
import { drawLineChart } from './chart.js';
import { RasterPainter } from './raster.js';
import { renderReportHtml } from './html.js';
import { accuracyChart } from './specs.js';
import type { Report } from './types.js';

export * from './types.js';
export { renderReportHtml } from './html.js';
export { formatSummaryTable, finalRows, totals, gaps } from './summary.js';
export { sampleReport } from './sample.js';
export { encodePng } from './png.js';

export const PNG_WIDTH = 1200;
export const PNG_HEIGHT = 675;

/** The main chart (accuracy per round: global, personalized, baselines) as PNG bytes. */
export function renderMainChartPng(report: Report, width = PNG_WIDTH, height = PNG_HEIGHT): Uint8Array {
  const p = new RasterPainter(width, height);
  drawLineChart(p, accuracyChart(report));
  return p.toPng();
}

export interface WrittenReport {
  json: string;
  html: string;
  png: string;
}

export async function writeReport(dir: string, report: Report): Promise<WrittenReport> {
  await mkdir(dir, { recursive: true });
  const out = { json: join(dir, 'report.json'), html: join(dir, 'report.html'), png: join(dir, 'report.png') };
  await atomicWrite(out.json, JSON.stringify(report, null, 2) + '\n');
  await atomicWrite(out.html, renderReportHtml(report));
  await atomicWrite(out.png, renderMainChartPng(report));
  return out;
}
