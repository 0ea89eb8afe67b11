import { expect } from 'chai';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadScenario, parseScenario, type Scenario } from '../../simulations/scenario.js';
import { runSimulation, runScenario, type RoundEvent } from '../../simulations/runner/run.js';
import { assertReport, formatRoundLine, type Report } from '../../simulations/report/index.js';

async function tiny(over: Record<string, unknown> = {}): Promise<Scenario> {
  return parseScenario({ ...(await loadScenario('tiny-ci')), ...over }, 'tiny-ci');
}

describe('simulation runner (real coordinator, clients in worker processes, loopback sockets)', function () {
  this.timeout(180_000); // generous: the machine is shared; no figure here is timed
  let dir: string;
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-sim-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  it('runs tiny-ci (2 rounds × 3 clients) end to end and writes a complete report', async () => {
    const s = await tiny();
    const events: RoundEvent[] = [];
    const details = new Set<string>();
    const { report, files } = await runSimulation(s, { outDir: dir, onEvent: (e) => { if (e.type === 'round') events.push(e); if (e.type === 'progress' && e.progress.detail) details.add(e.progress.detail); } });
    for (const f of [files.json, files.html, files.png]) expect((await stat(f)).size).to.be.greaterThan(100);
    const back: unknown = JSON.parse(await readFile(files.json, 'utf8'));
    assertReport(back);
    expect(report.rounds.map((r) => r.round)).to.deep.equal([1, 2]);
    expect(report.final.rounds).to.equal(2);
    expect(report.clients.map((c) => c.id)).to.deep.equal(['c01', 'c02', 'c03']);
    expect(report.clients.map((c) => c.rank).sort()).to.deep.equal([2, 4, 8]);
    for (const r of report.rounds) {
      expect(r.participants).to.have.length(3);
      expect(r.dropouts).to.deep.equal([]);
      expect(r.bytes.up).to.be.greaterThan(0);
      expect(r.bytes.down).to.be.greaterThan(0);
      // adapters, not models, travel
      expect(r.bytes.up + r.bytes.down).to.be.lessThan(r.bytes.fullModelEquivalent);
      expect(r.clients).to.have.length(3);
    }
    for (const m of [report.final.global, report.final.personalized, report.baselines.localOnly!.final, report.baselines.centralized!.final]) {
      expect(m.accuracy).to.be.within(0, 1);
      expect(m.loss).to.be.a('number').and.greaterThan(0);
    }
    expect(report.baselines.localOnly!.perClient).to.have.length(3);
    expect(report.baselines.centralized!.curve).to.have.length(2);
    expect(report.baselines.strategies.map((x) => x.strategy)).to.deep.equal(['rank-aware', 'fedit']);
    for (const x of report.baselines.strategies) expect(x.curve).to.have.length(2);
    // the global adapter is evaluated on every client's held-out mail after the last round
    expect(report.rounds[1]!.clients.every((c) => typeof c.global?.accuracy === 'number')).to.equal(true);

    // evaluation: a pooled test set, the same size as asked, measured once per round for the global adapter and centralized
    expect(report.evaluation).to.deep.include({ global: 'test', testExamples: s.testSet, finalWindow: s.finalWindow });
    expect(report.evaluation!.perClient.total).to.equal(report.clients.reduce((a, c) => a + c.evalExamples, 0));
    for (const r of report.rounds) expect(r.global.n, `round ${r.round} global on the test set`).to.equal(s.testSet);
    expect(report.baselines.centralized!.curve!.every((p) => typeof p.accuracy === 'number')).to.equal(true);
    expect(report.baselines.centralized!.clients!.curve).to.have.length(2);
    // final figures: mean of the last K rounds of the curve, the last round kept
    const curve = report.rounds.map((r) => r.global.accuracy!);
    expect(report.final.global.window).to.equal(Math.min(s.finalWindow, 2));
    expect(report.final.global.accuracy).to.be.closeTo(curve.slice(-s.finalWindow).reduce((a, b) => a + b, 0) / Math.min(s.finalWindow, 2), 1e-12);
    expect(report.final.global.last!.accuracy).to.equal(curve.at(-1));
    expect(report.final.personalized.last!.accuracy).to.equal(report.rounds.at(-1)!.personalized.accuracy);
    expect(report.baselines.localOnly!.final.window).to.equal(Math.min(s.finalWindow, 2));
    expect(report.final.exported!.global.accuracy).to.be.within(0, 1);
    // reference rates from the data, and the test set's always-majority agrees with its label counts
    const test = (await readFile(join(dir, 'test.jsonl'), 'utf8')).trim().split('\n').map((l) => (JSON.parse(l) as { completion: string }).completion.trim());
    expect(test).to.have.length(s.testSet);
    const ref = report.references!;
    expect(ref.alwaysMajority.test!.accuracy).to.be.closeTo(test.filter((l) => l === ref.alwaysMajority.label).length / test.length, 1e-12);
    expect(ref.perClientMajority.clients.accuracy).to.be.within(0, 1);
    // the console's round lines carry the report's own figures (not the previous round's adapter)
    const mine = events.filter((e) => e.run === 'rank-aware');
    expect(mine.map((e) => e.round)).to.deep.equal([1, 2]);
    for (const e of mine) {
      const r = report.rounds.find((x) => x.round === e.round)!;
      expect(e.global).to.deep.equal(r.global);
      expect(e.personalized).to.deep.equal(r.personalized);
      expect(formatRoundLine(e)).to.contain(`global [pooled test set] acc ${(r.global.accuracy! * 100).toFixed(1)}%`);
    }
    expect(events.filter((e) => e.run === 'fedit')).to.have.length(2);
    // between and after the federations, progress says what runs (final evaluation, baselines)
    expect([...details].some((d) => /final evaluation|local-only|centralized/.test(d)), [...details].join(' | ')).to.equal(true);
  });

  it('runs one simulation per seed and writes one report of mean ± sd, with the per-seed reports beside it', async () => {
    // 2 rounds, evaluated every 2nd and the last 1: only round 2 is evaluated
    const s = await tiny({ compare: [], rounds: 2, evalEvery: 2, finalWindow: 1, baselines: { localOnly: true, centralized: false }, seeds: [7, 8] });
    const { report, files } = await runScenario(s, { outDir: dir });
    const per: Report[] = [];
    for (const seed of [7, 8]) {
      const r: unknown = JSON.parse(await readFile(join(dir, `seed-${seed}`, 'report.json'), 'utf8'));
      assertReport(r);
      expect(r.scenario.seed).to.equal(seed);
      expect(r.rounds.map((x) => x.global.accuracy === null)).to.deep.equal([true, false]);
      expect(r.rounds.map((x) => x.personalized.accuracy === null)).to.deep.equal([true, false]);
      expect(r.baselines.strategies[0]!.curve.map((p) => p.round)).to.deep.equal([2]);
      expect(r.baselines.localOnly!.curve!.map((p) => p.round)).to.deep.equal([2]);
      expect(r.final.global.accuracy).to.equal(r.rounds[1]!.global.accuracy);
      per.push(r);
    }
    const back: unknown = JSON.parse(await readFile(files.json, 'utf8'));
    assertReport(back);
    expect(back.seeds!.map((x) => x.seed)).to.deep.equal([7, 8]);
    const accs = per.map((r) => r.final.global.accuracy!);
    expect(report.final.global.accuracy).to.be.closeTo((accs[0]! + accs[1]!) / 2, 1e-12);
    expect(report.final.global.sd!.accuracy).to.be.closeTo(Math.abs(accs[0]! - accs[1]!) / Math.SQRT2, 1e-12);
    // the pooled test set does not follow the seed; the partition does
    expect(await readFile(join(dir, 'seed-7', 'test.jsonl'), 'utf8')).to.equal(await readFile(join(dir, 'seed-8', 'test.jsonl'), 'utf8'));
    expect(per[0]!.clients.map((c) => c.trainExamples)).to.not.deep.equal(per[1]!.clients.map((c) => c.trainExamples));
    expect(await readFile(files.html, 'utf8')).to.contain('href="seed-7/report.html"');
  });

  it('is reproducible: the same seed gives the same partition and the same metrics', async () => {
    const s = await tiny({ compare: [], baselines: { localOnly: true, centralized: false } });
    const a = (await runSimulation(s, { outDir: join(dir, 'a') })).report;
    const b = (await runSimulation(s, { outDir: join(dir, 'b') })).report;
    expect(b.clients).to.deep.equal(a.clients);
    const figs = (r: typeof a) => [r.final.global, r.final.personalized, r.baselines.localOnly!.final].map((m) => [m.loss, m.accuracy]);
    const fa = figs(a).flat(), fb = figs(b).flat();
    fa.forEach((x, i) => expect(fb[i]!, `figure ${i}`).to.be.closeTo(x!, 1e-4));
    for (let i = 0; i < a.rounds.length; i++) expect(b.rounds[i]!.trainLoss!).to.be.closeTo(a.rounds[i]!.trainLoss!, 1e-4);
  });

  it('completes every round with one injected dropout per round (secure aggregation recovers the sum)', async () => {
    const s = await tiny({ compare: [], baselines: { localOnly: false, centralized: false }, faults: { dropoutsPerRound: 1 } });
    const { report } = await runSimulation(s, { outDir: dir });
    expect(report.final.rounds).to.equal(2);
    expect(report.rounds).to.have.length(2);
    for (const r of report.rounds) {
      expect(r.dropouts).to.have.length(1);
      expect(r.clients.filter((c) => c.dropped)).to.have.length(1);
    }
  });

  it('completes the promised rounds when a client is killed with SIGKILL mid-round', async () => {
    const s = await tiny({ compare: [], baselines: { localOnly: false, centralized: false }, joinWaitMs: 1000, faults: { kill: { client: 0, round: 1, afterMs: 0 } } });
    const { report } = await runSimulation(s, { outDir: dir });
    expect(report.final.rounds).to.equal(2);
    expect(report.rounds[0]!.dropouts).to.include('c01');
    expect(report.rounds[1]!.participants).to.not.include('c01');
    expect(report.notes?.some((n) => /c01 was killed with SIGKILL/.test(n))).to.equal(true);
  });
});
