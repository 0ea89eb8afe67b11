/**
 * Chart layout, written once against a tiny `Painter` interface and rendered twice: to SVG for the
 * HTML page and to pixels for the PNG. Line charts (metric per round) and bar charts (grouped or
 * stacked, linear or log axis, optional line overlay) are all the report needs.
 */

export type TextSize = 'sm' | 'md' | 'lg';
export type Anchor = 'start' | 'middle' | 'end';

export interface TextStyle {
  size?: TextSize;
  anchor?: Anchor;
  color?: string;
  /** Rotated 90° counter-clockwise (reads bottom to top), as on a y-axis. */
  vertical?: boolean;
  bold?: boolean;
}

/** Drawing primitives. Coordinates in pixels, origin top-left; colours '#rrggbb'. */
export interface Painter {
  readonly width: number;
  readonly height: number;
  rect(x: number, y: number, w: number, h: number, fill: string, title?: string): void;
  polyline(points: readonly (readonly [number, number])[], stroke: string, width: number, dash?: readonly number[]): void;
  circle(cx: number, cy: number, r: number, fill: string, title?: string): void;
  /** `y` is the vertical centre of the text line (or the horizontal centre when vertical). */
  text(x: number, y: number, s: string, style?: TextStyle): void;
  measure(s: string, size: TextSize): number;
  /** Height of a line of text at `size`. */
  lineHeight(size: TextSize): number;
}

/** Colour-blind-safe palette (Okabe–Ito order, tuned for a white background). */
export const PALETTE = ['#0072b2', '#d55e00', '#009e73', '#cc79a7', '#e69f00', '#56b4e9', '#8c564b', '#555555'];
const AXIS = '#444444';
const GRID = '#e3e3e3';
const MUTED = '#666666';

export interface LineSeries {
  name: string;
  color: string;
  points: { x: number; y: number | null | undefined; /** ± this much, drawn as an error bar (e.g. sd over seeds). */ err?: number | null }[];
  dash?: number[];
  width?: number;
  markers?: boolean;
}

/** A horizontal reference line across the whole x range (e.g. a baseline's final figure). */
export interface RefLine {
  name: string;
  color: string;
  y: number;
  dash?: number[];
}

export interface LineChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  series: LineSeries[];
  refLines?: RefLine[];
  yMin?: number;
  yMax?: number;
  yFormat?: (v: number) => string;
}

export interface BarGroup {
  name: string;
  color: string;
  values: (number | null | undefined)[];
}

export interface BarChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  categories: string[];
  groups: BarGroup[];
  stacked?: boolean;
  log?: boolean;
  /** Drawn over the bars, one value per category (e.g. full-model-equivalent bytes). */
  lines?: LineSeries[];
  yMin?: number;
  yMax?: number;
  yFormat?: (v: number) => string;
}

interface Box {
  x: number;
  y: number;
  w: number;
  h: number;
}

// ------------------------------------------------------------------ scales

/** Round tick step: 1, 2, 2.5 or 5 × 10^k, about `count` ticks over [lo, hi]. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (hi <= lo) hi = lo + (lo === 0 ? 1 : Math.abs(lo) * 0.1);
  const raw = (hi - lo) / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = ([1, 2, 2.5, 5, 10].find((m) => m * mag >= raw) ?? 10) * mag;
  const start = Math.floor(lo / step + 1e-9) * step;
  const ticks: number[] = [];
  for (let v = start; v <= hi + step * 0.5 && ticks.length < 50; v += step) ticks.push(Number(v.toPrecision(12)));
  if ((ticks[ticks.length - 1] as number) < hi - 1e-12) ticks.push(Number((start + ticks.length * step).toPrecision(12)));
  return ticks;
}

export function formatNumber(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e9) return `${+(v / 1e9).toPrecision(3)}G`;
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(3)}k`;
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return `${+v.toPrecision(3)}`;
  return `${+v.toPrecision(2)}`;
}

export function formatBytes(v: number): string {
  const a = Math.abs(v);
  if (a >= 1024 ** 3) return `${+(v / 1024 ** 3).toPrecision(3)} GiB`;
  if (a >= 1024 ** 2) return `${+(v / 1024 ** 2).toPrecision(3)} MiB`;
  if (a >= 1024) return `${+(v / 1024).toPrecision(3)} KiB`;
  return `${Math.round(v)} B`;
}

/** Decimal (SI) byte units, which keep log-scale ticks at powers of ten round: 100 kB, 1 MB, … */
export function formatBytesSI(v: number): string {
  const a = Math.abs(v);
  const units: [number, string][] = [[1e12, 'TB'], [1e9, 'GB'], [1e6, 'MB'], [1e3, 'kB']];
  for (const [u, name] of units) if (a >= u) return `${+(v / u).toPrecision(3)} ${name}`;
  return `${Math.round(v)} B`;
}

export function formatPercent(v: number): string {
  return `${(v * 100).toFixed(1)}%`;
}

// ------------------------------------------------------------------ shared frame pieces

function drawTitle(p: Painter, title: string): number {
  const h = p.lineHeight('lg');
  p.text(p.width / 2, 8 + h / 2, title, { size: 'lg', anchor: 'middle', color: '#222222', bold: true });
  return 8 + h + 6;
}

interface LegendItem {
  name: string;
  color: string;
  kind: 'line' | 'box';
  dash?: number[] | undefined;
}

/** Legend rows centred under the title; returns the y below it. */
function drawLegend(p: Painter, items: LegendItem[], top: number): number {
  if (items.length === 0) return top;
  const lh = p.lineHeight('sm');
  const swatch = 22;
  const gap = 18;
  const widths = items.map((it) => swatch + 6 + p.measure(it.name, 'sm'));
  const rows: number[][] = [[]];
  let rowW = 0;
  widths.forEach((w, i) => {
    const cur = rows[rows.length - 1] as number[];
    if (cur.length > 0 && rowW + gap + w > p.width - 40) {
      rows.push([i]);
      rowW = w;
    } else {
      cur.push(i);
      rowW += (cur.length > 1 ? gap : 0) + w;
    }
  });
  let y = top + lh / 2;
  for (const row of rows) {
    const total = row.reduce((s, i) => s + (widths[i] as number), 0) + gap * (row.length - 1);
    let x = (p.width - total) / 2;
    for (const i of row) {
      const it = items[i] as LegendItem;
      if (it.kind === 'line') p.polyline([[x, y], [x + swatch, y]], it.color, 3, it.dash);
      else p.rect(x + 3, y - lh * 0.32, swatch - 6, lh * 0.64, it.color);
      p.text(x + swatch + 6, y, it.name, { size: 'sm', color: '#222222' });
      x += (widths[i] as number) + gap;
    }
    y += lh + 4;
  }
  return y - lh / 2 + 4;
}

function plotBox(p: Painter, top: number, yTickLabels: string[]): Box {
  const tickW = Math.max(...yTickLabels.map((s) => p.measure(s, 'sm')), 10);
  const left = 12 + p.lineHeight('sm') + 10 + tickW + 8;
  const bottom = p.lineHeight('sm') * 2 + 26;
  return { x: left, y: top + 6, w: p.width - left - 20, h: p.height - top - 6 - bottom };
}

function drawYAxis(p: Painter, box: Box, ticks: number[], toY: (v: number) => number, label: string, fmt: (v: number) => string): void {
  for (const t of ticks) {
    const y = toY(t);
    p.polyline([[box.x, y], [box.x + box.w, y]], GRID, 1);
    p.polyline([[box.x - 5, y], [box.x, y]], AXIS, 1);
    p.text(box.x - 8, y, fmt(t), { size: 'sm', anchor: 'end', color: MUTED });
  }
  p.text(12 + p.lineHeight('sm') / 2, box.y + box.h / 2, label, { size: 'sm', anchor: 'middle', vertical: true, color: '#333333' });
}

function drawFrame(p: Painter, box: Box, xLabel: string): void {
  p.polyline([[box.x, box.y], [box.x, box.y + box.h], [box.x + box.w, box.y + box.h]], AXIS, 1.5);
  p.text(box.x + box.w / 2, p.height - 4 - p.lineHeight('sm') / 2, xLabel, { size: 'sm', anchor: 'middle', color: '#333333' });
}

function dataRange(values: number[], min?: number, max?: number, padFrac = 0.06): [number, number] {
  const finite = values.filter((v) => Number.isFinite(v));
  let lo = min ?? (finite.length ? Math.min(...finite) : 0);
  let hi = max ?? (finite.length ? Math.max(...finite) : 1);
  if (hi === lo) {
    hi += 0.5;
    lo -= 0.5;
  }
  const pad = (hi - lo) * padFrac;
  return [min ?? lo - pad, max ?? hi + pad];
}

// ------------------------------------------------------------------ line chart

export function drawLineChart(p: Painter, spec: LineChartSpec): void {
  p.rect(0, 0, p.width, p.height, '#ffffff');
  let top = drawTitle(p, spec.title);
  const items: LegendItem[] = [
    ...spec.series.map((s) => ({ name: s.name, color: s.color, kind: 'line' as const, dash: s.dash })),
    ...(spec.refLines ?? []).map((r) => ({ name: r.name, color: r.color, kind: 'line' as const, dash: r.dash ?? [6, 4] })),
  ];
  top = drawLegend(p, items, top);
  const xs = spec.series.flatMap((s) => s.points.map((q) => q.x));
  const ys = [
    ...spec.series.flatMap((s) => s.points.flatMap((q) => (typeof q.y === 'number' ? (typeof q.err === 'number' ? [q.y - q.err, q.y + q.err] : [q.y]) : []))),
    ...(spec.refLines ?? []).map((r) => r.y),
  ];
  const [ylo, yhi] = dataRange(ys, spec.yMin, spec.yMax);
  const yt = niceTicks(ylo, yhi, 5).filter((t) => (spec.yMin === undefined || t >= spec.yMin - 1e-9) && (spec.yMax === undefined || t <= spec.yMax + 1e-9));
  const y0 = Math.min(ylo, yt[0] ?? ylo);
  const y1 = Math.max(yhi, yt[yt.length - 1] ?? yhi);
  const fmt = spec.yFormat ?? formatNumber;
  const box = plotBox(p, top, yt.map(fmt));
  const x0 = xs.length ? Math.min(...xs) : 0;
  const x1 = xs.length ? Math.max(...xs) : 1;
  const span = x1 - x0 || 1;
  const padX = 0.03 * box.w;
  const toX = (x: number) => box.x + padX + ((x - x0) / span) * (box.w - 2 * padX);
  const toY = (v: number) => box.y + box.h - ((v - y0) / (y1 - y0 || 1)) * box.h;
  drawYAxis(p, box, yt, toY, spec.yLabel, fmt);
  // Integer x ticks (rounds), thinned to fit.
  const xt = niceTicks(x0, x1, Math.min(10, Math.max(1, Math.floor(box.w / 70)))).filter((t) => t >= x0 && t <= x1 && Number.isInteger(t));
  for (const t of xt.length ? xt : [x0]) {
    const x = toX(t);
    p.polyline([[x, box.y + box.h], [x, box.y + box.h + 5]], AXIS, 1);
    p.text(x, box.y + box.h + 8 + p.lineHeight('sm') / 2, String(t), { size: 'sm', anchor: 'middle', color: MUTED });
  }
  for (const r of spec.refLines ?? []) p.polyline([[box.x, toY(r.y)], [box.x + box.w, toY(r.y)]], r.color, 2, r.dash ?? [6, 4]);
  for (const s of spec.series) {
    // Gaps (null) split the line.
    let run: [number, number][] = [];
    const flush = () => {
      if (run.length > 1) p.polyline(run, s.color, s.width ?? 2.5, s.dash);
      run = [];
    };
    for (const q of s.points) {
      if (typeof q.y === 'number' && Number.isFinite(q.y)) run.push([toX(q.x), toY(q.y)]);
      else flush();
    }
    flush();
    for (const q of s.points) {
      if (typeof q.y !== 'number' || !Number.isFinite(q.y) || typeof q.err !== 'number' || !(q.err > 0)) continue;
      const x = toX(q.x);
      const [lo, hi] = [toY(Math.max(y0, q.y - q.err)), toY(Math.min(y1, q.y + q.err))];
      p.polyline([[x, lo], [x, hi]], s.color, 1.5);
      p.polyline([[x - 4, lo], [x + 4, lo]], s.color, 1.5);
      p.polyline([[x - 4, hi], [x + 4, hi]], s.color, 1.5);
    }
    if (s.markers !== false) {
      for (const q of s.points) if (typeof q.y === 'number' && Number.isFinite(q.y)) p.circle(toX(q.x), toY(q.y), 3.5, s.color, `${s.name}, round ${q.x}: ${fmt(q.y)}`);
    }
  }
  drawFrame(p, box, spec.xLabel);
}

// ------------------------------------------------------------------ bar chart

export function drawBarChart(p: Painter, spec: BarChartSpec): void {
  p.rect(0, 0, p.width, p.height, '#ffffff');
  let top = drawTitle(p, spec.title);
  top = drawLegend(p, [
    ...spec.groups.map((g) => ({ name: g.name, color: g.color, kind: 'box' as const })),
    ...(spec.lines ?? []).map((s) => ({ name: s.name, color: s.color, kind: 'line' as const, dash: s.dash })),
  ], top);
  const n = spec.categories.length;
  const vals: number[] = [];
  if (spec.stacked) {
    for (let c = 0; c < n; c++) vals.push(spec.groups.reduce((s, g) => s + (g.values[c] ?? 0), 0));
  } else for (const g of spec.groups) for (const v of g.values) if (typeof v === 'number') vals.push(v);
  for (const l of spec.lines ?? []) for (const q of l.points) if (typeof q.y === 'number') vals.push(q.y);
  const fmt = spec.yFormat ?? formatNumber;
  let ticks: number[];
  let toV: (v: number) => number;
  let v0: number;
  let v1: number;
  if (spec.log) {
    const pos = vals.filter((v) => v > 0);
    const lo = Math.floor(Math.log10(spec.yMin ?? (pos.length ? Math.min(...pos) : 1)));
    const hi = Math.ceil(Math.log10(spec.yMax ?? (pos.length ? Math.max(...pos) : 10)) + 1e-9);
    const hiE = hi === lo ? lo + 1 : hi;
    ticks = [];
    for (let e = lo; e <= hiE; e++) ticks.push(Math.pow(10, e));
    v0 = lo;
    v1 = hiE;
    toV = (v) => Math.log10(Math.max(v, Math.pow(10, lo)));
  } else {
    const [lo, hi] = dataRange([0, ...vals], spec.yMin ?? 0, spec.yMax, 0.08);
    ticks = niceTicks(lo, hi, 5);
    v0 = Math.min(lo, ticks[0] ?? lo);
    v1 = Math.max(hi, ticks[ticks.length - 1] ?? hi);
    toV = (v) => v;
  }
  const box = plotBox(p, top, ticks.map(fmt));
  const toY = (v: number) => box.y + box.h - ((toV(v) - v0) / (v1 - v0 || 1)) * box.h;
  drawYAxis(p, box, ticks, toY, spec.yLabel, fmt);
  const slot = box.w / Math.max(1, n);
  const inner = slot * 0.78;
  const perBar = spec.stacked ? inner : inner / Math.max(1, spec.groups.length);
  const base = box.y + box.h;
  // Thin the category labels so they never overlap.
  const maxLabel = Math.max(...spec.categories.map((c) => p.measure(c, 'sm')), 1);
  const every = Math.max(1, Math.ceil((maxLabel + 8) / slot));
  for (let c = 0; c < n; c++) {
    const sx = box.x + c * slot + (slot - inner) / 2;
    let stackTop = base;
    let stackSum = 0;
    spec.groups.forEach((g, gi) => {
      const v = g.values[c];
      if (typeof v !== 'number' || !Number.isFinite(v)) return;
      const title = `${spec.categories[c]} · ${g.name}: ${fmt(v)}`;
      if (spec.stacked) {
        stackSum += v;
        const yTop = toY(stackSum);
        if (stackTop - yTop > 0) p.rect(sx, yTop, perBar, stackTop - yTop, g.color, title);
        stackTop = yTop;
      } else {
        const yTop = toY(v);
        p.rect(sx + gi * perBar + 0.5, yTop, Math.max(1, perBar - 1), Math.max(0, base - yTop), g.color, title);
      }
    });
    if (c % every === 0) p.text(box.x + c * slot + slot / 2, base + 8 + p.lineHeight('sm') / 2, spec.categories[c] as string, { size: 'sm', anchor: 'middle', color: MUTED });
  }
  for (const l of spec.lines ?? []) {
    const pts = l.points.filter((q) => typeof q.y === 'number').map((q) => [box.x + q.x * slot + slot / 2, toY(q.y as number)] as [number, number]);
    if (pts.length > 1) p.polyline(pts, l.color, l.width ?? 2.5, l.dash);
    for (const [x, y] of pts) p.circle(x, y, 3.5, l.color);
  }
  drawFrame(p, box, spec.xLabel);
}
