/**
 * A simulation worker process: loads the base model once (one read-only copy of the weights per
 * process) and hosts a group of real `Client`s that all share it, plus baseline jobs (local-only,
 * centralized, final evaluation). Driven over the IPC channel by the runner (messages.ts).
 *
 * Fault injection lives here because it acts on the client side: a dropout trains, then
 * disconnects instead of uploading (and rejoins after the round); a straggler holds its finished
 * update back for a seeded delay. Kills are done by the parent with SIGKILL on this whole process.
 */
import { join } from 'node:path';
import { Client, type TrainerFactory } from '../../client/index.js';
import { createTrainer, resolveTokenizer, type LocalTrainer } from '../../client/trainer.js';
import { loadCausalLM, disposeRuntime, type CausalLM } from '../../shared/model/causal-lm.js';
import { loadJsonlDataset, type Example } from '../../shared/data/jsonl.js';
import { evaluate } from '../../shared/train/eval.js';
import { Rng } from '../../shared/data/random.js';
import { errorMessage, FedloraError } from '../../shared/errors.js';
import { currentBackend } from '../../shared/backend/index.js';
import { adapterForRank, getStrategy, initLoraAdapter } from '../../shared/aggregation/index.js';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { globMatcher } from '../../shared/protocol/index.js';
import { loadSafetensors, readFloatTensor } from '../../shared/model/safetensors.js';
import type { LoraAdapter } from '../../shared/lora/adapter.js';
import { hasXs, xsToLora } from '../../shared/lora/xs.js';
import type { TextTokenizer } from '../../shared/model/tokenizer.js';
import { readModelInfo, targetShapes, defaultTargetModules } from '../../shared/model/model-info.js';
import type { CentralJob, CentralResult, EvalFigures, EvalJob, EvalResult, FedJoin, FromWorker, GlobalEvalJob, GlobalEvalResult, LocalJob, LocalResult, ToWorker, WorkerInit } from './messages.js';

let init: WorkerInit | null = null;
let lm: CausalLM | null = null;
let tok: TextTokenizer | null = null;

function send(m: FromWorker): void {
  if (process.connected) process.send!(m);
}

function figures(m: { loss: number; accuracy: number; f1?: number; examples: number }): EvalFigures {
  const fin = (x: number | undefined) => (x !== undefined && Number.isFinite(x) ? x : null);
  return { loss: fin(m.loss), accuracy: fin(m.accuracy), f1: fin(m.f1), n: m.examples };
}

async function evalOn(adapter: LoraAdapter, examples: readonly Example[]) {
  if (examples.length === 0) return { loss: NaN, accuracy: NaN, examples: 0 };
  // a LoRA-XS adapter is evaluated as the plain LoRA it equals (B' = B·R)
  const rt = lm!.runtime(hasXs(adapter) ? xsToLora(adapter) : adapter);
  try {
    return await evaluate(lm!, tok!, examples, rt, { maxSeqLen: init!.maxSeqLen });
  } finally {
    disposeRuntime(rt);
  }
}

/** How a federated client's evaluations are filtered (simulations measure the global adapter themselves). */
interface EvalPolicy {
  /** The round being trained now (1-based). */
  round: () => number;
  /** Answer the evaluations asked for before the round's first training (the incoming global adapter) with the empty-set result. */
  skipGlobal: boolean;
  /** Whether this round's evaluations after training (the personalized adapter) run. */
  evaluates: (round: number) => boolean;
}

/**
 * Trains on the client's train file; evaluates on its own eval file (the split is the runner's).
 * With a policy, an evaluation asked for in a round before that round's first training (the
 * client's look at the incoming global adapter, Client.#train) is answered with the empty-set
 * result (no examples, no figures) when `skipGlobal`: the runner measures each round's global
 * adapter once itself. Evaluations after training (the personalized adapter) run in the rounds
 * the policy evaluates.
 */
async function simTrainer(trainFile: string, evalFile: string, seed: number, policy?: EvalPolicy): Promise<LocalTrainer> {
  const [train, ev] = await Promise.all([loadJsonlDataset(trainFile), loadJsonlDataset(evalFile)]);
  const inner = await createTrainer({ modelDir: init!.modelDir, examples: train, lm: lm!, tokenizer: tok!, evalFraction: 0, seed, maxSeqLen: init!.maxSeqLen });
  let trainedIn = 0;
  return {
    moduleShapes: inner.moduleShapes,
    trainExamples: inner.trainExamples,
    evalExamples: ev.length,
    train: async (start, o) => {
      const r = await inner.train(start, o);
      if (policy) trainedIn = policy.round();
      return r;
    },
    evaluate: (a) => {
      if (!policy) return evalOn(a, ev);
      const round = policy.round();
      if (trainedIn !== round) return policy.skipGlobal ? evalOn(a, []) : evalOn(a, ev);
      return policy.evaluates(round) ? evalOn(a, ev) : evalOn(a, []);
    },
    dispose: () => inner.dispose(),
  };
}

async function initialAdapter(rank: number): Promise<LoraAdapter> {
  const info = await readModelInfo(init!.modelDir);
  const targets = defaultTargetModules(info.config);
  // the same seeded init every strategy starts from, so baselines begin where the federated runs do
  const full = initLoraAdapter(targetShapes(info, targets), init!.maxRank, init!.loraAlpha, init!.seed, {
    targetModules: targets, fanInFanOut: info.fanInFanOut, useRslora: false, taskType: 'CAUSAL_LM', baseModelNameOrPath: null,
  });
  return adapterForRank(full, rank);
}

// ------------------------------------------------------------------ federated clients

interface Hosted { spec: FedJoin['clients'][number]; client: Client; dropped: Set<number>; stopped: boolean }
const runs = new Map<string, { join: FedJoin; hosted: Map<string, Hosted> }>();
/** Last completed round per federated run (from the runner's roundEnd messages). */
const roundsDone = new Map<string, number>();

function startClient(join_: FedJoin, spec: FedJoin['clients'][number], dropped: Set<number>): Hosted {
  const runId = join_.runId;
  const strag = init!.stragglers;
  const factory: TrainerFactory = async (f) => {
    const t = await simTrainer(spec.trainFile, spec.evalFile, f.seed, {
      // the round being trained: the runner tells every worker when a round ends
      round: () => (roundsDone.get(runId) ?? 0) + 1,
      skipGlobal: init!.skipClientGlobalEval === true,
      evaluates: (r) => !join_.evalRounds || join_.evalRounds.includes(r),
    });
    return {
      ...t,
      moduleShapes: t.moduleShapes, trainExamples: t.trainExamples, evalExamples: t.evalExamples,
      async train(start, o) {
        if (spec.reportTrainStart) send({ type: 'trainStart', runId, clientId: spec.id });
        const res = await t.train(start, o);
        if (strag && strag.fraction > 0) {
          // the round's training seed is unique per (round, client): the draw is reproducible
          const rng = new Rng(`straggle:${init!.seed}:${spec.id}:${o.seed}`);
          if (rng.next() < strag.fraction) {
            const delayMs = Math.round(strag.minDelayMs + rng.next() * (strag.maxDelayMs - strag.minDelayMs));
            send({ type: 'straggle', runId, clientId: spec.id, delayMs });
            await new Promise((r) => setTimeout(r, delayMs));
          }
        }
        return res;
      },
    };
  };
  const h: Hosted = { spec, dropped, stopped: false, client: undefined as unknown as Client };
  const client = new Client({
    ...(join_.clientExtra ?? {}),
    coordinatorUrl: join_.url, dataFile: spec.trainFile, stateDir: spec.stateDir, clientId: spec.id, maxRank: spec.maxRank,
    identity: spec.identityFile, coordinatorKey: join_.coordinatorKey, ...(join_.secure ? {} : { insecureAggregation: true }),
    personal: join_.personal, modelDir: init!.modelDir, backend: init!.backend, seed: init!.seed, evalFraction: 0,
    reconnectInitialMs: 200, reconnectMaxMs: 2000, trainerFactory: factory,
    observe: {
      upload: (_bytes, round) => {
        if (spec.dropRounds.includes(round) && !dropped.has(round)) {
          dropped.add(round);
          h.stopped = true;
          send({ type: 'dropped', runId, clientId: spec.id, round });
          // stop() disconnects synchronously, so the upload that follows is never sent
          void client.stop();
        }
      },
      round: (s) => send({
        type: 'clientRound', runId, clientId: spec.id, round: s.round, rank: s.rank, trainLoss: s.trainLoss, steps: s.steps,
        ...(s.global ? { global: s.global } : {}), ...(s.personal ? { personal: s.personal } : {}),
        bytesUp: s.bytesUp, bytesDown: s.bytesDown, accepted: s.accepted,
      }),
    },
  });
  h.client = client;
  client.run().catch((e: unknown) => {
    if (!h.stopped) send({ type: 'clientError', runId, clientId: spec.id, message: errorMessage(e) });
  });
  return h;
}

function onFed(m: FedJoin): void {
  const hosted = new Map<string, Hosted>();
  runs.set(m.runId, { join: m, hosted });
  for (const spec of m.clients) hosted.set(spec.id, startClient(m, spec, new Set()));
}

function onRoundEnd(runId: string, round: number): void {
  roundsDone.set(runId, Math.max(round, roundsDone.get(runId) ?? 0));
  const run = runs.get(runId);
  if (!run || round >= run.join.rounds) return;
  // dropped clients come back for the next round, as a restarted device would
  for (const [id, h] of run.hosted) {
    if (h.stopped) run.hosted.set(id, startClient(run.join, h.spec, h.dropped));
  }
}

async function onFedEnd(runId: string): Promise<void> {
  const run = runs.get(runId);
  if (!run) return;
  runs.delete(runId);
  await Promise.all([...run.hosted.values()].map((h) => { h.stopped = true; return h.client.stop(); }));
}

// ------------------------------------------------------------------ baselines

async function onLocal(j: LocalJob): Promise<LocalResult> {
  const out: LocalResult = { clients: [] };
  const rounds = j.stepsPerRound.length;
  for (const [ci, c] of j.clients.entries()) {
    const t = await simTrainer(c.trainFile, c.evalFile, init!.seed);
    try {
      let a = await initialAdapter(c.rank);
      let last: EvalFigures | null = null;
      const curve: EvalFigures[] = [];
      for (let r = 1; r <= rounds; r++) {
        progress(j.jobId, 'local', ci * rounds + r - 1, j.clients.length * rounds, `client ${c.id} round ${r}/${rounds}`);
        // the same chunks as a federated client's rounds, minus the averaging; the trainer carries
        // its AdamW moments from one chunk to the next, as a federated client's trainer does
        const steps = j.stepsPerRound[r - 1]!;
        if (steps > 0) {
          a = (await t.train(a, { steps, lr: j.lr, batchSize: j.batchSize, seed: (init!.seed + r * 7919) >>> 0, trainable: () => true })).adapter;
          last = null;
        }
        if (j.evalRounds && !j.evalRounds.includes(r)) { curve.push(NOT_EVALUATED); continue; }
        last ??= figures(await t.evaluate(a));
        curve.push(last);
      }
      out.clients.push({ id: c.id, curve });
    } finally { t.dispose(); }
  }
  return out;
}

const NOT_EVALUATED: EvalFigures = { loss: null, accuracy: null, f1: null, n: 0 };

let lastProgressAt = 0;
/** At most one progress message a second per worker. */
function progress(jobId: string, kind: 'local' | 'central', done: number, total: number, detail: string): void {
  const now = Date.now();
  if (now - lastProgressAt < 1000) return;
  lastProgressAt = now;
  send({ type: 'jobProgress', jobId, kind, done, total, detail });
}

async function onCentral(j: CentralJob): Promise<CentralResult> {
  const pooled: Example[] = [];
  for (const f of j.trainFiles) pooled.push(...(await loadJsonlDataset(f)));
  const evals = await Promise.all(j.evalClients.map(async (c) => ({ id: c.id, ex: await loadJsonlDataset(c.evalFile) })));
  const test = j.testFile ? await loadJsonlDataset(j.testFile) : null;
  const t = await createTrainer({ modelDir: init!.modelDir, examples: pooled, lm: lm!, tokenizer: tok!, evalFraction: 0, seed: init!.seed, maxSeqLen: init!.maxSeqLen });
  try {
    let a = await initialAdapter(init!.maxRank);
    const curve: EvalFigures[] = [];
    const testCurve: EvalFigures[] = [];
    let perClient: CentralResult['perClient'] = [];
    for (let r = 1; r <= j.rounds; r++) {
      progress(j.jobId, 'central', r - 1, j.rounds, `round ${r}/${j.rounds} (${j.stepsPerRound} steps)`);
      a = (await t.train(a, { steps: j.stepsPerRound, lr: j.lr, batchSize: j.batchSize, seed: (init!.seed + r * 7919) >>> 0, trainable: () => true })).adapter;
      if (j.evalRounds && !j.evalRounds.includes(r)) { curve.push(NOT_EVALUATED); if (test) testCurve.push(NOT_EVALUATED); continue; }
      perClient = [];
      for (const c of evals) perClient.push({ id: c.id, metrics: figures(await evalOn(a, c.ex)) });
      curve.push(meanFigures(perClient.map((p) => p.metrics)));
      if (test) testCurve.push(figures(await evalOn(a, test)));
    }
    return { curve, testCurve, perClient };
  } finally { t.dispose(); }
}

export function meanFigures(ms: EvalFigures[]): EvalFigures {
  const avg = (k: 'loss' | 'accuracy' | 'f1') => {
    const xs = ms.map((m) => m[k]).filter((x): x is number => x !== null);
    return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;
  };
  return { loss: avg('loss'), accuracy: avg('accuracy'), f1: avg('f1'), n: ms.reduce((s, m) => s + m.n, 0) };
}

async function onEval(j: EvalJob): Promise<EvalResult> {
  const global = await loadPeftAdapter(j.adapterDir);
  const isPersonalGlob = globMatcher(j.personal);
  const strategy = getStrategy(j.strategy);
  const isPersonal = (n: string) => isPersonalGlob(n) || strategy.isPersonal(n);
  const out: EvalResult = { clients: [] };
  for (const c of j.clients) {
    const ex = await loadJsonlDataset(c.evalFile);
    const g = adapterForRank(global, Math.min(c.rank, global.config.r));
    const gm = figures(await evalOn(g, ex));
    // the personalized model: the final global adapter with this client's personal tensors in place
    const tensors = new Map(g.tensors);
    let replaced = 0;
    try {
      const st = await loadSafetensors(join(c.stateDir, 'personal.safetensors'));
      for (const name of st.entries.keys()) {
        const t = readFloatTensor(st, name);
        const have = tensors.get(name);
        if (isPersonal(name) && have && have.shape.join() === t.shape.join()) { tensors.set(name, t); replaced++; }
      }
    } catch (e) {
      if (!(e instanceof FedloraError && /cannot open/.test(e.message))) throw e;
    }
    const pm = replaced ? figures(await evalOn({ config: g.config, tensors }, ex)) : gm;
    out.clients.push({ id: c.id, global: gm, personalized: pm });
  }
  return out;
}

async function onEvalGlobal(j: GlobalEvalJob): Promise<GlobalEvalResult> {
  const adapter = await loadPeftAdapter(j.adapterDir);
  const out: GlobalEvalResult = { clients: [] };
  if (j.testFile) out.test = figures(await evalOn(adapter, await loadJsonlDataset(j.testFile)));
  for (const c of j.clients ?? []) {
    // each client sees the global adapter at its own rank, as it does at the start of a round
    out.clients.push({ id: c.id, metrics: figures(await evalOn(adapterForRank(adapter, Math.min(c.rank, adapter.config.r)), await loadJsonlDataset(c.evalFile))) });
  }
  return out;
}

// ------------------------------------------------------------------ dispatch

async function handle(m: ToWorker): Promise<void> {
  switch (m.type) {
    case 'init': {
      init = m;
      lm = await loadCausalLM(m.modelDir, { backend: m.backend });
      tok = await resolveTokenizer(m.modelDir, lm.config.vocabSize);
      send({ type: 'ready', backend: currentBackend()?.name ?? m.backend, parameters: lm.parameterCount });
      return;
    }
    case 'fed': onFed(m); return;
    case 'roundEnd': onRoundEnd(m.runId, m.round); return;
    case 'fedEnd': await onFedEnd(m.runId); return;
    case 'exit': {
      await Promise.all([...runs.keys()].map(onFedEnd));
      lm?.dispose();
      process.exit(0);
    }
    // falls through (process.exit never returns)
    case 'local':
    case 'central':
    case 'eval':
    case 'evalGlobal': {
      try {
        const result = m.type === 'local' ? await onLocal(m) : m.type === 'central' ? await onCentral(m) : m.type === 'eval' ? await onEval(m) : await onEvalGlobal(m);
        send({ type: 'result', jobId: m.jobId, result });
      } catch (e) {
        send({ type: 'jobError', jobId: m.jobId, message: errorMessage(e) });
      }
    }
  }
}

process.on('message', (m: ToWorker) => {
  handle(m).catch((e: unknown) => {
    send({ type: 'fatal', message: errorMessage(e) });
    process.exit(1);
  });
});
process.on('disconnect', () => process.exit(0));
