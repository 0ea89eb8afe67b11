/**
 * A stateful strategy survives `kill -9` of the coordinator: fedavgm (server momentum) resumed from
 * --state after a SIGKILL right after round 2's checkpoint gives the bit-identical global adapter of
 * an uninterrupted 4-round run, and the momentum it restored actually mattered.
 *
 * Design (why it looks like this):
 * - The coordinator is the real CLI (`node --import tsx bin/fedlora.ts coordinator …`) in a child
 *   process in all runs, so the kill is a real SIGKILL of the process that owns the state folder and
 *   the resume is the real start-up path (loadState → checkResumable → server.restore).
 * - The 3 clients run in this process: the real `Client` (socket.io, join, model download, secure
 *   aggregation, reconnect with backoff) with the deterministic stand-in trainer `pullTrainer` from
 *   test/coordinator/helpers.ts. The real LocalTrainer would need ~10 s per round on the wasm backend
 *   (12 rounds in all here, well over the time budget), and in-process clients let the test hold
 *   round 3's training until the coordinator is dead (see `gate`), so the kill point is exact
 *   rather than a race between the test's poll and a fast round 3.
 * - Secure aggregation stays on (the default). It does not cost determinism: each client encodes
 *   round(w·clip(x)·2^f) deterministically (no stochastic rounding), the pairwise masks cancel
 *   exactly in the mod-2^32 sum, and the quantisation parameters depend only on the participants'
 *   public weights and count, which are the same in every run. The unmasked sum, and so the
 *   result, is therefore bit-identical across runs; fresh mask randomness per run changes nothing.
 * - --min-clients = --clients-per-round = 3: every round has all three clients, so sampling and
 *   weights cannot differ between runs (a round may not start with only the first reconnected one).
 *
 * Runs: A uninterrupted; B killed after round 2's checkpoint, restarted with the same --state;
 * C = B's state at the kill with the momentum wiped (what a coordinator that lost or ignored the
 * strategy state would resume from). A == B bit for bit (adapter and final momentum); C ≠ A.
 */
import { expect } from 'chai';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from '../../client/index.js';
import type { LocalTrainer } from '../../client/trainer.js';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { loadSafetensors, readFloatTensor } from '../../shared/model/safetensors.js';
import type { LoraAdapter } from '../../shared/lora/adapter.js';
import { checkpointName } from '../../coordinator/store/checkpoint-store.js';
import { FIXTURE, maxDiff, pullTrainer } from '../coordinator/helpers.js';
import { fedlora, freePort, waitFor, type Proc } from './helpers.js';

const ROUNDS = 4;
const KILL_AFTER = 2;
/** client i: rank, example count (its round weight), the value its stand-in training pulls toward */
const CLIENTS = [{ rank: 2, examples: 10, target: 0.3 }, { rank: 4, examples: 20, target: -0.2 }, { rank: 8, examples: 30, target: 0.1 }];

interface Hist { round: number; roundId: string; attempt: number; status: string; contributors: number; secure?: unknown }
interface SavedState { completedRounds: number; checkpoint: string; strategyState: { meta: { beta: number; eta: number; steps: number }; tensors: string[] }; history: Hist[] }

const readState = async (stateDir: string): Promise<SavedState> => JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as SavedState;
const completedOnDisk = async (stateDir: string): Promise<number> => (await readState(stateDir).catch(() => null))?.completedRounds ?? 0;

/** Every tensor bit for bit (Uint32 views: −0 ≠ +0), same names, shapes and LoRA config. */
function expectBitIdentical(a: LoraAdapter, b: LoraAdapter, what: string): void {
  expect(b.config, `${what}: config`).to.deep.equal(a.config);
  expect([...b.tensors.keys()].sort(), `${what}: tensor names`).to.deep.equal([...a.tensors.keys()].sort());
  for (const [k, t] of a.tensors) {
    const u = b.tensors.get(k)!;
    expect(u.shape, `${what}: ${k} shape`).to.deep.equal(t.shape);
    const x = new Uint32Array(t.data.buffer, t.data.byteOffset, t.data.length);
    const y = new Uint32Array(u.data.buffer, u.data.byteOffset, u.data.length);
    const i = x.findIndex((v, j) => v !== y[j]);
    expect(i, `${what}: ${k} differs first at element ${i} (${t.data[i]} vs ${u.data[i]})`).to.equal(-1);
  }
}

async function momentum(checkpointDir: string): Promise<Map<string, Float32Array>> {
  const st = await loadSafetensors(join(checkpointDir, 'strategy-state.safetensors'));
  return new Map([...st.entries.keys()].map((n) => [n, readFloatTensor(st, n).data]));
}

describe('e2e: fedavgm resumed after kill -9 of the coordinator equals an uninterrupted run', function () {
  this.timeout(90_000);
  let dir: string;
  const procs: Proc[] = [];
  const clients: Client[] = [];
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-stateful-')); });
  afterEach(async function () {
    if (this.currentTest?.state === 'failed') for (const p of procs) process.stderr.write(`----- coordinator log -----\n${p.out()}\n`);
    for (const p of procs.splice(0)) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await Promise.allSettled(clients.splice(0).map((c) => c.stop()));
    await rm(dir, { recursive: true, force: true });
  });

  const coordinator = (port: number, state: string, exportDir: string): Proc => {
    const p = fedlora(['coordinator', '--model', FIXTURE, '--state', state, '--port', String(port), '--allow-any-client',
      '--strategy', 'fedavgm', '--rounds', String(ROUNDS), '--clients-per-round', '3', '--min-clients', '3', '--max-rank', '8',
      '--local-steps', '1', '--seed', '7', '--join-wait', '200ms', '--round-timeout', '30s', '--export', exportDir]);
    procs.push(p);
    return p;
  };

  /**
   * The three clients of one run. `hold` runs before every local training step: run B uses it to
   * keep round 3 from training (so it cannot complete) until the first coordinator is dead.
   */
  const startClients = async (port: number, run: string, hold: () => Promise<void> = async () => undefined) => {
    const cs = await Promise.all(CLIENTS.map(async (c, i) => {
      const base = await pullTrainer(c.target, c.examples);
      const trainer: LocalTrainer = { ...base, train: async (start, o) => { await hold(); return base.train(start, o); } };
      return new Client({
        coordinatorUrl: `http://127.0.0.1:${port}`, dataFile: 'unused.jsonl', stateDir: join(dir, `${run}-c${i}`), maxRank: c.rank, clientId: `c${i}`,
        reconnectInitialMs: 100, reconnectMaxMs: 400, trainerFactory: async () => trainer,
      });
    }));
    clients.push(...cs);
    return cs.map((c) => c.run());
  };

  /** One coordinator lifetime from start to a clean exit, with its clients; returns the exported adapter. */
  const runToEnd = async (coord: Proc, runs: Promise<{ completedRounds: number }>[], exportDir: string): Promise<LoraAdapter> => {
    expect(await coord.exited, coord.out()).to.equal(0);
    expect((await Promise.all(runs)).map((r) => r.completedRounds)).to.deep.equal([ROUNDS, ROUNDS, ROUNDS]);
    return loadPeftAdapter(exportDir);
  };

  const expectAllRoundsSecureAndFull = (s: SavedState) => {
    expect(s.completedRounds).to.equal(ROUNDS);
    const done = s.history.filter((h) => h.status === 'completed');
    expect(done.map((h) => h.round)).to.deep.equal([1, 2, 3, 4]);
    expect(done.every((h) => h.contributors === 3 && h.secure !== undefined), JSON.stringify(done)).to.equal(true);
    expect(s.strategyState.meta).to.deep.equal({ beta: 0.5, eta: 1, steps: ROUNDS });
  };

  it('4 rounds, secure aggregation, 3 clients (ranks 2/4/8): A (uninterrupted) ≡ B (kill -9 after round 2, resumed) bit for bit; C (momentum wiped at the kill) differs', async () => {
    const t0 = Date.now();
    // ---- run A: uninterrupted
    const stateA = join(dir, 'A'), exportA = join(dir, 'A-export');
    const portA = await freePort();
    const coordA = coordinator(portA, stateA, exportA);
    const adapterA = await runToEnd(coordA, await startClients(portA, 'A'), exportA);
    const finalA = await readState(stateA);
    expectAllRoundsSecureAndFull(finalA);
    const tA = Date.now();

    // ---- run B: SIGKILL once round 2's checkpoint is on disk, restart with the same --state
    const stateB = join(dir, 'B'), exportB = join(dir, 'B-export');
    const portB = await freePort();
    let killed = false;
    let releaseGate!: () => void;
    const gate = new Promise<void>((r) => { releaseGate = r; });
    // a training step that begins while the first coordinator lives and round 2 is checkpointed is round 3's: hold it
    let held = 0;
    const hold = async () => { if (!killed && (await completedOnDisk(stateB)) >= KILL_AFTER) { held++; await gate; } };
    let coordB = coordinator(portB, stateB, exportB);
    const runsB = await startClients(portB, 'B', hold);
    // "round 2 completed" is logged only after the engine heard that saveState (adapter, momentum, state.json) finished
    await waitFor('round 2 checkpointed', () => new RegExp(`round ${KILL_AFTER} completed`).test(coordB.out()), 40_000, 10);
    coordB.child.kill('SIGKILL');
    await coordB.exited;
    killed = true;
    expect(coordB.child.signalCode).to.equal('SIGKILL');
    releaseGate();
    const mid = await readState(stateB);
    expect(mid.completedRounds, 'state at the kill').to.equal(KILL_AFTER);
    expect(mid.checkpoint).to.equal(checkpointName(KILL_AFTER));
    expect(mid.strategyState.meta).to.deep.equal({ beta: 0.5, eta: 1, steps: KILL_AFTER });
    expect(mid.strategyState.tensors.length).to.be.greaterThan(0);
    const m2 = await momentum(join(stateB, mid.checkpoint));
    const atKill = await loadPeftAdapter(join(stateB, mid.checkpoint));
    expect([...m2.values()].some((d) => d.some((x) => x !== 0)), 'momentum after round 2 is non-zero').to.equal(true);

    // C's starting point: this very state with the momentum wiped (kept meta β/η, steps 0, no tensors)
    const stateC = join(dir, 'C');
    await cp(stateB, stateC, { recursive: true });
    await rm(join(stateC, mid.checkpoint, 'strategy-state.safetensors'));
    await writeFile(join(stateC, 'state.json'), JSON.stringify({ ...mid, strategyState: { meta: { beta: 0.5, eta: 1, steps: 0 }, tensors: [] } }));

    coordB = coordinator(portB, stateB, exportB);
    const adapterB = await runToEnd(coordB, runsB, exportB);
    expect(coordB.out()).to.match(new RegExp(`resuming from .*: ${KILL_AFTER} round\\(s\\) completed`));
    // ---- the claim: bit-identical global adapter (then the server momentum, below)
    expectBitIdentical(adapterA, adapterB, 'export A vs B');
    const finalB = await readState(stateB);
    expectAllRoundsSecureAndFull(finalB);
    // attempt numbers continue across the restart (round ids stay unique), and no round needed a retry
    expect(finalB.history.map((h) => h.attempt)).to.deep.equal([1, 2, 3, 4]);
    expect(new Set(finalB.history.map((h) => h.roundId.split(':')[0])).size, 'two coordinator sessions').to.equal(2);
    const tB = Date.now();

    // the server momentum after round 4 is bit-identical too
    const [mA, mB] = await Promise.all([momentum(join(stateA, finalA.checkpoint)), momentum(join(stateB, finalB.checkpoint))]);
    expect([...mB.keys()]).to.deep.equal([...mA.keys()]);
    for (const [k, a] of mA) expect(Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(mB.get(k)!.buffer, mB.get(k)!.byteOffset, mB.get(k)!.byteLength)), `momentum ${k}`).to.equal(0);

    // ---- run C: resume from round 2 with empty momentum; fresh clients with the same trainers
    const exportC = join(dir, 'C-export');
    const portC = await freePort();
    const coordC = coordinator(portC, stateC, exportC);
    const adapterC = await runToEnd(coordC, await startClients(portC, 'C'), exportC);
    expect(coordC.out()).to.match(new RegExp(`resuming from .*: ${KILL_AFTER} round\\(s\\) completed`));
    expect((await readState(stateC)).strategyState.meta).to.deep.equal({ beta: 0.5, eta: 1, steps: ROUNDS - KILL_AFTER });
    const dAC = maxDiff(adapterA, adapterC);
    expect(dAC, 'momentum lost at the restart must change the result').to.be.greaterThan(1e-3);
    // and rounds 3–4 moved the adapter at all (a resume that trained nothing would not be a test)
    expect(maxDiff(adapterA, atKill)).to.be.greaterThan(1e-3);
    const tC = Date.now();
    process.stdout.write(`      timings: A ${((tA - t0) / 1000).toFixed(1)} s, B ${((tB - tA) / 1000).toFixed(1)} s, C ${((tC - tB) / 1000).toFixed(1)} s; max |A − C| = ${dAC.toExponential(3)}; round-3 trainings held until the kill: ${held}\n`);
  });
});
