import { expect } from 'chai';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { assignRanks, loadScenario, maxRankOf, parseScenario, presetNames, serverOptFor } from '../../simulations/scenario.js';
import { prepareClients } from '../../simulations/runner/data.js';
import { dropoutSchedule } from '../../simulations/runner/run.js';
import { ConfigError } from '../../shared/errors.js';
import { strategyNames } from '../../shared/aggregation/index.js';

function refuses(raw: unknown, field: string): void {
  let err: unknown;
  try { parseScenario(raw); } catch (e) { err = e; }
  expect(err, `expected a ConfigError for ${field}`).to.be.instanceOf(ConfigError);
  expect((err as Error).message).to.include(`"${field}"`);
}

describe('simulation scenarios', () => {
  it('every preset parses, and the default is the documented one', async () => {
    const names = await presetNames();
    expect(names).to.include.members(['default', 'dropout30', 'stragglers', 'killed-client', 'tiny-ci']);
    for (const n of names) expect((await loadScenario(n)).name).to.equal(n);
    const d = await loadScenario('default');
    expect(d.dataset).to.equal('spam');
    expect(d.secureAggregation).to.equal(true);
    expect(d.faults.dropoutsPerRound).to.equal(1);
    expect(d.personal.length).to.be.greaterThan(0);
    expect(Object.keys(d.rankMix).length).to.be.greaterThan(1);
    // the default is one federated run (it must stay within 5 minutes on 2 cores); the strategies
    // preset compares every strategy on the same partition
    expect(d.compare).to.deep.equal([]);
    expect(d.serverOpt.name).to.equal('fedavgm');
    const st = await loadScenario('strategies');
    expect(st.compare).to.have.members(['fedit', 'ffa', 'fedsa', 'lora-xs']);
    for (const n of st.compare) expect(strategyNames()).to.include(n);
    expect({ ...st, name: d.name, description: d.description, compare: d.compare }).to.deep.equal(d);
    const t = await loadScenario('tiny-ci');
    expect([t.rounds, t.clients]).to.deep.equal([2, 3]);
  });

  it('refuses bad scenarios with a ConfigError naming the field', async () => {
    refuses({ clients: 0 }, 'clients');
    refuses({ clients: 3, clientsPerRound: 4 }, 'clientsPerRound');
    refuses({ partition: { kind: 'dirichlet', alpha: -1 } }, 'partition.alpha');
    refuses({ partition: { kind: 'zipf' } }, 'partition.kind');
    refuses({ partition: { kind: 'dirichlet', alpha: 1, minPerClient: 1 } }, 'partition.minPerClient');
    refuses({ partition: { kind: 'dirichlet', alpha: 1, minPerClient: 2.5 } }, 'partition.minPerClient');
    refuses({ maxTrainPerClient: -1 }, 'maxTrainPerClient');
    refuses({ strategy: 'fedprox' }, 'strategy');
    refuses({ compare: ['fedit', 'nope'] }, 'compare[1]');
    refuses({ rankMix: { 4: 0.5, 8: 0.4 } }, 'rankMix');
    refuses({ rankMix: { x: 1 } }, 'rankMix.x');
    refuses({ train: { lr: 0 } }, 'train.lr');
    refuses({ train: { epochs: 3 } }, 'train.epochs');
    refuses({ faults: { dropoutProbability: 1.5 } }, 'faults.dropoutProbability');
    refuses({ rounds: 2, faults: { kill: { client: 0, round: 3 } } }, 'faults.kill.round');
    refuses({ clients: 3, clientsPerRound: 3, minClients: 3, faults: { dropoutsPerRound: 1 } }, 'minClients');
    refuses({ minClients: 1, clients: 2, clientsPerRound: 2 }, 'minClients');
    refuses({ backend: 'tpu' }, 'backend');
    refuses({ colour: 'blue' }, 'colour');
    await loadScenario('no-such-preset').then(() => expect.fail('loaded'), (e: unknown) => expect(e).to.be.instanceOf(ConfigError));
  });

  it('evaluation fields (testSet, finalWindow, seeds) validate and default; benchmark = default over 3 seeds via extends', async () => {
    const d = parseScenario({});
    expect([d.testSet, d.finalWindow, d.seeds]).to.deep.equal([0, 3, []]);
    const s = parseScenario({ testSet: 256, finalWindow: 5, seeds: [1, 2, 3] });
    expect([s.testSet, s.finalWindow, s.seeds]).to.deep.equal([256, 5, [1, 2, 3]]);
    refuses({ testSet: -1 }, 'testSet');
    refuses({ testSet: 1.5 }, 'testSet');
    refuses({ finalWindow: 0 }, 'finalWindow');
    refuses({ evalEvery: 0 }, 'evalEvery');
    expect(parseScenario({ evalEvery: 5 }).evalEvery).to.equal(5);
    refuses({ seeds: 3 }, 'seeds');
    refuses({ seeds: [1, 1] }, 'seeds');
    refuses({ seeds: [1, -2] }, 'seeds[1]');
    refuses({ seeds: Array.from({ length: 33 }, (_, i) => i) }, 'seeds');
    refuses({ extends: 'default' }, 'extends'); // resolved by loadScenario only
    const def = await loadScenario('default');
    expect(def.testSet).to.be.at.least(64);
    const bench = await loadScenario('benchmark');
    expect(bench.seeds).to.have.length(3);
    // everything else is the default's, so the benchmark follows the default when the default changes
    const strip = (x: typeof def) => ({ ...x, name: '', description: '', seeds: [] });
    expect(strip(bench)).to.deep.equal(strip(def));
    const dir = await mkdtemp(join(tmpdir(), 'fedlora-scn-'));
    try {
      await writeFile(join(dir, 'mine.json'), JSON.stringify({ extends: 'tiny-ci', name: 'mine', rounds: 1, seeds: [5, 6] }));
      const mine = await loadScenario(join(dir, 'mine.json'));
      expect([mine.name, mine.rounds, mine.seeds, mine.clients]).to.deep.equal(['mine', 1, [5, 6], (await loadScenario('tiny-ci')).clients]);
      for (const [bad, why] of [[{ extends: 'no-such-preset' }, /no scenario preset/], [{ extends: '../default' }, /"extends"/], [{ extends: 3 }, /"extends"/]] as const) {
        await writeFile(join(dir, 'bad.json'), JSON.stringify(bad));
        await loadScenario(join(dir, 'bad.json')).then(() => expect.fail('loaded'), (e: unknown) => { expect(e).to.be.instanceOf(ConfigError); expect((e as Error).message).to.match(why); });
      }
    } finally { await rm(dir, { recursive: true, force: true }); }
  });

  it('serverOpt: defaults to none, validates like the other fields, applies to the runs it composes with', async () => {
    expect(parseScenario({}).serverOpt).to.deep.equal({ name: 'none' });
    expect(parseScenario({ serverOpt: { name: 'fedadam', lr: 0.02 } }).serverOpt).to.deep.equal({ name: 'fedadam', lr: 0.02 });
    refuses({ serverOpt: { name: 'adam' } }, 'serverOpt');
    refuses({ serverOpt: { name: 'fedyogi', beta2: 1 } }, 'serverOpt');
    refuses({ serverOpt: { name: 'fedavgm', eps: 1e-3 } }, 'serverOpt');
    refuses({ serverOpt: 'fedadam' }, 'serverOpt');
    refuses({ strategy: 'fedavgm', serverOpt: { name: 'fedadam' } }, 'serverOpt');
    const s = parseScenario({ strategy: 'rank-aware', compare: ['fedit', 'fedavgm'], serverOpt: { name: 'fedyogi' } });
    expect(serverOptFor(s, 'rank-aware')).to.deep.equal({ name: 'fedyogi' });
    expect(serverOptFor(s, 'fedit')).to.deep.equal({ name: 'fedyogi' });
    expect(serverOptFor(s, 'fedavgm'), 'fedavgm keeps its own momentum').to.equal(undefined);
    expect(serverOptFor(parseScenario({}), 'rank-aware')).to.equal(undefined);
  });

  it('personalTrain: steps and lr default to the round\'s, prox to none; validated like the other fields', () => {
    expect(parseScenario({ train: { localSteps: 6, lr: 0.002 } }).personalTrain).to.deep.equal({ steps: 6, lr: 0.002, prox: 0 });
    expect(parseScenario({ train: { localSteps: 6 }, personalTrain: { steps: 12, lr: 0.01, prox: 0.5 } }).personalTrain).to.deep.equal({ steps: 12, lr: 0.01, prox: 0.5 });
    // steps 0: the personal copy is the global's, never fine-tuned
    expect(parseScenario({ personalTrain: { steps: 0 } }).personalTrain.steps).to.equal(0);
    refuses({ personalTrain: { steps: -1 } }, 'personalTrain.steps');
    refuses({ personalTrain: { steps: 2.5 } }, 'personalTrain.steps');
    refuses({ personalTrain: { lr: 0 } }, 'personalTrain.lr');
    refuses({ personalTrain: { prox: -0.1 } }, 'personalTrain.prox');
    refuses({ personalTrain: { prox: 'big' } }, 'personalTrain.prox');
    refuses({ personalTrain: { epochs: 2 } }, 'personalTrain.epochs');
    refuses({ personalTrain: 12 }, 'personalTrain');
  });

  it('assigns ranks deterministically in the mix proportions', () => {
    const a = assignRanks({ 4: 0.5, 8: 0.3, 16: 0.2 }, 10, 42);
    expect(a).to.deep.equal(assignRanks({ 4: 0.5, 8: 0.3, 16: 0.2 }, 10, 42));
    expect([...a].sort((x, y) => x - y)).to.deep.equal([4, 4, 4, 4, 4, 8, 8, 8, 16, 16]);
    expect(assignRanks({ 4: 0.5, 8: 0.3, 16: 0.2 }, 7, 1)).to.have.length(7);
    expect(maxRankOf({ rankMix: { 4: 0.5, 16: 0.5 } })).to.equal(16);
  });

  it('same seed → same client files; another seed → another partition; dropouts follow the schedule', async function () {
    this.timeout(20_000);
    const s = parseScenario({ ...(await loadScenario('tiny-ci')), faults: { dropoutsPerRound: 1 } });
    const dirs = await Promise.all([0, 1, 2, 3].map(() => mkdtemp(join(tmpdir(), 'fedlora-scn-'))));
    try {
      const a = await prepareClients(s, dirs[0]!);
      const b = await prepareClients(s, dirs[1]!);
      const c = await prepareClients({ ...s, seed: s.seed + 1 }, dirs[2]!);
      for (let i = 0; i < a.length; i++) {
        expect(await readFile(a[i]!.trainFile, 'utf8')).to.equal(await readFile(b[i]!.trainFile, 'utf8'));
        expect(await readFile(a[i]!.evalFile, 'utf8')).to.equal(await readFile(b[i]!.evalFile, 'utf8'));
      }
      expect(JSON.stringify(a.map((x) => x.train))).to.not.equal(JSON.stringify(c.map((x) => x.train)));
      // every client has both a train and an eval split, and no email sits in two clients
      const seen = new Set<string>();
      for (const x of a) {
        expect(x.train.length).to.be.greaterThan(0);
        expect(x.eval.length).to.be.greaterThan(0);
        for (const e of [...x.train, ...x.eval]) { const k = JSON.stringify(e); expect(seen.has(k)).to.equal(false); seen.add(k); }
      }
      // maxTrainPerClient caps each training split to a subset of what it was; minPerClient bounds the smallest mailbox
      const capped = await prepareClients(parseScenario({ ...s, maxTrainPerClient: 3, partition: { kind: 'dirichlet', alpha: 0.5, minPerClient: 12 } }), dirs[2]!);
      const uncapped = await prepareClients(parseScenario({ ...s, partition: { kind: 'dirichlet', alpha: 0.5, minPerClient: 12 } }), dirs[3]!);
      for (let i = 0; i < capped.length; i++) {
        expect(capped[i]!.train).to.have.length(Math.min(3, uncapped[i]!.train.length));
        const pool = new Set(uncapped[i]!.train.map((e) => JSON.stringify(e)));
        for (const e of capped[i]!.train) expect(pool.has(JSON.stringify(e))).to.equal(true);
        expect(capped[i]!.eval).to.deep.equal(uncapped[i]!.eval);
        expect(uncapped[i]!.train.length + uncapped[i]!.eval.length).to.be.at.least(12);
        expect(Object.values(capped[i]!.labelCounts).reduce((p, q) => p + q, 0)).to.equal(capped[i]!.train.length + capped[i]!.eval.length);
      }
      const sched = dropoutSchedule(s, a, new Set());
      for (let r = 1; r <= s.rounds; r++) expect([...sched.values()].filter((rs) => rs.includes(r))).to.have.length(1);
      expect([...dropoutSchedule(s, a, new Set()).entries()]).to.deep.equal([...sched.entries()]);
    } finally {
      await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
    }
  });
});
