/** The three stages in order: contribution → mods → encode, with an observer on the plaintext. */
import { contributionVector, type ContributionInput } from './contribution.js';
import { applyMods, type UploadContext, type UploadMod } from './mods.js';
import { summand, type UploadEncoder } from './encode.js';
import type { UpdateMetrics } from '../../shared/protocol/index.js';

export interface UploadRun {
  /** The trained tensors and the rules that turn them into the weight-1 contribution. */
  input: Omit<ContributionInput, 'layout' | 'maxRank'>;
  ctx: UploadContext;
  mods: readonly UploadMod[];
  encoder: UploadEncoder;
  metrics: UpdateMetrics;
  /** Sees weight·clip(x) (what enters the sum) before the bytes are built; awaited. */
  observe?: (contribution: Float32Array) => void | Promise<void>;
}

export async function buildUpload(r: UploadRun): Promise<Uint8Array> {
  const x = contributionVector({ ...r.input, layout: r.ctx.layout, maxRank: r.ctx.maxRank });
  const v = applyMods(x, r.mods, r.ctx);
  if (r.observe) await r.observe(summand(v, r.ctx));
  return r.encoder.encode(v, r.ctx, r.metrics);
}
