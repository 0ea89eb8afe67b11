/**
 * GPT-2: learned absolute positions, pre-LayerNorm blocks, one fused q|k|v projection, a plain
 * two-layer MLP, biases everywhere, and Conv1D weights stored [in, out].
 */
import { ModelFormatError } from '../../errors.js';
import { int, num, activation } from './fields.js';
import { LAYER_NORM } from './norms.js';
import type { FamilyDescriptor } from './types.js';
import type { tf } from '../../backend/index.js';

export const gpt2Family: FamilyDescriptor = {
  name: 'gpt2',
  modelTypes: ['gpt2'],

  normalize(c, _modelType, file) {
    const hidden = int(c, 'n_embd', file);
    const heads = int(c, 'n_head', file);
    if (hidden % heads !== 0) throw new ModelFormatError(`n_embd ${hidden} is not divisible by n_head ${heads}`, file);
    const act = activation(c, 'activation_function', file, 'gelu_new');
    if (c.scale_attn_by_inverse_layer_idx === true || c.reorder_and_upcast_attn === true) {
      throw new ModelFormatError('scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported', file);
    }
    return {
      vocabSize: int(c, 'vocab_size', file), hiddenSize: hidden, numLayers: int(c, 'n_layer', file),
      numHeads: heads, numKvHeads: heads, headDim: hidden / heads,
      intermediateSize: c.n_inner == null ? 4 * hidden : int(c, 'n_inner', file),
      maxPositions: int(c, 'n_positions', file, 1024), normEps: num(c, 'layer_norm_epsilon', file, 1e-5),
      activation: act, ropeTheta: 0,
      tieWordEmbeddings: c.tie_word_embeddings !== false, attentionBias: true, oBias: true, mlpBias: true,
    };
  },

  tensors: { embeddings: 'transformer.wte.weight', positions: 'transformer.wpe.weight', finalNorm: 'transformer.ln_f', lmHead: 'lm_head.weight' },
  layerPrefix: (i) => `transformer.h.${i}`,
  layerNorms: ['ln_1', 'ln_2'],
  norm: LAYER_NORM,
  fanInFanOut: true,
  optionalPrefix: 'transformer.',
  // causal-mask buffers saved by older transformers versions; HF skips them on load too
  isBuffer: (name) => /\.attn\.(bias|masked_bias)$/.test(name),

  blockLinears(cfg) {
    const d = cfg.hiddenSize, ff = cfg.intermediateSize;
    return [
      { name: 'attn.c_attn', in: d, out: 3 * d, bias: true },
      { name: 'attn.c_proj', in: d, out: d, bias: true },
      { name: 'mlp.c_fc', in: d, out: ff, bias: true },
      { name: 'mlp.c_proj', in: ff, out: d, bias: true },
    ];
  },
  defaultTargetModules: ['c_attn', 'c_proj', 'c_fc'],

  forwardBlock(k, x, p) {
    const { tf: t } = k, H = k.config.numHeads;
    const h = k.norm(x, `${p}.ln_1`);
    const [q, kk, v] = t.split(k.linear(h, `${p}.attn.c_attn`), 3, -1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
    const att = k.attend(k.heads(q, H), k.heads(kk, H), k.heads(v, H));
    const x1 = t.add(x, k.linear(att, `${p}.attn.c_proj`)) as tf.Tensor2D;
    const h2 = k.norm(x1, `${p}.ln_2`);
    const mlp = k.linear(k.act(k.linear(h2, `${p}.mlp.c_fc`)) as tf.Tensor2D, `${p}.mlp.c_proj`);
    return t.add(x1, mlp) as tf.Tensor2D;
  },
};
