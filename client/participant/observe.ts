/**
 * What a participant lets tests and simulations watch, passed in through ClientOptions.observe
 * instead of environment variables or public test methods.
 */
import { join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import { encode, type WireTensor } from '../../shared/codec/index.js';
import type { QuantParams } from '../../shared/crypto/index.js';
import type { EvalMetrics } from '../trainer.js';
import type { LayoutEntry } from '../../shared/protocol/index.js';
import { atomicWrite } from '../../shared/model/safetensors.js';

export interface ClientRoundSummary {
  round: number;
  roundId: string;
  rank: number;
  trainLoss: number;
  steps: number;
  global?: EvalMetrics;
  personal?: EvalMetrics;
  bytesUp: number;
  bytesDown: number;
  accepted: boolean;
}

/** The plaintext a client adds to the round's sum; never leaves the process unless an observer writes it. */
export interface ContributionObservation {
  roundId: string;
  round: number;
  rank: number;
  weight: number;
  /** weight·clip(x), flat in layout order: exactly what enters the sum (secure rounds: before fixed-point rounding). */
  contribution: Float32Array;
  /** The round's fixed-point parameters; null in plain rounds. */
  quant: QuantParams | null;
  layout: LayoutEntry[];
  /** The global adapter of the round start, as it came over the wire (truncated to `rank`). */
  global: WireTensor[];
}

export interface ClientObservers {
  /** Awaited before the upload is encoded, so whatever it writes exists before the bytes leave. */
  contribution?(c: ContributionObservation): void | Promise<void>;
  /** Each encoded upload, just before it is sent (also on redelivery). */
  upload?(bytes: Uint8Array, round: number): void;
  /** After each delivery attempt of a trained round, accepted or refused. */
  round?(summary: ClientRoundSummary): void;
}

/** Test-only: writes each contribution to <dir>/debug-contribution-<round>.msgpack. Defeats secure aggregation by design. */
export function dumpContributions(dir: string): NonNullable<ClientObservers['contribution']> {
  return async (c) => {
    await mkdir(dir, { recursive: true });
    await atomicWrite(join(dir, `debug-contribution-${c.round}.msgpack`), encode(c));
  };
}
