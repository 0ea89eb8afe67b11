/**
 * A frozen base weight kept outside the tfjs heap (`--base-dtype`): compact in JS memory (fp32, bf16,
 * int8 or nf4; shared/model/frozen/quant.ts), always as [out, in], and materialised as a tensor only
 * for the one product that needs it. `storedMatMul` is x @ W with W materialised for the forward
 * product and again for the backward one, each disposed right after: the wasm heap then holds
 * activations plus one layer's weight, not the model (the wasm32 heap stops at 4 GiB).
 */
import { tf } from '../../backend/index.js';
import { dequantizeInt8, dequantizeNf4, fromBf16, quantizeInt8, quantizeNf4, toBf16, type BaseDtype, type Int8Weight, type Nf4Weight } from './quant.js';

export class StoredWeight {
  readonly out: number;
  readonly in: number;
  readonly dtype: BaseDtype;
  readonly #fp32: Float32Array | null = null;
  readonly #bf16: Uint16Array | null = null;
  readonly #int8: Int8Weight | null = null;
  readonly #nf4: Nf4Weight | null = null;

  /** `w` as [out, in] row-major (it is not kept for dtypes other than fp32). */
  constructor(w: Float32Array, out: number, inDim: number, dtype: BaseDtype) {
    if (w.length !== out * inDim) throw new RangeError(`stored weight: ${w.length} values for [${out}, ${inDim}]`);
    this.out = out; this.in = inDim; this.dtype = dtype;
    if (dtype === 'fp32') this.#fp32 = w;
    else if (dtype === 'bf16') this.#bf16 = toBf16(w);
    else if (dtype === 'int8') this.#int8 = quantizeInt8(w, out, inDim);
    else this.#nf4 = quantizeNf4(w, { doubleQuant: true });
  }

  /** The weight as the model computes with it, [out, in] (dequantized). */
  values(): Float32Array {
    if (this.#fp32) return this.#fp32;
    if (this.#bf16) return fromBf16(this.#bf16);
    if (this.#int8) return dequantizeInt8(this.#int8);
    return dequantizeNf4(this.#nf4!);
  }

  /**
   * Rows [start, end) as [end − start, in] values, dequantized (fp32: a view of the stored values, not to
   * be written to). An LM head or embedding table is kept as rows: a vocabulary chunk or a token's row
   * is one contiguous run. nf4 dequantizes the whole weight first (it is not used for row access).
   */
  rows(start: number, end: number): Float32Array {
    if (!(Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start <= end && end <= this.out)) throw new RangeError(`stored weight rows [${start}, ${end}) outside [0, ${this.out})`);
    const n = this.in;
    if (this.#fp32) return this.#fp32.subarray(start * n, end * n);
    if (this.#bf16) return fromBf16(this.#bf16.subarray(start * n, end * n));
    if (this.#int8) {
      const out = new Float32Array((end - start) * n);
      for (let r = start; r < end; r++) { const s = this.#int8.scale[r]!; for (let c = 0; c < n; c++) out[(r - start) * n + c] = this.#int8.q[r * n + c]! * s; }
      return out;
    }
    return this.values().slice(start * n, end * n);
  }

  /** Rows `ids` gathered into [ids.length, in] (an embedding lookup); every id must lie in [0, out). */
  gatherRows(ids: ArrayLike<number>): Float32Array {
    const n = this.in, out = new Float32Array(ids.length * n);
    const all = this.#fp32 ?? (this.#nf4 ? this.values() : null);
    for (let i = 0; i < ids.length; i++) {
      const r = ids[i]!;
      if (!(Number.isInteger(r) && r >= 0 && r < this.out)) throw new RangeError(`row ${r} outside [0, ${this.out})`);
      out.set(all ? all.subarray(r * n, (r + 1) * n) : this.rows(r, r + 1), i * n);
    }
    return out;
  }

  /** A new tensor [out, in]; the caller disposes it. */
  materializeOi(): tf.Tensor2D {
    return tf.tensor2d(this.values(), [this.out, this.in]);
  }

  /** A new tensor [in, out]; the caller disposes it. Transposed in JS: one heap buffer, not two. */
  materializeIo(): tf.Tensor2D {
    return tf.tensor2d(transposeRows(this.values(), this.out, this.in), [this.in, this.out]);
  }

  /** Bytes held in JS memory. */
  get bytes(): number {
    if (this.#fp32) return this.#fp32.byteLength;
    if (this.#bf16) return this.#bf16.byteLength;
    if (this.#int8) return this.#int8.q.byteLength + this.#int8.scale.byteLength;
    const n = this.#nf4!;
    return n.packed.byteLength + (n.absmax?.byteLength ?? 0) + (n.dq ? n.dq.codes.byteLength + n.dq.scale.byteLength : 0);
  }
}

/** x @ W for a stored frozen weight; only dx flows back (dy @ W as [out, in], a plain product). */
export function storedMatMul(x: tf.Tensor2D, w: StoredWeight): tf.Tensor2D {
  const f = tf.customGrad(((xx: tf.Tensor) => {
    const io = w.materializeIo();
    const value = tf.matMul(xx as tf.Tensor2D, io);
    io.dispose();
    return {
      value,
      gradFunc: (dy: tf.Tensor) => {
        const oi = w.materializeOi();
        const dx = tf.matMul(dy as tf.Tensor2D, oi);
        oi.dispose(); // now, not when the whole backward pass ends
        return dx;
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;
  return f(x) as tf.Tensor2D;
}

/** [rows, cols] → [cols, rows], in 32×32 tiles (a plain double loop strides through memory). */
export function transposeRows(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols), B = 32;
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(rows, r0 + B);
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(cols, c0 + B);
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) out[c * rows + r] = a[r * cols + c]!;
    }
  }
  return out;
}
