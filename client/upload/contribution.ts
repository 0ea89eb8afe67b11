/**
 * First stage of the upload: the trained adapter as the flat vector the round's layout describes,
 * at weight 1. Shared tensors come from `strategy.contribution` (zero-padded to maxRank); tensors
 * this client keeps (strategy- or config-personal) occupy their layout positions as zeros, so the
 * coordinator can average them over the clients that share them only.
 */
import { ProtocolError } from '../../shared/errors.js';
import { flatten, type FlatLayout, type Strategy } from '../../shared/aggregation/index.js';
import { isAdapterTensorName, parseXsName } from '../../shared/lora/adapter.js';
import type { TensorMap } from '../../shared/tensor.js';

/** Which tensors stay on this client: the strategy's personal factors plus the client's own globs (LoRA factors, DoRA magnitudes and LoRA-XS cores only). */
export function personalRule(strategy: Strategy, globs: (name: string) => boolean): (name: string) => boolean {
  return (name) => (isAdapterTensorName(name) || parseXsName(name) !== null) && (strategy.isPersonal(name) || globs(name));
}

export interface ContributionInput {
  /** The locally trained adapter's tensors (at the round's rank). */
  tensors: TensorMap;
  layout: FlatLayout;
  strategy: Strategy;
  isPersonal: (name: string) => boolean;
  maxRank: number;
}

/** Σ-ready contribution at weight 1, flat in layout order; the weight is applied once, by the encoder. */
export function contributionVector(o: ContributionInput): Float32Array {
  const parts: TensorMap = new Map();
  for (const e of o.layout.entries) {
    const t = o.tensors.get(e.name);
    const personal = o.isPersonal(e.name);
    if (!t && !personal) throw new ProtocolError('LAYOUT', `trained adapter lacks ${e.name}`);
    parts.set(e.name, personal || !t ? { shape: [...e.shape], data: new Float32Array(e.size) } : o.strategy.contribution(e.name, t, 1, o.maxRank));
  }
  return flatten(parts, o.layout);
}
