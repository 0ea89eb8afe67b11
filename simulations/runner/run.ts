/**
 * `runSimulation(scenario)`: one coordinator per strategy and N real clients over socket.io on
 * loopback, hosted by worker processes (one shared copy of the base model each), plus the local-only
 * and centralized baselines on the same partition and step budget, all concurrently; then a final
 * evaluation of every run's global and personalized adapters on every client's held-out split, and
 * the report (report.json / .html / .png via simulations/report).
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
import { REPORT_SCHEMA_VERSION, writeReport, type Report, type RoundRecord, type ClientRound, type EvalMetrics, type CurvePoint, type StrategyResult } from '../report/index.js';
import { maxRankOf, type Scenario, type ScenarioStrategy } from '../scenario.js';
import { prepareClients, type SimClient } from './data.js';
import { SimWorker } from './pool.js';
import { packageVersion } from '../../shared/package-root.js';
import type { CentralResult, ClientRoundMsg, EvalFigures, EvalResult, FedClientSpec, FromWorker, LocalResult, WorkerInit } from './messages.js';

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
}

export type SimEvent =
  | { type: 'progress'; progress: SimProgress }
  | { type: 'round'; run: string; round: number; rounds: number; contributors: number; participants: number; dropouts: string[]; trainLoss: number | null; globalAcc: number | null; personalAcc: number | null; wallMs: number }
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
}

const mean = (xs: number[]): number | null => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);

function meanOf(ms: (EvalFigures | EvalMetrics | undefined)[]): EvalMetrics {
  const have = ms.filter((m): m is EvalFigures | EvalMetrics => m !== undefined);
  const pick = (k: 'loss' | 'accuracy' | 'f1') => mean(have.map((m) => m[k]).filter((x): x is number => typeof x === 'number' && Number.isFinite(x)));
  return { loss: pick('loss'), accuracy: pick('accuracy'), f1: pick('f1'), n: have.reduce((s, m) => s + (m.n ?? 0), 0) };
}

function fromWire(e: { loss: number; accuracy: number; f1?: number; examples: number } | undefined): EvalMetrics | undefined {
  return e ? { loss: e.loss, accuracy: e.accuracy, f1: e.f1 ?? null, n: e.examples } : undefined;
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
  const clients = await prepareClients(s, o.outDir);
  say(`${clients.length} clients (${s.partition.kind === 'dirichlet' ? `dirichlet α=${s.partition.alpha}` : 'iid'}), ranks ${clients.map((c) => c.rank).join(',')}, ${clients.reduce((a, c) => a + c.train.length, 0)} train / ${clients.reduce((a, c) => a + c.eval.length, 0)} eval examples`);

  const strategies: ScenarioStrategy[] = [s.strategy, ...s.compare];
  const victim = s.faults.kill ? clients[s.faults.kill.client]! : null;
  const nWorkers = Math.max(1, Math.min(s.workers || availableParallelism(), clients.length));
  const init: WorkerInit = {
    type: 'init', modelDir: s.model, backend: s.backend, maxSeqLen: s.train.maxSeqLen, seed: s.seed, loraAlpha: s.loraAlpha, maxRank,
    stragglers: s.faults.stragglers,
  };
  const workers: SimWorker[] = [];
  const runs: RunState[] = [];
  let finished = false;
  let ticker: NodeJS.Timeout | undefined;
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

    function onRound(st: RunState, rec: CoordRound): void {
      for (const w of workers) w.post({ type: 'roundEnd', runId: st.runId, round: rec.round });
      if (rec.status !== 'completed') return;
      const dropouts = rec.participants.filter((p) => p.status !== 'uploaded').map((p) => p.clientId);
      emit({
        type: 'round', run: st.runId, round: rec.round, rounds: s.rounds, contributors: rec.contributors, participants: rec.participants.length, dropouts,
        trainLoss: rec.trainLoss ?? null, globalAcc: rec.globalEval?.accuracy ?? null, personalAcc: rec.personalEval?.accuracy ?? null, wallMs: rec.endedAt - rec.startedAt,
      });
    }

    const listenFor = (st: RunState) => (m: FromWorker) => {
      if (!('runId' in m) || m.runId !== st.runId) return;
      const round = st.coordinator.status().round;
      if (m.type === 'clientRound') st.msgs.set(`${m.clientId}:${m.round}`, m);
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
        killed: null, startedAt: Date.now(), endedAt: 0,
      };
      const coordOpts: CoordinatorOptions = {
        ...(o.coordinatorExtra ?? {}),
        ...(s.secureAggregation ? {} : { insecureAggregation: true }),
        authorizedClients: [...identities.values()].map((id) => formatPublicKey(id.publicKey)),
        rejoinGraceMs: s.rejoinGraceMs,
        modelDir: s.model, stateDir: join(dir, 'coordinator'), exportDir: join(dir, 'adapter'), rounds: s.rounds, clientsPerRound: s.clientsPerRound,
        minClients: s.minClients, roundTimeoutMs: s.roundTimeoutMs, strategy, maxRank, loraAlpha: s.loraAlpha, localSteps: s.train.localSteps,
        lr: s.train.lr, batchSize: s.train.batchSize, seed: s.seed, joinWaitMs: s.joinWaitMs,
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
      const extra = o.clientExtra ?? {};
      const coordinatorKey = st.coordinator.publicKey!;
      for (const w of pool) {
        const mine = clients.filter((c) => hostOf(c) === w && !(isMain && victim?.id === c.id));
        if (mine.length) w.post({ type: 'fed', runId, url, coordinatorKey, secure: s.secureAggregation, rounds: s.rounds, personal: s.personal, clients: mine.map(specFor), clientExtra: extra });
      }
      if (victim) {
        // the client that gets killed lives alone in its own process (main run); elsewhere it is ordinary
        const host = isMain ? victimWorker! : hostOf(victim);
        host.post({ type: 'fed', runId, url, coordinatorKey, secure: s.secureAggregation, rounds: s.rounds, personal: s.personal, clients: [specFor(victim)], clientExtra: extra });
      }
      st.startedAt = Date.now();
      return { st, done: st.coordinator.done.then(() => { st.endedAt = Date.now(); for (const w of workers) w.post({ type: 'fedEnd', runId }); }) };
    };



    ticker = setInterval(() => {
      const main = runs.at(-1);
      if (!main) return;
      const st = main.coordinator.status();
      emit({
        type: 'progress', progress: {
          run: main.runId, phase: st.phase, round: st.round, rounds: st.rounds, participants: st.participating.length,
          uploaded: st.participating.filter((p) => p.status === 'uploaded').length, dropped: st.participating.filter((p) => p.status === 'dropped' || p.status === 'timeout').length,
          elapsedMs: Date.now() - t0, runsDone: runs.filter((r) => r.endedAt > 0).length, runsTotal: strategies.length,
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
        const { st, done } = await startRun(strategy);
        await Promise.race([done, timeout]);
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
      // starve the interactive secure-aggregation phases of CPU (2-core budget). Centralized on one
      // worker, the local-only clients on the others (or all on one when there is a single worker).
      const budgetPerClient = s.rounds;
      const localWorkers = pool.length > 1 && s.baselines.centralized ? pool.slice(1) : pool;
      const localJob: Promise<LocalResult[]> | null = s.baselines.localOnly
        ? Promise.all(localWorkers.map((w, wi) => w.job<LocalResult>({
          type: 'local', clients: clients.filter((_, ci) => ci % localWorkers.length === wi).map((c) => ({ id: c.id, trainFile: c.trainFile, evalFile: c.evalFile, rank: c.rank })),
          rounds: budgetPerClient, steps: s.train.localSteps, lr: s.train.lr, batchSize: s.train.batchSize,
        })))
        : null;
      const centralJob: Promise<CentralResult> | null = s.baselines.centralized
        ? pool[0]!.job<CentralResult>({
          type: 'central', trainFiles: clients.map((c) => c.trainFile), evalClients: clients.map((c) => ({ id: c.id, evalFile: c.evalFile })),
      // the same total number of local steps as one federated run (every sampled client, every round)
          rounds: s.rounds, stepsPerRound: s.train.localSteps * s.clientsPerRound, lr: s.train.lr, batchSize: s.train.batchSize,
        })
        : null;
      local = localJob ? (await Promise.race([localJob, timeout])).flatMap((r) => r.clients) : null;
      central = centralJob ? await Promise.race([centralJob, timeout]) : null;
    } finally {
      clearTimeout(timer);
    }
    finished = true;
    clearInterval(ticker);

    // ---- the report
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
        const perClient: ClientRound[] = clientOrder.map((id) => {
          const p = byId.get(id);
          const msg = st.msgs.get(`${id}:${rec.round}`);
          const next = st.msgs.get(`${id}:${rec.round + 1}`);
          // the global adapter after round r is what clients evaluate at the start of round r+1
          const global = isLast ? st.final?.clients.find((c) => c.id === id)?.global : fromWire(next?.global);
          const personalized = fromWire(msg?.personal) ?? (isLast ? st.final?.clients.find((c) => c.id === id)?.personalized : undefined);
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
        return {
          round: rec.round, participants: rec.participants.map((p) => p.clientId), dropouts, stragglers: [...straggled].sort(),
          trainLoss: rec.trainLoss ?? null,
          global: meanOf(perClient.map((c) => c.global)), personalized: meanOf(perClient.map((c) => c.personalized)),
          clients: perClient,
          bytes: { up: rec.bytesUp, down: rec.bytesDown, fullModelEquivalent: rec.participants.length * fullModelBytes * 2 },
          phaseMs: { wait: Math.max(0, wait), round: rec.endedAt - rec.startedAt },
          wallMs: Math.max(0, wait) + rec.endedAt - rec.startedAt,
        };
      });
    };
    const curveOf = (rs: RoundRecord[], key: 'global' | 'personalized'): CurvePoint[] => rs.map((r) => ({ round: r.round, loss: r[key].loss, accuracy: r[key].accuracy, f1: r[key].f1 }));
    const finalOf = (st: RunState) => ({
      global: meanOf(st.final?.clients.map((c) => c.global) ?? []), personalized: meanOf(st.final?.clients.map((c) => c.personalized) ?? []),
    });
    const mainRounds = roundsOf(main);
    const strategyResults: StrategyResult[] = runs.map((st) => {
      const rs = st === main ? mainRounds : roundsOf(st);
      return {
        strategy: st.strategy, final: finalOf(st), curve: curveOf(rs, 'global'), personalizedCurve: curveOf(rs, 'personalized'),
        bytesUpTotal: rs.reduce((a, r) => a + r.bytes.up, 0), wallMs: st.endedAt - st.startedAt,
      };
    });
    const localPer = local?.map((c) => ({ clientId: c.id, metrics: meanOf([c.curve.at(-1)]) })) ?? [];
    const localCurve: CurvePoint[] = local ? Array.from({ length: s.rounds }, (_, i) => {
      const m = meanOf(local!.map((c) => c.curve[i]));
      return { round: i + 1, loss: m.loss, accuracy: m.accuracy, f1: m.f1 };
    }) : [];
    const shapes = targetShapes(info, defaultTargetModules(info.config));
    let adapterParameters = 0;
    for (const sh of shapes.values()) adapterParameters += maxRank * (sh.in + sh.out);
    const mainFinal = finalOf(main);
    const notes: string[] = [];
    if (main.killed) notes.push(`Client ${main.killed.clientId} was killed with SIGKILL ${s.faults.kill!.afterMs} ms into its training in round ${main.killed.round}; it did not come back.`);
    const dropTotal = [...main.drops.values()].reduce((a, x) => a + x.size, 0);
    if (dropTotal) notes.push(`${dropTotal} injected dropout(s): the client trained, then disconnected instead of uploading, and rejoined for the next round.`);
    const stragTotal = [...main.straggles.values()].reduce((a, x) => a + x.size, 0);
    if (stragTotal) notes.push(`${stragTotal} straggler delay(s) injected; the coordinator's ${s.roundTimeoutMs} ms round timeout decided who was left out.`);
    notes.push('Personalized = the final global adapter with each client\'s personal tensors (its personalization globs, and B under fedsa) in place; per-round personalized figures are measured right after local training.');
    notes.push(`Baselines share the partition and the local-step budget: local-only trains ${s.rounds} × ${s.train.localSteps} steps per client; centralized trains ${s.rounds} × ${s.train.localSteps * s.clientsPerRound} steps on the pooled train splits.`);
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
      final: { ...mainFinal, rounds: main.coordinator.completedRounds },
      baselines: {
        ...(local ? { localOnly: { final: meanOf(localPer.map((p) => p.metrics)), perClient: localPer, curve: localCurve } } : {}),
        ...(central ? { centralized: { final: meanOf([central.curve.at(-1)]), curve: central.curve.map((m, i) => ({ round: i + 1, loss: m.loss, accuracy: m.accuracy, f1: m.f1 })) } } : {}),
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
