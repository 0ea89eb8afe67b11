/**
 * Second stage of the upload: an ordered list of vector → vector transforms applied to the
 * weight-1 contribution before it is encoded (Flower's client mods, minus the message plumbing).
 * The secure round's clip lives here, and so does differential privacy: `dpClip` clips the whole
 * shared vector to L2 ≤ S, and the fixed-point mod `skellamNoise` adds the client's share of the
 * distributed noise to the encoded integers, before masking. Mods run once per round: the encoded
 * upload is kept and resent, never rebuilt with fresh randomness.
 */
import { ProtocolError } from '../../shared/errors.js';
import type { FlatLayout } from '../../shared/aggregation/index.js';
import type { QuantParams } from '../../shared/crypto/index.js';
import { CryptoUniform, clipL2, sampleSkellam, type DpRoundInfo } from '../../shared/privacy/index.js';

export interface UploadContext {
  readonly roundId: string;
  readonly round: number;
  readonly rank: number;
  readonly maxRank: number;
  /** The public weight the encoder scales by (plain: examples trained on; secure: the weight round:start lists). */
  readonly weight: number;
  /** The secure round's fixed-point parameters; null for plain (insecure) rounds. */
  readonly quant: QuantParams | null;
  readonly layout: FlatLayout;
  /** The round's differential-privacy settings (round:start `dp`); absent without DP. */
  readonly dp?: DpRoundInfo | null;
}

export type UploadMod = (vector: Float32Array, ctx: UploadContext) => Float32Array;
/** A mod on the fixed-point integers (mod 2^32) of a secure upload, after encoding and before masking. */
export type FixedPointMod = (encoded: Uint32Array, ctx: UploadContext) => Uint32Array;

/**
 * The float32 closest to `c` from above. encodeUpdate compares float32 inputs against the double
 * `c` and maps anything beyond it to exactly ±c, so clipping to this value (not to fround(c), which
 * may lie below c) leaves the encoded bytes identical to encoding the unclipped vector.
 */
export function float32Ceil(c: number): number {
  const f = Math.fround(c);
  if (f >= c || !Number.isFinite(f)) return f;
  const bits = new Float32Array([f]);
  const u = new Uint32Array(bits.buffer);
  // positive float32s order like their bit patterns; negative ones the other way round
  u[0] = f >= 0 ? u[0]! + 1 : u[0]! - 1;
  return bits[0]!;
}

/** Secure rounds: entries to ±clip, as the coordinator's fixed-point range assumes. Plain rounds pass through. */
export const clipToRound: UploadMod = (vector, ctx) => {
  if (!ctx.quant) return vector;
  const c = float32Ceil(ctx.quant.clip);
  const out = new Float32Array(vector.length);
  for (let i = 0; i < vector.length; i++) {
    const v = vector[i]!;
    // NaN passes through so the encoder refuses it instead of it becoming a silent clip value
    out[i] = v > c ? c : v < -c ? -c : v;
  }
  return out;
};

/**
 * DP rounds: the whole shared vector (all shared tensors, zero-padded to maxRank, weight 1) to
 * L2 ≤ S; in secure rounds with room for the fixed-point rounding, so the encoded integers stay
 * within S·2^f too. Runs after clipToRound, which only shrinks entries.
 */
export const dpClip: UploadMod = (vector, ctx) => {
  if (!ctx.dp) return vector;
  if (ctx.weight !== 1) throw new ProtocolError('DP_WEIGHT', `DP rounds use weight 1, round:start lists ${ctx.weight}`);
  return clipL2(vector, ctx.dp.clip, ctx.quant?.fracBits);
};

let uniform: CryptoUniform | null = null;

/**
 * Distributed DP: adds Sk(μ_client) (difference of two Poisson(μ_client/2), exact samplers fed by
 * node:crypto) to every coordinate of the encoded update. Sums of Skellam noise are Skellam, so
 * the survivors' noise in the unmasked sum is Sk(m·μ_client).
 */
export const skellamNoise: FixedPointMod = (encoded, ctx) => {
  if (ctx.dp?.mode !== 'distributed') return encoded;
  if (!ctx.quant) throw new ProtocolError('DP_MODE', 'distributed DP noise needs a secure (fixed-point) round');
  const mu = ctx.dp.clientVariance!;
  uniform ??= new CryptoUniform();
  const out = new Uint32Array(encoded.length);
  for (let i = 0; i < encoded.length; i++) out[i] = (encoded[i]! + sampleSkellam(mu, uniform)) >>> 0;
  return out;
};

/** The mods every round applies before any configured ones. */
export const BUILTIN_MODS: readonly UploadMod[] = [clipToRound, dpClip];
/** Fixed-point mods every secure round applies. */
export const BUILTIN_FIXED_MODS: readonly FixedPointMod[] = [skellamNoise];

export function applyMods(vector: Float32Array, mods: readonly UploadMod[], ctx: UploadContext): Float32Array {
  let v = vector;
  for (const [i, mod] of mods.entries()) {
    v = mod(v, ctx);
    // a mod that changes the length would shift every later tensor in the layout
    if (!(v instanceof Float32Array) || v.length !== ctx.layout.size) {
      throw new ProtocolError('BAD_SHAPE', `upload mod #${i} returned ${v instanceof Float32Array ? `${v.length} values` : 'no Float32Array'}, layout has ${ctx.layout.size}`);
    }
  }
  return v;
}
