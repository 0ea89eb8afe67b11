/**
 * The participant. Connects (socket.io, exponential-backoff reconnect), says hello, fetches and
 * verifies the base model, then takes part in every round it is sampled for. The connection, the
 * join, the model and the single local trainer live here; each round is a ParticipantRound
 * (client/participant/) that owns its secure-aggregation state and its upload, which is built by
 * the pipeline in client/upload/ (contribution → mods → encode). Personal tensors never enter an
 * upload: their layout positions are zero, and the coordinator averages them only over clients
 * that share them.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { io, type Socket } from 'socket.io-client';
import { ConfigError, DataError, FedloraError, ProtocolError, errorMessage } from '../shared/errors.js';
import { logger } from '../shared/log.js';
import { decode } from '../shared/codec/index.js';
import {
  EV, PROTOCOL_VERSION, ID_RE, SIGNED_DOMAINS, globMatcher, okReply, errorReply, openEnvelope, parseAuthChallengeReply, parseChunkReply,
  parseHelloReply, parseRoundEnd, parseRoundStart, parseSessionDone, request, requestEncoded, roundStartTensors, sealForCoordinator,
  type ClientToServerEvents, type HelloReply, type RoundStart, type ServerToClientEvents, type UpdateMetrics,
} from '../shared/protocol/index.js';
import {
  bytesEqual, formatPublicKey, keyFingerprint, loadOrCreateIdentity, parsePublicKey, proveJoin, verifyCoordinatorBoxKey,
  type Identity,
} from '../shared/crypto/index.js';
import { getStrategy, type Strategy } from '../shared/aggregation/index.js';
import { isAdapterTensorName, parseLoraName, parseXsName, resizeCols, resizeRows, type LoraAdapter } from '../shared/lora/adapter.js';
import { atomicWrite, loadSafetensors, readFloatTensor, saveSafetensors } from '../shared/model/safetensors.js';
import type { Tensor32, TensorMap } from '../shared/tensor.js';
import type { Example } from '../shared/data/jsonl.js';
import { fnv1a32 } from '../shared/data/random.js';
import { ensureModel } from './model-cache.js';
import type { LocalTrainer, EvalMetrics } from './trainer.js';
import { Progress } from './progress.js';
import { diagnoseConnectError, nextRetryMs, parseCoordinatorUrl } from './connect-error.js';
import { ParticipantRound, type LocalResult, type ParticipantHost, type SecAggNotice } from './participant/round.js';
import type { ClientObservers, ClientRoundSummary } from './participant/observe.js';
import { personalRule, type UploadMod } from './upload/index.js';

export type { ClientRoundSummary } from './participant/observe.js';

const log = logger('fedlora:client');

export interface TrainerFactoryOptions {
  modelDir: string; dataFile: string; backend: string; evalFraction: number; seed: number;
  /** Storage of the frozen base's linear weights (LoadOptions.baseDtype); unset: in the tfjs heap. */
  baseDtype?: 'fp32' | 'bf16' | 'int8' | 'nf4';
  /** LoadOptions.recomputeBlocks: recompute each block's activations in the backward pass (less memory, slower steps). */
  recomputeBlocks?: boolean;
  /** The dataset, already read and validated before connecting (the default factory passes it on). */
  examples?: Example[];
}

/** Backend names the client accepts (shared/backend's BACKEND_CHOICES, without importing tfjs up front). */
const BACKEND_NAMES = ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'];
/** Connection failures with the same cause are logged at most this often. */
const RETRY_LOG_MS = 30_000;
export type TrainerFactory = (o: TrainerFactoryOptions) => Promise<LocalTrainer>;

/** Fault injection for tests and simulations, handed in rather than exposed as public methods. */
export interface ClientFaults {
  /** Called with each new socket: `dropConnection()` closes the transport as a network failure would (the client reconnects by itself). */
  onSocket?(dropConnection: () => void): void;
}

export interface ClientOptions {
  /** Coordinator URL, or a comma-separated list (cluster edges): reconnect attempts go round the list. */
  coordinatorUrl: string;
  dataFile: string;
  stateDir: string;
  maxRank?: number;
  backend?: string;
  /**
   * Keep the frozen base's linear weights outside the tfjs heap, compactly (fp32, bf16, int8, or nf4 =
   * QLoRA's 4-bit NormalFloat) and materialise one at a time: a base model larger than the wasm heap can
   * train, at some cost in step time. Unset: every weight is a tensor.
   */
  baseDtype?: 'fp32' | 'bf16' | 'int8' | 'nf4';
  /** Recompute each block's activations in the backward pass instead of keeping them: less training memory, ≈2× the step time (default off). */
  recomputeBlocks?: boolean;
  /** Globs over PEFT tensor names this client personalizes (see personalMode). */
  personal?: string[];
  /**
   * What `personal` means (default 'finetune'):
   * - 'finetune': the matched tensors are trained and shared like every other tensor, so the global
   *   adapter keeps a trained counterpart of each; every round the client then fine-tunes its own copy
   *   of them on top of the global adapter it received (`personalSteps` steps, fresh optimizer, the
   *   rest of the adapter frozen), keeps that copy in <state>/personal.safetensors and reports it as
   *   its personalized model.
   * - 'exclusive': the matched tensors never leave the client (zeros in the upload, declared to the
   *   coordinator, which averages them over the clients that share them); the global copy of them
   *   is then trained by nobody who keeps them.
   */
  personalMode?: 'finetune' | 'exclusive';
  /** Fine-tuning steps for the personal copy under 'finetune' (default: the round's local steps). */
  personalSteps?: number;
  /** Learning rate of the personal copy's fine-tuning (default: the round's lr). */
  personalLr?: number;
  /**
   * Ditto-style proximal weight λ for the personal copy's fine-tuning (default 0 = none): the loss
   * gets (λ/2)·Σ‖s·B·A − s·B_g·A_g‖² over the modules it fine-tunes, B_g·A_g the global adapter the
   * client received this round. On the products, not the factors, so it does not depend on the slot
   * basis the coordinator's refactor chooses for the global.
   */
  personalProx?: number;
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
  /** Extra upload mods, applied in order after the built-in ones (the secure round's clip) and before encoding. */
  uploadMods?: UploadMod[];
  /** Observers (tests inspect contributions and uploads; simulations count bytes and rounds). */
  observe?: ClientObservers;
  /** @deprecated same as observe.upload */
  onUpload?: (bytes: Uint8Array, round: number) => void;
  /** @deprecated same as observe.round */
  onRound?: (summary: ClientRoundSummary) => void;
  faults?: ClientFaults;
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

type Ack = (reply: Uint8Array) => void;

/** Answers a notice's ack when the coordinator asked for one (older coordinators send none). */
function acker(ack: unknown): Ack {
  return (reply) => { if (typeof ack === 'function') try { (ack as Ack)(reply); } catch { /* peer gone */ } };
}

export class Client {
  readonly options: ClientOptions;
  #socket?: Socket<ServerToClientEvents, ClientToServerEvents>;
  #clientId = '';
  #hello?: HelloReply;
  #modelDir?: string;
  #trainer?: LocalTrainer;
  #strategy?: Strategy;
  #isPersonalGlob: (n: string) => boolean;
  #isPersonal: (n: string) => boolean = () => false;
  /** The round this client takes part in now; a newer round:start aborts it. */
  #round: ParticipantRound | null = null;
  /** Tail of the trainer queue: one trainer, one round's training at a time. */
  #trainerBusy: Promise<unknown> = Promise.resolve();
  #stopped = false;
  #resolveRun!: (v: { completedRounds: number; roundsTrained: number }) => void;
  #rejectRun!: (e: unknown) => void;
  /** Round numbers this client trained for (a retried or resumed round counts once). */
  #roundsTrained = new Set<number>();
  /** The backend in use once resolved (before connecting, unless a trainerFactory is given). */
  #backend = 'auto';
  #examples?: Example[];
  #globsChecked = false;
  #handshaking: Promise<void> | null = null;
  #identity?: Identity;
  #coordinatorKey?: Uint8Array;
  #boxKey?: Uint8Array;
  readonly #host: ParticipantHost;
  readonly #observe: ClientObservers;

  constructor(o: ClientOptions) {
    if (!o.coordinatorUrl) throw new ConfigError('--coordinator URL is required');
    for (const u of o.coordinatorUrl.split(',').map((x) => x.trim()).filter(Boolean)) parseCoordinatorUrl(u);
    if (o.baseDtype !== undefined && !['fp32', 'bf16', 'int8', 'nf4'].includes(o.baseDtype)) throw new ConfigError(`--base-dtype must be one of fp32, bf16, int8, nf4, got ${JSON.stringify(o.baseDtype)}`);
    if (o.backend !== undefined && !BACKEND_NAMES.includes(o.backend)) throw new ConfigError(`--backend must be one of ${BACKEND_NAMES.join(', ')}, got ${JSON.stringify(o.backend)}`);
    if (!o.dataFile) throw new ConfigError('--data FILE is required');
    if (!o.stateDir) throw new ConfigError('--state DIR is required');
    const maxRank = o.maxRank ?? 8;
    if (!Number.isInteger(maxRank) || maxRank < 1 || maxRank > 1024) throw new ConfigError(`--max-rank must be an integer in [1, 1024], got ${maxRank}`);
    const ef = o.evalFraction ?? 0.2;
    if (!(ef >= 0 && ef < 1)) throw new ConfigError(`--eval-fraction must be in [0, 1), got ${ef}`);
    if (o.clientId !== undefined && !ID_RE.test(o.clientId)) throw new ConfigError(`client id ${JSON.stringify(o.clientId)} must match ${ID_RE}`);
    this.options = { ...o, maxRank, evalFraction: ef };
    this.#isPersonalGlob = globMatcher(o.personal ?? []);
    if (o.personalMode !== undefined && o.personalMode !== 'finetune' && o.personalMode !== 'exclusive') throw new ConfigError(`personalMode must be 'finetune' or 'exclusive', got ${JSON.stringify(o.personalMode)}`);
    if (o.personalSteps !== undefined && (!Number.isInteger(o.personalSteps) || o.personalSteps < 0 || o.personalSteps > 100_000)) throw new ConfigError(`personalSteps must be an integer in [0, 100000], got ${JSON.stringify(o.personalSteps)}`);
    if (o.personalLr !== undefined && !(Number.isFinite(o.personalLr) && o.personalLr > 0 && o.personalLr <= 10)) throw new ConfigError(`personalLr must be a number in (0, 10], got ${JSON.stringify(o.personalLr)}`);
    if (o.personalProx !== undefined && !(Number.isFinite(o.personalProx) && o.personalProx >= 0 && o.personalProx <= 1e6)) throw new ConfigError(`personalProx must be a number in [0, 1000000], got ${JSON.stringify(o.personalProx)}`);
    const { onUpload, onRound } = o;
    this.#observe = {
      ...o.observe,
      ...(onUpload || o.observe?.upload ? { upload: (b: Uint8Array, r: number) => { o.observe?.upload?.(b, r); onUpload?.(b, r); } } : {}),
      ...(onRound || o.observe?.round ? { round: (s: ClientRoundSummary) => { o.observe?.round?.(s); onRound?.(s); } } : {}),
    };
    this.#host = this.#makeHost();
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
    // a comma-separated list (cluster edges): the first is tried first, each failed attempt moves to the next
    const urls = o.coordinatorUrl.split(',').map((u) => u.trim()).filter(Boolean);
    for (const u of urls) parseCoordinatorUrl(u);
    const url = parseCoordinatorUrl(urls[0] ?? o.coordinatorUrl);
    const ca = await this.prepare();
    await mkdir(o.stateDir, { recursive: true });
    await this.loadIdentity();
    this.#clientId = o.clientId ?? (await this.#loadOrCreateId());
    const done = new Promise<{ completedRounds: number; roundsTrained: number }>((res, rej) => { this.#resolveRun = res; this.#rejectRun = rej; });
    const socket: Socket<ServerToClientEvents, ClientToServerEvents> = io(urls[0] ?? o.coordinatorUrl.trim(), {
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
    o.faults?.onSocket?.(() => socket.io.engine?.close());
    let attempts = 0, lastLog = 0, lastCause = '';
    socket.on('connect', () => {
      if (attempts > 1) log.info(`${this.#clientId}: reached ${o.coordinatorUrl} after ${attempts} failed attempt(s)`);
      attempts = 0; lastCause = '';
      log.info(`${this.#clientId}: connected to ${o.coordinatorUrl}`);
      this.#handshaking = this.#handshake().catch((e: unknown) => this.#onHandshakeError(e)).finally(() => { this.#handshaking = null; });
    });
    socket.on('connect_error', (e: Error) => {
      if (/VERSION_MISMATCH/.test(e.message)) {
        this.#fail(new ProtocolError('VERSION_MISMATCH', `coordinator refused this client: ${e.message}`));
        return;
      }
      const n = ++attempts;
      // the manager reconnects to its `uri`: rotate through the list (socket.io-client keeps it as a plain field)
      if (urls.length > 1) { const m = socket.io as unknown as { uri: string }; m.uri = urls[(urls.indexOf(m.uri) + 1) % urls.length]!; }
      void diagnoseConnectError(e, url, ca !== undefined).then((d) => {
        if (this.#stopped) return;
        if (d.fatal) { this.#fail(new ConfigError(`cannot connect to ${o.coordinatorUrl}: ${d.message}`)); return; }
        log.debug(`${this.#clientId}: connect attempt ${n} failed (${d.code})`);
        // the first failure, a new cause, and then at most every RETRY_LOG_MS: the cause and when the next try comes
        const now = Date.now();
        if (n === 1 || d.code !== lastCause || now - lastLog >= RETRY_LOG_MS) {
          lastLog = now; lastCause = d.code;
          const next = nextRetryMs(n, o.reconnectInitialMs ?? 500, o.reconnectMaxMs ?? 10_000) / 1000;
          log.warn(`${this.#clientId}: cannot reach ${o.coordinatorUrl}: ${d.message}; still retrying (attempt ${n}), next in about ${next < 10 ? next.toFixed(1) : Math.round(next)} s`);
        }
      });
    });
    socket.on('disconnect', (reason) => { if (!this.#stopped) log.info(`${this.#clientId}: disconnected (${reason}); will reconnect`); });
    const on = socket.on.bind(socket) as (ev: string, fn: (...a: unknown[]) => void) => void;
    on(EV.roundStart, (payload: unknown, ack: unknown) => this.#onRoundStart(payload, ack));
    on(EV.roundEnd, (payload: unknown, ack: unknown) => this.#onRoundEnd(payload, acker(ack)));
    for (const ev of [EV.secaggKeys, EV.secaggShares, EV.secaggSurvivors, EV.secaggUnmask]) on(ev, (payload: unknown, ack: unknown) => this.#onSecAggNotice(ev, payload, acker(ack)));
    on(EV.sessionDone, (payload: unknown, ack: unknown) => this.#onSessionDone(payload, acker(ack)));
    return done;
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#socket?.disconnect();
    this.#round?.abort('the client stops');
    await this.#trainerBusy.catch(() => null);
    this.#trainer?.dispose();
    this.#trainer = undefined;
  }

  #fail(e: unknown): void {
    // configuration problems reach the caller (the CLI prints them once); the rest is logged here too
    if (!(e instanceof FedloraError && e.code === 'CONFIG')) log.error(`${this.#clientId}: ${errorMessage(e)}`);
    void this.stop().then(() => this.#rejectRun(e));
  }

  #onHandshakeError(e: unknown): void {
    if (e instanceof FedloraError && e.code === 'IDENTITY_MISMATCH') { this.#fail(new FedloraError('IDENTITY_MISMATCH', this.#identityHint(errorMessage(e)))); return; }
    // integrity, data and config problems do not get better by reconnecting
    if (e instanceof FedloraError && ['VERSION_MISMATCH', 'MODEL_FORMAT', 'DATA', 'CONFIG', 'MODEL_MISMATCH', 'BACKEND', 'CRYPTO_UNKNOWN_KEY',
      'CRYPTO_REVOKED', 'CRYPTO_BAD_SIGNATURE', 'IDENTITY_MISMATCH', 'BAD_SIGNATURE', 'AUTH_REQUIRED'].includes(e.code)) { this.#fail(e); return; }
    log.warn(`${this.#clientId}: handshake failed (${errorMessage(e)}); reconnecting`);
    const s = this.#socket;
    s?.disconnect();
    setTimeout(() => { if (!this.#stopped) s?.connect(); }, 1000 + Math.random() * 1000);
  }

  /**
   * The id kept in <state>/client-id; a new state derives it from the identity key, so the same
   * identity gets the same id under any --state (a client restarted on a fresh --state rejoins as itself).
   */
  async #loadOrCreateId(): Promise<string> {
    const f = join(this.options.stateDir, 'client-id');
    const have = (await readFile(f, 'utf8').catch(() => '')).trim();
    if (ID_RE.test(have)) return have;
    const id = idForKey(this.#identity!.publicKey);
    await atomicWrite(f, `${id}\n`);
    return id;
  }

  /** The coordinator binds one id to one key; say which id and --state it knows, and how to rejoin. */
  #identityHint(msg: string): string {
    const state = this.options.stateDir;
    const joined = /already joined as (\S+?)[;,.]?(?:\s|$)/.exec(msg)?.[1];
    if (joined) {
      return `${msg}. This identity (${this.publicKey}) is known to the coordinator as ${joined}, but --state ${state} holds id ${this.#clientId}: `
        + `restart with the --state folder whose client-id file holds ${joined}, or keep this --state and pass --id ${joined}`;
    }
    return `${msg}. The id ${this.#clientId} (from ${this.options.clientId ? '--id' : join(state, 'client-id')}) is bound to another identity on this coordinator: `
      + 'use the identity that joined under it, or another id (--id, or a fresh --state)';
  }

  /** Reads --tls-ca (contents or a file) and checks it holds a PEM certificate. */
  async #readCa(): Promise<string | undefined> {
    const c = this.options.tlsCa;
    if (c === undefined) return undefined;
    let pem: string;
    if (typeof c !== 'string') pem = Buffer.from(c).toString('utf8');
    else if (c.includes('-----BEGIN')) pem = c;
    else pem = await readFile(c, 'utf8').catch((e: NodeJS.ErrnoException) => { throw new ConfigError(`cannot read --tls-ca ${c}: ${e.code ?? e.message}`); });
    if (!pem.includes('-----BEGIN CERTIFICATE')) throw new ConfigError(`--tls-ca ${typeof c === 'string' && !c.includes('-----BEGIN') ? c : ''} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`.replace('  ', ' '));
    return pem;
  }

  #prepared?: Promise<string | undefined>;

  /**
   * Checks every local input before anything is written, connected or downloaded: the coordinator key
   * pin, the --tls-ca file, and (without an injected trainer) the dataset (JSON, fields, at least 2
   * examples) and the backend, resolved to the one in use. run() calls it; the CLI calls it first so a
   * bad input leaves no state folder behind. Returns the CA certificate (PEM), if any.
   */
  prepare(): Promise<string | undefined> {
    this.#prepared ??= (async () => {
      const o = this.options;
      if (o.coordinatorKey !== undefined) {
        try {
          this.#coordinatorKey = typeof o.coordinatorKey === 'string' ? parsePublicKey(o.coordinatorKey.trim()) : o.coordinatorKey;
        } catch (e) { throw new ConfigError(`--coordinator-key: ${errorMessage(e)}`); }
      }
      if (o.modelDir !== undefined && !(await stat(join(o.modelDir, 'config.json')).then((st) => st.isFile(), () => false))) {
        throw new ConfigError(`--model ${o.modelDir} holds no config.json: not a base model folder`);
      }
      const ca = await this.#readCa();
      if (ca && !/^https:/i.test(o.coordinatorUrl.trim())) log.warn(`--tls-ca is given but ${o.coordinatorUrl} is not https://: the certificate is not used`);
      await this.#checkLocalInputs();
      return ca;
    })();
    return this.#prepared;
  }

  async #checkLocalInputs(): Promise<void> {
    const o = this.options;
    if (o.trainerFactory) { this.#backend = o.backend ?? 'auto'; return; }
    const { loadJsonlDataset } = await import('../shared/data/jsonl.js');
    const examples = await loadJsonlDataset(o.dataFile);
    if (examples.length < 2) throw new DataError(`${o.dataFile}: need at least 2 examples, got ${examples.length}`);
    this.#examples = examples;
    const { selectBackend } = await import('../shared/backend/index.js');
    this.#backend = (await selectBackend(o.backend ?? 'auto')).name;
  }

  /** Once, at the first round start: a --personal glob that matches no tensor of the adapter keeps nothing. */
  #checkPersonalGlobs(rs: RoundStart): void {
    if (this.#globsChecked) return;
    this.#globsChecked = true;
    const names = [...roundStartTensors(rs).keys()];
    for (const g of this.options.personal ?? []) {
      const m = globMatcher([g]);
      if (names.some((n) => m(n))) continue;
      log.warn(`${this.#clientId}: --personal ${JSON.stringify(g)} matches none of the ${names.length} adapter tensors, so it keeps nothing personal; tensor names look like ${names.slice(0, 3).map((n) => JSON.stringify(n)).join(', ')}`);
    }
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
      capabilities: { maxRank: o.maxRank!, backend: this.#backend, examples: this.#trainer?.trainExamples ?? 0, gpu: false },
      personal: this.#exclusive ? o.personal ?? [] : [], proof,
    }, this.#timeout()));
    if (hello.protocolVersion !== PROTOCOL_VERSION) throw new ProtocolError('VERSION_MISMATCH', `coordinator speaks protocol ${hello.protocolVersion}, this client ${PROTOCOL_VERSION}`);
    if (this.#hello && this.#hello.modelId !== hello.modelId) throw new ProtocolError('MODEL_MISMATCH', 'the coordinator now serves a different base model; restart the client');
    this.#hello = hello;
    this.#strategy = getStrategy(hello.strategy);
    // under 'finetune' the globs only choose what the personal copy fine-tunes: every tensor is shared
    this.#isPersonal = personalRule(this.#strategy, this.#exclusive ? this.#isPersonalGlob : () => false);
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
      this.#trainer = await factory({
        modelDir: this.#modelDir, dataFile: o.dataFile, backend: this.#backend, evalFraction: o.evalFraction!, seed: o.seed ?? 0, ...(o.baseDtype ? { baseDtype: o.baseDtype } : {}), ...(o.recomputeBlocks ? { recomputeBlocks: true } : {}), ...(this.#examples ? { examples: this.#examples } : {}),
      });
      this.#examples = undefined;
    }
    await request(socket, EV.ready, { modelId: hello.modelId, examples: this.#trainer.trainExamples }, this.#timeout());
    const rank = Math.min(o.maxRank!, hello.maxRank);
    log.info(`${this.#clientId}: ready (${this.#trainer.trainExamples} training examples, rank ≤ ${rank}${rank < o.maxRank! ? ` (the coordinator's max rank; --max-rank ${o.maxRank} is above it)` : ''}, ${hello.completedRounds}/${hello.rounds} rounds done)`);
  }

  #onRoundStart(payload: unknown, ack: unknown): void {
    if (typeof ack !== 'function') return;
    const reply = acker(ack);
    const bytesDown = payload instanceof Uint8Array ? payload.byteLength : 0;
    let rs: RoundStart;
    let round: ParticipantRound;
    try {
      // verified before anything acts on it: round, rank, participants, secagg parameters, model and global adapter hash
      rs = parseRoundStart(this.#open(SIGNED_DOMAINS.roundStart, payload, 1 << 30));
      if (!this.#trainer || !this.#strategy || !this.#hello) throw new ProtocolError('NOT_READY', 'client is not ready');
      if (rs.modelId !== this.#hello.modelId) throw new ProtocolError('MODEL_MISMATCH', 'round start names another base model');
      if (rs.strategy !== this.#strategy.name) throw new ProtocolError('BAD_MESSAGE', `round strategy ${rs.strategy} differs from the session's ${this.#strategy.name}`);
      if (rs.rank > this.options.maxRank!) throw new ProtocolError('BAD_MESSAGE', `assigned rank ${rs.rank} exceeds this client's ${this.options.maxRank}`);
      const me = rs.participants.find((p) => p.id === this.#clientId);
      this.#checkPersonalGlobs(rs);
      if (!me || !bytesEqual(me.key, this.#identity!.publicKey) || me.rank !== rs.rank) throw new ProtocolError('BAD_MESSAGE', 'round start does not list this client with its key and rank');
      const insecureOk = this.options.insecureAggregation === true || this.options.secureAggregation === false;
      if (!rs.secure && !insecureOk) throw new ProtocolError('INSECURE_REFUSED', 'the coordinator runs without secure aggregation; this client only joins secure rounds (--insecure-aggregation to allow)');
      // the coordinator resends round:start after a reconnect: the round answers from what it already holds
      const cur = this.#round;
      if (cur?.roundId === rs.roundId) {
        reply(okReply());
        cur.redeliver(bytesDown);
        return;
      }
      round = new ParticipantRound({
        rs, weight: me.weight, host: this.#host, strategy: this.#strategy, isPersonal: this.#isPersonal, mods: this.options.uploadMods,
        keys: { identity: this.#identity!, coordinatorKey: this.#coordinatorKey! }, observe: this.#observe, bytesDown,
      });
    } catch (e) {
      log.warn(`${this.#clientId}: refused round start: ${errorMessage(e)}`);
      reply(errorReply(e));
      return;
    }
    // a newer round (e.g. a retry under a new attempt id, or after a coordinator restart) supersedes the old one
    this.#round?.abort(`round ${rs.roundId} started`);
    this.#round = round;
    // secure rounds advertise their keys right away; training waits for the trainer and runs while the coordinator collects keys
    void round.start();
    reply(okReply());
  }

  #onRoundEnd(payload: unknown, reply: Ack): void {
    try {
      const e = parseRoundEnd(this.#open(SIGNED_DOMAINS.roundEnd, payload));
      reply(okReply());
      log.debug(`round ${e.round} ${e.status} with ${e.contributors} contributor(s)`);
      if (this.#round?.roundId === e.roundId) this.#round.end(e);
    } catch (err) {
      log.warn(`bad round:end from coordinator: ${errorMessage(err)}`);
      reply(errorReply(err));
    }
  }

  #onSessionDone(payload: unknown, reply: Ack): void {
    try {
      const d = parseSessionDone(this.#open(SIGNED_DOMAINS.sessionDone, payload));
      reply(okReply());
      log.info(`${this.#clientId}: session done after ${d.completedRounds} round(s)`);
      const trained = [...this.#roundsTrained].filter((r) => r <= d.completedRounds).length;
      void this.stop().then(() => this.#resolveRun({ completedRounds: d.completedRounds, roundsTrained: trained }));
    } catch (err) {
      log.warn(`bad session:done from coordinator: ${errorMessage(err)}`);
      reply(errorReply(err));
    }
  }

  #onSecAggNotice(event: SecAggNotice, payload: unknown, reply: Ack): void {
    try {
      const o = decode(payload, 64 << 20) as { roundId?: unknown; msg?: unknown } | null;
      if (!o || typeof o !== 'object' || typeof o.roundId !== 'string') throw new ProtocolError('BAD_MESSAGE', `${event}: expected { roundId, msg }`);
      const round = this.#round;
      if (!round || round.roundId !== o.roundId) throw new ProtocolError('STALE_ROUND', `${event} for round ${o.roundId}, which this client is not in`);
      round.notice(event, o.msg);
      reply(okReply());
    } catch (e) {
      // an inconsistent phase message makes the SecAggClient abort (and wipe its secrets); the round goes on without us
      log.warn(`${this.#clientId}: ${event}: ${errorMessage(e)}`);
      reply(errorReply(e));
    }
  }

  /** What rounds use of this client: the trainer queue, sealing and the connection. */
  #makeHost(): ParticipantHost {
    const self = this;
    return {
      get clientId() { return self.#clientId; },
      exclusive: <T>(fn: () => Promise<T>): Promise<T> => {
        const run = this.#trainerBusy.catch(() => null).then(() => (this.#stopped ? Promise.reject(new ProtocolError('STOPPED', 'the client stopped')) : fn()));
        this.#trainerBusy = run.catch(() => null);
        return run;
      },
      train: (rs) => this.#train(rs),
      seal: (payload, ctx) => sealForCoordinator(payload, { ...ctx, sender: this.#clientId }, this.#boxKey!),
      online: async () => {
        if (!this.#socket?.connected || this.#stopped) return false;
        if (this.#handshaking) await this.#handshaking;
        return !!this.#socket?.connected && !this.#stopped;
      },
      send: async (event, bytes, what) => {
        const socket = this.#socket;
        if (!socket?.connected || this.#stopped) return false;
        try {
          await requestEncoded(socket, event, bytes, this.#timeout());
          return true;
        } catch (e) {
          log.warn(`${this.#clientId}: ${what} refused: ${errorMessage(e)}`);
          return false;
        }
      },
    };
  }

  async #train(rs: RoundStart): Promise<LocalResult> {
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
    const seed = (rs.train.seed ^ fnv1a32(this.#clientId)) >>> 0;
    const t0 = Date.now();
    const res = await trainer.train(start, {
      steps, lr: rs.train.lr, batchSize: rs.train.batchSize, seed,
      trainable: (n) => strategy.isTrainable(n),
      onProgress: bar ? (s, t, l) => bar.update(s, t, `loss ${l.toFixed(3)}`) : undefined,
    });
    const trainMs = Date.now() - t0;
    bar?.done();
    const tuned = await this.#personalize(rs, globalAdapter, res.adapter, seed, personal);
    const personalModel = tuned ?? res.adapter;
    const personalMetrics = evaluate ? await trainer.evaluate(personalModel) : undefined;
    await this.#savePersonal(personalModel.tensors, tuned !== null);
    this.#roundsTrained.add(rs.round);
    const metrics: UpdateMetrics = { trainLoss: Math.min(1e6, Math.max(0, finiteOr(res.trainLoss, 0))), steps: res.steps, trainMs: trainMs };
    if (global) metrics.global = cleanEval(global);
    if (personalMetrics) metrics.personal = cleanEval(personalMetrics);
    return { tensors: res.adapter.tensors, examples: res.examples, metrics, trainLoss: res.trainLoss, steps: res.steps, global, personal: personalMetrics };
  }

  get #exclusive(): boolean { return this.options.personalMode === 'exclusive'; }

  /**
   * 'finetune' personalization: the personal model = the received global adapter (with the
   * strategy's own personal factors, e.g. fedsa's B, from this round's training) with this client's
   * private copy of the tensors the globs match, fine-tuned on local data with the rest frozen. The
   * copy starts from the global values the first time and is carried from round to round after that
   * (with its own AdamW moments), so it accumulates local training the way a FedRep / Ditto personal
   * head does, while the shared counterpart keeps being trained by everyone. A module's A and B are
   * matched together, so the copy's product does not depend on the global's slot basis.
   * null when there is nothing to fine-tune.
   */
  async #personalize(rs: RoundStart, global: LoraAdapter, trained: LoraAdapter, seed: number, stored: TensorMap): Promise<LoraAdapter | null> {
    if (this.#exclusive || !(this.options.personal ?? []).length) return null;
    const strategy = this.#strategy!;
    const tune = (n: string) => this.#isPersonalGlob(n) && strategy.isTrainable(n) && (isAdapterTensorName(n) || parseXsName(n) !== null);
    if (![...global.tensors.keys()].some(tune)) return null;
    const tensors: TensorMap = new Map(global.tensors);
    for (const [n, t] of trained.tensors) if (strategy.isPersonal(n)) tensors.set(n, t);
    for (const [n, g] of global.tensors) {
      const mine = tune(n) ? stored.get(n) : undefined;
      if (mine) tensors.set(n, atRank(n, mine, rs.rank, g));
    }
    const steps = this.options.personalSteps ?? rs.train.steps;
    if (steps < 1) return { config: global.config, tensors };
    const prox = this.options.personalProx ?? 0;
    const res = await this.#trainer!.train({ config: global.config, tensors }, {
      steps, lr: this.options.personalLr ?? rs.train.lr, batchSize: rs.train.batchSize, seed: (seed ^ 0x9e3779b9) >>> 0, trainable: tune,
      ...(prox > 0 ? { prox: { weight: prox, reference: global } } : {}),
      // the copy is this client's own, never rotated by the coordinator: its moments always carry
      optimizerKey: 'personal', onBasisChange: 'keep',
    });
    return res.adapter;
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

  /** Keeps the tensors this client holds privately: its upload-personal ones, plus under 'finetune' its fine-tuned copies. */
  async #savePersonal(tensors: TensorMap, tuned = false): Promise<void> {
    const keep = new Map<string, Tensor32>();
    for (const [n, t] of tensors) if (this.#isPersonal(n) || (tuned && this.#isPersonalGlob(n))) keep.set(n, t);
    if (keep.size) await saveSafetensors(this.#personalFile(), keep, { fedlora: 'personal' });
  }
}

/** A stored personal factor brought to this round's rank (slots beyond the stored rank come from the global). */
function atRank(name: string, t: Tensor32, rank: number, global: Tensor32): Tensor32 {
  if (parseXsName(name)) {
    // a LoRA-XS core [r, r]: keep the leading block, take elements of new slots (max(i, j) ≥ stored rank) from the global
    const cur = t.shape[0]!;
    if (cur === rank && t.shape[1] === rank) return t;
    const data = new Float32Array(rank * rank);
    for (let i = 0; i < rank; i++) for (let j = 0; j < rank; j++) data[i * rank + j] = i < cur && j < cur ? t.data[i * cur + j]! : global.data[i * rank + j]!;
    return { shape: [rank, rank], data };
  }
  const p = parseLoraName(name);
  // a DoRA magnitude has no rank slots: the stored one is used as is when it still fits
  if (!p) return t.shape.length === global.shape.length && t.shape.every((d, i) => d === global.shape[i]) ? t : global;
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

/** The default client id of an identity: `client-` and 12 hex digits of the key's SHA-256. */
export function idForKey(publicKey: Uint8Array): string {
  return `client-${createHash('sha256').update(publicKey).digest('hex').slice(0, 12)}`;
}

