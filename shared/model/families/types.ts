/**
 * What fedlora must know about one model family (a block shape shared by one or more HF
 * `model_type`s). Everything family-specific lives in a descriptor, so the loader, random init,
 * merge, coordinator model info and the forward pass never branch on a family name.
 */
import type { tf } from '../../backend/index.js';
import type { ModelConfig } from '../config.js';

/** Normalised fields a family derives from its config.json dialect. */
export type FamilyConfigFields = Omit<ModelConfig, 'raw' | 'modelType' | 'family' | 'bosTokenId' | 'eosTokenId' | 'padTokenId'>;

/** One linear layer of a block: module-path suffix under the layer prefix, sizes, bias. */
export interface BlockLinear { name: string; in: number; out: number; bias: boolean }

/** A normalisation layer: whether it carries a bias, and its math. */
export interface NormSpec {
  readonly bias: boolean;
  /** The same math as a fused kernel (shared/backend/fused-kernels.ts), used for a frozen base where the backend has it. */
  readonly fused?: 'layer' | 'rms';
  apply(t: typeof tf, x: tf.Tensor2D, weight: tf.Tensor1D, bias: tf.Tensor1D | null, eps: number): tf.Tensor2D;
}

/**
 * What a block's forward may call, provided by the model: `linear` applies base weights, bias and
 * any LoRA factors or merged weights of that module, so descriptors never see adapter plumbing.
 */
export interface BlockKit {
  readonly tf: typeof tf;
  readonly config: ModelConfig;
  linear(x: tf.Tensor2D, path: string): tf.Tensor2D;
  /** The family's norm with `<prefix>.weight` (and `<prefix>.bias`). */
  norm(x: tf.Tensor2D, prefix: string): tf.Tensor2D;
  act(x: tf.Tensor): tf.Tensor;
  /** [B·T, h·hd] → [B, h, T, hd]. */
  heads(t: tf.Tensor2D, h: number): tf.Tensor4D;
  /** Rotary position embedding (rotate-half convention) on [B, h, T, hd]. */
  rope(t: tf.Tensor): tf.Tensor;
  /** Causal, padding-masked, grouped-query attention of q [B, H, T, hd] over k, v [B, Hkv, T, hd] → [B·T, H·hd]. */
  attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor): tf.Tensor2D;
}

export interface FamilyDescriptor {
  /** Registry key, stored as ModelConfig.family. */
  readonly name: string;
  /** HF `model_type` values read by this family. */
  readonly modelTypes: readonly string[];
  /** config.json → normalised sizes; throws ModelFormatError naming `file` on bad values. */
  normalize(raw: Record<string, unknown>, modelType: string, file: string): FamilyConfigFields;
  /** HF tensor names outside the blocks. */
  readonly tensors: {
    /** Token embeddings [vocab, d]; also the head when embeddings are tied. */
    readonly embeddings: string;
    /** Learned absolute positions [maxPositions, d], or null where positions are rotary. */
    readonly positions: string | null;
    /** Final norm, as a prefix (`.weight`, `.bias` appended). */
    readonly finalNorm: string;
    /** Untied output head [vocab, d]. */
    readonly lmHead: string;
  };
  /** HF module path of layer i. */
  layerPrefix(i: number): string;
  /** Norms of one block, as suffixes under the layer prefix. */
  readonly layerNorms: readonly string[];
  readonly norm: NormSpec;
  /**
   * Block linears stored as [in, out] (GPT-2's Conv1D; PEFT `fan_in_fan_out`) rather than
   * nn.Linear's [out, in].
   */
  readonly fanInFanOut: boolean;
  /** Linear layers of one block, with [in, out] sizes and whether the checkpoint holds a bias. */
  blockLinears(cfg: ModelConfig): BlockLinear[];
  /** PEFT `target_modules` used when none are given: every linear layer of the blocks. */
  readonly defaultTargetModules: readonly string[];
  /**
   * Prefix some checkpoints of this family omit (HF's bare GPT2Model saves `h.0…` rather than
   * `transformer.h.0…`); names without it are read as if it were there.
   */
  readonly optionalPrefix?: string;
  /** Checkpoint tensors that are buffers rather than parameters, dropped on load as HF does. */
  isBuffer?(name: string): boolean;
  /** One transformer block: residual stream x [B·T, d] → [B·T, d]. */
  forwardBlock(kit: BlockKit, x: tf.Tensor2D, prefix: string): tf.Tensor2D;
}
