/**
 * The model-family registry: the built-in descriptors read the HF fixtures, keep the defaults the
 * coordinator has always used, refuse unknown model_types by listing what is registered, and a new
 * family is accepted end to end (config, model info, random init, loading, forward) once registered.
 */
import { expect } from 'chai';
import { readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, rm, cp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { normalizeConfig, linearModules, supportedModelTypes } from '../../shared/model/config.js';
import {
  registerFamily, unregisterFamily, getFamily, familyOf, registeredFamilies, llamaFamily, gpt2Family, type FamilyDescriptor,
} from '../../shared/model/families/index.js';
import { readModelInfo, defaultTargetModules } from '../../shared/model/model-info.js';
import { loadCausalLM } from '../../shared/model/causal-lm.js';
import { writeRandomModel, tinyLlamaConfig } from '../../shared/model/random-init.js';
import { ConfigError, ModelFormatError } from '../../shared/errors.js';
import { tf, selectBackend } from '../../shared/backend/index.js';

const FIX = 'test/fixtures/hf';
const fixtures = readdirSync(FIX, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort();
const rawConfig = (name: string) => JSON.parse(readFileSync(`${FIX}/${name}/base/config.json`, 'utf8')) as Record<string, unknown>;

function throwsModelFormat(f: () => unknown): ModelFormatError {
  try { f(); } catch (e) {
    expect(e).to.be.instanceOf(ModelFormatError);
    return e as ModelFormatError;
  }
  throw new Error('expected a ModelFormatError');
}

describe('model families', () => {
  it('registers gpt2 and llama (llama, qwen2, mistral) as built-ins', () => {
    expect(registeredFamilies().map((f) => f.name)).to.include.members(['gpt2', 'llama']);
    expect(getFamily('gpt2')).to.equal(gpt2Family);
    expect(getFamily('llama')).to.equal(llamaFamily);
    expect(supportedModelTypes()).to.include.members(['gpt2', 'llama', 'qwen2', 'mistral']);
  });

  describe('fixture configs', () => {
    for (const name of fixtures) {
      it(`${name}: the family read from model_type resolves the config and matches the checkpoint`, async () => {
        const raw = rawConfig(name);
        const fam = familyOf(raw);
        expect(fam.modelTypes).to.include(raw.model_type);
        const cfg = normalizeConfig(raw);
        expect(cfg.family).to.equal(fam.name);
        expect(familyOf(cfg)).to.equal(fam);
        // every linear the descriptor implies exists in the HF checkpoint with the declared layout
        const info = await readModelInfo(`${FIX}/${name}/base`);
        expect(info.fanInFanOut).to.equal(fam.fanInFanOut);
        expect(info.linears.size).to.equal(cfg.numLayers * fam.blockLinears(cfg).length);
      });
    }

    it('every built-in family is covered by a fixture', () => {
      expect(fixtures).to.include.members(['gpt2-tiny', 'llama-tiny']);
      const covered = new Set(fixtures.map((n) => familyOf(rawConfig(n)).name));
      expect([...covered]).to.include.members(['gpt2', 'llama']);
    });

    it('qwen2 and mistral variants of the llama fixture resolve to the llama family with their bias rules', () => {
      const base = rawConfig('llama-tiny');
      const q = normalizeConfig({ ...base, model_type: 'qwen2' });
      const m = normalizeConfig({ ...base, model_type: 'mistral' });
      expect([q.family, m.family]).to.deep.equal(['llama', 'llama']);
      const bias = (c: typeof q) => Object.fromEntries(llamaFamily.blockLinears(c).map((l) => [l.name, l.bias]));
      expect(bias(q)).to.include({ 'self_attn.q_proj': true, 'self_attn.k_proj': true, 'self_attn.v_proj': true, 'self_attn.o_proj': false, 'mlp.up_proj': false });
      expect(Object.values(bias(m)).some(Boolean)).to.equal(false);
    });
  });

  it('default LoRA targets, tensor names and layouts are the ones fedlora has always used', () => {
    const g = normalizeConfig(rawConfig('gpt2-tiny'));
    const l = normalizeConfig(rawConfig('llama-tiny'));
    expect(defaultTargetModules(g)).to.deep.equal(['c_attn', 'c_proj', 'c_fc']);
    expect(defaultTargetModules(l)).to.deep.equal(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
    expect(gpt2Family.fanInFanOut).to.equal(true);
    expect(llamaFamily.fanInFanOut).to.equal(false);
    expect([...linearModules(g).keys()].slice(0, 4)).to.deep.equal(['transformer.h.0.attn.c_attn', 'transformer.h.0.attn.c_proj', 'transformer.h.0.mlp.c_fc', 'transformer.h.0.mlp.c_proj']);
    expect(linearModules(l).get('model.layers.1.self_attn.k_proj')).to.deep.equal({ in: 64, out: 32 });
    expect(gpt2Family.tensors).to.deep.equal({ embeddings: 'transformer.wte.weight', positions: 'transformer.wpe.weight', finalNorm: 'transformer.ln_f', lmHead: 'lm_head.weight' });
    expect(llamaFamily.tensors).to.deep.equal({ embeddings: 'model.embed_tokens.weight', positions: null, finalNorm: 'model.norm', lmHead: 'lm_head.weight' });
  });

  it('an unknown model_type is a ModelFormatError that lists the registered families', () => {
    const e = throwsModelFormat(() => normalizeConfig({ model_type: 'bert' }, 'bert/config.json'));
    expect(e.code).to.equal('MODEL_FORMAT');
    expect(e.file).to.equal('bert/config.json');
    expect(e.message).to.match(/unsupported model_type "bert"/);
    expect(e.message).to.include('gpt2 (gpt2)').and.include('llama (llama, qwen2, mistral)');
    expect(throwsModelFormat(() => familyOf({ model_type: 'bert' })).message).to.include('registered families');
    expect(throwsModelFormat(() => normalizeConfig({})).message).to.match(/unsupported model_type undefined/);
    expect(throwsModelFormat(() => getFamily('bert')).message).to.match(/unknown model family "bert".*gpt2 \(gpt2\)/);
  });

  it('refuses a second owner for a name or a model_type', () => {
    expect(() => registerFamily({ ...llamaFamily, name: 'llama-two', modelTypes: ['mistral'] })).to.throw(ConfigError, /"mistral" already belongs to family "llama"/);
    expect(() => registerFamily({ ...gpt2Family, modelTypes: ['gpt2-alt'] })).to.throw(ConfigError, /"gpt2" is already registered/);
    expect(() => registerFamily({ ...llamaFamily, name: 'empty', modelTypes: [] })).to.throw(ConfigError, /reads no model_type/);
    expect(registeredFamilies().map((f) => f.name)).to.not.include.members(['llama-two', 'empty']);
    expect(getFamily('gpt2')).to.equal(gpt2Family);
  });

  describe('a registered toy family', () => {
    let dir: string;
    beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-family-')); });
    afterEach(async () => {
      unregisterFamily('toy-alias');
      unregisterFamily('toy-renamed');
      await rm(dir, { recursive: true, force: true });
    });

    it('an alias model_type reusing llama\'s block: config accepted, model info read, model loads and agrees with llama', async () => {
      const base = `${FIX}/llama-tiny/base`;
      await cp(base, dir, { recursive: true });
      const raw = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
      await writeFile(join(dir, 'config.json'), JSON.stringify({ ...raw, model_type: 'toyllama' }));
      expect(() => normalizeConfig({ ...raw, model_type: 'toyllama' })).to.throw(ModelFormatError, /unsupported model_type "toyllama"/);

      registerFamily({ ...llamaFamily, name: 'toy-alias', modelTypes: ['toyllama'] });
      const cfg = normalizeConfig({ ...raw, model_type: 'toyllama' });
      expect(cfg.family).to.equal('toy-alias');
      expect(cfg.modelType).to.equal('toyllama');
      expect(throwsModelFormat(() => normalizeConfig({ model_type: 'bert' })).message).to.include('toy-alias (toyllama)');
      const info = await readModelInfo(dir);
      expect([...info.linears.keys()]).to.deep.equal([...(await readModelInfo(base)).linears.keys()]);
      expect(defaultTargetModules(info.config)).to.deep.equal(defaultTargetModules(normalizeConfig(raw)));

      await selectBackend('cpu'); // tf.memory() needs a backend when this test runs alone
      const before = tf.memory().numTensors;
      const toy = await loadCausalLM(dir, { backend: 'cpu' });
      const ref = await loadCausalLM(base, { backend: 'cpu' });
      try {
        const ids = [[1, 5, 9, 200, 3, 7]];
        expect([...(await toy.logits(ids))]).to.deep.equal([...(await ref.logits(ids))]);
      } finally {
        toy.dispose(); ref.dispose();
      }
      expect(tf.memory().numTensors).to.equal(before);

      unregisterFamily('toy-alias');
      expect(() => normalizeConfig({ ...raw, model_type: 'toyllama' })).to.throw(ModelFormatError, /unsupported model_type "toyllama"/);
    });

    it('a family with its own tensor names: random init, loading and forward all follow the descriptor', async () => {
      // llama's block under other HF names: nothing outside the descriptor may assume "model.layers"
      const renamed: FamilyDescriptor = {
        ...llamaFamily, name: 'toy-renamed', modelTypes: ['toyrenamed'],
        tensors: { embeddings: 'decoder.tok.weight', positions: null, finalNorm: 'decoder.final_norm', lmHead: 'out.weight' },
        layerPrefix: (i) => `decoder.blocks.${i}`,
      };
      registerFamily(renamed);
      const small = { hidden: 32, layers: 2, heads: 4, kvHeads: 2, intermediate: 48, vocab: 40 };
      const cfg = await writeRandomModel(join(dir, 'toy'), { ...tinyLlamaConfig(small), model_type: 'toyrenamed' }, 7);
      await writeRandomModel(join(dir, 'ref'), tinyLlamaConfig(small), 7);
      expect(cfg.family).to.equal('toy-renamed');
      const info = await readModelInfo(join(dir, 'toy'));
      expect([...info.linears.keys()][0]).to.equal('decoder.blocks.0.self_attn.q_proj');

      const toy = await loadCausalLM(join(dir, 'toy'), { backend: 'cpu' });
      const ref = await loadCausalLM(join(dir, 'ref'), { backend: 'cpu' });
      try {
        expect([...(await toy.baseWeights()).keys()]).to.include.members(['decoder.tok.weight', 'decoder.final_norm.weight', 'out.weight', 'decoder.blocks.1.post_attention_layernorm.weight']);
        // same seed, same draw order: the renamed model is the llama model under other names
        const ids = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]];
        expect([...(await toy.logits(ids))]).to.deep.equal([...(await ref.logits(ids))]);
      } finally {
        toy.dispose(); ref.dispose();
      }
    });
  });
});
