import { expect } from 'chai';
import { makeLayout, flatten, unflatten, slotOf, elementSlots } from '../../shared/aggregation/layout.js';
import { ProtocolError } from '../../shared/errors.js';
import { loraAName, loraBName } from '../../shared/lora/adapter.js';
import type { TensorMap } from '../../shared/tensor.js';

const A = loraAName('m.q'), B = loraBName('m.q'), X = 'base_model.model.m.extra';

function sample(): TensorMap {
  return new Map([
    [B, { shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) }],   // [out=2, r=3]
    [X, { shape: [2], data: Float32Array.from([7, 8]) }],
    [A, { shape: [3, 2], data: Float32Array.from([9, 10, 11, 12, 13, 14]) }], // [r=3, in=2]
  ]);
}
const layoutOf = (m: TensorMap) => makeLayout([...m].map(([name, t]) => ({ name, shape: t.shape })));

function expectLayoutError(fn: () => unknown, re: RegExp): void {
  expect(fn).to.throw(ProtocolError, re);
  try { fn(); } catch (e) { expect((e as ProtocolError).code).to.equal('LAYOUT'); }
}

describe('flat layout', () => {
  it('sorts by name, assigns fixed offsets and is independent of insertion order', () => {
    const l = layoutOf(sample());
    expect(l.entries.map((e) => [e.name, e.offset, e.size, e.slotAxis])).to.deep.equal([
      [X, 0, 2, -1], [A, 2, 6, 0], [B, 8, 6, 1],
    ]);
    expect(l.size).to.equal(14);
    const reversed = makeLayout([...sample()].reverse().map(([name, t]) => ({ name, shape: t.shape })));
    expect(reversed).to.deep.equal(l);
  });

  it('round-trips through flatten / unflatten exactly, with copies', () => {
    const m = sample(), l = layoutOf(m);
    const v = flatten(m, l);
    expect([...v]).to.deep.equal([7, 8, 9, 10, 11, 12, 13, 14, 1, 2, 3, 4, 5, 6]);
    const back = unflatten(v, l);
    for (const [k, t] of m) {
      expect(back.get(k)!.shape).to.deep.equal(t.shape);
      expect([...back.get(k)!.data]).to.deep.equal([...t.data]);
    }
    v[0] = 99;
    expect(back.get(X)!.data[0]).to.equal(7);
  });

  it('gives every element its rank slot: row of A, column of B, −1 elsewhere', () => {
    const l = layoutOf(sample());
    const expected = [-1, -1, 0, 0, 1, 1, 2, 2, 0, 1, 2, 0, 1, 2];
    expect([...elementSlots(l)]).to.deep.equal(expected);
    expect(expected.map((_, i) => slotOf(l, i))).to.deep.equal(expected);
    expect(() => slotOf(l, 14)).to.throw(RangeError);
    expect(() => slotOf(l, -1)).to.throw(RangeError);
  });

  it('handles zero-sized entries without shifting slots', () => {
    const l = makeLayout([{ name: 'a.empty', shape: [0, 4] }, { name: A, shape: [2, 2] }]);
    expect(l.size).to.equal(4);
    expect([0, 1, 2, 3].map((i) => slotOf(l, i))).to.deep.equal([0, 0, 1, 1]);
  });

  it('refuses missing, extra, mis-shaped and mis-sized input', () => {
    const l = layoutOf(sample());
    const missing = sample(); missing.delete(A);
    expectLayoutError(() => flatten(missing, l), /missing .*lora_A/);
    const extra = sample(); extra.set('zzz', { shape: [1], data: new Float32Array(1) });
    expectLayoutError(() => flatten(extra, l), /unexpected zzz/);
    const swapped = sample(); swapped.delete(A); swapped.set('other', { shape: [3, 2], data: new Float32Array(6) });
    expectLayoutError(() => flatten(swapped, l), /missing .*unexpected other/);
    const bent = sample(); bent.set(A, { shape: [2, 3], data: new Float32Array(6) });
    expectLayoutError(() => flatten(bent, l), /shape \[2,3\]/);
    const lying = sample(); lying.set(A, { shape: [3, 2], data: new Float32Array(5) });
    expectLayoutError(() => flatten(lying, l), /5 values/);
    expectLayoutError(() => unflatten(new Float32Array(13), l), /13 values/);
    expectLayoutError(() => unflatten(new Float64Array(14) as unknown as Float32Array, l), /Float32Array/);
    expectLayoutError(() => makeLayout([{ name: 'a', shape: [1] }, { name: 'a', shape: [2] }]), /duplicate/);
    expectLayoutError(() => makeLayout([{ name: 'a', shape: [-1] }]), /invalid shape/);
    expectLayoutError(() => makeLayout([{ name: 'a', shape: [1.5] }]), /invalid shape/);
    expectLayoutError(() => makeLayout([{ name: 'a', shape: [2 ** 20, 2 ** 20] }]), /exceeds/);
  });
});
