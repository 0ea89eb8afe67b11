/**
 * The arithmetic behind a report's headline figures: the last-K mean, mean ± sd over seeds, the
 * multi-seed report, and the label-only reference rates. All checked against hand computations.
 */
import { expect } from 'chai';
import { aggregateReports, aggregateMetrics, finalFigure, meanSd, renderReportHtml, formatSummaryTable, sampleReport, assertReport, type Report } from '../../simulations/report/index.js';
import { referenceLines } from '../../simulations/report/specs.js';
import { referenceRates, majorityLabel, constantRate } from '../../simulations/runner/references.js';
import { baselineCosts, baselineSplit, localStepsPerRound, ownStepsPerRound, roundFigures } from '../../simulations/runner/run.js';
import { evaluatedRounds } from '../../simulations/scenario.js';

describe('report statistics', () => {
  it('meanSd: mean and sample sd (n − 1); nulls and NaN stay out; no sd below two values', () => {
    const r = meanSd([0.8, 0.9, 1.0, null, NaN]);
    expect(r.mean).to.be.closeTo(0.9, 1e-12);
    expect(r.sd).to.be.closeTo(0.1, 1e-12); // sqrt((0.01 + 0 + 0.01) / 2)
    expect(r.n).to.equal(3);
    expect(meanSd([0.7])).to.deep.equal({ mean: 0.7, sd: null, n: 1 });
    expect(meanSd([])).to.deep.equal({ mean: null, sd: null, n: 0 });
  });

  it('finalFigure: mean of the last K evaluated rounds, clamped, skipping unevaluated rounds; last round kept', () => {
    const curve = [
      { round: 1, accuracy: 0.5, f1: 0.4, loss: 1.0 },
      { round: 2, accuracy: 0.6, f1: 0.5, loss: 0.8 },
      { round: 3, accuracy: null, f1: null, loss: null }, // not evaluated (e.g. the eval job failed)
      { round: 4, accuracy: 0.9, f1: 0.7, loss: 0.4 },
    ];
    const f = finalFigure(curve, 3);
    expect(f.window).to.equal(3);
    expect(f.accuracy).to.be.closeTo((0.5 + 0.6 + 0.9) / 3, 1e-12);
    expect(f.f1).to.be.closeTo((0.4 + 0.5 + 0.7) / 3, 1e-12);
    expect(f.loss).to.be.closeTo((1.0 + 0.8 + 0.4) / 3, 1e-12);
    expect(f.last).to.deep.equal({ loss: 0.4, accuracy: 0.9, f1: 0.7 });
    const two = finalFigure(curve, 2);
    expect(two.accuracy).to.be.closeTo(0.75, 1e-12);
    // more rounds asked than evaluated: clamped to what there is
    const all = finalFigure(curve, 10);
    expect(all.window).to.equal(3);
    expect(all.accuracy).to.be.closeTo(f.accuracy!, 1e-12);
    expect(finalFigure(curve, 1).accuracy).to.equal(0.9);
    expect(finalFigure([], 3)).to.deep.equal({ loss: null, accuracy: null, f1: null, window: 0 });
  });

  it('aggregateMetrics: mean ± sd over seeds; a single seed has no sd', () => {
    const m = aggregateMetrics([
      { loss: 0.3, accuracy: 0.8, f1: 0.7, n: 256 },
      { loss: 0.5, accuracy: 0.9, f1: null, n: 256 },
      { loss: 0.4, accuracy: 0.85, f1: 0.75, n: 256 },
    ]);
    expect(m.accuracy).to.be.closeTo(0.85, 1e-12);
    expect(m.sd!.accuracy).to.be.closeTo(0.05, 1e-12);
    expect(m.loss).to.be.closeTo(0.4, 1e-12);
    expect(m.sd!.loss).to.be.closeTo(0.1, 1e-12);
    expect(m.f1).to.be.closeTo(0.725, 1e-12); // over the two seeds that have it
    expect(m.sd!.f1).to.be.closeTo(Math.sqrt(2 * 0.025 ** 2), 1e-12);
    expect(m.seeds).to.equal(3);
    expect(m.n).to.equal(256);
    const one = aggregateMetrics([{ loss: 0.3, accuracy: 0.8, f1: 0.7 }]);
    expect(one.sd).to.equal(undefined);
    expect(one.accuracy).to.equal(0.8);
  });

  it('aggregateReports: every row of the summary is mean ± sd over the per-seed reports', () => {
    const seeds = [1, 2, 3];
    const reports: Report[] = seeds.map((seed) => sampleReport({ clients: 4, rounds: 5, seed }));
    const agg = aggregateReports(reports, seeds.map((seed) => ({ seed, dir: `seed-${seed}`, wallMs: 1000 })));
    assertReport(JSON.parse(JSON.stringify(agg)));
    const by = (f: (r: Report) => number | null | undefined) => reports.map(f) as number[];
    const check = (got: { accuracy: number | null; sd?: { accuracy: number | null } }, xs: number[]) => {
      const mu = xs.reduce((a, b) => a + b, 0) / xs.length;
      const sd = Math.sqrt(xs.reduce((a, b) => a + (b - mu) ** 2, 0) / (xs.length - 1));
      expect(got.accuracy).to.be.closeTo(mu, 1e-12);
      expect(got.sd!.accuracy).to.be.closeTo(sd, 1e-12);
    };
    check(agg.final.global, by((r) => r.final.global.accuracy));
    check(agg.final.personalized, by((r) => r.final.personalized.accuracy));
    check(agg.final.global.last!, by((r) => r.final.global.last!.accuracy));
    check(agg.baselines.localOnly!.final, by((r) => r.baselines.localOnly!.final.accuracy));
    check(agg.baselines.centralized!.final, by((r) => r.baselines.centralized!.final.accuracy));
    check(agg.references!.alwaysMajority.test!, by((r) => r.references!.alwaysMajority.test!.accuracy));
    for (const name of ['fedit', 'ffa', 'rank-aware', 'fedsa']) {
      check(agg.baselines.strategies.find((s) => s.strategy === name)!.final.global, by((r) => r.baselines.strategies.find((s) => s.strategy === name)!.final.global.accuracy));
    }
    // curves: point-wise over seeds
    check(agg.rounds[2]!.global, by((r) => r.rounds[2]!.global.accuracy));
    check(agg.baselines.centralized!.curve![4]! as { accuracy: number; sd: { accuracy: number } }, by((r) => r.baselines.centralized!.curve![4]!.accuracy));
    expect(agg.seeds!.map((s) => s.seed)).to.deep.equal(seeds);
    expect(agg.scenario.seeds).to.deep.equal(seeds);
    expect(agg.clients).to.deep.equal([]);
    expect(agg.wallMs).to.equal(reports.reduce((a, r) => a + r.wallMs, 0));
    // rendered: ± in the table and on the page, the per-seed reports linked
    const table = formatSummaryTable(agg);
    expect(table).to.match(/\d+\.\d% ± \d+\.\d/).and.contain('mean ± sd over 3 seeds');
    const html = renderReportHtml(agg);
    for (const s of seeds) expect(html).to.contain(`href="seed-${s}/report.html"`);
    expect(html).to.match(/\d+\.\d% ± \d+\.\d/);
    // the accuracy chart draws the sd as error bars (3 strokes each): a copy without sd has fewer paths
    const paths = (h: string) => (/<figure id="chart-accuracy">([\s\S]*?)<\/figure>/.exec(h)![1]!.match(/<path /g) ?? []).length;
    const noSd = structuredClone(agg);
    for (const x of noSd.rounds) { delete x.global.sd; delete x.personalized.sd; }
    for (const c of [noSd.baselines.centralized!.curve!, noSd.baselines.localOnly!.curve ?? []]) for (const p of c) delete p.sd;
    expect(paths(html)).to.be.greaterThan(paths(renderReportHtml(noSd)) + 3 * 5);
    expect(() => aggregateReports(reports, [])).to.throw(RangeError);
  });
});

describe('reference rates', () => {
  it('always-majority uses the pooled training majority; per-client majority each client\'s own', () => {
    // pooled train: ham 2+1+0 = 3, spam 0+1+3 = 4 → pooled majority "spam"
    const d = {
      train: [['ham', 'ham'], ['ham', 'spam'], ['spam', 'spam', 'spam']],
      eval: [['ham', 'ham', 'spam', 'ham'], ['spam', 'ham'], ['spam', 'spam', 'ham', 'spam', 'spam']],
      test: ['ham', 'ham', 'ham', 'spam'],
    };
    const r = referenceRates(d);
    expect(r.alwaysMajority.label).to.equal('spam');
    expect(r.alwaysMajority.test!.accuracy).to.be.closeTo(0.25, 1e-12);
    // always "spam" on each client's eval: 1/4, 1/2, 4/5
    expect(r.alwaysMajority.clients.accuracy).to.be.closeTo((0.25 + 0.5 + 0.8) / 3, 1e-12);
    // own majority: c1 ham → 3/4; c2 tie → "ham" (sorts first) → 1/2; c3 spam → 4/5
    expect(r.perClientMajority.clients.accuracy).to.be.closeTo((0.75 + 0.5 + 0.8) / 3, 1e-12);
    // macro-F1 of a constant predictor: only the predicted class has an F1 (2p/(1+p)); the other is 0
    expect(r.alwaysMajority.test!.f1).to.be.closeTo((2 * 0.25 / 1.25 + 0) / 2, 1e-12);
    expect(r.alwaysMajority.test!.loss).to.equal(null);
    expect(majorityLabel(['b', 'a', 'b', 'a'])).to.equal('a');
    expect(majorityLabel([])).to.equal(null);
    expect(constantRate([], 'ham', ['ham', 'spam']).accuracy).to.equal(null);
    expect(() => referenceRates({ train: [[]], eval: [] })).to.throw(RangeError);
  });

  it('are drawn as dashed reference lines on the accuracy chart', () => {
    const r = sampleReport({ clients: 3, rounds: 4 });
    const lines = referenceLines(r);
    expect(lines.map((l) => l.y)).to.deep.equal([r.references!.alwaysMajority.test!.accuracy, r.references!.perClientMajority.clients.accuracy]);
    for (const l of lines) expect(l.dash!.length).to.be.greaterThan(0);
    const html = renderReportHtml(r);
    const acc = /<figure id="chart-accuracy">([\s\S]*?)<\/figure>/.exec(html)![1]!;
    expect(acc).to.contain('always &quot;ham&quot; (test set)').and.contain('per-client majority');
    // the dashed line sits at the rate's height: the same path as another chart with the same rate moved is different
    const moved = structuredClone(r);
    moved.references!.perClientMajority.clients.accuracy = 0.5;
    expect(/<figure id="chart-accuracy">([\s\S]*?)<\/figure>/.exec(renderReportHtml(moved))![1]).to.not.equal(acc);
  });
});

describe('runner arithmetic', () => {
  it('local-only budget: what a client trains in the federation, in expectation, with cumulative rounding', () => {
    const base = { rounds: 3, clients: 6, clientsPerRound: 6, train: { localSteps: 8, lr: 0.005, batchSize: 8, maxSeqLen: 128 }, personal: [], personalTrain: { steps: 5, lr: 0.005, prox: 0 } };
    expect(localStepsPerRound(base)).to.deep.equal([8, 8, 8]);
    const sampled = localStepsPerRound({ ...base, rounds: 4, clientsPerRound: 4 }); // 8 × 4/6 = 5.33 per round
    expect(sampled.reduce((a, b) => a + b, 0)).to.equal(Math.round(4 * 8 * 4 / 6));
    expect(sampled).to.deep.equal([5, 6, 5, 5]);
  });

  it('local-only budget counts the personal fine-tuning steps too: every example a client trains on of its own', () => {
    const base = { rounds: 3, clients: 6, clientsPerRound: 6, train: { localSteps: 8, lr: 0.005, batchSize: 8, maxSeqLen: 128 }, personal: ['*.layers.1.*'], personalTrain: { steps: 5, lr: 0.005, prox: 0 } };
    expect(ownStepsPerRound(base)).to.equal(13);
    expect(localStepsPerRound(base)).to.deep.equal([13, 13, 13]);
    // no personal globs: the personal steps never run, so they are not counted
    expect(ownStepsPerRound({ ...base, personal: [] })).to.equal(8);
    const sampled = localStepsPerRound({ ...base, rounds: 4, clientsPerRound: 4 }); // 13 × 4/6 = 8.67 per round
    expect(sampled.reduce((a, b) => a + b, 0)).to.equal(Math.round(4 * 13 * 4 / 6));
    expect(sampled).to.deep.equal([9, 8, 9, 9]);
  });

  it('baseline split: local-only clients go to the least-loaded worker, worker 0 starting with the centralized steps', () => {
    // the default: 2 workers, 6 clients × 120 local-only steps, centralized 360 steps on worker 0
    expect(baselineSplit(2, 6, 120, 360)).to.deep.equal([[3, 5], [0, 1, 2, 4]]); // 600 and 480 steps
    // no centralized baseline: alternate
    expect(baselineSplit(2, 6, 60, 0)).to.deep.equal([[0, 2, 4], [1, 3, 5]]);
    // the old budget (60 steps each) put exactly the centralized work's worth on each side
    expect(baselineSplit(2, 6, 60, 360)).to.deep.equal([[], [0, 1, 2, 3, 4, 5]]);
    expect(baselineSplit(1, 3, 10, 100)).to.deep.equal([[0, 1, 2]]);
    expect(baselineSplit(3, 2, 10, 0)).to.deep.equal([[0], [1], []]);
    // per-client costs
    expect(baselineSplit(2, 3, [100, 1, 1], 50)).to.deep.equal([[1, 2], [0]]);
  });

  it('baseline costs: steps plus a third of a step per forward batch at every evaluated round', () => {
    const s = { rounds: 10, clients: 6, clientsPerRound: 6, train: { localSteps: 6, lr: 5e-3, batchSize: 8, maxSeqLen: 128 }, personal: ['*.layers.1.*'], personalTrain: { steps: 6, lr: 5e-3, prox: 0 } };
    const c = baselineCosts(s, 4, [64, 64, 64, 64, 64, 60], 256);
    // local-only: 10 × 12 steps, 4 evaluations of 8 batches (the last client's 60 emails are 8 batches too)
    expect(c.perClient).to.deep.equal(Array(6).fill(120 + (4 * 8) / 3));
    // centralized: 10 × 36 steps, 4 evaluations of the test set (32 batches) and the six splits (48 batches)
    expect(c.central).to.be.closeTo(360 + (4 * 80) / 3, 1e-9);
    // the default's figures: centralized and one client on worker 0, five clients on worker 1 (597 and 653)
    expect(baselineSplit(2, 6, c.perClient, c.central)).to.deep.equal([[4], [0, 1, 2, 3, 5]]);
  });

  it('evaluated rounds: every evalEvery-th, the last finalWindow ones and the last', () => {
    expect(evaluatedRounds({ rounds: 10, evalEvery: 1, finalWindow: 3 })).to.deep.equal([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(evaluatedRounds({ rounds: 10, evalEvery: 4, finalWindow: 3 })).to.deep.equal([4, 8, 9, 10]);
    expect(evaluatedRounds({ rounds: 7, evalEvery: 5, finalWindow: 1 })).to.deep.equal([5, 7]);
    expect(evaluatedRounds({ rounds: 2, evalEvery: 9, finalWindow: 5 })).to.deep.equal([1, 2]);
  });

  it('round figures: global from the round\'s evaluation (test set first), personalized the mean over clients that trained', () => {
    const personal = [{ loss: 0.2, accuracy: 0.9, f1: 0.8, n: 10 }, undefined, { loss: 0.4, accuracy: 0.7, f1: 0.6, n: 20 }];
    const onTest = roundFigures({ test: { loss: 0.5, accuracy: 0.8, f1: 0.7, n: 256 }, clients: [] }, personal);
    expect(onTest.global).to.deep.equal({ loss: 0.5, accuracy: 0.8, f1: 0.7, n: 256 });
    expect(onTest.personalized.accuracy).to.be.closeTo(0.8, 1e-12);
    expect(onTest.personalized.n).to.equal(30);
    const onClients = roundFigures({ clients: [{ id: 'c01', metrics: { loss: 1, accuracy: 0.5, f1: 0.4, n: 8 } }, { id: 'c02', metrics: { loss: 0.5, accuracy: 1, f1: 1, n: 8 } }] }, []);
    expect(onClients.global.accuracy).to.be.closeTo(0.75, 1e-12);
    expect(onClients.personalized.accuracy).to.equal(null);
  });
});
