/**
 * Reading and writing checkpoints one tensor at a time (what lets a Qwen2-0.5B-sized model load and be
 * generated without the whole file in memory): openSafetensors decodes what loadSafetensors does and
 * rejects a truncated file; writeSafetensorsStreaming / writeRandomModelStreaming write exactly the
 * values of the in-memory writers (bf16: rounded as toBf16 rounds); StoredWeight row access.
 */
import { expect } from 'chai';
import { mkdtemp, rm, readFile, writeFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadSafetensors, openSafetensors, readTensor, writeSafetensorsStreaming } from '../../shared/model/safetensors.js';
import { randomWeights, writeRandomModelStreaming, tinyLlamaConfig, gpt2SmallConfig } from '../../shared/model/random-init.js';
import { normalizeConfig } from '../../shared/model/config.js';
import { StoredWeight } from '../../shared/model/frozen/stored.js';
import { fromBf16, toBf16 } from '../../shared/model/frozen/quant.js';
import { mulberry32 } from '../../shared/data/random.js';
import { ModelFormatError } from '../../shared/errors.js';

const FIX = 'test/fixtures/hf';

describe('safetensors, tensor by tensor', () => {
  let dir: string;
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-stream-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  it('openSafetensors reads every tensor of a fixture exactly as loadSafetensors does', async () => {
    for (const name of ['gpt2-tiny', 'llama-tiny']) {
      const f = `${FIX}/${name}/base/model.safetensors`;
      const whole = await loadSafetensors(f);
      const st = await openSafetensors(f);
      try {
        expect([...st.entries.keys()]).to.deep.equal([...whole.entries.keys()]);
        for (const k of whole.entries.keys()) {
          const a = await st.read(k), b = readTensor(whole, k);
          expect(a.shape).to.deep.equal(b.shape);
          expect(Buffer.from(a.data.buffer).equals(Buffer.from(b.data.buffer)), k).to.equal(true);
        }
      } finally { await st.close(); }
    }
  });

  it('a truncated file is refused when opened (data or header cut short); an unknown tensor name on read', async () => {
    const bytes = await readFile(`${FIX}/gpt2-tiny/base/model.safetensors`);
    const cut = join(dir, 'cut.safetensors');
    await writeFile(cut, bytes.subarray(0, bytes.length - 10));
    let err: unknown;
    try { await openSafetensors(cut); } catch (e) { err = e; }
    expect(err).to.be.instanceOf(ModelFormatError);
    expect(String(err)).to.match(/run past the end of the data/);
    await writeFile(cut, bytes.subarray(0, 20));
    err = undefined;
    try { await openSafetensors(cut); } catch (e) { err = e; }
    expect(String(err)).to.match(/truncated: header claims/);
    err = undefined;
    const st = await openSafetensors(`${FIX}/gpt2-tiny/base/model.safetensors`);
    try { await st.read('no.such.tensor'); } catch (e) { err = e; } finally { await st.close(); }
    expect(String(err)).to.match(/no tensor named "no.such.tensor"/);
  });

  it('writeSafetensorsStreaming: F32 bit-exact, BF16 rounded as toBf16, nothing left behind on a failing producer', async () => {
    const rng = mulberry32('stream-test');
    const a = Float32Array.from({ length: 6 * 5 }, () => rng() - 0.5), b = Float32Array.from({ length: 7 }, () => rng() * 100);
    const f = join(dir, 'x.safetensors');
    await writeSafetensorsStreaming(f, [{ name: 'b', shape: [7], dtype: 'BF16' }, { name: 'a', shape: [6, 5], dtype: 'F32' }], (s) => (s.name === 'a' ? a : b), { format: 'pt' });
    const st = await loadSafetensors(f);
    expect(st.metadata).to.deep.equal({ format: 'pt' });
    expect(st.entries.get('b')!.dtype).to.equal('BF16');
    expect([...readTensor(st, 'a').data]).to.deep.equal([...a]);
    expect([...readTensor(st, 'b').data]).to.deep.equal([...fromBf16(toBf16(b))]);
    expect([...readTensor(st, 'b').data]).to.not.deep.equal([...b]); // rounding happened
    let err: unknown;
    try { await writeSafetensorsStreaming(join(dir, 'y.safetensors'), [{ name: 'a', shape: [2, 2], dtype: 'F32' }], () => new Float32Array(3)); } catch (e) { err = e; }
    expect(String(err)).to.match(/produced 3 values for shape \[2,2\]/);
    expect((await readdir(dir)).sort()).to.deep.equal(['x.safetensors']);
  });

  it('writeRandomModelStreaming writes the values randomWeights draws for the seed (F32 exact, BF16 rounded)', async () => {
    for (const raw of [tinyLlamaConfig({ hidden: 32, layers: 2 }), { ...gpt2SmallConfig(), n_embd: 32, n_layer: 1, n_head: 2, vocab_size: 97, n_positions: 16 }]) {
      const ref = randomWeights(normalizeConfig(raw), 5, 0.02);
      for (const dtype of ['F32', 'BF16'] as const) {
        const d = join(dir, `${raw.model_type as string}-${dtype}`);
        await writeRandomModelStreaming(d, raw, 5, 0.02, dtype);
        const st = await loadSafetensors(join(d, 'model.safetensors'));
        expect([...st.entries.keys()].sort()).to.deep.equal([...ref.keys()].sort());
        for (const [k, t] of ref) {
          const got = readTensor(st, k).data;
          const want = dtype === 'F32' ? t.data : fromBf16(toBf16(t.data as Float32Array));
          expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer)), `${dtype} ${k}`).to.equal(true);
        }
        expect(JSON.parse(await readFile(join(d, 'config.json'), 'utf8'))).to.deep.equal(raw);
      }
    }
  });
});

describe('StoredWeight row access', () => {
  const rng = mulberry32('rows');
  const out = 9, inDim = 128; // nf4 blocks of 64 span rows evenly
  const w = Float32Array.from({ length: out * inDim }, () => (rng() - 0.5) * 0.1);
  for (const dtype of ['fp32', 'bf16', 'int8', 'nf4'] as const) {
    it(`${dtype}: rows and gathered rows are the dequantized weight's rows; out-of-range rows are refused`, () => {
      const s = new StoredWeight(w.slice(), out, inDim, dtype);
      const all = s.values();
      expect([...s.rows(2, 5)]).to.deep.equal([...all.subarray(2 * inDim, 5 * inDim)]);
      expect(s.rows(4, 4).length).to.equal(0);
      const ids = [8, 0, 3, 3];
      const g = s.gatherRows(Int32Array.from(ids));
      ids.forEach((r, i) => expect([...g.subarray(i * inDim, (i + 1) * inDim)]).to.deep.equal([...all.subarray(r * inDim, (r + 1) * inDim)]));
      expect(() => s.rows(3, 10)).to.throw(RangeError, /outside \[0, 9\)/);
      expect(() => s.gatherRows([9])).to.throw(RangeError, /row 9 outside/);
      expect(() => s.gatherRows([-1])).to.throw(RangeError, /row -1 outside/);
    });
  }
});
