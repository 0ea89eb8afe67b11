import { expect } from 'chai';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadScenario, parseScenario, type Scenario } from '../../simulations/scenario.js';
import { runSimulation } from '../../simulations/runner/run.js';
import { assertReport } from '../../simulations/report/index.js';

async function tiny(over: Record<string, unknown> = {}): Promise<Scenario> {
  return parseScenario({ ...(await loadScenario('tiny-ci')), ...over }, 'tiny-ci');
}

describe('simulation runner (real coordinator, clients in worker processes, loopback sockets)', function () {
  this.timeout(90_000);
  let dir: string;
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-sim-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  it('runs tiny-ci (2 rounds × 3 clients) end to end and writes a complete report', async () => {
    const s = await tiny();
    const { report, files } = await runSimulation(s, { outDir: dir });
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
