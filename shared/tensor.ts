/** A dense float32 tensor held outside tfjs: what travels, what is stored, what aggregation sees. */
export interface Tensor32 {
  shape: number[];
  data: Float32Array;
}

export type TensorMap = Map<string, Tensor32>;

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function tensor32(shape: number[], data?: Float32Array): Tensor32 {
  const n = numel(shape);
  if (data && data.length !== n) throw new RangeError(`tensor32: shape [${shape}] needs ${n} values, got ${data.length}`);
  return { shape: [...shape], data: data ?? new Float32Array(n) };
}

export function cloneTensor(t: Tensor32): Tensor32 {
  return { shape: [...t.shape], data: new Float32Array(t.data) };
}

export function cloneTensorMap(m: TensorMap): TensorMap {
  return new Map([...m].map(([k, v]) => [k, cloneTensor(v)]));
}
