/**
 * The round engine's DP bookkeeping without sockets (test/coordinator/engine-harness.ts): weights are
 * 1, round:start announces dp, and a failed checkpoint forgets a central round (nothing was
 * released) but keeps a distributed one spent (the coordinator saw the noisy sum).
 */
import { expect } from 'chai';
import { EngineHarness } from '../coordinator/engine-harness.js';
import { parseRoundStart, openEnvelope, SIGNED_DOMAINS } from '../../shared/protocol/index.js';
import type { DpConfig } from '../../shared/privacy/index.js';
import { ConfigError } from '../../shared/errors.js';

const dp = (mode: DpConfig['mode']): DpConfig => ({ mode, clip: 1, noise: 1.2, delta: 1e-5, targetEpsilon: Infinity, population: 10, dropoutRate: 0 });

describe('round engine under DP', () => {
  it('weights are 1 and round:start carries the dp settings', async () => {
    const h = await EngineHarness.create({ participants: [{ rank: 4, examples: 10 }, { rank: 2, examples: 20 }, { rank: 4, examples: 5 }], config: { secure: true, dp: dp('distributed') } });
    h.joinAll();
    const start = h.commands.find((c) => c.type === 'start')!;
    const rs = parseRoundStart(openEnvelope(SIGNED_DOMAINS.roundStart, start.bytes, h.coordinator.publicKey));
    expect(rs.participants.map((p) => p.weight)).to.deep.equal([1, 1, 1]);
    expect(rs.dp).to.deep.include({ mode: 'distributed', clip: 1, noise: 1.2 });
    expect(rs.dp!.clientVariance).to.be.closeTo((1.2 * 2 ** rs.secure!.quant.fracBits) ** 2 / 2, 1e-6 * rs.dp!.clientVariance!);
    expect(h.records.at(-1)!.status).to.equal('completed');
    expect(h.engine.privacy!.rounds).to.equal(1);
  });

  it('distributed DP without a usable fixed-point scale is refused when the engine is built, not mid-run', async () => {
    // z = 1e7: the noise headroom leaves so few fractional bits that rounding the 1,792 shared values
    // (√d·2^-(f+1)) would exceed S/2
    let err: unknown;
    try { await EngineHarness.create({ participants: [{ rank: 4, examples: 1 }, { rank: 4, examples: 1 }], config: { secure: true, dp: { ...dp('distributed'), noise: 1e7 } } }); } catch (e) { err = e; }
    expect(err).to.be.instanceOf(ConfigError);
    expect(String(err)).to.match(/dp-clip/);
  });

  for (const mode of ['central', 'distributed'] as const) {
    it(`${mode}: a failed checkpoint ${mode === 'central' ? 'forgets the round' : 'keeps the round spent'}`, async () => {
      const h = await EngineHarness.create({ participants: [{ rank: 4, examples: 10 }, { rank: 2, examples: 20 }], config: { secure: mode === 'distributed', dp: dp(mode) }, autoCheckpoint: false });
      h.joinAll();
      expect(h.engine.phase).to.equal('aggregating');
      const spent = h.engine.privacy!.epsilon;
      expect(spent).to.be.greaterThan(0);
      h.call(() => h.engine.checkpointFailed(1, new Error('disk full')));
      expect(h.records[0]!.status).to.equal('failed');
      // the engine retries at once: the retry's round is aggregated (and accounted) again
      expect(h.engine.phase).to.equal('aggregating');
      if (mode === 'central') {
        expect(h.records[0]!.privacy).to.equal(undefined);
        expect(h.engine.privacy!.rounds).to.equal(1);
        expect(h.engine.privacy!.epsilon).to.equal(spent);
      } else {
        expect(h.records[0]!.privacy!.rounds).to.equal(1);
        expect(h.records[0]!.privacy!.epsilon).to.equal(spent);
        expect(h.engine.privacy!.rounds).to.equal(2);
      }
      h.call(() => h.engine.checkpointed(1));
      expect(h.records.map((r) => r.status)).to.deep.equal(['failed', 'completed']);
      expect(h.engine.privacy!.rounds).to.equal(mode === 'central' ? 1 : 2);
    });
  }
});

describe('round:start dp validation', () => {
  it('parseDpInfo accepts what the coordinator sends and refuses malformed settings', async () => {
    const { parseDpInfo } = await import('../../shared/privacy/index.js');
    expect(parseDpInfo({ mode: 'central', clip: 1, noise: 1.1 })).to.deep.equal({ mode: 'central', clip: 1, noise: 1.1 });
    expect(parseDpInfo({ mode: 'distributed', clip: 1, noise: 1.1, clientVariance: 5e6 })).to.deep.equal({ mode: 'distributed', clip: 1, noise: 1.1, clientVariance: 5e6 });
    for (const bad of [
      null, [], { mode: 'local', clip: 1, noise: 1 }, { mode: 'central', clip: 0, noise: 1 }, { mode: 'central', clip: 1, noise: -1 },
      { mode: 'central', clip: 1, noise: Number.NaN }, { mode: 'central', clip: 1, noise: 1, clientVariance: 3 },
      { mode: 'distributed', clip: 1, noise: 1 }, { mode: 'distributed', clip: 1, noise: 1, clientVariance: 2 ** 42 }, { mode: 'central', clip: '1', noise: 1 },
    ]) {
      expect(() => parseDpInfo(bad), JSON.stringify(bad)).to.throw(/roundStart\.dp/);
    }
  });
});
