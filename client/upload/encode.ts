/**
 * Last stage of the upload: the modded weight-1 vector as the sealed bytes the coordinator takes.
 * Plain rounds send `Update` with weight·x in float32; secure rounds fixed-point encode weight·x
 * (encodeUpdate) and mask it with the round's SecAggClient. Either way the weight is applied here,
 * exactly once.
 */
import { encode } from '../../shared/codec/index.js';
import { encodeUpdate, type SecAggClient, type SharesMsg } from '../../shared/crypto/index.js';
import type { SealedKind, Update, UpdateMetrics } from '../../shared/protocol/index.js';
import { BUILTIN_FIXED_MODS, type FixedPointMod, type UploadContext } from './mods.js';

/** Seals a payload for the coordinator under this round's context and the given kind. */
export type Seal = (payload: Uint8Array, kind: SealedKind) => Uint8Array;

export interface UploadEncoder {
  /** The sealed-payload kind the bytes carry (and the event they travel on follows from). */
  readonly kind: 'update' | 'secagg/masked';
  encode(vector: Float32Array, ctx: UploadContext, metrics: UpdateMetrics): Uint8Array;
}

/**
 * weight·clip(x) in float32: what this vector adds to the coordinator's sum (for plain rounds
 * bit for bit the uploaded vector; for secure ones before fixed-point rounding).
 */
export function summand(vector: Float32Array, ctx: UploadContext): Float32Array {
  const c = ctx.quant?.clip ?? Infinity;
  const w = ctx.weight;
  const out = new Float32Array(vector.length);
  for (let i = 0; i < out.length; i++) out[i] = Math.max(-c, Math.min(c, vector[i]!)) * w;
  return out;
}

export function plainEncoder(seal: Seal): UploadEncoder {
  return {
    kind: 'update',
    encode(vector, ctx, metrics) {
      const update: Update = { roundId: ctx.roundId, rank: ctx.rank, weight: ctx.weight, vector: summand(vector, ctx), metrics };
      return seal(encode(update), 'update');
    },
  };
}

/**
 * Masks with `sc`, which must be in its mask phase and holds the shares relayed to it. The
 * fixed-point mods (distributed DP noise) run on the encoded integers before masking.
 */
export function maskedEncoder(sc: SecAggClient, shares: SharesMsg, seal: Seal, fixedMods: readonly FixedPointMod[] = BUILTIN_FIXED_MODS): UploadEncoder {
  return {
    kind: 'secagg/masked',
    encode(vector, ctx, metrics) {
      if (!ctx.quant) throw new TypeError('masked upload without fixed-point parameters');
      let q = encodeUpdate(vector, ctx.weight, ctx.quant);
      for (const [i, mod] of fixedMods.entries()) {
        q = mod(q, ctx);
        if (!(q instanceof Uint32Array) || q.length !== vector.length) throw new TypeError(`fixed-point mod #${i} changed the vector length`);
      }
      // whatever the SecAggClient reports besides the masked vector travels along unchanged
      return seal(encode({ ...sc.maskedInput(shares, q), metrics }), 'secagg/masked');
    },
  };
}
