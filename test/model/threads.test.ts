/**
 * Threaded wasm (shared/backend/wasm-threads.ts): the Hugging Face oracle still holds with a 2-thread
 * XNNPACK pool, threaded and single-threaded runs agree, and a threaded start that cannot happen falls
 * back to one thread with the reason. Each configuration runs in its own process (the wasm module
 * starts once per process).
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';

interface ChildOut { backend: string; threads: number; note: string | null; oracleLoss: number; logits: number[]; loss: number; grads: Record<string, number[]>; big: number[] }

function run(args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, out, err }));
  });
}

async function child(name: string, env: Record<string, string>): Promise<ChildOut> {
  const r = await run(['test/model/threads-child.ts', name], { FEDLORA_LOG: 'info', ...env });
  expect(r.code, r.err).to.equal(0);
  return JSON.parse(r.out.trim().split('\n').at(-1)!) as ChildOut;
}

function maxRelDiff(a: number[], b: number[]): number {
  expect(a.length).to.equal(b.length);
  let m = 0, s = 0;
  for (let i = 0; i < a.length; i++) { m = Math.max(m, Math.abs(a[i]! - b[i]!)); s = Math.max(s, Math.abs(b[i]!)); }
  return m / (s || 1);
}

describe('threaded wasm backend', function () {
  this.timeout(120_000);

  it('runs the Hugging Face oracle tests (logits, loss, LoRA and DoRA gradients) with a 2-thread pool', async () => {
    const r = await run(['node_modules/mocha/bin/mocha.js', '--no-config', '--exit', '--timeout', '60000', 'test/model/hf-fixtures.test.ts', 'test/model/dora-fixtures.test.ts'],
      { FEDLORA_THREADS: '2', FEDLORA_LOG: 'info' });
    expect(r.code, `${r.out}\n${r.err}`).to.equal(0);
    expect(r.err + r.out).to.contain('using tfjs backend "wasm" (2 threads)');
    const passing = /(\d+) passing/.exec(r.out);
    console.log(`      child mocha on 2-thread wasm: ${passing?.[0] ?? '?'}`);
    expect(Number(passing?.[1])).to.be.at.least(20);
    expect(r.out).to.not.match(/\d+ failing/);
  });

  for (const name of ['gpt2-tiny', 'llama-tiny']) {
    it(`${name}: 2 threads give the same logits, loss and gradients as 1 thread`, async () => {
      const [one, two] = [await child(name, { FEDLORA_THREADS: '1' }), await child(name, { FEDLORA_THREADS: '2' })];
      expect([one.backend, one.threads]).to.deep.equal(['wasm', 1]);
      expect([two.backend, two.threads, two.note]).to.deep.equal(['wasm', 2, null]);
      expect(maxRelDiff(two.logits, one.logits)).to.be.below(1e-6);
      expect(Math.abs(two.loss - one.loss) / one.loss).to.be.below(1e-6);
      expect(Math.abs(two.loss - two.oracleLoss) / two.oracleLoss).to.be.below(1e-5);
      expect(Object.keys(two.grads).sort()).to.deep.equal(Object.keys(one.grads).sort());
      for (const k of Object.keys(one.grads)) expect(maxRelDiff(two.grads[k]!, one.grads[k]!), k).to.be.below(1e-6);
      expect(maxRelDiff(two.big, one.big)).to.be.below(1e-6);
    });
  }

  it('falls back to one thread, with the reason, when the threaded build cannot start (its script folder cannot be written)', async () => {
    const r = await child('gpt2-tiny', { FEDLORA_THREADS: '2', FEDLORA_WASM_DIR: '/proc/fedlora-no-such-dir' });
    expect([r.backend, r.threads]).to.deep.equal(['wasm', 1]);
    expect(r.note).to.match(/threaded wasm failed to start \(.+\); running single-threaded/);
    expect(Math.abs(r.loss - r.oracleLoss) / r.oracleLoss).to.be.below(1e-5);
  });

  it('refuses a malformed FEDLORA_THREADS with a clear error', async () => {
    const r = await run(['test/model/threads-child.ts', 'gpt2-tiny'], { FEDLORA_THREADS: 'lots' });
    expect(r.code).to.not.equal(0);
    expect(r.err).to.contain('FEDLORA_THREADS must be a whole number from 1 to 64 or "auto", got "lots"');
  });
});
