/** IPC between the simulation runner (parent) and its worker processes. Plain JSON-able objects. */
import type { EvalReport } from '../../shared/protocol/index.js';

export interface EvalFigures { loss: number | null; accuracy: number | null; f1: number | null; n: number }

export interface WorkerInit {
  type: 'init';
  modelDir: string;
  backend: string;
  maxSeqLen: number;
  seed: number;
  loraAlpha: number;
  maxRank: number;
  /** Straggler model shared by every federated run in this worker. */
  stragglers: { fraction: number; minDelayMs: number; maxDelayMs: number } | null;
  /**
   * Clients skip their own evaluation of the incoming global adapter (the runner measures each
   * round's global adapter once, in a worker); the personalized evaluation after training stays.
   */
  skipClientGlobalEval?: boolean;
}

export interface FedClientSpec {
  id: string;
  trainFile: string;
  evalFile: string;
  stateDir: string;
  /** The client's enrolled Ed25519 identity file (its public key is on the coordinator's allowlist). */
  identityFile: string;
  maxRank: number;
  /** Rounds in which this client trains but disconnects instead of uploading. */
  dropRounds: number[];
  /** Announce every local training start (the runner kills a client mid-round on it). */
  reportTrainStart?: boolean;
}

export interface FedJoin {
  type: 'fed';
  runId: string;
  url: string;
  /** The coordinator's identity key, pinned by every client. */
  coordinatorKey: string;
  secure: boolean;
  rounds: number;
  personal: string[];
  /** Rounds in which clients evaluate their personalized adapter after training (all when absent). */
  evalRounds?: number[];
  clients: FedClientSpec[];
  /** Extra ClientOptions passed through verbatim (e.g. secure-aggregation switches). */
  clientExtra?: Record<string, unknown>;
}

export interface LocalJob {
  type: 'local';
  jobId: string;
  clients: { id: string; trainFile: string; evalFile: string; rank: number }[];
  /** Local steps in each round-sized chunk; see `localStepsPerRound` in run.ts. */
  stepsPerRound: number[];
  /** Chunks (1-based) after which to evaluate (all when absent); the others get a figure of nulls. */
  evalRounds?: number[];
  lr: number;
  batchSize: number;
}

export interface CentralJob {
  type: 'central';
  jobId: string;
  trainFiles: string[];
  evalClients: { id: string; evalFile: string }[];
  /** The pooled test set, measured after every round-sized chunk as well (absent without one). */
  testFile?: string;
  rounds: number;
  stepsPerRound: number;
  /** Chunks (1-based) after which to evaluate (all when absent); the others get a figure of nulls. */
  evalRounds?: number[];
  lr: number;
  batchSize: number;
}

/** One round's global adapter (a PEFT folder) on the pooled test set, and/or on clients' eval splits at their ranks. */
export interface GlobalEvalJob {
  type: 'evalGlobal';
  jobId: string;
  adapterDir: string;
  testFile?: string;
  clients?: { id: string; evalFile: string; rank: number }[];
}

/** Progress of a long job (baselines), for the runner's progress lines. */
export interface JobProgress { type: 'jobProgress'; jobId: string; kind: 'local' | 'central'; done: number; total: number; detail: string }

export interface EvalJob {
  type: 'eval';
  jobId: string;
  adapterDir: string;
  personal: string[];
  strategy: string;
  clients: { id: string; evalFile: string; stateDir: string; rank: number }[];
}

export type ToWorker =
  | WorkerInit
  | FedJoin
  | LocalJob
  | CentralJob
  | EvalJob
  | GlobalEvalJob
  | { type: 'roundEnd'; runId: string; round: number }
  | { type: 'fedEnd'; runId: string }
  | { type: 'exit' };

export interface ClientRoundMsg {
  type: 'clientRound';
  runId: string;
  clientId: string;
  round: number;
  rank: number;
  trainLoss: number;
  steps: number;
  global?: EvalReport;
  personal?: EvalReport;
  bytesUp: number;
  bytesDown: number;
  accepted: boolean;
}

export interface LocalResult { clients: { id: string; curve: EvalFigures[] }[] }
export interface CentralResult {
  /** Mean over the clients' eval splits after each round-sized chunk. */
  curve: EvalFigures[];
  /** On the pooled test set after each chunk (empty without one). */
  testCurve: EvalFigures[];
  perClient: { id: string; metrics: EvalFigures }[];
}
export interface GlobalEvalResult { test?: EvalFigures; clients: { id: string; metrics: EvalFigures }[] }
export interface EvalResult { clients: { id: string; global: EvalFigures; personalized: EvalFigures }[] }

export type FromWorker =
  | { type: 'ready'; backend: string; parameters: number }
  | ClientRoundMsg
  | { type: 'trainStart'; runId: string; clientId: string }
  | { type: 'dropped'; runId: string; clientId: string; round: number }
  | { type: 'straggle'; runId: string; clientId: string; delayMs: number }
  | { type: 'clientError'; runId: string; clientId: string; message: string }
  | { type: 'result'; jobId: string; result: LocalResult | CentralResult | EvalResult | GlobalEvalResult }
  | JobProgress
  | { type: 'jobError'; jobId: string; message: string }
  | { type: 'fatal'; message: string };
