/**
 * The participant. Connects (socket.io, exponential-backoff reconnect), says hello, fetches and
 * verifies the base model, then for every round it is sampled for: global adapter at its rank +
 * its personal tensors → local training → personal tensors persisted → shared tensors uploaded as
 * one flat vector in the round's layout. Personal tensors never enter an upload: their layout
 * positions (if any) are left zero, and the coordinator averages them only over clients that share.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { io, type Socket } from 'socket.io-client';
import { ConfigError, FedloraError, ProtocolError, errorMessage } from '../shared/errors.js';
import { logger } from '../shared/log.js';
import { decode, encode } from '../shared/codec/index.js';
import {
  EV, PROTOCOL_VERSION, ID_RE, SIGNED_DOMAINS, globMatcher, layoutLength, okReply, errorReply, openEnvelope, parseAuthChallengeReply, parseChunkReply,
  parseHelloReply, parseRoundEnd, parseRoundStart, parseSessionDone, request, requestEncoded, roundStartTensors, sealForCoordinator,
  type ClientToServerEvents, type HelloReply, type RoundStart, type SecAggKind, type ServerToClientEvents, type Update,
} from '../shared/protocol/index.js';
import {
  SecAggClient, bytesEqual, encodeUpdate, formatPublicKey, keyFingerprint, loadOrCreateIdentity, parsePublicKey, proveJoin, verifyCoordinatorBoxKey,
  type Identity, type QuantParams, type SharesMsg,
} from '../shared/crypto/index.js';
import { flatten, getStrategy, makeLayout, type Strategy } from '../shared/aggregation/index.js';
import { parseLoraName, resizeCols, resizeRows, type LoraAdapter } from '../shared/lora/adapter.js';
import { atomicWrite, loadSafetensors, readFloatTensor, saveSafetensors } from '../shared/model/safetensors.js';
import type { Tensor32, TensorMap } from '../shared/tensor.js';
import { ensureModel } from './model-cache.js';
import type { LocalTrainer, EvalMetrics } from './trainer.js';
import { Progress } from './progress.js';

const log = logger('fedlora:client');

export interface TrainerFactoryOptions { modelDir: string; dataFile: string; backend: string; evalFraction: number; seed: number }
export type TrainerFactory = (o: TrainerFactoryOptions) => Promise<LocalTrainer>;

export interface ClientOptions {
  coordinatorUrl: string;
  dataFile: string;
  stateDir: string;
  maxRank?: number;
  backend?: string;
  /** Globs over PEFT tensor names that stay on this client. */
  personal?: string[];
  evalFraction?: number;
  /** Folder that may already hold the base model (checked against the modelId; skips the download). */
  modelDir?: string;
  /** Stable id; default: generated once and kept in <state>/client-id. */
  clientId?: string;
  seed?: number;
  requestTimeoutMs?: number;
  reconnectInitialMs?: number;
  reconnectMaxMs?: number;
  /** Draw progress bars (only sensible on a TTY). */
  progress?: boolean;
  /** Evaluate the global and the personalized adapter every round (default true). */
  evaluate?: boolean;
  trainerFactory?: TrainerFactory;
  /** Observes each encoded upload (tests inspect it; simulations count bytes). */
  onUpload?: (bytes: Uint8Array, round: number) => void;
  onRound?: (summary: ClientRoundSummary) => void;
  /** Enrolled Ed25519 identity, or the file holding it (created on first run); default <stateDir>/client.identity. */
  identity?: Identity | string;
  /** Pins the coordinator key (`ed25519:…` or 32 raw bytes). Without it: trust on first use, stored in <stateDir>/coordinator.pub. */
  coordinatorKey?: string | Uint8Array;
  /** Accept rounds without secure aggregation (the coordinator runs --insecure-aggregation). Default false: such rounds are refused. */
  insecureAggregation?: boolean;
  /** Alias: `secureAggregation: false` ≡ `insecureAggregation: true`. */
  secureAggregation?: boolean;
  /** PEM CA certificate (contents or file) to trust for an https:// coordinator with a private CA / self-signed cert. */
  tlsCa?: string | Uint8Array;
}

/** Debug only (tests): when set, each client also writes its plaintext contribution to <state>/debug-contribution-<round>.msgpack. */
export const DEBUG_CONTRIBUTION_ENV = 'FEDLORA_DEBUG_SAVE_CONTRIBUTION';

interface Trained {
  /** Σ-ready contribution at weight 1 (zero-padded to maxRank, zeros where personal), flat in layout order. */
  vector: Float32Array;
  weight: number;
  metrics: Update['metrics'];
}

interface SecureJob {
  roundId: string;
  round: number;
  sc: SecAggClient;
  quant: QuantParams;
  weight: number;
  /** Sealed bytes already sent per phase, resent when the coordinator repeats a phase message after a reconnect. */
  sent: Map<SecAggKind, Uint8Array>;
  /** The sealed masked upload, built once: a reconnect may deliver concurrently with the first attempt. */
  masked?: Promise<Uint8Array | null>;
  shares: Promise<SharesMsg>;
  resolveShares: (m: SharesMsg) => void;
  rejectShares: (e: unknown) => void;
}

export interface ClientRoundSummary {
  round: number;
  roundId: string;
  rank: number;
  trainLoss: number;
  steps: number;
  global?: EvalMetrics;
  personal?: EvalMetrics;
  bytesUp: number;
  bytesDown: number;
  accepted: boolean;
}

interface Job { roundId: string; promise: Promise<Trained | null> }

export class Client {
  readonly options: ClientOptions;
  #socket?: Socket<ServerToClientEvents, ClientToServerEvents>;
  #clientId = '';
  #hello?: HelloReply;
  #modelDir?: string;
  #trainer?: LocalTrainer;
  #strategy?: Strategy;
  #isPersonalGlob: (n: string) => boolean;
  #job: Job | null = null;
  #stopped = false;
  #resolveRun!: (v: { completedRounds: number; roundsTrained: number }) => void;
  #rejectRun!: (e: unknown) => void;
  #roundsTrained = 0;
  #handshaking: Promise<void> | null = null;
  #identity?: Identity;
  #coordinatorKey?: Uint8Array;
  #boxKey?: Uint8Array;
  #secure: SecureJob | null = null;

  constructor(o: ClientOptions) {
    if (!o.coordinatorUrl) throw new ConfigError('--coordinator URL is required');
    if (!o.dataFile) throw new ConfigError('--data FILE is required');
    if (!o.stateDir) throw new ConfigError('--state DIR is required');
    const maxRank = o.maxRank ?? 8;
    if (!Number.isInteger(maxRank) || maxRank < 1 || maxRank > 1024) throw new ConfigError(`--max-rank must be an integer in [1, 1024], got ${maxRank}`);
    const ef = o.evalFraction ?? 0.2;
    if (!(ef >= 0 && ef < 1)) throw new ConfigError(`--eval-fraction must be in [0, 1), got ${ef}`);
    if (o.clientId !== undefined && !ID_RE.test(o.clientId)) throw new ConfigError(`client id ${JSON.stringify(o.clientId)} must match ${ID_RE}`);
    this.options = { ...o, maxRank, evalFraction: ef };
    this.#isPersonalGlob = globMatcher(o.personal ?? []);
  }

  get clientId(): string { return this.#clientId; }
  /** This client's identity key (`ed25519:…`) for enrollment; available once run() has loaded the identity (or via loadIdentity()). */
  get publicKey(): string | undefined { return this.#identity ? formatPublicKey(this.#identity.publicKey) : undefined; }

  /** Loads (or creates) the identity; run() calls it too. Returns the formatted public key. */
  async loadIdentity(): Promise<{ publicKey: string; created: boolean }> {
    const o = this.options;
    if (this.#identity) return { publicKey: formatPublicKey(this.#identity.publicKey), created: false };
    let created = false;
    if (o.identity && typeof o.identity === 'object') this.#identity = o.identity;
    else {
      await mkdir(o.stateDir, { recursive: true });
      const file = (o.identity as string | undefined) ?? join(o.stateDir, 'client.identity');
      const r = await loadOrCreateIdentity(file);
      this.#identity = r.identity;
      created = r.created;
      if (created) log.info(`created client identity ${file}; enroll its public key ${formatPublicKey(r.identity.publicKey)}`);
    }
    return { publicKey: formatPublicKey(this.#identity.publicKey), created };
  }
  get connected(): boolean { return this.#socket?.connected ?? false; }

  /** Participates until the coordinator declares the session done (or `stop()`). */
  async run(): Promise<{ completedRounds: number; roundsTrained: number }> {
    const o = this.options;
    await mkdir(o.stateDir, { recursive: true });
    this.#clientId = o.clientId ?? (await this.#loadOrCreateId());
    await this.loadIdentity();
    if (o.coordinatorKey !== undefined) this.#coordinatorKey = typeof o.coordinatorKey === 'string' ? parsePublicKey(o.coordinatorKey.trim()) : o.coordinatorKey;
    const ca = o.tlsCa === undefined ? undefined : typeof o.tlsCa !== 'string' ? Buffer.from(o.tlsCa).toString('utf8') : o.tlsCa.includes('-----BEGIN') ? o.tlsCa : await readFile(o.tlsCa, 'utf8');
    const done = new Promise<{ completedRounds: number; roundsTrained: number }>((res, rej) => { this.#resolveRun = res; this.#rejectRun = rej; });
    const socket: Socket<ServerToClientEvents, ClientToServerEvents> = io(o.coordinatorUrl, {
      auth: { protocolVersion: PROTOCOL_VERSION },
      transports: ['websocket'],
      reconnection: true,
      reconnectionDelay: o.reconnectInitialMs ?? 500,
      reconnectionDelayMax: o.reconnectMaxMs ?? 10_000,
      randomizationFactor: 0.3,
      timeout: 10_000,
      ...(ca ? { ca } : {}),
    });
    this.#socket = socket;
    let attempts = 0;
    socket.on('connect', () => {
      attempts = 0;
      log.info(`${this.#clientId}: connected to ${o.coordinatorUrl}`);
      this.#handshaking = this.#handshake().catch((e: unknown) => this.#onHandshakeError(e)).finally(() => { this.#handshaking = null; });
    });
    socket.on('connect_error', (e: Error) => {
      if (/VERSION_MISMATCH/.test(e.message)) {
        this.#fail(new ProtocolError('VERSION_MISMATCH', `coordinator refused this client: ${e.message}`));
        return;
      }
      attempts++;
      if (attempts === 1 || attempts % 10 === 0) log.info(`${this.#clientId}: cannot reach ${o.coordinatorUrl} (${e.message}); retrying with backoff (attempt ${attempts})`);
    });
    socket.on('disconnect', (reason) => { if (!this.#stopped) log.info(`${this.#clientId}: disconnected (${reason}); will reconnect`); });
    const on = socket.on.bind(socket) as (ev: string, fn: (...a: unknown[]) => void) => void;
    on(EV.roundStart, (payload: unknown, ack: unknown) => this.#onRoundStart(payload, ack));
    on(EV.roundEnd, (payload: unknown) => {
      try {
        const e = parseRoundEnd(this.#open(SIGNED_DOMAINS.roundEnd, payload));
        log.debug(`round ${e.round} ${e.status} with ${e.contributors} contributor(s)`);
        const sj = this.#secure;
        if (sj && sj.roundId === e.roundId) { sj.rejectShares(new ProtocolError('ROUND_OVER', `round ${e.round} ended`)); this.#secure = null; }
      } catch (err) { log.warn(`bad round:end from coordinator: ${errorMessage(err)}`); }
    });
    for (const ev of [EV.secaggKeys, EV.secaggShares, EV.secaggSurvivors, EV.secaggUnmask]) on(ev, (payload: unknown) => this.#onSecAggNotice(ev, payload));
    on(EV.sessionDone, (payload: unknown) => {
      try {
        const d = parseSessionDone(this.#open(SIGNED_DOMAINS.sessionDone, payload));
        log.info(`${this.#clientId}: session done after ${d.completedRounds} round(s)`);
        void this.stop().then(() => this.#resolveRun({ completedRounds: d.completedRounds, roundsTrained: this.#roundsTrained }));
      } catch (err) { log.warn(`bad session:done from coordinator: ${errorMessage(err)}`); }
    });
    return done;
  }

  /** Fault injection (tests, simulations): drop the transport as a network failure would; the client reconnects by itself. */
  simulateConnectionLoss(): void {
    this.#socket?.io.engine?.close();
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#socket?.disconnect();
    await this.#job?.promise.catch(() => null);
    this.#trainer?.dispose();
    this.#trainer = undefined;
  }

  #fail(e: unknown): void {
    log.error(`${this.#clientId}: ${errorMessage(e)}`);
    void this.stop().then(() => this.#rejectRun(e));
  }

  #onHandshakeError(e: unknown): void {
    // integrity, data and config problems do not get better by reconnecting
    if (e instanceof FedloraError && ['VERSION_MISMATCH', 'MODEL_FORMAT', 'DATA', 'CONFIG', 'MODEL_MISMATCH', 'BACKEND', 'CRYPTO_UNKNOWN_KEY',
      'CRYPTO_REVOKED', 'CRYPTO_BAD_SIGNATURE', 'IDENTITY_MISMATCH', 'BAD_SIGNATURE', 'AUTH_REQUIRED'].includes(e.code)) { this.#fail(e); return; }
    log.warn(`${this.#clientId}: handshake failed (${errorMessage(e)}); reconnecting`);
    const s = this.#socket;
    s?.disconnect();
    setTimeout(() => { if (!this.#stopped) s?.connect(); }, 1000 + Math.random() * 1000);
  }

  async #loadOrCreateId(): Promise<string> {
    const f = join(this.options.stateDir, 'client-id');
    const have = (await readFile(f, 'utf8').catch(() => '')).trim();
    if (ID_RE.test(have)) return have;
    const id = `client-${randomBytes(6).toString('hex')}`;
    await atomicWrite(f, `${id}\n`);
    return id;
  }

  #timeout(): number { return this.options.requestTimeoutMs ?? 30_000; }

  /** Verifies a coordinator-signed envelope against the pinned key and returns its body. */
  #open(domain: string, payload: unknown, maxBytes = 1 << 16): unknown {
    if (!this.#coordinatorKey) throw new ProtocolError('NOT_READY', 'no coordinator key yet');
    return openEnvelope(domain, payload, this.#coordinatorKey, maxBytes);
  }

  /** Pins the coordinator key: --coordinator-key, else the one stored on first use under the state folder. */
  async #checkCoordinatorKey(key: Uint8Array): Promise<void> {
    if (this.#coordinatorKey) {
      if (!bytesEqual(this.#coordinatorKey, key)) {
        throw new FedloraError('CRYPTO_UNKNOWN_KEY', `coordinator presents key ${keyFingerprint(key)}…, but ${keyFingerprint(this.#coordinatorKey)}… is pinned: refusing to join`);
      }
      return;
    }
    const file = join(this.options.stateDir, 'coordinator.pub');
    const stored = (await readFile(file, 'utf8').catch(() => '')).trim();
    if (stored) {
      const pinned = parsePublicKey(stored);
      this.#coordinatorKey = pinned;
      return this.#checkCoordinatorKey(key);
    }
    log.warn(`${this.#clientId}: trusting coordinator key ${formatPublicKey(key)} on first use (stored in ${file}); pass --coordinator-key to pin it instead`);
    await atomicWrite(file, `${formatPublicKey(key)}\n`);
    this.#coordinatorKey = key;
  }

  async #handshake(): Promise<void> {
    const o = this.options;
    const socket = this.#socket!;
    // join: challenge → pin/TOFU check of the coordinator key and its certified box key → proof bound to this connection
    const ch = parseAuthChallengeReply(await request(socket, EV.authChallenge, {}, this.#timeout()));
    await this.#checkCoordinatorKey(ch.challenge.coordinator);
    this.#boxKey = verifyCoordinatorBoxKey(ch.boxKey, this.#coordinatorKey!);
    const proof = proveJoin(ch.challenge, socket.id ?? '', this.#identity!);
    const hello = parseHelloReply(await request(socket, EV.hello, {
      protocolVersion: PROTOCOL_VERSION, clientId: this.#clientId,
      capabilities: { maxRank: o.maxRank!, backend: o.backend ?? 'auto', examples: this.#trainer?.trainExamples ?? 0, gpu: false },
      personal: o.personal ?? [], proof,
    }, this.#timeout()));
    if (hello.protocolVersion !== PROTOCOL_VERSION) throw new ProtocolError('VERSION_MISMATCH', `coordinator speaks protocol ${hello.protocolVersion}, this client ${PROTOCOL_VERSION}`);
    if (this.#hello && this.#hello.modelId !== hello.modelId) throw new ProtocolError('MODEL_MISMATCH', 'the coordinator now serves a different base model; restart the client');
    this.#hello = hello;
    this.#strategy = getStrategy(hello.strategy);
    if (!this.#modelDir) {
      const bar = o.progress ? new Progress('model') : null;
      const m = await ensureModel({
        modelId: hello.modelId, files: hello.files, chunkSize: hello.chunkSize, cacheRoot: join(o.stateDir, 'models'), provisioned: o.modelDir,
        fetch: async (file, offset, length) => parseChunkReply(await request(socket, EV.modelChunk, { modelId: hello.modelId, file, offset, length }, this.#timeout(), length + 4096), length),
        onProgress: bar ? (d, t) => bar.update(d, t) : undefined,
      });
      bar?.done();
      this.#modelDir = m.dir;
    }
    if (!this.#trainer) {
      const factory = o.trainerFactory ?? (async (f: TrainerFactoryOptions) => (await import('./trainer.js')).createTrainer(f));
      this.#trainer = await factory({ modelDir: this.#modelDir, dataFile: o.dataFile, backend: o.backend ?? 'auto', evalFraction: o.evalFraction!, seed: o.seed ?? 0 });
    }
    await request(socket, EV.ready, { modelId: hello.modelId, examples: this.#trainer.trainExamples }, this.#timeout());
    log.info(`${this.#clientId}: ready (${this.#trainer.trainExamples} training examples, rank ≤ ${o.maxRank}, ${hello.completedRounds}/${hello.rounds} rounds done)`);
  }

  #onRoundStart(payload: unknown, ack: unknown): void {
    if (typeof ack !== 'function') return;
    const reply = (b: Uint8Array) => { try { (ack as (r: Uint8Array) => void)(b); } catch { /* gone */ } };
    let rs: RoundStart;
    try {
      // verified before anything acts on it: round, rank, participants, secagg parameters, model and global adapter hash
      rs = parseRoundStart(this.#open(SIGNED_DOMAINS.roundStart, payload, 1 << 30));
      if (!this.#trainer || !this.#strategy || !this.#hello) throw new ProtocolError('NOT_READY', 'client is not ready');
      if (rs.modelId !== this.#hello.modelId) throw new ProtocolError('MODEL_MISMATCH', 'round start names another base model');
      if (rs.strategy !== this.#strategy.name) throw new ProtocolError('BAD_MESSAGE', `round strategy ${rs.strategy} differs from the session's ${this.#strategy.name}`);
      if (rs.rank > this.options.maxRank!) throw new ProtocolError('BAD_MESSAGE', `assigned rank ${rs.rank} exceeds this client's ${this.options.maxRank}`);
      const me = rs.participants.find((p) => p.id === this.#clientId);
      if (!me || !bytesEqual(me.key, this.#identity!.publicKey) || me.rank !== rs.rank) throw new ProtocolError('BAD_MESSAGE', 'round start does not list this client with its key and rank');
      const insecureOk = this.options.insecureAggregation === true || this.options.secureAggregation === false;
      if (!rs.secure && !insecureOk) throw new ProtocolError('INSECURE_REFUSED', 'the coordinator runs without secure aggregation; this client only joins secure rounds (--insecure-aggregation to allow)');
      if (rs.secure && this.#secure?.roundId !== rs.roundId) this.#startSecure(rs, me.weight);
    } catch (e) {
      log.warn(`${this.#clientId}: refused round start: ${errorMessage(e)}`);
      reply(errorReply(e));
      return;
    }
    const bytesDown = payload instanceof Uint8Array ? payload.byteLength : 0;
    reply(okReply());
    // the coordinator resends round:start after a reconnect: reuse the job (and secagg state) for the same round
    if (this.#job?.roundId === rs.roundId) {
      const job = this.#job;
      const adv = this.#secure?.roundId === rs.roundId ? this.#secure.sent.get('advertise') : undefined;
      if (adv) void this.#sendSecAgg(rs, 'advertise', adv);
      void job.promise.then((t) => { if (t) return this.#deliver(rs, t, null, bytesDown); })
        .catch((e: unknown) => log.error(`${this.#clientId}: round ${rs.round} redelivery failed: ${errorMessage(e)}`));
      return;
    }
    const startedAt = Date.now();
    // one trainer, one job at a time: a newer round (e.g. after a coordinator restart) waits its turn
    const prev = this.#job?.promise.catch(() => null) ?? Promise.resolve(null);
    const job: Job = { roundId: rs.roundId, promise: prev.then(() => (this.#stopped ? null : this.#train(rs))) };
    this.#job = job;
    void job.promise.then(async (t) => {
      if (!t) return;
      await this.#deliver(rs, t, startedAt, bytesDown);
    }).catch((e: unknown) => {
      log.error(`${this.#clientId}: round ${rs.round} failed locally: ${errorMessage(e)}`);
    });
  }

  // ---------- secure aggregation ----------

  #startSecure(rs: RoundStart, weight: number): void {
    const sec = rs.secure!;
    if (sec.modelHash !== `${rs.modelId}:${rs.globalHash}`) throw new ProtocolError('BAD_MESSAGE', 'secagg model hash does not bind this round\'s model and global adapter');
    const sc = new SecAggClient({
      params: {
        round: rs.round, modelHash: sec.modelHash, vectorLength: layoutLength(rs.layout), participants: rs.participants.map((p) => ({ id: p.id, key: p.key })),
        k: sec.k, t: sec.t, nonce: sec.nonce, coordinatorKey: this.#coordinatorKey!,
      },
      paramsSignature: sec.paramsSignature, coordinatorKey: this.#coordinatorKey!, identity: this.#identity!, id: this.#clientId,
    });
    let resolveShares!: (m: SharesMsg) => void, rejectShares!: (e: unknown) => void;
    const shares = new Promise<SharesMsg>((res, rej) => { resolveShares = res; rejectShares = rej; });
    shares.catch(() => undefined);
    const prev = this.#secure;
    prev?.rejectShares(new ProtocolError('ROUND_OVER', 'a newer round started'));
    const sj: SecureJob = { roundId: rs.roundId, round: rs.round, sc, quant: { ...sec.quant }, weight, sent: new Map(), shares, resolveShares, rejectShares };
    this.#secure = sj;
    // keys go out right away; training runs while the coordinator collects the other advertisements
    this.#sendSecAgg(rs, 'advertise', this.#sealSecAgg(rs, 'advertise', sc.advertiseKeys()));
  }

  #sealSecAgg(rs: { roundId: string; round: number }, kind: SecAggKind, msg: unknown): Uint8Array {
    const bytes = sealForCoordinator(encode(msg), { roundId: rs.roundId, round: rs.round, sender: this.#clientId, kind: `secagg/${kind}` }, this.#boxKey!);
    this.#secure?.sent.set(kind, bytes);
    return bytes;
  }

  async #sendSecAgg(rs: { roundId: string; round: number }, kind: SecAggKind, bytes: Uint8Array): Promise<boolean> {
    const socket = this.#socket;
    if (!socket?.connected || this.#stopped) return false;
    try {
      await requestEncoded(socket, EV.secagg, bytes, this.#timeout());
      return true;
    } catch (e) {
      log.warn(`${this.#clientId}: round ${rs.round} secagg ${kind} refused: ${errorMessage(e)}`);
      return false;
    }
  }

  #onSecAggNotice(event: string, payload: unknown): void {
    const sj = this.#secure;
    try {
      const o = decode(payload, 64 << 20) as { roundId?: unknown; msg?: unknown } | null;
      if (!o || typeof o !== 'object' || !sj || o.roundId !== sj.roundId) return; // not for the round this client is in
      const rs = { roundId: sj.roundId, round: sj.round };
      const step = (kind: SecAggKind, phase: string, f: () => unknown) => {
        if (sj.sc.phase === phase) void this.#sendSecAgg(rs, kind, this.#sealSecAgg(rs, kind, f()));
        else { const again = sj.sent.get(kind); if (again) void this.#sendSecAgg(rs, kind, again); }
      };
      if (event === EV.secaggKeys) step('share', 'share', () => sj.sc.shareKeys(o.msg as never));
      else if (event === EV.secaggShares) {
        const m = o.msg as SharesMsg;
        log.info(`${this.#clientId}: round ${sj.round}: received key shares from ${Array.isArray(m?.envelopes) ? m.envelopes.length : 0} neighbour(s)`);
        sj.resolveShares(m);
      }
      else if (event === EV.secaggSurvivors) step('consistency', 'consistency', () => sj.sc.consistencyCheck(o.msg as never));
      else if (event === EV.secaggUnmask) step('unmask', 'unmask', () => sj.sc.unmask(o.msg as never));
    } catch (e) {
      // the SecAggClient aborts (and wipes its secrets) on anything inconsistent; the round goes on without us
      log.warn(`${this.#clientId}: ${event}: ${errorMessage(e)}`);
    }
  }

  // ---------- upload ----------

  #lastSummary: ClientRoundSummary | null = null;

  /** Sends the trained contribution: masked (secure rounds) or sealed plaintext (insecure rounds). */
  async #deliver(rs: RoundStart, t: Trained, startedAt: number | null, bytesDown: number): Promise<void> {
    const socket = this.#socket;
    if (!socket?.connected || this.#stopped) return; // the coordinator resends round:start after we reconnect
    if (this.#handshaking) await this.#handshaking;
    let accepted = false;
    let bytes: Uint8Array;
    if (rs.secure) {
      const sj = this.#secure;
      if (!sj || sj.roundId !== rs.roundId) return;
      let shares: SharesMsg;
      try { shares = await sj.shares; } catch { return; } // the round ended before key sharing completed
      sj.masked ??= (async () => {
        if (sj.sc.phase !== 'mask') return sj.sent.get('masked') ?? null;
        const q = encodeUpdate(t.vector, sj.weight, sj.quant);
        await this.#debugDump(rs, t, sj.weight, sj.quant);
        return this.#sealSecAgg(rs, 'masked', { ...sj.sc.maskedInput(shares, q), metrics: t.metrics });
      })();
      const built = await sj.masked;
      if (!built) { log.warn(`${this.#clientId}: round ${rs.round}: secure aggregation is in phase ${sj.sc.phase}${sj.sc.abortReason ? ` (${sj.sc.abortReason})` : ''}; no upload`); return; }
      bytes = built;
      this.options.onUpload?.(bytes, rs.round);
      accepted = await this.#sendSecAgg(rs, 'masked', bytes);
    } else {
      const vector = new Float32Array(t.vector.length);
      for (let i = 0; i < vector.length; i++) vector[i] = t.vector[i]! * t.weight;
      await this.#debugDump(rs, t, t.weight, null);
      const update: Update = { roundId: rs.roundId, rank: rs.rank, weight: t.weight, vector, metrics: t.metrics };
      bytes = sealForCoordinator(encode(update), { roundId: rs.roundId, round: rs.round, sender: this.#clientId, kind: 'update' }, this.#boxKey!);
      this.options.onUpload?.(bytes, rs.round);
      if (!socket.connected || this.#stopped) return;
      try {
        await requestEncoded(socket, EV.update, bytes, this.#timeout());
        accepted = true;
      } catch (e) {
        log.warn(`${this.#clientId}: round ${rs.round} upload refused: ${errorMessage(e)}`);
      }
    }
    const s = this.#lastSummary;
    if (s && s.roundId === rs.roundId) {
      s.accepted = accepted; s.bytesUp = bytes.byteLength; s.bytesDown = bytesDown;
      const ev = (m?: EvalMetrics) => (m ? `loss ${m.loss.toFixed(4)} acc ${m.accuracy.toFixed(3)}` : '–');
      log.info(`${this.#clientId}: round ${rs.round} rank ${rs.rank}: train loss ${s.trainLoss.toFixed(4)} (${s.steps} steps${startedAt ? `, ${((Date.now() - startedAt) / 1000).toFixed(1)}s` : ''}); global ${ev(s.global)}; personalized ${ev(s.personal)}; ${bytesDown} B down, ${bytes.byteLength} B up${rs.secure ? ' (masked)' : ''}${accepted ? '' : ' (refused)'}`);
      this.options.onRound?.({ ...s });
    }
  }

  /** Test-only: the plaintext this client contributed (weight·clip(x)), so an e2e test can recompute the plain aggregate. */
  async #debugDump(rs: RoundStart, t: Trained, weight: number, q: QuantParams | null): Promise<void> {
    if (!process.env[DEBUG_CONTRIBUTION_ENV]) return;
    const c = q?.clip ?? Infinity;
    const contribution = new Float32Array(t.vector.length);
    for (let i = 0; i < contribution.length; i++) contribution[i] = Math.max(-c, Math.min(c, t.vector[i]!)) * weight;
    await atomicWrite(join(this.options.stateDir, `debug-contribution-${rs.round}.msgpack`), encode({
      roundId: rs.roundId, round: rs.round, rank: rs.rank, weight, contribution, quant: q, global: rs.global, layout: rs.layout,
    }));
  }

  /** Strategy- or config-personal: stays on this client, persisted between rounds. */
  #isPersonal(name: string): boolean {
    const p = parseLoraName(name);
    if (!p) return false;
    if (this.#strategy!.name === 'fedsa' && p.factor === 'B') return true;
    return this.#isPersonalGlob(name);
  }

  async #train(rs: RoundStart): Promise<Trained> {
    const trainer = this.#trainer!;
    const strategy = this.#strategy!;
    const o = this.options;
    const globalTensors = roundStartTensors(rs);
    const globalAdapter: LoraAdapter = { config: { ...rs.config, baseModelNameOrPath: null }, tensors: globalTensors };
    const personal = await this.#loadPersonal();
    const startTensors: TensorMap = new Map(globalTensors);
    for (const [name, g] of globalTensors) {
      if (!this.#isPersonal(name)) continue;
      const mine = personal.get(name);
      if (mine) startTensors.set(name, atRank(name, mine, rs.rank, g));
    }
    const start: LoraAdapter = { config: globalAdapter.config, tensors: startTensors };
    const evaluate = o.evaluate ?? true;
    const global = evaluate ? await trainer.evaluate(globalAdapter) : undefined;
    const steps = rs.train.epochs > 0 ? Math.max(1, Math.ceil((rs.train.epochs * trainer.trainExamples) / rs.train.batchSize)) : rs.train.steps;
    const bar = o.progress ? new Progress(`round ${rs.round}`) : null;
    const seed = (rs.train.seed ^ hash32(this.#clientId)) >>> 0;
    const t0 = Date.now();
    const res = await trainer.train(start, {
      steps, lr: rs.train.lr, batchSize: rs.train.batchSize, seed,
      // under ffa A is the frozen shared projection
      trainable: (n) => !(strategy.name === 'ffa' && parseLoraName(n)?.factor === 'A'),
      onProgress: bar ? (s, t, l) => bar.update(s, t, `loss ${l.toFixed(3)}`) : undefined,
    });
    const trainMs = Date.now() - t0;
    bar?.done();
    const personalMetrics = evaluate ? await trainer.evaluate(res.adapter) : undefined;
    await this.#savePersonal(res.adapter.tensors);
    this.#roundsTrained++;
    // the layout's tensors: contributions at weight 1 for shared ones, zeros where personal; the
    // weight is applied once, by the plain upload or by the fixed-point encoding
    const layout = makeLayout(rs.layout);
    const contrib: TensorMap = new Map();
    for (const e of layout.entries) {
      const t = res.adapter.tensors.get(e.name);
      if (this.#isPersonal(e.name) || !t) {
        if (!t && !this.#isPersonal(e.name)) throw new ProtocolError('LAYOUT', `trained adapter lacks ${e.name}`);
        contrib.set(e.name, { shape: [...e.shape], data: new Float32Array(e.size) });
      } else {
        contrib.set(e.name, strategy.contribution(e.name, t, 1, rs.maxRank));
      }
    }
    const vector = flatten(contrib, layout);
    const metrics: Update['metrics'] = { trainLoss: Math.min(1e6, Math.max(0, finiteOr(res.trainLoss, 0))), steps: res.steps, trainMs: trainMs };
    if (global) metrics.global = cleanEval(global);
    if (personalMetrics) metrics.personal = cleanEval(personalMetrics);
    this.#lastSummary = { round: rs.round, roundId: rs.roundId, rank: rs.rank, trainLoss: res.trainLoss, steps: res.steps, global, personal: personalMetrics, bytesUp: 0, bytesDown: 0, accepted: false };
    return { vector, weight: Math.max(1, res.examples), metrics };
  }

  #personalFile(): string { return join(this.options.stateDir, 'personal.safetensors'); }

  async #loadPersonal(): Promise<TensorMap> {
    const out: TensorMap = new Map();
    let st;
    try { st = await loadSafetensors(this.#personalFile()); } catch (e) {
      if ((e as FedloraError).code === 'MODEL_FORMAT' && /cannot open/.test(errorMessage(e))) return out;
      throw e;
    }
    for (const name of st.entries.keys()) out.set(name, readFloatTensor(st, name));
    return out;
  }

  async #savePersonal(tensors: TensorMap): Promise<void> {
    const keep = new Map<string, Tensor32>();
    for (const [n, t] of tensors) if (this.#isPersonal(n)) keep.set(n, t);
    if (keep.size) await saveSafetensors(this.#personalFile(), keep, { fedlora: 'personal' });
  }
}

/** A stored personal factor brought to this round's rank (slots beyond the stored rank come from the global). */
function atRank(name: string, t: Tensor32, rank: number, global: Tensor32): Tensor32 {
  const p = parseLoraName(name)!;
  const cur = p.factor === 'A' ? t.shape[0]! : t.shape[1]!;
  if (cur === rank) return t;
  const resized = p.factor === 'A' ? resizeRows(t, rank) : resizeCols(t, rank);
  if (cur < rank) {
    // fill the new slots from the global so a grown rank starts where everyone else is
    const [rows, cols] = resized.shape as [number, number];
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) {
      const slot = p.factor === 'A' ? i : j;
      if (slot >= cur) resized.data[i * cols + j] = global.data[i * cols + j]!;
    }
  }
  return resized;
}

function cleanEval(m: EvalMetrics): { loss: number; accuracy: number; f1?: number; examples: number } {
  return {
    loss: Math.min(1e6, Math.max(0, finiteOr(m.loss, 1e6))),
    accuracy: Math.min(1, Math.max(0, finiteOr(m.accuracy, 0))),
    ...(m.f1 !== undefined && Number.isFinite(m.f1) ? { f1: Math.min(1, Math.max(0, m.f1)) } : {}),
    examples: Math.max(0, Math.floor(m.examples)),
  };
}

function finiteOr(x: number, d: number): number { return Number.isFinite(x) ? x : d; }

function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 0x01000193) >>> 0; }
  return h;
}
