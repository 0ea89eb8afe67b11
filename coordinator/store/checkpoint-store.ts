/**
 * Coordinator checkpoints under --state.
 *
 * Layout: `state.json` plus one folder per completed round, `checkpoint-<round>`, holding the global
 * adapter in PEFT format and, when the strategy keeps server-side tensors (e.g. server momentum),
 * `strategy-state.safetensors`. state.json names the checkpoint folder it belongs to.
 *
 * Crash safety (the e2e test kills the coordinator with -9 mid-write): a round's folder is written
 * in full under a hidden temp name, flushed, then renamed into place; only after that is state.json
 * replaced, itself through a flushed temp file + rename. A crash at any point therefore leaves
 * state.json naming either the previous round's complete folder or the new one's, never a mix, and
 * at worst an orphaned temp folder that nothing reads (and a later save of a live process sweeps).
 * The server strategy tensors sit inside the same folder so they can never disagree with the
 * adapter they were saved with.
 *
 * Loading trusts nothing: every field of state.json is guarded (see state-schema.ts) and errors
 * are StateError (code STATE_INVALID) naming the file and the field.
 */
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { atomicWrite } from '../../shared/fs/atomic.js';
import { join } from 'node:path';
import { ConfigError, StateError, errorMessage } from '../../shared/errors.js';
import { encodeSafetensors, loadSafetensors, readFloatTensor } from '../../shared/model/safetensors.js';
import { loadPeftAdapter, savePeftAdapter } from '../../shared/lora/peft.js';
import { numel, type TensorMap } from '../../shared/tensor.js';
import type { LoraAdapter } from '../../shared/lora/adapter.js';
import { Guard, STATE_LIMITS, checkStateFields, checkpointName, type CheckedStateFields, type JsonValue } from './state-schema.js';

export { checkpointName, STATE_LIMITS, type JsonValue } from './state-schema.js';

/**
 * 2: strategyState is `{ meta, tensors: [names] }` with the tensors in the checkpoint folder.
 * 1: strategyState was opaque JSON (`{ initSeed, frozenA }`) that nothing read back; such a state
 *    still loads, with an empty server strategy state.
 */
export const STATE_FORMAT = 2;
const READABLE_FORMATS = [1, 2] as const;

export const STATE_FILE = 'state.json';
export const STRATEGY_TENSORS_FILE = 'strategy-state.safetensors';
/**
 * state.json is rewritten in full every round, so an unbounded history makes each save slower and
 * the file larger for ever. Only the last HISTORY_CAP records are persisted; older rounds live on
 * in the logs and in the adapter itself. /metrics only ever renders the last 50.
 */
export const HISTORY_CAP = 1000;
const MAX_STATE_BYTES = 256 * 1024 * 1024;
const MAX_STRATEGY_TENSOR_BYTES = 16 * 1024 ** 3;

/** Server-side state of a stateful strategy: JSON-safe `meta` plus float32 tensors. */
export interface ServerStrategyState {
  meta: JsonValue;
  tensors: TensorMap;
}

/** state.json as loaded: the checked fields (history at most HISTORY_CAP records, oldest first) plus the strategy state. */
export interface PersistedState extends CheckedStateFields {
  strategyState: ServerStrategyState;
}

export type StateToSave = Omit<PersistedState, 'checkpoint' | 'format'>;

export interface LoadedState { state: PersistedState; adapter: LoraAdapter }

/** An empty server strategy state, what a stateless strategy (or a format-1 state) has. */
export function emptyStrategyState(): ServerStrategyState {
  return { meta: null, tensors: new Map() };
}

/** Reads and validates `<stateDir>/state.json` and its checkpoint; null when there is no state.json. */
export async function loadState(stateDir: string): Promise<LoadedState | null> {
  const file = join(stateDir, STATE_FILE);
  let text: string;
  try {
    const { size } = await stat(file);
    if (size > MAX_STATE_BYTES) throw new StateError(`is ${size} bytes, over the ${MAX_STATE_BYTES}-byte limit`, file);
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    if (e instanceof StateError) throw e;
    throw new StateError(`cannot read (${(e as NodeJS.ErrnoException).code ?? errorMessage(e)})`, file, undefined, { cause: e });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    // state.json is only ever replaced by rename, so this is a hand edit or a foreign write
    throw new StateError(`is not valid JSON (${errorMessage(e)}); truncated or edited? Restore it or use a fresh --state directory`, file, undefined, { cause: e });
  }
  const g = new Guard(file);
  const o = g.obj(raw, '(top level)');
  const fields = checkStateFields(g, o, READABLE_FORMATS);
  const dir = join(stateDir, fields.checkpoint);
  try {
    if (!(await stat(dir)).isDirectory()) g.fail('checkpoint', `${dir} is not a folder`);
  } catch (e) {
    if (e instanceof StateError) throw e;
    g.fail('checkpoint', `folder ${dir} is missing (${(e as NodeJS.ErrnoException).code ?? errorMessage(e)})`);
  }
  const strategyState = fields.format === 1 ? legacyStrategyState(g, o.strategyState) : await loadStrategyState(g, o.strategyState, dir);
  const adapter = await loadPeftAdapter(dir);
  const history = fields.history.length > HISTORY_CAP ? fields.history.slice(-HISTORY_CAP) : fields.history;
  return { state: { ...fields, history, strategyState }, adapter };
}

/** Format 1 stored `{ initSeed, frozenA }`, which duplicated `seed` and the strategy name; no server tensors existed. */
function legacyStrategyState(g: Guard, v: unknown): ServerStrategyState {
  g.obj(v, 'strategyState');
  return emptyStrategyState();
}

async function loadStrategyState(g: Guard, v: unknown, dir: string): Promise<ServerStrategyState> {
  const s = g.obj(v, 'strategyState');
  if (!('meta' in s)) g.fail('strategyState.meta', 'is missing');
  const meta = g.json(s.meta, 'strategyState.meta');
  const names = g.arr(s.tensors, 'strategyState.tensors', STATE_LIMITS.maxStrategyTensors)
    .map((n, i) => g.str(n, `strategyState.tensors[${i}]`, { max: 512 }));
  if (new Set(names).size !== names.length) g.fail('strategyState.tensors', 'lists a tensor name twice');
  const tensors: TensorMap = new Map();
  if (!names.length) return { meta, tensors };
  const path = join(dir, STRATEGY_TENSORS_FILE);
  const st = await loadSafetensors(path, MAX_STRATEGY_TENSOR_BYTES);
  const want = new Set(names);
  for (const n of st.entries.keys()) if (!want.has(n)) g.fail('strategyState.tensors', `${path} holds "${n}", which state.json does not list`);
  for (const n of names) {
    const e = st.entries.get(n);
    if (!e) g.fail('strategyState.tensors', `lists "${n}" but ${path} does not hold it`);
    // only F32 is ever written; a widened or narrowed tensor would not round-trip bit-exactly
    if (e.dtype !== 'F32') g.fail('strategyState.tensors', `"${n}" in ${path} is ${e.dtype}, expected F32`);
    const t = readFloatTensor(st, n);
    checkFinite(g, n, t.data, `in ${path}`);
    tensors.set(n, t);
  }
  return { meta, tensors };
}

function checkFinite(g: Guard, name: string, data: Float32Array, where: string): void {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i]!)) g.fail('strategyState.tensors', `"${name}" ${where} holds a non-finite value at index ${i}`);
  }
}

/** What a coordinator start asks of an existing state; the optional fields are checked only when given. */
export type ResumeSettings = Pick<PersistedState, 'modelId' | 'strategy' | 'maxRank'> & Partial<Pick<PersistedState, 'loraAlpha' | 'targetModules'>> & {
  /** DoRA run (--dora); compared with `stored.useDora`, which the checkpoint's adapter config carries. */
  useDora?: boolean;
};

/**
 * Refuses to resume a state written for a different model or federation setup. Every mismatch is
 * reported at once, with the flags that resume the stored run (or the advice to use a fresh --state).
 */
export function checkResumable(s: PersistedState, want: ResumeSettings, stored: { useDora?: boolean } = {}): void {
  const diffs: string[] = [], resume: string[] = [];
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  const check = (field: Exclude<keyof ResumeSettings, 'useDora'>, shown: (v: unknown) => string, resumeFlag: (v: unknown) => string) => {
    if (want[field] === undefined || same(s[field], want[field])) return;
    diffs.push(`${field}: the state has ${shown(s[field])}, this start ${shown(want[field])}`);
    resume.push(resumeFlag(s[field]));
  };
  const plain = (v: unknown) => String(v);
  check('modelId', plain, (v) => `--model <the folder of base model ${String(v).slice(0, 19)}…>`);
  check('strategy', plain, (v) => `--strategy ${String(v)}`);
  check('maxRank', plain, (v) => `--max-rank ${String(v)}`);
  check('loraAlpha', plain, (v) => `--lora-alpha ${String(v)}`);
  check('targetModules', (v) => (v as string[]).join(','), (v) => `--target-modules ${(v as string[]).join(',')}`);
  if (want.useDora !== undefined && want.useDora !== (stored.useDora === true)) {
    const dora = stored.useDora === true;
    diffs.push(`DoRA: the state holds a ${dora ? 'DoRA' : 'plain LoRA'} run, this start ${want.useDora ? 'asks for DoRA' : 'has no --dora'}`);
    resume.push(dora ? '--dora' : '(without --dora)');
  }
  if (!diffs.length) return;
  throw new ConfigError(`--state holds a run (${s.completedRounds} round(s) done) with other settings:\n  ${diffs.join('\n  ')}\n`
    + `resume it with: ${resume.join(' ')}; or start a new run with a fresh --state directory`);
}

/** Checkpoint folders kept by default: this round's and the previous one (a fallback). */
export const DEFAULT_KEEP_CHECKPOINTS = 2;

export interface SaveOptions {
  /**
   * Keep the newest `keep` checkpoint folders (this round's included) and remove older ones; 0 keeps
   * every one. Default DEFAULT_KEEP_CHECKPOINTS. Only folders of rounds before this one are removed.
   */
  keep?: number;
}

/**
 * Writes round `state.completedRounds`: its checkpoint folder, then state.json. Everything is
 * validated by the same rules loadState applies before anything touches the disk, so a save never
 * produces a state that cannot be resumed. Keeps the previous checkpoint as a fallback (retention:
 * SaveOptions.keep).
 */
export async function saveState(stateDir: string, state: StateToSave, adapter: LoraAdapter, opts: SaveOptions = {}): Promise<PersistedState> {
  const keep = opts.keep ?? DEFAULT_KEEP_CHECKPOINTS;
  if (!Number.isSafeInteger(keep) || keep < 0) throw new ConfigError(`checkpoint retention must be an integer ≥ 0 (0 keeps every checkpoint), got ${keep}`);
  const file = join(stateDir, STATE_FILE);
  const g = new Guard(file);
  const checkpoint = checkpointName(state.completedRounds);
  const history = state.history.length > HISTORY_CAP ? state.history.slice(-HISTORY_CAP) : state.history;
  const { meta, tensors } = state.strategyState;
  const names = checkStrategyTensors(g, tensors);
  const onDisk = {
    format: STATE_FORMAT,
    modelId: state.modelId,
    strategy: state.strategy,
    maxRank: state.maxRank,
    seed: state.seed,
    loraAlpha: state.loraAlpha,
    targetModules: state.targetModules,
    completedRounds: state.completedRounds,
    checkpoint,
    strategyState: { meta: g.json(meta, 'strategyState.meta'), tensors: names },
    history,
  };
  const text = `${JSON.stringify(onDisk, null, 1)}\n`;
  // validate what loadState will read back (JSON turns NaN metrics into null, drops undefined keys)
  checkStateFields(g, JSON.parse(text) as Record<string, unknown>, [STATE_FORMAT]);

  await mkdir(stateDir, { recursive: true });
  const final = join(stateDir, checkpoint);
  const tmp = join(stateDir, `.${checkpoint}.tmp-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  await savePeftAdapter(adapter, tmp);
  if (names.length) await writeFlushed(join(tmp, STRATEGY_TENSORS_FILE), encodeSafetensors(tensors, { format: 'fedlora-strategy-state' }));
  await flushTree(tmp);
  // `final` normally exists here only as the orphan of a crash between this rename and the
  // state.json write below, while state.json still names the previous round, so removing it is
  // safe. Saving the round state.json already names a second time would open a window in which it
  // names a missing folder; the coordinator never does that (each save is a new round).
  await rm(final, { recursive: true, force: true });
  await rename(tmp, final);
  await writeFlushed(file, text);
  await flushDir(stateDir);
  await sweep(stateDir, state.completedRounds, keep);
  return { ...onDisk, strategyState: { meta: onDisk.strategyState.meta, tensors }, history };
}

function checkStrategyTensors(g: Guard, tensors: TensorMap): string[] {
  if (!(tensors instanceof Map)) g.fail('strategyState.tensors', 'expected a Map of name → float32 tensor');
  if (tensors.size > STATE_LIMITS.maxStrategyTensors) g.fail('strategyState.tensors', `${tensors.size} tensors, more than the limit of ${STATE_LIMITS.maxStrategyTensors}`);
  const names = [...tensors.keys()].sort();
  for (const n of names) {
    g.str(n, 'strategyState.tensors', { max: 512 });
    const t = tensors.get(n)!;
    if (!(t.data instanceof Float32Array)) g.fail('strategyState.tensors', `"${n}" is not float32`);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0) || numel(t.shape) !== t.data.length) {
      g.fail('strategyState.tensors', `"${n}": shape ${JSON.stringify(t.shape)} does not match its ${t.data.length} values`);
    }
    checkFinite(g, n, t.data, 'to save');
  }
  return names;
}

/** Write to a temp file, fsync, rename, fsync the directory (shared/fs/atomic.ts): the rename is the commit point, and it must not land before the data. */
const writeFlushed = atomicWrite;

/** fsyncs every file in a freshly written checkpoint folder, and the folder, before it is renamed into place. */
async function flushTree(dir: string): Promise<void> {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (!e.isFile()) continue;
    const fh = await open(join(dir, e.name), 'r');
    try { await fh.sync(); } finally { await fh.close(); }
  }
  await flushDir(dir);
}

/** Directory fsync makes renames durable on Linux; some platforms refuse it, which only weakens power-loss safety. */
async function flushDir(dir: string): Promise<void> {
  try {
    const fh = await open(dir, 'r');
    try { await fh.sync(); } finally { await fh.close(); }
  } catch { /* EISDIR/EPERM on platforms without directory fsync */ }
}

const TEMP_RE = /^(?:\.checkpoint-\d+\.tmp-(\d+)|state\.json\.tmp-(\d+)-[a-z0-9]*)$/;

/**
 * Drops checkpoints beyond the newest `keep` (0: none dropped) and temp entries orphaned by a
 * crashed process. Temp entries of a live process are left alone: it may be mid-write.
 */
async function sweep(stateDir: string, round: number, keep: number): Promise<void> {
  const names = await readdir(stateDir);
  // rounds up to this one, newest first; a checkpoint of a later round (from an older run) is never touched
  const rounds = names.map((n) => /^checkpoint-(\d+)$/.exec(n)).filter((c): c is RegExpExecArray => !!c).map((c) => Number(c[1])).filter((r) => r <= round).sort((a, b) => b - a);
  const drop = new Set(keep === 0 ? [] : rounds.slice(keep));
  for (const n of names) {
    const c = /^checkpoint-(\d+)$/.exec(n);
    if (c && drop.has(Number(c[1])) && Number(c[1]) < round) {
      await rm(join(stateDir, n), { recursive: true, force: true });
      continue;
    }
    const t = TEMP_RE.exec(n);
    const pid = t ? Number(t[1] ?? t[2]) : NaN;
    if (t && pid !== process.pid && !alive(pid)) await rm(join(stateDir, n), { recursive: true, force: true });
  }
}

function alive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
