/**
 * One malicious *enrolled* client against the coordinator, over real sockets: it joins with a
 * valid proof (so every refusal it meets is the coordinator's own judgement, not the allowlist's)
 * and then lies about its example count, sends pathological personal globs, malformed or garbage
 * secure-aggregation messages, out-of-range masked inputs, floods, and the coordinator restarts
 * over a corrupt state.json. Every case also checks that the coordinator keeps answering
 * `GET /status` and that the honest clients (real Client, stand-in trainer) finish.
 */
import { expect } from 'chai';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator, saveState, type CoordinatorOptions, type RoundRecord } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { decode, encode } from '../../shared/codec/index.js';
import type { LoraAdapter } from '../../shared/lora/adapter.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, pullTrainer, type Reply } from './helpers.js';
import { CoordinatorWorker, Hostile, Resources, getStatus, openSocket, seededRandom, stopReading, waitFor, within } from './hostile-client.js';

const CLIP = 8; // secAgg.clip default

describe('coordinator robustness: one malicious enrolled client', function () {
  this.timeout(30_000);
  let dir: string;
  let r: Resources;
  before(() => setLogLevel('error'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-robust-')); r = new Resources(); });
  afterEach(async () => { await r.closeAll(); await rm(dir, { recursive: true, force: true }); });

  /** Options the new coordinator adds (maxExamplesPerClient, joinTimeoutMs) pass through this cast. */
  const options = (extra: Record<string, unknown> = {}): CoordinatorOptions => ({
    allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 1, clientsPerRound: 3, minClients: 2, maxRank: 4,
    localSteps: 1, joinWaitMs: 1500, roundTimeoutMs: 10_000, refactor: false, ...extra,
  } as CoordinatorOptions);

  const honest = async (url: string, n: number, o: { insecure?: boolean; examples?: number } = {}): Promise<{ clients: Client[]; runs: Promise<{ completedRounds: number }>[] }> => {
    const trainers = await Promise.all(Array.from({ length: n }, (_, i) => pullTrainer(0.1 + 0.2 * i, o.examples ?? 10)));
    const clients = trainers.map((t, i) => r.client(new Client({
      coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `h${i}`), clientId: `h${i}`, maxRank: 4,
      ...(o.insecure ? { insecureAggregation: true } : {}), trainerFactory: async () => t,
    })));
    const runs = clients.map((c) => c.run());
    for (const p of runs) p.catch(() => undefined);
    return { clients, runs };
  };

  const describeHistory = (h: readonly RoundRecord[]) => `${h.length} attempt(s), first ${JSON.stringify(h.slice(0, 4).map((x) => ({ id: x.roundId, status: x.status, failure: (x as { failure?: string }).failure, participants: x.participants.map((p) => `${p.clientId}:${p.status}:w${p.weight}`) })))}`;

  /** The honest clients' runs resolve (the coordinator's own failure or a timeout fails the test with the history so far). */
  const finish = async (coord: Coordinator, runs: Promise<{ completedRounds: number }>[], ms: number, extra = () => ''): Promise<void> => {
    const crashed = coord.done.then(() => new Promise<never>(() => undefined), (e: unknown) => { throw new Error(`coordinator round loop failed: ${String(e)}`); });
    try {
      await within('the honest clients to finish', Promise.race([Promise.all(runs), crashed]), ms);
    } catch (e) {
      throw new Error(`${(e as Error).message}; history ${describeHistory(coord.history)}${extra()}`);
    }
  };

  const stillUp = async (url: string) => {
    const s = await getStatus(url);
    expect(s.status).to.equal(200);
    return s.body;
  };

  const snapshot = (a: LoraAdapter) => new Map([...a.tensors].map(([k, t]) => [k, Float32Array.from(t.data)]));
  const maxChange = (a: LoraAdapter, before: Map<string, Float32Array>) => {
    let m = 0;
    for (const [k, t] of a.tensors) { const b = before.get(k)!; for (let i = 0; i < t.data.length; i++) m = Math.max(m, Math.abs(t.data[i]! - b[i]!)); }
    return m;
  };

  it('1: a ready with examples 1e9 does not crash the secure round; the declared weight is capped at maxExamplesPerClient', async () => {
    // today chooseQuantParams throws CRYPTO_QUANT_OVERFLOW while preparing the round; catch a process-level throw here so it fails this test only
    let uncaught: unknown;
    const onUncaught = (e: unknown) => { uncaught ??= e; };
    process.on('uncaughtException', onUncaught);
    r.defer(() => process.off('uncaughtException', onUncaught));
    const coord = r.coordinator(new Coordinator(options({ maxExamplesPerClient: 10_000 })));
    const url = await coord.serve(0);
    const evil = (await Hostile.join(url, r, { examples: 5, ready: 1e9 })).participate();
    const { runs } = await honest(url, 2);
    await finish(coord, runs, 20_000, () => (uncaught ? `; uncaught: ${String(uncaught)}` : ''));
    expect(uncaught, 'uncaught exception').to.equal(undefined);
    await stillUp(url);
    const rec = coord.history.find((h) => h.status === 'completed')!;
    const w = rec.participants.find((p) => p.clientId === evil.clientId)?.weight;
    expect(w, 'the hostile client took part').to.be.a('number');
    expect(w, 'hostile weight in the round record').to.be.at.most(10_000);
    expect(evil.errors).to.deep.equal([]);
  });

  it('2: pathological personal globs do not freeze the event loop: /status answers within 100 ms while rounds run', async function () {
    // the coordinator runs in a worker thread, so a blocked event loop there cannot block this test's timers
    const w = r.worker(new CoordinatorWorker(options({ rounds: 2, clientsPerRound: 4, refactor: true })));
    const url = await within('the coordinator worker to serve', w.url, 10_000);
    const six = '*?*?*?*?*?*?!';
    const long = `${'*?'.repeat(127)}*!`;
    expect(long).to.have.length(256);
    const evils = [
      (await Hostile.join(url, r, { clientId: 'evil6', personal: [six] })).participate(),
      (await Hostile.join(url, r, { clientId: 'evil256', personal: [long] })).participate(),
    ];
    const { runs } = await honest(url, 2);
    let finished = false;
    const all = Promise.all(runs).then(() => { finished = true; });
    all.catch(() => undefined);
    const samples: number[] = [];
    const end = Date.now() + 20_000;
    while (!finished && Date.now() < end) {
      const t0 = performance.now();
      // a reply slower than 1 s counts as 1 s (the loop is frozen; no need to wait it out)
      await getStatus(url, 1000).catch(() => undefined);
      samples.push(performance.now() - t0);
      await new Promise((res) => setTimeout(res, 20));
    }
    const worst = Math.max(...samples);
    console.log(`      /status: ${samples.length} samples, worst ${worst.toFixed(1)} ms, median ${samples.sort((a, b) => a - b)[samples.length >> 1]!.toFixed(1)} ms`);
    // the acceptance figure is 100 ms (printed above; 49–72 ms measured on an otherwise idle 2-core
    // machine). The assertion leaves room for a loaded CI machine: a frozen loop (the backtracking
    // globs took 10 s and more per tensor name) still fails it by far, since every sample then hits 1 s
    expect(worst, 'worst /status latency (ms) during the rounds').to.be.lessThan(250);
    expect(finished, 'honest clients finished both rounds within 20 s').to.equal(true);
    await stillUp(url);
    for (const e of evils) expect(e.errors).to.deep.equal([]);
  });

  it('3a: an unmask message with one malformed share, then resent in full, is accepted and the round completes', async () => {
    const coord = r.coordinator(new Coordinator(options()));
    const url = await coord.serve(0);
    const replies: { first: Reply; resend: Reply }[] = [];
    const evil = (await Hostile.join(url, r)).participate({
      async unmask(m, _rs, send) {
        expect(m.reveals.length, 'shares the hostile client holds').to.be.at.least(2);
        const bad = { ...m, reveals: [m.reveals[0]!, { ...m.reveals[1]!, y: m.reveals[1]!.y.slice(0, 31) }, ...m.reveals.slice(2)] };
        const first = await send(bad);
        const resend = await send(m);
        replies.push({ first, resend });
      },
    });
    const { runs } = await honest(url, 2);
    await finish(coord, runs, 20_000, () => `; hostile unmask replies ${JSON.stringify(replies)}`);
    await stillUp(url);
    expect(replies.length, 'unmask attempts').to.be.at.least(1);
    expect(replies[0]!.first.ok, 'the malformed unmask is refused').to.equal(false);
    expect(replies[0]!.resend.ok, `the full resend: ${JSON.stringify(replies[0]!.resend)}`).to.equal(true);
    expect(coord.history[0]!.status, `first attempt: ${describeHistory(coord.history)}`).to.equal('completed');
    expect(evil.errors).to.deep.equal([]);
  });

  it('3b: garbage share envelopes to the neighbours: the round completes within 2 attempts, without the culprit after a failed one', async () => {
    const rnd = seededRandom('3b');
    const coord = r.coordinator(new Coordinator(options({ clientsPerRound: 4, minClients: 3, roundTimeoutMs: 4000, secAgg: { phaseTimeoutMs: 2000 } })));
    const url = await coord.serve(0);
    const evil = (await Hostile.join(url, r)).participate({
      share: (m) => ({ ...m, envelopes: m.envelopes.map((e) => ({ to: e.to, sealed: { ...e.sealed, box: rnd.bytes(e.sealed.box.length) } })) }),
    });
    const { runs } = await honest(url, 3);
    // today every attempt fails; stop looking once two attempts are on record without a completed one
    await waitFor('a completed round or two attempts', () => coord.history.some((h) => h.status === 'completed') || coord.history.length >= 2, 25_000);
    const h = coord.history;
    expect(h[0]!.participants.map((p) => p.clientId), 'the hostile client was in the first attempt').to.include(evil.clientId);
    const firstCompleted = h.findIndex((x) => x.status === 'completed');
    expect(firstCompleted, `attempts: ${describeHistory(h)}`).to.be.oneOf([0, 1]);
    if (firstCompleted === 1) expect(h[1]!.participants.map((p) => p.clientId), 'participants of the retry').not.to.include(evil.clientId);
    await finish(coord, runs, 10_000);
    await stillUp(url);
    expect(evil.errors).to.deep.equal([]);
  });

  it('4: a masked input pushed outside the clip range is refused; no global entry moves by more than the clip', async () => {
    const coord = r.coordinator(new Coordinator(options({ strategy: 'fedit' })));
    const url = await coord.serve(0);
    const before = snapshot(coord.globalAdapter!);
    let attacked = '';
    const evil = (await Hostile.join(url, r, { examples: 12 })).participate({
      // first attempt only: Σq lands between Σw·c·2^f (the most honest inputs can reach) and 2^31 (where it would wrap)
      input(q, rs) {
        if (attacked) return q;
        attacked = rs.roundId;
        const qp = rs.secure!.quant;
        const push = Math.floor((qp.maxTotalWeight * qp.clip * 2 ** qp.fracBits + 2 ** 31) / 2);
        return q.map((v) => (v + push) >>> 0);
      },
    });
    const { runs } = await honest(url, 2);
    await finish(coord, runs, 20_000);
    await stillUp(url);
    expect(attacked, 'the hostile client sent its input').not.to.equal('');
    const change = maxChange(coord.globalAdapter!, before);
    expect(change, 'largest change of a global entry').to.be.at.most(CLIP);
    const rec = coord.history.find((h) => h.roundId === attacked)!;
    expect(rec.status, `the attacked attempt: ${describeHistory(coord.history)}`).to.equal('failed');
    expect(evil.errors).to.deep.equal([]);
  });

  it('5: model:chunk requests a client never reads are capped per connection; coordinator memory stays bounded', async () => {
    const coord = r.coordinator(new Coordinator(options({ clientsPerRound: 2 })));
    const url = await coord.serve(0);
    const evil = await Hostile.join(url, r, { ready: false });
    const chunk = evil.hello.chunkSize as number;
    const file = (evil.hello.files as { name: string; size: number }[]).find((f) => f.name === 'model.safetensors')!;
    const reply = Math.min(chunk, file.size);
    const N = 400;
    const gc = (globalThis as { gc?: () => void }).gc;
    gc?.();
    const mem = () => { const m = process.memoryUsage(); return { rss: m.rss, heap: m.heapUsed, buffers: m.arrayBuffers, held: m.heapUsed + m.arrayBuffers }; };
    const base = mem();
    const reading = stopReading(evil.socket);
    const replies: Reply[] = [];
    const acked = new Promise<void>((res) => {
      for (let i = 0; i < N; i++) {
        evil.socket.emit('model:chunk', encode({ modelId: evil.modelId, file: file.name, offset: 0, length: chunk }), (raw: Uint8Array) => {
          replies.push(decodeReply(raw));
          if (replies.length === N) res();
        });
      }
    });
    // wait until the coordinator has worked through the requests: bytes served stop growing (or all were served)
    let peak = base;
    let last = -1, still = 0;
    await waitFor('the coordinator to stop serving chunks', () => {
      const m = mem();
      if (m.held > peak.held) peak = m;
      if (m.rss > peak.rss) peak = { ...peak, rss: m.rss };
      const served = coord.status().bytes.modelServed;
      still = served === last ? still + 1 : 0;
      last = served;
      return served >= N * reply || still >= 25;
    }, 20_000);
    const grown = { held: peak.held - base.held, rss: peak.rss - base.rss };
    const MiB = 1 << 20;
    console.log(`      ${N} × ${reply} B requested (${(N * reply / MiB).toFixed(0)} MiB); served ${(last / MiB).toFixed(1)} MiB while unread; heap+buffers grew ${(grown.held / MiB).toFixed(1)} MiB, rss ${(grown.rss / MiB).toFixed(1)} MiB`);
    reading.resume();
    // the coordinator may also hang up on a flooding connection (refusals count as strikes): take what arrived by then
    await waitFor('all chunk replies, or the coordinator closing the connection', () => replies.length === N || !evil.socket.connected, 20_000);
    void acked;
    const refused = replies.filter((x) => !x.ok);
    const codes = [...new Set(refused.map((x) => x.code))];
    console.log(`      ${replies.length - refused.length} served, ${refused.length} refused (${codes.join(', ')})`);
    expect(refused.length, 'requests beyond the in-flight cap are refused').to.be.greaterThan(0);
    for (const c of codes) expect(c, 'refusal code').to.be.a('string').and.match(/^[A-Z_]+$/);
    // a cap of a few chunks in flight; 64 MiB is generous next to today's ~N × chunk
    expect(grown.held, 'coordinator heap + buffers growth (bytes)').to.be.lessThan(64 * MiB);
    const { runs } = await honest(url, 2);
    await finish(coord, runs, 20_000);
    await stillUp(url);
  });

  it('6a: insecure mode clips every plaintext upload to ±c: a finite 1e30 update cannot move the global beyond the clip', async () => {
    const coord = r.coordinator(new Coordinator(options({ insecureAggregation: true, strategy: 'fedit' })));
    const url = await coord.serve(0);
    const before = snapshot(coord.globalAdapter!);
    const evil = await Hostile.join(url, r, { examples: 5 });
    const { runs } = await honest(url, 2, { insecure: true });
    const rs = await evil.nextStart(0);
    const up = await evil.update(rs, { vector: new Float32Array(evil.layoutLength(rs)).fill(1e30), weight: 5 });
    await finish(coord, runs, 20_000, () => `; hostile upload reply ${JSON.stringify(up)}`);
    await stillUp(url);
    const change = maxChange(coord.globalAdapter!, before);
    expect(change, `largest change of a global entry (upload reply ${JSON.stringify(up)})`).to.be.at.most(CLIP);
    expect(evil.errors).to.deep.equal([]);
  });

  it('6b: insecure mode uses the weight fixed at round start (capped): re-declaring 1e9 examples mid-round does not hand the global to the attacker', async () => {
    const coord = r.coordinator(new Coordinator(options({ insecureAggregation: true, strategy: 'fedit', maxExamplesPerClient: 10_000 })));
    const url = await coord.serve(0);
    const evil = await Hostile.join(url, r, { examples: 5 });
    const { runs } = await honest(url, 2, { insecure: true });
    const rs = await evil.nextStart(0);
    const target = 5; // inside the clip: only the weight can make it win
    const again = await evil.ready(1e9);
    const up = await evil.update(rs, { vector: new Float32Array(evil.layoutLength(rs)).fill(target * 1e9), weight: 1e9 });
    await finish(coord, runs, 20_000);
    await stillUp(url);
    const rec = coord.history.find((h) => h.roundId === rs.roundId)!;
    const w = rec.participants.find((p) => p.clientId === evil.clientId)!.weight;
    expect(w, `hostile weight in the record (ready reply ${JSON.stringify(again)}, upload reply ${JSON.stringify(up)})`).to.be.at.most(5);
    let sum = 0, n = 0;
    for (const t of coord.globalAdapter!.tensors.values()) for (const x of t.data) { sum += x; n++; }
    expect(sum / n, 'mean global entry (the attacker aimed at 5)').to.be.lessThan(target / 2);
    expect(evil.errors).to.deep.equal([]);
  });

  it('7a: connections that never join are closed after joinTimeoutMs', async () => {
    const coord = r.coordinator(new Coordinator(options({ clientsPerRound: 2, joinTimeoutMs: 300 })));
    const url = await coord.serve(0);
    const n = 50;
    const idle = await Promise.all(Array.from({ length: n }, () => openSocket(url, r)));
    // counted from the sockets' state: the first ones may be closed before the last ones open
    const gone = () => idle.filter((s) => !s.connected).length;
    await waitFor(`the ${n} idle sockets to be closed`, () => gone() === n, 3000).catch(() => undefined);
    expect(n - gone(), 'idle sockets still connected 3 s after connecting (join timeout 300 ms)').to.equal(0);
    const { runs } = await honest(url, 2);
    await finish(coord, runs, 20_000);
    await stillUp(url);
  });

  it('7b: 100 ready requests during a round re-send round:start at most once', async () => {
    const coord = r.coordinator(new Coordinator(options()));
    const url = await coord.serve(0);
    const readyReplies: Reply[] = [];
    const evil = (await Hostile.join(url, r)).participate({
      // the round stays open until this hostile client advertises its keys
      async onStart(_rs, h) {
        const settled = await Promise.allSettled(Array.from({ length: 100 }, () => h.ready(5)));
        readyReplies.push(...settled.map((x): Reply => (x.status === 'fulfilled' ? x.value : { ok: false, code: 'NO_REPLY', message: String(x.reason) })));
      },
    });
    const { runs } = await honest(url, 2);
    await finish(coord, runs, 20_000);
    await stillUp(url);
    const first = evil.starts[0]!.roundId;
    const count = evil.starts.filter((s) => s.roundId === first).length;
    const refusedCodes = [...new Set(readyReplies.filter((x) => !x.ok).map((x) => x.code))];
    expect(readyReplies).to.have.length(100);
    expect(count, `round:start events for ${first} (ready refusals: ${refusedCodes.join(', ') || 'none'})`).to.be.at.most(2);
    expect(evil.errors).to.deep.equal([]);
  });

  /** A valid state.json + checkpoint written through the coordinator's own code, then edited. */
  const corruptState = async (edit: (s: Record<string, unknown>) => void): Promise<string> => {
    const stateDir = join(dir, 'state');
    const first = r.coordinator(new Coordinator(options({ stateDir })));
    await first.serve(0);
    const g = first.globalAdapter!;
    await first.close();
    await saveState(stateDir, {
      modelId: first.modelId!, strategy: first.strategy.name, maxRank: 4, seed: 42, loraAlpha: 16, targetModules: g.config.targetModules,
      completedRounds: 1, strategyState: {}, history: [],
    }, g);
    const file = join(stateDir, 'state.json');
    const s = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
    edit(s);
    await writeFile(file, JSON.stringify(s));
    return stateDir;
  };

  const expectServeRefused = async (stateDir: string, field: RegExp) => {
    const coord = r.coordinator(new Coordinator(options({ stateDir, rounds: 3 })));
    let err: unknown;
    let url: string | undefined;
    await coord.serve(0).then((u) => { url = u; }, (e: unknown) => { err = e; });
    expect(err, `serve() resolved (${url}) with completedRounds=${coord.completedRounds}`).to.be.instanceOf(Error);
    const msg = (err as Error).message;
    expect(msg).to.match(field);
    expect(msg).not.to.match(/is not a function|undefined/);
  };

  it('7c: serve() refuses a state.json with completedRounds 1e9, naming the field', async () => {
    await expectServeRefused(await corruptState((s) => { s.completedRounds = 1e9; }), /completedRounds/);
  });

  it('7c: serve() refuses a state.json with a garbage history, naming the field', async () => {
    await expectServeRefused(await corruptState((s) => { s.history = { not: 'a list' }; }), /history/);
  });
});

function decodeReply(raw: unknown): Reply {
  return decode(raw, 64 << 20) as Reply;
}
