import { expect } from 'chai';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  HISTORY_CAP, STATE_LIMITS, STRATEGY_TENSORS_FILE, checkResumable, checkpointName, loadState, saveState,
  type StateToSave,
} from '../../coordinator/store/checkpoint-store.js';
import { saveState as legacySaveState } from '../../coordinator/state-store.js';
import type { RoundRecord } from '../../coordinator/metrics.js';
import { ConfigError, StateError } from '../../shared/errors.js';
import { loraAName, loraBName, type LoraAdapter } from '../../shared/lora/adapter.js';
import { encodeSafetensors } from '../../shared/model/safetensors.js';
import type { TensorMap } from '../../shared/tensor.js';

const MODULE = 'model.layers.0.self_attn.q_proj';

function adapter(): LoraAdapter {
  const A = new Float32Array(2 * 4).map((_, i) => (i + 1) / 7);
  const B = new Float32Array(4 * 2).map((_, i) => -(i + 1) / 3);
  return {
    config: { r: 2, loraAlpha: 4, targetModules: ['q_proj'], fanInFanOut: false, useRslora: false, taskType: 'CAUSAL_LM', baseModelNameOrPath: null },
    tensors: new Map([[loraAName(MODULE), { shape: [2, 4], data: A }], [loraBName(MODULE), { shape: [4, 2], data: B }]]),
  };
}

function record(round: number, over: Partial<RoundRecord> = {}): RoundRecord {
  return {
    round, roundId: `s:${round}:0`, status: 'completed', startedAt: 1_700_000_000_000 + round, endedAt: 1_700_000_000_500 + round,
    contributors: 1,
    participants: [
      { clientId: 'c1', rank: 2, status: 'uploaded', weight: 10, bytesUp: 100, bytesDown: 200, trainLoss: 0.5, global: { loss: 1, accuracy: 0.5, examples: 4 }, personal: { loss: 0.9, accuracy: 0.6, f1: 0.4, examples: 4 } },
      { clientId: 'c2', rank: 1, status: 'timeout', weight: 0, bytesUp: 0, bytesDown: 200 },
    ],
    trainLoss: 0.5, globalEval: { loss: 1, accuracy: 0.5 }, personalEval: { loss: 0.9, accuracy: 0.6 },
    bytesUp: 100, bytesDown: 400, fullModelBytes: 10_000,
    ...over,
  };
}

/** Values whose bits a lossy path (f16, JSON, f64 text) would change. */
function serverTensors(): TensorMap {
  const m = new Float32Array([0, -0, 1 / 3, Math.PI, 3.4028234663852886e38, -1.401298464324817e-45, 1.1754943508222875e-38, 1e-30]);
  const v = new Float32Array(6).map((_, i) => Math.fround(Math.sqrt(i + 0.1)));
  return new Map([['momentum/' + loraAName(MODULE), { shape: [2, 4], data: m }], ['second-moment', { shape: [2, 3], data: v }]]);
}

function toSave(completedRounds = 3, over: Partial<StateToSave> = {}): StateToSave {
  return {
    modelId: 'sha256:abc', strategy: 'fedavgm', maxRank: 2, seed: 42, loraAlpha: 4, targetModules: ['q_proj'], completedRounds,
    strategyState: { meta: { beta: 0.9, steps: completedRounds, nested: [1, 'x', null, { ok: true }] }, tensors: serverTensors() },
    history: Array.from({ length: completedRounds }, (_, i) => record(i + 1)),
    ...over,
  };
}

function bits(d: Float32Array): Buffer { return Buffer.from(d.buffer, d.byteOffset, d.byteLength); }

async function expectStateError(p: Promise<unknown>, field: string | RegExp): Promise<StateError> {
  try {
    await p;
  } catch (e) {
    expect(e, String(e)).to.be.instanceOf(StateError);
    const se = e as StateError;
    expect(se.code).to.equal('STATE_INVALID');
    expect(se.message).to.include('state.json');
    if (typeof field === 'string') expect(se.field, se.message).to.equal(field);
    else expect(se.message).to.match(field);
    return se;
  }
  expect.fail(`expected a StateError for ${String(field)}`);
}

describe('coordinator checkpoint store', () => {
  let dir: string;
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-ckpt-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  const stateFile = () => join(dir, 'state.json');
  const readJson = async () => JSON.parse(await readFile(stateFile(), 'utf8')) as Record<string, unknown>;
  const writeJson = (o: unknown) => writeFile(stateFile(), JSON.stringify(o));

  it('round-trips state, adapter and strategy tensors bit-exactly', async () => {
    const a = adapter();
    const s = toSave(3);
    s.history[1] = record(2, { status: 'failed', contributors: 0, secure: { k: 4, t: 3, clip: 8, fracBits: 16, droppedAfterSharing: ['c2'], badShares: 1 } });
    const saved = await saveState(dir, s, a);
    expect(saved.checkpoint).to.equal('checkpoint-000003');
    const loaded = (await loadState(dir))!;
    const { strategyState, ...rest } = loaded.state;
    const { strategyState: wantSS, ...want } = s;
    expect(rest).to.deep.equal({ ...want, format: 2, checkpoint: 'checkpoint-000003' });
    expect(strategyState.meta).to.deep.equal(wantSS.meta);
    expect([...strategyState.tensors.keys()].sort()).to.deep.equal([...wantSS.tensors.keys()].sort());
    for (const [k, t] of wantSS.tensors) {
      const b = strategyState.tensors.get(k)!;
      expect(b.shape).to.deep.equal(t.shape);
      expect(bits(b.data).equals(bits(t.data)), k).to.equal(true);
    }
    expect(Object.is(strategyState.tensors.get('momentum/' + loraAName(MODULE))!.data[1], -0)).to.equal(true);
    for (const [k, t] of a.tensors) expect(bits(loaded.adapter.tensors.get(k)!.data).equals(bits(t.data)), k).to.equal(true);
    expect((await stat(join(dir, 'checkpoint-000003', STRATEGY_TENSORS_FILE))).isFile()).to.equal(true);
  });

  it('writes no tensor file for a stateless strategy and loads it back as an empty map', async () => {
    await saveState(dir, toSave(1, { strategyState: { meta: null, tensors: new Map() } }), adapter());
    expect(await readdir(join(dir, 'checkpoint-000001'))).to.not.include(STRATEGY_TENSORS_FILE);
    const { state } = (await loadState(dir))!;
    expect(state.strategyState.meta).to.equal(null);
    expect(state.strategyState.tensors.size).to.equal(0);
  });

  it('reads NaN metrics back (JSON writes them as null) instead of refusing the resume', async () => {
    await saveState(dir, toSave(1, { history: [record(1, { trainLoss: NaN, globalEval: { loss: Infinity, accuracy: 0.5 } })] }), adapter());
    const { state } = (await loadState(dir))!;
    expect(state.history[0]!.trainLoss).to.be.NaN;
    expect(state.history[0]!.globalEval!.loss).to.be.NaN;
  });

  it('returns null without a state.json', async () => {
    expect(await loadState(join(dir, 'none'))).to.equal(null);
  });

  describe('refuses every bad field of state.json with a StateError naming it', () => {
    // a mutation edits the saved state.json in place, or returns a whole replacement
    type Mut = [string, (o: Record<string, any>) => unknown, string | RegExp];
    const cases: Mut[] = [
      ['format unknown', (o) => { o.format = 99; }, 'format'],
      ['format not a number', (o) => { o.format = '2'; }, 'format'],
      ['modelId missing', (o) => { delete o.modelId; }, 'modelId'],
      ['modelId a number', (o) => { o.modelId = 5; }, 'modelId'],
      ['strategy an object', (o) => { o.strategy = {}; }, 'strategy'],
      ['strategy empty', (o) => { o.strategy = ''; }, 'strategy'],
      ['maxRank zero', (o) => { o.maxRank = 0; }, 'maxRank'],
      ['maxRank fractional', (o) => { o.maxRank = 2.5; }, 'maxRank'],
      ['maxRank huge', (o) => { o.maxRank = 1e6; }, 'maxRank'],
      ['seed a string', (o) => { o.seed = '42'; }, 'seed'],
      ['seed fractional', (o) => { o.seed = 0.5; }, 'seed'],
      ['loraAlpha negative', (o) => { o.loraAlpha = -1; }, 'loraAlpha'],
      ['loraAlpha null', (o) => { o.loraAlpha = null; }, 'loraAlpha'],
      ['targetModules a string', (o) => { o.targetModules = 'q_proj'; }, 'targetModules'],
      ['targetModules empty', (o) => { o.targetModules = []; }, 'targetModules'],
      ['targetModules too many', (o) => { o.targetModules = Array.from({ length: STATE_LIMITS.maxTargetModules + 1 }, (_, i) => `m${i}`); }, 'targetModules'],
      ['targetModules non-string entry', (o) => { o.targetModules = ['q_proj', 7]; }, 'targetModules[1]'],
      ['completedRounds 1e9', (o) => { o.completedRounds = 1e9; }, 'completedRounds'],
      ['completedRounds negative', (o) => { o.completedRounds = -1; }, 'completedRounds'],
      ['completedRounds fractional', (o) => { o.completedRounds = 2.5; }, 'completedRounds'],
      ['completedRounds ≠ checkpoint round', (o) => { o.completedRounds = 2; }, 'checkpoint'],
      ['checkpoint a path', (o) => { o.checkpoint = '../../etc'; }, 'checkpoint'],
      ['checkpoint missing', (o) => { delete o.checkpoint; }, 'checkpoint'],
      ['history garbage', (o) => { o.history = 'garbage'; }, 'history'],
      ['history too long', (o) => { o.history = new Array(STATE_LIMITS.maxHistoryOnLoad + 1).fill(0); }, 'history'],
      ['history entry not an object', (o) => { o.history[0] = 7; }, 'history[0]'],
      ['record round beyond completedRounds', (o) => { o.history[0].round = 4; }, 'history[0].round'],
      ['record round zero', (o) => { o.history[0].round = 0; }, 'history[0].round'],
      ['record roundId missing', (o) => { delete o.history[1].roundId; }, 'history[1].roundId'],
      ['record status unknown', (o) => { o.history[0].status = 'weird'; }, 'history[0].status'],
      ['record startedAt a string', (o) => { o.history[0].startedAt = 'yesterday'; }, 'history[0].startedAt'],
      ['record endedAt negative', (o) => { o.history[0].endedAt = -5; }, 'history[0].endedAt'],
      ['record contributors > participants', (o) => { o.history[0].contributors = 3; }, 'history[0].contributors'],
      ['record participants not an array', (o) => { o.history[0].participants = {}; }, 'history[0].participants'],
      ['record bytesUp fractional', (o) => { o.history[2].bytesUp = 1.5; }, 'history[2].bytesUp'],
      ['record bytesDown missing', (o) => { delete o.history[2].bytesDown; }, 'history[2].bytesDown'],
      ['record fullModelBytes negative', (o) => { o.history[0].fullModelBytes = -1; }, 'history[0].fullModelBytes'],
      ['record trainLoss a string', (o) => { o.history[0].trainLoss = 'low'; }, 'history[0].trainLoss'],
      ['record globalEval accuracy > 1', (o) => { o.history[0].globalEval.accuracy = 2; }, 'history[0].globalEval.accuracy'],
      ['record personalEval not an object', (o) => { o.history[0].personalEval = 1; }, 'history[0].personalEval'],
      ['record secure.k fractional', (o) => { o.history[0].secure = { k: 1.5, t: 1, clip: 1, fracBits: 16, droppedAfterSharing: [], badShares: 0 }; }, 'history[0].secure.k'],
      ['record secure.droppedAfterSharing entry', (o) => { o.history[0].secure = { k: 2, t: 1, clip: 1, fracBits: 16, droppedAfterSharing: [3], badShares: 0 }; }, 'history[0].secure.droppedAfterSharing[0]'],
      ['participant clientId missing', (o) => { delete o.history[0].participants[0].clientId; }, 'history[0].participants[0].clientId'],
      ['participant rank > maxRank', (o) => { o.history[0].participants[0].rank = 3; }, 'history[0].participants[0].rank'],
      ['participant status unknown', (o) => { o.history[0].participants[1].status = 'gone'; }, 'history[0].participants[1].status'],
      ['participant weight negative', (o) => { o.history[0].participants[0].weight = -1; }, 'history[0].participants[0].weight'],
      ['participant bytesUp negative', (o) => { o.history[0].participants[0].bytesUp = -1; }, 'history[0].participants[0].bytesUp'],
      ['participant global.examples a string', (o) => { o.history[0].participants[0].global.examples = '4'; }, 'history[0].participants[0].global.examples'],
      ['participant personal.f1 > 1', (o) => { o.history[0].participants[0].personal.f1 = 3; }, 'history[0].participants[0].personal.f1'],
      ['strategyState missing', (o) => { delete o.strategyState; }, 'strategyState'],
      ['strategyState an array', (o) => { o.strategyState = []; }, 'strategyState'],
      ['strategyState.meta missing', (o) => { delete o.strategyState.meta; }, 'strategyState.meta'],
      ['strategyState.tensors not an array', (o) => { o.strategyState.tensors = 'all'; }, 'strategyState.tensors'],
      ['strategyState.tensors duplicate', (o) => { o.strategyState.tensors = ['second-moment', 'second-moment']; }, 'strategyState.tensors'],
      ['strategyState.tensors names one not in the file', (o) => { o.strategyState.tensors.push('velocity'); }, 'strategyState.tensors'],
      ['strategyState.tensors omits one in the file', (o) => { o.strategyState.tensors.pop(); }, 'strategyState.tensors'],
      ['top level an array', () => [], '(top level)'],
    ];
    for (const [name, mutate, field] of cases) {
      it(name, async () => {
        await saveState(dir, toSave(3), adapter());
        const o = await readJson();
        await writeJson(mutate(o) ?? o);
        await expectStateError(loadState(dir), field);
      });
    }
  });

  it('refuses a state whose checkpoint folder is missing', async () => {
    await saveState(dir, toSave(3), adapter());
    await rm(join(dir, 'checkpoint-000003'), { recursive: true });
    await expectStateError(loadState(dir), 'checkpoint');
  });

  it('refuses strategy tensors that are not F32 or not finite', async () => {
    await saveState(dir, toSave(1, { strategyState: { meta: 1, tensors: new Map([['m', { shape: [2], data: new Float32Array([1, 2]) }]]) } }), adapter());
    const f = join(dir, 'checkpoint-000001', STRATEGY_TENSORS_FILE);
    await writeFile(f, encodeSafetensors(new Map([['m', { shape: [2], data: new Int32Array([1, 2]) }]])));
    await expectStateError(loadState(dir), /"m" .* is I32, expected F32/);
    await writeFile(f, encodeSafetensors(new Map([['m', { shape: [2], data: new Float32Array([1, NaN]) }]])));
    await expectStateError(loadState(dir), /non-finite value at index 1/);
  });

  for (const [name, text] of [['empty', ''], ['truncated', '{"format": 2, "modelId": "x", "hist'], ['not JSON', 'state: yes\n']] as const) {
    it(`says clearly when state.json is ${name}`, async () => {
      await saveState(dir, toSave(1), adapter());
      await writeFile(stateFile(), text);
      const e = await expectStateError(loadState(dir), /is not valid JSON/);
      expect(e.field).to.equal(undefined);
    });
  }

  it('loads a format-1 state.json written by the previous store as an empty server state', async () => {
    await saveState(dir, toSave(2), adapter());
    const o = await readJson();
    // exactly what the format-1 store wrote: opaque strategyState, no tensor file
    o.format = 1;
    o.strategyState = { initSeed: 42, frozenA: true };
    await rm(join(dir, 'checkpoint-000002', STRATEGY_TENSORS_FILE));
    await writeJson(o);
    const { state, adapter: a } = (await loadState(dir))!;
    expect(state.format).to.equal(1);
    expect(state.completedRounds).to.equal(2);
    expect(state.history).to.have.length(2);
    expect(state.strategyState.meta).to.equal(null);
    expect(state.strategyState.tensors.size).to.equal(0);
    expect(a.tensors.size).to.equal(2);
  });

  it('state-store.ts still takes the opaque strategyState of callers not yet moved (kept as meta)', async () => {
    const { strategyState: _, ...rest } = toSave(1);
    await legacySaveState(dir, { ...rest, strategyState: { initSeed: 42, frozenA: false } }, adapter());
    const { state } = (await loadState(dir))!;
    expect(state.strategyState.meta).to.deep.equal({ initSeed: 42, frozenA: false });
    expect(state.strategyState.tensors.size).to.equal(0);
  });

  it('ignores temp folders and files left by a crash, and a later save sweeps those of dead processes', async () => {
    await saveState(dir, toSave(2), adapter());
    const deadPid = 2 ** 31 - 2; // above any Linux pid_max, so never a live process
    const deadTmp = join(dir, `.checkpoint-000003.tmp-${deadPid}`);
    await mkdir(deadTmp);
    await writeFile(join(deadTmp, 'adapter_model.safetensors'), 'half a file');
    await writeFile(join(dir, `state.json.tmp-${deadPid}-abc123`), '{"format": 2, "complet');
    // a whole round-3 folder renamed into place before state.json was replaced: not yet committed
    await mkdir(join(dir, 'checkpoint-000003'));
    await writeFile(join(dir, 'checkpoint-000003', 'adapter_config.json'), '{}');
    const liveTmp = join(dir, `.checkpoint-000009.tmp-${process.ppid}`);
    await mkdir(liveTmp);

    const { state } = (await loadState(dir))!;
    expect(state.completedRounds).to.equal(2);

    await saveState(dir, toSave(3), adapter());
    const names = await readdir(dir);
    expect(names).to.not.include(`.checkpoint-000003.tmp-${deadPid}`);
    expect(names).to.not.include(`state.json.tmp-${deadPid}-abc123`);
    expect(names, 'a live process may be mid-write').to.include(`.checkpoint-000009.tmp-${process.ppid}`);
    expect((await loadState(dir))!.state.completedRounds).to.equal(3);
  });

  it('keeps only the newest two checkpoints', async () => {
    for (let r = 1; r <= 4; r++) await saveState(dir, toSave(r), adapter());
    expect((await readdir(dir)).filter((n) => n.startsWith('checkpoint-')).sort()).to.deep.equal(['checkpoint-000003', 'checkpoint-000004']);
  });

  it(`caps the persisted history at the last ${HISTORY_CAP} records, also for older files that hold more`, async () => {
    const n = HISTORY_CAP + 5;
    await saveState(dir, toSave(n), adapter());
    const o = await readJson();
    const hist = o.history as RoundRecord[];
    expect(hist).to.have.length(HISTORY_CAP);
    expect(hist[0]!.round).to.equal(6);
    expect(hist.at(-1)!.round).to.equal(n);
    o.history = Array.from({ length: n }, (_, i) => record(i + 1));
    await writeJson(o);
    const { state } = (await loadState(dir))!;
    expect(state.history).to.have.length(HISTORY_CAP);
    expect(state.history[0]!.round).to.equal(6);
  });

  it('refuses to save what it could not load, before touching the disk', async () => {
    const sub = join(dir, 'fresh');
    const bad: [string, StateToSave, string | RegExp][] = [
      ['completedRounds', toSave(1, { completedRounds: 1e9 }), 'completedRounds'],
      ['meta with a Map', toSave(1, { strategyState: { meta: new Map() as never, tensors: new Map() } }), 'strategyState.meta'],
      ['meta with undefined', toSave(1, { strategyState: { meta: { a: undefined } as never, tensors: new Map() } }), /strategyState\.meta\.a/],
      ['non-finite tensor', toSave(1, { strategyState: { meta: null, tensors: new Map([['m', { shape: [1], data: new Float32Array([Infinity]) }]]) } }), 'strategyState.tensors'],
      ['shape mismatch', toSave(1, { strategyState: { meta: null, tensors: new Map([['m', { shape: [3], data: new Float32Array(2) }]]) } }), 'strategyState.tensors'],
      ['history record', toSave(1, { history: [record(1, { contributors: -1 })] }), 'history[0].contributors'],
    ];
    for (const [, s, field] of bad) await expectStateError(saveState(sub, s, adapter()), field);
    expect(await readdir(dir)).to.deep.equal([]);
  });

  it('checkpointName pads to six digits', () => {
    expect(checkpointName(7)).to.equal('checkpoint-000007');
    expect(checkpointName(1234567)).to.equal('checkpoint-1234567');
  });

  it('checkResumable refuses another model, strategy or max rank', async () => {
    const saved = await saveState(dir, toSave(1), adapter());
    expect(() => checkResumable(saved, { modelId: 'sha256:abc', strategy: 'fedavgm', maxRank: 2 })).to.not.throw();
    expect(() => checkResumable(saved, { modelId: 'other', strategy: 'fedavgm', maxRank: 2 })).to.throw(ConfigError, /modelId/);
    expect(() => checkResumable(saved, { modelId: 'sha256:abc', strategy: 'fedit', maxRank: 2 })).to.throw(ConfigError, /strategy/);
    expect(() => checkResumable(saved, { modelId: 'sha256:abc', strategy: 'fedavgm', maxRank: 4 })).to.throw(ConfigError, /maxRank/);
  });

  it('keeps the last two checkpoints by default, the last N with keep: N, every one with keep: 0; never a later round\'s', async () => {
    const ckpts = async (d: string) => (await readdir(d)).filter((n) => n.startsWith('checkpoint-')).sort();
    for (let r = 1; r <= 5; r++) await saveState(join(dir, 'default'), toSave(r), adapter());
    expect(await ckpts(join(dir, 'default'))).to.deep.equal(['checkpoint-000004', 'checkpoint-000005']);
    for (let r = 1; r <= 5; r++) await saveState(join(dir, 'three'), toSave(r), adapter(), { keep: 3 });
    expect(await ckpts(join(dir, 'three'))).to.deep.equal(['checkpoint-000003', 'checkpoint-000004', 'checkpoint-000005']);
    for (let r = 1; r <= 4; r++) await saveState(join(dir, 'all'), toSave(r), adapter(), { keep: 0 });
    expect(await ckpts(join(dir, 'all'))).to.deep.equal(['checkpoint-000001', 'checkpoint-000002', 'checkpoint-000003', 'checkpoint-000004']);
    for (let r = 1; r <= 3; r++) await saveState(join(dir, 'one'), toSave(r), adapter(), { keep: 1 });
    expect(await ckpts(join(dir, 'one'))).to.deep.equal(['checkpoint-000003']);
    expect((await loadState(join(dir, 'one')))!.state.completedRounds).to.equal(3);
    // a folder of a later round (left by another run) is not this save's to remove
    await mkdir(join(dir, 'one', 'checkpoint-000009'));
    await saveState(join(dir, 'one'), toSave(4), adapter(), { keep: 1 });
    expect(await ckpts(join(dir, 'one'))).to.deep.equal(['checkpoint-000004', 'checkpoint-000009']);
    let err: unknown;
    try { await saveState(join(dir, 'bad'), toSave(1), adapter(), { keep: -1 }); } catch (e) { err = e; }
    expect(err).to.be.instanceOf(ConfigError);
  });

  it('checkResumable reports every mismatch at once, with the flags that resume the stored run', async () => {
    const saved = await saveState(dir, toSave(2), adapter());
    let msg = '';
    try {
      checkResumable(saved, { modelId: 'other', strategy: 'fedit', maxRank: 4, loraAlpha: 8, targetModules: ['q_proj', 'v_proj'], useDora: true }, { useDora: false });
    } catch (e) {
      expect(e).to.be.instanceOf(ConfigError);
      msg = (e as Error).message;
    }
    expect(msg).to.include('(2 round(s) done)');
    expect(msg).to.include('modelId: the state has sha256:abc, this start other');
    expect(msg).to.include('strategy: the state has fedavgm, this start fedit');
    expect(msg).to.include('maxRank: the state has 2, this start 4');
    expect(msg).to.include('loraAlpha: the state has 4, this start 8');
    expect(msg).to.include('targetModules: the state has q_proj, this start q_proj,v_proj');
    expect(msg).to.include('DoRA: the state holds a plain LoRA run, this start asks for DoRA');
    expect(msg).to.include('resume it with: --model <the folder of base model sha256:abc…> --strategy fedavgm --max-rank 2 --lora-alpha 4 --target-modules q_proj (without --dora)');
    // optional settings not given are not compared
    expect(() => checkResumable(saved, { modelId: 'sha256:abc', strategy: 'fedavgm', maxRank: 2 })).to.not.throw();
  });
});
