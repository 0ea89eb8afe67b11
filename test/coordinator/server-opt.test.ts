/**
 * A coordinator with a server optimiser over real sockets (stand-in trainer, secure aggregation):
 * the optimiser's state lands in the checkpoint, a restart with other optimiser settings (or none)
 * is refused naming them, and one with the same settings resumes and steps on.
 */
import { expect } from 'chai';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator, type CoordinatorOptions } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { ConfigError } from '../../shared/errors.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, pullTrainer } from './helpers.js';
import { Resources } from './hostile-client.js';

describe('coordinator with --server-opt over real sockets', function () {
  this.timeout(30_000);
  let dir: string;
  let r: Resources;
  before(async () => { setLogLevel('warn'); dir = await mkdtemp(join(tmpdir(), 'fedlora-serveropt-coord-')); r = new Resources(); });
  after(async () => { await r.closeAll(); await rm(dir, { recursive: true, force: true }); });

  const state = () => join(dir, 'coord');
  const opts = (over: Partial<CoordinatorOptions>): CoordinatorOptions => ({
    allowAnyClient: true, modelDir: FIXTURE, stateDir: state(), rounds: 1, clientsPerRound: 2, minClients: 2, maxRank: 4, strategy: 'rank-aware',
    localSteps: 1, joinWaitMs: 100, roundTimeoutMs: 10_000, serverOpt: { name: 'fedyogi', lr: 0.02 }, ...over,
  });
  const meta = async () => (JSON.parse(await readFile(join(state(), 'state.json'), 'utf8')) as { strategyState: { meta: { serverOptimizer?: Record<string, unknown> }; tensors: string[] } }).strategyState;

  async function federate(coord: Coordinator): Promise<void> {
    const url = await coord.serve(0);
    const trainers = await Promise.all([0.1, 0.3].map((t) => pullTrainer(t)));
    const clients = [2, 4].map((rank, i) => r.client(new Client({
      coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `c${i}`), maxRank: rank, clientId: `c${i}`, trainerFactory: async () => trainers[i]!,
    })));
    await Promise.all([coord.done, ...clients.map((c) => c.run())]);
    await coord.close();
  }

  it('refuses a bad setting or a strategy that does not compose before anything starts', () => {
    expect(() => new Coordinator(opts({ serverOpt: { name: 'fedadam', beta2: 1 } }))).to.throw(ConfigError, /serverOpt\.beta2/);
    expect(() => new Coordinator(opts({ strategy: 'fedavgm', serverOpt: { name: 'fedadam' } }))).to.throw(ConfigError, /own server state/);
  });

  it('checkpoints the optimiser; a restart with other settings or none is refused naming them; the same settings resume', async () => {
    const first = r.coordinator(new Coordinator(opts({})));
    expect(first.status().serverOpt).to.equal('fedyogi (lr 0.02, β1 0.9, β2 0.99, τ 0.001)');
    await federate(first);
    const s1 = await meta();
    expect(s1.meta.serverOptimizer).to.deep.equal({ name: 'fedyogi', lr: 0.02, beta1: 0.9, beta2: 0.99, eps: 0.001, steps: 1 });
    expect(s1.tensors.filter((n) => n.startsWith('server_opt.v:')).length).to.be.greaterThan(0);

    for (const [serverOpt, re] of [
      [{ name: 'fedyogi', lr: 0.05 }, /lr=0\.02; this run has lr=0\.05/],
      [{ name: 'fedadam', lr: 0.02 }, /name="fedyogi"; this run has name=fedadam/],
      [{ name: 'none' }, /saved with server optimizer .*fedyogi.*this run has none/],
    ] as const) {
      const c = r.coordinator(new Coordinator(opts({ rounds: 2, serverOpt })));
      let msg = '';
      try { await c.serve(0); } catch (e) { msg = (e as Error).message; } finally { await c.close(); }
      expect(msg, JSON.stringify(serverOpt)).to.match(re);
    }
    // nothing was written by the refused starts
    expect(await meta()).to.deep.equal(s1);

    const again = r.coordinator(new Coordinator(opts({ rounds: 2 })));
    await federate(again);
    expect(again.completedRounds).to.equal(2);
    expect((await meta()).meta.serverOptimizer).to.deep.include({ name: 'fedyogi', steps: 2 });
  });
});
