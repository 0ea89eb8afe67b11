import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { decode } from '../../shared/codec/index.js';
import { loadSafetensors } from '../../shared/model/safetensors.js';
import { parseLoraName } from '../../shared/lora/adapter.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, contributionLog, pullTrainer } from './helpers.js';

describe('every strategy over the wire', function () {
  this.timeout(30_000);
  let dir: string;
  before(() => setLogLevel('error'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-strat-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  for (const strategy of ['fedit', 'ffa', 'rank-aware', 'fedsa'] as const) {
    it(`${strategy}: uploads carry exactly the shared factors; the global changes only where it should`, async () => {
      const coord = new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 1, clientsPerRound: 2, minClients: 2, maxRank: 4, strategy, localSteps: 1, joinWaitMs: 50 });
      const url = await coord.serve(0);
      const init = coord.globalAdapter!;
      const uploads: Uint8Array[] = [];
      const trainers = await Promise.all([0.1, 0.3].map((t) => pullTrainer(t)));
      // the contribution observer shows each client's plaintext although the wire only carries masked inputs
      const seen = contributionLog();
      const clients = [2, 4].map((rank, i) => new Client({
        coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `c${i}`), maxRank: rank, clientId: `c${i}`, trainerFactory: async () => trainers[i]!,
        observe: { ...seen.observer(i), upload: (b) => uploads.push(b) },
      }));
      await Promise.all([coord.done, ...clients.map((c) => c.run())]);
      const shared = [...init.tensors.keys()].filter((k) => coord.strategy.isShared(k));
      const numel = shared.reduce((s, k) => s + init.tensors.get(k)!.data.length, 0);
      expect(uploads).to.have.length(2);
      for (const u of uploads) expect((decode(u) as { kind: string }).kind).to.equal('masked');
      for (let i = 0; i < 2; i++) {
        expect(seen.of(i).contribution.length).to.equal(numel);
      }
      const g = coord.globalAdapter!;
      for (const [k, t] of g.tensors) {
        const changed = t.data.some((x, i) => x !== init.tensors.get(k)!.data[i]);
        const factor = parseLoraName(k)!.factor;
        if (strategy === 'ffa' && factor === 'A') expect(changed, `${k} frozen`).to.equal(false);
        if (strategy === 'fedsa' && factor === 'B') expect(changed, `${k} personal`).to.equal(false);
        if (coord.strategy.isShared(k)) expect(changed, `${k} aggregated`).to.equal(true);
      }
      if (strategy === 'fedsa') {
        // B never left the clients; each keeps its own trained B on disk
        expect(shared.every((k) => parseLoraName(k)!.factor === 'A')).to.equal(true);
        const st = await loadSafetensors(join(dir, 'c1', 'personal.safetensors'));
        expect([...st.entries.keys()].every((k) => parseLoraName(k)!.factor === 'B')).to.equal(true);
        expect(st.entries.size).to.equal(14);
      }
      await coord.close();
    });
  }
});
