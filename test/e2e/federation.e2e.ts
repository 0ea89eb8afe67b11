/**
 * Real processes over TCP loopback: `fedlora coordinator` + 3 `fedlora client`s (ranks 2, 4, 8) on
 * the llama-tiny fixture, trained with the real LocalTrainer. Slow (tens of seconds), so the file
 * is named *.e2e.ts and runs with `npx mocha 'test/e2e/*.e2e.ts'`, not with `npm test`.
 */
import { expect } from 'chai';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { loadCausalLM } from '../../shared/model/causal-lm.js';
import { decode } from '../../shared/codec/index.js';
import { formatPublicKey, generateIdentity, saveIdentity } from '../../shared/crypto/index.js';
import { maxDiff, plainAggregate, type Dump } from '../coordinator/helpers.js';
import { fedlora, freePort, getJson, waitFor, writeCorpus, type Proc } from './helpers.js';

const MODEL = 'test/fixtures/hf/llama-tiny/base';
const BACKEND = process.env.FEDLORA_E2E_BACKEND ?? 'wasm';

interface Hist { round: number; status: string; contributors: number; globalEval?: { loss: number }; participants: { clientId: string; status: string; bytesUp: number }[] }

describe('e2e: coordinator + 3 clients as real processes', function () {
  this.timeout(120_000);
  let dir: string;
  const procs: Proc[] = [];
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-e2e-')); });
  afterEach(async () => {
    if (process.env.FEDLORA_E2E_DUMP) await writeFile(process.env.FEDLORA_E2E_DUMP, procs.map((p) => p.out()).join('\n=====\n'));
    for (const p of procs.splice(0)) if (p.child.exitCode === null) p.child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  // enrollment as an operator does it: client identities, their public keys in the allowlist, the coordinator key pinned
  let coordKey = '';
  const enroll = async (n: number) => {
    const coord = generateIdentity();
    await saveIdentity(join(dir, 'coordinator.id'), coord);
    coordKey = formatPublicKey(coord.publicKey);
    const lines: string[] = [];
    for (let i = 0; i < n; i++) {
      const id = generateIdentity();
      await saveIdentity(join(dir, `c${i}.id`), id);
      lines.push(`${formatPublicKey(id.publicKey)} c${i}`);
    }
    await writeFile(join(dir, 'authorized-clients'), `# enrolled\n${lines.join('\n')}\n`);
  };
  const coordinatorArgs = (port: number, extra: string[] = []) => ['coordinator', '--model', MODEL, '--state', join(dir, 'coord'), '--port', String(port),
    '--identity', join(dir, 'coordinator.id'), '--authorized-clients', join(dir, 'authorized-clients'),
    '--rounds', '3', '--clients-per-round', '3', '--max-rank', '8', '--strategy', 'rank-aware', '--local-steps', '6', '--lr', '0.02', '--batch-size', '4', '--join-wait', '1s', ...extra];
  const client = (port: number, i: number, rank: number, env: Record<string, string> = {}, extra: string[] = []) => fedlora(['client', '--coordinator', `http://127.0.0.1:${port}`, '--data', join(dir, `data${i}.jsonl`), '--state', join(dir, `c${i}`),
    '--max-rank', String(rank), '--backend', BACKEND, '--id', `c${i}`, '--identity', join(dir, `c${i}.id`), '--coordinator-key', coordKey, ...extra], env);

  it('3 rounds with ranks 2/4/8: global eval loss decreases, the export loads and changes logits', async () => {
    await enroll(3);
    for (let i = 0; i < 3; i++) await writeCorpus(join(dir, `data${i}.jsonl`), i);
    const port = await freePort();
    const coord = fedlora(coordinatorArgs(port, ['--min-clients', '3', '--export', join(dir, 'export')]));
    procs.push(coord);
    await waitFor('coordinator to listen', () => /listening on/.test(coord.out()), 20_000);
    const clients = [2, 4, 8].map((r, i) => client(port, i, r));
    procs.push(...clients);
    const code = await coord.exited;
    expect(code, coord.out()).to.equal(0);
    const codes = await Promise.all(clients.map((c) => c.exited));
    expect(codes, clients.map((c) => c.out()).join('\n---\n')).to.deep.equal([0, 0, 0]);
    const state = JSON.parse(await readFile(join(dir, 'coord', 'state.json'), 'utf8')) as { completedRounds: number; history: Hist[] };
    expect(state.completedRounds).to.equal(3);
    const losses = state.history.filter((h) => h.status === 'completed').map((h) => h.globalEval!.loss);
    expect(losses).to.have.length(3);
    expect(losses[2]!, `global eval losses ${losses}`).to.be.lessThan(losses[0]!);
    expect(state.history.every((h) => h.contributors === 3)).to.equal(true);
    const adapter = await loadPeftAdapter(join(dir, 'export'));
    expect(adapter.config.r).to.equal(8);
    const lm = await loadCausalLM(MODEL, { backend: 'cpu' });
    try {
      const ids = [[1, 40, 50, 60, 70, 80, 90, 100]];
      const base = await lm.logits(ids);
      const tuned = await lm.logits(ids, { adapter });
      let diff = 0;
      for (let i = 0; i < base.length; i++) diff = Math.max(diff, Math.abs(base[i]! - tuned[i]!));
      expect(diff).to.be.greaterThan(1e-3);
    } finally { lm.dispose(); }
  });

  it('survives kill -9 of a client mid-round and of the coordinator after round 2 (resume, clients reconnect)', async () => {
    await enroll(3);
    for (let i = 0; i < 3; i++) await writeCorpus(join(dir, `data${i}.jsonl`), i);
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    let coord = fedlora(coordinatorArgs(port, ['--min-clients', '2', '--round-timeout', '40s']));
    procs.push(coord);
    await waitFor('coordinator to listen', () => /listening on/.test(coord.out()), 20_000);
    const clients = [2, 4, 8].map((r, i) => client(port, i, r));
    procs.push(...clients);
    // kill client c2 as soon as round 1 is training
    await waitFor('round 1 training', async () => (await getJson(`${url}/status`))?.phase === 'training', 40_000, 50);
    clients[2]!.child.kill('SIGKILL');
    await waitFor('round 2 completed', async () => ((await getJson(`${url}/status`))?.completedRounds as number) >= 2, 60_000, 50);
    coord.child.kill('SIGKILL');
    await coord.exited;
    const mid = JSON.parse(await readFile(join(dir, 'coord', 'state.json'), 'utf8')) as { completedRounds: number; history: Hist[] };
    expect(mid.completedRounds).to.equal(2);
    const r1 = mid.history.find((h) => h.round === 1 && h.status === 'completed')!;
    expect(r1.contributors).to.equal(2);
    expect(r1.participants.find((p) => p.clientId === 'c2')?.status).to.equal('dropped');
    // restart on the same port with the same state: resumes at round 3; c0 and c1 reconnect by themselves
    coord = fedlora(coordinatorArgs(port, ['--min-clients', '2']));
    procs.push(coord);
    expect(await coord.exited, coord.out()).to.equal(0);
    expect(coord.out()).to.match(/resuming from .*: 2 round\(s\) completed/);
    expect(await Promise.all([clients[0]!.exited, clients[1]!.exited])).to.deep.equal([0, 0]);
    const fin = JSON.parse(await readFile(join(dir, 'coord', 'state.json'), 'utf8')) as { completedRounds: number; history: Hist[] };
    expect(fin.completedRounds).to.equal(3);
    expect(fin.history.at(-1)!.round).to.equal(3);
    expect(fin.history.at(-1)!.contributors).to.equal(2);
  });

  it('secure aggregation, 5 clients: one killed after its masked upload, one before it; the result equals plain aggregation of the survivors', async () => {
    await enroll(5);
    for (let i = 0; i < 5; i++) await writeCorpus(join(dir, `data${i}.jsonl`), i);
    const port = await freePort();
    const coord = fedlora(coordinatorArgs(port, ['--rounds', '1', '--clients-per-round', '5', '--min-clients', '3', '--no-refactor', '--round-timeout', '90s', '--join-wait', '20s', '--rejoin-grace', '500ms']));
    procs.push(coord);
    await waitFor('coordinator to listen', () => /listening on/.test(coord.out()), 20_000);
    // the test-only dump flag makes each client also keep the plaintext it contributed, so the test can recompute the plain sum
    const clients = [0, 1, 2, 3, 4].map((i) => client(port, i, 8, { FEDLORA_LOG: 'debug' }, ['--debug-dump-contributions', join(dir, `c${i}`)]));
    procs.push(...clients);
    // c4: killed once key sharing is done, while it trains (before its masked upload)
    await waitFor('c4 to hold key shares', () => /received key shares/.test(clients[4]!.out()), 90_000, 20);
    clients[4]!.child.kill('SIGKILL');
    // c3: killed as soon as its masked upload was accepted
    await waitFor('c3 masked upload', () => /round 1 rank 8: .*\(masked\)/.test(clients[3]!.out()), 90_000, 5);
    clients[3]!.child.kill('SIGKILL');
    expect(await coord.exited, coord.out()).to.equal(0);
    expect(await Promise.all(clients.slice(0, 3).map((c) => c.exited))).to.deep.equal([0, 0, 0]);
    const state = JSON.parse(await readFile(join(dir, 'coord', 'state.json'), 'utf8')) as { completedRounds: number; checkpoint: string; history: (Hist & { secure?: { k: number; t: number; droppedAfterSharing: string[] } })[] };
    expect(state.completedRounds).to.equal(1);
    const rec = state.history.find((h) => h.status === 'completed')!;
    expect(rec.contributors).to.equal(4);
    expect(Object.fromEntries(rec.participants.map((p) => [p.clientId, p.status]))).to.deep.equal({ c0: 'uploaded', c1: 'uploaded', c2: 'uploaded', c3: 'uploaded', c4: 'dropped' });
    expect(rec.secure).to.deep.include({ k: 4, t: 3, droppedAfterSharing: ['c4'] });
    expect(coord.out()).not.to.match(/insecure/i);
    const dumps = await Promise.all([0, 1, 2, 3].map(async (i) => decode(await readFile(join(dir, `c${i}`, 'debug-contribution-1.msgpack'))) as Dump));
    const got = await loadPeftAdapter(join(dir, 'coord', state.checkpoint));
    const previous = { config: got.config, tensors: new Map(dumps[0]!.global.map((t) => [t.name, { shape: t.shape, data: t.data }])) };
    const { adapter, tolerance } = plainAggregate(dumps, previous, 'rank-aware', 8);
    const d = maxDiff(got, adapter);
    expect(maxDiff(got, previous)).to.be.greaterThan(1e-4);
    expect(d, `max |secure − plain| = ${d}, bound ${tolerance}`).to.be.at.most(tolerance);
  });
});
