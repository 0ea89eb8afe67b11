/**
 * Llama and the checkpoints sharing its block (Qwen2, Mistral): RMSNorm, rotary positions,
 * separate q/k/v projections with grouped-query attention, a gated (SwiGLU) MLP, nn.Linear
 * weights stored [out, in]. They differ only in config defaults and which projections carry a bias.
 */
import { ModelFormatError } from '../../errors.js';
import { int, num, activation } from './fields.js';
import { RMS_NORM } from './norms.js';
import type { FamilyDescriptor } from './types.js';
import type { tf } from '../../backend/index.js';

export const llamaFamily: FamilyDescriptor = {
  name: 'llama',
  modelTypes: ['llama', 'qwen2', 'mistral'],

  normalize(c, modelType, file) {
    const hidden = int(c, 'hidden_size', file);
    const heads = int(c, 'num_attention_heads', file);
    const kv = int(c, 'num_key_value_heads', file, heads);
    if (heads % kv !== 0) throw new ModelFormatError(`num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kv}`, file);
    const headDim = c.head_dim == null ? hidden / heads : int(c, 'head_dim', file);
    if (!Number.isInteger(headDim) || headDim % 2 !== 0) throw new ModelFormatError(`head_dim ${headDim} must be an even integer`, file);
    const rp = c.rope_parameters as Record<string, unknown> | undefined;
    const rs = c.rope_scaling as Record<string, unknown> | null | undefined;
    const ropeType = (rp?.rope_type ?? rp?.type ?? rs?.rope_type ?? rs?.type ?? 'default') as string;
    if (ropeType !== 'default') throw new ModelFormatError(`rope type ${JSON.stringify(ropeType)} is not supported (only default RoPE)`, file);
    // transformers 5 writes rope_parameters.rope_theta, older checkpoints a top-level rope_theta
    const theta = (rp && typeof rp.rope_theta === 'number' ? rp.rope_theta : undefined) ?? (typeof c.rope_theta === 'number' ? c.rope_theta : 10000);
    if (!(theta > 0)) throw new ModelFormatError(`rope_theta must be positive, got ${theta}`, file);
    // Qwen2 always has q/k/v biases and never an o_proj bias; Llama/Mistral follow attention_bias
    const qwen2 = modelType === 'qwen2';
    return {
      vocabSize: int(c, 'vocab_size', file), hiddenSize: hidden, numLayers: int(c, 'num_hidden_layers', file),
      numHeads: heads, numKvHeads: kv, headDim, intermediateSize: int(c, 'intermediate_size', file),
      maxPositions: int(c, 'max_position_embeddings', file, 2048), normEps: num(c, 'rms_norm_eps', file, 1e-6),
      activation: activation(c, 'hidden_act', file, 'silu'), ropeTheta: theta,
      tieWordEmbeddings: c.tie_word_embeddings === true,
      attentionBias: qwen2 || c.attention_bias === true, oBias: !qwen2 && c.attention_bias === true, mlpBias: c.mlp_bias === true,
    };
  },

  tensors: { embeddings: 'model.embed_tokens.weight', positions: null, finalNorm: 'model.norm', lmHead: 'lm_head.weight' },
  layerPrefix: (i) => `model.layers.${i}`,
  layerNorms: ['input_layernorm', 'post_attention_layernorm'],
  norm: RMS_NORM,
  fanInFanOut: false,

  blockLinears(cfg) {
    const d = cfg.hiddenSize, ff = cfg.intermediateSize;
    const q = cfg.numHeads * cfg.headDim, kv = cfg.numKvHeads * cfg.headDim;
    return [
      { name: 'self_attn.q_proj', in: d, out: q, bias: cfg.attentionBias },
      { name: 'self_attn.k_proj', in: d, out: kv, bias: cfg.attentionBias },
      { name: 'self_attn.v_proj', in: d, out: kv, bias: cfg.attentionBias },
      { name: 'self_attn.o_proj', in: q, out: d, bias: cfg.oBias },
      { name: 'mlp.gate_proj', in: d, out: ff, bias: cfg.mlpBias },
      { name: 'mlp.up_proj', in: d, out: ff, bias: cfg.mlpBias },
      { name: 'mlp.down_proj', in: ff, out: d, bias: cfg.mlpBias },
    ];
  },
  defaultTargetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],

  forwardBlock(k, x, p) {
    const { tf: t } = k, H = k.config.numHeads, Hkv = k.config.numKvHeads;
    const h = k.norm(x, `${p}.input_layernorm`);
    const q = k.rope(k.heads(k.linear(h, `${p}.self_attn.q_proj`), H));
    const kk = k.rope(k.heads(k.linear(h, `${p}.self_attn.k_proj`), Hkv));
    const v = k.heads(k.linear(h, `${p}.self_attn.v_proj`), Hkv);
    const x1 = t.add(x, k.linear(k.attend(q, kk, v), `${p}.self_attn.o_proj`)) as tf.Tensor2D;
    const h2 = k.norm(x1, `${p}.post_attention_layernorm`);
    const gate = k.act(k.linear(h2, `${p}.mlp.gate_proj`));
    const mlp = k.linear(t.mul(gate, k.linear(h2, `${p}.mlp.up_proj`)) as tf.Tensor2D, `${p}.mlp.down_proj`);
    return t.add(x1, mlp) as tf.Tensor2D;
  },
};
