import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCausalLM } from '../../shared/model/causal-lm.js';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { mergeAdapterIntoModel } from '../../shared/lora/merge.js';
import { loadSafetensors, readTensor } from '../../shared/model/safetensors.js';

describe('merged model export', () => {
  for (const name of ['gpt2-tiny', 'llama-tiny']) {
    it(`${name}: a merged HF folder reproduces PEFT merge_and_unload logits`, async () => {
      const dir = await mkdtemp(join(tmpdir(), 'fedlora-merge-'));
      try {
        const adapter = await loadPeftAdapter(`test/fixtures/hf/${name}/adapter`);
        await mergeAdapterIntoModel(`test/fixtures/hf/${name}/base`, adapter, dir, { backend: 'cpu' });
        const lm = await loadCausalLM(dir, { backend: 'cpu' });
        const ex = await loadSafetensors(`test/fixtures/hf/${name}/expected.safetensors`);
        const t = readTensor(ex, 'input_ids');
        const ids = [[...t.data.subarray(0, 12)], [...t.data.subarray(12, 24)]];
        const got = await lm.logits(ids);
        lm.dispose();
        const want = readTensor(ex, 'merged_logits').data;
        let d = 0;
        for (let i = 0; i < got.length; i++) d = Math.max(d, Math.abs(got[i]! - want[i]!));
        expect(d).to.be.below(1e-4);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  }
});
