import { expect } from 'chai';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadJsonlDataset, splitEval, encodeExamples, padBatch, type Example } from '../../shared/data/jsonl.js';
import { ByteTokenizer } from '../../shared/model/tokenizer.js';
import { DataError } from '../../shared/errors.js';

describe('jsonl datasets', () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-jsonl-')); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  async function load(name: string, content: string, opts = {}): Promise<Example[]> {
    const f = join(dir, name);
    await writeFile(f, content);
    return loadJsonlDataset(f, opts);
  }
  async function rejects(content: string, re: RegExp, opts = {}): Promise<void> {
    try {
      await load('bad.jsonl', content, opts);
    } catch (e) {
      expect(e).to.be.instanceOf(DataError);
      expect((e as Error).message).to.match(re);
      return;
    }
    expect.fail(`expected DataError ${re}`);
  }

  it('reads both record forms, skipping blank lines and CRLF, ignoring extra keys', async () => {
    const ex = await load('ok.jsonl', '\ufeff{"text":"hello"}\r\n\n{"prompt":"Subject: x\\nLabel:","completion":" spam","id":7}\n');
    expect(ex).to.deep.equal([{ text: 'hello' }, { prompt: 'Subject: x\nLabel:', completion: ' spam' }]);
  });

  it('names the line of a bad record', async () => {
    await rejects('{"text":"a"}\n{"text": 3}\n', /bad\.jsonl:2: "text" must be a string/);
    await rejects('{"text":"a"}\n\n{oops\n', /bad\.jsonl:3: invalid JSON/);
    await rejects('[1,2]\n', /:1: expected a JSON object/);
    await rejects('{"prompt":"p"}\n', /:1: "completion" must be a string/);
    await rejects('{"text":"a","prompt":"p","completion":"c"}\n', /both/);
    await rejects('{"label":1}\n', /needs "text" or "prompt"/);
    await rejects('\n\n', /no records/);
  });

  it('enforces size, record and line bounds', async () => {
    await rejects('{"text":"aaaaaaaaaaaaaaaaaaaa"}\n', /exceeds the 10-byte limit/, { maxBytes: 10 });
    await rejects('{"text":"a"}\n{"text":"b"}\n{"text":"c"}\n', /:3: more than 2 records/, { maxRecords: 2 });
    await rejects(`{"text":"${'x'.repeat(100)}"}\n`, /over the 50 limit/, { maxLineChars: 50 });
    await rejects(Buffer.from([0x7b, 0xff, 0x7d]).toString('latin1'), /not valid UTF-8|invalid JSON/);
    try { await loadJsonlDataset(join(dir, 'missing.jsonl')); expect.fail('no throw'); } catch (e) { expect(e).to.be.instanceOf(DataError); }
  });

  it('splitEval is deterministic, disjoint and covering', () => {
    const items = Array.from({ length: 100 }, (_, i) => i);
    const a = splitEval(items, 0.2, 42);
    const b = splitEval(items, 0.2, 42);
    const c = splitEval(items, 0.2, 43);
    expect(a).to.deep.equal(b);
    expect(a.eval).to.not.deep.equal(c.eval);
    expect(a.eval).to.have.length(20);
    expect([...a.train, ...a.eval].sort((x, y) => x - y)).to.deep.equal(items);
    expect(splitEval([1, 2], 0.01, 1).eval).to.have.length(1);
  });

  describe('encodeExamples', () => {
    const tok = new ByteTokenizer();
    it('text: bos + text + eos, every token after bos is a target', () => {
      const [e] = encodeExamples([{ text: 'ab' }], tok, 16);
      expect(e!.ids).to.deep.equal([256, 97, 98, 257]);
      expect(e!.lossMask).to.deep.equal([0, 1, 1, 1]);
    });
    it('prompt/completion: only the completion and eos are targets', () => {
      const [e] = encodeExamples([{ prompt: 'hi:', completion: ' x' }], tok, 16);
      expect(e!.ids).to.deep.equal([256, 104, 105, 58, 32, 120, 257]);
      expect(e!.lossMask).to.deep.equal([0, 0, 0, 0, 1, 1, 1]);
    });
    it('truncates the prompt from the left so the completion survives', () => {
      const [e] = encodeExamples([{ prompt: 'abcdefgh', completion: ' spam' }], tok, 10);
      expect(e!.ids).to.have.length(10);
      expect(e!.ids[0]).to.equal(256);
      expect(tok.decode(e!.ids)).to.equal('fgh spam');
      expect(e!.lossMask.reduce((a, b) => a + b, 0)).to.equal(6); // " spam" + eos
      const [t] = encodeExamples([{ text: 'abcdefgh' }], tok, 4, { addEos: false });
      expect(t!.ids).to.deep.equal([256, 97, 98, 99]);
      const [long] = encodeExamples([{ prompt: 'p', completion: 'abcdefgh' }], tok, 4);
      expect(long!.ids).to.deep.equal([256, 97, 98, 99]);
      expect(long!.lossMask).to.deep.equal([0, 1, 1, 1]);
    });
    it('padBatch right-pads with pad id and zero masks', () => {
      const enc = encodeExamples([{ text: 'a' }, { text: 'abc' }], tok, 8);
      const p = padBatch(enc, tok.padId);
      expect(p.length).to.equal(5);
      expect(Array.from(p.ids)).to.deep.equal([256, 97, 257, 258, 258, 256, 97, 98, 99, 257]);
      expect(Array.from(p.attentionMask)).to.deep.equal([1, 1, 1, 0, 0, 1, 1, 1, 1, 1]);
      expect(Array.from(p.lossMask)).to.deep.equal([0, 1, 1, 0, 0, 0, 1, 1, 1, 1]);
    });
  });
});
