/**
 * bench/cluster.ts end to end at a tiny size: a real redis-server, a single coordinator and a
 * leader + 2 edges, 6 synthetic clients (real joins, real SecAgg+) with 4,992-value updates. The
 * JSON it writes must show the rounds completed, the leader's inbound bytes bounded by the partial
 * sums (O(edges)) and below the single process's, and a peak RSS for every process.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RunResult } from '../../bench/cluster.js';

const CLIENTS = 6, EDGES = 2, VALUES = 5000;

describe('bench:cluster smoke (bench/cluster.ts as a child process)', function () {
  this.timeout(120_000);
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-bench-smoke-')); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  it('both modes complete; the leader receives O(edges) bytes, fewer than one process does', async () => {
    const json = join(dir, 'out.json');
    const child = spawn(process.execPath, ['--import', 'tsx', 'bench/cluster.ts', '--clients', String(CLIENTS), '--edges', String(EDGES), '--values', String(VALUES), '--json', json], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    const code = await new Promise<number | null>((res) => child.once('exit', res));
    expect(code, out.slice(-3000)).to.equal(0);
    const { results } = JSON.parse(await readFile(json, 'utf8')) as { results: RunResult[] };
    const single = results.find((r) => r.mode === 'single')!, cluster = results.find((r) => r.mode === 'cluster')!;
    expect(single, 'single-process run').to.not.equal(undefined);
    expect(cluster, 'cluster run').to.not.equal(undefined);
    for (const r of [single, cluster]) {
      expect(r.clients).to.equal(CLIENTS);
      // one GPT-2 block of width 39 at rank 8: the largest GPT-2-shaped update ≤ 5000
      expect(r.values).to.equal(4992);
      expect(r.rounds.map((x) => [x.status, x.contributors])).to.deep.equal([['completed', CLIENTS]]);
      expect(r.roundMs).to.be.greaterThan(0);
      expect(r.clientFailures).to.equal(0);
      expect(r.rssMiB.coordinator).to.be.greaterThan(10);
      expect(r.rssMiB.drivers).to.have.length(1);
      expect(r.rssMiB.drivers[0]).to.be.greaterThan(10);
    }
    expect(cluster.edges).to.equal(EDGES);
    expect(cluster.rssMiB.edges).to.have.length(EDGES);
    for (const e of cluster.rssMiB.edges) expect(e).to.be.greaterThan(10);
    expect(cluster.rssMiB.redis).to.be.greaterThan(0);
    // one partial sum per edge, one reference per client
    expect(cluster.partialSums).to.equal(EDGES);
    expect(cluster.maskedRefs).to.equal(CLIENTS);
    // a single process reads every masked vector (4 bytes per value per client): over the whole run, since the
    // per-round window opens when the bench sees every client ready, and a round this small can already have
    // taken uploads by then...
    expect(single.inboundBytesTotal).to.be.greaterThan(CLIENTS * 4992 * 4);
    // ...the leader one Uint32 vector per edge plus small per-client control messages (references, keys, shares)
    expect(cluster.inboundBytesPerRound).to.be.below(EDGES * 4992 * 4 * 1.2 + CLIENTS * 8 * 1024);
    expect(cluster.inboundBytesTotal).to.be.below(single.inboundBytesTotal);
  });
});
