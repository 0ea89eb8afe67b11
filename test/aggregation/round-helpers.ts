/** Builds what the coordinator hands to aggregateRound: the flat Σ of contributions, as secure aggregation would. */
import { flatten, sharedLayout, type ClientUpdate, type FlatLayout, type RoundContributor, type SavedServerState, type Strategy } from '../../shared/aggregation/index.js';
import { loraAName, loraBName, type LoraAdapter } from '../../shared/lora/adapter.js';
import type { TensorMap } from '../../shared/tensor.js';
import { randTensor, rng } from './helpers.js';

export interface SimClient extends ClientUpdate {
  /** Tensors this client keeps personal: it uploads zeros for them. */
  personal: (name: string) => boolean;
}

export function randomClient(shapes: Map<string, { in: number; out: number }>, rank: number, weight: number, seed: number, personal: (name: string) => boolean = () => false): SimClient {
  const next = rng(seed);
  const tensors: TensorMap = new Map();
  for (const [m, s] of shapes) {
    tensors.set(loraAName(m), randTensor([rank, s.in], next));
    tensors.set(loraBName(m), randTensor([s.out, rank], next));
  }
  return { tensors, rank, weight, personal };
}

/** Σ contributions in float64, rounded once to float32 (as aggregatePlain does and as decoding a secure sum yields). */
export function flatSum(strategy: Strategy, clients: readonly SimClient[], previous: LoraAdapter, maxRank: number): { sum: Float32Array; layout: FlatLayout } {
  const layout = sharedLayout(strategy, previous);
  const acc = new Float64Array(layout.size);
  for (const c of clients) {
    const contrib: TensorMap = new Map();
    for (const e of layout.entries) {
      const t = strategy.contribution(e.name, c.tensors.get(e.name)!, c.weight, maxRank);
      if (c.personal(e.name)) t.data.fill(0);
      contrib.set(e.name, t);
    }
    const v = flatten(contrib, layout);
    for (let i = 0; i < v.length; i++) acc[i] = acc[i]! + v[i]!;
  }
  return { sum: Float32Array.from(acc), layout };
}

export function contributorsOf(clients: readonly SimClient[]): RoundContributor[] {
  return clients.map((c) => ({ rank: c.rank, weight: c.weight, personal: c.personal }));
}

/** Bit-level equality of two adapters' tensors (names, shapes, every float32 including the sign of zero). */
export function sameBits(x: LoraAdapter, y: LoraAdapter): boolean {
  if (x.tensors.size !== y.tensors.size) return false;
  for (const [k, t] of x.tensors) {
    const u = y.tensors.get(k);
    if (!u || t.shape.join() !== u.shape.join() || t.data.length !== u.data.length) return false;
    const a = new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length);
    const b = new Uint32Array(u.data.buffer, u.data.byteOffset, u.data.length);
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  }
  return true;
}

/** What a checkpoint does: meta through JSON, tensors through a byte-exact store (here: JSON of the float32 values). */
export function throughJson(saved: SavedServerState): SavedServerState {
  const text = JSON.stringify({ meta: saved.meta, tensors: [...saved.tensors].map(([k, v]) => [k, v.shape, [...v.data]]) });
  const back = JSON.parse(text) as { meta: SavedServerState['meta']; tensors: [string, number[], number[]][] };
  return { meta: back.meta, tensors: new Map(back.tensors.map(([k, shape, data]) => [k, { shape, data: Float32Array.from(data) }])) };
}
