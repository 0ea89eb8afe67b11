/**
 * A server optimiser's state inside the round engine: it goes out with every checkpoint command,
 * survives the real checkpoint store (safetensors + state.json) bit for bit, is what the engine's
 * next round continues from, and is rolled back when a checkpoint fails.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { aggregateRound, getStrategy, type SavedServerState, type ServerOptConfig, type StrategyServer } from '../../shared/aggregation/index.js';
import { loadState, saveState } from '../../coordinator/store/checkpoint-store.js';
import type { Command } from '../../coordinator/engine/round-engine.js';
import { EngineHarness, MAX_RANK, captureLogs, clippedSum, contributionOf, maxDiff } from './engine-harness.js';

const OPT: ServerOptConfig = { name: 'fedadam', lr: 0.05 };

function bitsEqual(a: SavedServerState, b: SavedServerState): boolean {
  if (JSON.stringify(a.meta) !== JSON.stringify(b.meta) || a.tensors.size !== b.tensors.size) return false;
  for (const [k, t] of a.tensors) {
    const u = b.tensors.get(k);
    if (!u || t.shape.join() !== u.shape.join()) return false;
    if (!Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).equals(Buffer.from(u.data.buffer, u.data.byteOffset, u.data.byteLength))) return false;
  }
  return true;
}

function checkpoints(h: EngineHarness): Extract<Command, { type: 'checkpoint' }>[] {
  return h.commands.filter((c): c is Extract<Command, { type: 'checkpoint' }> => c.type === 'checkpoint');
}

describe('round engine with a server optimiser: checkpoint and resume', function () {
  let logs: ReturnType<typeof captureLogs>;
  let dir: string;
  before(() => { logs = captureLogs(); });
  after(() => logs.restore());
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-serveropt-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  const fresh = (): StrategyServer => getStrategy('rank-aware').createServer({ maxRank: MAX_RANK, seed: 7, optimizer: OPT });

  it('the state of round 1 goes through saveState/loadState bit for bit, and a server restored from it reproduces the engine\'s round 2', async () => {
    let server!: StrategyServer;
    const h = await EngineHarness.create({
      participants: [{ rank: 4, examples: 10 }, { rank: 2, examples: 20 }, { rank: 3, examples: 30 }],
      config: { rounds: 2, secure: false, refactor: true },
      server: () => (server = fresh()),
    });
    h.joinAll();
    if (h.engine.phase === 'waiting') for (const id of h.parts.keys()) h.ready(id);
    h.runToEnd();
    expect(h.records.map((r) => r.status)).to.deep.equal(['completed', 'completed']);
    const cps = checkpoints(h);
    expect(cps.map((c) => c.round)).to.deep.equal([1, 2]);
    const s1 = cps[0]!.strategyState;
    expect((s1.meta as { serverOptimizer: { steps: number } }).serverOptimizer.steps).to.equal(1);
    expect([...s1.tensors.keys()].some((k) => k.startsWith('server_opt.v:'))).to.equal(true);
    expect(bitsEqual(cps[1]!.strategyState, server.serialize())).to.equal(true);

    // through the real store: state.json + strategy safetensors in the checkpoint folder
    await saveState(dir, {
      modelId: 'sha256:test', strategy: 'rank-aware', maxRank: MAX_RANK, seed: 7, loraAlpha: 8, targetModules: ['q_proj', 'v_proj'],
      completedRounds: 1, strategyState: s1, history: [h.records[0]!],
    }, cps[0]!.adapter);
    const loaded = (await loadState(dir))!;
    const restored = fresh();
    restored.restore(loaded.state.strategyState);
    expect(bitsEqual(restored.serialize(), s1)).to.equal(true);

    // round 2 by the book from the restored state and the stored adapter equals what the engine did
    const r2 = h.records[1]!;
    const contributors = r2.participants.filter((p) => p.status === 'uploaded').map((p) => ({ id: p.clientId, rank: p.rank, weight: p.weight }));
    const input = () => ({
      sum: Float32Array.from(clippedSum(contributors.map((x) => ({ x: contributionOf(x.id, 2, x.rank, h.layout, h.config.clip), weight: x.weight })), h.config.clip, h.layout.size)),
      layout: h.layout, previous: loaded.adapter, maxRank: MAX_RANK, refactor: true, keepUnrotated: () => false,
      contributors: contributors.map((x) => ({ rank: x.rank, weight: x.weight, personal: () => false })),
    });
    const engineNext = h.flat(h.engine.global);
    const viaRestored = h.flat(aggregateRound(restored, input()));
    const viaFresh = h.flat(aggregateRound(fresh(), input()));
    const d = maxDiff(viaRestored, engineNext), dFresh = maxDiff(viaFresh, engineNext);
    console.log(`      round 2: restored server vs engine ${d.toExponential(2)}, fresh server vs engine ${dFresh.toExponential(2)}`);
    expect(d).to.be.below(1e-5);
    expect(dFresh, 'without the saved moments the step lands elsewhere').to.be.above(1e-3);
    // and the moments after round 2 agree too (same sum up to float32 summation order)
    const a = restored.serialize(), b = server.serialize();
    for (const [k, t] of b.tensors) expect(maxDiff(a.tensors.get(k)!.data, t.data), k).to.be.below(1e-5);
  });

  it('a failed checkpoint rolls the optimiser back: the retried round steps once from the fresh state', async () => {
    let server!: StrategyServer;
    const h = await EngineHarness.create({
      participants: [{ rank: 4, examples: 10 }, { rank: 2, examples: 20 }],
      config: { secure: false, refactor: true }, autoCheckpoint: false,
      server: () => (server = fresh()),
    });
    const before = server.serialize();
    h.joinAll();
    expect(h.engine.phase).to.equal('aggregating');
    const first = checkpoints(h)[0]!.strategyState;
    expect((first.meta as { serverOptimizer: { steps: number } }).serverOptimizer.steps).to.equal(1);
    h.call(() => h.engine.checkpointFailed(1, new Error('disk full')));
    // the retry started at once; its checkpoint went out after a single step from the fresh state
    const cps = checkpoints(h);
    expect(cps).to.have.length(2);
    expect(bitsEqual(cps[1]!.strategyState, first), 'the retry repeats the same step from the rolled-back state').to.equal(true);
    h.call(() => h.engine.checkpointed(1));
    expect(h.records.map((r) => r.status)).to.deep.equal(['failed', 'completed']);
    expect(bitsEqual(server.serialize(), first)).to.equal(true);
    expect(bitsEqual(before, first)).to.equal(false);
  });
});
