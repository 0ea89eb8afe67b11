/**
 * An edge's masked inputs for one attempt (coordinator/cluster/edge.ts, HeldMasked): confirmed inputs
 * go into a running sum mod 2^32 and are let go, so an edge holds one vector per attempt instead of
 * one per client; inputs awaiting the leader's confirmation are held whole until confirmed or refused.
 */
import { expect } from 'chai';
import { HeldMasked } from '../../coordinator/cluster/edge.js';
import { ProtocolError } from '../../shared/errors.js';
import { mulberry32 } from '../../shared/data/random.js';

const SEED = 5;
function vec(rand: () => number, n: number): Uint32Array {
  return Uint32Array.from({ length: n }, () => Math.floor(rand() * 2 ** 32) >>> 0);
}
function sumOf(vs: Uint32Array[]): Uint32Array {
  const out = new Uint32Array(vs[0]!.length);
  for (const v of vs) for (let i = 0; i < out.length; i++) out[i] = (out[i]! + v[i]!) >>> 0;
  return out;
}
function refuses(f: () => unknown, text: string): void {
  let err: unknown;
  try { f(); } catch (e) { err = e; }
  expect(err).to.be.instanceOf(ProtocolError);
  expect((err as Error).message).to.include(text);
}

describe('cluster edge: masked inputs in a running sum', () => {
  it('holds one vector per attempt once inputs are confirmed; the partial is their sum mod 2^32', () => {
    console.log(`      seed ${SEED}`);
    const rand = mulberry32(SEED);
    const h = new HeldMasked();
    const vs = Array.from({ length: 50 }, () => vec(rand, 257));
    vs.forEach((v, i) => h.confirm(`c${i}`, h.hold(`c${i}`, `d${i}`, v)));
    expect(h.size).to.equal(50);
    expect(h.vectors).to.equal(1);
    expect(h.digestOf('c7')).to.equal('d7');
    expect(h.partial(vs.map((_, i) => `c${i}`))).to.deep.equal(sumOf(vs));
  });

  it('a refused input leaves no trace; an unconfirmed one asked for is added whole', () => {
    const rand = mulberry32(SEED + 1);
    const h = new HeldMasked();
    const [a, b, c] = [vec(rand, 64), vec(rand, 64), vec(rand, 64)];
    h.confirm('a', h.hold('a', 'da', a));
    const tb = h.hold('b', 'db', b);
    h.drop('b', tb); // the leader refused b
    h.confirm('b', tb); // a late confirmation of a dropped input does nothing
    expect(h.ids()).to.deep.equal(['a']);
    h.hold('c', 'dc', c); // its confirmation is still in flight when the partial is asked for
    expect(h.vectors).to.equal(2);
    expect(h.partial(['a', 'c'])).to.deep.equal(sumOf([a, c]));
  });

  it('refuses a partial that leaves out a summed input, names an input it does not hold, or names none; refuses duplicates', () => {
    const rand = mulberry32(SEED + 2);
    const h = new HeldMasked();
    h.confirm('a', h.hold('a', 'da', vec(rand, 8)));
    h.confirm('b', h.hold('b', 'db', vec(rand, 8)));
    refuses(() => h.partial(['a']), 'leaves out b');
    refuses(() => h.partial(['a', 'b', 'x']), 'no masked input held for x');
    refuses(() => h.partial([]), 'names no input');
    refuses(() => h.hold('a', 'other', vec(rand, 8)), 'duplicate masked input from a');
    const p = h.hold('c', 'dc', vec(rand, 9));
    refuses(() => h.confirm('c', p), 'different lengths');
  });
});
