import { expect } from 'chai';
import { parseSafetensors, encodeSafetensors, readTensor, loadSafetensors } from '../../shared/model/safetensors.js';
import { ModelFormatError } from '../../shared/errors.js';

function withHeader(header: unknown, dataBytes: number): Uint8Array {
  const h = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  return out;
}

describe('safetensors', () => {
  it('round-trips f32 and i32 bit-exactly', () => {
    const a = new Float32Array([1.5, -2, Math.PI, 1e-30, -0]);
    const b = new Int32Array([7, -8, 2 ** 31 - 1]);
    const buf = encodeSafetensors({ a: { shape: [5], data: a }, b: { shape: [3, 1], data: b } }, { format: 'pt' });
    const st = parseSafetensors(buf);
    expect(st.metadata).to.deep.equal({ format: 'pt' });
    const ra = readTensor(st, 'a');
    expect(Buffer.from(ra.data.buffer).equals(Buffer.from(a.buffer))).to.equal(true);
    expect([...readTensor(st, 'b').data]).to.deep.equal([...b]);
  });

  it('reads the HF fixtures', async () => {
    const st = await loadSafetensors('test/fixtures/hf/llama-tiny/expected.safetensors');
    const ids = readTensor(st, 'input_ids');
    expect(ids.shape).to.deep.equal([2, 12]);
    expect(ids.data).to.be.instanceOf(Int32Array);
  });

  it('decodes F16, BF16 and I64', () => {
    const f16 = new Uint16Array([0x3c00, 0xc000, 0x0001, 0x7c00]); // 1, -2, 2^-24, inf
    const bf16 = new Uint16Array([0x3f80, 0xc040]); // 1, -3
    const i64 = new BigInt64Array([5n, -6n]);
    const hdr = { x: { dtype: 'F16', shape: [4], data_offsets: [0, 8] }, y: { dtype: 'BF16', shape: [2], data_offsets: [8, 12] }, z: { dtype: 'I64', shape: [2], data_offsets: [16, 32] } };
    const buf = withHeader(hdr, 32);
    const base = buf.length - 32;
    buf.set(new Uint8Array(f16.buffer), base);
    buf.set(new Uint8Array(bf16.buffer), base + 8);
    buf.set(new Uint8Array(i64.buffer), base + 16);
    const st = parseSafetensors(buf);
    expect([...readTensor(st, 'x').data]).to.deep.equal([1, -2, 2 ** -24, Infinity]);
    expect([...readTensor(st, 'y').data]).to.deep.equal([1, -3]);
    expect([...readTensor(st, 'z').data]).to.deep.equal([5, -6]);
  });

  const bad: Array<[string, () => Uint8Array, RegExp]> = [
    ['a truncated file', () => encodeSafetensors({ a: { shape: [4], data: new Float32Array(4) } }).subarray(0, 30), /truncated|past the end/],
    ['a file shorter than the length prefix', () => new Uint8Array(5), /truncated/],
    ['a header longer than the cap', () => { const b = new Uint8Array(16); new DataView(b.buffer).setBigUint64(0, 1n << 40n, true); return b; }, /exceeds/],
    ['a lying header (offsets past the data)', () => withHeader({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, 8), /past the end/],
    ['an unknown dtype', () => withHeader({ a: { dtype: 'Q4', shape: [1], data_offsets: [0, 1] } }, 1), /unknown dtype/],
    ['shape × dtype ≠ bytes', () => withHeader({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 16] } }, 16), /16/],
    ['overlapping tensors', () => withHeader({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12), /overlap/],
    ['a non-JSON header', () => { const b = new Uint8Array(12); new DataView(b.buffer).setBigUint64(0, 4n, true); b.set([0x7b, 0xff, 0x00, 0x7d], 8); return b; }, /JSON/],
    ['a negative shape', () => withHeader({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 0] } }, 0), /shape/],
  ];
  for (const [what, make, re] of bad) {
    it(`rejects ${what} with ModelFormatError`, () => {
      expect(() => parseSafetensors(make(), 'bad.safetensors')).to.throw(ModelFormatError, re);
    });
  }
});
