/** Small validators for decoded `unknown` payloads. Every failure is a ProtocolError with a path. */
import { ProtocolError } from '../errors.js';
import { describe } from '../codec/index.js';

export type Obj = Record<string, unknown>;

export function bad(path: string, msg: string, code = 'BAD_MESSAGE'): never {
  throw new ProtocolError(code, `${path}: ${msg}`);
}

export function obj(v: unknown, path: string): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v) || ArrayBuffer.isView(v)) bad(path, `expected an object, got ${describe(v)}`);
  return v as Obj;
}

export function str(v: unknown, path: string, opts: { max?: number; min?: number; re?: RegExp } = {}): string {
  if (typeof v !== 'string') bad(path, `expected a string, got ${describe(v)}`);
  const max = opts.max ?? 256;
  if (v.length > max) bad(path, `string longer than ${max}`, 'TOO_LARGE');
  if (v.length < (opts.min ?? 0)) bad(path, 'string too short');
  if (opts.re && !opts.re.test(v)) bad(path, `does not match ${opts.re}`);
  return v;
}

export function int(v: unknown, path: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) bad(path, `expected an integer, got ${describe(v)}`);
  if (v < min || v > max) bad(path, `${v} is outside [${min}, ${max}]`);
  return v;
}

export function num(v: unknown, path: string, min = -Number.MAX_VALUE, max = Number.MAX_VALUE): number {
  if (typeof v !== 'number') bad(path, `expected a number, got ${describe(v)}`);
  if (!Number.isFinite(v)) bad(path, `${v} is not finite`, 'NON_FINITE');
  if (v < min || v > max) bad(path, `${v} is outside [${min}, ${max}]`);
  return v;
}

export function bool(v: unknown, path: string): boolean {
  if (typeof v !== 'boolean') bad(path, `expected a boolean, got ${describe(v)}`);
  return v;
}

export function arr(v: unknown, path: string, max: number): unknown[] {
  if (!Array.isArray(v)) bad(path, `expected a list, got ${describe(v)}`);
  if (v.length > max) bad(path, `${v.length} items, limit ${max}`, 'TOO_LARGE');
  return v;
}

export function opt<T>(v: unknown, f: (v: unknown) => T): T | undefined {
  return v === undefined || v === null ? undefined : f(v);
}

export function oneOf<T extends string>(v: unknown, path: string, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) bad(path, `expected one of ${allowed.join('|')}, got ${typeof v === 'string' ? JSON.stringify(v.slice(0, 40)) : describe(v)}`);
  return v as T;
}
