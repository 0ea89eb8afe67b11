/**
 * Simulation reports: `writeReport(dir, report)` writes report.json, report.html (self-contained) and
 * report.png (the HTML's accuracy chart, the same SVG rendered by resvg), and returns their paths.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { atomicWrite } from '../../shared/fs/atomic.js';
import { renderReportHtml } from './html.js';
import { svgToPng } from './raster.js';
import type { Report } from './types.js';

export * from './types.js';
export { renderReportHtml } from './html.js';
export { formatSummaryTable, formatRoundLine, finalRows, totals, gaps, rowCells, fmtPct, windowNote, globalOn, ON_LABEL } from './summary.js';
export { aggregateReports, aggregateMetrics, aggregateFinal, aggregateCurves, finalFigure, meanSd, meanMetrics } from './stats.js';
export { sampleReport } from './sample.js';
export { reportFont, svgToPng } from './raster.js';

/** report.png width in pixels; the height follows the chart's aspect ratio in report.html. */
export const PNG_WIDTH = 1200;

/** The main chart (accuracy per round: global, personalized, baselines) exactly as report.html draws it. */
export function mainChartSvg(report: Report, html = renderReportHtml(report)): string {
  const m = /<figure id="chart-accuracy">(<svg[\s\S]*?<\/svg>)<\/figure>/.exec(html);
  if (!m) throw new Error('report.html has no accuracy chart (<figure id="chart-accuracy"><svg>…)');
  return m[1]!;
}

/** The main chart as PNG bytes, `width` pixels wide. */
export function renderMainChartPng(report: Report, width = PNG_WIDTH, html?: string): Uint8Array {
  return svgToPng(mainChartSvg(report, html), width);
}

export interface WrittenReport {
  json: string;
  html: string;
  png: string;
}

export async function writeReport(dir: string, report: Report): Promise<WrittenReport> {
  await mkdir(dir, { recursive: true });
  const out = { json: join(dir, 'report.json'), html: join(dir, 'report.html'), png: join(dir, 'report.png') };
  const html = renderReportHtml(report);
  await atomicWrite(out.json, JSON.stringify(report, null, 2) + '\n');
  await atomicWrite(out.html, html);
  await atomicWrite(out.png, renderMainChartPng(report, PNG_WIDTH, html));
  return out;
}
