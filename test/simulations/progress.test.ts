/** What `fedlora simulate` prints while it runs: round lines always, progress lines off a terminal every interval. */
import { expect } from 'chai';
import { eventPrinter, progressLine } from '../../bin/commands/simulate.js';
import type { SimEvent, SimProgress } from '../../simulations/runner/run.js';

const progress = (elapsedMs: number, over: Partial<SimProgress> = {}): SimEvent => ({
  type: 'progress',
  progress: { run: 'rank-aware', phase: 'training', round: 2, rounds: 3, participants: 6, uploaded: 4, dropped: 1, elapsedMs, runsDone: 0, runsTotal: 4, ...over },
});

describe('simulate console output', () => {
  it('off a terminal: a plain progress line once per interval of silence, round lines always, no carriage returns', () => {
    let clock = 0;
    const out: string[] = [];
    const print = eventPrinter((t) => out.push(t), false, 15_000, () => clock);
    for (clock = 0; clock <= 60_000; clock += 500) print(progress(clock)); // the runner ticks every 500 ms
    expect(out).to.have.length(4); // at 15, 30, 45 and 60 s
    expect(out.every((l) => l.endsWith('\n') && !l.includes('\r'))).to.equal(true);
    expect(out[0]).to.equal(`${progressLine((progress(15_000) as { progress: SimProgress }).progress)}\n`);
    // a round line resets the interval
    out.length = 0;
    print({ type: 'round', run: 'fedit', round: 1, rounds: 3, contributors: 5, participants: 6, dropouts: ['c02'], trainLoss: 0.5, global: { loss: 0.4, accuracy: 0.8125, f1: 0.7, n: 256 }, personalized: { loss: 0.3, accuracy: 0.9, f1: 0.85, n: 185 }, globalOn: 'test', wallMs: 12_000 });
    expect(out).to.have.length(1);
    expect(out[0]).to.contain('global [pooled test set] acc 81.3% F1 70.0% loss 0.400').and.contain("personalized [clients' eval (mean)] acc 90.0%").and.contain('dropped: c02');
    clock += 14_000;
    print(progress(clock));
    expect(out).to.have.length(1);
    clock += 1_000;
    print(progress(clock, { runsDone: 4, detail: 'centralized round 2/3 (48 steps)' }));
    expect(out[1]).to.match(/federated runs done · runs done 4\/4 · centralized round 2\/3 \(48 steps\)\n$/);
  });

  it('on a terminal: one live line rewritten in place, cleared before a log line', () => {
    const out: string[] = [];
    const print = eventPrinter((t) => out.push(t), true, 15_000, () => 0);
    print(progress(500));
    print(progress(1000));
    print({ type: 'log', message: 'seed 43 (2/3)' });
    expect(out).to.have.length(4);
    expect(out[0]!.startsWith('\r\x1b[2K[')).to.equal(true);
    expect(out[2]).to.equal('\r\x1b[2K');
    expect(out[3]).to.equal('seed 43 (2/3)\n');
  });
});
