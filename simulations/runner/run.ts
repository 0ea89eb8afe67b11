/**
 * `runSimulation(scenario)`: one coordinator per strategy and N real clients over socket.io on
 * loopback, hosted by worker processes (one shared copy of the base model each), then the local-only
 * and centralized baselines on the same partition and budget (examples seen); every round's global
 * adapter is evaluated once, in a worker (on the pooled test set when the scenario has one), the
 * personalized figures come from the clients right after local training, and a final evaluation of
 * every run's adapters on every client's held-out split feeds the per-client tables. Then the report
 * (report.json / .html / .png via simulations/report). `runScenario` also handles `seeds`: one run
 * per seed and a report of mean ± sd.
 */
import { availableParallelism, cpus, platform, arch } from 'node:os';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Coordinator, type CoordinatorOptions, type RoundRecord as CoordRound } from '../../coordinator/index.js';
import { FedloraError, errorMessage } from '../../shared/errors.js';
import { logger } from '../../shared/log.js';
import { Rng } from '../../shared/data/random.js';
import { generateIdentity, saveIdentity, formatPublicKey, type Identity } from '../../shared/crypto/identity.js';
import { PROTOCOL_VERSION } from '../../shared/protocol/index.js';
import { readModelInfo, targetShapes, defaultTargetModules } from '../../shared/model/model-info.js';
import { REPORT_SCHEMA_VERSION, writeReport, type Report, type RoundRecord, type ClientRound, type EvalMetrics, type CurvePoint, type StrategyResult, type SeedRun } from '../report/index.js';
import { finalFigure, meanMetrics, aggregateReports } from '../report/stats.js';
import { savePeftAdapter } from '../../shared/lora/peft.js';
import { evaluatedRounds, maxRankOf, serverOptFor, type Scenario, type ScenarioStrategy } from '../scenario.js';
import { prepareData, type SimClient } from './data.js';
import { referenceRates } from './references.js';
import { SimWorker } from './pool.js';
import type { CentralResult, ClientRoundMsg, EvalFigures, EvalResult, FedClientSpec, FromWorker, GlobalEvalResult, LocalResult, WorkerInit } from './messages.js';
import { packageVersion } from '../../shared/package-root.js';
import { runPrivacyCurve } from '../privacy-curve.js';

const log = logger('fedlora:simulate');

export interface SimProgress {
  run: string;
  phase: string;
  round: number;
  rounds: number;
  participants: number;
  uploaded: number;
  dropped: number;
  elapsedMs: number;
  runsDone: number;
  runsTotal: number;
  /** What is running when no federation is (baselines, final evaluation), e.g. "local-only: client c03 round 2/3". */
  detail?: string;
}

/**
 * One evaluated round, exactly as the report records it: `global` and `personalized` are the
 * RoundRecord's figures (the same objects), `globalOn` says where the global adapter was measured.
 */
export interface RoundEvent {
  type: 'round';
  run: string;
  round: number;
  rounds: number;
  contributors: number;
  participants: number;
  dropouts: string[];
  trainLoss: number | null;
  global: EvalMetrics;
  personalized: EvalMetrics;
  globalOn: 'test' | 'clients';
  wallMs: number;
}

export type SimEvent =
  | { type: 'progress'; progress: SimProgress }
  | RoundEvent
  | { type: 'log'; message: string };

export interface RunOptions {
  outDir: string;
  onEvent?: (e: SimEvent) => void;
  /** FEDLORA_LOG level inside worker processes (default "warn"). */
  workerLogLevel?: string;
  /** Extra CoordinatorOptions / ClientOptions passed through verbatim (e.g. secure-aggregation switches). */
  coordinatorExtra?: Record<string, unknown>;
  clientExtra?: Record<string, unknown>;
  /** Give up if the whole simulation has not finished after this long (default: from the scenario). */
  deadlineMs?: number;
}

export interface SimResult { report: Report; files: { json: string; html: string; png: string }; outDir: string }

interface RunState {
  strategy: ScenarioStrategy;
  runId: string;
  coordinator: Coordinator;
  msgs: Map<string, ClientRoundMsg>; // `${clientId}:${round}`
  straggles: Map<number, Set<string>>;
  drops: Map<number, Set<string>>;
  killed: { clientId: string; round: number } | null;
  startedAt: number;
  endedAt: number;
  final?: EvalResult;
  /** Per round: the global adapter's figures from the runner's evaluation job. */
  globalEvals: Map<number, GlobalEvalResult>;
  /** Per round: the figures as reported (console and report alike). */
  figures: Map<number, { global: EvalMetrics; personalized: EvalMetrics }>;
  pending: Promise<void>[];
  msgWaiters: Set<() => void>;
}

function meanOf(ms: (EvalFigures | EvalMetrics | undefined)[]): EvalMetrics {
  return meanMetrics(ms);
}

/** A client's figures as sent over IPC; an evaluation over no examples (skipped) counts as none. */
function fromWire(e: { loss: number; accuracy: number; f1?: number; examples: number } | undefined): EvalMetrics | undefined {
  return e && e.examples > 0 ? { loss: e.loss, accuracy: e.accuracy, f1: e.f1 ?? null, n: e.examples } : undefined;
}

/**
 * The figures of one evaluated round, used for the console line and the report alike:
 * - global: the round's global adapter on the pooled test set, or else the unweighted mean over
 *   clients of it on their eval splits (at each client's rank);
 * - personalized: unweighted mean over the clients that trained this round of their adapter right
 *   after local training, on their own eval split.
 */
export function roundFigures(globalEval: GlobalEvalResult | undefined, personal: (EvalMetrics | undefined)[]): { global: EvalMetrics; personalized: EvalMetrics } {
  const global: EvalMetrics = globalEval?.test ? { ...globalEval.test } : meanOf(globalEval?.clients.map((c) => c.metrics) ?? []);
  return { global, personalized: meanOf(personal) };
}

/**
 * Steps a sampled client trains on its own examples in one round: the local steps of the shared
 * update plus, when it personalizes (`personal` globs, 'finetune'), the steps of its private copy.
 */
export function ownStepsPerRound(s: Pick<Scenario, 'train' | 'personal' | 'personalTrain'>): number {
  return s.train.localSteps + (s.personal.length ? s.personalTrain.steps : 0);
}

/**
 * Local-only budget, in local steps per round-sized chunk: the examples a client sees of its own
 * data in the federation in expectation (it is sampled in clientsPerRound of clients rounds, and a
 * sampled client trains ownStepsPerRound steps: its shared update and its personal copy), with
 * cumulative rounding so the total is round(rounds × ownStepsPerRound × clientsPerRound / clients).
 */
export function localStepsPerRound(s: Pick<Scenario, 'rounds' | 'clients' | 'clientsPerRound' | 'train' | 'personal' | 'personalTrain'>): number[] {
  const per = (ownStepsPerRound(s) * s.clientsPerRound) / s.clients;
  return Array.from({ length: s.rounds }, (_, i) => Math.round((i + 1) * per) - Math.round(i * per));
}

/**
 * Which worker trains which local-only clients (client indices per worker): each client goes to the
 * worker with the least work so far, where worker 0 starts with the centralized baseline's work
 * (`centralCost`, 0 without it). Work is counted in training-step equivalents: the steps, plus the
 * evaluations (`baselineCosts`: a forward batch ≈ a third of a training step). Balances the baseline
 * phase across the workers now that local-only also gets the personal fine-tuning steps and the
 * centralized baseline evaluates on the pooled test set and every client's held-out split.
 */
export function baselineSplit(workers: number, clients: number, costPerClient: number | readonly number[], centralCost: number): number[][] {
  const out: number[][] = Array.from({ length: Math.max(1, workers) }, () => []);
  const load = out.map((_, i) => (i === 0 ? centralCost : 0));
  const cost = (c: number) => (typeof costPerClient === 'number' ? costPerClient : costPerClient[c] ?? 0);
  for (let c = 0; c < clients; c++) {
    let best = 0;
    for (let w = 1; w < load.length; w++) if (load[w]! < load[best]!) best = w;
    out[best]!.push(c);
    load[best]! += cost(c);
  }
  return out;
}

/**
 * The baselines' work in training-step equivalents (for baselineSplit): local-only per client (its
 * steps and its held-out split at every evaluated round) and centralized (its steps, the pooled test
 * set and every client's split at every evaluated round). A forward batch counts a third of a step.
 */
export function baselineCosts(s: Pick<Scenario, 'rounds' | 'clients' | 'clientsPerRound' | 'train' | 'personal' | 'personalTrain'>, evalRounds: number, evalSizes: readonly number[], testSize: number): { perClient: number[]; central: number } {
  const fwd = (n: number) => Math.ceil(n / s.train.batchSize) / 3;
  const steps = localStepsPerRound(s).reduce((a, b) => a + b, 0);
  return {
    perClient: evalSizes.map((n) => steps + evalRounds * fwd(n)),
    central: s.rounds * s.train.localSteps * s.clientsPerRound + evalRounds * (fwd(testSize) + evalSizes.reduce((a, n) => a + fwd(n), 0)),
  };
}

/** Which clients drop out of which round: the same schedule for every strategy run. */
export function dropoutSchedule(s: Scenario, clients: SimClient[], exclude: Set<string>): Map<string, number[]> {
  const out = new Map<string, number[]>(clients.map((c) => [c.id, []]));
  const eligible = clients.filter((c) => !exclude.has(c.id));
  for (let r = 1; r <= s.rounds; r++) {
    const rng = new Rng(`dropout:${s.seed}:${r}`);
    const chosen = new Set<string>();
    for (const c of rng.shuffle(eligible).slice(0, s.faults.dropoutsPerRound)) chosen.add(c.id);
    for (const c of eligible) if (rng.next() < s.faults.dropoutProbability) chosen.add(c.id);
    // never drop so many that the round cannot reach minClients
    const cap = Math.max(0, s.clientsPerRound - s.minClients - (s.faults.kill && s.faults.kill.round === r ? 1 : 0));
    for (const id of [...chosen].slice(0, cap)) out.get(id)!.push(r);
  }
  return out;
}


export async function runSimulation(s: Scenario, o: RunOptions): Promise<SimResult> {
  const t0 = Date.now();
  const emit = (e: SimEvent) => { try { o.onEvent?.(e); } catch { /* observer errors are not ours */ } };
  const say = (message: string) => { log.info(message); emit({ type: 'log', message }); };
  await mkdir(o.outDir, { recursive: true });
  const maxRank = maxRankOf(s);
  const info = await readModelInfo(s.model);
  const { clients, test } = await prepareData(s, o.outDir);
  say(`${clients.length} clients (${s.partition.kind === 'dirichlet' ? `dirichlet α=${s.partition.alpha}` : 'iid'}), ranks ${clients.map((c) => c.rank).join(',')}, ${clients.reduce((a, c) => a + c.train.length, 0)} train / ${clients.reduce((a, c) => a + c.eval.length, 0)} eval examples${test ? `; pooled test set ${test.examples.length} (${Object.entries(test.labelCounts).map(([k, v]) => `${k} ${v}`).join(', ')})` : ''}`);
  const globalOn: 'test' | 'clients' = test ? 'test' : 'clients';
  const evalRounds = evaluatedRounds(s);
  const allRounds = evalRounds.length === s.rounds;

  const strategies: ScenarioStrategy[] = [s.strategy, ...s.compare];
  const victim = s.faults.kill ? clients[s.faults.kill.client]! : null;
  const nWorkers = Math.max(1, Math.min(s.workers || availableParallelism(), clients.length));
  const init: WorkerInit = {
    type: 'init', modelDir: s.model, backend: s.backend, maxSeqLen: s.train.maxSeqLen, seed: s.seed, loraAlpha: s.loraAlpha, maxRank,
    stragglers: s.faults.stragglers, skipClientGlobalEval: true,
  };
  const workers: SimWorker[] = [];
  const runs: RunState[] = [];
  let finished = false;
  let ticker: NodeJS.Timeout | undefined;
  let detail: string | undefined;
  try {
    for (let i = 0; i < nWorkers + (victim ? 1 : 0); i++) workers.push(new SimWorker(i, o.workerLogLevel ?? process.env.FEDLORA_LOG_WORKERS ?? 'warn'));
    await Promise.all(workers.map((w) => w.start(init)));
    const pool = workers.slice(0, nWorkers);
    const victimWorker = victim ? workers[nWorkers]! : null;
    const hostOf = (c: SimClient) => pool[c.index % pool.length]!;
    say(`${workers.length} worker process(es) on ${workers[0]!.backend}, base model ${workers[0]!.parameters.toLocaleString('en-US')} parameters`);

    // enrolment: every simulated device gets an Ed25519 identity; the coordinators allow exactly these keys
    const identities = new Map<string, Identity>();
    for (const c of clients) {
      const id = generateIdentity();
      await saveIdentity(join(c.dir, 'client.identity'), id);
      identities.set(c.id, id);
    }
    const drops = dropoutSchedule(s, clients, new Set(victim ? [victim.id] : []));
    const runsDir = join(o.outDir, 'runs');
    await rm(runsDir, { recursive: true, force: true });

    let evalTurn = 0;
    /** Waits (at most `ms`) until every client that uploaded in `round` has reported its round summary. */
    const msgsIn = (st: RunState, round: number, ids: string[], ms: number) => new Promise<void>((res) => {
      const check = () => ids.every((id) => st.msgs.has(`${id}:${round}`));
      if (check()) { res(); return; }
      const timer = setTimeout(() => { st.msgWaiters.delete(w); res(); }, ms);
      const w = () => { if (check()) { clearTimeout(timer); st.msgWaiters.delete(w); res(); } };
      st.msgWaiters.add(w);
    });

    /** The round's global adapter, evaluated once in a worker; then the round's figures, emitted and kept for the report. */
    async function evaluateRound(st: RunState, rec: CoordRound, adapter: NonNullable<Coordinator['globalAdapter']>): Promise<void> {
      const dir = join(runsDir, st.strategy, 'rounds', String(rec.round));
      await savePeftAdapter(adapter, dir);
      let ge: GlobalEvalResult;
      if (test) {
        ge = await pool[evalTurn++ % pool.length]!.job<GlobalEvalResult>({ type: 'evalGlobal', adapterDir: dir, testFile: test.file });
      } else {
        const parts = await Promise.all(pool.map((w) => {
          const mine = clients.filter((c) => hostOf(c) === w);
          return mine.length ? w.job<GlobalEvalResult>({ type: 'evalGlobal', adapterDir: dir, clients: mine.map((c) => ({ id: c.id, evalFile: c.evalFile, rank: c.rank })) }) : Promise.resolve({ clients: [] } as GlobalEvalResult);
        }));
        ge = { clients: parts.flatMap((p) => p.clients).sort((a, b) => a.id.localeCompare(b.id)) };
      }
      st.globalEvals.set(rec.round, ge);
      const uploaded = rec.participants.filter((p) => p.status === 'uploaded').map((p) => p.clientId);
      // a client reports its round after its upload is acknowledged: give late reports (a loaded machine) some time
      await msgsIn(st, rec.round, uploaded, 10_000);
      const figs = roundFigures(ge, clients.map((c) => fromWire(st.msgs.get(`${c.id}:${rec.round}`)?.personal)));
      st.figures.set(rec.round, figs);
      emit({
        type: 'round', run: st.runId, round: rec.round, rounds: s.rounds, contributors: rec.contributors, participants: rec.participants.length,
        dropouts: rec.participants.filter((p) => p.status !== 'uploaded').map((p) => p.clientId),
        trainLoss: rec.trainLoss ?? null, global: figs.global, personalized: figs.personalized, globalOn, wallMs: rec.endedAt - rec.startedAt,
      });
    }

    function onRound(st: RunState, rec: CoordRound): void {
      for (const w of workers) w.post({ type: 'roundEnd', runId: st.runId, round: rec.round });
      if (rec.status !== 'completed') return;
      // the coordinator's global adapter is this round's aggregate right now: take it before the next round replaces it
      const adapter = st.coordinator.globalAdapter;
      if (!adapter) return;
      if (!evalRounds.includes(rec.round)) {
        // not an evaluated round (evalEvery): the line says so, the report has no figures for it
        const none: EvalMetrics = { loss: null, accuracy: null, f1: null };
        st.figures.set(rec.round, { global: none, personalized: none });
        emit({
          type: 'round', run: st.runId, round: rec.round, rounds: s.rounds, contributors: rec.contributors, participants: rec.participants.length,
          dropouts: rec.participants.filter((p) => p.status !== 'uploaded').map((p) => p.clientId), trainLoss: rec.trainLoss ?? null,
          global: none, personalized: none, globalOn, wallMs: rec.endedAt - rec.startedAt,
        });
        return;
      }
      st.pending.push(evaluateRound(st, rec, adapter).catch((e: unknown) => say(`${st.runId}: evaluation of round ${rec.round} failed: ${errorMessage(e)}`)));
    }

    const listenFor = (st: RunState) => (m: FromWorker) => {
      if (!('runId' in m) || m.runId !== st.runId) return;
      const round = st.coordinator.status().round;
      if (m.type === 'clientRound') { st.msgs.set(`${m.clientId}:${m.round}`, m); for (const w of [...st.msgWaiters]) w(); }
      else if (m.type === 'straggle') { const set = st.straggles.get(round) ?? new Set(); set.add(m.clientId); st.straggles.set(round, set); }
      else if (m.type === 'dropped') { const set = st.drops.get(m.round) ?? new Set(); set.add(m.clientId); st.drops.set(m.round, set); }
      else if (m.type === 'clientError') say(`${st.runId}/${m.clientId}: ${m.message}`);
      else if (m.type === 'trainStart' && s.faults.kill && !st.killed && round === s.faults.kill.round && m.clientId === victim?.id) {
        st.killed = { clientId: m.clientId, round };
        setTimeout(() => { say(`killing ${m.clientId} (pid ${victimWorker!.proc.pid}) with SIGKILL during round ${round}`); victimWorker!.kill('SIGKILL'); }, s.faults.kill.afterMs);
      }
    };

    // ---- one federated run per strategy, one after the other (secure-aggregation phases are
    // interactive: clients that share a core with three other federations answer too late)
    const startRun = async (strategy: ScenarioStrategy): Promise<{ st: RunState; done: Promise<void> }> => {
      const runId = strategy;
      const dir = join(runsDir, strategy);
      const isMain = strategy === s.strategy;
      const st: RunState = {
        strategy, runId, coordinator: undefined as unknown as Coordinator, msgs: new Map(), straggles: new Map(), drops: new Map(),
        killed: null, startedAt: Date.now(), endedAt: 0, globalEvals: new Map(), figures: new Map(), pending: [], msgWaiters: new Set(),
      };
      const coordOpts: CoordinatorOptions = {
        ...(o.coordinatorExtra ?? {}),
        ...(s.secureAggregation ? {} : { insecureAggregation: true }),
        ...(s.dora ? { dora: true } : {}),
        refactor: s.refactor,
        authorizedClients: [...identities.values()].map((id) => formatPublicKey(id.publicKey)),
        rejoinGraceMs: s.rejoinGraceMs,
        modelDir: s.model, stateDir: join(dir, 'coordinator'), exportDir: join(dir, 'adapter'), rounds: s.rounds, clientsPerRound: s.clientsPerRound,
        minClients: s.minClients, roundTimeoutMs: s.roundTimeoutMs, strategy, maxRank, loraAlpha: s.loraAlpha, localSteps: s.train.localSteps,
        lr: s.train.lr, batchSize: s.train.batchSize, seed: s.seed, joinWaitMs: s.joinWaitMs, serverOpt: serverOptFor(s, strategy),
        onRound: (rec) => onRound(st, rec),
      } as CoordinatorOptions;
      st.coordinator = new Coordinator(coordOpts);
      runs.push(st);
      for (const w of workers) w.on(listenFor(st));
      const url = await st.coordinator.serve(0);
      const specFor = (c: SimClient): FedClientSpec => ({
        id: c.id, trainFile: c.trainFile, evalFile: c.evalFile, stateDir: join(dir, 'clients', c.id), identityFile: join(c.dir, 'client.identity'), maxRank: c.rank, dropRounds: drops.get(c.id) ?? [],
        ...(isMain && victim?.id === c.id ? { reportTrainStart: true } : {}),
      });
      const extra = {
        ...(s.personal.length ? { personalSteps: s.personalTrain.steps, personalLr: s.personalTrain.lr, ...(s.personalTrain.prox > 0 ? { personalProx: s.personalTrain.prox } : {}) } : {}),
        ...(o.clientExtra ?? {}),
      };
      const coordinatorKey = st.coordinator.publicKey!;
      for (const w of pool) {
        const mine = clients.filter((c) => hostOf(c) === w && !(isMain && victim?.id === c.id));
        if (mine.length) w.post({ type: 'fed', runId, url, coordinatorKey, secure: s.secureAggregation, rounds: s.rounds, personal: s.personal, ...(allRounds ? {} : { evalRounds }), clients: mine.map(specFor), clientExtra: extra });
      }
      if (victim) {
        // the client that gets killed lives alone in its own process (main run); elsewhere it is ordinary
        const host = isMain ? victimWorker! : hostOf(victim);
        host.post({ type: 'fed', runId, url, coordinatorKey, secure: s.secureAggregation, rounds: s.rounds, personal: s.personal, ...(allRounds ? {} : { evalRounds }), clients: [specFor(victim)], clientExtra: extra });
      }
      st.startedAt = Date.now();
      return { st, done: st.coordinator.done.then(() => { st.endedAt = Date.now(); for (const w of workers) w.post({ type: 'fedEnd', runId }); }) };
    };



    // what the baseline jobs report (at most once a second per worker), for the progress line
    const jobDetail = new Map<string, string>();
    for (const w of pool) w.on((m) => { if (m.type === 'jobProgress') jobDetail.set(`${w.index}:${m.kind}`, `${m.kind === 'local' ? 'local-only' : 'centralized'} ${m.detail}`); });
    ticker = setInterval(() => {
      const main = runs.at(-1);
      if (!main) return;
      const st = main.coordinator.status();
      const runsDone = runs.filter((r) => r.endedAt > 0).length;
      const extra = detail ?? (jobDetail.size ? [...jobDetail.values()].join('; ') : undefined);
      emit({
        type: 'progress', progress: {
          run: main.runId, phase: st.phase, round: st.round, rounds: st.rounds, participants: st.participating.length,
          uploaded: st.participating.filter((p) => p.status === 'uploaded').length, dropped: st.participating.filter((p) => p.status === 'dropped' || p.status === 'timeout').length,
          elapsedMs: Date.now() - t0, runsDone, runsTotal: strategies.length, ...(extra ? { detail: extra } : {}),
        },
      });
    }, 500);

    const deadline = o.deadlineMs ?? strategies.length * s.rounds * (s.roundTimeoutMs + s.joinWaitMs + 60_000) + 300_000;
    let timer: NodeJS.Timeout | undefined;
    let local: LocalResult['clients'] | null = null;
    let central: CentralResult | null = null;
    const timeout = new Promise<never>((_, rej) => { timer = setTimeout(() => rej(new FedloraError('SIMULATION', `simulation did not finish within ${Math.round(deadline / 1000)} s`)), deadline); });
    try {
      for (const strategy of strategies) {
        detail = undefined;
        const { st, done } = await startRun(strategy);
        await Promise.race([done, timeout]);
        detail = `${st.runId}: final evaluation`;
        // final evaluation of the run's exported adapter, spread over the pool
        const dir = join(runsDir, st.strategy);
        const parts = await Promise.race([Promise.all(pool.map((w) => {
          const mine = clients.filter((c) => hostOf(c) === w);
          return w.job<EvalResult>({
            type: 'eval', adapterDir: join(dir, 'adapter'), personal: s.personal, strategy: st.strategy,
            clients: mine.map((c) => ({ id: c.id, evalFile: c.evalFile, stateDir: join(dir, 'clients', c.id), rank: c.rank })),
          });
        })), timeout]);
        st.final = { clients: parts.flatMap((p) => p.clients) };
        await st.coordinator.close();
      }
      // ---- baselines after the federated runs, on the same workers: running them alongside would
      // starve the interactive secure-aggregation phases of CPU (2-core budget).
      // Budget = examples seen (every step is one batch of batchSize): a federated round has
      // clientsPerRound clients train localSteps steps each (a dropout's work is lost, but it was done),
      // and a personalizing client then trains personalTrain.steps more on its own mail: local-only gets
      // both (ownStepsPerRound), centralized the shared steps (it is compared with the global adapter).
      // Centralized runs on worker 0; the local-only clients go where there is least work (baselineSplit).
      detail = undefined;
      const costs = baselineCosts(s, evalRounds.length, clients.map((c) => c.eval.length), test?.examples.length ?? 0);
      const localOf = baselineSplit(pool.length, clients.length, costs.perClient, s.baselines.centralized ? costs.central : 0);
      const localWorkers = pool.filter((_, wi) => localOf[wi]!.length > 0);
      const localJob: Promise<LocalResult[]> | null = s.baselines.localOnly
        ? Promise.all(localWorkers.map((w) => w.job<LocalResult>({
          type: 'local', clients: localOf[pool.indexOf(w)]!.map((ci) => clients[ci]!).map((c) => ({ id: c.id, trainFile: c.trainFile, evalFile: c.evalFile, rank: c.rank })),
          // each client alone: what it would train in the federation, in expectation
          stepsPerRound: localStepsPerRound(s), ...(allRounds ? {} : { evalRounds }), lr: s.train.lr, batchSize: s.train.batchSize,
        })))
        : null;
      const centralJob: Promise<CentralResult> | null = s.baselines.centralized
        ? pool[0]!.job<CentralResult>({
          type: 'central', trainFiles: clients.map((c) => c.trainFile), evalClients: clients.map((c) => ({ id: c.id, evalFile: c.evalFile })),
          ...(test ? { testFile: test.file } : {}),
          // the same examples as one federated round (every sampled client's local steps), evaluated after each such chunk
          rounds: s.rounds, stepsPerRound: s.train.localSteps * s.clientsPerRound, ...(allRounds ? {} : { evalRounds }), lr: s.train.lr, batchSize: s.train.batchSize,
        })
        : null;
      local = localJob ? (await Promise.race([localJob, timeout])).flatMap((r) => r.clients) : null;
      central = centralJob ? await Promise.race([centralJob, timeout]) : null;
      detail = 'round evaluations';
      await Promise.race([Promise.all(runs.flatMap((r) => r.pending)), timeout]);
    } finally {
      clearTimeout(timer);
    }
    finished = true;
    clearInterval(ticker);

    // ---- the report
    const K = s.finalWindow;
    const fullModelBytes = runs[0]!.coordinator.status().bytes.fullModel;
    const main = runs[0]!;
    const clientOrder = clients.map((c) => c.id);
    const roundsOf = (st: RunState): RoundRecord[] => {
      const recs = st.coordinator.history.filter((r) => r.status === 'completed');
      let prevEnd = st.startedAt;
      return recs.map((rec, i): RoundRecord => {
        const isLast = i === recs.length - 1;
        const byId = new Map(rec.participants.map((p) => [p.clientId, p]));
        const straggled = st.straggles.get(rec.round) ?? new Set<string>();
        const ge = st.globalEvals.get(rec.round);
        const perClient: ClientRound[] = clientOrder.map((id) => {
          const p = byId.get(id);
          const msg = st.msgs.get(`${id}:${rec.round}`);
          // the round's global adapter at this client's rank on its eval split: from the round's evaluation
          // (no pooled test set) or, for the last round, from the final evaluation of the exported adapter
          const global = ge?.clients.find((c) => c.id === id)?.metrics ?? (isLast ? st.final?.clients.find((c) => c.id === id)?.global : undefined);
          const personalized = fromWire(msg?.personal);
          return {
            clientId: id, participated: !!p, dropped: !!p && p.status !== 'uploaded', ...(straggled.has(id) ? { straggler: true } : {}),
            ...(p ? { rank: p.rank } : {}), trainLoss: p?.trainLoss ?? msg?.trainLoss ?? null, localSteps: p ? s.train.localSteps : 0,
            ...(global ? { global: { ...global } } : {}), ...(personalized ? { personalized: { ...personalized } } : {}),
            bytesUp: p?.bytesUp ?? 0, bytesDown: p?.bytesDown ?? 0,
          };
        });
        const wait = rec.startedAt - prevEnd;
        prevEnd = rec.endedAt;
        const dropouts = rec.participants.filter((p) => p.status !== 'uploaded').map((p) => p.clientId);
        // the figures the console printed for this round (the same function, the same inputs)
        const figs = st.figures.get(rec.round) ?? roundFigures(ge, perClient.map((c) => c.personalized));
        return {
          round: rec.round, participants: rec.participants.map((p) => p.clientId), dropouts, stragglers: [...straggled].sort(),
          trainLoss: rec.trainLoss ?? null,
          global: figs.global, personalized: figs.personalized,
          clients: perClient,
          bytes: { up: rec.bytesUp, down: rec.bytesDown, fullModelEquivalent: rec.participants.length * fullModelBytes * 2 },
          phaseMs: { wait: Math.max(0, wait), round: rec.endedAt - rec.startedAt },
          wallMs: Math.max(0, wait) + rec.endedAt - rec.startedAt,
          ...(rec.privacy ? { privacy: { epsilon: rec.privacy.epsilon, delta: rec.privacy.delta } } : {}),
        };
      });
    };
    // curves hold the evaluated rounds only (evalEvery), so chart lines join them
    const evaluated = (p: CurvePoint) => [p.loss, p.accuracy, p.f1].some((x) => typeof x === 'number');
    const curveOf = (rs: RoundRecord[], key: 'global' | 'personalized'): CurvePoint[] => rs.map((r) => ({ round: r.round, loss: r[key].loss, accuracy: r[key].accuracy, f1: r[key].f1 })).filter(evaluated);
    const toCurve = (ms: EvalFigures[]): CurvePoint[] => ms.map((m, i) => ({ round: i + 1, loss: m.loss, accuracy: m.accuracy, f1: m.f1 })).filter(evaluated);
    const exportedOf = (st: RunState) => ({
      global: meanOf(st.final?.clients.map((c) => c.global) ?? []), personalized: meanOf(st.final?.clients.map((c) => c.personalized) ?? []),
    });
    const mainRounds = roundsOf(main);
    const strategyResults: StrategyResult[] = runs.map((st) => {
      const rs = st === main ? mainRounds : roundsOf(st);
      const curve = curveOf(rs, 'global');
      const personalizedCurve = curveOf(rs, 'personalized');
      return {
        strategy: st.strategy, final: { global: finalFigure(curve, K), personalized: finalFigure(personalizedCurve, K) }, curve, personalizedCurve,
        bytesUpTotal: rs.reduce((a, r) => a + r.bytes.up, 0), wallMs: st.endedAt - st.startedAt,
      };
    });
    const mainResult = strategyResults[0]!;
    const localPer = local?.map((c) => ({ clientId: c.id, metrics: finalFigure(c.curve, K) })) ?? [];
    const localCurve: CurvePoint[] = local ? Array.from({ length: s.rounds }, (_, i) => {
      const m = meanOf(local!.map((c) => c.curve[i]));
      return { round: i + 1, loss: m.loss, accuracy: m.accuracy, f1: m.f1 };
    }).filter(evaluated) : [];
    const centralClientsCurve = central ? toCurve(central.curve) : [];
    const centralCurve = central ? (test ? toCurve(central.testCurve) : centralClientsCurve) : [];
    const references = referenceRates({ train: clients.map((c) => c.trainLabels), eval: clients.map((c) => c.evalLabels), ...(test ? { test: test.labels } : {}) });
    const shapes = targetShapes(info, defaultTargetModules(info.config));
    let adapterParameters = 0;
    for (const sh of shapes.values()) adapterParameters += maxRank * (sh.in + sh.out);
    const notes: string[] = [];
    if (main.killed) notes.push(`Client ${main.killed.clientId} was killed with SIGKILL ${s.faults.kill!.afterMs} ms into its training in round ${main.killed.round}; it did not come back.`);
    const dropTotal = [...main.drops.values()].reduce((a, x) => a + x.size, 0);
    if (dropTotal) notes.push(`${dropTotal} injected dropout(s): the client trained, then disconnected instead of uploading, and rejoined for the next round.`);
    const stragTotal = [...main.straggles.values()].reduce((a, x) => a + x.size, 0);
    if (stragTotal) notes.push(`${stragTotal} straggler delay(s) injected; the coordinator's ${s.roundTimeoutMs} ms round timeout decided who was left out.`);
    notes.push(test
      ? `Global adapter and centralized baseline: measured once per round on a pooled test set of ${test.examples.length} emails held out of the corpus before the partition (the same set for every seed and baseline).`
      : 'Global adapter and centralized baseline: measured once per round on every client\'s eval split (at the client\'s rank), unweighted mean over clients.');
    notes.push('Personalized (per round) = each client\'s adapter right after its local training in that round, on its own eval split; mean over the clients that trained. The exported adapters\' figures (final global, and with each client\'s personal tensors in place) are under final.exported.');
    notes.push(`Final figures are the mean over the last ${Math.min(K, s.rounds)} evaluated round(s) (finalWindow ${K}); the last round alone is kept as "last".${allRounds ? '' : ` Evaluated rounds (evalEvery ${s.evalEvery}): ${evalRounds.join(', ')}.`}`);
    const steps = localStepsPerRound(s);
    notes.push(`Same budget in examples seen (batch ${s.train.batchSize}): a federated round is ${s.clientsPerRound} × ${s.train.localSteps} local steps; centralized trains ${s.train.localSteps * s.clientsPerRound} steps per round on the pooled train splits; local-only trains ${steps.reduce((a, b) => a + b, 0)} steps per client in all (${s.clientsPerRound}/${s.clients} of ${s.rounds} × ${ownStepsPerRound(s)}${s.personal.length ? `: ${s.train.localSteps} shared + ${s.personalTrain.steps} personal` : ''}), carrying its optimizer state between round-sized chunks as federated clients do. Baselines are evaluated after every round-sized chunk.`);
    const evalSizes = clients.map((c) => c.eval.length);
    const cpu = cpus()[0]?.model;
    const report: Report = {
      schemaVersion: REPORT_SCHEMA_VERSION,
      title: `fedlora simulation: ${s.name}${s.description ? ` — ${s.description}` : ''}`,
      createdAt: new Date().toISOString(),
      scenario: { ...(s as unknown as Record<string, unknown>), name: s.name, strategy: s.strategy, seed: s.seed },
      versions: { fedlora: packageVersion(), node: process.version, protocol: PROTOCOL_VERSION },
      environment: { platform: `${platform()}-${arch()}`, cpus: cpus().length, ...(cpu ? { cpuModel: cpu } : {}), backend: workers[0]!.backend, workers: workers.length },
      model: { name: s.model, parameters: workers[0]!.parameters, adapterParameters, fullModelBytes },
      metricsNote: 'Accuracy by scoring each candidate completion; F1 is macro-F1 over the candidates; loss is mean completion-token cross-entropy (nats). Means are unweighted over clients.',
      clients: clients.map((c) => ({ id: c.id, rank: c.rank, trainExamples: c.train.length, evalExamples: c.eval.length, labelCounts: c.labelCounts, backend: workers[0]!.backend })),
      rounds: mainRounds,
      final: { global: mainResult.final.global, personalized: mainResult.final.personalized!, rounds: main.coordinator.completedRounds, exported: exportedOf(main) },
      evaluation: {
        global: globalOn, testExamples: test?.examples.length ?? 0,
        perClient: { min: Math.min(...evalSizes), max: Math.max(...evalSizes), total: evalSizes.reduce((a, b) => a + b, 0) }, finalWindow: K,
      },
      references,
      baselines: {
        ...(local ? { localOnly: { final: finalFigure(localCurve, K), perClient: localPer, curve: localCurve } } : {}),
        ...(central ? {
          centralized: {
            final: finalFigure(centralCurve, K), curve: centralCurve,
            ...(test ? { clients: { final: finalFigure(centralClientsCurve, K), curve: centralClientsCurve } } : {}),
          },
        } : {}),
        strategies: strategyResults,
      },
      wallMs: Date.now() - t0,
      notes,
    };
    const files = await writeReport(o.outDir, report);
    return { report, files, outDir: o.outDir };
  } finally {
    if (ticker) clearInterval(ticker);
    if (!finished) log.warn('simulation stopped before the end; shutting workers and coordinators down');
    await Promise.all(runs.map((r) => r.coordinator?.close().catch((e: unknown) => log.warn(`closing ${r.runId}: ${errorMessage(e)}`))));
    await Promise.all(workers.map((w) => w.stop()));
  }
}

/**
 * Runs a scenario: once, or once per seed when it lists `seeds` (each seed in `<out>/seed-<n>/`
 * with its own full report), then one report at `<out>` whose every figure is mean ± sd over seeds.
 */
export async function runScenario(s: Scenario, o: RunOptions): Promise<SimResult> {
  // a `dp` scenario is a privacy–utility curve: one run per budget (simulations/privacy-curve.ts)
  if (s.dp) return runPrivacyCurve(s, o, runScenario);
  if (s.seeds.length === 0) return runSimulation(s, o);
  if (s.seeds.length === 1) return runSimulation({ ...s, seed: s.seeds[0]!, seeds: [] }, o);
  const reports: Report[] = [];
  const seedRuns: SeedRun[] = [];
  for (const [i, seed] of s.seeds.entries()) {
    const dir = `seed-${seed}`;
    const message = `seed ${seed} (${i + 1}/${s.seeds.length}) → ${join(o.outDir, dir)}`;
    log.info(message);
    try { o.onEvent?.({ type: 'log', message }); } catch { /* observer errors are not ours */ }
    const r = await runSimulation({ ...s, seed, seeds: [] }, { ...o, outDir: join(o.outDir, dir) });
    reports.push(r.report);
    seedRuns.push({ seed, dir, wallMs: r.report.wallMs });
  }
  const report = aggregateReports(reports, seedRuns);
  const files = await writeReport(o.outDir, report);
  return { report, files, outDir: o.outDir };
}
