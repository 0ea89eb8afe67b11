/** Normalisation layers shared by the families (the op order matches HF's so fp32 logits agree). */
import type { NormSpec } from './types.js';

export const LAYER_NORM: NormSpec = {
  bias: true,
  fused: 'layer',
  apply(tf, x, w, b, eps) {
    const xc = tf.sub(x, tf.mean(x, -1, true));
    const v = tf.mean(tf.square(xc), -1, true);
    const y = tf.mul(tf.mul(xc, tf.rsqrt(tf.add(v, eps))), w);
    return (b ? tf.add(y, b) : y) as typeof x;
  },
};

export const RMS_NORM: NormSpec = {
  bias: false,
  fused: 'rms',
  apply(tf, x, w, _b, eps) {
    const ms = tf.mean(tf.square(x), -1, true);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, eps))), w) as typeof x;
  },
};
