/**
 * The client's round object and upload pipeline without sockets: a stand-in host trains with the
 * pull trainer, seals nothing (the test reads the payloads) and records what would go on the wire.
 * The secure case runs three ParticipantRounds against an in-process SecAggServer.
 */
import { expect } from 'chai';
import nacl from 'tweetnacl';
import { ParticipantRound, type LocalResult, type ParticipantHost, type RoundState } from '../../client/index.js';
import { applyMods, buildUpload, clipToRound, contributionVector, float32Ceil, personalRule, plainEncoder, type UploadContext } from '../../client/upload/index.js';
import type { ContributionObservation } from '../../client/participant/observe.js';
import { decode } from '../../shared/codec/index.js';
import { getStrategy, makeLayout, unflatten, type StrategyName } from '../../shared/aggregation/index.js';
import {
  SecAggServer, chooseQuantParams, decodeSum, encodeUpdate, generateIdentity, quantErrorBound, signSecAggParams, type Identity,
} from '../../shared/crypto/index.js';
import { EV, globMatcher, layoutLength, type RoundStart, type Update } from '../../shared/protocol/index.js';
import { setLogLevel } from '../../shared/log.js';
import type { TensorMap } from '../../shared/tensor.js';
import { pullTrainer } from '../coordinator/helpers.js';

const MAX_RANK = 4;
const MODULES = ['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj'];
const IN = 3, OUT = 5;
const name = (m: string, f: 'A' | 'B') => `base_model.model.${m}.lora_${f}.weight`;

/** A seeded global adapter truncated to `rank` (A [rank, in], B [out, rank]) and the layout of `strategy`'s shared tensors at maxRank. */
function roundStart(o: { rank: number; strategy?: StrategyName; roundId?: string; participants?: RoundStart['participants'] }): RoundStart {
  const strategy = getStrategy(o.strategy ?? 'fedit');
  let x = 1;
  const next = () => { x = (x * 48271) % 2147483647; return (x / 2147483647 - 0.5) * 0.2; };
  const global: RoundStart['global'] = [];
  const layout: RoundStart['layout'] = [];
  for (const m of MODULES) {
    global.push({ name: name(m, 'A'), shape: [o.rank, IN], data: Float32Array.from({ length: o.rank * IN }, next) });
    global.push({ name: name(m, 'B'), shape: [OUT, o.rank], data: Float32Array.from({ length: OUT * o.rank }, next) });
    for (const f of ['A', 'B'] as const) if (strategy.isShared(name(m, f))) layout.push({ name: name(m, f), shape: f === 'A' ? [MAX_RANK, IN] : [OUT, MAX_RANK] });
  }
  global.sort((a, b) => a.name.localeCompare(b.name));
  layout.sort((a, b) => a.name.localeCompare(b.name));
  return {
    roundId: o.roundId ?? 's:1:1', round: 1, rank: o.rank, maxRank: MAX_RANK, strategy: strategy.name,
    config: { r: o.rank, loraAlpha: o.rank, targetModules: ['q_proj'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM' },
    global, layout, train: { steps: 1, epochs: 0, lr: 0.1, batchSize: 1, seed: 7 }, deadline: Date.now() + 60_000,
    modelId: 'model', globalHash: 'hash', participants: o.participants ?? [{ id: 'c0', key: new Uint8Array(32), rank: o.rank, weight: 3 }],
  };
}

interface TestHost extends ParticipantHost {
  sent: { event: string; bytes: Uint8Array }[];
  trained: number;
  online_: boolean;
  accept: (event: string, bytes: Uint8Array) => boolean;
}

/** A host without a socket: trains with the pull trainer, "seals" by passing the payload through, records sends. */
async function testHost(clientId: string, target: number, examples = 6): Promise<TestHost> {
  const trainer = await pullTrainer(target, examples);
  let busy: Promise<unknown> = Promise.resolve();
  const h: TestHost = {
    clientId, sent: [], trained: 0, online_: true, accept: () => true,
    exclusive<T>(fn: () => Promise<T>): Promise<T> {
      const run = busy.then(fn);
      busy = run.catch(() => null);
      return run;
    },
    async train(rs): Promise<LocalResult> {
      const res = await trainer.train({ config: { ...rs.config, baseModelNameOrPath: null }, tensors: new Map(rs.global.map((t) => [t.name, { shape: t.shape, data: t.data }])) },
        { steps: 1, lr: 0.1, batchSize: 1, seed: 1, trainable: (n) => getStrategy(rs.strategy).isTrainable(n) });
      h.trained++;
      return { tensors: res.adapter.tensors, examples: res.examples, metrics: { trainLoss: res.trainLoss, steps: 1, trainMs: 1 }, trainLoss: res.trainLoss, steps: 1 };
    },
    seal: (payload) => payload,
    online: async () => h.online_,
    send: async (event, bytes) => { h.sent.push({ event, bytes }); return h.online_ && h.accept(event, bytes); },
  };
  return h;
}

function states(r: ParticipantRound): RoundState[] {
  const seen: RoundState[] = [r.state];
  for (const s of ['training', 'trained', 'delivering', 'done', 'aborted'] as const) r.when(s).then(() => seen.push(s), () => undefined);
  return seen;
}

const tick = () => new Promise((r) => setImmediate(r));

describe('client upload pipeline', () => {
  const rs = roundStart({ rank: 2 });
  const layout = makeLayout(rs.layout);
  const ctx = (weight: number, clip: number | null): UploadContext => ({
    roundId: rs.roundId, round: 1, rank: 2, maxRank: MAX_RANK, weight, layout,
    quant: clip === null ? null : chooseQuantParams({ clip, maxTotalWeight: 100, maxClients: 10 }),
  });
  const tensors: TensorMap = new Map(rs.global.map((t) => [t.name, { shape: t.shape, data: t.data }]));

  it('plain encoding round-trips: the Update carries weight·x at the round\'s rank and id', async () => {
    const strategy = getStrategy('fedit');
    const x = contributionVector({ tensors, layout, strategy, isPersonal: () => false, maxRank: MAX_RANK });
    const bytes = await buildUpload({ input: { tensors, strategy, isPersonal: () => false }, ctx: ctx(3, null), mods: [clipToRound], encoder: plainEncoder((p, kind) => { expect(kind).to.equal('update'); return p; }), metrics: { trainLoss: 1, steps: 1, trainMs: 2 } });
    const u = decode(bytes) as Update;
    expect(u).to.deep.include({ roundId: rs.roundId, rank: 2, weight: 3, metrics: { trainLoss: 1, steps: 1, trainMs: 2 } });
    expect(u.vector).to.be.instanceOf(Float32Array);
    expect(Array.from(u.vector)).to.deep.equal(Array.from(x, (v) => Math.fround(v * 3)));
    // zero-padded to maxRank: slots ≥ rank carry nothing
    const back = unflatten(u.vector, layout);
    const a = back.get(name(MODULES[0]!, 'A'))!;
    expect(Array.from(a.data.slice(2 * IN))).to.deep.equal(new Array((MAX_RANK - 2) * IN).fill(0));
  });

  it('applies mods in order, after the weight-1 contribution and before the weight', async () => {
    const strategy = getStrategy('fedit');
    const x = contributionVector({ tensors, layout, strategy, isPersonal: () => false, maxRank: MAX_RANK });
    const order: string[] = [];
    const plus1 = (v: Float32Array) => { order.push('plus1'); return v.map((e) => e + 1); };
    const times2 = (v: Float32Array) => { order.push('times2'); return v.map((e) => e * 2); };
    let seen: Float32Array | undefined;
    await buildUpload({ input: { tensors, strategy, isPersonal: () => false }, ctx: ctx(3, null), mods: [plus1, times2], encoder: plainEncoder((p) => p), metrics: { trainLoss: 0, steps: 1, trainMs: 0 }, observe: (c) => { seen = c; } });
    expect(order).to.deep.equal(['plus1', 'times2']);
    expect(Array.from(seen!)).to.deep.equal(Array.from(x, (v) => Math.fround(Math.fround((Math.fround(v + 1)) * 2) * 3)));
    expect(() => applyMods(x, [(v) => v.subarray(1)], ctx(3, null))).to.throw(/layout has/);
  });

  it('the secure clip leaves the fixed-point bytes identical to encoding the unclipped vector, also for a clip float32 cannot hold', () => {
    const rng = nacl.randomBytes(4 * 2000);
    const x = Float32Array.from(new Int32Array(rng.buffer), (v) => v / 2 ** 30); // within ±2
    for (const clip of [0.1, 0.7, 0.9, 1 / 3, 8]) { // fround(0.7) and fround(0.9) lie below the clip
      expect(float32Ceil(clip)).to.be.at.least(clip);
      const c = ctx(7, clip);
      const big = new Float32Array(layout.size);
      for (let i = 0; i < big.length; i++) big[i] = x[i % x.length]!;
      const clipped = clipToRound(big, c);
      expect(clipped.every((v) => Math.abs(v) <= float32Ceil(clip))).to.equal(true);
      expect(Buffer.from(encodeUpdate(clipped, 7, c.quant!).buffer).equals(Buffer.from(encodeUpdate(big, 7, c.quant!).buffer)), `clip ${clip}`).to.equal(true);
    }
  });

  it('personal tensors (strategy- or glob-personal) are zero in the plaintext contribution', () => {
    const strategy = getStrategy('fedit');
    const isPersonal = personalRule(strategy, globMatcher(['*.layers.1.*']));
    const x = contributionVector({ tensors, layout, strategy, isPersonal, maxRank: MAX_RANK });
    for (const e of layout.entries) {
      const part = x.subarray(e.offset, e.offset + e.size);
      if (e.name.includes('layers.1.')) expect(part.every((v) => v === 0), e.name).to.equal(true);
      else expect(part.some((v) => v !== 0), e.name).to.equal(true);
    }
    // fedsa keeps every B home: a layout that (wrongly) listed one still gets zeros from this client
    const fedsa = getStrategy('fedsa');
    const bName = name(MODULES[0]!, 'B');
    const withB = makeLayout([...rs.layout.filter((e) => fedsa.isShared(e.name)), { name: bName, shape: [OUT, MAX_RANK] }].sort((a, b) => a.name.localeCompare(b.name)));
    const y = contributionVector({ tensors, layout: withB, strategy: fedsa, isPersonal: personalRule(fedsa, () => false), maxRank: MAX_RANK });
    const eB = withB.entries.find((e) => e.name === bName)!;
    expect(y.subarray(eB.offset, eB.offset + eB.size).every((v) => v === 0)).to.equal(true);
  });
});

describe('ParticipantRound', () => {
  before(() => setLogLevel('silent'));

  const plainRound = (host: TestHost, rs: RoundStart, observed: ContributionObservation[] = []) => new ParticipantRound({
    rs, weight: 3, host, strategy: getStrategy(rs.strategy), isPersonal: personalRule(getStrategy(rs.strategy), globMatcher(['*.layers.1.*'])),
    observe: { contribution: (c) => { observed.push(c); } },
  });

  it('plain round: accepted → training → trained → delivering → done; the observer sees exactly the uploaded vector', async () => {
    const host = await testHost('c0', 0.2);
    const observed: ContributionObservation[] = [];
    const rs = roundStart({ rank: 2 });
    const r = plainRound(host, rs, observed);
    const seen = states(r);
    expect(r.state).to.equal('accepted');
    await r.start();
    expect(seen).to.deep.equal(['accepted', 'training', 'trained', 'delivering', 'done']);
    expect(host.sent.map((s) => s.event)).to.deep.equal([EV.update]);
    const u = decode(host.sent[0]!.bytes) as Update;
    expect(observed).to.have.length(1);
    const o = observed[0]!;
    expect(o).to.deep.include({ roundId: rs.roundId, round: 1, rank: 2, weight: 6, quant: null });
    expect(o.layout).to.deep.equal(rs.layout);
    expect(o.global).to.equal(rs.global);
    expect(Array.from(o.contribution)).to.deep.equal(Array.from(u.vector));
    // the glob-personal layer 1 is zero, the shared layer 0 is not
    for (const e of makeLayout(rs.layout).entries) {
      const part = o.contribution.subarray(e.offset, e.offset + e.size);
      expect(part.some((v) => v !== 0), e.name).to.equal(!e.name.includes('layers.1.'));
    }
  });

  it('an upload that was not taken is resent byte for byte on the repeated round:start; the upload is built once', async () => {
    const host = await testHost('c0', 0.2);
    const observed: ContributionObservation[] = [];
    const r = plainRound(host, roundStart({ rank: 2 }), observed);
    host.accept = () => false; // e.g. lost with the connection
    await r.start();
    expect(r.state).to.equal('trained');
    host.online_ = false;
    r.redeliver(10); // nothing goes out while offline
    await tick();
    expect(host.sent).to.have.length(1);
    host.online_ = true;
    host.accept = () => true;
    r.redeliver(10);
    await r.when('done');
    expect(host.sent).to.have.length(2);
    expect(Buffer.from(host.sent[1]!.bytes).equals(Buffer.from(host.sent[0]!.bytes))).to.equal(true);
    expect(observed).to.have.length(1);
    expect(host.trained).to.equal(1);
    r.redeliver(10); // done: nothing more to send
    await tick();
    expect(host.sent).to.have.length(2);
  });

  it('a newer round aborts the older one; one still waiting for the trainer never trains', async () => {
    const host = await testHost('c0', 0.2);
    let release!: () => void;
    const gate = new Promise<void>((res) => { release = res; });
    const blocker = host.exclusive(() => gate); // the trainer is busy
    const old = plainRound(host, roundStart({ rank: 2, roundId: 's:1:1' }));
    const oldRun = old.start();
    old.abort('round s:1:2 started');
    const next = plainRound(host, roundStart({ rank: 2, roundId: 's:1:2' }));
    const nextRun = next.start();
    release();
    await Promise.all([blocker, oldRun, nextRun]);
    expect(old.state).to.equal('aborted');
    expect(old.abortReason).to.match(/s:1:2/);
    expect(next.state).to.equal('done');
    expect(host.trained).to.equal(1);
    expect(host.sent.map((s) => (decode(s.bytes) as Update).roundId)).to.deep.equal(['s:1:2']);
  });

  it('round:end before the upload was taken aborts; after it, the round stays done', async () => {
    const host = await testHost('c0', 0.2);
    host.online_ = false;
    const r = plainRound(host, roundStart({ rank: 2 }));
    await r.start();
    expect(r.state).to.equal('trained');
    r.end({ roundId: r.roundId, round: 1, status: 'failed', contributors: 0 });
    expect(r.state).to.equal('aborted');
    host.online_ = true;
    r.redeliver(1);
    await tick();
    expect(host.sent).to.have.length(0);

    const done = plainRound(host, roundStart({ rank: 2, roundId: 's:2:1' }));
    await done.start();
    done.end({ roundId: done.roundId, round: 1, status: 'completed', contributors: 2 });
    expect(done.state).to.equal('done');
  });

  it('a training failure aborts the round with the reason', async () => {
    const host = await testHost('c0', 0.2);
    host.train = async () => { throw new Error('out of memory'); };
    const r = plainRound(host, roundStart({ rank: 2 }));
    await r.start();
    expect(r.state).to.equal('aborted');
    expect(r.abortReason).to.match(/out of memory/);
  });

  it('secure round against an in-process SecAggServer: masked once, phases answered and repeated from stored bytes, sum = plain sum of the observed contributions', async () => {
    const coordinator = generateIdentity();
    const ids = ['c0', 'c1', 'c2'];
    const identities = new Map<string, Identity>(ids.map((id) => [id, generateIdentity()]));
    const weights = [4, 5, 6];
    const base = roundStart({ rank: 2, participants: ids.map((id, i) => ({ id, key: identities.get(id)!.publicKey, rank: 2, weight: weights[i]! })) });
    const quant = chooseQuantParams({ clip: 0.3, maxTotalWeight: 15, maxClients: 3 });
    const nonce = nacl.randomBytes(32);
    const params = {
      round: base.round, modelHash: `${base.modelId}:${base.globalHash}`, vectorLength: layoutLength(base.layout),
      participants: base.participants.map((p) => ({ id: p.id, key: p.key })), k: 2, t: 2, nonce, coordinatorKey: coordinator.publicKey,
    };
    const rs: RoundStart = { ...base, secure: { k: 2, t: 2, nonce, modelHash: params.modelHash, paramsSignature: signSecAggParams(params, coordinator), quant } };
    const server = new SecAggServer({ params, identity: coordinator });
    const hosts = await Promise.all(ids.map((id, i) => testHost(id, 0.1 * (i + 1))));
    const observed = new Map<string, ContributionObservation>();
    const rounds = ids.map((id, i) => new ParticipantRound({
      rs, weight: weights[i]!, host: hosts[i]!, strategy: getStrategy('fedit'), isPersonal: () => false,
      keys: { identity: identities.get(id)!, coordinatorKey: coordinator.publicKey }, observe: { contribution: (c) => { observed.set(id, c); } },
    }));
    // what each round sent, by phase: the host passes payloads through unsealed
    const last = (i: number) => decode(hosts[i]!.sent.at(-1)!.bytes) as never;
    const runs = rounds.map((r) => r.start());
    ids.forEach((id, i) => server.receiveAdvertise(id, last(i)));
    for (const [id, m] of server.closeAdvertise()) rounds[ids.indexOf(id)]!.notice(EV.secaggKeys, m);
    ids.forEach((id, i) => server.receiveShareKeys(id, last(i)));
    for (const [id, m] of server.closeShareKeys()) rounds[ids.indexOf(id)]!.notice(EV.secaggShares, m);
    await Promise.all(runs);
    expect(rounds.map((r) => r.state)).to.deep.equal(['done', 'done', 'done']);
    ids.forEach((id, i) => server.receiveMasked(id, last(i)));
    // a repeated round:start after a reconnect: advertise again, nothing rebuilt
    const before = hosts[0]!.sent.length;
    const masked0 = hosts[0]!.sent.at(-1)!.bytes;
    rounds[0]!.redeliver(1);
    await tick();
    expect(hosts[0]!.sent.length).to.equal(before + 1); // only the stored advertisement; the masked upload was taken already
    const list = server.closeMaskedInput();
    for (const r of rounds) r.notice(EV.secaggSurvivors, list);
    ids.forEach((id, i) => server.receiveConsistency(id, last(i)));
    // the coordinator repeats its last notice after a reconnect: the same consistency bytes go out again
    const consistency = hosts[1]!.sent.at(-1)!.bytes;
    rounds[1]!.notice(EV.secaggSurvivors, list);
    expect(Buffer.from(hosts[1]!.sent.at(-1)!.bytes).equals(Buffer.from(consistency))).to.equal(true);
    for (const [id, m] of server.closeConsistency()) rounds[ids.indexOf(id)]!.notice(EV.secaggUnmask, m);
    ids.forEach((id, i) => server.receiveUnmask(id, last(i)));
    const sum = decodeSum(server.finalize().sum, quant);
    const plain = new Float64Array(sum.length);
    for (const id of ids) {
      const o = observed.get(id)!;
      expect(o.quant).to.deep.equal(quant);
      expect(o.weight).to.equal(weights[ids.indexOf(id)]);
      expect(o.contribution.every((v) => Math.abs(v) <= 0.3 * o.weight + 1e-6)).to.equal(true);
      for (let i = 0; i < plain.length; i++) plain[i] = plain[i]! + o.contribution[i]!;
    }
    let worst = 0;
    for (let i = 0; i < sum.length; i++) worst = Math.max(worst, Math.abs(sum[i]! - plain[i]!));
    expect(worst).to.be.at.most(quantErrorBound(quant, 3) + 1e-6);
    expect((decode(masked0) as { masked: unknown }).masked).to.be.instanceOf(Uint32Array);
    // after round:end, phase notices are refused (the Client acks them with the error)
    rounds[2]!.end({ roundId: rs.roundId, round: 1, status: 'completed', contributors: 3 });
    expect(rounds[2]!.state).to.equal('done');
    expect(() => rounds[2]!.notice(EV.secaggUnmask, {})).to.throw(/over/);
  });
});
