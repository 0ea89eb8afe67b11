/**
 * A simulation scenario: everything `fedlora simulate` needs to reproduce a run, as one JSON file
 * (docs/SCENARIOS.md documents every field). Presets live in simulations/scenarios/<name>.json.
 * `parseScenario` validates an untrusted object and fills defaults; every refusal is a ConfigError
 * naming the offending field.
 */
import { readFile, stat } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { ConfigError, errorMessage } from '../shared/errors.js';
import { Rng } from '../shared/data/random.js';
import { checkServerOpt, getStrategy, needsXsFactors, hasStrategy, serverOptimizerOf, strategyNames, type ServerOptConfig, type StrategyName } from '../shared/aggregation/index.js';
import { packagePath, packageRoot } from '../shared/package-root.js';

/** Any registered aggregation strategy. */
export type ScenarioStrategy = StrategyName;

/** The bundled presets, inside the package (not the working directory). */
export const PRESETS_DIR = packagePath('simulations', 'scenarios');
/** The bundled base model: the default `model` of every scenario (an absolute path inside the package). */
export const BUNDLED_MODEL_DIR = packagePath('simulations', 'models', 'spam-llama');
const MAX_SCENARIO_BYTES = 1 << 20;

export interface Scenario {
  name: string;
  description: string;
  /**
   * Base model folder (HF layout). Omitted: the bundled model. Relative paths in a bundled preset
   * resolve against the package root; everywhere else (user files, overrides) against the working
   * directory (docs/SCENARIOS.md, "Paths").
   */
  model: string;
  /** `"spam"` (the bundled SpamAssassin corpus) or a JSONL file of {"prompt","completion"} / {"text"}. */
  dataset: string;
  /** Cap on the pooled examples dealt to clients (a seeded, label-stratified subsample); 0 = all. */
  maxExamples: number;
  /**
   * How the examples are dealt out. Dirichlet's `minPerClient` (default 4) is the smallest mailbox: draws
   * that leave a client with fewer are redrawn (then topped up from the largest clients).
   */
  partition: { kind: 'iid' } | { kind: 'dirichlet'; alpha: number; minPerClient?: number };
  /** Fraction of each client's examples held out for evaluation (stratified by label). */
  evalFraction: number;
  /** Cap on eval examples per client (keeps per-round evaluation cheap). */
  maxEvalPerClient: number;
  /**
   * Cap on each client's training examples after the eval split (a seeded random subset); 0 = no cap.
   * Models mailboxes with few labelled emails while their held-out sets stay large enough to measure.
   */
  maxTrainPerClient: number;
  /**
   * Size of the pooled test set: emails drawn from the corpus before the subsample and the partition,
   * with a fixed seed (the same set for every seed, run and baseline). The global adapter and the
   * centralized baseline are measured on it, once per round. 0 = none (the global adapter is then
   * measured on the clients' eval splits).
   */
  testSet: number;
  /** Final figures are the mean over this many last evaluated rounds (clamped to the rounds there are). */
  finalWindow: number;
  /**
   * Evaluate every this-many rounds (and always the last `finalWindow` rounds): the global adapter,
   * the personalized adapters and the baselines' checkpoints alike. 1 = every round.
   */
  evalEvery: number;
  /** More than one seed: run the scenario once per seed and report mean ± sd of every figure (`seed` is then unused). */
  seeds: number[];
  clients: number;
  clientsPerRound: number;
  minClients: number;
  rounds: number;
  strategy: ScenarioStrategy;
  /** Other strategies run on the same partition and budget, reported side by side. */
  compare: ScenarioStrategy[];
  baselines: { localOnly: boolean; centralized: boolean };
  /** LoRA rank → fraction of clients; the largest key is the coordinator's max rank. */
  rankMix: Record<string, number>;
  loraAlpha: number;
  /** Globs over PEFT tensor names that stay on every client (personalization layers). */
  personal: string[];
  /**
   * How a client trains its private copy of the `personal` tensors each round ('finetune' mode):
   * `steps` (default train.localSteps; 0 = none), `lr` (default train.lr) and `prox`, the weight λ of
   * a Ditto-style proximal term (λ/2)·Σ‖s·B·A − s·B_g·A_g‖² that pulls each fine-tuned module's
   * product towards the received global one (0 = none). The local-only baseline gets these steps too
   * (examples seen, see localStepsPerRound in runner/run.ts).
   */
  personalTrain: { steps: number; lr: number; prox: number };
  train: { localSteps: number; lr: number; batchSize: number; maxSeqLen: number };
  faults: {
    /** Each sampled client skips its upload (disconnects) in a round with this probability. */
    dropoutProbability: number;
    /** Exactly this many clients drop out of every round (on top of the probability). */
    dropoutsPerRound: number;
    stragglers: { fraction: number; minDelayMs: number; maxDelayMs: number } | null;
    /** One client, in a process of its own, is killed with SIGKILL while training in `round`. */
    kill: { client: number; round: number; afterMs: number } | null;
  };
  roundTimeoutMs: number;
  /** How long the coordinator waits for more ready clients once it has `minClients`. */
  joinWaitMs: number;
  /** How long the coordinator waits for a participant that lost its connection to come back. */
  rejoinGraceMs: number;
  secureAggregation: boolean;
  /** DoRA (the coordinator's --dora) for every federated run: compare with the same scenario at false. */
  dora: boolean;
  /**
   * Server optimiser on each round's aggregate (FedAvgM, FedAdam, FedYogi; `{ name: 'none' }` for
   * none). Applies to the main strategy and to every compared strategy it composes with
   * (serverOptFor); strategies with their own server state (fedavgm) run without it.
   */
  serverOpt: ServerOptConfig;
  /**
   * The coordinator's QR+SVD refactor of the global adapter after each round (CoordinatorOptions.refactor).
   * Off keeps every rank slot in one basis for the whole run, so clients' carried AdamW moments stay valid.
   */
  refactor: boolean;
  seed: number;
  backend: string;
  /** Worker processes hosting clients; 0 = one per CPU core. */
  workers: number;
  /**
   * Client-level DP privacy–utility curve (docs/PRIVACY.md): the main strategy runs once without DP
   * (ε = ∞) and once per budget in `budgets`, each with the noise multiplier that spends exactly
   * that ε over `rounds` rounds at q = clientsPerRound / clients; the report plots accuracy
   * against ε. null: no DP.
   */
  dp: { mode: 'central' | 'distributed'; clip: number; delta: number; budgets: number[] } | null;
}

export const DEFAULTS: Scenario = {
  name: 'custom',
  description: '',
  model: BUNDLED_MODEL_DIR,
  dataset: 'spam',
  maxExamples: 0,
  partition: { kind: 'dirichlet', alpha: 0.5 },
  evalFraction: 0.25,
  maxEvalPerClient: 32,
  maxTrainPerClient: 0,
  testSet: 0,
  finalWindow: 3,
  evalEvery: 1,
  seeds: [],
  clients: 8,
  clientsPerRound: 8,
  minClients: 2,
  rounds: 4,
  strategy: 'rank-aware',
  compare: [],
  baselines: { localOnly: true, centralized: true },
  rankMix: { '4': 0.5, '8': 0.3, '16': 0.2 },
  loraAlpha: 32,
  personal: [],
  personalTrain: { steps: 8, lr: 5e-3, prox: 0 },
  train: { localSteps: 8, lr: 5e-3, batchSize: 8, maxSeqLen: 128 },
  faults: { dropoutProbability: 0, dropoutsPerRound: 0, stragglers: null, kill: null },
  roundTimeoutMs: 120_000,
  joinWaitMs: 3000,
  rejoinGraceMs: 1000,
  secureAggregation: true,
  dora: false,
  serverOpt: { name: 'none' },
  refactor: true,
  seed: 42,
  backend: 'wasm',
  workers: 0,
  dp: null,
};

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function fail(field: string, msg: string): never {
  throw new ConfigError(`scenario field "${field}": ${msg}`);
}

function known(o: Obj, field: string, keys: readonly string[]): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) fail(field ? `${field}.${k}` : k, `unknown field (known: ${keys.join(', ')})`);
}

function int(v: unknown, field: string, min: number, max: number, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) fail(field, `must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
  return v;
}

function num(v: unknown, field: string, min: number, max: number, dflt: number, openMin = false): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max || (openMin && v === min)) fail(field, `must be a number in ${openMin ? '(' : '['}${min}, ${max}], got ${JSON.stringify(v)}`);
  return v;
}

function str(v: unknown, field: string, dflt: string, maxLen = 4096): string {
  if (v === undefined) return dflt;
  if (typeof v !== 'string' || v.length === 0 || v.length > maxLen) fail(field, `must be a non-empty string of at most ${maxLen} characters`);
  return v;
}

function bool(v: unknown, field: string, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') fail(field, `must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

function strategy(v: unknown, field: string, dflt: ScenarioStrategy): ScenarioStrategy {
  if (v === undefined) return dflt;
  if (!hasStrategy(v)) fail(field, `must be one of ${strategyNames().join(', ')}, got ${JSON.stringify(v)}`);
  return v as ScenarioStrategy;
}

function serverOpt(v: unknown, strat: ScenarioStrategy, dflt: ServerOptConfig): ServerOptConfig {
  if (v === undefined) return { ...dflt };
  let resolved;
  try {
    resolved = checkServerOpt(v, 'serverOpt');
  } catch (e) {
    fail('serverOpt', errorMessage(e));
  }
  const cfg = { ...(v as ServerOptConfig) };
  if (resolved && !serverOptFor({ serverOpt: cfg }, strat)) fail('serverOpt', `strategy ${strat} does not take a server optimiser (it keeps its own server state or refuses one); use e.g. rank-aware`);
  return cfg;
}

/**
 * The scenario's server optimiser for one strategy run: undefined when it is `none` or the strategy
 * does not compose with one (those runs go without).
 */
export function serverOptFor(s: Pick<Scenario, 'serverOpt'>, strat: ScenarioStrategy): ServerOptConfig | undefined {
  if (s.serverOpt.name === 'none') return undefined;
  try {
    return serverOptimizerOf(getStrategy(strat).createServer({ maxRank: 1, seed: 0, optimizer: s.serverOpt })) ? { ...s.serverOpt } : undefined;
  } catch (e) {
    if (e instanceof ConfigError) return undefined;
    throw e;
  }
}

/** The `dp` field: null/absent, or {mode, clip, delta, budgets}. */
function dpField(v: unknown): Scenario['dp'] {
  if (v === undefined || v === null) return null;
  if (!isObj(v)) fail('dp', 'must be null or an object {"mode", "clip", "delta", "budgets"}');
  known(v, 'dp', ['mode', 'clip', 'delta', 'budgets']);
  const mode = v.mode === undefined ? 'central' : v.mode;
  if (mode !== 'central' && mode !== 'distributed') fail('dp.mode', `must be "central" or "distributed", got ${JSON.stringify(v.mode)}`);
  if (!Array.isArray(v.budgets) || v.budgets.length < 1 || v.budgets.length > 8) fail('dp.budgets', 'must be a list of 1 to 8 target ε values');
  const budgets = (v.budgets as unknown[]).map((x, i) => num(x, `dp.budgets[${i}]`, 0, 1000, 1, true));
  if (new Set(budgets).size !== budgets.length) fail('dp.budgets', 'must not repeat a budget');
  return { mode: mode as 'central' | 'distributed', clip: num(v.clip, 'dp.clip', 0, 1e6, 1, true), delta: num(v.delta, 'dp.delta', 0, 0.1, 1e-5, true), budgets: budgets.sort((a, b) => b - a) };
}

/** Validates an untrusted scenario object and fills in defaults. */
export function parseScenario(raw: unknown, nameHint = 'custom'): Scenario {
  if (!isObj(raw)) throw new ConfigError('scenario must be a JSON object');
  known(raw, '', ['$schema', 'name', 'description', 'model', 'dataset', 'maxExamples', 'partition', 'evalFraction', 'maxEvalPerClient', 'maxTrainPerClient', 'testSet', 'finalWindow', 'evalEvery', 'seeds', 'extends', 'clients', 'clientsPerRound', 'minClients', 'rounds', 'strategy', 'compare', 'baselines', 'rankMix', 'loraAlpha', 'personal', 'personalTrain', 'train', 'faults', 'roundTimeoutMs', 'joinWaitMs', 'rejoinGraceMs', 'secureAggregation', 'dora', 'serverOpt', 'refactor', 'seed', 'backend', 'workers', 'dp']);
  const d = DEFAULTS;
  const name = str(raw.name, 'name', nameHint, 100);
  if (!/^[\w.-]+$/.test(name)) fail('name', 'may only contain letters, digits, "_", "." and "-"');
  const clients = int(raw.clients, 'clients', 1, 1000, d.clients);
  const clientsPerRound = int(raw.clientsPerRound, 'clientsPerRound', 1, clients, Math.min(clients, d.clientsPerRound));
  const minClients = int(raw.minClients, 'minClients', 1, clientsPerRound, Math.min(clientsPerRound, d.minClients));

  let partition: Scenario['partition'] = d.partition;
  if (raw.partition !== undefined) {
    const p = raw.partition;
    if (p === 'iid') partition = { kind: 'iid' };
    else if (isObj(p)) {
      known(p, 'partition', ['kind', 'alpha', 'minPerClient']);
      if (p.kind === 'iid') partition = { kind: 'iid' };
      else if (p.kind === 'dirichlet') {
        partition = { kind: 'dirichlet', alpha: num(p.alpha, 'partition.alpha', 0, 1e6, 0.5, true) };
        if (p.minPerClient !== undefined) partition.minPerClient = int(p.minPerClient, 'partition.minPerClient', 2, 1_000_000, 4);
      }
      else fail('partition.kind', `must be "iid" or "dirichlet", got ${JSON.stringify(p.kind)}`);
    } else fail('partition', 'must be "iid" or {"kind": "iid" | "dirichlet", "alpha": number}');
  }

  const strat = strategy(raw.strategy, 'strategy', d.strategy);
  let compare: ScenarioStrategy[] = [];
  if (raw.compare !== undefined) {
    if (raw.compare === 'all') compare = strategyNames().filter((s) => s !== strat);
    else if (Array.isArray(raw.compare)) compare = [...new Set(raw.compare.map((s, i) => strategy(s, `compare[${i}]`, strat)))].filter((s) => s !== strat);
    else fail('compare', `must be "all" or a list of strategies (${strategyNames().join(', ')})`);
  }

  let baselines = d.baselines;
  if (raw.baselines !== undefined) {
    if (!isObj(raw.baselines)) fail('baselines', 'must be an object {"localOnly": bool, "centralized": bool}');
    known(raw.baselines, 'baselines', ['localOnly', 'centralized']);
    baselines = { localOnly: bool(raw.baselines.localOnly, 'baselines.localOnly', true), centralized: bool(raw.baselines.centralized, 'baselines.centralized', true) };
  }

  let rankMix = d.rankMix;
  if (raw.rankMix !== undefined) {
    if (!isObj(raw.rankMix) || Object.keys(raw.rankMix).length === 0) fail('rankMix', 'must be a non-empty object {"rank": fraction}');
    let sum = 0;
    rankMix = {};
    for (const [k, v] of Object.entries(raw.rankMix)) {
      if (!/^\d+$/.test(k) || Number(k) < 1 || Number(k) > 256) fail(`rankMix.${k}`, 'ranks must be integers in [1, 256]');
      rankMix[String(Number(k))] = num(v, `rankMix.${k}`, 0, 1, 0, true);
      sum += v as number;
    }
    if (Math.abs(sum - 1) > 1e-6) fail('rankMix', `fractions must sum to 1, got ${sum}`);
  }

  let seeds: number[] = [];
  if (raw.seeds !== undefined) {
    if (!Array.isArray(raw.seeds) || raw.seeds.length > 32) fail('seeds', 'must be a list of at most 32 seeds');
    seeds = raw.seeds.map((x, i) => int(x, `seeds[${i}]`, 0, 2 ** 31 - 1, 0));
    if (new Set(seeds).size !== seeds.length) fail('seeds', `must not repeat a seed, got ${JSON.stringify(raw.seeds)}`);
  }
  if (raw.extends !== undefined) fail('extends', 'is resolved when a scenario is loaded from a file (loadScenario), not by parseScenario');

  let personal: string[] = [];
  if (raw.personal !== undefined) {
    if (!Array.isArray(raw.personal) || raw.personal.length > 64) fail('personal', 'must be a list of at most 64 globs');
    personal = raw.personal.map((g, i) => str(g, `personal[${i}]`, '', 200));
  }

  let train = d.train;
  if (raw.train !== undefined) {
    if (!isObj(raw.train)) fail('train', 'must be an object');
    known(raw.train, 'train', ['localSteps', 'lr', 'batchSize', 'maxSeqLen']);
    train = {
      localSteps: int(raw.train.localSteps, 'train.localSteps', 1, 100_000, d.train.localSteps),
      lr: num(raw.train.lr, 'train.lr', 0, 10, d.train.lr, true),
      batchSize: int(raw.train.batchSize, 'train.batchSize', 1, 4096, d.train.batchSize),
      maxSeqLen: int(raw.train.maxSeqLen, 'train.maxSeqLen', 8, 8192, d.train.maxSeqLen),
    };
  }

  let personalTrain: Scenario['personalTrain'] = { steps: train.localSteps, lr: train.lr, prox: 0 };
  if (raw.personalTrain !== undefined) {
    const p = raw.personalTrain;
    if (!isObj(p)) fail('personalTrain', 'must be an object {"steps", "lr", "prox"}');
    known(p, 'personalTrain', ['steps', 'lr', 'prox']);
    personalTrain = {
      steps: int(p.steps, 'personalTrain.steps', 0, 100_000, train.localSteps),
      lr: num(p.lr, 'personalTrain.lr', 0, 10, train.lr, true),
      prox: num(p.prox, 'personalTrain.prox', 0, 1e6, 0),
    };
  }

  const faults: Scenario['faults'] = { dropoutProbability: 0, dropoutsPerRound: 0, stragglers: null, kill: null };
  if (raw.faults !== undefined) {
    const f = raw.faults;
    if (!isObj(f)) fail('faults', 'must be an object');
    known(f, 'faults', ['dropoutProbability', 'dropoutsPerRound', 'stragglers', 'kill']);
    faults.dropoutProbability = num(f.dropoutProbability, 'faults.dropoutProbability', 0, 1, 0);
    faults.dropoutsPerRound = int(f.dropoutsPerRound, 'faults.dropoutsPerRound', 0, clientsPerRound, 0);
    if (f.stragglers !== undefined && f.stragglers !== null) {
      const s = f.stragglers;
      if (!isObj(s)) fail('faults.stragglers', 'must be an object {"fraction", "minDelayMs", "maxDelayMs"}');
      known(s, 'faults.stragglers', ['fraction', 'minDelayMs', 'maxDelayMs']);
      const minDelayMs = int(s.minDelayMs, 'faults.stragglers.minDelayMs', 0, 3_600_000, 0);
      faults.stragglers = {
        fraction: num(s.fraction, 'faults.stragglers.fraction', 0, 1, 0.2),
        minDelayMs,
        maxDelayMs: int(s.maxDelayMs, 'faults.stragglers.maxDelayMs', minDelayMs, 3_600_000, Math.max(minDelayMs, 5000)),
      };
    }
    if (f.kill !== undefined && f.kill !== null) {
      const k = f.kill;
      if (!isObj(k)) fail('faults.kill', 'must be an object {"client", "round", "afterMs"}');
      known(k, 'faults.kill', ['client', 'round', 'afterMs']);
      faults.kill = {
        client: int(k.client, 'faults.kill.client', 0, clients - 1, 0),
        round: int(k.round, 'faults.kill.round', 1, 100_000, 1),
        afterMs: int(k.afterMs, 'faults.kill.afterMs', 0, 600_000, 300),
      };
    }
  }

  const s: Scenario = {
    name,
    description: raw.description === undefined ? '' : str(raw.description, 'description', '', 2000),
    model: str(raw.model, 'model', d.model),
    dataset: str(raw.dataset, 'dataset', d.dataset),
    maxExamples: int(raw.maxExamples, 'maxExamples', 0, 10_000_000, d.maxExamples),
    partition,
    evalFraction: num(raw.evalFraction, 'evalFraction', 0, 0.9, d.evalFraction, true),
    maxEvalPerClient: int(raw.maxEvalPerClient, 'maxEvalPerClient', 1, 100_000, d.maxEvalPerClient),
    maxTrainPerClient: int(raw.maxTrainPerClient, 'maxTrainPerClient', 0, 10_000_000, d.maxTrainPerClient),
    testSet: int(raw.testSet, 'testSet', 0, 100_000, d.testSet),
    finalWindow: int(raw.finalWindow, 'finalWindow', 1, 10_000, d.finalWindow),
    evalEvery: int(raw.evalEvery, 'evalEvery', 1, 10_000, d.evalEvery),
    seeds,
    clients, clientsPerRound, minClients,
    rounds: int(raw.rounds, 'rounds', 1, 10_000, d.rounds),
    strategy: strat,
    compare,
    baselines,
    rankMix,
    loraAlpha: num(raw.loraAlpha, 'loraAlpha', 0, 1e6, d.loraAlpha, true),
    personal,
    personalTrain,
    train,
    faults,
    roundTimeoutMs: int(raw.roundTimeoutMs, 'roundTimeoutMs', 100, 86_400_000, d.roundTimeoutMs),
    joinWaitMs: int(raw.joinWaitMs, 'joinWaitMs', 0, 600_000, d.joinWaitMs),
    rejoinGraceMs: int(raw.rejoinGraceMs, 'rejoinGraceMs', 0, 600_000, d.rejoinGraceMs),
    secureAggregation: bool(raw.secureAggregation, 'secureAggregation', d.secureAggregation),
    dora: bool(raw.dora, 'dora', d.dora),
    serverOpt: serverOpt(raw.serverOpt, strat, d.serverOpt),
    refactor: bool(raw.refactor, 'refactor', d.refactor),
    seed: int(raw.seed, 'seed', 0, 2 ** 31 - 1, d.seed),
    backend: str(raw.backend, 'backend', d.backend, 20),
    workers: int(raw.workers, 'workers', 0, 64, d.workers),
    dp: dpField(raw.dp),
  };
  if (!['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'].includes(s.backend)) fail('backend', `must be auto | tensorflow | webgpu | wasm | cpu, got ${JSON.stringify(s.backend)}`);
  // the coordinator refuses --dora for adapters that are not plain A/B factors (LoRA-XS cores)
  const xs = [s.strategy, ...s.compare].filter((n) => needsXsFactors(getStrategy(n)));
  if (s.dora && xs.length) fail('dora', `DoRA needs plain LoRA A/B adapters; ${xs.join(', ')} cannot run with it (drop it from strategy/compare or set dora to false)`);
  if (s.faults.kill && s.faults.kill.round > s.rounds) fail('faults.kill.round', `must be ≤ rounds (${s.rounds})`);
  if (s.secureAggregation && s.minClients < 2) fail('minClients', 'secure aggregation needs at least 2 (a sum over one client is that client\'s update)');
  const survivorsNeeded = s.clientsPerRound - s.faults.dropoutsPerRound - (s.faults.kill ? 1 : 0);
  if (survivorsNeeded < s.minClients) fail('minClients', `${s.minClients} cannot be met when ${s.faults.dropoutsPerRound} of ${s.clientsPerRound} clients drop out per round${s.faults.kill ? ' and one is killed' : ''}`);
  return s;
}

/** Rounds whose adapters are evaluated: every `evalEvery`-th, the last `finalWindow`, and the last. */
export function evaluatedRounds(s: Pick<Scenario, 'rounds' | 'evalEvery' | 'finalWindow'>): number[] {
  const out: number[] = [];
  for (let r = 1; r <= s.rounds; r++) if (r % s.evalEvery === 0 || r > s.rounds - s.finalWindow) out.push(r);
  return out;
}

/** Largest rank of the mix: the coordinator's max rank. */
export function maxRankOf(s: Pick<Scenario, 'rankMix'>): number {
  return Math.max(...Object.keys(s.rankMix).map(Number));
}

/**
 * Deterministic rank per client: largest-remainder counts from the mix, then a seeded shuffle of
 * who gets which, so the same (mix, n, seed) always gives the same assignment.
 */
export function assignRanks(mix: Record<string, number>, n: number, seed: number | string): number[] {
  const ranks = Object.keys(mix).map(Number).sort((a, b) => a - b);
  const quotas = ranks.map((r) => (mix[String(r)] ?? 0) * n);
  const counts = quotas.map(Math.floor);
  let left = n - counts.reduce((a, b) => a + b, 0);
  const order = quotas.map((q, i) => [q - Math.floor(q), i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  for (const [, i] of order) { if (left-- <= 0) break; counts[i] = counts[i]! + 1; }
  const flat = ranks.flatMap((r, i) => Array.from({ length: counts[i]! }, () => r));
  return new Rng(`ranks:${String(seed)}`).shuffle(flat);
}

/** Names of the bundled presets (simulations/scenarios/*.json). */
export async function presetNames(): Promise<string[]> {
  const { readdir } = await import('node:fs/promises');
  return (await readdir(PRESETS_DIR)).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)).sort();
}

const MAX_EXTENDS_DEPTH = 4;

async function readScenarioJson(file: string, presetRef?: string): Promise<unknown> {
  let text: string;
  try {
    const st = await stat(file);
    if (st.size > MAX_SCENARIO_BYTES) throw new ConfigError(`scenario ${file} is larger than ${MAX_SCENARIO_BYTES} bytes`);
    text = await readFile(file, 'utf8');
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    if (presetRef !== undefined) throw new ConfigError(`no scenario preset "${presetRef}" (presets: ${(await presetNames()).join(', ')}) and no file by that name`);
    throw new ConfigError(`cannot read scenario ${resolve(file)}: ${errorMessage(e)}`);
  }
  let raw: unknown;
  try { raw = JSON.parse(text) as unknown; } catch (e) { throw new ConfigError(`scenario ${file} is not valid JSON: ${errorMessage(e)}`); }
  return presetRef === undefined ? raw : presetPaths(raw);
}

/**
 * A bundled preset's relative `model` / `dataset` paths name files inside the package (they hold
 * for a file that extends the preset too); a user's own scenario file keeps them relative to the
 * working directory (docs/SCENARIOS.md, "Paths").
 */
function presetPaths(raw: unknown): unknown {
  if (!isObj(raw)) return raw;
  const out: Obj = { ...raw };
  const inPackage = (v: unknown): unknown => (typeof v === 'string' && v !== '' && !isAbsolute(v) ? resolve(packageRoot(), v) : v);
  if (out.model !== undefined) out.model = inPackage(out.model);
  if (out.dataset !== undefined && out.dataset !== 'spam') out.dataset = inPackage(out.dataset);
  return out;
}

/**
 * Resolves `"extends": "<preset>"`: the named preset's fields, then this file's own fields on top
 * (a top-level field replaces the preset's whole value). Presets may extend presets, 4 levels at most.
 */
async function resolveExtends(raw: unknown, chain: string[]): Promise<unknown> {
  if (!isObj(raw) || raw.extends === undefined) return raw;
  const base = raw.extends;
  if (typeof base !== 'string' || !/^[\w-]+$/.test(base)) fail('extends', `must be the name of a preset (${(await presetNames()).join(', ')}), got ${JSON.stringify(base)}`);
  if (chain.includes(base)) fail('extends', `cycle: ${[...chain, base].join(' → ')}`);
  if (chain.length > MAX_EXTENDS_DEPTH) fail('extends', `more than ${MAX_EXTENDS_DEPTH} levels (${[...chain, base].join(' → ')})`);
  const parent = await resolveExtends(await readScenarioJson(join(PRESETS_DIR, `${base}.json`), base), [...chain, base]);
  const own: Obj = { ...raw };
  delete own.extends;
  return { ...(isObj(parent) ? parent : {}), ...own };
}

/** Loads a scenario from a preset name (`default`, `tiny-ci`, …) or a JSON file path; follows `extends`. */
export async function loadScenario(ref: string): Promise<Scenario> {
  const isPreset = /^[\w-]+$/.test(ref) && !ref.endsWith('.json');
  const file = isPreset ? join(PRESETS_DIR, `${ref}.json`) : ref;
  const raw = await resolveExtends(await readScenarioJson(file, isPreset ? ref : undefined), [isPreset ? ref : file]);
  return parseScenario(raw, isPreset ? ref : 'custom');
}
