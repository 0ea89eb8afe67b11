/**
 * A federated LoRA-XS run over real sockets with secure aggregation: the coordinator computes the
 * frozen factors from the llama-tiny checkpoint and ships them in the signed global adapter; three
 * clients with real local training (ranks 2, 4, 4) upload masked vectors that hold only the r×r
 * cores (one keeps its layer-1 cores personal); the unmasked result is the rank-aware average of the
 * shared cores (within the fixed-point bound),
 * the factors never change, and the export is a plain PEFT LoRA adapter (B = U_r Σ_r R, A = V_rᵀ).
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { promisify } from 'node:util';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { createTrainer } from '../../client/trainer.js';
import { ByteTokenizer } from '../../shared/model/tokenizer.js';
import { decode } from '../../shared/codec/index.js';
import { getStrategy, makeLayout, sharedLayout, unflatten } from '../../shared/aggregation/index.js';
import { quantErrorBound } from '../../shared/crypto/index.js';
import { loraAName, loraBName, parseXsName, xsRName } from '../../shared/lora/adapter.js';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { xsToLora } from '../../shared/lora/xs.js';
import { xsInitFromCheckpoint } from '../../shared/lora/xs-checkpoint.js';
import { readModelInfo } from '../../shared/model/model-info.js';
import { loadSafetensors, readFloatTensor } from '../../shared/model/safetensors.js';
import { loadCausalLM } from '../../shared/model/causal-lm.js';
import { loadState } from '../../coordinator/state-store.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, contributionLog } from '../coordinator/helpers.js';

const SEED = 11;
const TARGETS = ['q_proj', 'v_proj', 'down_proj'];

function examples(n: number, offset: number): { prompt: string; completion: string }[] {
  return Array.from({ length: n }, (_, i) => ({ prompt: `message ${i + offset}: claim your prize ${i % 3}`, completion: (i + offset) % 2 ? ' spam' : ' ham' }));
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

describe('LoRA-XS federation over the wire (secure aggregation)', function () {
  this.timeout(90_000);
  let dir: string;
  before(() => { setLogLevel('error'); console.log(`      seed ${SEED}`); });
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-xs-fed-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  it('uploads only masked cores; the global cores are their rank-aware average; factors stay; the export is plain PEFT LoRA', async () => {
    const ranks = [2, 4, 4];
    const coord = new Coordinator({
      allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), exportDir: join(dir, 'export'), rounds: 1, clientsPerRound: 3, minClients: 3,
      maxRank: 4, strategy: 'lora-xs', localSteps: 3, lr: 1e-2, batchSize: 2, joinWaitMs: 50, seed: SEED, targetModules: TARGETS,
    });
    const url = await coord.serve(0);
    const init = coord.globalAdapter!;
    // the distributed factors are exactly the checkpoint's truncated SVD, recomputed here independently
    const info = await readModelInfo(FIXTURE);
    const mine = await xsInitFromCheckpoint(FIXTURE, 4, 16, { targetModules: TARGETS, fanInFanOut: info.fanInFanOut, useRslora: false, taskType: 'CAUSAL_LM' });
    expect([...init.tensors.keys()].sort()).to.deep.equal([...mine.tensors.keys()].sort());
    for (const [k, t] of mine.tensors) expect(sameBits(init.tensors.get(k)!.data, t.data), k).to.equal(true);
    const modules = [...init.tensors.keys()].filter((k) => parseXsName(k)).length;
    expect(modules).to.equal(6);

    const seen = contributionLog();
    const uploads: Uint8Array[] = [];
    // client 1 keeps its layer-1 cores to itself (exclusive personalization): zeros in its upload, kept on disk
    const personal = (i: number) => (i === 1 ? { personal: ['*.layers.1.*'], personalMode: 'exclusive' as const } : {});
    const isPersonal = (i: number, name: string) => i === 1 && name.includes('.layers.1.');
    const clients = ranks.map((rank, i) => new Client({
      coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `c${i}`), maxRank: rank, clientId: `c${i}`, backend: 'cpu', ...personal(i),
      trainerFactory: (f) => createTrainer({ modelDir: f.modelDir, examples: examples(6 + 4 * i, 10 * i), backend: 'cpu', tokenizer: new ByteTokenizer(), seed: SEED + i, evalFraction: 0.25, maxSeqLen: 48 }),
      observe: { ...seen.observer(i), upload: (b) => uploads.push(b) },
    }));
    await Promise.all([coord.done, ...clients.map((c) => c.run())]);
    const final = coord.globalAdapter!;
    const record = coord.history.at(-1)!;
    await coord.close();

    expect(record.status).to.equal('completed');
    expect(uploads).to.have.length(3);
    for (const u of uploads) expect((decode(u) as { kind: string }).kind).to.equal('masked');
    const dumps = [0, 1, 2].map((i) => seen.of(i));
    const layout = makeLayout(dumps[0]!.layout);
    // the layout is the cores and nothing else: r² values per module
    expect(layout.entries.every((e) => parseXsName(e.name) !== null)).to.equal(true);
    expect(layout.size).to.equal(modules * 16);
    const loraSize = sharedLayout(getStrategy('fedit'), init).size;
    console.log(`      upload layout: ${layout.size} values (LoRA A+B at r=4 would be ${loraSize}); masked uploads ${uploads.map((u) => u.byteLength).join(', ')} bytes`);
    // the rank-2 client's contribution is zero outside its leading 2×2 blocks
    for (const e of layout.entries) for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) {
      if (Math.max(i, j) >= 2) expect(dumps[0]!.contribution[e.offset + i * 4 + j], `${e.name}[${i},${j}]`).to.equal(0);
    }
    for (const e of layout.entries) {
      const held = dumps[1]!.contribution.subarray(e.offset, e.offset + e.size);
      if (isPersonal(1, e.name)) expect(held.every((x) => x === 0), `${e.name} personal to c1`).to.equal(true);
    }
    // kept on disk: its layer-1 cores (the glob also matches the frozen factors there, which stay the global's)
    const kept = await loadSafetensors(join(dir, 'c1', 'personal.safetensors'));
    expect([...kept.entries.keys()].filter((k) => parseXsName(k)).sort()).to.deep.equal(layout.entries.map((e) => e.name).filter((n) => isPersonal(1, n)).sort());
    for (const k of kept.entries.keys()) if (!parseXsName(k)) expect(sameBits(readFloatTensor(kept, k).data, init.tensors.get(k)!.data), k).to.equal(true);
    // unmasked result = rank-aware average of the plaintext contributions of the clients sharing each core,
    // within the fixed-point bound
    const want = new Map<string, Float32Array>();
    for (const e of layout.entries) {
      const sharing = [0, 1, 2].filter((i) => !isPersonal(i, e.name)).map((i) => dumps[i]!);
      const acc = new Float64Array(layout.size);
      for (const d of sharing) for (let i = 0; i < acc.length; i++) acc[i] = acc[i]! + d.contribution[i]!;
      const out = getStrategy('lora-xs').finalize(unflatten(Float32Array.from(acc), layout), sharing.map((d) => ({ rank: d.rank, weight: d.weight })), init, 4);
      want.set(e.name, out.tensors.get(e.name)!.data);
    }
    const tol = quantErrorBound(dumps[0]!.quant!, 3) / Math.min(...dumps.map((d) => d.weight)) + 1e-6;
    let moved = 0;
    for (const [k, t] of final.tensors) {
      if (parseXsName(k)) {
        const w = want.get(k)!;
        for (let i = 0; i < t.data.length; i++) expect(Math.abs(t.data[i]! - w[i]!), `${k}[${i}]`).to.be.below(tol);
        moved = Math.max(moved, ...t.data.map(Math.abs));
      } else {
        expect(sameBits(t.data, init.tensors.get(k)!.data), `${k} frozen`).to.equal(true);
      }
    }
    expect(moved, 'cores trained').to.be.greaterThan(1e-4);
    // every client evaluated the global and its trained adapter (the folded plain-LoRA form)
    for (const p of record.participants) {
      expect(p.global?.loss, `${p.clientId} global eval`).to.be.a('number');
      expect(p.personal?.loss, `${p.clientId} personal eval`).to.be.a('number');
    }

    const exported = await loadPeftAdapter(join(dir, 'export'));
    const folded = xsToLora(final);
    expect(exported.config).to.include({ r: 4, loraAlpha: 16, useRslora: false });
    expect([...exported.tensors.keys()].sort()).to.deep.equal([...folded.tensors.keys()].sort());
    for (const m of [...final.tensors.keys()].map((k) => parseXsName(k)?.module).filter((x): x is string => !!x)) {
      expect(exported.tensors.has(xsRName(m))).to.equal(false);
      expect(sameBits(exported.tensors.get(loraAName(m))!.data, init.tensors.get(loraAName(m))!.data), `${m} A = Vᵀ`).to.equal(true);
      expect(sameBits(exported.tensors.get(loraBName(m))!.data, folded.tensors.get(loraBName(m))!.data), `${m} B = UΣR`).to.equal(true);
    }
  });

  it('a checkpoint keeps the cores: a restarted coordinator resumes the run, and `fedlora export` writes the plain LoRA it equals', async () => {
    const state = join(dir, 'coord');
    const start = (rounds: number) => new Coordinator({
      allowAnyClient: true, modelDir: FIXTURE, stateDir: state, rounds, clientsPerRound: 2, minClients: 2,
      maxRank: 4, strategy: 'lora-xs', localSteps: 2, lr: 1e-2, batchSize: 2, joinWaitMs: 50, seed: SEED, targetModules: TARGETS,
    });
    const clientsFor = (url: string, tag: string) => [4, 3].map((rank, i) => new Client({
      coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `${tag}${i}`), maxRank: rank, clientId: `c${i}`, backend: 'cpu', evaluate: false,
      trainerFactory: (f) => createTrainer({ modelDir: f.modelDir, examples: examples(8, 20 * i), backend: 'cpu', tokenizer: new ByteTokenizer(), seed: SEED + i, evalFraction: 0.25, maxSeqLen: 48 }),
    }));
    const first = start(1);
    const url1 = await first.serve(0);
    const init = first.globalAdapter!;
    await Promise.all([first.done, ...clientsFor(url1, 'a').map((c) => c.run())]);
    const after1 = first.globalAdapter!;
    await first.close();
    const saved = await loadState(state);
    expect(saved!.state.completedRounds).to.equal(1);
    for (const [k, t] of after1.tensors) expect(sameBits(saved!.adapter.tensors.get(k)!.data, t.data), `checkpoint ${k}`).to.equal(true);

    const second = start(2);
    const url2 = await second.serve(0);
    expect(second.completedRounds).to.equal(1);
    await Promise.all([second.done, ...clientsFor(url2, 'b').map((c) => c.run())]);
    const after2 = second.globalAdapter!;
    await second.close();
    let moved = 0;
    for (const [k, t] of after2.tensors) {
      if (parseXsName(k)) moved = Math.max(moved, ...t.data.map((x, i) => Math.abs(x - after1.tensors.get(k)!.data[i]!)));
      else expect(sameBits(t.data, init.tensors.get(k)!.data), `${k} frozen across the restart`).to.equal(true);
    }
    expect(moved, 'round 2 trained the cores').to.be.greaterThan(1e-5);

    const out = join(dir, 'peft');
    const { stderr } = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'bin/fedlora.ts', 'export', '--state', state, '--out', out], { env: { ...process.env, FEDLORA_LOG: 'warn' } });
    expect(stderr).to.match(/after round 2 \(lora-xs, r=4\)/);
    const exported = await loadPeftAdapter(out);
    expect([...exported.tensors.keys()].some((k) => k.includes('lora_R'))).to.equal(false);
    const lm = await loadCausalLM(FIXTURE, { backend: 'cpu' });
    try {
      const ids = [[1, 40, 80, 120, 200, 7]];
      const a = await lm.logits(ids, { adapter: exported }), b = await lm.logits(ids, { adapter: xsToLora(after2) });
      expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).to.equal(true);
    } finally {
      lm.dispose();
    }
  });

  it('refuses --dora and a server optimiser with lora-xs, before serving', async () => {
    for (const extra of [{ dora: true }, { serverOpt: { name: 'fedadam' as const } }]) {
      let msg = '';
      let c: Coordinator | undefined;
      try {
        c = new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'refused'), strategy: 'lora-xs', maxRank: 4, ...extra });
        await c.serve(0);
      } catch (e) { msg = (e as Error).message; } finally { await c?.close(); }
      expect(msg, JSON.stringify(extra)).to.match(extra.dora ? /--dora cannot be combined with --strategy lora-xs/ : /lora-xs does not take a server optimiser/);
    }
  });
});
