/**
 * One federation over real sockets with the stand-in trainer (3 clients at ranks 2/4/8, c0 keeps a
 * layer personal, 2 rounds, secure aggregation), run once in `before`; each `it` checks one
 * behaviour of it. A second coordinator resumes the same state at the end.
 */
import { expect } from 'chai';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { decode } from '../../shared/codec/index.js';
import { makeLayout } from '../../shared/aggregation/index.js';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { setLogLevel } from '../../shared/log.js';
import type { ContributionObservation } from '../../client/participant/observe.js';
import { FIXTURE, pullTrainer } from './helpers.js';
import { Resources } from './hostile-client.js';
import { parsePrometheusText, sampleValue } from './prometheus-text.js';

describe('coordinator + clients over real sockets (stand-in trainer)', function () {
  this.timeout(30_000);
  let dir: string;
  let state: string;
  let r: Resources;
  let coord: Coordinator;
  let url: string;
  let trainers: Awaited<ReturnType<typeof pullTrainer>>[];
  let results: { completedRounds: number; roundsTrained: number }[];
  const uploads: { client: string; bytes: Uint8Array }[] = [];
  const contributions: { client: string; c: ContributionObservation }[] = [];
  const personalGlob = '*.layers.1.self_attn.q_proj.*';

  before(async () => {
    setLogLevel('warn');
    dir = await mkdtemp(join(tmpdir(), 'fedlora-rounds-'));
    state = join(dir, 'coord');
    r = new Resources();
    coord = r.coordinator(new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: state, rounds: 2, clientsPerRound: 3, minClients: 2, maxRank: 8, strategy: 'rank-aware', localSteps: 2, joinWaitMs: 200, roundTimeoutMs: 10_000, exportDir: join(dir, 'export') }));
    url = await coord.serve(0);
    trainers = await Promise.all([0.1, 0.2, 0.3].map((t) => pullTrainer(t)));
    const clients = [2, 4, 8].map((rank, i) => r.client(new Client({
      coordinatorUrl: url, dataFile: 'unused.jsonl', stateDir: join(dir, `c${i}`), maxRank: rank, clientId: `c${i}`,
      personal: i === 0 ? [personalGlob] : [], personalMode: 'exclusive', trainerFactory: async () => trainers[i]!,
      observe: { upload: (bytes) => { uploads.push({ client: `c${i}`, bytes }); }, contribution: (c) => { contributions.push({ client: `c${i}`, c }); } },
    })));
    const runs = clients.map((c) => c.run());
    await coord.done;
    results = await Promise.all(runs);
  });
  after(async () => { await r.closeAll(); await rm(dir, { recursive: true, force: true }); });

  it('runs both rounds with every client', () => {
    expect(results.map((x) => x.completedRounds)).to.deep.equal([2, 2, 2]);
    expect(coord.completedRounds).to.equal(2);
    expect(coord.history.map((h) => [h.round, h.status, h.contributors])).to.deep.equal([[1, 'completed', 3], [2, 'completed', 3]]);
  });

  it('each client downloads and verifies the model into its cache', async () => {
    for (let i = 0; i < 3; i++) {
      const m = await readdir(join(dir, `c${i}`, 'models', coord.modelId!));
      expect(m).to.include.members(['config.json', 'model.safetensors', '.complete']);
    }
  });

  it('assigns each client min(its max rank, the coordinator max rank)', () => {
    expect(coord.history[0]!.participants.map((p) => [p.clientId, p.rank])).to.deep.equal([['c0', 2], ['c1', 4], ['c2', 8]]);
  });

  it('personal tensors never enter the plaintext contribution (zeros in their layout slots), though they were trained', () => {
    const mine = contributions.filter((x) => x.client === 'c0');
    expect(mine).to.have.length(2);
    for (const [round, { c }] of mine.entries()) {
      const layout = makeLayout(c.layout);
      const personal = layout.entries.filter((e) => /layers\.1\.self_attn\.q_proj/.test(e.name));
      expect(personal).to.have.length(2);
      for (const e of personal) {
        const slice = c.contribution.subarray(e.offset, e.offset + e.size);
        expect(slice.every((x) => x === 0), `${e.name} in the round ${round + 1} contribution`).to.equal(true);
        // the trainer did move them, so zeros are the client keeping them home, not untrained values
        const trained = trainers[0]!.trained[round]!.get(e.name)!;
        expect(trained.data.some((x) => x !== 0), `${e.name} trained`).to.equal(true);
      }
      // and the shared tensors are there
      const shared = layout.entries.find((e) => /layers\.0\.self_attn\.q_proj\.lora_B/.test(e.name))!;
      expect(c.contribution.subarray(shared.offset, shared.offset + shared.size).some((x) => x !== 0)).to.equal(true);
    }
  });

  it('what leaves a client is a sealed masked input (secure aggregation is the default)', () => {
    const c0 = uploads.filter((u) => u.client === 'c0');
    expect(c0).to.have.length(2);
    for (const u of c0) {
      const msg = decode(u.bytes) as { kind: string; sealed: { box: Uint8Array } };
      expect(msg.kind).to.equal('masked');
      expect(msg.sealed.box.byteLength).to.be.greaterThan(4 * 100);
    }
  });

  it('the client keeps its personal tensors on disk', async () => {
    expect((await stat(join(dir, 'c0', 'personal.safetensors'))).size).to.be.greaterThan(0);
  });

  it('the global adapter stays at the max rank', () => {
    const a = coord.globalAdapter!.tensors.get('base_model.model.model.layers.0.mlp.up_proj.lora_B.weight')!;
    expect(a.shape).to.deep.equal([160, 8]);
  });

  it('serves /status', async () => {
    const st = await (await fetch(`${url}/status`)).json() as Record<string, unknown>;
    expect(st.completedRounds).to.equal(2);
    expect(st.phase).to.equal('done');
    expect((st.lastRound as { contributors: number }).contributors).to.equal(3);
  });

  it('serves /metrics: valid Prometheus text, bounded labels (no round, no client), histograms of phases and upload sizes', async () => {
    const res = await fetch(`${url}/metrics`);
    expect(res.headers.get('content-type')).to.match(/^text\/plain; version=0\.0\.4/);
    const m = parsePrometheusText(await res.text());
    expect(sampleValue(m, 'fedlora_full_model_bytes')).to.equal(609640);
    expect(sampleValue(m, 'fedlora_completed_rounds')).to.equal(2);
    expect(sampleValue(m, 'fedlora_rounds_total', { status: 'completed' })).to.equal(2);
    // 3 clients × 2 rounds uploaded; every upload is smaller than a full model
    expect(sampleValue(m, 'fedlora_upload_bytes_count')).to.equal(6);
    expect(sampleValue(m, 'fedlora_upload_bytes_sum')).to.be.greaterThan(0).and.lessThan(6 * 609640);
    expect(sampleValue(m, 'fedlora_round_duration_seconds_count', { status: 'completed' })).to.equal(2);
    expect(sampleValue(m, 'fedlora_last_round_contributors')).to.equal(3);
    // secure aggregation ran through its phases, each observed once per round
    for (const phase of ['advertise', 'share', 'masked', 'consistency', 'unmask', 'aggregating']) {
      expect(sampleValue(m, 'fedlora_round_phase_seconds_count', { phase }), phase).to.equal(2);
    }
    for (const f of m.values()) {
      for (const s of f.samples) expect(Object.keys(s.labels), `${s.name} labels`).to.not.include.members(['round', 'client', 'clientId']);
    }
    expect(sampleValue(m, 'fedlora_last_round_bytes_vs_full_model')).to.be.greaterThan(0).and.lessThan(1);
  });

  it('checkpoints and exports the global adapter as PEFT adapters', async () => {
    const a = coord.globalAdapter!.tensors.get('base_model.model.model.layers.0.mlp.up_proj.lora_B.weight')!;
    const saved = JSON.parse(await readFile(join(state, 'state.json'), 'utf8')) as { completedRounds: number; checkpoint: string };
    expect(saved.completedRounds).to.equal(2);
    const ck = await loadPeftAdapter(join(state, saved.checkpoint));
    expect(ck.tensors.size).to.equal(coord.globalAdapter!.tensors.size);
    const ex = await loadPeftAdapter(join(dir, 'export'));
    expect([...ex.tensors.get('base_model.model.model.layers.0.mlp.up_proj.lora_B.weight')!.data]).to.deep.equal([...a.data]);
  });

  it('a client arriving after the last round is told the session is over instead of waiting forever', async () => {
    const late = r.client(new Client({ coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, 'late'), maxRank: 4, clientId: 'late', trainerFactory: async () => trainers[0]! }));
    expect(await late.run()).to.deep.equal({ completedRounds: 2, roundsTrained: 0 });
  });

  it('a coordinator restarted on the same state with more rounds resumes at round 3', async () => {
    await coord.close();
    const coord2 = r.coordinator(new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: state, rounds: 3, clientsPerRound: 2, minClients: 2, maxRank: 8, strategy: 'rank-aware', localSteps: 2, joinWaitMs: 100 }));
    const url2 = await coord2.serve(0);
    expect(coord2.completedRounds).to.equal(2);
    const again = [1, 2].map((i) => r.client(new Client({ coordinatorUrl: url2, dataFile: 'x', stateDir: join(dir, `c${i}`), maxRank: 4, clientId: `c${i}`, trainerFactory: async () => trainers[i]! })));
    const r2 = await Promise.all([coord2.done, ...again.map((c) => c.run())]);
    expect(r2[0]).to.deep.equal({ completedRounds: 3 });
    expect(coord2.history.at(-1)!.round).to.equal(3);
  });
});
