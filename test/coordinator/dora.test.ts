/**
 * A federated DoRA run over real sockets with secure aggregation: real local training (the client
 * trainer on the llama-tiny fixture), the magnitude vectors in the masked flat layout, averaged by
 * example count over the clients that share them, and exported as a PEFT DoRA adapter.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { createTrainer } from '../../client/trainer.js';
import { ByteTokenizer } from '../../shared/model/tokenizer.js';
import { decode } from '../../shared/codec/index.js';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { loadCausalLM } from '../../shared/model/causal-lm.js';
import { loadSafetensors } from '../../shared/model/safetensors.js';
import { adapterModules, loraMName, parseMagnitudeName } from '../../shared/lora/adapter.js';
import { makeLayout } from '../../shared/aggregation/index.js';
import { quantErrorBound } from '../../shared/crypto/index.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, contributionLog } from './helpers.js';

const SEED = 5;

function examples(n: number, offset: number): { prompt: string; completion: string }[] {
  return Array.from({ length: n }, (_, i) => ({ prompt: `message ${i + offset}: win cash now ${i % 3}`, completion: (i + offset) % 2 ? ' spam' : ' ham' }));
}

describe('DoRA federation over the wire', function () {
  this.timeout(60_000);
  let dir: string;
  before(() => { setLogLevel((process.env.DORA_LOG as 'info') ?? 'error'); console.log(`      seed ${SEED}`); });
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-dora-fed-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  const run = async (personal: string[][], rounds: number) => {
    const coord = new Coordinator({
      allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), exportDir: join(dir, 'export'), rounds, clientsPerRound: 2, minClients: 2,
      maxRank: 4, strategy: 'rank-aware', localSteps: 2, lr: 5e-3, batchSize: 2, joinWaitMs: 50, seed: SEED, dora: true, targetModules: ['q_proj', 'v_proj'],
    });
    const url = await coord.serve(0);
    const init = coord.globalAdapter!;
    const seen = contributionLog();
    const uploads: Uint8Array[] = [];
    const clients = [2, 4].map((rank, i) => new Client({
      coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `c${i}`), maxRank: rank, clientId: `c${i}`, personal: personal[i] ?? [], backend: 'cpu',
      // personal tensors that never leave the client ('exclusive'; the default 'finetune' mode shares them too)
      ...(personal[i]?.length ? ({ personalMode: 'exclusive' } as Record<string, unknown>) : {}),
      trainerFactory: (f) => createTrainer({ modelDir: f.modelDir, examples: examples(6 + 4 * i, 10 * i), backend: 'cpu', tokenizer: new ByteTokenizer(), seed: SEED + i, evalFraction: 0.25, maxSeqLen: 48 }),
      observe: { ...seen.observer(i), upload: (b) => uploads.push(b) },
    }));
    await Promise.all([coord.done, ...clients.map((c) => c.run())]);
    const final = coord.globalAdapter!;
    await coord.close();
    return { init, final, seen, uploads };
  };

  /** Magnitude entries of client i's (weighted) contribution, by tensor name. */
  const magnitudes = (d: ReturnType<ReturnType<typeof contributionLog>['of']>): Map<string, Float32Array> => {
    const out = new Map<string, Float32Array>();
    for (const e of makeLayout(d.layout).entries) if (parseMagnitudeName(e.name)) out.set(e.name, d.contribution.slice(e.offset, e.offset + e.size));
    return out;
  };

  it('secure aggregation averages the magnitudes by example count; the export is a PEFT DoRA adapter', async () => {
    const { init, final, seen, uploads } = await run([], 1);
    expect(init.config.useDora).to.equal(true);
    const mods = adapterModules(init);
    expect(mods.length).to.equal(4);
    for (const u of uploads) expect((decode(u) as { kind: string }).kind).to.equal('masked');
    const d0 = seen.of(0), d1 = seen.of(1);
    const m0 = magnitudes(d0), m1 = magnitudes(d1);
    expect(m0.size).to.equal(mods.length);
    const q = d0.quant!;
    const tol = quantErrorBound(q, 2) / Math.min(d0.weight, d1.weight) + 1e-6;
    let moved = 0;
    for (const m of mods) {
      const k = loraMName(m);
      const want = m0.get(k)!.map((x, i) => (x + m1.get(k)![i]!) / (d0.weight + d1.weight));
      const got = final.tensors.get(k)!.data;
      for (let i = 0; i < got.length; i++) {
        expect(Math.abs(got[i]! - want[i]!), `${k}[${i}]`).to.be.below(tol);
        moved = Math.max(moved, Math.abs(got[i]! - init.tensors.get(k)!.data[i]!));
      }
    }
    expect(moved, 'magnitudes trained').to.be.above(1e-5);
    const exported = await loadPeftAdapter(join(dir, 'export'));
    expect(exported.config.useDora).to.equal(true);
    const lm = await loadCausalLM(FIXTURE, { backend: 'cpu' });
    try {
      lm.validateAdapter(exported);
      const ids = [[1, 40, 80, 120, 200, 7]];
      const a = await lm.logits(ids, { adapter: exported }), b = await lm.logits(ids, { adapter: exported, merged: true });
      let d = 0;
      for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
      expect(d).to.be.below(1e-4);
    } finally {
      lm.dispose();
    }
  });

  it('a client may keep its magnitudes personal by glob: they stay on disk and the global follows the other client', async () => {
    const { final, seen } = await run([['*lora_magnitude_vector']], 1);
    const d0 = seen.of(0), d1 = seen.of(1);
    // client 0's upload has zeros where its magnitudes would be; the global magnitude is client 1's alone
    for (const v of magnitudes(d0).values()) expect(v.every((x) => x === 0)).to.equal(true);
    const tol = quantErrorBound(d1.quant!, 2) / d1.weight + 1e-6;
    for (const [k, v] of magnitudes(d1)) {
      const got = final.tensors.get(k)!.data;
      for (let i = 0; i < got.length; i++) expect(Math.abs(got[i]! - v[i]! / d1.weight), k).to.be.below(tol);
    }
    const st = await loadSafetensors(join(dir, 'c0', 'personal.safetensors'));
    const kept = [...st.entries.keys()];
    expect(kept.length).to.equal(4);
    expect(kept.every((k) => parseMagnitudeName(k) !== null)).to.equal(true);
  });

  it('refuses --dora with a magnitude above the upload clip, and a resume that switches DoRA on or off', async () => {
    const bad = new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'x'), dora: true, secAgg: { clip: 0.01 } });
    let msg = '';
    try { await bad.serve(0); } catch (e) { msg = (e as Error).message; } finally { await bad.close(); }
    expect(msg).to.match(/magnitude vector entry is .* above the upload clip 0\.01/);
    const xs = new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'xs'), dora: true, strategy: 'lora-xs' });
    msg = '';
    try { await xs.serve(0); } catch (e) { msg = (e as Error).message; } finally { await xs.close(); }
    expect(msg).to.match(/--dora .*lora-xs/);
    await run([], 1);
    const resumed = new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 2, targetModules: ['q_proj', 'v_proj'], maxRank: 4, seed: SEED });
    msg = '';
    try { await resumed.serve(0); } catch (e) { msg = (e as Error).message; } finally { await resumed.close(); }
    expect(msg).to.match(/the state holds a DoRA run, this start has no --dora[\s\S]*--dora/);
  });
});

