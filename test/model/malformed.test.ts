import { expect } from 'chai';
import { mkdtemp, rm, writeFile, cp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { normalizeConfig } from '../../shared/model/config.js';
import { loadCausalLM } from '../../shared/model/causal-lm.js';
import { loadPeftAdapter, savePeftAdapter } from '../../shared/lora/peft.js';
import { ModelFormatError } from '../../shared/errors.js';
import { truncateRank, padRank } from '../../shared/lora/adapter.js';

const FIX = 'test/fixtures/hf';

async function rejects(p: Promise<unknown>, re: RegExp): Promise<ModelFormatError> {
  try { await p; } catch (e) {
    expect(e).to.be.instanceOf(ModelFormatError);
    expect((e as Error).message).to.match(re);
    return e as ModelFormatError;
  }
  throw new Error('expected a ModelFormatError');
}

describe('malformed model, config and adapter files', () => {
  let dir: string;
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-bad-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  it('config: unsupported model_type, missing sizes, bad GQA, rope variants', () => {
    expect(() => normalizeConfig({ model_type: 'bert' })).to.throw(ModelFormatError, /unsupported model_type "bert"/);
    expect(() => normalizeConfig({ model_type: 'llama', hidden_size: 64 })).to.throw(ModelFormatError, /num_attention_heads/);
    expect(() => normalizeConfig({ model_type: 'llama', hidden_size: 64, num_attention_heads: 4, num_key_value_heads: 3, num_hidden_layers: 1, intermediate_size: 8, vocab_size: 10 })).to.throw(ModelFormatError, /multiple/);
    expect(() => normalizeConfig({ model_type: 'llama', hidden_size: 64, num_attention_heads: 4, num_hidden_layers: 1, intermediate_size: 8, vocab_size: 10, rope_scaling: { rope_type: 'yarn' } })).to.throw(ModelFormatError, /rope type/);
    expect(() => normalizeConfig([])).to.throw(ModelFormatError, /object/);
  });

  it('config: both rope_theta dialects, head_dim, qwen2 bias, tied embeddings', () => {
    const base = { hidden_size: 64, num_attention_heads: 4, num_hidden_layers: 1, intermediate_size: 8, vocab_size: 10 };
    expect(normalizeConfig({ model_type: 'llama', ...base, rope_theta: 5e5 }).ropeTheta).to.equal(5e5);
    expect(normalizeConfig({ model_type: 'llama', ...base, rope_parameters: { rope_theta: 1e6, rope_type: 'default' } }).ropeTheta).to.equal(1e6);
    expect(normalizeConfig({ model_type: 'mistral', ...base, head_dim: 32 }).headDim).to.equal(32);
    const q = normalizeConfig({ model_type: 'qwen2', ...base, tie_word_embeddings: true });
    expect(q.attentionBias).to.equal(true);
    expect(q.oBias).to.equal(false);
    expect(q.tieWordEmbeddings).to.equal(true);
    expect(normalizeConfig({ model_type: 'gpt2', n_embd: 64, n_head: 4, n_layer: 1, vocab_size: 10 }).intermediateSize).to.equal(256);
  });

  it('model folder: missing config, missing tensor, wrong tensor shape, truncated checkpoint', async () => {
    await rejects(loadCausalLM(dir, { backend: 'cpu' }), /config\.json: cannot read/);
    await cp(`${FIX}/llama-tiny/base`, dir, { recursive: true });
    const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...cfg, intermediate_size: 128 }));
    await rejects(loadCausalLM(dir, { backend: 'cpu' }), /mlp\.(gate|up|down)_proj\.weight" has shape \[\d+,\d+\], expected \[\d+,\d+\]/);
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...cfg, num_hidden_layers: 3 }));
    await rejects(loadCausalLM(dir, { backend: 'cpu' }), /no tensor "model\.layers\.2\./);
    await writeFile(join(dir, 'config.json'), JSON.stringify(cfg));
    const st = await readFile(join(dir, 'model.safetensors'));
    await writeFile(join(dir, 'model.safetensors'), st.subarray(0, st.length - 100));
    const e = await rejects(loadCausalLM(dir, { backend: 'cpu' }), /past the end/);
    expect(e.file).to.match(/model\.safetensors$/);
  });

  it('adapter: shape mismatch between adapter and model is named', async () => {
    const lm = await loadCausalLM(`${FIX}/llama-tiny/base`, { backend: 'cpu' });
    try {
      const gpt2Adapter = await loadPeftAdapter(`${FIX}/gpt2-tiny/adapter`);
      expect(() => lm.validateAdapter(gpt2Adapter)).to.throw(ModelFormatError, /transformer\.h\.0\.attn\.c_attn" is not a linear layer/);
      const a = await loadPeftAdapter(`${FIX}/llama-tiny/adapter`);
      const name = 'base_model.model.model.layers.0.mlp.down_proj.lora_A.weight';
      a.tensors.set(name, { shape: [4, 64], data: new Float32Array(256) });
      expect(() => lm.validateAdapter(a)).to.throw(ModelFormatError, /down_proj\.lora_A\.weight has shape \[4,64\], model needs \[4, 160\]/);
      let threw = false;
      try { await lm.logits([[1, 2, 3]], { adapter: a }); } catch (e) { threw = e instanceof ModelFormatError; }
      expect(threw).to.equal(true);
    } finally {
      lm.dispose();
    }
  });

  it('adapter files: bad config, unpaired tensors, rank disagreement, NaN, non-LoRA tensors', async () => {
    const good = await loadPeftAdapter(`${FIX}/llama-tiny/adapter`);
    await savePeftAdapter(good, dir);
    const cfgPath = join(dir, 'adapter_config.json');
    const cfg = JSON.parse(await readFile(cfgPath, 'utf8'));
    await writeFile(cfgPath, JSON.stringify({ ...cfg, peft_type: 'IA3' }));
    await rejects(loadPeftAdapter(dir), /peft_type "IA3" is not supported/);
    // use_dora is supported, but then every module needs its magnitude vector (this file has none)
    await writeFile(cfgPath, JSON.stringify({ ...cfg, use_dora: true }));
    await rejects(loadPeftAdapter(dir), /has no lora_magnitude_vector \(use_dora: true needs one per module\)/);
    await writeFile(cfgPath, JSON.stringify({ ...cfg, use_dora: 'yes' }));
    await rejects(loadPeftAdapter(dir), /"use_dora" must be true or false/);
    await writeFile(cfgPath, JSON.stringify({ ...cfg, r: 0 }));
    await rejects(loadPeftAdapter(dir), /"r" must be a positive integer/);
    await writeFile(cfgPath, '{ not json');
    await rejects(loadPeftAdapter(dir), /not valid JSON/);
    await writeFile(cfgPath, JSON.stringify(cfg));
    const { encodeSafetensors } = await import('../../shared/model/safetensors.js');
    const stPath = join(dir, 'adapter_model.safetensors');
    const one = new Map([...good.tensors].filter(([k]) => !k.includes('layers.1.mlp.up_proj.lora_B')));
    await writeFile(stPath, encodeSafetensors(one));
    await rejects(loadPeftAdapter(dir), /layers\.1\.mlp\.up_proj" has lora_A but not lora_B/);
    const nan = new Map(good.tensors);
    const k0 = [...nan.keys()][0]!;
    nan.set(k0, { shape: nan.get(k0)!.shape, data: nan.get(k0)!.data.map((v, i) => (i === 3 ? NaN : v)) });
    await writeFile(stPath, encodeSafetensors(nan));
    await rejects(loadPeftAdapter(dir), /non-finite/);
    await writeFile(stPath, encodeSafetensors(new Map([...good.tensors, ['base_model.model.lm_head.weight', { shape: [2, 2], data: new Float32Array(4) }]])));
    await rejects(loadPeftAdapter(dir), /unexpected tensor "base_model\.model\.lm_head\.weight"/);
  });

  it('DoRA adapter files: magnitude without use_dora, wrong magnitude shape, stray magnitude, NaN, shape against the model', async () => {
    const good = await loadPeftAdapter(`${FIX}/llama-tiny/dora/adapter`);
    await savePeftAdapter(good, dir);
    const cfgPath = join(dir, 'adapter_config.json'), stPath = join(dir, 'adapter_model.safetensors');
    const cfg = JSON.parse(await readFile(cfgPath, 'utf8'));
    const { encodeSafetensors } = await import('../../shared/model/safetensors.js');
    await writeFile(cfgPath, JSON.stringify({ ...cfg, use_dora: false }));
    await rejects(loadPeftAdapter(dir), /DoRA magnitude in an adapter without use_dora/);
    await writeFile(cfgPath, JSON.stringify(cfg));
    const mag = 'base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector';
    const bad = new Map(good.tensors);
    bad.set(mag, { shape: [65], data: new Float32Array(65).fill(1) });
    await writeFile(stPath, encodeSafetensors(bad));
    await rejects(loadPeftAdapter(dir), /down_proj": lora_magnitude_vector has 65 entries, lora_B has 64 output features/);
    bad.set(mag, { shape: [8, 8], data: new Float32Array(64).fill(1) });
    await writeFile(stPath, encodeSafetensors(bad));
    await rejects(loadPeftAdapter(dir), /must be 1-D/);
    bad.set(mag, { shape: [64], data: new Float32Array(64).map((_, i) => (i === 5 ? Infinity : 1)) });
    await writeFile(stPath, encodeSafetensors(bad));
    await rejects(loadPeftAdapter(dir), /non-finite/);
    const stray = new Map(good.tensors);
    stray.set('base_model.model.model.layers.0.mlp.nope.lora_magnitude_vector', { shape: [4], data: new Float32Array(4) });
    await writeFile(stPath, encodeSafetensors(stray));
    await rejects(loadPeftAdapter(dir), /mlp\.nope\.lora_magnitude_vector" has no lora_A\/lora_B/);
    // the live PEFT name (…lora_magnitude_vector.default.weight) is read as the saved one; both at once are refused
    const live = new Map([...good.tensors].map(([k, t]) => [k === mag ? `${mag}.default.weight` : k, t]));
    await writeFile(stPath, encodeSafetensors(live));
    expect((await loadPeftAdapter(dir)).tensors.has(mag)).to.equal(true);
    await writeFile(stPath, encodeSafetensors(new Map([...good.tensors, [`${mag}.weight`, good.tensors.get(mag)!]])));
    await rejects(loadPeftAdapter(dir), /appears twice/);
    // a magnitude that does not fit the model is named by validateAdapter
    const lm = await loadCausalLM(`${FIX}/llama-tiny/base`, { backend: 'cpu' });
    try {
      const a = await loadPeftAdapter(`${FIX}/llama-tiny/dora/adapter`);
      a.tensors.delete(mag);
      expect(() => lm.validateAdapter(a)).to.throw(ModelFormatError, /has no .*down_proj\.lora_magnitude_vector \(use_dora: true\)/);
      const b = await loadPeftAdapter(`${FIX}/llama-tiny/dora/adapter`);
      b.config.useDora = false;
      expect(() => lm.validateAdapter(b)).to.throw(ModelFormatError, /without use_dora/);
    } finally {
      lm.dispose();
    }
  });

  it('rank ops: pad then truncate is the identity and keeps alpha/r', async () => {
    const a = await loadPeftAdapter(`${FIX}/llama-tiny/adapter`);
    const p = padRank(a, 8);
    expect(p.config.loraAlpha / p.config.r).to.equal(a.config.loraAlpha / a.config.r);
    const back = truncateRank(p, 4);
    for (const [k, t] of a.tensors) expect([...back.tensors.get(k)!.data]).to.deep.equal([...t.data]);
  });
});

describe('sharded checkpoints', () => {
  it('load from model.safetensors.index.json and give the same logits', async () => {
    const { loadSafetensors, readFloatTensor, encodeSafetensors } = await import('../../shared/model/safetensors.js');
    const dir = await mkdtemp(join(tmpdir(), 'fedlora-shard-'));
    try {
      const st = await loadSafetensors(`${FIX}/llama-tiny/base/model.safetensors`);
      const names = [...st.entries.keys()].sort();
      const half = Math.ceil(names.length / 2);
      const weightMap: Record<string, string> = {};
      for (const [i, part] of [names.slice(0, half), names.slice(half)].entries()) {
        const file = `model-0000${i + 1}-of-00002.safetensors`;
        await writeFile(join(dir, file), encodeSafetensors(new Map(part.map((n) => [n, readFloatTensor(st, n)]))));
        for (const n of part) weightMap[n] = file;
      }
      await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
      await cp(`${FIX}/llama-tiny/base/config.json`, join(dir, 'config.json'));
      const a = await loadCausalLM(dir, { backend: 'cpu' }), b = await loadCausalLM(`${FIX}/llama-tiny/base`, { backend: 'cpu' });
      const ids = [[1, 5, 9, 300, 2]];
      expect([...(await a.logits(ids))]).to.deep.equal([...(await b.logits(ids))]);
      a.dispose(); b.dispose();
      await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { x: '../evil.safetensors' } }));
      await rejects(loadCausalLM(dir, { backend: 'cpu' }), /bad shard name/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
