/**
 * Losing an edge mid-round over a real redis-server: one leader, two edges, five clients that
 * list both edges (`coordinatorUrl: "e0,e1"`). Edge 0 dies while the round waits for masked
 * inputs and holds those of c0 and c1 (the edge process is SIGKILLed: a crash, its presence key expires); the other clients' training waits for that, so the loss is
 * mid-round by construction. The attempt completes without re-running (c0/c1's masks are recovered
 * or their re-sent inputs come through edge 1), and the next round has all five, through edge 1.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, pullTrainer } from '../coordinator/helpers.js';
import { Resources, waitFor, within } from '../coordinator/hostile-client.js';
import { startRedis, type RedisServer } from './redis-harness.js';
import { edgeProcess, type Proc } from './processes.js';
import { ClusterEdge } from '../../coordinator/cluster/edge.js';
import { io } from 'socket.io-client';
import { PROTOCOL_VERSION } from '../../shared/protocol/index.js';

describe('cluster: losing an edge', function () {
  this.timeout(60_000);
  let dir: string;
  let r: Resources;
  let redis: RedisServer | undefined;
  const edges: Proc[] = [];
  const stalled: ClusterEdge[] = [];
  before(() => setLogLevel((process.env.FEDLORA_TEST_LOG as 'info' | undefined) ?? 'error'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-edgeloss-')); r = new Resources(); });
  afterEach(async () => {
    await r.closeAll();
    await Promise.all(edges.splice(0).map((e) => within('edge exit', e.kill(), 5000).catch(() => undefined)));
    await Promise.all(stalled.splice(0).map((e) => within('edge close', e.close(), 5000).catch(() => undefined)));
    await redis?.stop();
    redis = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  it('costs only that edge\'s clients for the attempt; they reconnect to the other edge', async () => {
    console.log('      seed 5, client targets 0.1 … 0.5');
    redis = await startRedis();
    const leader = r.coordinator(new Coordinator({
      allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'leader'), rounds: 2, clientsPerRound: 5, minClients: 3, maxRank: 4, localSteps: 1,
      joinWaitMs: 200, refactor: false, rejoinGraceMs: 300, strategy: 'fedit', seed: 5, cluster: { url: redis.url, prefix: 'el' },
    }));
    await leader.serve(0);
    for (const e of await Promise.all([0, 1].map(() => edgeProcess(redis!.url, 'el')))) edges.push(e);
    const [u0, u1] = edges.map((e) => (e as Proc & { url: string }).url);
    let lost!: () => void;
    const edgeGone = new Promise<void>((res) => { lost = res; });
    const trainers = await Promise.all([0.1, 0.2, 0.3, 0.4, 0.5].map((t) => pullTrainer(t, 8)));
    const clients = trainers.map((t, i) => r.client(new Client({
      coordinatorUrl: i < 2 ? `${u0},${u1}` : `${u1},${u0}`, dataFile: 'x', stateDir: join(dir, `c${i}`), maxRank: 4, clientId: `c${i}`, reconnectInitialMs: 100, reconnectMaxMs: 300,
      trainerFactory: async () => {
        let calls = 0;
        // the clients of edge 1 train round 1 only once edge 0 is gone
        return { ...t, train: async (...a: Parameters<typeof t.train>) => { if (i >= 2 && ++calls === 1) await edgeGone; return t.train(...a); } };
      },
    })));
    const runs = clients.map((c) => c.run());
    // only c0 and c1 (edge 0) can upload before the gate opens: two references mean edge 0 holds both inputs
    await waitFor('edge 0 holding the masked inputs of c0 and c1', () => leader.status().collecting === 'masked' && leader.status().cluster!.maskedRefs === 2, 30_000);
    await edges[0]!.kill('SIGKILL');
    lost();
    await within('the run', leader.done, 40_000);
    await within('clients finishing', Promise.all(runs), 20_000);
    const h = leader.history;
    console.log(`      ${JSON.stringify(h.map((x) => ({ round: x.round, attempt: x.attempt, status: x.status, contributors: x.contributors, dropped: x.secure?.droppedAfterSharing })))}`);
    // round 1 completed in its first attempt, with every client of the surviving edge
    expect(h[0]).to.deep.include({ round: 1, attempt: 1, status: 'completed' });
    const statuses = Object.fromEntries(h[0]!.participants.map((p) => [p.clientId, p.status]));
    for (const id of ['c2', 'c3', 'c4']) expect(statuses[id], id).to.equal('uploaded');
    // round 2: all five, c0 and c1 now through edge 1
    const last = h.at(-1)!;
    expect(last).to.deep.include({ round: 2, status: 'completed', contributors: 5 });
  });

  it('an edge that stalled past its presence time closes its client connections, so its clients join again', async () => {
    redis = await startRedis();
    const leader = r.coordinator(new Coordinator({
      allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'leader'), rounds: 1, clientsPerRound: 5, minClients: 5, maxRank: 4, localSteps: 1,
      joinWaitMs: 200, strategy: 'fedit', seed: 5, cluster: { url: redis.url, prefix: 'st' },
    }));
    await leader.serve(0);
    const edge = new ClusterEdge({ cluster: redis.url, prefix: 'st', presenceMs: 900 });
    stalled.push(edge);
    const url = await edge.serve(0);
    const sock = io(url, { transports: ['websocket'], reconnection: false, auth: { protocolVersion: PROTOCOL_VERSION } });
    await new Promise<void>((res, rej) => { sock.once('connect', () => res()); sock.once('connect_error', rej); });
    const closed = new Promise<string>((res) => sock.once('disconnect', (reason) => res(reason)));
    // what a stall longer than the presence time leaves behind: the key is gone (and the leader has
    // dropped this edge's links); the edge's next refresh must notice and close its connections
    expect(await edge.bus.redis.del(`st:edge:${edge.nodeId}`)).to.equal(1);
    expect(await within('the edge closing its client connection', closed, 5000)).to.equal('transport close');
    await waitFor('the presence key back', async () => (await edge.bus.redis.exists(`st:edge:${edge.nodeId}`)) === 1, 5000, 50);
    sock.close();
  });
});
