/**
 * The round engine without sockets: whole rounds driven synchronously through an in-process host
 * (engine-harness.ts) with a fake clock and participants that seal, mask and unmask for real.
 */
import { expect } from 'chai';
import { EV } from '../../shared/protocol/index.js';
import { encode } from '../../shared/codec/index.js';
import { quantErrorBound, type QuantParams, type UnmaskMsg } from '../../shared/crypto/index.js';
import { elementSlots, type StrategyServer } from '../../shared/aggregation/index.js';
import type { RoundRecord } from '../../coordinator/metrics.js';
import { EngineHarness, MAX_RANK, captureLogs, firstOnly, maxDiff, type HarnessOptions } from './engine-harness.js';

/** Runs `f`, prints how long it took; returns its value. */
function timed<T>(label: string, f: () => T): T {
  const t = performance.now();
  const v = f();
  console.log(`      ${label}: ${(performance.now() - t).toFixed(1)} ms`);
  return v;
}

/** The record's contributors with their public rank and weight. */
function contributorsOf(r: RoundRecord): { id: string; rank: number; weight: number }[] {
  return r.participants.filter((p) => p.status === 'uploaded').map((p) => ({ id: p.clientId, rank: p.rank, weight: p.weight }));
}

function statusOf(r: RoundRecord): Record<string, string> {
  return Object.fromEntries(r.participants.map((p) => [p.clientId, p.status]));
}

/** Checks the global the engine held once `r` was reported against both expectations; returns the largest deviation. */
function checkGlobal(h: EngineHarness, r: RoundRecord, previous = h.initialGlobal, tol = 1e-6): number {
  const at = h.globals.get(r.roundId)!;
  expect(at.completedRounds).to.equal(r.round);
  const got = h.flat(at.global);
  const { viaAggregate, byHand, slotWeights } = h.expected(r.round, contributorsOf(r), previous);
  const d1 = maxDiff(got, viaAggregate);
  const d2 = maxDiff(got, byHand);
  // every slot somebody trained must have moved away from the initial global
  expect(slotWeights.some((w) => w > 0)).to.equal(true);
  expect(d1, 'engine vs aggregateRound').to.be.at.most(tol);
  expect(d2, 'engine vs weighted average by hand').to.be.at.most(tol + 1e-6);
  return Math.max(d1, d2);
}

/** Error tolerance on the global: the fixed-point bound on the sum, over the smallest slot weight. */
function secureTolerance(r: RoundRecord, h: EngineHarness): number {
  const q = h.engine.history.find((x) => x.roundId === r.roundId)!.secure!;
  const total = r.participants.reduce((s, p) => s + p.weight, 0);
  const quant: QuantParams = { clip: q.clip, fracBits: q.fracBits, maxTotalWeight: total, maxClients: r.participants.length };
  const minW = Math.min(...contributorsOf(r).map((c) => c.weight));
  return quantErrorBound(quant, r.contributors) / minW + 1e-6;
}

async function harness(o: HarnessOptions): Promise<EngineHarness> {
  return EngineHarness.create(o);
}

describe('round engine (transport-free)', function () {
  let logs: ReturnType<typeof captureLogs>;
  before(() => { logs = captureLogs(); });
  after(() => logs.restore());

  it('plain round: the new global is the weighted average of contributions clipped to c, weights capped', async () => {
    const h = await harness({
      participants: [{ rank: 4, examples: 50 }, { rank: 3, examples: 1e9 }, { rank: 2, examples: 200 }, { rank: 1, examples: 0 }],
      config: { secure: false },
    });
    timed('plain round, 4 participants', () => h.joinAll());
    expect(h.records).to.have.length(1);
    const r = h.records[0]!;
    expect(r.status).to.equal('completed');
    expect(r.contributors).to.equal(4);
    // weights are min(examples, cap), at least 1; the 1e9 declaration gets the cap
    expect(r.participants.map((p) => [p.clientId, p.rank, p.weight])).to.deep.equal([['p0', 4, 50], ['p1', 3, 1000], ['p2', 2, 200], ['p3', 1, 1]]);
    expect(h.engine.examplesOf('p1')).to.equal(1000);
    // some inputs lie beyond ±c, so the check below also proves the clip
    const x = h.contribution('p1', { round: 1, rank: 3 });
    expect(x.some((v) => Math.abs(v) > h.config.clip)).to.equal(true);
    checkGlobal(h, r, h.initialGlobal, 1e-5);
    expect(h.engine.completedRounds).to.equal(1);
    expect(h.engine.phase).to.equal('done');
    expect(h.done).to.deep.equal({ completedRounds: 1 });
    for (const p of h.parts.values()) {
      expect(p.ends.map((e) => e.status)).to.deep.equal(['completed']);
      expect(p.sessionDone).to.equal(1);
    }
  });

  it('secure round, no dropouts: equals the plain aggregate within quantErrorBound', async () => {
    const h = await harness({ participants: [{ rank: 4, examples: 300 }, { rank: 2, examples: 100 }, { rank: 3, examples: 5000 }, { rank: 1, examples: 20 }, { rank: 4, examples: 70 }] });
    timed('secure round, 5 participants, no dropouts', () => h.joinAll());
    const r = h.records[0]!;
    expect(r.status, r.failure).to.equal('completed');
    expect(r.contributors).to.equal(5);
    expect(r.secure).to.include({ k: 4, t: 3 });
    expect(r.secure!.droppedAfterSharing).to.deep.equal([]);
    expect(r.participants.find((p) => p.clientId === 'p2')!.weight).to.equal(1000);
    const tol = secureTolerance(r, h);
    const d = checkGlobal(h, r, h.initialGlobal, tol);
    console.log(`      max deviation ${d.toExponential(2)} (bound ${tol.toExponential(2)})`);
    for (const p of h.parts.values()) expect(p.errors).to.deep.equal([]);
  });

  describe('secure round with dropouts', () => {
    it('one dropout at every phase: completes over who uploaded, masks of the one that shared keys recovered from shares', async () => {
      const h = await harness({
        participants: Array.from({ length: 8 }, (_, i) => ({ rank: 1 + (i % MAX_RANK), examples: 50 + 25 * i })),
        config: { secAgg: { k: 7, t: 3 }, minClients: 3 },
      });
      h.p('p0').plan = () => ({ stopAfter: 'start' }); // never advertises (stays linked)
      h.p('p1').plan = () => ({ stopAfter: 'advertise', loseLinkOnStop: true }); // advertised, then its link went down
      h.p('p2').plan = () => ({ stopAfter: 'share' }); // shared keys, never uploaded: masks recovered from shares
      h.p('p3').plan = () => ({ stopAfter: 'masked', loseLinkOnStop: true }); // uploaded, gone before the consistency check
      timed('secure round, 8 participants, 4 dropouts (deadlines driven by the fake clock)', () => { h.joinAll(); h.runToEnd(); });
      expect(h.records).to.have.length(1);
      const r = h.records[0]!;
      expect(r.status, r.failure).to.equal('completed');
      expect(r.secure).to.include({ k: 7, t: 3 });
      expect(contributorsOf(r).map((c) => c.id)).to.deep.equal(['p3', 'p4', 'p5', 'p6', 'p7']);
      expect(r.contributors).to.equal(5);
      expect(r.secure!.droppedAfterSharing).to.deep.equal(['p2']);
      expect(statusOf(r)).to.deep.include({ p0: 'timeout', p1: 'dropped', p2: 'timeout', p3: 'uploaded' });
      checkGlobal(h, r, h.initialGlobal, secureTolerance(r, h));
      // the honest ones took part in every phase without a complaint
      for (const id of ['p4', 'p5', 'p6', 'p7']) expect(h.p(id).errors, id).to.deep.equal([]);
    });

    it('too many dropouts: the attempt fails, round:end failed goes out, a retry under a new round id succeeds', async () => {
      const h = await harness({ participants: Array.from({ length: 5 }, (_, i) => ({ rank: 2 + (i % 3), examples: 100 })), config: { minClients: 3 } });
      for (const id of ['p0', 'p1', 'p2']) h.p(id).plan = firstOnly({ stopAfter: 'share' });
      timed('failed attempt + retry, 5 participants', () => { h.joinAll(); h.runToEnd(); });
      expect(h.records.map((r) => r.status)).to.deep.equal(['failed', 'completed']);
      const [failed, ok] = h.records as [RoundRecord, RoundRecord];
      expect(failed.failure).to.match(/^SECAGG_THRESHOLD: .*only 2 masked inputs, threshold is 3/);
      expect(failed.culprits).to.equal(undefined);
      expect(h.engine.completedRounds).to.equal(1);
      expect(ok.round).to.equal(failed.round);
      expect(ok.roundId).to.not.equal(failed.roundId);
      expect(ok.attempt).to.equal(failed.attempt! + 1);
      expect(ok.contributors).to.equal(5);
      for (const p of h.parts.values()) {
        expect(p.ends.map((e) => [e.roundId, e.status]), p.id).to.deep.equal([[failed.roundId, 'failed'], [ok.roundId, 'completed']]);
        expect(h.starts(p.id).map((s) => s.roundId), p.id).to.deep.equal([failed.roundId, ok.roundId]);
      }
      checkGlobal(h, ok, h.initialGlobal, secureTolerance(ok, h));
    });
  });

  it('lost link + rejoin within rejoinGraceMs: round:start and the last notice again, once per new link; ready spam is rate limited', async () => {
    const h = await harness({ participants: [{ rank: 4, examples: 100 }, { rank: 3, examples: 200 }, { rank: 2, examples: 300 }, { rank: 1, examples: 400 }] });
    h.p('p1').plan = firstOnly({ loseLinkAt: EV.secaggKeys });
    h.p('p3').plan = firstOnly({ stopAfter: 'share' }); // holds the masked phase open until the round deadline
    h.joinAll();
    const t0 = h.clock.t;
    expect(h.engine.collecting).to.equal('share');
    expect(h.p('p1').linked).to.equal(false);
    expect(h.engine.nextWake(), 'rejoin grace before the phase deadline').to.equal(t0 + h.config.rejoinGraceMs);
    expect(h.starts('p1')).to.have.length(1);

    h.clock.advance(1000);
    expect(h.rejoin('p1')).to.equal(null);
    let starts = h.starts('p1');
    expect(starts).to.have.length(2);
    expect(starts[1]!.roundId).to.equal(starts[0]!.roundId);
    expect(Buffer.from(starts[1]!.bytes).equals(Buffer.from(starts[0]!.bytes))).to.equal(true);
    expect(starts[1]!.then?.event).to.equal(EV.secaggKeys);
    expect(h.engine.collecting).to.equal('masked');
    // its advertisement, redelivered on the new link, was acknowledged and taken no further
    const dups = () => h.p('p1').log.filter((l) => l.kind === 'dup');
    expect(dups().map((l) => l.result.ok)).to.deep.equal([true]);

    const noticesBefore = h.notices('p1').length;
    const codes = Array.from({ length: 100 }, () => h.ready('p1'));
    // 5 per window: the first join and the rejoin used two of them
    expect(codes.slice(0, 3)).to.deep.equal([null, null, null]);
    expect(codes.slice(3).every((c) => c === 'RATE_LIMITED')).to.equal(true);
    expect(h.starts('p1'), 'no re-send on the link that has the round').to.have.length(2);
    expect(h.notices('p1')).to.have.length(noticesBefore);

    // a second new link, once the rate window passed, gets the round and the last notice (shares) once more
    h.clock.advance(h.config.readyLimit.windowMs + 1);
    expect(h.rejoin('p1')).to.equal(null);
    starts = h.starts('p1');
    expect(starts).to.have.length(3);
    expect(starts[2]!.then?.event).to.equal(EV.secaggShares);
    // answered from stored state: the same advertisement and masked input again, both acknowledged without effect
    expect(dups().map((l) => [l.kind, l.result.ok])).to.deep.equal([['dup', true], ['dup', true], ['dup', true]]);
    expect(h.engine.collecting).to.equal('masked');

    h.runToEnd();
    const r = h.records[0]!;
    expect(r.status, r.failure).to.equal('completed');
    expect(contributorsOf(r).map((c) => c.id)).to.deep.equal(['p0', 'p1', 'p2']);
    expect(r.secure!.droppedAfterSharing).to.deep.equal(['p3']);
    expect(statusOf(r).p3).to.equal('timeout');
    // redelivered and refused bytes did not count as uploaded
    const p1 = r.participants.find((p) => p.clientId === 'p1')!;
    expect(p1.bytesUp).to.equal(h.p('p1').acceptedBytes(r.roundId));
    expect(h.p('p1').errors).to.deep.equal([]);
    checkGlobal(h, r, h.initialGlobal, secureTolerance(r, h));
  });

  describe('refused messages change nothing', () => {
    it('an unmask message with one malformed reveal is refused, the corrected one accepted; an identical resend is acked without effect', async () => {
      const h = await harness({ participants: [{ rank: 4, examples: 100 }, { rank: 2, examples: 200 }, { rank: 3, examples: 300 }] });
      const seen: string[] = [];
      h.p('p0').plan = firstOnly({
        before(kind, msg) {
          if (kind !== 'unmask') return;
          const m = msg as UnmaskMsg;
          expect(m.reveals.length).to.be.greaterThan(1);
          const snapshot = JSON.stringify(h.engine.participating());
          const bad: UnmaskMsg = { id: m.id, reveals: m.reveals.map((x, i) => (i === 1 ? { ...x, y: x.y.slice(0, 31) } : x)) };
          const res = h.deliver('p0', 'secagg/unmask', h.seal('p0', 'secagg/unmask', encode(bad)));
          expect(res.ok).to.equal(false);
          expect(res.code).to.equal('SECAGG_MESSAGE');
          expect(res.message).to.match(/malformed revealed share/);
          // one flipped byte of the sealed box: refused before it is even read
          const sealed = h.seal('p0', 'secagg/unmask', encode(m));
          const at = sealed.length - 20;
          sealed[at] = sealed[at]! ^ 0x01;
          const res2 = h.deliver('p0', 'secagg/unmask', sealed);
          expect(res2.ok).to.equal(false);
          expect(h.engine.collecting).to.equal('unmask');
          expect(JSON.stringify(h.engine.participating())).to.equal(snapshot);
          seen.push(`refused:${res.code},${res2.code}`);
        },
        after(kind, p) {
          if (kind !== 'unmask') return;
          expect(p.log.at(-1)!.result.ok, 'the corrected message is accepted').to.equal(true);
          const bytes = p.round!.sent.get('secagg/unmask')!;
          const again = h.deliver('p0', 'secagg/unmask', bytes, 'dup');
          expect(again.ok, 'identical resend is acknowledged').to.equal(true);
          expect(h.engine.collecting, 'and does not count as another answer').to.equal('unmask');
          // the same content sealed afresh is a second message, and a duplicate
          const fresh = h.deliver('p0', 'secagg/unmask', h.seal('p0', 'secagg/unmask', encode(p.round!.msgs.get('secagg/unmask'))));
          expect(fresh.ok).to.equal(false);
          seen.push(`after:${fresh.code}`);
        },
      });
      timed('secure round with refused and repeated messages, 3 participants', () => h.joinAll());
      expect(seen).to.have.length(2);
      expect(seen[0]).to.match(/^refused:SECAGG_MESSAGE,CRYPTO_/);
      expect(seen[1]).to.equal('after:SECAGG_MESSAGE');
      const r = h.records[0]!;
      expect(r.status, r.failure).to.equal('completed');
      expect(r.contributors).to.equal(3);
      expect(r.secure!.badShares).to.equal(0);
      expect(r.participants.find((p) => p.clientId === 'p0')!.bytesUp).to.equal(h.p('p0').acceptedBytes(r.roundId));
      checkGlobal(h, r, h.initialGlobal, secureTolerance(r, h));
    });

    it('a plain update with a value beyond its rank is refused; the corrected one is accepted', async () => {
      const h = await harness({ participants: [{ rank: 2, examples: 10 }, { rank: 4, examples: 20 }], config: { secure: false } });
      const slots = elementSlots(h.layout);
      h.p('p0').plan = firstOnly({
        tamper: {
          update(u) {
            const v = new Float32Array(u.vector);
            v[slots.indexOf(3)] = 0.5; // rank slot 3, beyond the assigned rank 2
            const res = h.deliver('p0', 'update', h.seal('p0', 'update', encode({ ...u, vector: v })));
            expect(res.code).to.equal('BAD_SHAPE');
            expect(h.engine.participating().find((p) => p.clientId === 'p0')!.status).to.equal('pending');
            return u;
          },
        },
      });
      h.joinAll();
      const r = h.records[0]!;
      expect(r.status, r.failure).to.equal('completed');
      expect(r.contributors).to.equal(2);
      checkGlobal(h, r, h.initialGlobal, 1e-5);
    });
  });

  it('bound check: a crafted fixed-point input fails the attempt with BOUND_EXCEEDED, the global is unchanged, the next attempt succeeds', async () => {
    // p2 alone trains rank slot 3, so there the honest sum is within ±c·w(p2) = ±100
    const h = await harness({ participants: [{ rank: 2, examples: 400 }, { rank: 3, examples: 400 }, { rank: 4, examples: 100 }] });
    const slots = elementSlots(h.layout);
    const at = slots.indexOf(3);
    h.p('p2').plan = firstOnly({ tamper: { input: (q) => { const x = q.slice(); x[at] = (x[at]! + 2 ** 30) >>> 0; return x; } } });
    timed('secure round with a crafted input, then a clean retry', () => h.joinAll());
    expect(h.records.map((r) => r.status)).to.deep.equal(['failed', 'completed']);
    const [failed, ok] = h.records as [RoundRecord, RoundRecord];
    expect(failed.failure).to.match(/^BOUND_EXCEEDED: .*beyond what honest clipped contributions can reach/);
    const entry = h.layout.entries.find((e) => at >= e.offset && at < e.offset + e.size)!;
    expect(failed.failure).to.include(`${entry.name} has`).and.include(`at element ${at - entry.offset},`);
    expect(failed.culprits, 'a masked input cannot be pinned on its sender').to.equal(undefined);
    // when the failure was reported, nothing of it had reached the global adapter
    expect(h.globals.get(failed.roundId)).to.deep.equal({ global: h.initialGlobal, completedRounds: 0 });
    expect(h.globals.get(failed.roundId)!.global).to.equal(h.initialGlobal);
    expect(h.starts('p2').map((s) => s.roundId)).to.deep.equal([failed.roundId, ok.roundId]);
    expect(ok.contributors).to.equal(3);
    checkGlobal(h, ok, h.initialGlobal, secureTolerance(ok, h));
  });

  it('culprits: garbage share envelopes name their dealer, who sits out the retry; one malicious participant never fails two attempts in a row', async () => {
    const h = await harness({ participants: Array.from({ length: 5 }, (_, i) => ({ rank: 1 + (i % MAX_RANK), examples: 100 + i })), config: { rounds: 2, minClients: 3 } });
    // every round: each neighbour gets an envelope that does not open
    h.p('p2').plan = () => ({
      tamper: {
        share: (m) => ({ ...m, envelopes: m.envelopes.map((e) => { const box = e.sealed.box.slice(); box[0] = box[0]! ^ 0xff; return { to: e.to, sealed: { ...e.sealed, box } }; }) }),
      },
    });
    timed('2 rounds with a malicious dealer (fail, retry without it, twice)', () => { h.joinAll(); h.runToEnd(); });
    expect(h.records.map((r) => [r.round, r.status])).to.deep.equal([[1, 'failed'], [1, 'completed'], [2, 'failed'], [2, 'completed']]);
    for (let i = 0; i < h.records.length; i++) {
      const r = h.records[i]!;
      if (r.status === 'failed') {
        expect(r.culprits, r.failure).to.deep.equal(['p2']);
        expect(r.failure).to.match(/^SECAGG_THRESHOLD: .*p2/);
        expect(r.excluded).to.equal(undefined);
        expect(h.records[i + 1]!.status, 'the attempt after a failure').to.equal('completed');
      } else {
        expect(r.excluded?.map((e) => e.clientId)).to.deep.equal(['p2']);
        expect(r.excluded![0]!.reason).to.include(h.records[i - 1]!.roundId);
        expect(r.participants.map((p) => p.clientId)).to.deep.equal(['p0', 'p1', 'p3', 'p4']);
        expect(r.contributors).to.equal(4);
      }
    }
    // p2 was started only for the attempts it spoiled
    expect(h.starts('p2').map((s) => s.roundId)).to.deep.equal([h.records[0]!.roundId, h.records[2]!.roundId]);
    expect(h.engine.completedRounds).to.equal(2);
    checkGlobal(h, h.records[1]!, h.initialGlobal, secureTolerance(h.records[1]!, h));
    checkGlobal(h, h.records[3]!, h.globals.get(h.records[1]!.roundId)!.global, secureTolerance(h.records[3]!, h));
  });

  describe('deadlines', () => {
    it('waiting: with ≥ minClients but < clientsPerRound ready, the round starts at enoughSince + joinWaitMs', async () => {
      const h = await harness({ participants: [{ rank: 2, examples: 10 }, { rank: 3, examples: 20 }, { rank: 4, examples: 30 }, { rank: 1, examples: 40 }], config: { secure: false } });
      const t0 = h.clock.t;
      h.joinAll(['p0', 'p1', 'p2']);
      expect(h.engine.phase).to.equal('waiting');
      expect(h.engine.nextWake()).to.equal(t0 + h.config.joinWaitMs);
      h.advance(h.config.joinWaitMs - 1);
      expect(h.engine.phase).to.equal('waiting');
      h.advance(1);
      expect(h.records[0]!.participants.map((p) => p.clientId)).to.deep.equal(['p0', 'p1', 'p2']);
    });

    it('plain: nextWake() is the round deadline; tick() at it closes the upload over who answered', async () => {
      const h = await harness({ participants: [{ rank: 2, examples: 10 }, { rank: 3, examples: 20 }, { rank: 4, examples: 30 }], config: { secure: false } });
      h.p('p1').plan = () => ({ stopAfter: 'start' });
      h.joinAll();
      const t0 = h.clock.t;
      expect(h.engine.phase).to.equal('training');
      expect(h.engine.collecting).to.equal('upload');
      expect(h.engine.nextWake()).to.equal(t0 + h.config.roundTimeoutMs);
      h.advance(h.config.roundTimeoutMs - 1);
      expect(h.records).to.have.length(0);
      h.advance(1);
      const r = h.records[0]!;
      expect(r.status).to.equal('completed');
      expect(statusOf(r)).to.deep.equal({ p0: 'uploaded', p1: 'timeout', p2: 'uploaded' });
      checkGlobal(h, r, h.initialGlobal, 1e-5);
    });

    it('secure: short phases close at their deadline or a lost link\'s grace, the masked phase at the round deadline', async () => {
      const h = await harness({
        participants: [{ rank: 4, examples: 10 }, { rank: 3, examples: 20 }, { rank: 2, examples: 30 }, { rank: 1, examples: 40 }, { rank: 2, examples: 50 }],
        config: { secAgg: { t: 2 } },
      });
      h.p('p4').plan = () => ({ stopAfter: 'start' }); // linked, never advertises: holds the advertise phase to its deadline
      h.p('p3').plan = () => ({ stopAfter: 'start', loseLinkOnStop: true }); // gone: holds it for rejoinGraceMs
      h.p('p2').plan = () => ({ stopAfter: 'share' }); // holds the masked phase to the round deadline
      h.joinAll();
      const t0 = h.clock.t;
      expect(h.engine.collecting).to.equal('advertise');
      expect(h.engine.nextWake(), 'the lost link\'s grace comes first').to.equal(t0 + h.config.rejoinGraceMs);
      h.advance(h.config.rejoinGraceMs);
      expect(h.engine.collecting, 'p4 is still reachable').to.equal('advertise');
      expect(h.engine.nextWake(), 'the phase deadline, not now()').to.equal(t0 + h.config.phaseTimeoutMs);
      h.advance(h.config.phaseTimeoutMs - h.config.rejoinGraceMs - 1);
      expect(h.engine.collecting).to.equal('advertise');
      h.advance(1);
      // keys went to the three that advertised only; they shared at once; p2 then fell silent
      expect(h.notices('p3', EV.secaggKeys)).to.have.length(0);
      expect(h.notices('p4', EV.secaggKeys)).to.have.length(0);
      expect(h.engine.collecting).to.equal('masked');
      expect(h.engine.nextWake()).to.equal(t0 + h.config.roundTimeoutMs);
      h.advance(t0 + h.config.roundTimeoutMs - 1 - h.clock.t);
      expect(h.engine.collecting).to.equal('masked');
      h.advance(1);
      const r = h.records[0]!;
      expect(r.status, r.failure).to.equal('completed');
      expect(statusOf(r)).to.deep.equal({ p0: 'uploaded', p1: 'uploaded', p2: 'timeout', p3: 'dropped', p4: 'timeout' });
      expect(r.secure!.droppedAfterSharing).to.deep.equal(['p2']);
      expect(r.endedAt - r.startedAt).to.equal(h.config.roundTimeoutMs);
      checkGlobal(h, r, h.initialGlobal, secureTolerance(r, h));
      expect(h.engine.nextWake()).to.equal(null);
    });
  });

  describe('internal errors fail the attempt, not the engine', () => {
    it('a strategy server whose step throws fails one attempt; the retry completes', async () => {
      let calls = 0;
      const h = await harness({
        participants: [{ rank: 4, examples: 10 }, { rank: 2, examples: 20 }, { rank: 3, examples: 30 }],
        server: (inner): StrategyServer => ({
          strategy: inner.strategy,
          step: (prev, avg, trained) => { if (++calls === 1) throw new Error('server step exploded'); return inner.step(prev, avg, trained); },
          serialize: () => inner.serialize(),
          restore: (s) => inner.restore(s),
        }),
      });
      timed('secure attempt with a throwing server step, then a retry', () => h.joinAll());
      expect(h.records.map((r) => r.status)).to.deep.equal(['failed', 'completed']);
      expect(h.records[0]!.failure).to.equal('server step exploded');
      expect(h.globals.get(h.records[0]!.roundId)!.global).to.equal(h.initialGlobal);
      expect(h.engine.phase).to.equal('done');
      expect(h.engine.completedRounds).to.equal(1);
      checkGlobal(h, h.records[1]!, h.initialGlobal, secureTolerance(h.records[1]!, h));
    });

    it('a failed checkpoint fails the round; the engine retries and goes on', async () => {
      const h = await harness({ participants: [{ rank: 4, examples: 10 }, { rank: 2, examples: 20 }], config: { secure: false }, autoCheckpoint: false });
      h.joinAll();
      expect(h.engine.phase).to.equal('aggregating');
      const cp = h.commands.filter((c) => c.type === 'checkpoint');
      expect(cp).to.have.length(1);
      h.call(() => h.engine.checkpointFailed(1, new Error('disk full')));
      expect(h.records[0]!.status).to.equal('failed');
      expect(h.records[0]!.failure).to.equal('checkpoint failed: disk full');
      expect(h.engine.global).to.equal(h.initialGlobal);
      expect(h.engine.phase, 'retried at once').to.equal('aggregating');
      h.call(() => h.engine.checkpointed(1));
      expect(h.records.map((r) => r.status)).to.deep.equal(['failed', 'completed']);
      expect(h.engine.phase).to.equal('done');
      checkGlobal(h, h.records[1]!, h.initialGlobal, 1e-5);
    });
  });
});
