/** Per-round records and the Prometheus text rendering of /metrics. */
import type { EvalReport } from '../shared/protocol/index.js';

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

function esc(v: string): string { return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n'); }

export interface MetricsSnapshot {
  round: number;
  completedRounds: number;
  connected: number;
  ready: number;
  fullModelBytes: number;
  modelBytesServed: number;
  protocolErrors: Map<string, number>;
  history: readonly RoundRecord[];
}

/** Prometheus exposition format 0.0.4. Per-client series are kept for the last `keepRounds` rounds. */
export function renderPrometheus(s: MetricsSnapshot, keepRounds = 50): string {
  const out: string[] = [];
  const g = (name: string, help: string, type: 'gauge' | 'counter', rows: [string, number][]) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, v] of rows) out.push(`${name}${labels} ${Number.isFinite(v) ? v : 'NaN'}`);
  };
  g('fedlora_round', 'Round currently running or next to run (1-based).', 'gauge', [['', s.round]]);
  g('fedlora_completed_rounds', 'Rounds aggregated and checkpointed.', 'gauge', [['', s.completedRounds]]);
  g('fedlora_connected_clients', 'Clients connected with a valid hello.', 'gauge', [['', s.connected]]);
  g('fedlora_ready_clients', 'Clients holding the verified base model.', 'gauge', [['', s.ready]]);
  g('fedlora_full_model_bytes', 'Size of the base model weights: what one full-model exchange would move per client and direction.', 'gauge', [['', s.fullModelBytes]]);
  g('fedlora_model_bytes_served_total', 'Base-model bytes served to clients (one-time downloads).', 'counter', [['', s.modelBytesServed]]);
  g('fedlora_protocol_errors_total', 'Requests refused, by error code.', 'counter', [...s.protocolErrors].map(([c, n]) => [`{code="${esc(c)}"}`, n]));
  const recent = s.history.slice(-keepRounds);
  const up: [string, number][] = [], down: [string, number][] = [], ratio: [string, number][] = [];
  for (const r of recent) {
    for (const p of r.participants) {
      const l = `{client="${esc(p.clientId)}",round="${r.round}"}`;
      up.push([l, p.bytesUp]); down.push([l, p.bytesDown]);
      if (r.fullModelBytes > 0) ratio.push([l, (p.bytesUp + p.bytesDown) / (2 * r.fullModelBytes)]);
    }
  }
  g('fedlora_round_bytes_up', 'Bytes a client uploaded in a round.', 'gauge', up);
  g('fedlora_round_bytes_down', 'Bytes sent to a client in a round.', 'gauge', down);
  g('fedlora_round_bytes_vs_full_model', 'Round traffic of a client (up+down) over two full-model transfers.', 'gauge', ratio);
  const last = [...s.history].reverse().find((r) => r.status === 'completed');
  const lm: [string, number][] = [];
  if (last?.globalEval) lm.push(['{adapter="global",metric="loss"}', last.globalEval.loss], ['{adapter="global",metric="accuracy"}', last.globalEval.accuracy]);
  if (last?.personalEval) lm.push(['{adapter="personal",metric="loss"}', last.personalEval.loss], ['{adapter="personal",metric="accuracy"}', last.personalEval.accuracy]);
  if (last?.trainLoss !== undefined) lm.push(['{adapter="local",metric="train_loss"}', last.trainLoss]);
  g('fedlora_last_round_eval', 'Example-weighted client metrics of the last completed round.', 'gauge', lm);
  return `${out.join('\n')}\n`;
}
