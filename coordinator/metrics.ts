/**
 * Per-round records, and /metrics through prom-client with bounded cardinality: no label carries a
 * round number or a client id, so the number of series is fixed by the code (phases, statuses, error
 * codes), however long the session runs and however many clients join. Per-client, per-round traffic
 * is in /status (`lastRound`) and in the checkpoints' history, not in Prometheus.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EvalReport } from '../shared/protocol/index.js';
import type { RoundPrivacyRecord } from './engine/dp.js';

export interface ParticipantRecord {
  clientId: string;
  rank: number;
  status: 'uploaded' | 'dropped' | 'timeout' | 'pending';
  weight: number;
  bytesUp: number;
  bytesDown: number;
  trainLoss?: number;
  global?: EvalReport;
  personal?: EvalReport;
}

export interface RoundRecord {
  round: number;
  roundId: string;
  /** Attempt number inside the session (round ids are `<session>:<round>:<attempt>`). */
  attempt?: number;
  status: 'completed' | 'failed';
  /** Why a failed attempt failed. */
  failure?: string;
  /** Participants whose messages made this attempt fail; they sit out the next attempt. */
  culprits?: string[];
  /** Ready participants left out of this attempt because they made the previous one fail. */
  excluded?: { clientId: string; reason: string }[];
  startedAt: number;
  endedAt: number;
  contributors: number;
  participants: ParticipantRecord[];
  /** Example-weighted means over contributors. */
  trainLoss?: number;
  globalEval?: { loss: number; accuracy: number };
  personalEval?: { loss: number; accuracy: number };
  bytesUp: number;
  bytesDown: number;
  /** Bytes a full-model exchange would have cost per client per direction. */
  fullModelBytes: number;
  /** Client-level DP: ε after this round and the settings it was accounted with (coordinator/engine/dp.ts). */
  privacy?: RoundPrivacyRecord;
  /** Secure aggregation of this round: neighbourhood k, threshold t, and whose masks were recovered from shares. */
  secure?: {
    k: number; t: number; clip: number; fracBits: number; droppedAfterSharing: string[]; badShares: number;
    /** Clients that could not open or verify a neighbour's share envelope, and whose. */
    complaints?: { from: string; about: string[] }[];
  };
}

export function weightedEval(ps: ParticipantRecord[], key: 'global' | 'personal'): { loss: number; accuracy: number } | undefined {
  let w = 0, loss = 0, acc = 0;
  for (const p of ps) {
    const e = p[key];
    if (p.status !== 'uploaded' || !e || e.examples <= 0) continue;
    w += e.examples; loss += e.loss * e.examples; acc += e.accuracy * e.examples;
  }
  return w > 0 ? { loss: loss / w, accuracy: acc / w } : undefined;
}

export interface MetricsSnapshot {
  round: number;
  completedRounds: number;
  connected: number;
  ready: number;
  fullModelBytes: number;
  modelBytesServed: number;
  protocolErrors: ReadonlyMap<string, number>;
  history: readonly RoundRecord[];
}

/** Phases whose durations are observed: the engine's, with `training` split into the collector's phases. */
export const OBSERVED_PHASES = ['waiting', 'upload', 'advertise', 'share', 'masked', 'consistency', 'unmask', 'training', 'aggregating'] as const;
const PHASE_SET = new Set<string>(OBSERVED_PHASES);

/** Seconds: 50 ms … 1 h. */
export const DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];
/** Bytes: 1 KiB … 1 GiB, ×4. */
export const BYTES_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576].map((k) => k * 1024);

/** Bytes an error-code label may take: codes are `[A-Z0-9_]`; anything else is counted as `OTHER`. */
const CODE_RE = /^[A-Z][A-Z0-9_]{0,63}$/;

/**
 * The coordinator's Prometheus registry (its own, not prom-client's global one, so several
 * coordinators in one process do not collide). `phase()` is called after every engine step and
 * observes how long each phase lasted; `render()` takes a snapshot, feeds round records it has not
 * seen yet into the histograms, and returns the exposition text.
 */
export class CoordinatorMetrics {
  readonly registry = new Registry();
  readonly contentType = this.registry.contentType;

  readonly #round = new Gauge({ name: 'fedlora_round', help: 'Round currently running or next to run (1-based).', registers: [this.registry] });
  readonly #completed = new Gauge({ name: 'fedlora_completed_rounds', help: 'Rounds aggregated and checkpointed.', registers: [this.registry] });
  readonly #connected = new Gauge({ name: 'fedlora_connected_clients', help: 'Clients connected with a valid hello.', registers: [this.registry] });
  readonly #ready = new Gauge({ name: 'fedlora_ready_clients', help: 'Clients holding the verified base model.', registers: [this.registry] });
  readonly #fullModel = new Gauge({ name: 'fedlora_full_model_bytes', help: 'Size of the base model weights: what one full-model exchange would move per client and direction.', registers: [this.registry] });
  readonly #served = new Counter({ name: 'fedlora_model_bytes_served_total', help: 'Base-model bytes served to clients (one-time downloads).', registers: [this.registry] });
  readonly #errors = new Counter({ name: 'fedlora_protocol_errors_total', help: 'Requests refused, by error code.', labelNames: ['code'] as const, registers: [this.registry] });
  readonly #dpEpsilon = new Gauge({ name: 'fedlora_dp_epsilon', help: 'Client-level DP: epsilon spent after the last completed round (at fedlora_dp_delta); 0 without DP.', registers: [this.registry] });
  readonly #dpDelta = new Gauge({ name: 'fedlora_dp_delta', help: 'Client-level DP: the delta epsilon is reported at.', registers: [this.registry] });
  readonly #rounds = new Counter({ name: 'fedlora_rounds_total', help: 'Round attempts ended, by outcome.', labelNames: ['status'] as const, registers: [this.registry] });
  readonly #roundSeconds = new Histogram({ name: 'fedlora_round_duration_seconds', help: 'Wall time of a round attempt, start to end, by outcome.', labelNames: ['status'] as const, buckets: DURATION_BUCKETS, registers: [this.registry] });
  readonly #phaseSeconds = new Histogram({ name: 'fedlora_round_phase_seconds', help: `Time spent in a phase (${OBSERVED_PHASES.join(', ')}).`, labelNames: ['phase'] as const, buckets: DURATION_BUCKETS, registers: [this.registry] });
  readonly #upload = new Histogram({ name: 'fedlora_upload_bytes', help: 'Bytes one client uploaded in one round (uploaded contributions only).', buckets: BYTES_BUCKETS, registers: [this.registry] });
  readonly #download = new Histogram({ name: 'fedlora_download_bytes', help: 'Bytes sent to one client in one round.', buckets: BYTES_BUCKETS, registers: [this.registry] });
  readonly #lastContributors = new Gauge({ name: 'fedlora_last_round_contributors', help: 'Clients whose update went into the last completed round.', registers: [this.registry] });
  readonly #lastVsFull = new Gauge({ name: 'fedlora_last_round_bytes_vs_full_model', help: 'Mean per-client traffic (up+down) of the last completed round over two full-model transfers.', registers: [this.registry] });
  readonly #lastEval = new Gauge({ name: 'fedlora_last_round_eval', help: 'Example-weighted client metrics of the last completed round.', labelNames: ['adapter', 'metric'] as const, registers: [this.registry] });

  /** Last totals pushed into the counters that mirror the coordinator's own tallies. */
  #servedSeen = 0;
  readonly #errorsSeen = new Map<string, number>();
  /** Round attempts (by roundId) already observed; pruned to the snapshot's history. */
  #roundsSeen = new Set<string>();
  #phase: { name: string; since: number } | null = null;

  /** Records the current phase; when it changed, the previous one's duration is observed. */
  phase(enginePhase: string | undefined, collecting: string | null | undefined, now = Date.now()): void {
    const name = enginePhase === 'training' && collecting ? collecting : enginePhase;
    if (name === this.#phase?.name) return;
    if (this.#phase && PHASE_SET.has(this.#phase.name)) this.#phaseSeconds.observe({ phase: this.#phase.name }, Math.max(0, now - this.#phase.since) / 1000);
    this.#phase = name ? { name, since: now } : null;
  }

  async render(s: MetricsSnapshot): Promise<string> {
    this.#round.set(s.round);
    this.#completed.set(s.completedRounds);
    this.#connected.set(s.connected);
    this.#ready.set(s.ready);
    this.#fullModel.set(s.fullModelBytes);
    if (s.modelBytesServed > this.#servedSeen) this.#served.inc(s.modelBytesServed - this.#servedSeen);
    this.#servedSeen = Math.max(this.#servedSeen, s.modelBytesServed);
    const errs = new Map<string, number>();
    for (const [code, n] of s.protocolErrors) {
      const c = CODE_RE.test(code) ? code : 'OTHER';
      errs.set(c, (errs.get(c) ?? 0) + n);
    }
    for (const [code, n] of errs) {
      const before = this.#errorsSeen.get(code) ?? 0;
      if (n > before) this.#errors.inc({ code }, n - before);
      this.#errorsSeen.set(code, Math.max(before, n));
    }

    const seen = new Set<string>();
    for (const r of s.history) {
      seen.add(r.roundId);
      if (this.#roundsSeen.has(r.roundId)) continue;
      this.#rounds.inc({ status: r.status });
      this.#roundSeconds.observe({ status: r.status }, Math.max(0, r.endedAt - r.startedAt) / 1000);
      for (const p of r.participants) {
        if (p.status === 'uploaded') this.#upload.observe(p.bytesUp);
        if (p.bytesDown > 0) this.#download.observe(p.bytesDown);
      }
    }
    this.#roundsSeen = seen;

    const last = [...s.history].reverse().find((r) => r.status === 'completed');
    this.#lastEval.reset();
    this.#lastContributors.set(last?.contributors ?? 0);
    if (last && last.fullModelBytes > 0 && last.participants.length > 0) {
      const ratios = last.participants.map((p) => (p.bytesUp + p.bytesDown) / (2 * last.fullModelBytes));
      this.#lastVsFull.set(ratios.reduce((a, b) => a + b, 0) / ratios.length);
    } else this.#lastVsFull.set(NaN);
    if (last?.globalEval) { this.#lastEval.set({ adapter: 'global', metric: 'loss' }, last.globalEval.loss); this.#lastEval.set({ adapter: 'global', metric: 'accuracy' }, last.globalEval.accuracy); }
    if (last?.personalEval) { this.#lastEval.set({ adapter: 'personal', metric: 'loss' }, last.personalEval.loss); this.#lastEval.set({ adapter: 'personal', metric: 'accuracy' }, last.personalEval.accuracy); }
    if (last?.trainLoss !== undefined) this.#lastEval.set({ adapter: 'local', metric: 'train_loss' }, last.trainLoss);
    const dp = [...s.history].reverse().find((r) => r.privacy)?.privacy;
    if (dp) { this.#dpEpsilon.set(dp.epsilon); this.#dpDelta.set(dp.delta); }
    return this.registry.metrics();
  }
}
