import { expect } from 'chai';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { decode } from '../../shared/codec/index.js';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, pullTrainer } from './helpers.js';
import { Resources } from './hostile-client.js';

describe('coordinator + clients over real sockets (stand-in trainer)', function () {
  this.timeout(30_000);
  let dir: string;
  let r: Resources;
  before(() => setLogLevel('warn'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-rounds-')); r = new Resources(); });
  afterEach(async () => { await r.closeAll(); await rm(dir, { recursive: true, force: true }); });

  it('runs rank-heterogeneous rounds, keeps personal tensors home, checkpoints, serves /status and /metrics, resumes', async () => {
    const state = join(dir, 'coord');
    const coord = r.coordinator(new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: state, rounds: 2, clientsPerRound: 3, minClients: 2, maxRank: 8, strategy: 'rank-aware', localSteps: 2, joinWaitMs: 200, roundTimeoutMs: 10_000, exportDir: join(dir, 'export') }));
    const url = await coord.serve(0);
    const uploads: { client: string; bytes: Uint8Array }[] = [];
    const trainers = await Promise.all([0.1, 0.2, 0.3].map((t) => pullTrainer(t)));
    const personalGlob = '*.layers.1.self_attn.q_proj.*';
    const clients = [2, 4, 8].map((rank, i) => r.client(new Client({
      coordinatorUrl: url, dataFile: 'unused.jsonl', stateDir: join(dir, `c${i}`), maxRank: rank, clientId: `c${i}`,
      personal: i === 0 ? [personalGlob] : [], trainerFactory: async () => trainers[i]!,
      onUpload: (bytes) => uploads.push({ client: `c${i}`, bytes }),
    })));
    const runs = clients.map((c) => c.run());
    await coord.done;
    const results = await Promise.all(runs);
    expect(results.map((r) => r.completedRounds)).to.deep.equal([2, 2, 2]);
    expect(coord.completedRounds).to.equal(2);

    // each client downloaded and verified the model into its cache
    for (let i = 0; i < 3; i++) {
      const m = await readdir(join(dir, `c${i}`, 'models', coord.modelId!));
      expect(m).to.include.members(['config.json', 'model.safetensors', '.complete']);
    }
    // personal tensors never travel: their layout slots are zero and their trained bytes are absent
    const personalNames = [...trainers[0]!.trained[0]!.keys()].filter((k) => /layers\.1\.self_attn\.q_proj/.test(k));
    expect(personalNames).to.have.length(2);
    const c0 = uploads.filter((u) => u.client === 'c0');
    expect(c0).to.have.length(2);
    for (const [r, u] of c0.entries()) {
      for (const n of personalNames) {
        const raw = Buffer.from(trainers[0]!.trained[r]!.get(n)!.data.buffer);
        expect(Buffer.from(u.bytes).includes(raw.subarray(0, 64)), `${n} bytes in upload`).to.equal(false);
      }
      // secure aggregation is the default: what leaves the client is a sealed masked input
      const msg = decode(u.bytes) as { kind: string; sealed: { box: Uint8Array } };
      expect(msg.kind).to.equal('masked');
      expect(msg.sealed.box.byteLength).to.be.greaterThan(4 * 100);
    }
    expect(coord.history[0]!.participants.find((p) => p.clientId === 'c0')!.rank).to.equal(2);
    // ...while the client kept them on disk
    expect((await stat(join(dir, 'c0', 'personal.safetensors'))).size).to.be.greaterThan(0);

    // the global moved toward the clients; rank slots 4..7 only trained by the rank-8 client
    const g = coord.globalAdapter!;
    const a = g.tensors.get('base_model.model.model.layers.0.mlp.up_proj.lora_B.weight')!;
    expect(a.shape).to.deep.equal([160, 8]);
    // status + metrics over HTTP
    const st = await (await fetch(`${url}/status`)).json() as Record<string, unknown>;
    expect(st.completedRounds).to.equal(2);
    expect(st.phase).to.equal('done');
    expect((st.lastRound as { contributors: number }).contributors).to.equal(3);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).to.match(/fedlora_round_bytes_up\{client="c1",round="2"\} \d+/);
    expect(metrics).to.match(/fedlora_full_model_bytes 609640/);
    // checkpoint + export are PEFT adapters
    const saved = JSON.parse(await readFile(join(state, 'state.json'), 'utf8')) as { completedRounds: number; checkpoint: string };
    expect(saved.completedRounds).to.equal(2);
    const ck = await loadPeftAdapter(join(state, saved.checkpoint));
    expect(ck.tensors.size).to.equal(g.tensors.size);
    const ex = await loadPeftAdapter(join(dir, 'export'));
    expect([...ex.tensors.get('base_model.model.model.layers.0.mlp.up_proj.lora_B.weight')!.data]).to.deep.equal([...a.data]);
    // a client arriving after the last round is told the session is over instead of waiting forever
    const late = r.client(new Client({ coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, 'late'), maxRank: 4, clientId: 'late', trainerFactory: async () => trainers[0]! }));
    expect(await late.run()).to.deep.equal({ completedRounds: 2, roundsTrained: 0 });
    await coord.close();

    // restart with the same state and more rounds: resumes at round 3
    const coord2 = r.coordinator(new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: state, rounds: 3, clientsPerRound: 2, minClients: 2, maxRank: 8, strategy: 'rank-aware', localSteps: 2, joinWaitMs: 100 }));
    const url2 = await coord2.serve(0);
    expect(coord2.completedRounds).to.equal(2);
    const again = [1, 2].map((i) => r.client(new Client({ coordinatorUrl: url2, dataFile: 'x', stateDir: join(dir, `c${i}`), maxRank: 4, clientId: `c${i}`, trainerFactory: async () => trainers[i]! })));
    const r2 = await Promise.all([coord2.done, ...again.map((c) => c.run())]);
    expect(r2[0]).to.deep.equal({ completedRounds: 3 });
    expect(coord2.history.at(-1)!.round).to.equal(3);
  });
});
