/**
 * Checked readers for config.json fields, shared by every family's `normalize`: a checkpoint's
 * config is untrusted input, so each size is bounded before it drives an allocation.
 */
import { ModelFormatError } from '../../errors.js';
import type { Activation } from '../config.js';

export function int(raw: Record<string, unknown>, key: string, file: string, fallback?: number): number {
  const v = raw[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0 || v > 1 << 24) {
    throw new ModelFormatError(`"${key}" must be a positive integer, got ${JSON.stringify(raw[key])}`, file);
  }
  return v;
}

export function num(raw: Record<string, unknown>, key: string, file: string, fallback: number): number {
  const v = raw[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new ModelFormatError(`"${key}" must be a positive number, got ${JSON.stringify(raw[key])}`, file);
  return v;
}

const ACTS = new Set<string>(['gelu_new', 'gelu', 'gelu_pytorch_tanh', 'silu', 'relu', 'swish']);

/** The activation named by `raw[key]` (HF's `swish` is `silu`). */
export function activation(raw: Record<string, unknown>, key: string, file: string, fallback: Activation): Activation {
  const act = (raw[key] ?? fallback) as string;
  if (!ACTS.has(act)) throw new ModelFormatError(`unsupported ${key} ${JSON.stringify(act)}`, file);
  return (act === 'swish' ? 'silu' : act) as Activation;
}
