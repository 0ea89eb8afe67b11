/**
 * Secure aggregation over real sockets with the stand-in trainer: the coordinator's result equals
 * plain aggregation of the survivors' contributions (recomputed here from the contributions the clients' observers saw)
 * within the documented fixed-point bound, also when one client drops after its masked upload and
 * one before it.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, contributionLog, maxDiff, plainAggregate, pullTrainer } from './helpers.js';
import { Resources, waitFor } from './hostile-client.js';

describe('secure aggregation over the wire', function () {
  this.timeout(30_000);
  let dir: string;
  let r: Resources;
  before(() => setLogLevel('error'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-secure-')); r = new Resources(); });
  // coordinators and clients are closed even when a test failed, so a failing run still ends
  afterEach(async () => { await r.closeAll(); await rm(dir, { recursive: true, force: true }); });


  it('ranks 2/4/8: the unmasked result equals plain aggregation within the quantization bound', async () => {
    const coord = r.coordinator(new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 1, clientsPerRound: 3, minClients: 3, maxRank: 8, localSteps: 1, joinWaitMs: 50, refactor: false }));
    await coord.serve(0).then(async (url) => {
      const init = coord.globalAdapter!;
      const trainers = await Promise.all([0.1, 0.2, 0.3].map((t, i) => pullTrainer(t, 10 + i * 7)));
      const seen = contributionLog();
      const clients = [2, 4, 8].map((rank, i) => r.client(new Client({ coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `c${i}`), maxRank: rank, clientId: `c${i}`, trainerFactory: async () => trainers[i]!, observe: seen.observer(i) })));
      await Promise.all([coord.done, ...clients.map((c) => c.run())]);
      const dumps = [0, 1, 2].map((i) => seen.of(i));
      expect(dumps.map((d) => d.weight)).to.deep.equal([10, 17, 24]);
      const { adapter, tolerance } = plainAggregate(dumps, init, 'rank-aware', 8);
      const got = coord.globalAdapter!;
      expect(maxDiff(got, init)).to.be.greaterThan(1e-3); // it did move
      const d = maxDiff(got, adapter);
      expect(d, `max |secure − plain| = ${d}, bound ${tolerance}`).to.be.at.most(tolerance);
      expect(tolerance).to.be.lessThan(1e-4);
      await coord.close();
    });
  });

  it('5 clients, one drops after its masked upload and one before it: the round completes over the 4 that uploaded', async () => {
    const coord = r.coordinator(new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 1, clientsPerRound: 5, minClients: 3, maxRank: 4, localSteps: 1, joinWaitMs: 50, refactor: false, rejoinGraceMs: 100, strategy: 'fedit' }));
    const url = await coord.serve(0);
    const init = coord.globalAdapter!;
    const trainers = await Promise.all([0.1, 0.2, 0.3, 0.4, 0.5].map((t) => pullTrainer(t, 8)));
    const clients: Client[] = [];
    const seen = contributionLog();
    // c4 vanishes while training, once the engine has closed key sharing (its shares are out) and
    // waits for masked inputs: driven by the coordinator's phase, not by a sleep
    const vanishing = {
      ...trainers[4]!,
      train: async (...a: Parameters<typeof trainers[4]['train']>) => {
        await waitFor('the masked-input phase', () => coord.status().collecting === 'masked', 10_000);
        void clients[4]!.stop(); // stop() waits for this very training to end
        return trainers[4]!.train(...a);
      },
    };
    // c3 leaves right after its masked upload was accepted (before consistency check and unmasking)
    for (let i = 0; i < 5; i++) {
      clients.push(r.client(new Client({
        coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `c${i}`), maxRank: 4, clientId: `c${i}`, trainerFactory: async () => (i === 4 ? vanishing : trainers[i]!),
        observe: { ...seen.observer(i), ...(i === 3 ? { round: () => { void clients[3]!.stop(); } } : {}) },
      })));
    }
    const runs = clients.map((c, i) => (i < 3 ? c.run() : void c.run().catch(() => undefined)));
    await coord.done;
    await Promise.all(runs.slice(0, 3));
    const rec = coord.history[0]!;
    expect(rec.status).to.equal('completed');
    expect(rec.contributors).to.equal(4);
    expect(Object.fromEntries(rec.participants.map((p) => [p.clientId, p.status]))).to.deep.equal({ c0: 'uploaded', c1: 'uploaded', c2: 'uploaded', c3: 'uploaded', c4: 'dropped' });
    expect(rec.secure).to.deep.include({ k: 4, t: 3, droppedAfterSharing: ['c4'], badShares: 0 }); // c4's pairwise masks were recovered from shares
    const dumps = [0, 1, 2, 3].map((i) => seen.of(i));
    const { adapter, tolerance } = plainAggregate(dumps, init, 'fedit', 4);
    const d = maxDiff(coord.globalAdapter!, adapter);
    expect(d, `max |secure − plain| = ${d}, bound ${tolerance}`).to.be.at.most(tolerance);
    // the survivors' mean is not what all five would have given
    const withC4 = trainers[4]!.trained.length;
    expect(withC4).to.equal(1);
    await coord.close();
  });
});
