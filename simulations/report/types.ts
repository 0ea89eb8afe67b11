/**
 * The shape of `report.json`, the one artefact a simulation leaves behind. The HTML page, the PNG and
 * the terminal table are all rendered from it, so a report can be re-rendered later from the JSON.
 *
 * Conventions: metrics are fractions in [0, 1] (accuracy, F1) or mean token cross-entropy in nats
 * (loss); `null` means "not measured" (e.g. a client that dropped out). Averages "over clients" are
 * unweighted means of per-client figures, the number the acceptance criterion compares.
 */

export const REPORT_SCHEMA_VERSION = 2;

/** Evaluation of one adapter on one eval set (or the mean over clients' eval sets). */
export interface EvalMetrics {
  loss: number | null;
  accuracy: number | null;
  /** F1 of the positive class (e.g. "spam"); macro-F1 if the scenario says so in `metricsNote`. */
  f1: number | null;
  /** Eval examples behind the figure (summed over clients for a mean). */
  n?: number;
  /** Sample standard deviation over seeds (multi-seed reports only; absent for a single seed). */
  sd?: { loss: number | null; accuracy: number | null; f1: number | null };
  /** Seeds behind a mean ± sd figure (multi-seed reports only). */
  seeds?: number;
}

/**
 * A final figure: `mean` over the last `window` evaluated rounds (the headline number), plus the
 * last evaluated round alone. Both are EvalMetrics (with `sd` over seeds in a multi-seed report).
 */
export interface FinalFigure extends EvalMetrics {
  /** The last evaluated round alone. */
  last?: EvalMetrics;
  /** How many evaluated rounds the mean covers (the scenario's finalWindow, clamped to the rounds there are). */
  window?: number;
}

/** Accuracy of label-only predictors, from the data alone: what an adapter must beat. */
export interface ReferenceRates {
  /** Always predicting the majority label of the pooled training data (every client's train split). */
  alwaysMajority: {
    label: string;
    /** On the pooled test set (absent without one). */
    test?: EvalMetrics;
    /** Mean over clients of the rate on each client's own eval split. */
    clients: EvalMetrics;
  };
  /** Each client predicting its own training majority on its own eval split (mean over clients). */
  perClientMajority: { clients: EvalMetrics };
}

/** How the figures were measured. */
export interface EvaluationInfo {
  /** Where the global adapter (and the centralized baseline) is measured: the pooled test set, or the mean over clients' eval splits. */
  global: 'test' | 'clients';
  /** Size of the pooled test set (0 = none). */
  testExamples: number;
  /** Eval examples per client: the smallest, the largest and the total. */
  perClient: { min: number; max: number; total: number };
  /** Final figures are the mean over this many last evaluated rounds (the scenario's finalWindow). */
  finalWindow: number;
}

/** One seed of a multi-seed report. */
export interface SeedRun {
  seed: number;
  /** The seed's own report folder, relative to the multi-seed report's folder. */
  dir: string;
  wallMs: number;
}

export interface ClientInfo {
  id: string;
  /** LoRA rank this client trains. */
  rank: number;
  trainExamples: number;
  evalExamples: number;
  /** Label histogram of the client's data, e.g. {ham: 120, spam: 8}. */
  labelCounts?: Record<string, number>;
  backend?: string;
}

export interface ClientRound {
  clientId: string;
  /** Sampled for this round. */
  participated: boolean;
  /** Sampled but its update did not reach the aggregate (crash, timeout, injected dropout). */
  dropped: boolean;
  straggler?: boolean;
  rank?: number;
  trainLoss?: number | null;
  localSteps?: number;
  /** Global adapter (after this round's aggregation) on this client's eval split (every round without a pooled test set; the last round only with one). */
  global?: EvalMetrics;
  /** Global adapter + this client's personal tensors on its eval split. */
  personalized?: EvalMetrics;
  bytesUp: number;
  bytesDown: number;
}

export interface RoundRecord {
  round: number;
  participants: string[];
  dropouts: string[];
  stragglers?: string[];
  /** Mean training loss over participants that finished. */
  trainLoss: number | null;
  /**
   * The global adapter after this round's aggregation: on the pooled test set when the scenario has
   * one (evaluation.global = "test"), else the mean over clients of their eval splits.
   */
  global: EvalMetrics;
  /** Mean over the clients that trained this round of the personalized figures (measured right after local training). */
  personalized: EvalMetrics;
  clients: ClientRound[];
  bytes: {
    up: number;
    down: number;
    /** What the same round would have moved sending the full model both ways to every participant. */
    fullModelEquivalent: number;
  };
  /** Wall time per phase in ms, e.g. {sample, distribute, train, secagg, aggregate, eval}. */
  phaseMs: Record<string, number>;
  wallMs: number;
  /** Client-level DP runs: ε spent after this round, at δ (the coordinator's accountant). */
  privacy?: { epsilon: number; delta: number };
}

export interface CurvePoint {
  round: number;
  loss?: number | null;
  accuracy?: number | null;
  f1?: number | null;
  /** Sample sd over seeds (multi-seed reports only). */
  sd?: { loss: number | null; accuracy: number | null; f1: number | null };
}

export interface StrategyResult {
  strategy: string;
  final: { global: FinalFigure; personalized?: FinalFigure };
  /** Per-round figures (global adapter as in RoundRecord.global; personalized where the strategy has it). */
  curve: CurvePoint[];
  personalizedCurve?: CurvePoint[];
  bytesUpTotal?: number;
  wallMs?: number;
}

export interface Baselines {
  /** Each client trains alone on its own data with the same local-step budget. */
  localOnly?: {
    final: FinalFigure;
    perClient: { clientId: string; metrics: EvalMetrics }[];
    curve?: CurvePoint[];
  };
  /** One LoRA trained on all clients' pooled train data: the upper bound. */
  centralized?: {
    /** Measured where the global adapter is (evaluation.global). */
    final: FinalFigure;
    curve?: CurvePoint[];
    /** Mean over clients' eval splits, when the headline figure is on the pooled test set. */
    clients?: { final: FinalFigure; curve: CurvePoint[] };
  };
  /** Every strategy run on the same partition and budget (including the main one, if repeated). */
  strategies: StrategyResult[];
}

export interface Report {
  schemaVersion: typeof REPORT_SCHEMA_VERSION;
  title?: string;
  /** ISO timestamp. */
  createdAt: string;
  /** The scenario as run (after defaults), so the report reproduces. */
  scenario: { name: string; strategy: string; seed: number | string; [key: string]: unknown };
  versions: { fedlora: string; node: string; [key: string]: string | number };
  environment?: { platform?: string; cpus?: number; cpuModel?: string; backend?: string; gpu?: string; [key: string]: unknown };
  model?: { name: string; parameters: number; adapterParameters: number; fullModelBytes: number; [key: string]: unknown };
  /** Which label counts as positive for F1 and any other note on how metrics were computed. */
  metricsNote?: string;
  clients: ClientInfo[];
  rounds: RoundRecord[];
  /** The main run's final figures (mean over the last evaluated rounds, and the last one), repeated for convenience. */
  final: {
    global: FinalFigure;
    personalized: FinalFigure;
    rounds: number;
    /**
     * The exported final adapter on every client's eval split (mean over clients): the global adapter
     * at each client's rank, and with the client's personal tensors in place.
     */
    exported?: { global: EvalMetrics; personalized: EvalMetrics };
  };
  /** How the figures were measured (absent in reports from before schema 2's runner). */
  evaluation?: EvaluationInfo;
  /** Label-only reference rates, drawn as dashed lines on the accuracy charts. */
  references?: ReferenceRates;
  /** A multi-seed report: every figure is the mean over these seeds, with `sd`; each seed has its own report. */
  seeds?: SeedRun[];
  baselines: Baselines;
  wallMs: number;
  notes?: string[];
}

/** Light structural check for a report read back from disk; throws TypeError naming the field. */
export function assertReport(x: unknown): asserts x is Report {
  const fail = (m: string): never => {
    throw new TypeError(`report: ${m}`);
  };
  if (typeof x !== 'object' || x === null) fail('not an object');
  const r = x as Record<string, unknown>;
  if (r.schemaVersion !== REPORT_SCHEMA_VERSION) fail(`schemaVersion ${JSON.stringify(r.schemaVersion)} is not ${REPORT_SCHEMA_VERSION}`);
  if (typeof r.scenario !== 'object' || r.scenario === null) fail('scenario missing');
  if (!Array.isArray(r.clients)) fail('clients is not an array');
  if (!Array.isArray(r.rounds)) fail('rounds is not an array');
  (r.rounds as unknown[]).forEach((rd, i) => {
    const o = rd as Record<string, unknown>;
    if (typeof o?.round !== 'number') fail(`rounds[${i}].round is not a number`);
    if (!Array.isArray(o.clients)) fail(`rounds[${i}].clients is not an array`);
    if (typeof o.bytes !== 'object' || o.bytes === null) fail(`rounds[${i}].bytes missing`);
  });
  if (typeof r.baselines !== 'object' || r.baselines === null || !Array.isArray((r.baselines as Record<string, unknown>).strategies)) fail('baselines.strategies is not an array');
  if (typeof r.final !== 'object' || r.final === null) fail('final missing');
}
