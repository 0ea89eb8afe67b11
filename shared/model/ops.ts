/**
 * Matrix products whose forward *and* backward passes use only plain (non-transposed) matMul
 * kernels. tfjs-wasm runs `matMul(a, b, false, true)` ~10× and `matMul(a, b, true, false)` ~30×
 * slower than the plain product (measured here: 1.0 and 0.3 vs 9–27 GFLOP/s), and tfjs' built-in
 * MatMul gradient uses exactly those forms. Explicit transposes are cheap next to that.
 */
import { tf } from '../backend/index.js';

/** Swap the last two axes. */
export function t2(x: tf.Tensor): tf.Tensor {
  const r = x.rank;
  const perm = [...Array(r).keys()];
  perm[r - 2] = r - 1; perm[r - 1] = r - 2;
  return tf.transpose(x, perm);
}

/** a @ b (both differentiable), batched over leading axes. */
export const mm = tf.customGrad(((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
  save([a, b]);
  return {
    value: tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [sa, sb] = saved as [tf.Tensor, tf.Tensor];
      return [tf.matMul(dy as tf.Tensor2D, t2(sb) as tf.Tensor2D), tf.matMul(t2(sa) as tf.Tensor2D, dy as tf.Tensor2D)];
    },
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (a: tf.Tensor, b: tf.Tensor) => tf.Tensor;

/**
 * x @ W for a frozen weight: only dx flows back. `wIo` is W as [in, out]; `wOi` (optional) is the
 * same weight as [out, in], kept so the backward pass is a plain product too.
 */
export function frozenMatMul(x: tf.Tensor2D, wIo: tf.Tensor2D, wOi: tf.Tensor2D | null): tf.Tensor2D {
  const f = tf.customGrad(((xx: tf.Tensor) => ({
    value: tf.matMul(xx as tf.Tensor2D, wIo),
    gradFunc: (dy: tf.Tensor) => (wOi ? tf.matMul(dy as tf.Tensor2D, wOi) : tf.matMul(dy as tf.Tensor2D, wIo, false, true)),
  })) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;
  return f(x) as tf.Tensor2D;
}
