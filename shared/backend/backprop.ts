/**
 * Backpropagation that lets go of memory as it goes.
 *
 * tfjs-core's `engine.gradients` (behind tf.grads, tf.valueAndGrads, tf.variableGrads and every
 * optimizer) walks the tape backward and keeps, until the whole backward pass ends, the gradient of
 * every intermediate tensor and every tensor a kernel saved for its gradient. For a GPT-2-124M LoRA
 * step at 128 tokens that pile was ≈1 GiB of the wasm heap (23 [128, 3072] gradients per layer, and
 * the attention probabilities, logits and their gradients), more than the model's own weights.
 *
 * This replaces that method on the engine with a walk that computes exactly the same gradients with
 * the same kernels in the same order, and frees
 * - a tensor's accumulated gradient once the node that produced the tensor has used it (each tensor
 *   has one producer, and the walk reaches it after every consumer), unless it is one of the `xs`
 *   whose gradients are returned or the caller's `dy`;
 * - a node's saved tensors once its gradient has run (tfjs saves a private clone per node).
 *
 * A gradient function may return a tensor that already existed (its `dy`, an input, a saved tensor):
 * such a result is cloned (a shared buffer with a reference count, not a copy, on wasm and cpu) so
 * that freeing one holder never frees another's. Higher-order use (a backward pass inside an
 * enclosing tape) keeps tfjs' behaviour of freeing nothing early.
 */
import * as tf from '@tensorflow/tfjs-core';

interface TapeNode {
  id: number;
  kernelName: string;
  outputs: tf.Tensor[];
  inputs: Record<string, tf.Tensor>;
  gradient?: (dys: Array<tf.Tensor | null>) => Record<string, () => tf.Tensor>;
  saved?: tf.Tensor[];
}

type Gradients = (f: () => tf.Tensor, xs: tf.Tensor[], dy?: tf.Tensor, allowNoGradients?: boolean) => { value: tf.Tensor; grads: tf.Tensor[] };

interface EngineLike {
  state: { activeTape: TapeNode[] | null; gradientDepth: number };
  scopedRun<T>(start: () => void, end: () => void, f: () => T): T;
  startTape(): void;
  endTape(): void;
  tidy<T extends tf.TensorContainer>(name: string, f: () => T): T;
  gradients: Gradients;
}

let stock: Gradients | null = null;

/** The tape's nodes on a path from some x to y, in tape order, each with only the inputs that depend on an x. */
export function nodesBetween(tape: readonly TapeNode[], xs: readonly tf.Tensor[], y: tf.Tensor): TapeNode[] {
  const fromX = new Set(xs.map((x) => x.id));
  const nodeFromX = new Set<number>();
  for (const node of tape) {
    if (Object.values(node.inputs).some((t) => fromX.has(t.id))) {
      nodeFromX.add(node.id);
      for (const o of node.outputs) fromX.add(o.id);
    }
  }
  const toY = new Set([y.id]);
  const nodeToY = new Set<number>();
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i]!;
    if (node.outputs.some((o) => toY.has(o.id))) {
      nodeToY.add(node.id);
      for (const t of Object.values(node.inputs)) toY.add(t.id);
    }
  }
  const out: TapeNode[] = [];
  for (const node of tape) {
    if (!nodeFromX.has(node.id) || !nodeToY.has(node.id)) continue;
    const inputs: Record<string, tf.Tensor> = {};
    for (const [name, t] of Object.entries(node.inputs)) if (fromX.has(t.id)) inputs[name] = t;
    out.push({ ...node, inputs });
  }
  return out;
}

function leanGradients(this: EngineLike, f: () => tf.Tensor, xs: tf.Tensor[], dy?: tf.Tensor, allowNoGradients = false): { value: tf.Tensor; grads: tf.Tensor[] } {
  if (xs.length === 0) throw new Error('gradients() received an empty list of xs.');
  if (dy != null && dy.dtype !== 'float32') throw new Error(`dy must have 'float32' dtype, but has '${dy.dtype}'`);
  const y = this.scopedRun(() => this.startTape(), () => this.endTape(), () => this.tidy('forward', f));
  if (!(y instanceof tf.Tensor)) throw new Error('The result y returned by f() must be a tensor.');
  const tape = this.state.activeTape ?? [];
  const nodes = nodesBetween(tape, xs, y);
  if (!allowNoGradients && nodes.length === 0) {
    throw new Error('Cannot compute gradient of y=f(x) with respect to x. Make sure that the f you passed encloses all operations that lead from x to y.');
  }
  // nested inside another tape (higher-order gradients): tfjs frees nothing, neither do we
  const free = this.state.gradientDepth === 0;
  const ids = (this as unknown as { constructor: { nextTensorId?: number } }).constructor;
  return this.tidy('backward', () => {
    const grads = new Map<number, tf.Tensor>();
    grads.set(y.id, dy ?? tf.ones(y.shape));
    const keep = new Set(xs.map((x) => x.id));
    if (dy != null) keep.add(y.id);
    for (let i = nodes.length - 1; i >= 0; i--) {
      const node = nodes[i]!;
      const dys = node.outputs.map((o) => grads.get(o.id) ?? null);
      if (node.gradient == null) throw new Error(`Cannot compute gradient: gradient function not found for ${node.kernelName}.`);
      const names = Object.keys(node.inputs);
      const mark = ids.nextTensorId;
      // one scope for the node: a custom gradient computes its results (and their intermediates)
      // when node.gradient runs, not in the per-input closures
      const dxs = tf.tidy(() => {
        const fns = node.gradient!(dys);
        return names.map((name) => {
          if (!(name in fns)) throw new Error(`Cannot backprop through input ${name}. Available gradients found: ${Object.keys(fns)}.`);
          return fns[name]!();
        });
      });
      const made: tf.Tensor[] = [];
      for (const [k, name] of names.entries()) {
        let dx = dxs[k]!;
        if (dx.dtype !== 'float32') throw new Error(`Error in gradient for op ${node.kernelName}. The gradient of input ${name} must have 'float32' dtype, but has '${dx.dtype}'`);
        const x = node.inputs[name]!;
        if (!tf.util.arraysEqual(dx.shape, x.shape)) throw new Error(`Error in gradient for op ${node.kernelName}. The gradient of input '${name}' has shape '${dx.shape}', which does not match the shape of the input '${x.shape}'`);
        // a tensor that existed before this gradient ran (dy, an input, a saved tensor) or a second
        // use of one result has other holders: give this use its own handle
        const old = mark === undefined ? dys.includes(dx) || (node.saved ?? []).includes(dx) || Object.values(node.inputs).includes(dx) : dx.id < mark;
        if (free && (old || made.includes(dx))) dx = tf.clone(dx);
        made.push(dx);
        const cur = grads.get(x.id);
        if (cur === undefined) {
          grads.set(x.id, dx);
        } else {
          grads.set(x.id, tf.add(cur, dx));
          cur.dispose();
          if (free) dx.dispose();
        }
      }
      if (!free) continue;
      for (const t of node.saved ?? []) t.dispose();
      for (const o of node.outputs) {
        if (keep.has(o.id)) continue;
        grads.get(o.id)?.dispose();
        grads.delete(o.id);
      }
    }
    const out = xs.map((x) => grads.get(x.id)!);
    if (free) {
      for (const node of tape) for (const t of node.saved ?? []) t.dispose();
      this.state.activeTape = null;
    }
    return { value: y, grads: out };
  }) as unknown as { value: tf.Tensor; grads: tf.Tensor[] };
}

/** Puts the freeing backward pass on the engine (idempotent). */
export function installLeanBackprop(): void {
  const engine = tf.engine() as unknown as EngineLike;
  if (stock) return;
  stock = engine.gradients;
  engine.gradients = leanGradients as unknown as Gradients;
}

/** Puts tfjs' own backward pass back (tests compare the two). */
export function uninstallLeanBackprop(): void {
  if (!stock) return;
  (tf.engine() as unknown as EngineLike).gradients = stock;
  stock = null;
}

export function leanBackpropInstalled(): boolean {
  return stock !== null;
}
