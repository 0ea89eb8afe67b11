import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, pullTrainer } from '../coordinator/helpers.js';

describe('client reconnect', function () {
  this.timeout(30_000);
  let dir: string;
  before(() => setLogLevel('error'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-reconnect-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  it('a client that loses its connection mid-round rejoins the same round and uploads the result it already trained', async () => {
    const coord = new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 2, clientsPerRound: 2, minClients: 2, maxRank: 4, localSteps: 1, joinWaitMs: 50, roundTimeoutMs: 15_000 });
    const url = await coord.serve(0);
    const trainers = await Promise.all([0.1, 0.3].map((t) => pullTrainer(t)));
    let trainCalls = 0;
    let drop: (() => void) | null = null;
    const flaky = {
      ...trainers[0]!,
      train: async (...a: Parameters<LocalTrainerTrain>) => {
        trainCalls++;
        if (trainCalls === 1) drop!(); // drops while round 1 trains
        await new Promise((r) => setTimeout(r, 300));
        return trainers[0]!.train(...a);
      },
    };
    const c0 = new Client({
      coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, 'c0'), maxRank: 4, clientId: 'c0', reconnectInitialMs: 100, trainerFactory: async () => flaky,
      faults: { onSocket: (d) => { drop = d; } },
    });
    const c1 = new Client({ coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, 'c1'), maxRank: 4, clientId: 'c1', trainerFactory: async () => trainers[1]! });
    const [done] = await Promise.all([coord.done, c0.run(), c1.run()]);
    expect(done.completedRounds).to.equal(2);
    expect(coord.history.map((r) => r.contributors)).to.deep.equal([2, 2]);
    expect(trainCalls).to.equal(2); // round 1 was not trained twice
    const r1 = coord.history[0]!.participants.find((p) => p.clientId === 'c0')!;
    expect(r1.status).to.equal('uploaded');
    expect(r1.bytesDown).to.be.greaterThan(0);
    await coord.close();
  });
});

type LocalTrainerTrain = Awaited<ReturnType<typeof pullTrainer>>['train'];
