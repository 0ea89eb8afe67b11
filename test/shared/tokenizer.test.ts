import { expect } from 'chai';
import { mkdtemp, writeFile, rm, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ByteTokenizer, HfTokenizer, loadTokenizer, BYTE_TOKENIZER_FILE } from '../../shared/model/tokenizer.js';
import { ModelFormatError } from '../../shared/errors.js';

const special = (id: number, content: string) => ({ id, content, special: true, single_word: false, lstrip: false, rstrip: false, normalized: false });

/** A hand-written WordLevel tokenizer: lowercase + whitespace split. */
const wordLevel = {
  version: '1.0',
  added_tokens: [special(0, '[PAD]'), special(1, '[UNK]'), special(2, '<s>'), special(3, '</s>')],
  normalizer: { type: 'Lowercase' },
  pre_tokenizer: { type: 'Whitespace' },
  post_processor: null,
  decoder: null,
  model: { type: 'WordLevel', vocab: { '[PAD]': 0, '[UNK]': 1, '<s>': 2, '</s>': 3, hello: 4, world: 5, spam: 6, ham: 7, ':': 8, label: 9 }, unk_token: '[UNK]' },
};

/** A hand-written byte-level BPE (GPT-2 style) over a-z, space (Ġ) and ':' with a few merges. */
function tinyBpe() {
  const vocab: Record<string, number> = { '<|endoftext|>': 0 };
  for (const c of 'abcdefghijklmnopqrstuvwxyzĠ:') vocab[c] = Object.keys(vocab).length;
  const merges = ['Ġ s', 'Ġs p', 'a m', 'Ġsp am', 'h am', 'Ġ h'];
  for (const m of merges) vocab[m.replace(' ', '')] = Object.keys(vocab).length;
  return {
    version: '1.0',
    added_tokens: [special(0, '<|endoftext|>')],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges },
  };
}

describe('tokenizer', () => {
  let dir: string;
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-tok-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  describe('ByteTokenizer', () => {
    const t = new ByteTokenizer();
    it('maps text to UTF-8 bytes and back, with documented special ids', () => {
      expect(t.vocabSize).to.equal(259);
      expect([t.bosId, t.eosId, t.padId]).to.deep.equal([256, 257, 258]);
      expect(t.encode('Hi é')).to.deep.equal([72, 105, 32, 0xc3, 0xa9]);
      expect(t.decode([256, ...t.encode('naïve — ✓ 𝄞'), 257, 258])).to.equal('naïve — ✓ 𝄞');
      expect(t.decode([0xc3])).to.equal('\ufffd'); // half a code point does not throw
      expect(() => t.decode([259])).to.throw(RangeError);
    });
    it('saves fedlora_tokenizer.json and loadTokenizer prefers it', async () => {
      await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(wordLevel));
      await t.save(dir);
      expect(JSON.parse(await readFile(join(dir, BYTE_TOKENIZER_FILE), 'utf8'))).to.deep.equal({ type: 'bytes', version: 1, vocab_size: 259, bos_id: 256, eos_id: 257, pad_id: 258 });
      const loaded = await loadTokenizer(dir);
      expect(loaded).to.be.instanceOf(ByteTokenizer);
      expect(loaded.encode('ab')).to.deep.equal([97, 98]);
    });
    it('rejects a description that disagrees with the byte layout', async () => {
      await writeFile(join(dir, BYTE_TOKENIZER_FILE), JSON.stringify({ type: 'bytes', version: 1, vocab_size: 300, bos_id: 256, eos_id: 257, pad_id: 258 }));
      await expectReject(loadTokenizer(dir), /vocab_size/);
      await writeFile(join(dir, BYTE_TOKENIZER_FILE), JSON.stringify({ type: 'sentencepiece' }));
      await expectReject(loadTokenizer(dir), /unknown tokenizer type/);
    });
  });

  describe('Hugging Face tokenizer.json', () => {
    it('loads a WordLevel tokenizer with tokenizer_config.json specials', async () => {
      await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(wordLevel));
      await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: { content: '</s>' }, pad_token: '[PAD]' }));
      const t = await loadTokenizer(dir);
      expect(t).to.be.instanceOf(HfTokenizer);
      expect(t.encode('Hello world: spam zebra')).to.deep.equal([4, 5, 8, 6, 1]); // unknown word → [UNK]
      expect(t.vocabSize).to.equal(10);
      expect([t.bosId, t.eosId, t.padId]).to.deep.equal([2, 3, 0]);
      expect(t.decode([2, 4, 5, 3, 0])).to.equal('hello world'); // specials dropped
      expect(t.decode([])).to.equal('');
    });
    it('loads a byte-level BPE and round-trips; eos found by name, pad falls back to eos', async () => {
      await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(tinyBpe()));
      const t = await loadTokenizer(dir);
      const ids = t.encode('label: spam ham');
      expect(ids).to.include(33); // 'Ġspam' merged into one token
      expect(t.decode(ids)).to.equal('label: spam ham');
      expect(t.bosId).to.equal(undefined);
      expect(t.eosId).to.equal(0);
      expect(t.padId).to.equal(0);
    });
    it('throws ModelFormatError on bad files', async () => {
      await expectReject(loadTokenizer(dir), /no fedlora_tokenizer.json or tokenizer.json/);
      await writeFile(join(dir, 'tokenizer.json'), '{"model": ');
      await expectReject(loadTokenizer(dir), /invalid JSON/);
      await writeFile(join(dir, 'tokenizer.json'), JSON.stringify({ added_tokens: [] }));
      await expectReject(loadTokenizer(dir), /missing "model"/);
      await writeFile(join(dir, 'tokenizer.json'), JSON.stringify({ model: { type: 'NoSuchModel', vocab: {} } }));
      await expectReject(loadTokenizer(dir), /empty vocabulary|cannot build tokenizer/);
      await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(wordLevel));
      await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<nope>' }));
      await expectReject(loadTokenizer(dir), /not in the vocabulary/);
    });
  });
});

async function expectReject(p: Promise<unknown>, re: RegExp): Promise<void> {
  try {
    await p;
  } catch (e) {
    expect(e).to.be.instanceOf(ModelFormatError);
    expect((e as Error).message).to.match(re);
    return;
  }
  expect.fail(`expected rejection matching ${re}`);
}
