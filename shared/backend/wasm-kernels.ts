/**
 * Replacements for tfjs-backend-wasm kernels whose stock versions copy more than they need to.
 * Registered over the stock ones when the wasm backend starts (shared/backend/index.ts); every case
 * they do not cover goes to the stock kernel.
 *
 * - **Identity** copies its input into a new heap buffer. Autodiff saves tensors through Identity, so a
 *   training step held a second copy of every saved activation (GPT-2-124M step: ~600 MiB of heap, 2.7 %
 *   of kernel time). Here it shares the buffer and counts a reference, as the backend's own Reshape
 *   does: tfjs kernels never write into their inputs.
 * - **Slice**, and **Unpack** / **SplitV** built on it: the stock slice starts with `readSync`, which
 *   copies the *whole* input out of the heap, for every slice. Unstacking [12, 128, 64] copied the
 *   tensor 12 times (GPT-2 step: 145 Unpack calls, 5 % of kernel time). Here a slice is copied straight
 *   from a view of the heap, one contiguous run at a time (a slice along the first axis is one run).
 * - **Transpose** that swaps the last two axes (a 2-D transpose, or one per leading index): the stock
 *   kernel walks the output in an order that strides through memory for tall inputs ([3072, 128]: 4.9 ms,
 *   [128, 3072]: 0.8 ms). Here eight input rows are copied at a time (transposeInto): ≈0.25 ms for either.
 *   A permutation that keeps the last axis in place (attention's [B, T, H, d] ↔ [B, H, T, d]) is copied as
 *   runs of that axis. Other permutations go to the stock kernel.
 * - **FedloraRowView** (`rowView`): rows of a tensor as a tensor sharing its memory (the LM head's slices).
 */
import * as tf from '@tensorflow/tfjs-core';

interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType, memoryOffset?: number): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
  incRef(id: tf.DataId): void;
  disposeData(id: tf.DataId, force?: boolean): boolean;
  dataIdMap: { get(id: tf.DataId): { id: number; memoryOffset: number; refCount: number } | undefined; delete(id: tf.DataId): boolean };
  wasm: { tfjs: { disposeData(id: number): void } };
}

/** Kernel name of `rowView` (registered for wasm only). */
export const ROW_VIEW = 'FedloraRowView';

/** Views (tensors whose memory lies inside another tensor's) → the tensor they lie in. */
const viewParents = new Map<tf.DataId, tf.DataId>();
const patchedBackends = new WeakSet<object>();

/**
 * Lets the backend dispose a view: its memory belongs to the parent, so the view unregisters its id
 * (which also drops any XNNPACK operator cached on it) and releases its reference to the parent,
 * where the stock disposeData would free an interior pointer of the parent's allocation.
 */
function patchDisposeForViews(backend: WasmBackendLike): void {
  if (patchedBackends.has(backend)) return;
  const stock = backend.disposeData.bind(backend);
  backend.disposeData = (dataId: tf.DataId, force = false) => {
    const parent = viewParents.get(dataId);
    if (parent === undefined) return stock(dataId, force);
    const data = backend.dataIdMap.get(dataId);
    if (!data) return true;
    data.refCount--;
    if (!force && data.refCount > 0) return false;
    backend.wasm.tfjs.disposeData(data.id);
    backend.dataIdMap.delete(dataId);
    viewParents.delete(dataId);
    // the last holder of the parent's memory: the engine forgets the parent too (its own dispose of
    // the parent's tensor found the memory still held and kept the entry)
    if (backend.disposeData(parent)) (tf.engine() as unknown as { removeDataId(id: tf.DataId, b: unknown): void }).removeDataId(parent, backend);
    return true;
  };
  patchedBackends.add(backend);
}

/**
 * Rows [begin, begin + size) of x (any rank, first axis) as a tensor that shares x's memory: no copy.
 * The parent stays allocated while any view of it lives. For frozen weights used as the right operand
 * of products in slices (the LM head's dx, K split): each view gets its own XNNPACK packing, cached as
 * long as the view lives, in place of one packing of the whole weight. Wasm only.
 */
export function rowView(x: tf.Tensor, begin: number, size: number): tf.Tensor {
  if (tf.getBackend() !== 'wasm') throw new Error('rowView: wasm backend only');
  return tf.engine().runKernel(ROW_VIEW, { x }, { begin, size } as unknown as tf.NamedAttrMap) as tf.Tensor;
}

type KernelArgs = Parameters<tf.KernelFunc>[0];

let installed = false;

export function installWasmKernels(): void {
  if (installed) return;
  const stockIdentity = tf.getKernel(tf.Identity, 'wasm');
  const stockSlice = tf.getKernel(tf.Slice, 'wasm');
  const stockUnpack = tf.getKernel(tf.Unpack, 'wasm');
  const stockSplitV = tf.getKernel(tf.SplitV, 'wasm');
  const stockTranspose = tf.getKernel(tf.Transpose, 'wasm');
  if (!stockIdentity || !stockSlice || !stockUnpack || !stockSplitV || !stockTranspose) return;

  // the stock kernel's setupFunc (binding its wasm function) stays: the fallbacks call the stock kernel
  const replace = (kernelName: string, kernelFunc: tf.KernelFunc) => {
    const stock = tf.getKernel(kernelName, 'wasm');
    tf.unregisterKernel(kernelName, 'wasm');
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc, ...(stock?.setupFunc ? { setupFunc: stock.setupFunc } : {}) });
  };

  if (!tf.getKernel(ROW_VIEW, 'wasm')) {
    tf.registerKernel({
      kernelName: ROW_VIEW, backendName: 'wasm',
      kernelFunc: (args) => {
        const x = args.inputs.x as tf.TensorInfo;
        const { begin, size } = args.attrs as unknown as { begin: number; size: number };
        const rows = x.shape[0] ?? 0;
        if (x.dtype === 'string' || x.dtype === 'complex64') throw new TypeError(`rowView: unsupported dtype ${x.dtype}`);
        if (!Number.isInteger(begin) || !Number.isInteger(size) || begin < 0 || size < 1 || begin + size > rows) {
          throw new RangeError(`rowView: rows [${begin}, ${begin + size}) outside [0, ${rows})`);
        }
        const backend = args.backend as unknown as WasmBackendLike;
        patchDisposeForViews(backend);
        const parent = backend.dataIdMap.get(x.dataId)!;
        const rowBytes = tf.util.sizeFromShape(x.shape.slice(1)) * tf.util.bytesPerElement(x.dtype);
        const out = backend.makeOutput([size, ...x.shape.slice(1)], x.dtype, parent.memoryOffset + begin * rowBytes);
        // the view holds a reference to the parent's memory (a view of a view holds the root)
        const root = viewParents.get(x.dataId) ?? x.dataId;
        backend.incRef(root);
        viewParents.set(out.dataId, root);
        return out;
      },
    });
  }

  replace(tf.Identity, (args) => {
    const x = args.inputs.x as tf.TensorInfo;
    if (x.dtype === 'string') return stockIdentity.kernelFunc(args);
    (args.backend as unknown as WasmBackendLike).incRef(x.dataId);
    return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
  });

  /**
   * x[begin : begin + size], copied from a view of the heap in runs: the innermost partially sliced
   * axis and every whole axis after it form one contiguous run, repeated over the outer indices.
   */
  const slice = (x: tf.TensorInfo, begin: number[], size: number[], args: KernelArgs): tf.TensorInfo => {
    if (x.dtype === 'string') return stockSlice.kernelFunc({ ...args, inputs: { x }, attrs: { begin, size } }) as tf.TensorInfo;
    const [b, s] = tf.slice_util.parseSliceParams(x as unknown as tf.Tensor, begin, size) as [number[], number[]];
    const backend = args.backend as unknown as WasmBackendLike;
    const strides = tf.util.computeStrides(x.shape);
    const n = tf.util.sizeFromShape(s);
    const out = backend.makeOutput(s, x.dtype);
    if (n === 0) return out;
    // views after makeOutput: growing the heap there detaches views taken before
    const src = backend.typedArrayFromHeap(x);
    const dst = backend.typedArrayFromHeap(out);
    const rank = x.shape.length;
    let k = rank - 1;
    while (k >= 0 && b[k] === 0 && s[k] === x.shape[k]) k--;
    if (k < 0) { dst.set(src.subarray(0, n)); return out; }
    const run = s.slice(k).reduce((p, q) => p * q, 1);
    const base = b.reduce((acc, v, d) => acc + v * (d < rank - 1 ? strides[d]! : 1), 0);
    const outer = s.slice(0, k);
    const idx = new Array<number>(k).fill(0);
    for (let o = 0; o * run < n; o++) {
      let off = base;
      for (let d = 0; d < k; d++) off += idx[d]! * strides[d]!;
      copyRun(src, off, dst, o * run, run);
      for (let d = k - 1; d >= 0; d--) { if (++idx[d]! < outer[d]!) break; idx[d] = 0; }
    }
    return out;
  };

  replace(tf.Slice, (args) => {
    const { begin, size } = args.attrs as unknown as { begin: number | number[]; size: number | number[] };
    const x = args.inputs.x as tf.TensorInfo;
    return slice(x, typeof begin === 'number' ? [begin] : begin, typeof size === 'number' ? [size] : size, args);
  });

  replace(tf.Unpack, (args) => {
    const value = args.inputs.value as tf.TensorInfo;
    const rank = value.shape.length;
    let axis = (args.attrs as unknown as { axis: number }).axis;
    if (axis < 0) axis += rank;
    const outShape = value.shape.filter((_, i) => i !== axis);
    const begin = new Array<number>(rank).fill(0);
    const size = value.shape.slice();
    size[axis] = 1;
    const outs: tf.TensorInfo[] = [];
    for (let i = 0; i < value.shape[axis]!; i++) {
      begin[axis] = i;
      const o = slice(value, begin.slice(), size, args);
      outs.push({ dataId: o.dataId, dtype: o.dtype, shape: outShape });
    }
    return outs;
  });

  replace(tf.SplitV, (args) => {
    const x = args.inputs.x as tf.TensorInfo;
    const { numOrSizeSplits, axis } = args.attrs as unknown as { numOrSizeSplits: number | number[]; axis: number };
    const ax = tf.util.parseAxisParam(axis, x.shape)[0]!;
    const sizes = tf.backend_util.prepareSplitSize(x as unknown as tf.Tensor, numOrSizeSplits, ax);
    const begin = new Array<number>(x.shape.length).fill(0);
    return sizes.map((s) => {
      const size = x.shape.slice();
      size[ax] = s;
      const o = slice(x, begin.slice(), size, args);
      begin[ax] = begin[ax]! + s;
      return o;
    });
  });
  replace(tf.Transpose, (args) => {
    const x = args.inputs.x as tf.TensorInfo;
    const perm = (args.attrs as unknown as { perm: number[] }).perm;
    const rank = x.shape.length;
    const swapsLastTwo = rank >= 2 && perm.length === rank && perm.every((p, i) => (i < rank - 2 ? p === i : p === (i === rank - 2 ? rank - 1 : rank - 2)));
    const keepsLast = rank >= 2 && perm.length === rank && perm[rank - 1] === rank - 1;
    if ((!swapsLastTwo && !keepsLast) || x.dtype === 'string' || x.dtype === 'complex64') return stockTranspose.kernelFunc(args);
    const backend = args.backend as unknown as WasmBackendLike;
    if (keepsLast) {
      // the innermost axis stays: the output is runs of it, each a contiguous run of the input
      const outShape = perm.map((p) => x.shape[p]!);
      const out = backend.makeOutput(outShape, x.dtype);
      const total = tf.util.sizeFromShape(x.shape);
      if (total === 0) return out;
      const src = backend.typedArrayFromHeap(x);
      const dst = backend.typedArrayFromHeap(out);
      const inStrides = [...tf.util.computeStrides(x.shape), 1];
      const step = perm.slice(0, -1).map((p) => inStrides[p]!); // input stride of each outer output axis
      const outer = outShape.slice(0, -1);
      const run = x.shape[rank - 1]!;
      const idx = new Array<number>(outer.length).fill(0);
      for (let o = 0; o * run < total; o++) {
        let off = 0;
        for (let d = 0; d < outer.length; d++) off += idx[d]! * step[d]!;
        copyRun(src, off, dst, o * run, run);
        for (let d = outer.length - 1; d >= 0; d--) { if (++idx[d]! < outer[d]!) break; idx[d] = 0; }
      }
      return out;
    }
    const r = x.shape[rank - 2]!, c = x.shape[rank - 1]!;
    const lead = x.shape.slice(0, -2);
    const batch = lead.reduce((p, q) => p * q, 1);
    const out = backend.makeOutput([...lead, c, r], x.dtype);
    if (batch * r * c === 0) return out;
    const src = backend.typedArrayFromHeap(x);
    const dst = backend.typedArrayFromHeap(out);
    transposeTiles(src, dst, batch, r, c);
    return out;
  });
  installed = true;
}

/** dst[b][j][i] = src[b][i][j] for b < batch, i < r, j < c (see transposeInto). */
export function transposeTiles(src: ArrayLike<number>, dst: { [i: number]: number }, batch: number, r: number, c: number): void {
  for (let b = 0; b < batch; b++) transposeInto(src, b * r * c, r, c, dst, b * r * c, r);
}

/**
 * dst[dOff + j·stride + i] = src[sOff + i·c + j] for i < r, j < c: the transpose of an [r, c] block,
 * written into rows of length `stride` (r for a plain transpose; wider to lay blocks side by side).
 * Eight input rows at a time over 64-column strips: each output row gets 8 consecutive values per
 * column and the 8 input rows are read in step (measured in Node, ns per value: [1024, 128] 0.66,
 * [128, 3072] 0.65, [50257, 128] 1.1, against 1.2–2.7 for 64 × 64 or 32 × 32 tiles).
 */
export function transposeInto(src: ArrayLike<number>, sOff: number, r: number, c: number, dst: { [i: number]: number }, dOff: number, stride: number): void {
  for (let c0 = 0; c0 < c; c0 += 64) {
    const c1 = Math.min(c, c0 + 64);
    let i = 0;
    for (; i + 8 <= r; i += 8) {
      const a = sOff + i * c;
      for (let j = c0; j < c1; j++) {
        const w = dOff + j * stride + i, q = a + j;
        dst[w] = src[q]!; dst[w + 1] = src[q + c]!; dst[w + 2] = src[q + 2 * c]!; dst[w + 3] = src[q + 3 * c]!;
        dst[w + 4] = src[q + 4 * c]!; dst[w + 5] = src[q + 5 * c]!; dst[w + 6] = src[q + 6 * c]!; dst[w + 7] = src[q + 7 * c]!;
      }
    }
    for (; i < r; i++) {
      const a = sOff + i * c;
      for (let j = c0; j < c1; j++) dst[dOff + j * stride + i] = src[a + j]!;
    }
  }
}

/** dst[d .. d + n) = src[s .. s + n): a plain loop for short runs (a subarray per run costs more than the copy). */
export function copyRun(src: Float32Array | Int32Array | Uint8Array, s: number, dst: Float32Array | Int32Array | Uint8Array, d: number, n: number): void {
  if (n >= 64) { dst.set(src.subarray(s, s + n), d); return; }
  for (let k = 0; k < n; k++) dst[d + k] = src[s + k]!;
}
