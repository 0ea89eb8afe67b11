/** Shared flag plumbing for subcommands: a declarative flag table drives parseArgs and --help. */
import { parseArgs } from 'node:util';
import { ConfigError } from '../../shared/errors.js';

export interface FlagSpec {
  type: 'string' | 'boolean';
  help: string;
  default?: string;
  multiple?: boolean;
  short?: string;
}

export interface Command {
  name: string;
  summary: string;
  usage: string;
  flags: Record<string, FlagSpec>;
  run(values: Record<string, string | boolean | string[] | undefined>): Promise<number>;
}

export function helpText(cmd: Command): string {
  const rows = Object.entries(cmd.flags).map(([k, f]) => {
    const left = `  --${k}${f.type === 'string' ? ` ${k === 'personal' ? 'GLOB' : 'VALUE'}` : ''}`;
    return `${`${left} `.padEnd(30)}${f.help}${f.default !== undefined ? ` (default: ${f.default})` : ''}${f.multiple ? ' [repeatable]' : ''}`;
  });
  return `${cmd.summary}\n\nUsage: ${cmd.usage}\n\nOptions:\n${rows.join('\n')}\n  --help                      show this help\n`;
}

export function parseFlags(cmd: Command, argv: string[]): Record<string, string | boolean | string[] | undefined> {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = { help: { type: 'boolean' } };
  for (const [k, f] of Object.entries(cmd.flags)) options[k] = { type: f.type, ...(f.multiple ? { multiple: true } : {}), ...(f.short ? { short: f.short } : {}) };
  try {
    const { values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false });
    const out = values as Record<string, string | boolean | string[] | undefined>;
    for (const [k, f] of Object.entries(cmd.flags)) if (out[k] === undefined && f.default !== undefined) out[k] = f.type === 'boolean' ? f.default === 'true' : f.default;
    return out;
  } catch (e) {
    throw new ConfigError(`${cmd.name}: ${(e as Error).message}`);
  }
}

export function str(v: unknown, flag: string, required = false): string | undefined {
  if (v === undefined || v === '') { if (required) throw new ConfigError(`--${flag} is required`); return undefined; }
  return String(v);
}

export function intFlag(v: unknown, flag: string, min = 0): number | undefined {
  if (v === undefined) return undefined;
  const s = String(v);
  if (!/^-?\d+$/.test(s) || Number(s) < min) throw new ConfigError(`--${flag} must be an integer ≥ ${min}, got ${JSON.stringify(s)}`);
  return Number(s);
}

export function numFlag(v: unknown, flag: string, min = 0): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (String(v).trim() === '' || !Number.isFinite(n) || n < min) throw new ConfigError(`--${flag} must be a number ≥ ${min}, got ${JSON.stringify(String(v))}`);
  return n;
}

/** Durations: plain seconds or with a unit (500ms, 30s, 10m). */
export function durationMs(v: unknown, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(String(v).trim());
  if (!m) throw new ConfigError(`--${flag} must be a duration like 90, 30s, 10m, 500ms; got ${JSON.stringify(String(v))}`);
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  return Number(m[1]) * mult;
}

export function listFlag(v: unknown): string[] | undefined {
  if (v === undefined) return undefined;
  const parts = (Array.isArray(v) ? v : [v]).flatMap((x) => String(x).split(',')).map((s) => s.trim()).filter(Boolean);
  return parts.length ? parts : undefined;
}
