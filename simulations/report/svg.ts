/** SVG back end for the chart painter: produces a standalone `<svg>` string (no scripts, no links). */
import type { Painter, TextSize, TextStyle } from './chart.js';

const SIZE: Record<TextSize, number> = { sm: 12.5, md: 14, lg: 17 };

export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);
}

const n = (v: number) => (Math.round(v * 100) / 100).toString();

export class SvgPainter implements Painter {
  readonly #parts: string[] = [];
  constructor(readonly width: number, readonly height: number) {}

  rect(x: number, y: number, w: number, h: number, fill: string, title?: string): void {
    const t = title ? `<title>${escapeXml(title)}</title>` : '';
    this.#parts.push(`<rect x="${n(x)}" y="${n(y)}" width="${n(w)}" height="${n(h)}" fill="${fill}">${t}</rect>`);
  }

  polyline(points: readonly (readonly [number, number])[], stroke: string, width: number, dash?: readonly number[]): void {
    if (points.length < 2) return;
    const d = points.map(([x, y], i) => `${i ? 'L' : 'M'}${n(x)} ${n(y)}`).join('');
    const da = dash && dash.length ? ` stroke-dasharray="${dash.join(' ')}"` : '';
    this.#parts.push(`<path d="${d}" fill="none" stroke="${stroke}" stroke-width="${width}" stroke-linejoin="round" stroke-linecap="round"${da}/>`);
  }

  circle(cx: number, cy: number, r: number, fill: string, title?: string): void {
    const t = title ? `<title>${escapeXml(title)}</title>` : '';
    this.#parts.push(`<circle cx="${n(cx)}" cy="${n(cy)}" r="${r}" fill="${fill}" stroke="#ffffff" stroke-width="1">${t}</circle>`);
  }

  text(x: number, y: number, s: string, style: TextStyle = {}): void {
    const size = SIZE[style.size ?? 'md'];
    const anchor = style.anchor ?? 'start';
    const rot = style.vertical ? ` transform="rotate(-90 ${n(x)} ${n(y)})"` : '';
    const weight = style.bold ? ' font-weight="600"' : '';
    this.#parts.push(`<text x="${n(x)}" y="${n(y)}" font-size="${size}" text-anchor="${anchor}" dominant-baseline="central" fill="${style.color ?? '#222222'}"${weight}${rot}>${escapeXml(s)}</text>`);
  }

  measure(s: string, size: TextSize): number {
    // Average advance of a proportional sans-serif face; only used for legend and margin layout.
    return s.length * SIZE[size] * 0.56;
  }

  lineHeight(size: TextSize): number {
    return SIZE[size] * 1.25;
  }

  toString(): string {
    return `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${this.width} ${this.height}" width="${this.width}" height="${this.height}" role="img" font-family="system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif">${this.#parts.join('')}</svg>`;
  }
}
