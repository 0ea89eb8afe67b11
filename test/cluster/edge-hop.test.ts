/**
 * A client's masked input that reaches the leader through two edges, over a real redis-server.
 *
 * c0 reaches edge A through a TCP relay. Right after the leader confirms c0's masked input (edge A has
 * added it into its running sum), the relay drops every connection and stops listening: the network
 * path from c0 to edge A is gone, edge A itself lives on. c0 never got the ack, so it reconnects to
 * the next URL on its list (edge B), gets the round again and re-sends the very same sealed input.
 * Edge A cannot take an input back out of its sum, so the leader answers edge B `heldAt: A` and edge
 * B lets its copy go; the partial sums count c0 once. The others train only after that re-send, so
 * it arrives while the masked-input phase is open. The global adapter must equal a single-process run.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect, type Socket as NetSocket, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { ClusterEdge } from '../../coordinator/cluster/edge.js';
import type { LoraAdapter } from '../../shared/lora/adapter.js';
import type { RoundRecord } from '../../coordinator/metrics.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, maxDiff, pullTrainer } from '../coordinator/helpers.js';
import { Resources, within } from '../coordinator/hostile-client.js';
import { startRedis, type RedisServer } from './redis-harness.js';

const TARGETS = [0.1, 0.3, 0.5];
const SEED = 11;

/** A TCP relay to `port`; `cut()` stops listening and drops every relayed connection (a network failure). */
async function relay(port: number): Promise<{ url: string; cut(): void }> {
  const open = new Set<NetSocket>();
  const server = createServer((a) => {
    const b = connect(port, '127.0.0.1');
    for (const s of [a, b]) { open.add(s); s.on('close', () => open.delete(s)); s.on('error', () => undefined); }
    a.pipe(b);
    b.pipe(a);
  });
  await new Promise<void>((res, rej) => { server.once('error', rej); server.listen(0, '127.0.0.1', () => res()); });
  const cut = () => { server.close(); for (const s of open) s.destroy(); };
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, cut };
}

describe('cluster: a masked input re-sent through a second edge', function () {
  this.timeout(60_000);
  let dir: string;
  let r: Resources;
  let redis: RedisServer | undefined;
  const edges: ClusterEdge[] = [];
  const relays: { cut(): void }[] = [];
  before(() => setLogLevel((process.env.FEDLORA_TEST_LOG as 'info' | undefined) ?? 'error'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-edgehop-')); r = new Resources(); });
  afterEach(async () => {
    await r.closeAll();
    for (const x of relays.splice(0)) x.cut();
    await Promise.all(edges.splice(0).map((e) => within('edge close', e.close(), 5000).catch(() => undefined)));
    await redis?.stop();
    redis = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  const settings = (stateDir: string) => ({
    allowAnyClient: true, modelDir: FIXTURE, stateDir, rounds: 1, clientsPerRound: 3, minClients: 3, maxRank: 4, localSteps: 1,
    joinWaitMs: 200, refactor: false, rejoinGraceMs: 5000, strategy: 'fedit' as const, seed: SEED,
  });

  /** Three clients; c1 and c2 train only once `gate` resolves. */
  async function federation(coord: Coordinator, urls: string[], tag: string, gate: Promise<void>): Promise<{ global: LoraAdapter; history: readonly RoundRecord[] }> {
    const trainers = await Promise.all(TARGETS.map((t, i) => pullTrainer(t, 8 + i)));
    const clients = trainers.map((t, i) => r.client(new Client({
      coordinatorUrl: urls[i]!, dataFile: 'x', stateDir: join(dir, `${tag}-c${i}`), maxRank: 4, clientId: `c${i}`, reconnectInitialMs: 100, reconnectMaxMs: 300,
      trainerFactory: async () => (i === 0 ? t : { ...t, train: async (...a: Parameters<typeof t.train>) => { await gate; return t.train(...a); } }),
    })));
    const runs = clients.map((c) => c.run());
    await within('the run', coord.done, 40_000);
    await within('clients finishing', Promise.all(runs), 20_000);
    return { global: coord.globalAdapter!, history: coord.history };
  }

  it('stays in the first edge\'s running sum; the second edge lets its copy go, and the sum counts it once', async () => {
    console.log(`      seed ${SEED}, client targets ${TARGETS.join(' ')}`);
    const single = r.coordinator(new Coordinator(settings(join(dir, 'single'))));
    const url = await single.serve(0);
    const a = await federation(single, TARGETS.map(() => url), 'single', Promise.resolve());
    await single.close();

    redis = await startRedis();
    const leader = r.coordinator(new Coordinator({ ...settings(join(dir, 'leader')), cluster: { url: redis.url, prefix: 'hop' } }));
    await leader.serve(0);
    const [edgeA, edgeB] = [0, 1].map(() => new ClusterEdge({ cluster: redis!.url, prefix: 'hop' }));
    edges.push(edgeA!, edgeB!);
    const [uA, uB] = await Promise.all([edgeA!.serve(0), edgeB!.serve(0)]);
    const path = await relay(Number(new URL(uA!).port));
    relays.push(path);

    // edge A: once the leader has confirmed c0's input, the path from c0 goes down before the ack is back
    type Req = ClusterEdge['bus']['request'];
    const requestA: Req = edgeA!.bus.request.bind(edgeA!.bus);
    let cutAt: string | undefined;
    edgeA!.bus.request = (async (node, type, body, ms) => {
      const reply = await requestA(node, type, body, ms);
      const o = body as { roundId?: string; ref?: { id?: string } };
      if (type === 'c:masked' && o.ref?.id === 'c0' && cutAt === undefined) { cutAt = o.roundId; path.cut(); }
      return reply;
    }) as Req;
    // edge B: the leader's answer to c0's re-sent input
    const requestB: Req = edgeB!.bus.request.bind(edgeB!.bus);
    const answers: unknown[] = [];
    let heldAfter: { a: string[]; b: string[] } | undefined;
    let resent!: () => void;
    const gate = new Promise<void>((res) => { resent = res; });
    edgeB!.bus.request = (async (node, type, body, ms) => {
      const reply = await requestB(node, type, body, ms);
      if (type === 'c:masked' && (body as { ref?: { id?: string } }).ref?.id === 'c0') {
        answers.push((reply as { heldAt?: unknown } | null)?.heldAt);
        // B's copy is gone once #masked1 has acted on this reply (the next turn)
        if (answers.length === 1) setImmediate(() => { heldAfter = { a: edgeA!.heldInputs(cutAt!), b: edgeB!.heldInputs(cutAt!) }; resent(); });
      }
      return reply;
    }) as Req;

    const b = await federation(leader, [`${path.url},${uB}`, uA!, uB!], 'cluster', gate);

    expect(cutAt, 'the path to edge A was cut after c0\'s input was confirmed').to.be.a('string');
    // every time c0's input came through edge B the leader said where it is held
    expect(answers, 'the leader\'s answers to edge B').to.deep.equal(answers.map(() => edgeA!.nodeId)).and.not.be.empty;
    // right after the re-send: c0's input is in edge A's running sum only
    expect(heldAfter).to.deep.equal({ a: ['c0'], b: [] });
    for (const h of [a.history, b.history]) {
      expect(h.map((x) => ({ round: x.round, attempt: x.attempt, status: x.status, contributors: x.contributors })))
        .to.deep.equal([{ round: 1, attempt: 1, status: 'completed', contributors: 3 }]);
    }
    const st = leader.status().cluster!;
    console.log(`      leader: ${st.maskedRefs} masked-input references, ${st.partialSums} partial sums`);
    expect(st.maskedRefs).to.equal(3);
    expect(st.partialSums).to.equal(2);
    const d = maxDiff(b.global, a.global);
    console.log(`      max |cluster − single| = ${d}`);
    expect(d).to.be.at.most(1e-6);
  });
});
