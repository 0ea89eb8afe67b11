/**
 * One round as this client takes part in it, from the accepted round:start to the upload the
 * coordinator took (or to giving up). Everything a round needs to answer the coordinator again
 * after a reconnect lives here: the trained contribution, the SecAggClient of a secure round and
 * the sealed bytes already sent per phase, so a repeated round:start or phase notice is answered
 * from stored state (byte-identical) rather than recomputed.
 *
 *   accepted ─▶ training ─▶ trained ─▶ delivering ─▶ done
 *       │           │          │  ◀─────────┘ (not taken: retried on the next round:start)
 *       └───────────┴──────────┴──────────────────▶ aborted (newer round, round:end, failure)
 *
 * Sockets stay outside: the host (the Client) trains, seals and sends. That keeps the state
 * machine drivable from a unit test.
 */
import { FedloraError, ProtocolError, errorMessage } from '../../shared/errors.js';
import { logger } from '../../shared/log.js';
import { encode } from '../../shared/codec/index.js';
import { makeLayout, type FlatLayout, type Strategy } from '../../shared/aggregation/index.js';
import { SecAggClient, type Identity, type QuantParams, type SharesMsg } from '../../shared/crypto/index.js';
import { EV, layoutLength, type RoundEnd, type RoundStart, type SealedKind, type SecAggKind, type UpdateMetrics } from '../../shared/protocol/index.js';
import type { TensorMap } from '../../shared/tensor.js';
import { checkDistributedShare } from '../../shared/privacy/dp.js';
import { BUILTIN_MODS, buildUpload, maskedEncoder, plainEncoder, type UploadContext, type UploadEncoder, type UploadMod } from '../upload/index.js';
import type { EvalMetrics } from '../trainer.js';
import type { ClientObservers, ClientRoundSummary } from './observe.js';

const log = logger('fedlora:client:round');

export type RoundState = 'accepted' | 'training' | 'trained' | 'delivering' | 'done' | 'aborted';

const NEXT: Record<RoundState, readonly RoundState[]> = {
  accepted: ['training', 'aborted'],
  training: ['trained', 'aborted'],
  trained: ['delivering', 'aborted'],
  delivering: ['done', 'trained', 'aborted'],
  done: [],
  aborted: [],
};

/** What local training produced for a round. */
export interface LocalResult {
  /** The trained adapter's tensors at the round's rank. */
  tensors: TensorMap;
  /** Examples trained on: the weight of a plain upload (secure rounds use the public weight of round:start). */
  examples: number;
  metrics: UpdateMetrics;
  trainLoss: number;
  steps: number;
  global?: EvalMetrics;
  personal?: EvalMetrics;
}

export type SecAggNotice = typeof EV.secaggKeys | typeof EV.secaggShares | typeof EV.secaggSurvivors | typeof EV.secaggUnmask;

/** What a round needs from the client that holds the connection and the trainer. */
export interface ParticipantHost {
  readonly clientId: string;
  /** Runs `fn` once nothing else uses the client's single trainer (rounds queue behind each other). */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
  /** Local training for this round (personal tensors loaded and saved by the host). */
  train(rs: RoundStart): Promise<LocalResult>;
  /** Seals a payload to the coordinator's box key under this round's context. */
  seal(payload: Uint8Array, ctx: { roundId: string; round: number; kind: SealedKind }): Uint8Array;
  /** Waits for a handshake in progress; false while disconnected or stopped (the coordinator resends round:start after a reconnect). */
  online(): Promise<boolean>;
  /** One request to the coordinator; true if it took the bytes, false if refused or unreachable (the host logs why). */
  send(event: typeof EV.update | typeof EV.secagg, bytes: Uint8Array, what: string): Promise<boolean>;
}

export interface ParticipantRoundOptions {
  rs: RoundStart;
  /** This client's public weight as round:start lists it (what a secure encoding scales by). */
  weight: number;
  host: ParticipantHost;
  strategy: Strategy;
  isPersonal: (name: string) => boolean;
  /** Applied after the built-in ones (the secure clip), in order. */
  mods?: readonly UploadMod[];
  /** Needed for secure rounds: this client's identity and the pinned coordinator key. */
  keys?: { identity: Identity; coordinatorKey: Uint8Array };
  observe?: ClientObservers;
  /** Size of the round:start payload, for the round summary. */
  bytesDown?: number;
}

interface Secure {
  sc: SecAggClient;
  quant: QuantParams;
  /** Sealed bytes already sent per phase: a repeated notice after a reconnect gets the same bytes again. */
  sent: Map<SecAggKind, Uint8Array>;
  shares: Promise<SharesMsg>;
  resolveShares: (m: SharesMsg) => void;
  rejectShares: (e: unknown) => void;
}

export class ParticipantRound {
  readonly rs: RoundStart;
  readonly #o: ParticipantRoundOptions;
  readonly #host: ParticipantHost;
  readonly #layout: FlatLayout;
  readonly #secure: Secure | null;
  readonly #mods: readonly UploadMod[];
  #state: RoundState = 'accepted';
  #abortReason: string | undefined;
  #ended = false;
  #bytesDown: number;
  #local: LocalResult | null = null;
  /** The sealed upload, built once: mods may draw randomness, and a redelivery may race the first attempt. */
  #upload: Promise<Uint8Array | null> | null = null;
  #attempts = 0;
  #startedAt = 0;
  #run: Promise<void> | null = null;
  readonly #listeners = new Set<(s: RoundState) => void>();

  /** Validates what the round needs before the client accepts it; throws (→ refusal) on a bad secure setup. */
  constructor(o: ParticipantRoundOptions) {
    this.rs = o.rs;
    this.#o = o;
    this.#host = o.host;
    this.#bytesDown = o.bytesDown ?? 0;
    this.#layout = makeLayout(o.rs.layout);
    this.#mods = [...BUILTIN_MODS, ...(o.mods ?? [])];
    // DP rounds: fixed weight 1 (a contribution is bounded by the clip S); distributed noise needs the fixed-point (secure) path
    if (o.rs.dp && o.weight !== 1) throw new ProtocolError('DP_WEIGHT', `a DP round lists weight ${o.weight} for this client; DP rounds use weight 1`);
    if (o.rs.dp?.mode === 'distributed' && !o.rs.secure) throw new ProtocolError('DP_MODE', 'distributed DP noise without secure aggregation');
    if (o.rs.dp?.mode === 'distributed') checkDistributedShare(o.rs.dp, o.rs.secure!.quant.fracBits, o.rs.participants.length);
    this.#secure = o.rs.secure ? this.#startSecure(o) : null;
  }

  get roundId(): string { return this.rs.roundId; }
  get round(): number { return this.rs.round; }
  get state(): RoundState { return this.#state; }
  get abortReason(): string | undefined { return this.#abortReason; }
  /** The secure round's SecAggClient phase, or null in a plain round. */
  get secAggPhase(): string | null { return this.#secure?.sc.phase ?? null; }

  /** Resolves when the round reaches `state` (or already has); rejects if it is aborted first. */
  when(state: RoundState): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (s: RoundState) => {
        if (s === state) { this.#listeners.delete(check); resolve(); } else if (s === 'aborted') {
          this.#listeners.delete(check);
          reject(new ProtocolError('ROUND_ABORTED', `round ${this.round} aborted: ${this.#abortReason}`));
        }
      };
      this.#listeners.add(check);
      check(this.#state);
    });
  }

  /** Sends the key advertisement (secure rounds), then trains once the trainer is free and delivers. */
  start(): Promise<void> {
    if (this.#run) return this.#run;
    if (this.#secure) this.#sendSecAgg('advertise', () => this.#secure!.sc.advertiseKeys());
    this.#run = this.#train().then((ok) => (ok ? this.#deliver() : undefined)).catch((e: unknown) => this.#failed(e));
    return this.#run;
  }

  /** The coordinator sent the same round:start again (after a reconnect): answer from what is stored. */
  redeliver(bytesDown: number): void {
    this.#bytesDown = bytesDown;
    const adv = this.#secure?.sent.get('advertise');
    if (adv) void this.#host.send(EV.secagg, adv, `round ${this.round} secagg advertise`);
    // still training: the first delivery follows training by itself
    if (this.#deliverable()) this.#deliver().catch((e: unknown) => this.#failed(e));
  }

  /**
   * A secure-aggregation phase notice for this round. Throws when the notice is refused (the
   * caller acks with the error); a phase message is sent as a side effect.
   */
  notice(event: SecAggNotice, msg: unknown): void {
    const s = this.#secure;
    if (!s) throw new ProtocolError('BAD_MESSAGE', `${event} in round ${this.round}, which is not secure`);
    if (this.#state === 'aborted' || this.#ended) throw new ProtocolError('ROUND_OVER', `round ${this.round} is over for this client`);
    if (event === EV.secaggShares) {
      const m = msg as SharesMsg | null;
      if (!m || typeof m !== 'object' || !Array.isArray(m.envelopes)) {
        const e = new ProtocolError('BAD_MESSAGE', 'secagg:shares without an envelope list');
        s.rejectShares(e);
        throw e;
      }
      log.info(`${this.#host.clientId}: round ${this.round}: received key shares from ${m.envelopes.length} neighbour(s)`);
      s.resolveShares(m);
      return;
    }
    const [kind, phase, f]: [SecAggKind, string, () => unknown] =
      event === EV.secaggKeys ? ['share', 'share', () => s.sc.shareKeys(msg as never)]
        : event === EV.secaggSurvivors ? ['consistency', 'consistency', () => s.sc.consistencyCheck(msg as never)]
          : ['unmask', 'unmask', () => s.sc.unmask(msg as never)];
    if (s.sc.phase === phase) { this.#sendSecAgg(kind, f); return; }
    // the coordinator repeats its last notice after a reconnect: the same answer again, byte for byte
    const again = s.sent.get(kind);
    if (again) { void this.#host.send(EV.secagg, again, `round ${this.round} secagg ${kind}`); return; }
    throw new ProtocolError('SECAGG_PHASE', `${event} while secure aggregation is in phase ${s.sc.phase}${s.sc.abortReason ? ` (${s.sc.abortReason})` : ''}`);
  }

  /** round:end for this round: whatever was not delivered by now will not be. */
  end(e: RoundEnd): void {
    this.#ended = true;
    this.#secure?.rejectShares(new ProtocolError('ROUND_OVER', `round ${e.round} ended`));
    if (this.#state !== 'done') this.abort(`round ended (${e.status}) before this client's upload was taken`);
  }

  /** Gives the round up (a newer round started, the round ended, the client stops). A done round stays done. */
  abort(reason: string): void {
    if (this.#state === 'done' || this.#state === 'aborted') return;
    this.#abortReason = reason;
    this.#secure?.rejectShares(new ProtocolError('ROUND_OVER', reason));
    this.#to('aborted');
    log.debug(`${this.#host.clientId}: round ${this.round} aborted: ${reason}`);
  }

  #failed(e: unknown): void {
    log.error(`${this.#host.clientId}: round ${this.round} failed locally: ${errorMessage(e)}`);
    this.abort(errorMessage(e));
  }

  #to(next: RoundState): void {
    if (!NEXT[this.#state].includes(next)) throw new FedloraError('ROUND_STATE', `round ${this.round}: no transition ${this.#state} → ${next}`);
    this.#state = next;
    for (const l of [...this.#listeners]) l(next);
  }

  #startSecure(o: ParticipantRoundOptions): Secure {
    const rs = o.rs, sec = rs.secure!;
    if (!o.keys) throw new ProtocolError('NOT_READY', 'a secure round needs the client identity and the coordinator key');
    if (sec.modelHash !== `${rs.modelId}:${rs.globalHash}`) throw new ProtocolError('BAD_MESSAGE', 'secagg model hash does not bind this round\'s model and global adapter');
    const sc = new SecAggClient({
      params: {
        round: rs.round, modelHash: sec.modelHash, vectorLength: layoutLength(rs.layout), participants: rs.participants.map((p) => ({ id: p.id, key: p.key })),
        k: sec.k, t: sec.t, nonce: sec.nonce, coordinatorKey: o.keys.coordinatorKey,
      },
      paramsSignature: sec.paramsSignature, coordinatorKey: o.keys.coordinatorKey, identity: o.keys.identity, id: o.host.clientId,
    });
    let resolveShares!: (m: SharesMsg) => void, rejectShares!: (e: unknown) => void;
    const shares = new Promise<SharesMsg>((res, rej) => { resolveShares = res; rejectShares = rej; });
    shares.catch(() => undefined);
    return { sc, quant: { ...sec.quant }, sent: new Map(), shares, resolveShares, rejectShares };
  }

  /** Builds one phase message, seals it, keeps the bytes for repeats and sends them. */
  #sendSecAgg(kind: SecAggKind, build: () => unknown): void {
    const bytes = this.#seal(encode(build()), `secagg/${kind}`);
    this.#secure!.sent.set(kind, bytes);
    void this.#host.send(EV.secagg, bytes, `round ${this.round} secagg ${kind}`);
  }

  #seal(payload: Uint8Array, kind: SealedKind): Uint8Array {
    return this.#host.seal(payload, { roundId: this.roundId, round: this.round, kind });
  }

  /** false when the round was given up before or during training. */
  async #train(): Promise<boolean> {
    const local = await this.#host.exclusive(async () => {
      if (this.#state === 'aborted') return null; // superseded while waiting for the trainer
      this.#startedAt = Date.now();
      this.#to('training');
      return this.#host.train(this.rs);
    });
    if (!local || this.#state === 'aborted') return false;
    this.#local = local;
    this.#to('trained');
    return true;
  }

  #ctx(local: LocalResult): UploadContext {
    const rs = this.rs;
    return {
      roundId: rs.roundId, round: rs.round, rank: rs.rank, maxRank: rs.maxRank, layout: this.#layout,
      weight: this.#secure || rs.dp ? this.#o.weight : Math.max(1, local.examples),
      quant: this.#secure ? this.#secure.quant : null,
      dp: rs.dp ?? null,
    };
  }

  /** The sealed upload (built on first use); null when secure aggregation can no longer take one. */
  #buildUpload(): Promise<Uint8Array | null> {
    this.#upload ??= (async () => {
      const local = this.#local!;
      let encoder: UploadEncoder;
      const seal = (p: Uint8Array, kind: SealedKind) => this.#seal(p, kind);
      const s = this.#secure;
      if (s) {
        const shares = await s.shares; // rejects when the round ends before key sharing completed
        if (s.sc.phase !== 'mask') return s.sent.get('masked') ?? null;
        encoder = maskedEncoder(s.sc, shares, seal);
      } else {
        encoder = plainEncoder(seal);
      }
      const ctx = this.#ctx(local);
      const observe = this.#o.observe?.contribution;
      const bytes = await buildUpload({
        input: { tensors: local.tensors, strategy: this.#o.strategy, isPersonal: this.#o.isPersonal },
        ctx, mods: this.#mods, encoder, metrics: local.metrics,
        observe: observe && ((contribution) => observe({
          roundId: ctx.roundId, round: ctx.round, rank: ctx.rank, weight: ctx.weight, contribution, quant: ctx.quant, layout: this.rs.layout, global: this.rs.global,
        })),
      });
      if (s) s.sent.set('masked', bytes);
      return bytes;
    })();
    return this.#upload;
  }

  /** One delivery attempt; several may run at once after a reconnect, the first one taken wins. */
  async #deliver(): Promise<void> {
    if (!this.#deliverable()) return;
    if (!(await this.#host.online())) return; // the coordinator resends round:start once we are back
    if (!this.#deliverable()) return;
    if (this.#state === 'trained') this.#to('delivering');
    this.#attempts++;
    let sent: { bytes: Uint8Array; accepted: boolean } | null = null;
    try {
      sent = await this.#attempt();
    } finally {
      this.#attempts--;
      // an attempt that was not taken leaves the round ready for the next round:start, unless another is still under way
      if (this.#state === 'delivering') {
        if (sent?.accepted) { this.#to('done'); this.#release(); } else if (this.#attempts === 0) this.#to('trained');
      }
    }
    if (sent) this.#report(sent.bytes.byteLength, sent.accepted);
  }

  /** A taken upload is never built or sent again: drop the contribution and the sealed bytes (a round may outlive it by phases). */
  #release(): void {
    if (this.#local) this.#local = { ...this.#local, tensors: new Map() };
    this.#secure?.sent.delete('masked');
    this.#upload = Promise.resolve(null);
  }

  #deliverable(): boolean { return this.#state === 'trained' || this.#state === 'delivering'; }

  async #attempt(): Promise<{ bytes: Uint8Array; accepted: boolean } | null> {
    let bytes: Uint8Array | null;
    try { bytes = await this.#buildUpload(); } catch (e) {
      if (this.#state === 'aborted') return null; // the round ended while waiting for key shares
      throw e;
    }
    if (this.#state === 'aborted') return null;
    if (!bytes) {
      const sc = this.#secure!.sc;
      this.abort(`secure aggregation is in phase ${sc.phase}${sc.abortReason ? ` (${sc.abortReason})` : ''}; no upload`);
      log.warn(`${this.#host.clientId}: round ${this.round}: ${this.#abortReason}`);
      return null;
    }
    this.#observeUpload(bytes);
    const accepted = await this.#host.send(this.#secure ? EV.secagg : EV.update, bytes, this.#secure ? `round ${this.round} secagg masked` : `round ${this.round} upload`);
    return { bytes, accepted };
  }

  #observeUpload(bytes: Uint8Array): void {
    try { this.#o.observe?.upload?.(bytes, this.round); } catch (e) { log.warn(`upload observer failed: ${errorMessage(e)}`); }
  }

  #report(bytesUp: number, accepted: boolean): void {
    const l = this.#local!;
    const rs = this.rs;
    const s: ClientRoundSummary = {
      round: rs.round, roundId: rs.roundId, rank: rs.rank, trainLoss: l.trainLoss, steps: l.steps, global: l.global, personal: l.personal,
      bytesUp, bytesDown: this.#bytesDown, accepted,
    };
    const ev = (m?: EvalMetrics) => (m ? `loss ${m.loss.toFixed(4)} acc ${m.accuracy.toFixed(3)}` : '–');
    const took = this.#startedAt ? `, ${((Date.now() - this.#startedAt) / 1000).toFixed(1)}s` : '';
    log.info(`${this.#host.clientId}: round ${rs.round} rank ${rs.rank}: train loss ${l.trainLoss.toFixed(4)} (${l.steps} steps${took}); global ${ev(l.global)}; personalized ${ev(l.personal)}; ${this.#bytesDown} B down, ${bytesUp} B up${this.#secure ? ' (masked)' : ''}${accepted ? '' : ' (refused)'}`);
    try { this.#o.observe?.round?.(s); } catch (e) { log.warn(`round observer failed: ${errorMessage(e)}`); }
  }
}
