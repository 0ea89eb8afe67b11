/**
 * The test-process watchdog (test/watchdog.ts, started by test/setup.ts): a test that never yields
 * cannot be stopped by mocha's timeout; the watchdog must end that run, name the test and show where
 * the main thread was.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';

describe('test watchdog', function () {
  this.timeout(60_000);

  it('ends a run whose test never yields, naming the test and the stuck function', async () => {
    const p = spawn(process.execPath, ['node_modules/mocha/bin/mocha.js', 'test/fixtures/watchdog/stuck.spec.ts'],
      { env: { ...process.env, FEDLORA_TEST_STALL_S: '3' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((res) => p.once('close', (c, s) => res([c, s])));
    expect(signal, out).to.equal('SIGKILL');
    expect(code).to.equal(null);
    expect(out).to.contain('[test watchdog] the main thread of the test process has not run for');
    expect(out).to.contain('Running: watchdog fixture spins without yielding');
    expect(out).to.match(/at spinForever \(.*stuck\.spec\.ts:\d+/);
  });
});
