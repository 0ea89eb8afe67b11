/**
 * Scale-out over a real redis-server: one leader (Coordinator with `cluster`) and three edge
 * processes (`fedlora coordinator --role edge`), real socket.io over TCP, real clients (the stand-in trainer). Secure rounds finish
 * with a dropout after key sharing, the masked inputs are summed at the edges (the leader receives
 * one partial sum per edge), and the global adapter equals a single-process run on the same seeds.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import type { LoraAdapter } from '../../shared/lora/adapter.js';
import type { RoundRecord } from '../../coordinator/metrics.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, maxDiff, pullTrainer } from '../coordinator/helpers.js';
import { Resources, waitFor, within } from '../coordinator/hostile-client.js';
import { startRedis, type RedisServer } from './redis-harness.js';
import { edgeProcess, type Proc } from './processes.js';

const TARGETS = [0.1, 0.2, 0.3, 0.4, 0.5];
const SEED = 7;

describe('cluster: leader + edges through Redis', function () {
  this.timeout(60_000);
  let dir: string;
  let r: Resources;
  let redis: RedisServer | undefined;
  const edges: Proc[] = [];
  before(() => setLogLevel((process.env.FEDLORA_TEST_LOG as 'info' | undefined) ?? 'error'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-cluster-')); r = new Resources(); });
  // every process and the redis-server are stopped even when a test failed, so mocha exits
  afterEach(async () => {
    await r.closeAll();
    await Promise.all(edges.splice(0).map((e) => within('edge exit', e.kill(), 5000).catch(() => undefined)));
    await redis?.stop();
    redis = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  /**
   * One federation of 5 clients, 2 secure rounds; c4 stops once round 1 waits for masked inputs
   * (its shares are out, so its masks are recovered). `urls[i]` is where client i connects.
   */
  async function federation(coord: Coordinator, urls: string[], tag: string): Promise<{ global: LoraAdapter; history: readonly RoundRecord[] }> {
    const trainers = await Promise.all(TARGETS.map((t, i) => pullTrainer(t, 8 + i)));
    const clients: Client[] = [];
    const vanishing = {
      ...trainers[4]!,
      train: async (...a: Parameters<typeof trainers[4]['train']>) => {
        await waitFor('the masked-input phase', () => coord.status().collecting === 'masked', 20_000);
        void clients[4]!.stop();
        return trainers[4]!.train(...a);
      },
    };
    for (let i = 0; i < TARGETS.length; i++) {
      clients.push(r.client(new Client({
        coordinatorUrl: urls[i]!, dataFile: 'x', stateDir: join(dir, `${tag}-c${i}`), maxRank: 4, clientId: `c${i}`,
        trainerFactory: async () => (i === 4 ? vanishing : trainers[i]!),
      })));
    }
    const runs = clients.map((c, i) => (i < 4 ? c.run() : void c.run().catch(() => undefined)));
    await coord.done;
    await Promise.all(runs.slice(0, 4));
    return { global: coord.globalAdapter!, history: coord.history };
  }

  const settings = (stateDir: string) => ({
    allowAnyClient: true, modelDir: FIXTURE, stateDir, rounds: 2, clientsPerRound: 5, minClients: 3, maxRank: 4, localSteps: 1,
    joinWaitMs: 200, refactor: false, rejoinGraceMs: 100, strategy: 'fedit' as const, seed: SEED,
  });

  it('1 leader + 3 edges finish secure rounds with a dropout; the result equals the single-process run', async () => {
    console.log(`      seed ${SEED}, client targets ${TARGETS.join(' ')}`);
    // single process
    const single = r.coordinator(new Coordinator(settings(join(dir, 'single'))));
    const url = await single.serve(0);
    const a = await federation(single, TARGETS.map(() => url), 'single');
    await single.close();

    // the same federation through the cluster
    redis = await startRedis();
    const leader = r.coordinator(new Coordinator({ ...settings(join(dir, 'leader')), cluster: { url: redis.url, prefix: 'test1' } }));
    await leader.serve(0);
    // three edge processes (`fedlora coordinator --role edge`)
    for (const e of await Promise.all([0, 1, 2].map(() => edgeProcess(redis!.url, 'test1')))) edges.push(e);
    const edgeUrls = edges.map((e) => (e as Proc & { url: string }).url);
    const b = await federation(leader, TARGETS.map((_, i) => edgeUrls[i % 3]!), 'cluster');

    for (const h of [a.history, b.history]) {
      expect(h.map((x) => x.status)).to.deep.equal(['completed', 'completed']);
      expect(h[0]!.contributors).to.equal(4);
      expect(h[0]!.secure?.droppedAfterSharing).to.deep.equal(['c4']);
    }
    expect(b.history[1]!.contributors).to.equal(4);
    // the leader got references and at most one partial sum per edge and attempt, never a masked vector
    const st = leader.status().cluster!;
    console.log(`      leader: ${st.maskedRefs} masked-input references, ${st.partialSums} partial sums, ${st.inboundBytes} bytes in over the bus`);
    expect(st.maskedRefs).to.equal(8);
    expect(st.partialSums).to.be.within(2, 6);
    const d = maxDiff(b.global, a.global);
    console.log(`      max |cluster − single| = ${d}`);
    expect(d).to.be.at.most(1e-6);
  });
});
