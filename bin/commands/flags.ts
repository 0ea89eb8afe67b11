/** Shared flag plumbing for subcommands: a declarative flag table drives parseArgs and --help. */
import { parseArgs } from 'node:util';
import { ConfigError } from '../../shared/errors.js';

export interface FlagSpec {
  type: 'string' | 'boolean';
  help: string;
  default?: string;
  multiple?: boolean;
  short?: string;
  /** What --help shows after a string flag: N, DIR, FILE, URL, GLOB, DURATION, … (default VALUE). */
  placeholder?: string;
}

export interface Command {
  name: string;
  summary: string;
  usage: string;
  flags: Record<string, FlagSpec>;
  run(values: Record<string, string | boolean | string[] | undefined>): Promise<number>;
}

/** Placeholders for common flag names, for tables that do not set one. */
const PLACEHOLDERS: Record<string, string> = {
  out: 'DIR', state: 'DIR', model: 'DIR', rounds: 'N', clients: 'N', seed: 'N', workers: 'N', port: 'N', backend: 'NAME', scenario: 'FILE|PRESET',
  data: 'FILE', identity: 'FILE', personal: 'GLOB', strategy: 'NAME', name: 'NAME', preset: 'NAME', seeds: 'LIST',
};

export function placeholderOf(name: string, f: FlagSpec): string {
  return f.placeholder ?? PLACEHOLDERS[name] ?? (/-(dir|folder)$/.test(name) ? 'DIR' : /-(file|cert|key|ca)$/.test(name) ? 'FILE' : /(^|-)(count|rank|steps|size|rounds|clients|workers)$/.test(name) ? 'N' : 'VALUE');
}

export function helpText(cmd: Command): string {
  const rows = Object.entries(cmd.flags).map(([k, f]) => {
    const left = `  --${k}${f.type === 'string' ? ` ${placeholderOf(k, f)}` : ''}`;
    return `${`${left} `.padEnd(34)}${f.help}${f.default !== undefined ? ` (default: ${f.default})` : ''}${f.multiple ? ' [repeatable]' : ''}`;
  });
  return `${cmd.summary}\n\nUsage: ${cmd.usage}\n\nOptions:\n${rows.join('\n')}\n  --help                          show this help\n`;
}

/** Levenshtein distance, for "did you mean" on unknown flags. */
function distance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length]!;
}

/** The known flag closest to `given` (a prefix, a typo within a third of its length), or undefined. */
export function suggestFlag(given: string, known: string[]): string | undefined {
  const g = given.replace(/^-+/, '').split('=')[0]!.toLowerCase();
  if (!g) return undefined;
  const prefixed = known.filter((k) => k.startsWith(g) || g.startsWith(k));
  if (prefixed.length === 1) return prefixed[0];
  let best: string | undefined, bestD = Infinity;
  for (const k of known) {
    const d = distance(g, k);
    if (d < bestD) { best = k; bestD = d; }
  }
  return bestD <= Math.max(2, Math.floor(g.length / 3)) ? best : undefined;
}

export function parseFlags(cmd: Command, argv: string[]): Record<string, string | boolean | string[] | undefined> {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = { help: { type: 'boolean' } };
  for (const [k, f] of Object.entries(cmd.flags)) options[k] = { type: f.type, ...(f.multiple ? { multiple: true } : {}), ...(f.short ? { short: f.short } : {}) };
  let values;
  try {
    ({ values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false }));
  } catch (e) {
    // the caller prefixes "fedlora <command>: "; parseArgs' own text is kept, with a suggestion for an unknown flag
    const err = e as Error & { code?: string };
    let msg = err.message;
    if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      const m = /Unknown option '([^']+)'/.exec(msg);
      const given = m?.[1] ?? '';
      msg = `unknown option ${given || '(?)'}`;
      const s = suggestFlag(given, Object.keys(options));
      if (s) msg += `; did you mean --${s}?`;
    } else if (err.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      const m = /Unexpected argument '([^']+)'/.exec(msg);
      msg = `unexpected argument${m ? ` ${JSON.stringify(m[1])}` : ''}: this command takes no positional arguments (every value follows its --flag)`;
    } else if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      const m = /^Option '(-[^' ]+)[^']*' argument (missing|is ambiguous)/.exec(msg);
      if (m) msg = m[2] === 'missing' ? `option ${m[1]} needs a value` : `option ${m[1]}: its value starts with "-"; write ${m[1]}=VALUE`;
    }
    throw new ConfigError(msg);
  }
  const out = values as Record<string, string | boolean | string[] | undefined>;
  for (const [k, f] of Object.entries(cmd.flags)) if (out[k] === undefined && f.default !== undefined) out[k] = f.type === 'boolean' ? f.default === 'true' : f.default;
  return out;
}

export function str(v: unknown, flag: string, required = false): string | undefined {
  if (v === undefined || v === '') { if (required) throw new ConfigError(`--${flag} is required`); return undefined; }
  return String(v);
}

export function intFlag(v: unknown, flag: string, min = 0, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (v === undefined) return undefined;
  const s = String(v);
  if (!/^-?\d+$/.test(s) || Number(s) < min || Number(s) > max) {
    throw new ConfigError(`--${flag} must be an integer ${max < Number.MAX_SAFE_INTEGER ? `in [${min}, ${max}]` : `≥ ${min}`}, got ${JSON.stringify(s)}`);
  }
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

/** `--threads N|auto` → the count for the wasm backend's thread pool (auto: every core, tfjs caps at 8). */
export function threadsFlag(v: unknown): number | 'auto' {
  const s = str(v, 'threads') ?? 'auto';
  if (s === 'auto') return 'auto';
  if (!/^\d{1,2}$/.test(s) || Number(s) < 1 || Number(s) > 64) throw new ConfigError(`--threads must be a whole number from 1 to 64 or "auto", got ${JSON.stringify(s)}`);
  return Number(s);
}
