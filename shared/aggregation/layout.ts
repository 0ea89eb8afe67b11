/**
 * Flat fixed-length layout of a round's shared tensors. Secure aggregation masks one vector per
 * client, so every participant must flatten the same names in the same order with the same
 * offsets: entries are sorted by name and the layout is fully determined by (name, shape) pairs.
 * Each element also has a rank slot (row of lora_A, column of lora_B, −1 for anything else) so the
 * coordinator can apply per-slot weight sums to the unmasked sum.
 */
import { ProtocolError } from '../errors.js';
import { parseLoraName, parseXsName } from '../lora/adapter.js';
import type { TensorMap } from '../tensor.js';

export interface LayoutEntry {
  readonly name: string;
  readonly shape: readonly number[];
  /** First element of this tensor in the flat vector. */
  readonly offset: number;
  readonly size: number;
  /** Which axis indexes rank slots: 0 for lora_A [r, in], 1 for lora_B [out, r], 2 for both (a LoRA-XS
   *  core R [r, r]: element (i, j) belongs to slot max(i, j), trained by clients of rank > max(i, j)), −1 if none. */
  readonly slotAxis: 0 | 1 | 2 | -1;
}

export interface FlatLayout {
  readonly entries: readonly LayoutEntry[];
  /** Total number of elements. */
  readonly size: number;
}

/** Upper bound on a layout: a Float32Array of this many elements is 4 GiB. */
export const MAX_LAYOUT_ELEMENTS = 2 ** 30;

export function makeLayout(entries: readonly { name: string; shape: readonly number[] }[]): FlatLayout {
  const sorted = [...entries].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const out: LayoutEntry[] = [];
  let offset = 0;
  for (let i = 0; i < sorted.length; i++) {
    const { name, shape } = sorted[i]!;
    if (typeof name !== 'string' || name.length === 0) throw new ProtocolError('LAYOUT', 'layout entry without a name');
    if (i > 0 && sorted[i - 1]!.name === name) throw new ProtocolError('LAYOUT', `duplicate layout entry ${name}`);
    if (!Array.isArray(shape) || shape.length > 8 || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new ProtocolError('LAYOUT', `layout entry ${name}: invalid shape ${JSON.stringify(shape)}`);
    }
    let size = 1;
    for (const d of shape) size *= d;
    const p = parseLoraName(name);
    const slotAxis: 0 | 1 | 2 | -1 = p && shape.length === 2 ? (p.factor === 'A' ? 0 : 1) : parseXsName(name) && shape.length === 2 ? 2 : -1;
    out.push({ name, shape: [...shape], offset, size, slotAxis });
    offset += size;
    if (offset > MAX_LAYOUT_ELEMENTS) throw new ProtocolError('LAYOUT', `layout exceeds ${MAX_LAYOUT_ELEMENTS} elements`);
  }
  return { entries: out, size: offset };
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Packs exactly the layout's tensors into one vector. Missing, extra or mis-shaped tensors are refused. */
export function flatten(map: TensorMap, layout: FlatLayout): Float32Array {
  const names = new Set(layout.entries.map((e) => e.name));
  const extra = [...map.keys()].filter((k) => !names.has(k));
  const missing = layout.entries.filter((e) => !map.has(e.name)).map((e) => e.name);
  if (extra.length || missing.length) {
    throw new ProtocolError('LAYOUT', `tensors do not match the layout${missing.length ? `; missing ${missing.slice(0, 3).join(', ')}` : ''}${extra.length ? `; unexpected ${extra.slice(0, 3).join(', ')}` : ''}`);
  }
  const vec = new Float32Array(layout.size);
  for (const e of layout.entries) {
    const t = map.get(e.name);
    if (!t) throw new ProtocolError('LAYOUT', `tensors do not match the layout; missing ${e.name}`);
    if (!sameShape(t.shape, e.shape)) throw new ProtocolError('LAYOUT', `${e.name}: shape [${t.shape}] where the layout has [${e.shape}]`);
    if (t.data.length !== e.size) throw new ProtocolError('LAYOUT', `${e.name}: ${t.data.length} values for shape [${e.shape}]`);
    vec.set(t.data, e.offset);
  }
  return vec;
}

/** Inverse of flatten; the tensors are copies, not views of `vec`. */
export function unflatten(vec: Float32Array, layout: FlatLayout): TensorMap {
  if (!(vec instanceof Float32Array)) throw new ProtocolError('LAYOUT', 'flat vector must be a Float32Array');
  if (vec.length !== layout.size) throw new ProtocolError('LAYOUT', `flat vector has ${vec.length} values, layout needs ${layout.size}`);
  const map: TensorMap = new Map();
  for (const e of layout.entries) map.set(e.name, { shape: [...e.shape], data: vec.slice(e.offset, e.offset + e.size) });
  return map;
}

/** Rank slot of element `index` of the flat vector, or −1 for elements outside any slot. */
export function slotOf(layout: FlatLayout, index: number): number {
  if (!Number.isInteger(index) || index < 0 || index >= layout.size) throw new RangeError(`index ${index} outside layout of ${layout.size}`);
  let lo = 0, hi = layout.entries.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (layout.entries[mid]!.offset <= index) lo = mid; else hi = mid - 1;
  }
  // the last entry starting at or before index holds it (zero-sized entries share the next one's offset)
  const e = layout.entries[lo]!;
  const local = index - e.offset;
  if (e.slotAxis === 0) return Math.floor(local / e.shape[1]!);
  if (e.slotAxis === 1) return local % e.shape[1]!;
  if (e.slotAxis === 2) return Math.max(Math.floor(local / e.shape[1]!), local % e.shape[1]!);
  return -1;
}

/** Rank slot of every element (−1 outside slots), for vectorised per-slot operations. */
export function elementSlots(layout: FlatLayout): Int32Array {
  const slots = new Int32Array(layout.size).fill(-1);
  for (const e of layout.entries) {
    if (e.slotAxis === -1) continue;
    const [rows, cols] = e.shape as [number, number];
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) slots[e.offset + i * cols + j] = e.slotAxis === 0 ? i : e.slotAxis === 1 ? j : Math.max(i, j);
    }
  }
  return slots;
}
