/**
 * Matrix products whose forward *and* backward passes use only plain (non-transposed) matMul
 * kernels. tfjs-wasm runs `matMul(a, b, false, true)` ~10× and `matMul(a, b, true, false)` ~30×
 * slower than the plain product (measured here: 1.0 and 0.3 vs 9–27 GFLOP/s), and tfjs' built-in
 * MatMul gradient uses exactly those forms. Explicit transposes are cheap next to that.
 */
import { tf } from '../backend/index.js';
import { FUSED, hasFusedKernels, runFused as run } from '../backend/fused-kernels.js';

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
 * x @ wᵀ for x [N, k] and w [m, k], both differentiable: a LoRA factor applied to activations (x Aᵀ,
 * h Bᵀ). The weight gradient dw = dyᵀ x has two plain forms: dyᵀ @ x, where XNNPACK packs x [N, k] as
 * its weights, and (xᵀ @ dy)ᵀ, where it packs dy [N, m]. Packing a fresh right operand costs ≈3 ns per
 * value on wasm (it is read strided), a transpose (wasm-kernels.ts) ≈0.65, so the smaller of the
 * two is packed: (xᵀ @ dy)ᵀ for a LoRA A (m = r ≤ k: dy is [N, r]; GPT-2's [16, 128] × [128, 3072]
 * gradient product took 1.9 ms, most of it packing), dyᵀ @ x for a LoRA B (k = r: x is [N, r]).
 * dx = dy @ w needs no transpose.
 */
export const matMulBT = tf.customGrad(((x: tf.Tensor, w: tf.Tensor, save: tf.GradSaveFunc) => {
  save([x, w]);
  return {
    value: tf.matMul(x as tf.Tensor2D, tf.transpose(w) as tf.Tensor2D),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [sx, sw] = saved as [tf.Tensor2D, tf.Tensor2D];
      const [m, k] = sw.shape;
      const dw = m <= k ? tf.transpose(tf.matMul(tf.transpose(sx) as tf.Tensor2D, dy as tf.Tensor2D)) : tf.matMul(tf.transpose(dy) as tf.Tensor2D, sx);
      return [tf.matMul(dy as tf.Tensor2D, sw), dw];
    },
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor, w: tf.Tensor) => tf.Tensor;

/**
 * x @ W for a frozen weight: only dx flows back. `wIo` is W as [in, out]; `wOi` (optional) is the
 * same weight as [out, in], so the backward pass is a plain product dy @ wOi.
 *
 * Without `wOi`, on wasm and cpu the backward pass is dxᵀ = wIo @ dyᵀ: the weight is the *left*
 * operand there. tfjs-wasm hands a plain 2-D product to XNNPACK as a fully-connected operator whose
 * weights are the right operand, packed into a copy that is cached for as long as that tensor lives.
 * A frozen weight used on the right in forward and again (as wOi) in backward therefore lived in the
 * heap four times (wIo, wOi and two packed copies); on the left it is read in place, so a weight costs
 * two copies (wIo and its forward packing). The price is two transposes of [N, ·] activations per
 * product. Other backends take dy @ wIoᵀ directly.
 */
export function frozenMatMul(x: tf.Tensor2D, wIo: tf.Tensor2D, wOi: tf.Tensor2D | null): tf.Tensor2D {
  const left = ['wasm', 'cpu'].includes(tf.getBackend());
  const f = tf.customGrad(((xx: tf.Tensor) => ({
    value: tf.matMul(xx as tf.Tensor2D, wIo),
    gradFunc: (dy: tf.Tensor) =>
      wOi ? tf.matMul(dy as tf.Tensor2D, wOi)
        : left ? tf.transpose(tf.matMul(wIo, tf.transpose(dy) as tf.Tensor2D))
          : tf.matMul(dy as tf.Tensor2D, wIo, false, true),
  })) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;
  return f(x) as tf.Tensor2D;
}

/**
 * Weighted mean cross entropy of `x` [n, V] logits against int32 targets `tgt` [n], weights `w` [n]
 * (0 = not a target): Σ w·(logSumExp(x) − x[tgt]) / max(Σ w, 1), with its gradient written out —
 * (softmax(x) − onehot(tgt))·w / max(Σ w, 1). tfjs' own autodiff of logSumExp goes through the
 * gradient of Max (an `Equal` over all n × V logits) and of the pick; this is one softmax pass, forward
 * (the softmax is kept for the backward pass in place of the logits). `tgt` and `w` are constants (no gradient).
 */
export function weightedCrossEntropy(x: tf.Tensor2D, tgt: tf.Tensor1D, w: tf.Tensor1D): tf.Scalar {
  const [n, V] = x.shape;
  const f = tf.customGrad(((xx: tf.Tensor, save: tf.GradSaveFunc) => {
    const x2 = xx as tf.Tensor2D;
    // Softmax is one vectorised XNNPACK pass on wasm (an [n, V] exp was ≈7 ns per value); the
    // log-sum-exp follows from it without a second pass over exp: softmax peaks where x does, so
    // max(p) = e^(max(x) − lse), i.e. lse = max(x) − log(max(p)), and max(p) ≥ 1/V never underflows.
    const p = tf.softmax(x2);
    const lse = tf.sub(tf.max(x2, -1), tf.log(tf.max(p, -1))); // [n]
    const flat = tf.add(tf.mul(tf.range(0, n, 1, 'int32'), tf.scalar(V, 'int32')), tf.cast(tgt, 'int32'));
    const picked = tf.gather(tf.reshape(x2, [n * V]), flat); // [n]
    const denom = tf.maximum(tf.sum(w), 1);
    const value = tf.div(tf.sum(tf.mul(tf.sub(lse, picked), w)), denom);
    // softmax kept in place of the logits (same size): the backward pass needs no second exp pass.
    // tgt and w too: the caller's tidy may dispose them before the backward pass runs
    save([p, denom, tgt, w]);
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sp, sden, st, sw] = saved as [tf.Tensor2D, tf.Scalar, tf.Tensor1D, tf.Tensor1D];
        const scale = tf.div(tf.mul(sw, dy), sden); // [n]
        const ti = tf.cast(st, 'int32') as tf.Tensor1D;
        if (hasFusedKernels()) return run(FUSED.xentGrad, { p: sp, tgt: ti, scale }) as tf.Tensor;
        return tf.mul(tf.sub(sp, tf.oneHot(ti, V)), tf.reshape(scale, [n, 1]));
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;
  return f(x) as tf.Scalar;
}

/**
 * Batched products a @ b over leading axes ([..., m, k] @ [..., k, n]) computed as one 2-D product per
 * batch entry. tfjs-wasm runs a rank-3/4 BatchMatMul
 * with batch > 1 outside XNNPACK, in a scalar loop (≈2 GFLOP/s measured); 2-D slices reach XNNPACK
 * (10–30 GFLOP/s) at the price of copying the slices. That pays when every side of the product is at
 * least `minSide` (measured, 1 thread: GPT-2-124M attention, head dim 64, step 3680 → 3186 ms; the small
 * Llama of bench:train, head dim 32, was 1.3× slower sliced while tfjs' Slice/Unpack copied the whole
 * input out of the heap per slice, and is ≈2× faster sliced since they read heap views — wasm-kernels.ts:
 * 1086 / 1170 → 452 / 653 ms alternating under load, 337 ms quiet in bench:compare). Otherwise, or on
 * other backends, this is `mm`. The
 * backward pass uses the same per-slice products.
 */
export const BMM_MIN_SIDE = 32;
export function bmm(a: tf.Tensor, b: tf.Tensor, minSide = BMM_MIN_SIDE): tf.Tensor {
  const [m, k] = a.shape.slice(-2) as [number, number];
  const n = b.shape[b.rank - 1]!;
  const batch = a.shape.slice(0, -2).reduce((p, q) => p * q, 1);
  if (tf.getBackend() !== 'wasm' || batch < 2 || Math.min(m, k, n) < minSide) return mm(a, b);
  const f = tf.customGrad(((x: tf.Tensor, y: tf.Tensor, save: tf.GradSaveFunc) => {
    save([x, y]);
    return {
      value: sliced(x, y),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, sy] = saved as [tf.Tensor, tf.Tensor];
        return [sliced(dy, t2(sy)), sliced(t2(sx), dy)];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor, y: tf.Tensor) => tf.Tensor;
  return f(a, b);
}

/** [..., m, k] @ [..., k, n] as one plain 2-D matMul per batch entry (no gradient of its own). */
function sliced(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  const lead = a.shape.slice(0, -2);
  const [m, k] = a.shape.slice(-2) as [number, number];
  const n = b.shape[b.rank - 1]!;
  const batch = lead.reduce((p, q) => p * q, 1);
  return tf.tidy(() => {
    const as = tf.unstack(tf.reshape(a, [batch, m, k]));
    const bs = tf.unstack(tf.reshape(b, [batch, k, n]));
    const outs = as.map((ai, i) => tf.matMul(ai as tf.Tensor2D, bs[i] as tf.Tensor2D));
    return tf.reshape(tf.stack(outs), [...lead, m, n]);
  });
}

/**
 * a + b where b has a's shape or is a bias over a's last axis, saving nothing for the backward pass:
 * tfjs' Add keeps both inputs alive until the backward pass only to read their shapes, which for a
 * LoRA sum y + (x Aᵀ) Bᵀ holds two extra [N, out] activations per module (Qwen2's MLP: 2.4 MB each
 * at 128 tokens, per projection and layer). `constB`: b needs no gradient (a frozen bias).
 */
export function addNoSave(a: tf.Tensor, b: tf.Tensor, opts: { constB?: boolean } = {}): tf.Tensor {
  const same = a.shape.length === b.shape.length && a.shape.every((d, i) => d === b.shape[i]);
  const bias = !same && b.rank === 1 && b.shape[0] === a.shape[a.rank - 1];
  if (!same && !bias) throw new RangeError(`addNoSave: shapes [${a.shape}] and [${b.shape}] are neither equal nor a bias over the last axis`);
  if (opts.constB) {
    // b is a constant (a frozen bias): no input for it, so no gradient of it is computed (a custom
    // gradient computes every input's gradient, needed or not: GPT-2's frozen biases cost a Sum over
    // [N, out] per linear layer)
    const g = tf.customGrad(((x: tf.Tensor) => ({ value: tf.add(x, b), gradFunc: (dy: tf.Tensor) => dy })) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;
    return g(a);
  }
  const f = tf.customGrad(((x: tf.Tensor, y: tf.Tensor) => ({
    value: tf.add(x, y),
    gradFunc: (dy: tf.Tensor) => [dy, same ? dy : tf.sum(tf.reshape(dy, [-1, a.shape[a.rank - 1]!]), 0)],
  })) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor, y: tf.Tensor) => tf.Tensor;
  return f(a, b);
}

/**
 * SiLU x·σ(x) (autodiff of x·σ(x) keeps σ(x) and both Mul inputs); saving x, and σ(x) where fused:
 * d/dx = σ(x)·(1 + x·(1 − σ(x))).
 */
export function silu(x: tf.Tensor): tf.Tensor {
  const fused = hasFusedKernels() && x.dtype === 'float32';
  const f = tf.customGrad(((xx: tf.Tensor, save: tf.GradSaveFunc) => {
    if (fused) {
      // one pass each way; σ(x) is kept too (one more [N, ff] per layer) so the backward pass needs no exp
      const [y, s] = run(FUSED.silu, { x: xx }) as tf.Tensor[];
      save([xx, s!]);
      return { value: y!, gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => run(FUSED.siluGrad, { x: saved[0]!, s: saved[1]!, dy }) as tf.Tensor };
    }
    save([xx]);
    return {
      value: tf.mul(xx, tf.sigmoid(xx)),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const sx = saved[0]!;
        const s = tf.sigmoid(sx);
        return tf.mul(dy, tf.mul(s, tf.add(1, tf.mul(sx, tf.sub(1, s)))));
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;
  return f(x);
}

/**
 * GPT-2's gelu_new 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) saving x and the tanh (its autodiff keeps
 * about eight [N, ff] intermediates; keeping the tanh spares the backward pass recomputing it). On wasm
 * and cpu one fused kernel each way (shared/backend/fused-kernels.ts); elsewhere stock ops.
 * d/dx = 0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²), t = tanh(…).
 */
export function geluNew(x: tf.Tensor): tf.Tensor {
  const c = Math.sqrt(2 / Math.PI);
  const fused = hasFusedKernels() && x.dtype === 'float32';
  const inner = (v: tf.Tensor) => tf.mul(tf.add(v, tf.mul(tf.mul(tf.mul(v, v), v), 0.044715)), c); // x·x·x: Pow and its gradient cost more
  const f = tf.customGrad(((xx: tf.Tensor, save: tf.GradSaveFunc) => {
    if (fused) {
      const [y, th] = run(FUSED.geluNew, { x: xx }) as tf.Tensor[];
      save([xx, th!]);
      return { value: y!, gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => run(FUSED.geluNewGrad, { x: saved[0]!, t: saved[1]!, dy }) as tf.Tensor };
    }
    const th = tf.tanh(inner(xx));
    save([xx, th]);
    return {
      value: tf.mul(tf.mul(xx, 0.5), tf.add(1, th)),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, t] = saved as [tf.Tensor, tf.Tensor];
        const du = tf.mul(tf.add(1, tf.mul(tf.mul(sx, sx), 3 * 0.044715)), c);
        const d = tf.add(tf.mul(tf.add(1, t), 0.5), tf.mul(tf.mul(tf.mul(sx, 0.5), tf.sub(1, tf.square(t))), du));
        return tf.mul(dy, d);
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;
  return f(x);
}

/**
 * LayerNorm ('layer') or RMSNorm ('rms') of x [N, d] with constant weight (and bias): one fused kernel
 * forward and one backward (gradient for x only), saving x̂ or x and one scale per row. Autodiff of
 * the composed ops ran ≈24 kernels per LayerNorm and kept several [N, d] intermediates. Only where
 * `hasFusedKernels()`; the caller falls back to the family's composed norm elsewhere.
 */
export function fusedNorm(kind: 'layer' | 'rms', x: tf.Tensor2D, w: tf.Tensor1D, b: tf.Tensor1D | null, eps: number): tf.Tensor2D {
  const f = tf.customGrad(((xx: tf.Tensor, save: tf.GradSaveFunc) => {
    if (kind === 'layer') {
      const [y, xh, rs] = run(FUSED.layerNorm, b ? { x: xx, w, b } : { x: xx, w }, { eps }) as tf.Tensor[];
      save([xh!, rs!]);
      return { value: y!, gradFunc: (dy: tf.Tensor, s: tf.Tensor[]) => run(FUSED.layerNormGrad, { dy, xhat: s[0]!, rstd: s[1]!, w }) as tf.Tensor };
    }
    const [y, rs] = run(FUSED.rmsNorm, { x: xx, w }, { eps }) as tf.Tensor[];
    save([xx, rs!]);
    return { value: y!, gradFunc: (dy: tf.Tensor, s: tf.Tensor[]) => run(FUSED.rmsNormGrad, { dy, x: s[0]!, rstd: s[1]!, w }) as tf.Tensor };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;
  return f(x) as tf.Tensor2D;
}
