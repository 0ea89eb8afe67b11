/**
 * Leader failover over a real redis-server: two `fedlora coordinator --role leader` processes on
 * one state folder (the second waits for the lease as a standby), two in-process edges, four
 * clients. The first leader is SIGKILLed while round 2 trains (the trainers hold round 2 until
 * the kill, so it is mid-round by construction); the standby takes the lease, loads the round-1
 * checkpoint, and the run ends with every round completed once.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClusterEdge } from '../../coordinator/cluster/edge.js';
import { loadState } from '../../coordinator/store/checkpoint-store.js';
import { Client } from '../../client/index.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, pullTrainer } from '../coordinator/helpers.js';
import { Resources, waitFor, within } from '../coordinator/hostile-client.js';
import { startRedis, type RedisServer } from './redis-harness.js';

function leaderProcess(redisUrl: string, stateDir: string, log: string[]): ChildProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', 'bin/fedlora.ts', 'coordinator', '--cluster', redisUrl, '--role', 'leader', '--cluster-prefix', 'fo',
    '--model', FIXTURE, '--state', stateDir, '--allow-any-client', '--port', '0', '--rounds', '3', '--clients-per-round', '4', '--min-clients', '3',
    '--max-rank', '4', '--local-steps', '1', '--join-wait', '200ms', '--rejoin-grace', '2s', '--strategy', 'fedit', '--no-refactor', '--seed', '11'], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d: Buffer) => log.push(d.toString()));
  child.stderr!.on('data', (d: Buffer) => log.push(d.toString()));
  return child;
}

const exitOf = (c: ChildProcess) => new Promise<number | null>((res) => { if (c.exitCode !== null || c.signalCode !== null) res(c.exitCode); else c.once('exit', (code) => res(code)); });

describe('cluster: leader failover', function () {
  this.timeout(90_000);
  let dir: string;
  let r: Resources;
  let redis: RedisServer | undefined;
  const edges: ClusterEdge[] = [];
  const procs: ChildProcess[] = [];
  before(() => setLogLevel((process.env.FEDLORA_TEST_LOG as 'info' | undefined) ?? 'error'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-failover-')); r = new Resources(); });
  afterEach(async () => {
    await r.closeAll();
    for (const p of procs.splice(0)) { if (p.exitCode === null && p.signalCode === null) { p.kill('SIGKILL'); await exitOf(p); } }
    await Promise.all(edges.splice(0).map((e) => within('edge close', e.close(), 5000).catch(() => undefined)));
    await redis?.stop();
    redis = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  it('killing the leader mid-round: the standby takes over from the last checkpoint and no round is lost', async () => {
    console.log('      seed 11, client targets 0.1 0.2 0.3 0.4');
    redis = await startRedis();
    const state = join(dir, 'state');
    const logA: string[] = [], logB: string[] = [];
    const a = leaderProcess(redis.url, state, logA);
    procs.push(a);
    await waitFor('leader A to lead', () => logA.join('').includes('coordinator listening on'), 30_000);
    const b = leaderProcess(redis.url, state, logB);
    procs.push(b);
    for (let i = 0; i < 2; i++) edges.push(new ClusterEdge({ cluster: redis.url, prefix: 'fo' }));
    const urls = await Promise.all(edges.map((e) => e.serve(0)));
    let killed!: () => void;
    const afterKill = new Promise<void>((res) => { killed = res; });
    const trainers = await Promise.all([0.1, 0.2, 0.3, 0.4].map((t) => pullTrainer(t, 8)));
    const clients = trainers.map((t, i) => r.client(new Client({
      coordinatorUrl: urls[i % 2]!, dataFile: 'x', stateDir: join(dir, `c${i}`), maxRank: 4, clientId: `c${i}`, reconnectInitialMs: 100, reconnectMaxMs: 500,
      trainerFactory: async () => {
        let calls = 0;
        // the second training (round 2 under leader A) waits for A's death, so the kill lands mid-round
        return { ...t, train: async (...args: Parameters<typeof t.train>) => { if (++calls === 2) await afterKill; return t.train(...args); } };
      },
    })));
    const runs = clients.map((c) => c.run());
    await waitFor('round 1 checkpointed by leader A', async () => ((await loadState(state).catch(() => null))?.state.completedRounds ?? 0) >= 1, 30_000, 50);
    await waitFor('round 2 training under A', () => logA.join('').includes('round 2/3'), 30_000);
    a.kill('SIGKILL');
    await exitOf(a);
    killed();
    expect(await within('standby leader B finishing', exitOf(b), 60_000)).to.equal(0);
    await within('clients finishing', Promise.all(runs), 20_000);
    const final = await loadState(state);
    expect(final!.state.completedRounds).to.equal(3);
    const done = final!.state.history.filter((h) => h.status === 'completed').map((h) => h.round);
    console.log(`      completed rounds in the final checkpoint: ${done.join(', ')}`);
    expect(done).to.deep.equal([1, 2, 3]);
    expect(logB.join('')).to.include('resuming from');
  });
});
