/**
 * Pixel back end for the chart painter: an RGBA canvas with anti-aliased lines, circles and
 * rectangles (coverage from exact distances/overlaps) and the built-in bitmap font for text.
 */
import type { Painter, TextSize, TextStyle } from './chart.js';
import { glyph, toFontText, textWidth, GLYPH_W, GLYPH_H, CELL_W } from './font.js';
import { encodePng } from './png.js';

const SCALE: Record<TextSize, number> = { sm: 2, md: 2, lg: 3 };
const CAP = 7; // glyph rows above the baseline

function parseColor(c: string): [number, number, number] {
  const m = /^#([0-9a-f]{6})$/i.exec(c);
  if (!m) throw new RangeError(`colour must be #rrggbb, got ${c}`);
  const v = parseInt(m[1] as string, 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

function clamp01(v: number): number {
  return v < 0 ? 0 : v > 1 ? 1 : v;
}

/** Splits a polyline into dash segments (on, off, on, …) measured along its length. */
function dashSegments(points: readonly (readonly [number, number])[], dash: readonly number[]): [number, number, number, number][] {
  const out: [number, number, number, number][] = [];
  let di = 0;
  let left = dash[0] as number;
  let on = true;
  for (let i = 1; i < points.length; i++) {
    let [x0, y0] = points[i - 1] as [number, number];
    const [x1, y1] = points[i] as [number, number];
    let segLen = Math.hypot(x1 - x0, y1 - y0);
    while (segLen > 1e-9) {
      const step = Math.min(left, segLen);
      const t = step / segLen;
      const nx = x0 + (x1 - x0) * t;
      const ny = y0 + (y1 - y0) * t;
      if (on) out.push([x0, y0, nx, ny]);
      x0 = nx;
      y0 = ny;
      segLen -= step;
      left -= step;
      if (left <= 1e-9) {
        di = (di + 1) % dash.length;
        left = dash[di] as number;
        on = !on;
      }
    }
  }
  return out;
}

export class RasterPainter implements Painter {
  readonly pixels: Uint8Array;

  constructor(readonly width: number, readonly height: number) {
    this.pixels = new Uint8Array(width * height * 4).fill(255);
  }

  #blend(x: number, y: number, rgb: [number, number, number], a: number): void {
    if (a <= 0 || x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const o = (y * this.width + x) * 4;
    const p = this.pixels;
    p[o] = Math.round((p[o] as number) * (1 - a) + rgb[0] * a);
    p[o + 1] = Math.round((p[o + 1] as number) * (1 - a) + rgb[1] * a);
    p[o + 2] = Math.round((p[o + 2] as number) * (1 - a) + rgb[2] * a);
    p[o + 3] = 255;
  }

  rect(x: number, y: number, w: number, h: number, fill: string): void {
    if (w <= 0 || h <= 0) return;
    const rgb = parseColor(fill);
    const x0 = Math.max(0, Math.floor(x)), x1 = Math.min(this.width, Math.ceil(x + w));
    const y0 = Math.max(0, Math.floor(y)), y1 = Math.min(this.height, Math.ceil(y + h));
    for (let py = y0; py < y1; py++) {
      const cy = Math.min(py + 1, y + h) - Math.max(py, y);
      for (let px = x0; px < x1; px++) {
        const cx = Math.min(px + 1, x + w) - Math.max(px, x);
        this.#blend(px, py, rgb, clamp01(cx) * clamp01(cy));
      }
    }
  }

  polyline(points: readonly (readonly [number, number])[], stroke: string, width: number, dash?: readonly number[]): void {
    if (points.length < 2) return;
    const segs: [number, number, number, number][] = dash && dash.length
      ? dashSegments(points, dash)
      : points.slice(1).map((q, i) => [(points[i] as [number, number])[0], (points[i] as [number, number])[1], q[0], q[1]]);
    const half = width / 2;
    const pad = half + 1;
    let bx0 = Infinity, by0 = Infinity, bx1 = -Infinity, by1 = -Infinity;
    for (const [ax, ay, cx, cy] of segs) {
      bx0 = Math.min(bx0, ax, cx); by0 = Math.min(by0, ay, cy);
      bx1 = Math.max(bx1, ax, cx); by1 = Math.max(by1, ay, cy);
    }
    const X0 = Math.max(0, Math.floor(bx0 - pad)), Y0 = Math.max(0, Math.floor(by0 - pad));
    const X1 = Math.min(this.width, Math.ceil(bx1 + pad)), Y1 = Math.min(this.height, Math.ceil(by1 + pad));
    if (X1 <= X0 || Y1 <= Y0) return;
    const bw = X1 - X0;
    // One coverage buffer per polyline (max over segments) so joints are not painted twice.
    const cov = new Float32Array(bw * (Y1 - Y0));
    for (const [ax, ay, cx, cy] of segs) {
      const dx = cx - ax, dy = cy - ay;
      const len2 = dx * dx + dy * dy;
      const sx0 = Math.max(X0, Math.floor(Math.min(ax, cx) - pad)), sx1 = Math.min(X1, Math.ceil(Math.max(ax, cx) + pad));
      const sy0 = Math.max(Y0, Math.floor(Math.min(ay, cy) - pad)), sy1 = Math.min(Y1, Math.ceil(Math.max(ay, cy) + pad));
      for (let py = sy0; py < sy1; py++) {
        for (let px = sx0; px < sx1; px++) {
          const qx = px + 0.5, qy = py + 0.5;
          const t = len2 > 0 ? clamp01(((qx - ax) * dx + (qy - ay) * dy) / len2) : 0;
          const d = Math.hypot(qx - (ax + t * dx), qy - (ay + t * dy));
          const c = clamp01(half + 0.5 - d);
          const k = (py - Y0) * bw + (px - X0);
          if (c > (cov[k] as number)) cov[k] = c;
        }
      }
    }
    const rgb = parseColor(stroke);
    for (let py = Y0; py < Y1; py++) for (let px = X0; px < X1; px++) this.#blend(px, py, rgb, cov[(py - Y0) * bw + (px - X0)] as number);
  }

  circle(cx: number, cy: number, r: number, fill: string): void {
    const rgb = parseColor(fill);
    // White rim first, as in the SVG.
    const white: [number, number, number] = [255, 255, 255];
    for (const [rad, col] of [[r + 1, white], [r, rgb]] as const) {
      for (let py = Math.floor(cy - rad - 1); py <= Math.ceil(cy + rad + 1); py++) {
        for (let px = Math.floor(cx - rad - 1); px <= Math.ceil(cx + rad + 1); px++) {
          const d = Math.hypot(px + 0.5 - cx, py + 0.5 - cy);
          this.#blend(px, py, col, clamp01(rad + 0.5 - d));
        }
      }
    }
  }

  text(x: number, y: number, s: string, style: TextStyle = {}): void {
    const str = toFontText(s);
    const scale = SCALE[style.size ?? 'md'];
    const w = textWidth(str, scale) + (style.bold ? 1 : 0);
    const capH = CAP * scale;
    const rgb = parseColor(style.color ?? '#222222');
    const anchor = style.anchor ?? 'start';
    const shift = anchor === 'middle' ? w / 2 : anchor === 'end' ? w : 0;
    const plot = (gx: number, gy: number) => {
      // gx, gy: pixel offsets in unrotated text space (gy = 0 at the cap top).
      for (let dy = 0; dy < scale; dy++) {
        for (let dx = 0; dx < scale + (style.bold ? 1 : 0); dx++) {
          if (style.vertical) this.#blend(Math.round(x - capH / 2) + gy + dy, Math.round(y + shift) - (gx + dx), rgb, 1);
          else this.#blend(Math.round(x - shift) + gx + dx, Math.round(y - capH / 2) + gy + dy, rgb, 1);
        }
      }
    };
    [...str].forEach((ch, i) => {
      const g = glyph(ch);
      for (let r = 0; r < GLYPH_H; r++) {
        const row = g[r] as boolean[];
        for (let c = 0; c < GLYPH_W; c++) if (row[c]) plot((i * CELL_W + c) * scale, r * scale);
      }
    });
  }

  measure(s: string, size: TextSize): number {
    return textWidth(toFontText(s), SCALE[size]);
  }

  lineHeight(size: TextSize): number {
    return (CAP + 3) * SCALE[size];
  }

  toPng(): Uint8Array {
    return encodePng(this.width, this.height, this.pixels);
  }
}
