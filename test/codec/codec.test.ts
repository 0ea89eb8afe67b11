import { expect } from 'chai';
import { decode, encode, tensorMapFromWire, tensorMapToWire } from '../../shared/codec/index.js';
import { ProtocolError } from '../../shared/errors.js';

const limits = { maxTensors: 10, maxElements: 1000 };

function code(f: () => unknown): string {
  try { f(); } catch (e) { expect(e).to.be.instanceOf(ProtocolError); return (e as ProtocolError).code; }
  throw new Error('expected a ProtocolError');
}

describe('codec', () => {
  it('round-trips typed arrays as typed arrays, bit-exact, 4-byte aligned', () => {
    const f = new Float32Array([1.5, -0, 3e-38, 65504.25, Math.PI]);
    const bytes = encode({ t: f, i: new Int32Array([-7, 2 ** 31 - 1]), u: new Uint8Array([0, 255]), s: 'x' });
    const d = decode(bytes) as { t: Float32Array; i: Int32Array; u: Uint8Array; s: string };
    expect(d.t).to.be.instanceOf(Float32Array);
    expect(d.t.byteOffset % 4).to.equal(0);
    expect(Buffer.from(d.t.buffer, d.t.byteOffset, d.t.byteLength).equals(Buffer.from(f.buffer))).to.equal(true);
    expect([...d.i]).to.deep.equal([-7, 2 ** 31 - 1]);
    expect([...d.u]).to.deep.equal([0, 255]);
    // tensor bytes appear raw in the encoding (no JSON numbers, no base64)
    expect(Buffer.from(bytes).includes(Buffer.from(f.buffer))).to.equal(true);
  });

  it('refuses non-binary, empty, oversized and corrupt payloads', () => {
    expect(code(() => decode('hello'))).to.equal('BAD_ENCODING');
    expect(code(() => decode({ a: 1 }))).to.equal('BAD_ENCODING');
    expect(code(() => decode(new Uint8Array(0)))).to.equal('BAD_ENCODING');
    expect(code(() => decode(new Uint8Array(101), 100))).to.equal('TOO_LARGE');
    expect(code(() => decode(Buffer.from('dd7fffffff', 'hex')))).to.equal('BAD_ENCODING'); // array claims 2^31 items
    expect(code(() => decode(Buffer.from('c70574070000', 'hex')))).to.equal('BAD_ENCODING'); // truncated ext
  });

  it('does not let a __proto__ key pollute prototypes', () => {
    const d = decode(Buffer.from('81a95f5f70726f746f5f5f81a178c3', 'hex')) as Record<string, unknown>;
    expect(({} as Record<string, unknown>).x).to.equal(undefined);
    expect(Object.getPrototypeOf(d)).to.equal(Object.prototype);
  });

  it('validates tensor lists: shapes, dtypes, sizes, finiteness, duplicates', () => {
    const m = new Map([['b', { shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) }], ['a', { shape: [3], data: new Float32Array(3) }]]);
    const wire = decode(encode(tensorMapToWire(m)));
    const back = tensorMapFromWire(wire, limits);
    expect([...back.keys()]).to.deep.equal(['a', 'b']);
    expect([...back.get('b')!.data]).to.deep.equal([1, 2, 3, 4]);
    const one = (t: unknown) => () => tensorMapFromWire(decode(encode([t])), limits);
    expect(code(one({ name: 'x', shape: [2], data: new Float32Array(3) }))).to.equal('BAD_SHAPE');
    expect(code(one({ name: 'x', shape: [2], data: [1, 2] }))).to.equal('BAD_MESSAGE');
    expect(code(one({ name: 'x', shape: [2], data: new Float64Array(2) }))).to.equal('BAD_MESSAGE');
    expect(code(one({ name: 'x', shape: [2.5], data: new Float32Array(2) }))).to.equal('BAD_MESSAGE');
    expect(code(one({ name: 'x', shape: [2], data: new Float32Array([1, NaN]) }))).to.equal('NON_FINITE');
    expect(code(one({ name: 'x', shape: [2], data: new Float32Array([Infinity, 1]) }))).to.equal('NON_FINITE');
    expect(code(one({ name: 'x', shape: [2000], data: new Float32Array(2000) }))).to.equal('TOO_LARGE');
    const dup = { name: 'x', shape: [1], data: new Float32Array(1) };
    expect(code(() => tensorMapFromWire(decode(encode([dup, dup])), limits))).to.equal('BAD_MESSAGE');
  });
});
