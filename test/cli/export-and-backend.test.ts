import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { saveState } from '../../coordinator/state-store.js';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { loadCausalLM } from '../../shared/model/causal-lm.js';
import { selectBackend, tf } from '../../shared/backend/index.js';
import { BackendError } from '../../shared/errors.js';

const run = promisify(execFile);
const FIX = 'test/fixtures/hf/llama-tiny';

describe('fedlora export (CLI, real process)', function () {
  this.timeout(60_000);
  let dir: string;
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-export-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  it('writes the latest global adapter as PEFT and a merged model that gives the adapter\'s logits', async () => {
    const adapter = await loadPeftAdapter(`${FIX}/adapter`);
    const state = join(dir, 'state');
    await saveState(state, { modelId: 'x', strategy: 'rank-aware', maxRank: 4, seed: 1, loraAlpha: 8, targetModules: adapter.config.targetModules, completedRounds: 2, strategyState: {}, history: [] }, adapter);
    const { stderr } = await run(process.execPath, ['--import', 'tsx', 'bin/fedlora.ts', 'export', '--state', state, '--out', join(dir, 'peft'), '--model', `${FIX}/base`, '--merged-model', join(dir, 'merged'), '--backend', 'cpu'], { env: { ...process.env, FEDLORA_LOG: 'warn' } });
    expect(stderr).to.match(/after round 2/);
    const back = await loadPeftAdapter(join(dir, 'peft'));
    for (const [k, t] of adapter.tensors) expect(Buffer.from(back.tensors.get(k)!.data.buffer).equals(Buffer.from(t.data.buffer))).to.equal(true);
    expect((await stat(join(dir, 'merged', 'config.json'))).isFile()).to.equal(true);
    const merged = await loadCausalLM(join(dir, 'merged'), { backend: 'cpu' });
    const base = await loadCausalLM(`${FIX}/base`, { backend: 'cpu' });
    const ids = [[3, 14, 15, 92, 65, 35]];
    const a = await merged.logits(ids), b = await base.logits(ids, { adapter });
    merged.dispose(); base.dispose();
    let d = 0;
    for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
    expect(d).to.be.below(1e-4);
  });

  it('refuses --merged-model without --model and a state with no completed round, exit code 2', async () => {
    for (const args of [['--state', dir, '--out', join(dir, 'o'), '--merged-model', join(dir, 'm')], ['--state', dir, '--out', join(dir, 'o')]]) {
      try {
        await run(process.execPath, ['--import', 'tsx', 'bin/fedlora.ts', 'export', ...args], { env: { ...process.env, FEDLORA_LOG: 'warn' } });
        expect.fail('should have exited non-zero');
      } catch (e) {
        const err = e as { code?: number; stderr?: string };
        expect(err.code).to.equal(2);
        expect(err.stderr).to.match(/--merged-model needs --model|no completed round/);
      }
    }
  });
});

describe('backend selection', () => {
  it('auto picks the first working backend here and says why the earlier ones were skipped', async () => {
    const s = await selectBackend('auto');
    expect(['tensorflow', 'webgpu', 'wasm', 'cpu']).to.include(s.name);
    expect(tf.getBackend()).to.equal(s.name);
    const order = ['tensorflow', 'webgpu', 'wasm', 'cpu'];
    expect(s.skipped.map((x) => x.name)).to.deep.equal(order.slice(0, order.indexOf(s.name)));
    for (const x of s.skipped) expect(x.reason).to.be.a('string').and.not.equal('');
  });
  it('an unknown backend is a clear error', async () => {
    let err: unknown;
    try { await selectBackend('tpu'); } catch (e) { err = e; }
    expect(err).to.be.instanceOf(BackendError);
    expect((err as Error).message).to.match(/unknown backend "tpu"; choose one of auto, tensorflow, webgpu, wasm, cpu/);
  });
});
