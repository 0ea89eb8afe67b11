/**
 * Collectors: how one attempt of a round turns participants' messages into Σ contributions.
 * Both are transport-free sub-state machines driven by the round engine:
 *
 *   plain   upload ─────────────────────────────────────────────▶ result
 *   secure  advertise ▶ share ▶ masked ▶ consistency ▶ unmask ──▶ result
 *
 * `receive` validates a whole message before it changes anything (a refused message leaves the
 * collector exactly as it was); `close` ends the current phase over what arrived and returns the
 * notices to send, or the result. A failure that can be pinned on participants carries their ids
 * (`AttemptFailure.culprits`) so the engine can leave them out of the retry.
 */
import { FedloraError, ProtocolError, errorMessage } from '../../shared/errors.js';
import { parseUpdate, parseUpdateMetrics, EV, type UpdateMetrics } from '../../shared/protocol/index.js';
import { SecAggBlameError, SecAggServer, decodeSum, type QuantParams, type SecAggParams, type Identity } from '../../shared/crypto/index.js';
import type { FlatLayout } from '../../shared/aggregation/index.js';

export interface CollectResult {
  /** Σ of the contributors' weighted contributions, flat in the round layout. */
  sum: Float32Array;
  contributors: string[];
  secure?: { droppedAfterSharing: string[]; badShares: number; complaints: { from: string; about: string[] }[] };
}

export interface Notice { to: string; event: string; msg: unknown }

/** `gather`: hierarchical sums (coordinator/cluster): ask the edges for their partial sums of these ids, then call gathered(). */
export type Advance = { notices: Notice[] } | { result: CollectResult } | { gather: string[] };

export interface Received { uploaded: boolean; metrics?: UpdateMetrics }

/** Facts about one participant of the attempt that a collector needs. */
export interface SlotInfo { rank: number; weight: number; personal(name: string): boolean }

export interface Collector {
  readonly kind: 'plain' | 'secure';
  /** Name of the phase now collecting (for /status and logs). */
  readonly phase: string;
  /** Which message kinds are accepted (`round:update` → 'update', `secagg:msg` → its kind). */
  accepts(kind: string): boolean;
  /** Participants that still owe a message in this phase. */
  waitingFor(): string[];
  /** Absolute time (ms) at which this phase closes over whatever arrived. */
  readonly deadline: number;
  receive(id: string, kind: string, msg: unknown): Received;
  close(now: number): Advance;
  /** True while the phase waits for something other than participants (edges' partial sums): only gathered() or the deadline ends it. */
  readonly holding?: boolean;
  /** Hierarchical sums: one edge's Σ of the masked inputs of `ids`. */
  addPartial?(ids: string[], sum: Uint32Array): void;
  /** Hierarchical sums: every edge answered (or failed); the phase may close. */
  gathered?(): void;
}

/** An attempt that cannot complete; `culprits` are participants whose messages caused it. */
export class AttemptFailure extends FedloraError {
  readonly culprits: string[];
  constructor(code: string, message: string, culprits: string[] = [], options?: { cause?: unknown }) {
    super(code, message, options);
    this.culprits = culprits;
  }
}

// ---------------------------------------------------------------------------------------------

export interface PlainCollectorOptions {
  roundId: string;
  layout: FlatLayout;
  /** Rank slot of every layout element. */
  elementSlots: Int32Array;
  slots: ReadonlyMap<string, SlotInfo>;
  /** Each upload is clipped to ±clip per coordinate (per unit of weight), as secure aggregation does. */
  clip: number;
  /** DP: each upload (weight 1) is also clipped to this L2 norm; the coordinator sees plaintext, so it enforces it. */
  l2Clip?: number;
  deadline: number;
}

/**
 * `--insecure-aggregation`: sealed plaintext uploads. The upload's own weight is only used to
 * normalise it; what enters the sum is w·clip(x/w_upload) with w fixed at round start, so a
 * client can neither inflate its weight after sampling nor send values beyond the clip.
 */
export class PlainCollector implements Collector {
  readonly kind = 'plain' as const;
  readonly phase = 'upload';
  readonly deadline: number;
  readonly #o: PlainCollectorOptions;
  readonly #got = new Map<string, Float32Array>();

  constructor(o: PlainCollectorOptions) {
    this.#o = o;
    this.deadline = o.deadline;
  }

  accepts(kind: string): boolean { return kind === 'update'; }

  waitingFor(): string[] { return [...this.#o.slots.keys()].filter((id) => !this.#got.has(id)); }

  receive(id: string, kind: string, msg: unknown): Received {
    const slot = this.#o.slots.get(id);
    if (!slot || kind !== 'update') throw new ProtocolError('STALE_ROUND', 'no plain upload expected from you in this round');
    const o = this.#o;
    const u = parseUpdate(msg, { roundId: o.roundId, rank: slot.rank, length: o.layout.size, maxWeight: Number.MAX_VALUE });
    if (this.#got.has(id)) throw new ProtocolError('DUPLICATE', `already have your update for round ${u.roundId}`);
    const v = u.vector, slots = o.elementSlots;
    // plaintext can be checked where the layout says nothing may be: rank slots beyond the
    // assigned rank, and tensors the client declared personal
    for (let i = 0; i < v.length; i++) {
      if (v[i] !== 0 && slots[i]! >= slot.rank) throw new ProtocolError('BAD_SHAPE', `update has a non-zero value in rank slot ${slots[i]} (assigned rank ${slot.rank})`);
    }
    for (const e of o.layout.entries) {
      if (!slot.personal(e.name)) continue;
      for (let i = e.offset; i < e.offset + e.size; i++) if (v[i] !== 0) throw new ProtocolError('BAD_SHAPE', `update carries values for ${e.name}, which you declared personal`);
    }
    const c = o.clip;
    const out = new Float32Array(v.length);
    for (let i = 0; i < v.length; i++) {
      const x = v[i]! / u.weight;
      out[i] = (x > c ? c : x < -c ? -c : x) * slot.weight;
    }
    if (o.l2Clip !== undefined) {
      let sq = 0;
      for (const x of out) sq += x * x;
      const norm = Math.sqrt(sq);
      if (norm > o.l2Clip) { const f = (o.l2Clip / norm) * (1 - 2 ** -20); for (let i = 0; i < out.length; i++) out[i] = out[i]! * f; }
    }
    this.#got.set(id, out);
    return { uploaded: true, metrics: u.metrics };
  }

  close(): Advance {
    const acc = new Float64Array(this.#o.layout.size);
    for (const v of this.#got.values()) for (let i = 0; i < v.length; i++) acc[i] = acc[i]! + v[i]!;
    return { result: { sum: Float32Array.from(acc), contributors: [...this.#got.keys()].sort() } };
  }
}

// ---------------------------------------------------------------------------------------------

export interface SecureCollectorOptions {
  params: SecAggParams;
  identity: Identity;
  quant: QuantParams;
  /** Per-phase deadline for the short phases (advertise, share, consistency, unmask). */
  phaseMs: number;
  /** The masked upload waits for training, until the round deadline. */
  roundDeadline: number;
  now: number;
  /**
   * Cluster mode: masked inputs stay at the edges. receive() gets `{ id, rejected?, metrics? }`
   * (the edge validated and kept the vector), and the masked phase closes in two steps: `gather`
   * (the host collects one partial sum per edge), then the survivor list over the ids those sums cover.
   */
  hierarchical?: boolean;
}

type SecPhase = 'advertise' | 'share' | 'masked' | 'consistency' | 'unmask';
const NEXT_NOTICE: Record<Exclude<SecPhase, 'unmask'>, string> = {
  advertise: EV.secaggKeys, share: EV.secaggShares, masked: EV.secaggSurvivors, consistency: EV.secaggUnmask,
};

/** SecAgg+ over the SecAggServer state machine; the coordinator only ever holds the running masked sum. */
export class SecureCollector implements Collector {
  readonly kind = 'secure' as const;
  #phase: SecPhase = 'advertise';
  #deadline: number;
  #expected: string[];
  readonly #got = new Set<string>();
  readonly #server: SecAggServer;
  readonly #o: SecureCollectorOptions;
  readonly #complaints: { from: string; about: string[] }[] = [];
  /** Hierarchical masked phase: 'collect' (refs arrive), 'gather' (partials arrive), 'done'. */
  #gather: 'collect' | 'gather' | 'done' = 'collect';

  constructor(o: SecureCollectorOptions) {
    this.#o = o;
    this.#server = new SecAggServer({ params: o.params, identity: o.identity });
    this.#expected = o.params.participants.map((p) => p.id);
    this.#deadline = Math.min(o.roundDeadline, o.now + o.phaseMs);
  }

  get phase(): string { return this.#phase; }
  get deadline(): number { return this.#deadline; }

  accepts(kind: string): boolean { return kind === this.#phase && !(this.#phase === 'masked' && this.#gather !== 'collect'); }

  get holding(): boolean { return this.#phase === 'masked' && this.#gather === 'gather'; }

  addPartial(ids: string[], sum: Uint32Array): void {
    if (!this.holding) throw new ProtocolError('SECAGG_PHASE', `partial sum arrived in phase ${this.#phase}`);
    this.#server.addPartial(ids, sum);
  }

  gathered(): void { if (this.holding) this.#gather = 'done'; }

  waitingFor(): string[] { return this.#expected.filter((id) => !this.#got.has(id)); }

  receive(id: string, kind: string, msg: unknown): Received {
    if (kind !== this.#phase) throw new ProtocolError('SECAGG_PHASE', `secagg ${kind} arrived in phase ${this.#phase}`);
    if (!this.#expected.includes(id)) throw new ProtocolError('SECAGG_PHASE', `no ${kind} message expected from you in this phase`);
    if (!msg || typeof msg !== 'object') throw new ProtocolError('BAD_MESSAGE', `secagg ${kind}: expected an object`);
    const m = msg as Record<string, unknown>;
    const s = this.#server;
    // SecAggServer validates shapes, signatures and duplicates of the whole message before it keeps anything
    switch (this.#phase) {
      case 'advertise': s.receiveAdvertise(id, m as never); break;
      case 'share': s.receiveShareKeys(id, m as never); break;
      case 'masked': {
        const metrics = parseUpdateMetrics(m.metrics);
        const rejected = m.rejected === undefined ? undefined : m.rejected;
        // in the cluster an individual masked vector never reaches the leader: only the edges' references do
        if (this.#o.hierarchical && m.masked !== undefined) throw new ProtocolError('SECAGG_PHASE', 'masked inputs go to an edge, not to the cluster leader');
        if (this.#o.hierarchical) s.receiveMaskedRef(id, { id: m.id, ...(rejected !== undefined ? { rejected } : {}) });
        else s.receiveMasked(id, { id: m.id, masked: m.masked, ...(rejected !== undefined ? { rejected } : {}) } as never);
        if (Array.isArray(rejected) && rejected.length) this.#complaints.push({ from: id, about: rejected.filter((x): x is string => typeof x === 'string').slice(0, 64) });
        this.#got.add(id);
        return { uploaded: true, metrics };
      }
      case 'consistency': s.receiveConsistency(id, m as never); break;
      case 'unmask': s.receiveUnmask(id, m as never); break;
    }
    this.#got.add(id);
    return { uploaded: false };
  }

  close(now: number): Advance {
    const s = this.#server;
    const phase = this.#phase;
    let next: { ids: string[]; msgs: Map<string, unknown> };
    try {
      switch (phase) {
        case 'advertise': { const m = s.closeAdvertise(); next = { ids: [...m.keys()], msgs: m }; break; }
        case 'share': { const m = s.closeShareKeys(); next = { ids: [...m.keys()], msgs: m }; break; }
        case 'masked': {
          if (this.#o.hierarchical && this.#gather === 'collect') {
            this.#gather = 'gather';
            this.#deadline = now + this.#o.phaseMs;
            return { gather: [...this.#got].sort() };
          }
          const list = s.closeMaskedInput();
          next = { ids: [...list.survivors], msgs: new Map(list.survivors.map((id) => [id, list])) };
          break;
        }
        case 'consistency': { const m = s.closeConsistency(); next = { ids: [...m.keys()], msgs: m }; break; }
        case 'unmask': {
          const res = s.finalize();
          return {
            result: {
              sum: decodeSum(res.sum, this.#o.quant),
              contributors: [...res.survivors],
              secure: { droppedAfterSharing: [...res.droppedAfterSharing], badShares: res.badShares.length, complaints: [...this.#complaints] },
            },
          };
        }
      }
    } catch (e) {
      throw new AttemptFailure((e as { code?: string }).code ?? 'SECAGG_FAILED', `secure aggregation failed in phase ${phase}: ${errorMessage(e)}`, culpritsOf(e), { cause: e });
    }
    const order: SecPhase[] = ['advertise', 'share', 'masked', 'consistency', 'unmask'];
    this.#phase = order[order.indexOf(phase) + 1]!;
    this.#expected = next.ids;
    this.#got.clear();
    this.#deadline = this.#phase === 'masked' ? this.#o.roundDeadline : now + this.#o.phaseMs;
    const event = NEXT_NOTICE[phase as Exclude<SecPhase, 'unmask'>];
    return { notices: [...next.msgs].map(([to, msg]) => ({ to, event, msg })) };
  }
}

/**
 * Whom a failed secure aggregation can be pinned on. A dealer whose secrets cannot be recovered
 * is to blame when holders complained about its share envelopes (garbage sent to them) or its
 * shares were inconsistent with its own commitments; a dealer that merely lost holders to dropouts
 * is not, and nobody sits out for it.
 */
function culpritsOf(e: unknown): string[] {
  if (!(e instanceof SecAggBlameError)) return [];
  return [...new Set(e.blame.filter((b) => b.reason === 'inconsistent-shares' || b.complaints.length > 0).map((b) => b.dealer))].sort();
}
