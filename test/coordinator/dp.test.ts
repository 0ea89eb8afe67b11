/**
 * Client-level DP over real sockets with the stand-in trainer (test/coordinator/helpers.ts):
 *  - distributed Skellam noise with secure aggregation and one dropout: rounds complete, the
 *    unmasked result differs from the noiseless one (recomputed here from what the clients'
 *    observers saw) by noise of the announced scale, and the ε in /status equals an accountant
 *    run here over the realized survivors;
 *  - central noise with a budget: the coordinator refuses the round that would exceed it, ends
 *    the run cleanly with a reason, and writes privacy.json beside the exported adapter.
 */
import { expect } from 'chai';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { setLogLevel } from '../../shared/log.js';
import { PrivacyAccountant, distributedRound, centralRound, roundRdp } from '../../shared/privacy/index.js';
import type { LoraAdapter } from '../../shared/lora/adapter.js';
import { FIXTURE, contributionLog, plainAggregate, pullTrainer, type Dump } from './helpers.js';
import { Resources, waitFor } from './hostile-client.js';

function l2(v: Float32Array): number { let s = 0; for (const x of v) s += x * x; return Math.sqrt(s); }

/** Per-coordinate differences got − want over all tensors. */
function diffs(got: LoraAdapter, want: LoraAdapter): Float64Array {
  const out: number[] = [];
  for (const [k, t] of got.tensors) { const u = want.tensors.get(k)!; for (let i = 0; i < t.data.length; i++) out.push(t.data[i]! - u.data[i]!); }
  return Float64Array.from(out);
}

function adapterFromWire(d: Dump, config: LoraAdapter['config']): LoraAdapter {
  return { config, tensors: new Map(d.global.map((t) => [t.name, { shape: [...t.shape], data: new Float32Array(t.data) }])) };
}

describe('client-level differential privacy over the wire', function () {
  this.timeout(60_000);
  let dir: string;
  let r: Resources;
  before(() => setLogLevel('error'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-dp-')); r = new Resources(); });
  afterEach(async () => { await r.closeAll(); await rm(dir, { recursive: true, force: true }); });

  it('--dp distributed with secure aggregation and one dropout: noise of the announced scale, ε in /status from the realized survivors', async () => {
    const S = 1, z = 0.8, population = 10;
    const coord = r.coordinator(new Coordinator({
      allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 2, clientsPerRound: 5, minClients: 3, maxRank: 4, localSteps: 1,
      // round 1 starts once all five are ready; round 2 (four left) after the join wait
      joinWaitMs: 1500, refactor: false, rejoinGraceMs: 100, strategy: 'fedit', dp: { mode: 'distributed', clip: S, noise: z, delta: 1e-5, population },
    }));
    const url = await coord.serve(0);
    const init = coord.globalAdapter!;
    const trainers = await Promise.all([0.1, 0.2, 0.3, 0.4, 0.5].map((t, i) => pullTrainer(t, 8 + i)));
    const clients: Client[] = [];
    const seen = contributionLog();
    // c4 vanishes while training in round 1, once its key shares are out (the masked-input phase)
    const vanishing = {
      ...trainers[4]!,
      train: async (...a: Parameters<typeof trainers[4]['train']>) => {
        await waitFor('the masked-input phase', () => coord.status().collecting === 'masked', 10_000);
        void clients[4]!.stop();
        return trainers[4]!.train(...a);
      },
    };
    for (let i = 0; i < 5; i++) {
      clients.push(r.client(new Client({
        coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `c${i}`), maxRank: 4, clientId: `c${i}`, trainerFactory: async () => (i === 4 ? vanishing : trainers[i]!),
        observe: seen.observer(i),
      })));
    }
    const runs = clients.map((c, i) => (i < 4 ? c.run() : void c.run().catch(() => undefined)));
    await coord.done;
    await Promise.all(runs.slice(0, 4));

    const status = await (await fetch(`${url}/status`)).json() as ReturnType<Coordinator['status']>;
    const completed = coord.history.filter((h) => h.status === 'completed');
    expect(completed.map((h) => h.contributors)).to.deep.equal([4, 4]);
    expect(completed[0]!.secure!.droppedAfterSharing).to.deep.equal(['c4']);

    // what the clients added: weight 1, whole shared vector clipped to L2 ≤ S
    const round1 = [0, 1, 2, 3].map((i) => seen.of(i, 1));
    const round2 = [0, 1, 2, 3].map((i) => seen.of(i, 2));
    for (const d of [...round1, ...round2]) {
      expect(d.weight).to.equal(1);
      expect(l2(d.contribution)).to.be.at.most(S);
    }
    expect(Math.max(...round1.map((d) => l2(d.contribution)))).to.be.greaterThan(0.99 * S); // the clip was active

    // noise in each round's result: global − noiseless = Σ noise · 2^−f / m, with Σ noise ∼ Sk(m·μ_client)
    const after1 = adapterFromWire(round2[0]!, init.config);
    const checks: [Dump[], LoraAdapter, LoraAdapter][] = [[round1, init, after1], [round2, after1, coord.globalAdapter!]];
    for (const [k, [dumps, previous, got]] of checks.entries()) {
      const rec = completed[k]!.privacy!;
      const m = dumps.length, f = rec.fracBits!;
      const noiseless = plainAggregate(dumps, previous, 'fedit', 4).adapter;
      const e = diffs(got, noiseless);
      let s1 = 0, s2 = 0;
      for (const x of e) { s1 += x; s2 += x * x; }
      const n = e.length, mean = s1 / n, variance = s2 / n - mean * mean;
      const expected = (m * rec.clientVariance! * 4 ** -f) / (m * m);
      console.log(`      round ${k + 1}: ${n} coordinates, noise sd ${Math.sqrt(variance).toExponential(3)} vs announced ${Math.sqrt(expected).toExponential(3)} (f=${f}, μ_client=${rec.clientVariance!.toExponential(3)})`);
      expect(variance).to.be.greaterThan(0);
      expect(Math.abs(variance / expected - 1)).to.be.below(6 * Math.sqrt(2 / n) + 0.01);
      expect(Math.abs(mean)).to.be.below(6 * Math.sqrt(expected / n));
    }

    // ε: an accountant run here over the realized survivors gives exactly what /status reports
    const acc = new PrivacyAccountant();
    for (const h of completed) {
      const p = h.privacy!;
      expect(p.survivors).to.equal(h.contributors);
      acc.add(roundRdp(acc.orders, distributedRound({ clientVariance: p.clientVariance!, survivors: h.contributors, dpClip: S, fracBits: p.fracBits!, length: round1[0]!.contribution.length, q: 5 / population })));
    }
    expect(status.privacy).to.deep.include({ mode: 'distributed', rounds: 2, delta: 1e-5, q: 0.5, clip: S, z });
    expect(status.privacy!.epsilon).to.equal(acc.epsilon(1e-5));
    expect(completed[1]!.privacy!.epsilon).to.equal(status.privacy!.epsilon);
    expect(completed[0]!.privacy!.epsilon).to.be.below(completed[1]!.privacy!.epsilon);
    // the survivors less one carry z²S² by design: the counted noise multiplier is z·√(3/4·… ) ≥ z·√((m−1)/(n−1))
    expect(completed[0]!.privacy!.z).to.be.closeTo(z * Math.sqrt(3 / 4), 1e-3);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).to.match(new RegExp(`^fedlora_dp_epsilon ${status.privacy!.epsilon.toString().slice(0, 8)}`, 'm'));
  });

  it('a resumed coordinator continues the composition from the checkpointed accountant', async () => {
    const S = 0.5, z = 1.2, q = 2 / 4, delta = 1e-5;
    const opts = {
      allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), clientsPerRound: 2, minClients: 2, maxRank: 2, localSteps: 1,
      joinWaitMs: 50, refactor: false, strategy: 'fedit' as const, insecureAggregation: true, dp: { mode: 'central' as const, clip: S, noise: z, delta, population: 4 },
    };
    const trainers = await Promise.all([0.1, 0.2].map((t) => pullTrainer(t)));
    const session = async (rounds: number, tag: string) => {
      const coord = r.coordinator(new Coordinator({ ...opts, rounds }));
      const url = await coord.serve(0);
      const clients = [0, 1].map((i) => r.client(new Client({ coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `${tag}${i}`), maxRank: 2, clientId: `c${i}`, trainerFactory: async () => trainers[i]!, insecureAggregation: true })));
      await Promise.all([coord.done, ...clients.map((c) => c.run())]);
      const st = coord.status();
      await coord.close();
      return st;
    };
    const first = await session(1, 'a');
    expect(first.privacy!.rounds).to.equal(1);
    const second = await session(3, 'b');
    expect(second.completedRounds).to.equal(3);
    const acc = new PrivacyAccountant();
    const per = roundRdp(acc.orders, centralRound(z, q));
    for (let i = 0; i < 3; i++) acc.add(per);
    expect(second.privacy!.rounds).to.equal(3);
    expect(second.privacy!.epsilon).to.be.closeTo(acc.epsilon(delta), 1e-12);
    expect(second.privacy!.epsilon).to.be.above(first.privacy!.epsilon);
  });

  it('--dp central with a target ε: the round that would exceed it is refused, the run ends cleanly, privacy.json beside the export', async () => {
    const S = 0.5, z = 1.5, q = 3 / 6, delta = 1e-5;
    // budget between two and three rounds' worth
    const acc = new PrivacyAccountant();
    const per = roundRdp(acc.orders, centralRound(z, q));
    acc.add(per); acc.add(per);
    const two = acc.epsilon(delta), three = acc.epsilon(delta, per);
    const target = (two + three) / 2;
    const exportDir = join(dir, 'export');
    const coord = r.coordinator(new Coordinator({
      allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 5, clientsPerRound: 3, minClients: 3, maxRank: 2, localSteps: 1,
      joinWaitMs: 50, refactor: false, strategy: 'fedit', insecureAggregation: true, exportDir,
      dp: { mode: 'central', clip: S, noise: z, delta, population: 6, targetEpsilon: target },
    }));
    const url = await coord.serve(0);
    const trainers = await Promise.all([0.1, 0.2, 0.3].map((t) => pullTrainer(t)));
    const clients = [0, 1, 2].map((i) => r.client(new Client({ coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `c${i}`), maxRank: 2, clientId: `c${i}`, trainerFactory: async () => trainers[i]!, insecureAggregation: true })));
    await Promise.all([coord.done, ...clients.map((c) => c.run())]);
    const st = coord.status();
    expect(st.completedRounds).to.equal(2);
    expect(st.phase).to.equal('done');
    expect(st.doneReason).to.match(/privacy budget/);
    expect(st.privacy!.epsilon).to.equal(two);
    const pj = JSON.parse(await readFile(join(exportDir, 'privacy.json'), 'utf8'));
    expect(pj).to.deep.include({ mode: 'central', mechanism: 'gaussian', z, S, q, rounds: 2, delta, epsilon: two });
    await readFile(join(exportDir, 'adapter_config.json'), 'utf8');
  });
});
