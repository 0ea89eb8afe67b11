/**
 * Fused element-wise kernels for the wasm and cpu backends, written in JS over the tensors' memory
 * (a view of the wasm heap, or the cpu backend's arrays), computed in double precision and stored as
 * float32.
 *
 * Each replaces a chain of stock kernels that each walk the whole tensor once (GPT-2-124M step on
 * 2-thread wasm: `tanh` alone was 83 ms at ≈18 ns per value, and a GELU forward plus backward was
 * about 17 kernel calls per layer; an autodiff LayerNorm about 24). Here each is one pass forward and
 * one backward, saving only what the backward pass needs.
 *
 * - `FedloraGeluNew`: x → [y, t] with t = tanh(√(2/π)(x + 0.044715x³)), y = ½x(1 + t);
 *   `FedloraGeluNewGrad`: (x, t, dy) → dx.
 * - `FedloraSilu`: x → [x·σ(x), σ(x)]; `FedloraSiluGrad`: (x, s = σ(x), dy) → dy·s(1 + x(1 − s)) (the
 *   saved σ spares the backward pass a second exp and division: ≈10 → ≈1 ns per value).
 * - `FedloraLayerNorm`: (x [N, d], w [d], b [d]?) → [y, x̂, rstd [N]], x̂ = (x − mean)·rstd,
 *   rstd = 1/√(var + eps), y = x̂·w + b; `FedloraLayerNormGrad`: (dy, x̂, rstd, w) → dx.
 * - `FedloraRmsNorm`: (x, w) → [y, rstd], y = x·rstd·w, rstd = 1/√(mean(x²) + eps);
 *   `FedloraRmsNormGrad`: (dy, x, rstd, w) → dx.
 * - `FedloraXentGrad`: (p [n, V], tgt [n] int32, scale [n]) → (p − onehot(tgt))·scale, the gradient of
 *   a weighted cross entropy from its softmax (stock: OneHot, Sub and Mul, three [n, V] passes).
 * - `FedloraConcatT`: (x0 [r0, c], x1 [r1, c], …) → [c, r0 + r1 + …], the transposes of the parts side
 *   by side (concat(xᵢ, 0)ᵀ): an LM head computed per vocabulary slice as Wᵢ xᵀ becomes the logits in
 *   one pass (stock: Concat, then Transpose, each a fresh [c, V] buffer).
 * - `FedloraAdamW`: (p, g, m, v) → [p′, m′, v′], one AdamW update with attrs coef (gradient scale),
 *   b1, b2, bc1, bc2 (bias corrections), eps, lr, decay (p's multiplier, 1 − lr·wd): 14 stock kernel
 *   calls per trained tensor, and a LoRA step trains 2 per module (GPT-2-124M: 144 tensors).
 * - `FedloraSumSquares`: (x0, x1, …) → Σ x² over all of them, a scalar (the gradient norm).
 *
 * Other backends (webgpu, tensorflow) do not get these kernels: shared/model/ops.ts composes the same
 * functions from stock ops there (`hasFusedKernels`).
 */
import * as tf from '@tensorflow/tfjs-core';
import { transposeInto } from './wasm-kernels.js';

export const FUSED = {
  geluNew: 'FedloraGeluNew', geluNewGrad: 'FedloraGeluNewGrad',
  silu: 'FedloraSilu', siluGrad: 'FedloraSiluGrad',
  layerNorm: 'FedloraLayerNorm', layerNormGrad: 'FedloraLayerNormGrad',
  rmsNorm: 'FedloraRmsNorm', rmsNormGrad: 'FedloraRmsNormGrad',
  xentGrad: 'FedloraXentGrad',
  concatT: 'FedloraConcatT',
  adamW: 'FedloraAdamW', sumSquares: 'FedloraSumSquares',
} as const;

const BACKENDS = ['wasm', 'cpu'] as const;

let enabled = process.env.FEDLORA_FUSED !== '0';

/**
 * Turns the fused kernels' use on or off (default on; `FEDLORA_FUSED=0` starts with them off). Off, wasm
 * and cpu compose the same functions from stock ops, as webgpu and tfjs-node do: the tests run that path
 * on the CPU backends this way.
 */
export function setFusedKernels(on: boolean): void {
  enabled = on;
}

/** Runs one of the FUSED kernels (through the engine, so its outputs are tracked tensors). */
export function runFused(name: string, inputs: Record<string, tf.Tensor>, attrs: Record<string, unknown> = {}): tf.Tensor | tf.Tensor[] {
  return tf.engine().runKernel(name, inputs as tf.NamedTensorMap, attrs as unknown as tf.NamedAttrMap);
}

/** The inputs x0, x1, … of a kernel that takes any number of them (FedloraConcatT, FedloraSumSquares). */
export function numbered(ts: readonly tf.Tensor[]): Record<string, tf.Tensor> {
  const out: Record<string, tf.Tensor> = {};
  ts.forEach((t, i) => { out[`x${i}`] = t; });
  return out;
}

/** Whether the fused kernels are in use for the active backend (registered there, and not turned off). */
export function hasFusedKernels(): boolean {
  return enabled && tf.getKernel(FUSED.geluNew, tf.getBackend()) !== undefined;
}

// ---- e^v in double precision, fast: 2^k · p(r), v = k·ln2 + r, |r| ≤ ln2/2, p = Taylor to r⁷ ----
// (relative error < 1e-8, far below float32's 6e-8; Math.exp measured ≈18 ns per value here, this ≈7)
const LOG2E = Math.LOG2E, LN2 = Math.LN2;
const ROUND = 6755399441055744; // 1.5·2⁵²: (v + ROUND) − ROUND rounds v to the nearest integer
const EXP_LIMIT = 100; // callers clamp |v| ≤ EXP_LIMIT
const K_MAX = 150; // ≥ EXP_LIMIT·log2(e) + 1
const POW2 = new Float64Array(2 * K_MAX + 1);
for (let k = -K_MAX; k <= K_MAX; k++) POW2[k + K_MAX] = 2 ** k;

/** e^v for |v| ≤ 100. */
export function fastExp(v: number): number {
  const k = (v * LOG2E + ROUND) - ROUND;
  const r = v - k * LN2;
  const p = 1 + r * (1 + r * (0.5 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (1 / 5040)))))));
  return p * POW2[k + K_MAX]!;
}

const clampExp = (v: number) => (v > EXP_LIMIT ? EXP_LIMIT : v < -EXP_LIMIT ? -EXP_LIMIT : v);

const GELU_C = Math.sqrt(2 / Math.PI);

type F32 = Float32Array; // int32 inputs (intInputs) arrive as Int32Array
interface WasmLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array;
}
interface CpuLike {
  data: { get(id: tf.DataId): { values: unknown } };
  makeTensorInfo(shape: number[], dtype: tf.DataType, values?: Float32Array): tf.TensorInfo;
}

/**
 * A kernel function from a body that reads float32 inputs and writes float32 outputs of the given
 * shapes. On wasm the outputs are made first: growing the heap detaches views taken earlier.
 */
function kernel(
  backendName: typeof BACKENDS[number],
  outShapes: (ins: tf.TensorInfo[], attrs: Record<string, unknown>) => number[][],
  body: (ins: F32[], outs: F32[], shapes: number[][], attrs: Record<string, unknown>) => void,
  inputNames: string[],
  intInputs: string[] = [],
): tf.KernelFunc {
  return (args) => {
    const attrs = (args.attrs ?? {}) as Record<string, unknown>;
    const infos: tf.TensorInfo[] = [];
    for (const name of inputNames) {
      const t = args.inputs[name] as tf.TensorInfo | undefined;
      if (t === undefined) continue; // an optional input (LayerNorm's bias)
      const ok = t.dtype === 'float32' || (t.dtype === 'int32' && intInputs.includes(name));
      if (!ok) throw new TypeError(`fused kernel: input ${name} must be float32${intInputs.includes(name) ? ' or int32' : ''}, got ${t.dtype}`);
      infos.push(t);
    }
    const shapes = outShapes(infos, attrs);
    const inShapes = infos.map((t) => t.shape);
    if (backendName === 'wasm') {
      const b = args.backend as unknown as WasmLike;
      const outs = shapes.map((s) => b.makeOutput(s, 'float32'));
      body(infos.map((t) => b.typedArrayFromHeap(t)), outs.map((o) => b.typedArrayFromHeap(o)), inShapes, attrs);
      return outs.length === 1 ? outs[0]! : outs;
    }
    const b = args.backend as unknown as CpuLike;
    const vals = shapes.map((s) => new Float32Array(tf.util.sizeFromShape(s)));
    body(infos.map((t) => b.data.get(t.dataId).values as F32), vals, inShapes, attrs);
    const outs = shapes.map((s, i) => b.makeTensorInfo(s, 'float32', vals[i]));
    return outs.length === 1 ? outs[0]! : outs;
  };
}

const same = (ins: tf.TensorInfo[]) => [ins[0]!.shape.slice()];

function geluNew([x]: F32[], [y, t]: F32[]): void {
  // fastExp inlined (a call per value measured ≈25 % slower here)
  const c2 = 2 * GELU_C, c3 = 2 * GELU_C * 0.044715;
  const xs = x!, ys = y!, ts = t!;
  for (let i = 0; i < xs.length; i++) {
    const v = xs[i]!;
    let u = v * (c2 + c3 * v * v);
    u = u > 40 ? 40 : u < -40 ? -40 : u;
    const k = (u * LOG2E + ROUND) - ROUND;
    const r = u - k * LN2;
    const e = (1 + r * (1 + r * (0.5 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (1 / 5040)))))))) * POW2[k + K_MAX]!;
    const th = 1 - 2 / (e + 1);
    ts[i] = th;
    ys[i] = 0.5 * v * (1 + th);
  }
}

function geluNewGrad([x, t, dy]: F32[], [dx]: F32[]): void {
  for (let i = 0; i < x!.length; i++) {
    const v = x![i]!, th = t![i]!;
    dx![i] = dy![i]! * (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * GELU_C * (1 + 3 * 0.044715 * v * v));
  }
}

function silu([x]: F32[], [y, sg]: F32[]): void {
  const xs = x!, ys = y!, ss = sg!;
  for (let i = 0; i < xs.length; i++) {
    const v = xs[i]!;
    const u = v > EXP_LIMIT ? -EXP_LIMIT : v < -EXP_LIMIT ? EXP_LIMIT : -v; // fastExp(−v), inlined
    const k = (u * LOG2E + ROUND) - ROUND;
    const r = u - k * LN2;
    const e = (1 + r * (1 + r * (0.5 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (1 / 5040)))))))) * POW2[k + K_MAX]!;
    const s = 1 / (1 + e);
    ss[i] = s;
    ys[i] = v * s;
  }
}

function siluGrad([x, sg, dy]: F32[], [dx]: F32[]): void {
  for (let i = 0; i < x!.length; i++) {
    const v = x![i]!, s = sg![i]!;
    dx![i] = dy![i]! * s * (1 + v * (1 - s));
  }
}

function layerNorm(ins: F32[], [y, xh, rs]: F32[], shapes: number[][], attrs: Record<string, unknown>): void {
  const [x, w, b] = ins as [F32, F32, F32 | undefined];
  const d = shapes[0]![shapes[0]!.length - 1]!, n = x.length / d, eps = attrs.eps as number;
  for (let r = 0; r < n; r++) {
    const o = r * d;
    let s = 0;
    for (let j = 0; j < d; j++) s += x[o + j]!;
    const mean = s / d;
    let q = 0;
    for (let j = 0; j < d; j++) { const c = x[o + j]! - mean; q += c * c; }
    const rstd = 1 / Math.sqrt(q / d + eps);
    rs![r] = rstd;
    for (let j = 0; j < d; j++) {
      const h = (x[o + j]! - mean) * rstd;
      xh![o + j] = h;
      y![o + j] = b ? h * w[j]! + b[j]! : h * w[j]!;
    }
  }
}

function layerNormGrad([dy, xh, rs, w]: F32[], [dx]: F32[], shapes: number[][]): void {
  const d = shapes[0]![shapes[0]!.length - 1]!, n = dy!.length / d;
  for (let r = 0; r < n; r++) {
    const o = r * d;
    let m1 = 0, m2 = 0;
    for (let j = 0; j < d; j++) { const g = dy![o + j]! * w![j]!; m1 += g; m2 += g * xh![o + j]!; }
    m1 /= d; m2 /= d;
    const rstd = rs![r]!;
    for (let j = 0; j < d; j++) dx![o + j] = rstd * (dy![o + j]! * w![j]! - m1 - xh![o + j]! * m2);
  }
}

function rmsNorm([x, w]: F32[], [y, rs]: F32[], shapes: number[][], attrs: Record<string, unknown>): void {
  const d = shapes[0]![shapes[0]!.length - 1]!, n = x!.length / d, eps = attrs.eps as number;
  for (let r = 0; r < n; r++) {
    const o = r * d;
    let q = 0;
    for (let j = 0; j < d; j++) { const v = x![o + j]!; q += v * v; }
    const rstd = 1 / Math.sqrt(q / d + eps);
    rs![r] = rstd;
    // HF: weight · (x · rsqrt(mean(x²) + eps)), the product rounded to float32 before the weight
    for (let j = 0; j < d; j++) y![o + j] = w![j]! * Math.fround(x![o + j]! * rstd);
  }
}

function rmsNormGrad([dy, x, rs, w]: F32[], [dx]: F32[], shapes: number[][]): void {
  const d = shapes[0]![shapes[0]!.length - 1]!, n = dy!.length / d;
  for (let r = 0; r < n; r++) {
    const o = r * d;
    let m = 0;
    for (let j = 0; j < d; j++) m += dy![o + j]! * w![j]! * x![o + j]!;
    m /= d;
    const rstd = rs![r]!, c = rstd * rstd * rstd * m;
    for (let j = 0; j < d; j++) dx![o + j] = rstd * dy![o + j]! * w![j]! - c * x![o + j]!;
  }
}

function xentGrad([p, tgt, sc]: F32[], [dx]: F32[], shapes: number[][]): void {
  const V = shapes[0]![1]!, n = shapes[0]![0]!;
  for (let r = 0; r < n; r++) {
    const o = r * V, s = sc![r]!;
    for (let j = 0; j < V; j++) dx![o + j] = p![o + j]! * s;
    const t = tgt![r]!;
    if (t >= 0 && t < V) dx![o + t] = (p![o + t]! - 1) * s;
  }
}

/** out[n, off + j] = part[j, n] for each part [r, c] at column offset off (transposeInto). */
function concatT(parts: F32[], out: F32, partRows: number[], c: number): void {
  const total = partRows.reduce((a, b) => a + b, 0);
  let off = 0;
  for (let p = 0; p < parts.length; p++) {
    transposeInto(parts[p]!, 0, partRows[p]!, c, out, off, total);
    off += partRows[p]!;
  }
}

/** The inputs x0, x1, … of a kernel that takes any number of them, in order. */
function numberedInputs(args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo[] {
  const infos: tf.TensorInfo[] = [];
  for (let i = 0; args.inputs[`x${i}`] !== undefined; i++) infos.push(args.inputs[`x${i}`] as tf.TensorInfo);
  return infos;
}

function concatTKernel(backendName: typeof BACKENDS[number]): tf.KernelFunc {
  return (args) => {
    const infos = numberedInputs(args);
    if (infos.length === 0) throw new RangeError('concatT: no parts');
    const c = infos[0]!.shape[1]!;
    for (const t of infos) {
      if (t.dtype !== 'float32' || t.shape.length !== 2 || t.shape[1] !== c) throw new TypeError(`concatT: float32 [r, ${c}] parts only, got ${t.dtype} [${t.shape}]`);
    }
    const partRows = infos.map((t) => t.shape[0]!);
    const shape = [c, partRows.reduce((a, b) => a + b, 0)];
    if (backendName === 'wasm') {
      const b = args.backend as unknown as WasmLike;
      const out = b.makeOutput(shape, 'float32');
      concatT(infos.map((t) => b.typedArrayFromHeap(t)), b.typedArrayFromHeap(out), partRows, c);
      return out;
    }
    const b = args.backend as unknown as CpuLike;
    const vals = new Float32Array(shape[0]! * shape[1]!);
    concatT(infos.map((t) => b.data.get(t.dataId).values as F32), vals, partRows, c);
    return b.makeTensorInfo(shape, 'float32', vals);
  };
}

function adamW([p, g, m, v]: F32[], [po, mo, vo]: F32[], _s: number[][], a: Record<string, unknown>): void {
  const { coef, b1, b2, bc1, bc2, eps, lr, decay } = a as Record<string, number>;
  for (let i = 0; i < p!.length; i++) {
    const gi = g![i]! * coef!;
    const mi = b1! * m![i]! + (1 - b1!) * gi;
    const vi = b2! * v![i]! + (1 - b2!) * gi * gi;
    mo![i] = mi;
    vo![i] = vi;
    po![i] = p![i]! * decay! - lr! * ((mi / bc1!) / (Math.sqrt(vi / bc2!) + eps!));
  }
}

function sumSquaresKernel(backendName: typeof BACKENDS[number]): tf.KernelFunc {
  return (args) => {
    const infos = numberedInputs(args);
    for (const t of infos) if (t.dtype !== 'float32') throw new TypeError(`sumSquares: float32 inputs only, got ${t.dtype}`);
    const sum = (arrays: F32[]) => { let s = 0; for (const a of arrays) for (let i = 0; i < a.length; i++) s += a[i]! * a[i]!; return s; };
    if (backendName === 'wasm') {
      const b = args.backend as unknown as WasmLike;
      const out = b.makeOutput([], 'float32');
      const s = sum(infos.map((t) => b.typedArrayFromHeap(t)));
      b.typedArrayFromHeap(out)[0] = s;
      return out;
    }
    const b = args.backend as unknown as CpuLike;
    return b.makeTensorInfo([], 'float32', Float32Array.of(sum(infos.map((t) => b.data.get(t.dataId).values as F32))));
  };
}

const rows = (ins: tf.TensorInfo[]) => [ins[0]!.shape.slice(0, -1)];

const installedFor = new Set<string>();

/** Registers the fused kernels for the wasm and cpu backends (idempotent; a backend not loaded is skipped). */
export function installFusedKernels(): void {
  for (const be of BACKENDS) {
    if (installedFor.has(be)) continue;
    const specs: Array<[string, string[], (ins: tf.TensorInfo[], a: Record<string, unknown>) => number[][], (ins: F32[], outs: F32[], s: number[][], a: Record<string, unknown>) => void, string[]?]> = [
      [FUSED.geluNew, ['x'], (ins) => [ins[0]!.shape.slice(), ins[0]!.shape.slice()], geluNew],
      [FUSED.geluNewGrad, ['x', 't', 'dy'], same, geluNewGrad],
      [FUSED.silu, ['x'], (ins) => [ins[0]!.shape.slice(), ins[0]!.shape.slice()], silu],
      [FUSED.siluGrad, ['x', 's', 'dy'], same, siluGrad],
      [FUSED.layerNorm, ['x', 'w', 'b'], (ins) => [ins[0]!.shape.slice(), ins[0]!.shape.slice(), ...rows(ins)], layerNorm],
      [FUSED.layerNormGrad, ['dy', 'xhat', 'rstd', 'w'], same, layerNormGrad],
      [FUSED.rmsNorm, ['x', 'w'], (ins) => [ins[0]!.shape.slice(), ...rows(ins)], rmsNorm],
      [FUSED.rmsNormGrad, ['dy', 'x', 'rstd', 'w'], same, rmsNormGrad],
      [FUSED.xentGrad, ['p', 'tgt', 'scale'], same, xentGrad, ['tgt']],
      [FUSED.adamW, ['p', 'g', 'm', 'v'], (ins) => [0, 1, 2].map(() => ins[0]!.shape.slice()), adamW],
    ];
    if (!tf.getKernel(FUSED.concatT, be)) tf.registerKernel({ kernelName: FUSED.concatT, backendName: be, kernelFunc: concatTKernel(be) });
    if (!tf.getKernel(FUSED.sumSquares, be)) tf.registerKernel({ kernelName: FUSED.sumSquares, backendName: be, kernelFunc: sumSquaresKernel(be) });
    for (const [name, inputs, shapes, body, ints] of specs) {
      if (tf.getKernel(name, be)) continue;
      tf.registerKernel({ kernelName: name, backendName: be, kernelFunc: kernel(be, shapes, body, inputs, ints) });
    }
    installedFor.add(be);
  }
}
