/**
 * Personalization under --personal-mode finetune (the default) over real sockets with the stand-in
 * trainer: the personalized tensors are still trained and shared, so the global adapter keeps a
 * trained counterpart of them, and each round the client fine-tunes a private copy of only those
 * tensors on top of the global adapter it received.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { makeLayout } from '../../shared/aggregation/index.js';
import { loadSafetensors, readFloatTensor } from '../../shared/model/safetensors.js';
import { globMatcher } from '../../shared/protocol/glob.js';
import { setLogLevel } from '../../shared/log.js';
import type { TensorMap } from '../../shared/tensor.js';
import type { ContributionObservation, ClientRoundSummary } from '../../client/participant/observe.js';
import { FIXTURE, pullTrainer } from '../coordinator/helpers.js';
import { Resources } from '../coordinator/hostile-client.js';

describe('personalization: fine-tuned private copy on top of the global adapter (finetune mode)', function () {
  this.timeout(30_000);
  const glob = '*.layers.1.self_attn.q_proj.*';
  const isGlob = globMatcher([glob]);
  const target = 0.1;
  let dir: string;
  let r: Resources;
  let coord: Coordinator;
  let trainer: Awaited<ReturnType<typeof pullTrainer>>;
  const contributions: ContributionObservation[] = [];
  const summaries: ClientRoundSummary[] = [];

  before(async () => {
    setLogLevel('warn');
    dir = await mkdtemp(join(tmpdir(), 'fedlora-personal-'));
    r = new Resources();
    coord = r.coordinator(new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 2, clientsPerRound: 2, minClients: 2, maxRank: 4, strategy: 'rank-aware', localSteps: 2, joinWaitMs: 200, roundTimeoutMs: 10_000 }));
    const url = await coord.serve(0);
    trainer = await pullTrainer(target);
    const other = await pullTrainer(0.3);
    const c0 = r.client(new Client({
      coordinatorUrl: url, dataFile: 'unused.jsonl', stateDir: join(dir, 'c0'), maxRank: 4, clientId: 'c0', personal: [glob], personalSteps: 3,
      trainerFactory: async () => trainer, observe: { contribution: (c) => { contributions.push(c); }, round: (s) => { summaries.push(s); } },
    }));
    const c1 = r.client(new Client({ coordinatorUrl: url, dataFile: 'unused.jsonl', stateDir: join(dir, 'c1'), maxRank: 4, clientId: 'c1', trainerFactory: async () => other }));
    const runs = [c0.run(), c1.run()];
    await coord.done;
    await Promise.all(runs);
  });
  after(async () => { await r.closeAll(); await rm(dir, { recursive: true, force: true }); });

  it('shares the personalized tensors too: they are trained and in the contribution', () => {
    expect(contributions).to.have.length(2);
    for (const c of contributions) {
      const layout = makeLayout(c.layout);
      const mine = layout.entries.filter((e) => isGlob(e.name));
      expect(mine).to.have.length(2);
      for (const e of mine) expect(c.contribution.subarray(e.offset, e.offset + e.size).some((x) => x !== 0), e.name).to.equal(true);
    }
  });

  it('the global adapter has a trained counterpart of each personalized tensor', () => {
    const b = coord.globalAdapter!.tensors.get('base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight')!;
    // B starts at zero and both clients pull it toward their targets
    expect(b.data.some((x) => x !== 0)).to.equal(true);
  });

  it('fine-tunes only the personalized tensors, on a copy carried from round to round, and keeps it on disk', async () => {
    // per round: the shared training, then the fine-tuning run
    expect(trainer.trained).to.have.length(4);
    const [main1, tuned1, main2, tuned2] = trainer.trained as [TensorMap, TensorMap, TensorMap, TensorMap];
    const st = await loadSafetensors(join(dir, 'c0', 'personal.safetensors'));
    expect([...st.entries.keys()].sort()).to.deep.equal([...main2.keys()].filter(isGlob).sort());
    for (const [k, t] of tuned2) {
      const m = main2.get(k)!;
      if (isGlob(k)) {
        // round 1 starts the copy from the global (the same start as the shared training); round 2
        // continues the stored copy: x + 0.5 (target − x) from round 1's result
        expect(tuned1.get(k)!.data).to.deep.equal(main1.get(k)!.data);
        const prev = tuned1.get(k)!.data;
        for (let i = 0; i < t.data.length; i++) expect(t.data[i]!).to.be.closeTo(prev[i]! + 0.5 * (target - prev[i]!), 1e-6);
        expect(readFloatTensor(st, k).data).to.deep.equal(t.data);
      } else {
        // frozen during fine-tuning: still the received global g, where the shared training gave g + 0.5 (target − g)
        for (let i = 0; i < t.data.length; i++) expect(t.data[i]!).to.be.closeTo(2 * m.data[i]! - target, 1e-6);
      }
    }
  });

  it('reports the fine-tuned copy as its personalized model', () => {
    expect(summaries.map((s) => s.round)).to.deep.equal([1, 2]);
    for (const s of summaries) {
      expect(s.personal, `round ${s.round}`).to.not.equal(undefined);
      expect(s.global, `round ${s.round}`).to.not.equal(undefined);
      // the personalized copy moved toward this client's target from the global start
      expect(s.personal!.loss).to.be.lessThan(s.global!.loss);
    }
  });
});
