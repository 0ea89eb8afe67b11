/**
 * report.png: the report's own accuracy-chart SVG (the `<svg>` of `#chart-accuracy` in report.html)
 * rendered by resvg (@resvg/resvg-js, a maintained Rust SVG renderer shipped as a prebuilt binary), so
 * the PNG and the HTML chart are the same drawing.
 *
 * Text needs a font file. resvg is given one explicitly so the PNG does not depend on how a machine's
 * font configuration resolves `system-ui`: `FEDLORA_REPORT_FONT` (a .ttf/.otf/.ttc path) if set, else
 * the first common sans-serif face found (DejaVu Sans on Debian/Ubuntu/Fedora/Arch, Liberation Sans,
 * Helvetica/Arial on macOS, Arial on Windows); without any of them resvg falls back to the system
 * fonts it finds, and a warning says that text may be missing.
 */
import { existsSync } from 'node:fs';
import { Resvg, type ResvgRenderOptions } from '@resvg/resvg-js';
import { logger } from '../../shared/log.js';

const log = logger('fedlora:report');

interface FontChoice { family: string; files: string[] }

const CANDIDATES: { family: string; regular: string; bold?: string }[] = [
  { family: 'DejaVu Sans', regular: '/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf', bold: '/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf' },
  { family: 'DejaVu Sans', regular: '/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf', bold: '/usr/share/fonts/dejavu-sans-fonts/DejaVuSans-Bold.ttf' },
  { family: 'DejaVu Sans', regular: '/usr/share/fonts/dejavu/DejaVuSans.ttf', bold: '/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf' },
  { family: 'DejaVu Sans', regular: '/usr/share/fonts/TTF/DejaVuSans.ttf', bold: '/usr/share/fonts/TTF/DejaVuSans-Bold.ttf' },
  { family: 'Liberation Sans', regular: '/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf', bold: '/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf' },
  { family: 'Helvetica', regular: '/System/Library/Fonts/Helvetica.ttc' },
  { family: 'Arial', regular: '/System/Library/Fonts/Supplemental/Arial.ttf', bold: '/System/Library/Fonts/Supplemental/Arial Bold.ttf' },
  { family: 'Arial', regular: 'C:\\Windows\\Fonts\\arial.ttf', bold: 'C:\\Windows\\Fonts\\arialbd.ttf' },
];

let chosen: FontChoice | null | undefined;

/** The font resvg is given (null: none found, system fonts only). Chosen once per process. */
export function reportFont(): FontChoice | null {
  if (chosen !== undefined) return chosen;
  const env = process.env.FEDLORA_REPORT_FONT?.trim();
  if (env) {
    if (!existsSync(env)) throw new Error(`FEDLORA_REPORT_FONT=${env}: no such file`);
    // the family name is read from the file by resvg; an empty family lets it use the file's own
    chosen = { family: '', files: [env] };
    return chosen;
  }
  for (const c of CANDIDATES) {
    if (!existsSync(c.regular)) continue;
    chosen = { family: c.family, files: c.bold && existsSync(c.bold) ? [c.regular, c.bold] : [c.regular] };
    return chosen;
  }
  log.warn('no common sans-serif font file found for report.png; using whatever system fonts resvg finds (text may be missing). Set FEDLORA_REPORT_FONT=/path/to/font.ttf to choose one.');
  chosen = null;
  return chosen;
}

/** Renders a standalone SVG document to PNG bytes, `width` pixels wide (height keeps the aspect ratio). */
export function svgToPng(svg: string, width: number): Uint8Array {
  if (!Number.isSafeInteger(width) || width < 16 || width > 8192) throw new RangeError(`PNG width must be an integer in 16..8192 (got ${width})`);
  const f = reportFont();
  const font: NonNullable<ResvgRenderOptions['font']> = f
    ? { loadSystemFonts: false, fontFiles: f.files, ...(f.family ? { defaultFontFamily: f.family, sansSerifFamily: f.family } : {}) }
    : { loadSystemFonts: true };
  const r = new Resvg(svg, { font, fitTo: { mode: 'width', value: width }, background: '#ffffff', logLevel: 'off' });
  return new Uint8Array(r.render().asPng());
}
