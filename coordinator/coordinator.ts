/**
 * The coordinator service: socket.io + HTTP (/status, /metrics) on one port, base-model
 * distribution, and the round state machine
 *
 *   waiting ──(≥ clientsPerRound ready, or ≥ minClients ready for joinWait)──▶ training
 *   training ──(all uploaded/dropped, or deadline)──▶ aggregating
 *   aggregating ──(≥ minClients uploads)──▶ checkpoint, next round ──▶ waiting | done
 *              └─(too few)──▶ round retried under a new round id ──▶ waiting
 *
 * Round ids are `<session>:<round>:<attempt>`; an upload is accepted only for the open round id,
 * from a sampled participant, once. Uploads are one flat vector over the shared tensors at
 * maxRank in the layout announced with round:start (so secure aggregation can mask it later).
 */
import { createServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Server, type Socket } from 'socket.io';
import { ConfigError, ProtocolError, errorMessage } from '../shared/errors.js';
import { logger } from '../shared/log.js';
import { encode, tensorMapToWire } from '../shared/codec/index.js';
import {
  EV, LIMITS, PROTOCOL_VERSION, SIGNED_DOMAINS, errorReply, globMatcher, openFromClient, parseChunkRequest, parseHello, parseReady, parseSealedEnvelope,
  parseUpdate, parseUpdateMetrics, requestEncoded, serveRequest, sha256Hex, signEnvelope,
  type ClientToServerEvents, type Hello, type HelloReply, type RoundEnd, type RoundParticipant, type RoundStart, type SecAggKind,
  type SecureRoundInfo, type ServerToClientEvents, type UpdateMetrics,
} from '../shared/protocol/index.js';
import {
  AuthorizedClients, JoinVerifier, ReplayGuard, SecAggServer, chooseQuantParams, decodeSum, defaultSecAggSizes, formatPublicKey,
  loadOrCreateIdentity, makeCoordinatorBoxKey, parseAuthorizedClients, parsePublicKey, quantErrorBound, signSecAggParams,
  type BoxKeyCertificate, type BoxKeyPair, type Identity, type QuantParams, type SecAggParams,
} from '../shared/crypto/index.js';
import {
  adapterForRank, elementSlots, getStrategy, makeLayout, refactorAdapter, seededStream, unflatten,
  type FlatLayout, type Participant, type Strategy, type StrategyName,
} from '../shared/aggregation/index.js';
import { loraAName, loraBName, adapterModules, type LoraAdapter } from '../shared/lora/adapter.js';
import { savePeftAdapter } from '../shared/lora/peft.js';
import type { TensorMap } from '../shared/tensor.js';
import { readModelInfo, targetShapes, defaultTargetModules } from './model-info.js';
import { ModelStore } from './model-store.js';
import { checkResumable, loadState, saveState } from './state-store.js';
import { renderPrometheus, weightedEval, type ParticipantRecord, type RoundRecord } from './metrics.js';

const log = logger('fedlora:coordinator');
/** Default clip for secure aggregation: LoRA factor entries beyond ±8 are clipped before encoding. */
export const DEFAULT_CLIP = 8;
const rlog = log.child('round');

export interface CoordinatorOptions {
  modelDir: string;
  stateDir: string;
  host?: string;
  rounds?: number;
  clientsPerRound?: number;
  minClients?: number;
  roundTimeoutMs?: number;
  strategy?: StrategyName;
  maxRank?: number;
  /** PEFT target_modules; default: every linear layer of the blocks. */
  targetModules?: string[];
  loraAlpha?: number;
  localSteps?: number;
  /** If > 0, clients train this many epochs over their data instead of `localSteps`. */
  localEpochs?: number;
  lr?: number;
  batchSize?: number;
  exportDir?: string;
  seed?: number;
  /** Once ≥ minClients are ready, wait this long for more before starting a round. */
  joinWaitMs?: number;
  /** Deadline for each request to a client (round:start acks). */
  requestTimeoutMs?: number;
  chunkSize?: number;
  /** Refactor (QR+SVD) the global adapter after aggregation when the strategy allows it. */
  refactor?: boolean;
  /** How long a participant that lost its connection may take to come back before the round moves on without it. */
  rejoinGraceMs?: number;
  /** Disconnect a client after this many refused requests. */
  maxStrikes?: number;
  onRound?: (record: RoundRecord) => void;
  /** Coordinator Ed25519 identity, or the file holding it (created on first start); default <stateDir>/coordinator.identity. */
  identity?: Identity | string;
  /** Enrolled clients: a parsed allowlist, a file in the allowlist format, or a list of `ed25519:…` keys. */
  authorizedClients?: AuthorizedClients | string | string[];
  /** Development: accept any client that proves possession of a key (revoked keys in `authorizedClients` stay refused). */
  allowAnyClient?: boolean;
  /** Plain (unmasked) aggregation; logged as a warning. Default false: secure aggregation. */
  insecureAggregation?: boolean;
  /** Alias kept for callers that opt in explicitly: `secureAggregation: false` ≡ `insecureAggregation: true`. */
  secureAggregation?: boolean;
  /** Secure-aggregation tuning: neighbours k, threshold t (defaults from defaultSecAggSizes(n)), clip c, per-phase timeout. */
  secAgg?: { k?: number; t?: number; clip?: number; phaseTimeoutMs?: number };
  /** Serve HTTPS/WSS with this PEM certificate and key (contents or file paths). */
  tls?: { cert: string | Uint8Array; key: string | Uint8Array };
}

const SECURITY_OPTIONS = ['identity', 'authorizedClients', 'allowAnyClient', 'insecureAggregation', 'secureAggregation', 'secAgg', 'tls'] as const;
type SecurityOption = (typeof SECURITY_OPTIONS)[number];

/** Everything the coordinator needs to run one secure-aggregation round. */
interface SecureRound {
  server: SecAggServer;
  params: SecAggParams;
  info: SecureRoundInfo;
  quant: QuantParams;
  replay: ReplayGuard;
  outcome?: { droppedAfterSharing: string[]; badShares: number };
  received: Record<SecAggKind, Set<string>>;
}

type Phase = 'starting' | 'waiting' | 'training' | 'aggregating' | 'done' | 'closed';

interface Conn {
  socket: Socket<ClientToServerEvents, ServerToClientEvents>;
  hello?: Hello;
  /** Enrolled identity key proven in the join (set together with hello). */
  key?: Uint8Array;
  challenges: number;
  ready: boolean;
  examples: number;
  strikes: number;
  personal: (name: string) => boolean;
  modelBytes: number;
}

interface Slot extends ParticipantRecord {
  vector?: Float32Array;
  conn: Conn;
  droppedAt?: number;
  /** Last secagg phase notice sent (resent when the participant rejoins). */
  lastNotice?: { event: string; bytes: Uint8Array };
}

interface OpenRound {
  round: number;
  roundId: string;
  startedAt: number;
  deadline: number;
  slots: Map<string, Slot>;
  startBytes: Map<number, Uint8Array>;
  participants: RoundParticipant[];
  globalHash: string;
  secure?: SecureRound;
}

export interface CoordinatorStatus {
  protocolVersion: number;
  sessionId: string;
  modelId: string;
  strategy: StrategyName;
  maxRank: number;
  round: number;
  rounds: number;
  completedRounds: number;
  phase: Phase;
  connected: { clientId: string; ready: boolean; maxRank: number; backend: string; examples: number }[];
  participating: { clientId: string; rank: number; status: string }[];
  lastRound: RoundRecord | null;
  bytes: { up: number; down: number; modelServed: number; fullModel: number };
}

export class Coordinator {
  readonly options: Required<Omit<CoordinatorOptions, 'exportDir' | 'targetModules' | 'onRound' | SecurityOption>> & Pick<CoordinatorOptions, 'exportDir' | 'targetModules' | 'onRound' | SecurityOption>;
  readonly sessionId = randomBytes(6).toString('hex');
  readonly strategy: Strategy;
  /** Resolves when all rounds are done (and the export is written). */
  readonly done: Promise<{ completedRounds: number }>;
  #resolveDone!: (v: { completedRounds: number }) => void;
  #rejectDone!: (e: unknown) => void;
  #http?: HttpServer;
  #io?: Server<ClientToServerEvents, ServerToClientEvents>;
  #store?: ModelStore;
  #global?: LoraAdapter;
  #layout?: FlatLayout;
  #slots?: Int32Array;
  #targetModules: string[] = [];
  #completed = 0;
  #attempt = 0;
  #history: RoundRecord[] = [];
  #phase: Phase = 'starting';
  #conns = new Set<Conn>();
  #byClient = new Map<string, Conn>();
  #open: OpenRound | null = null;
  #wakers = new Set<() => void>();
  #errors = new Map<string, number>();
  #modelServed = 0;
  #maxMessageBytes = 1 << 20;
  #identity?: Identity;
  #verifier?: JoinVerifier;
  #box?: { keyPair: BoxKeyPair; certificate: BoxKeyCertificate };
  /** clientId ↔ identity key bindings for this coordinator run: one id per key, one key per id. */
  #keyOfId = new Map<string, string>();
  #idOfKey = new Map<string, string>();
  readonly #secure: boolean;

  constructor(opts: CoordinatorOptions) {
    this.options = {
      host: '127.0.0.1', rounds: 3, clientsPerRound: 3, minClients: 2, roundTimeoutMs: 600_000, strategy: 'rank-aware',
      maxRank: 8, loraAlpha: 16, localSteps: 20, localEpochs: 0, lr: 1e-3, batchSize: 4, seed: 42, joinWaitMs: 3000,
      requestTimeoutMs: 30_000, chunkSize: 1 << 20, refactor: true, maxStrikes: 50, rejoinGraceMs: 3000, ...stripUndefined(opts),
      modelDir: opts.modelDir, stateDir: opts.stateDir,
    };
    const o = this.options;
    if (!Number.isInteger(o.rounds) || o.rounds < 1) throw new ConfigError(`--rounds must be a positive integer, got ${o.rounds}`);
    if (!Number.isInteger(o.minClients) || o.minClients < 1) throw new ConfigError(`--min-clients must be a positive integer, got ${o.minClients}`);
    if (!Number.isInteger(o.clientsPerRound) || o.clientsPerRound < o.minClients) throw new ConfigError(`--clients-per-round (${o.clientsPerRound}) must be an integer ≥ --min-clients (${o.minClients})`);
    if (!Number.isInteger(o.maxRank) || o.maxRank < 1 || o.maxRank > LIMITS.maxRank) throw new ConfigError(`--max-rank must be an integer in [1, ${LIMITS.maxRank}]`);
    if (!(o.roundTimeoutMs > 0)) throw new ConfigError('--round-timeout must be positive');
    if (!(o.lr > 0) || !Number.isInteger(o.batchSize) || o.batchSize < 1 || !Number.isInteger(o.localSteps) || o.localSteps < 0 || !(o.localEpochs >= 0)) throw new ConfigError('bad local training settings (--lr, --batch-size, --local-steps, --local-epochs)');
    if (o.localSteps === 0 && o.localEpochs === 0) throw new ConfigError('one of --local-steps or --local-epochs must be positive');
    if (o.chunkSize < 1024 || o.chunkSize > LIMITS.maxChunkBytes) throw new ConfigError(`chunk size must be in [1024, ${LIMITS.maxChunkBytes}]`);
    this.strategy = getStrategy(o.strategy);
    this.#secure = !(opts.insecureAggregation === true || opts.secureAggregation === false);
    if (this.#secure && o.minClients < 2) throw new ConfigError('secure aggregation needs --min-clients ≥ 2 (a sum over one client is that client\'s update)');
    if (opts.secAgg?.clip !== undefined && !(opts.secAgg.clip > 0)) throw new ConfigError('secAgg.clip must be positive');
    if (!opts.authorizedClients && !opts.allowAnyClient) {
      throw new ConfigError('no --authorized-clients given: refusing to start (pass --allow-any-client to accept any key, for development only)');
    }
    this.done = new Promise((res, rej) => { this.#resolveDone = res; this.#rejectDone = rej; });
    this.done.catch(() => undefined);
  }

  get completedRounds(): number { return this.#completed; }
  get phase(): Phase { return this.#phase; }
  get globalAdapter(): LoraAdapter | undefined { return this.#global; }
  get history(): readonly RoundRecord[] { return this.#history; }
  get modelId(): string | undefined { return this.#store?.modelId; }
  /** Largest inbound message decoded; the transport drops the connection above this plus a little framing. */
  get maxMessageBytes(): number { return this.#maxMessageBytes; }
  /** The coordinator's identity key (`ed25519:…`), for clients to pin; available after serve(). */
  get publicKey(): string | undefined { return this.#identity ? formatPublicKey(this.#identity.publicKey) : undefined; }
  get secureAggregation(): boolean { return this.#secure; }

  async #initSecurity(): Promise<void> {
    const o = this.options;
    if (o.identity && typeof o.identity === 'object') this.#identity = o.identity;
    else {
      const file = (o.identity as string | undefined) ?? join(o.stateDir, 'coordinator.identity');
      const r = await loadOrCreateIdentity(file);
      if (r.created) log.info(`created coordinator identity ${file}`);
      this.#identity = r.identity;
    }
    let allow: AuthorizedClients | undefined;
    const a = o.authorizedClients;
    if (a instanceof AuthorizedClients) allow = a;
    else if (Array.isArray(a)) allow = parseAuthorizedClients(a.join('\n'), 'authorizedClients');
    else if (typeof a === 'string') allow = parseAuthorizedClients(await readFile(a, 'utf8').catch((e: unknown) => { throw new ConfigError(`cannot read --authorized-clients ${a}: ${errorMessage(e)}`); }), a);
    if (o.allowAnyClient) log.warn('--allow-any-client: any key that proves possession may join (development only)');
    if (!this.#secure) log.warn('--insecure-aggregation: client updates reach the coordinator in the clear');
    this.#verifier = new JoinVerifier({ coordinator: this.#identity, ...(allow ? { authorized: allow } : {}), allowAny: o.allowAnyClient === true });
    this.#box = makeCoordinatorBoxKey(this.#identity);
    log.info(`coordinator key ${formatPublicKey(this.#identity.publicKey)}${allow ? `, ${allow.entries().filter((e) => !e.revoked).length} enrolled client key(s)` : ''}`);
  }

  async #init(): Promise<void> {
    const o = this.options;
    this.#store = await ModelStore.open(o.modelDir);
    const info = await readModelInfo(o.modelDir);
    this.#targetModules = o.targetModules?.length ? o.targetModules : defaultTargetModules(info.config);
    const loaded = await loadState(o.stateDir);
    if (loaded) {
      checkResumable(loaded.state, { modelId: this.#store.modelId, strategy: o.strategy, maxRank: o.maxRank });
      this.#global = loaded.adapter;
      this.#completed = loaded.state.completedRounds;
      this.#history = loaded.state.history ?? [];
      this.#targetModules = loaded.state.targetModules;
      this.#attempt = Math.max(0, ...this.#history.map((r) => Number(r.roundId.split(':')[2] ?? 0)));
      log.info(`resuming from ${o.stateDir}: ${this.#completed} round(s) completed`);
    } else {
      const shapes = targetShapes(info, this.#targetModules);
      this.#global = this.strategy.init(shapes, o.maxRank, o.loraAlpha, o.seed, {
        targetModules: this.#targetModules, fanInFanOut: info.fanInFanOut, useRslora: false, taskType: 'CAUSAL_LM', baseModelNameOrPath: null,
      });
      log.info(`fresh run: ${shapes.size} modules, strategy ${o.strategy}, max rank ${o.maxRank}`);
    }
    const entries = [...this.#global.tensors].filter(([n]) => this.strategy.isShared(n)).map(([name, t]) => ({ name, shape: t.shape }));
    this.#layout = makeLayout(entries);
    this.#slots = elementSlots(this.#layout);
    // an upload is 4 bytes per element plus a little framing; the global adapter goes the other way
    this.#maxMessageBytes = Math.max(1 << 20, this.#layout.size * 4 + (1 << 16), o.chunkSize + (1 << 16));
  }

  /** Starts listening; returns the URL clients connect to. Rounds begin as clients become ready. */
  async serve(port = 0): Promise<string> {
    await this.#init();
    await this.#initSecurity();
    const tls = this.options.tls;
    const pem = async (v: string | Uint8Array): Promise<string | Buffer> => (typeof v !== 'string' ? Buffer.from(v) : v.includes('-----BEGIN') ? v : readFile(v));
    const handler = (req: IncomingMessage, res: ServerResponse) => this.#http_(req, res);
    const http: HttpServer = tls ? createHttpsServer({ cert: await pem(tls.cert), key: await pem(tls.key) }, handler) : createServer(handler);
    this.#http = http;
    this.#io = new Server<ClientToServerEvents, ServerToClientEvents>(http, {
      maxHttpBufferSize: this.#maxMessageBytes + 4096,
      pingTimeout: 60_000,
      pingInterval: 10_000,
      serveClient: false,
      cors: { origin: false },
    });
    this.#io.use((socket, next) => {
      const v = (socket.handshake.auth as { protocolVersion?: unknown } | undefined)?.protocolVersion;
      if (v !== PROTOCOL_VERSION) {
        const err = new Error(`VERSION_MISMATCH: coordinator speaks protocol ${PROTOCOL_VERSION}, client sent ${JSON.stringify(v)}`);
        (err as Error & { data?: unknown }).data = { code: 'VERSION_MISMATCH', protocolVersion: PROTOCOL_VERSION };
        next(err);
        return;
      }
      next();
    });
    this.#io.on('connection', (s) => this.#onConnection(s));
    await new Promise<void>((res, rej) => { http.once('error', rej); http.listen(port, this.options.host, () => { http.off('error', rej); res(); }); });
    const addr = http.address() as AddressInfo;
    const host = this.options.host === '0.0.0.0' || this.options.host === '::' ? '127.0.0.1' : this.options.host;
    const url = `${tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${addr.port}`;
    log.info(`serving model ${this.#store!.modelId.slice(0, 12)}… on ${url} (session ${this.sessionId})`);
    void this.#loop().catch((e: unknown) => {
      log.error(`round loop failed: ${errorMessage(e)}`);
      this.#rejectDone(e);
    });
    return url;
  }

  async close(): Promise<void> {
    if (this.#phase === 'closed') return;
    this.#phase = 'closed';
    this.#wake();
    const io = this.#io;
    if (io) await new Promise<void>((res) => { void io.close(() => res()); });
    else if (this.#http) await new Promise<void>((res) => this.#http!.close(() => res()));
    await this.#store?.close();
  }

  // ---------- HTTP ----------

  #http_(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET') { res.writeHead(405, { allow: 'GET' }).end(); return; }
    if (path === '/status') {
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' }).end(JSON.stringify(this.status()));
    } else if (path === '/metrics') {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(renderPrometheus({
        round: this.#open?.round ?? this.#completed + 1, completedRounds: this.#completed,
        connected: [...this.#conns].filter((c) => c.hello).length, ready: this.#readyConns().length,
        fullModelBytes: this.#store?.weightBytes ?? 0, modelBytesServed: this.#modelServed, protocolErrors: this.#errors, history: this.#history,
      }));
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  }

  status(): CoordinatorStatus {
    const bytes = { up: 0, down: 0, modelServed: this.#modelServed, fullModel: this.#store?.weightBytes ?? 0 };
    for (const r of this.#history) { bytes.up += r.bytesUp; bytes.down += r.bytesDown; }
    return {
      protocolVersion: PROTOCOL_VERSION, sessionId: this.sessionId, modelId: this.#store?.modelId ?? '', strategy: this.strategy.name,
      maxRank: this.options.maxRank, round: this.#open?.round ?? Math.min(this.#completed + 1, this.options.rounds), rounds: this.options.rounds,
      completedRounds: this.#completed, phase: this.#phase,
      connected: [...this.#conns].filter((c) => c.hello).map((c) => ({ clientId: c.hello!.clientId, ready: c.ready, maxRank: c.hello!.capabilities.maxRank, backend: c.hello!.capabilities.backend, examples: c.examples })),
      participating: this.#open ? [...this.#open.slots.values()].map((s) => ({ clientId: s.clientId, rank: s.rank, status: s.status })) : [],
      lastRound: this.#history.at(-1) ?? null,
      bytes,
    };
  }

  // ---------- connections ----------

  #onConnection(socket: Socket<ClientToServerEvents, ServerToClientEvents>): void {
    const conn: Conn = { socket, ready: false, examples: 0, strikes: 0, personal: () => false, modelBytes: 0, challenges: 0 };
    this.#conns.add(conn);
    const opts = {
      maxBytes: this.#maxMessageBytes,
      onError: (event: string, e: unknown) => {
        const code = e instanceof ProtocolError || (e as { code?: unknown })?.code ? String((e as { code: unknown }).code) : 'INTERNAL';
        this.#errors.set(code, (this.#errors.get(code) ?? 0) + 1);
        log.debug(`${conn.hello?.clientId ?? socket.id}: ${event} refused: ${errorMessage(e)}`);
        if (++conn.strikes >= this.options.maxStrikes) {
          log.warn(`${conn.hello?.clientId ?? socket.id}: ${conn.strikes} refused requests, disconnecting`);
          socket.disconnect(true);
        }
      },
    };
    const on = socket.on.bind(socket) as (ev: string, fn: (...a: unknown[]) => void) => void;
    on(EV.authChallenge, serveRequest(EV.authChallenge, () => this.#onChallenge(conn), opts));
    on(EV.hello, serveRequest(EV.hello, (m) => this.#onHello(conn, m), opts));
    on(EV.secagg, serveRequest(EV.secagg, (m, n) => this.#onSecAgg(conn, m, n), opts));
    on(EV.modelChunk, serveRequest(EV.modelChunk, (m) => this.#onChunk(conn, m), opts));
    on(EV.ready, serveRequest(EV.ready, (m) => this.#onReady(conn, m), opts));
    on(EV.update, serveRequest(EV.update, (m, n) => this.#onUpdate(conn, m, n), opts));
    socket.onAny((ev: string, ...args: unknown[]) => {
      if ((Object.values(EV) as string[]).includes(ev)) return;
      const e = new ProtocolError('UNKNOWN_EVENT', `unknown event ${String(ev).slice(0, 40)}`);
      opts.onError(String(ev), e);
      const ack = args.at(-1);
      if (typeof ack === 'function') try { (ack as (r: Uint8Array) => void)(errorReply(e)); } catch { /* gone */ }
    });
    socket.on('disconnect', (reason) => this.#onDisconnect(conn, reason));
  }

  #requireHello(conn: Conn): Hello {
    if (!conn.hello) throw new ProtocolError('NO_HELLO', 'send hello first');
    return conn.hello;
  }

  #onChallenge(conn: Conn): Record<string, unknown> {
    if (conn.hello) throw new ProtocolError('ALREADY_HELLO', 'this connection already joined');
    // a connection gets a few challenges (a client retrying after a lost ack), not an unbounded supply
    if (++conn.challenges > 3) { setTimeout(() => conn.socket.disconnect(true), 50); throw new ProtocolError('TOO_MANY', 'too many join challenges on one connection'); }
    return { challenge: this.#verifier!.challenge(conn.socket.id), boxKey: this.#box!.certificate };
  }

  #onHello(conn: Conn, m: unknown): HelloReply & Record<string, unknown> {
    const h = parseHello(m);
    if (h.protocolVersion !== PROTOCOL_VERSION) {
      setTimeout(() => conn.socket.disconnect(true), 50);
      throw new ProtocolError('VERSION_MISMATCH', `coordinator speaks protocol ${PROTOCOL_VERSION}, client ${h.protocolVersion}`);
    }
    if (conn.hello) throw new ProtocolError('ALREADY_HELLO', 'hello already received on this connection');
    if (!h.proof) throw new ProtocolError('AUTH_REQUIRED', 'hello needs a join proof (request auth:challenge first)');
    // refusals name only the reason; nothing about the session, model or rounds leaves before this passes
    let who;
    try {
      who = this.#verifier!.verify(h.proof, conn.socket.id);
    } catch (e) {
      log.warn(`join refused for ${conn.socket.id} claiming ${h.clientId}: ${errorMessage(e)}`);
      setTimeout(() => conn.socket.disconnect(true), 50);
      throw e;
    }
    const boundKey = this.#keyOfId.get(h.clientId);
    const boundId = this.#idOfKey.get(who.key);
    if ((boundKey && boundKey !== who.key) || (boundId && boundId !== h.clientId)) {
      setTimeout(() => conn.socket.disconnect(true), 50);
      throw new ProtocolError('IDENTITY_MISMATCH', boundKey && boundKey !== who.key ? `client id ${h.clientId} belongs to another key` : `this key already joined as ${boundId}`);
    }
    this.#keyOfId.set(h.clientId, who.key);
    this.#idOfKey.set(who.key, h.clientId);
    conn.key = who.publicKey;
    const prev = this.#byClient.get(h.clientId);
    if (prev && prev !== conn) {
      log.info(`${h.clientId}: new connection replaces the old one`);
      this.#byClient.delete(h.clientId);
      prev.socket.disconnect(true);
    }
    conn.hello = h;
    conn.personal = globMatcher(h.personal);
    this.#byClient.set(h.clientId, conn);
    log.info(`${h.clientId} (${who.name ?? who.key.slice(0, 20) + '…'}) joined (rank ≤ ${h.capabilities.maxRank}, ${h.capabilities.backend}${h.personal.length ? `, personal ${h.personal.join(' ')}` : ''})`);
    const store = this.#store!;
    return {
      protocolVersion: PROTOCOL_VERSION, sessionId: this.sessionId, modelId: store.modelId, files: [...store.files], chunkSize: this.options.chunkSize,
      strategy: this.strategy.name, maxRank: this.options.maxRank, rounds: this.options.rounds, completedRounds: this.#completed,
    };
  }

  async #onChunk(conn: Conn, m: unknown): Promise<Record<string, unknown>> {
    this.#requireHello(conn);
    const r = parseChunkRequest(m);
    if (r.length > this.options.chunkSize) throw new ProtocolError('TOO_LARGE', `chunk length ${r.length} over ${this.options.chunkSize}`);
    const data = await this.#store!.readChunk(r.modelId, r.file, r.offset, r.length);
    conn.modelBytes += data.byteLength;
    this.#modelServed += data.byteLength;
    return { data };
  }

  #onReady(conn: Conn, m: unknown): Record<string, unknown> {
    const h = this.#requireHello(conn);
    const r = parseReady(m);
    if (r.modelId !== this.#store!.modelId) throw new ProtocolError('MODEL_MISMATCH', 'ready for a different model');
    conn.ready = true;
    conn.examples = r.examples;
    // a participant that reconnected during the round it was sampled for gets the round again
    const open = this.#open;
    const slot = open?.slots.get(h.clientId);
    if (open && slot && (slot.status !== 'uploaded' || open.secure) && this.#phase === 'training') {
      slot.conn = conn;
      if (slot.status !== 'uploaded') slot.status = 'pending';
      delete slot.droppedAt;
      // a secure participant keeps its secagg state in memory: give it the round and the last phase message again
      setImmediate(() => void this.#sendStart(open, slot).then(() => {
        const n = slot.lastNotice;
        if (open.secure && n && slot.conn === conn && conn.socket.connected) conn.socket.emit(n.event as 'secagg:keys', n.bytes);
      }));
      rlog.info(`${h.clientId} rejoined round ${open.round}`);
    }
    if (this.#phase === 'done') setImmediate(() => conn.socket.emit(EV.sessionDone, this.#signed(SIGNED_DOMAINS.sessionDone, { completedRounds: this.#completed })));
    this.#wake();
    return { completedRounds: this.#completed };
  }

  #onUpdate(conn: Conn, m: unknown, size: number): Record<string, unknown> {
    const h = this.#requireHello(conn);
    if (this.#secure) throw new ProtocolError('SECURE_ONLY', 'this coordinator aggregates securely: plain updates are refused');
    const env = parseSealedEnvelope(m, false);
    const open = this.#phase === 'training' ? this.#open : null;
    const slot = open?.slots.get(h.clientId);
    if (!open || !slot || env.roundId !== open.roundId) throw new ProtocolError('STALE_ROUND', `update for round ${env.roundId} is not for the current round${open && slot ? ` ${open.roundId}` : ' (none open for you)'}`);
    const inner = openFromClient(env, { round: open.round, sender: h.clientId, kind: 'update' }, this.#box!.keyPair.secretKey, this.#maxMessageBytes);
    const maxWeight = conn.examples > 0 ? conn.examples : LIMITS.maxExamples;
    const u = parseUpdate(inner, { roundId: open.roundId, rank: slot.rank, length: this.#layout!.size, maxWeight });
    if (slot!.status === 'uploaded') throw new ProtocolError('DUPLICATE', `already have your update for round ${u.roundId}`);
    // plaintext uploads can be checked for values where the layout says none may be:
    // slots beyond the assigned rank, and tensors the client declared personal
    const slots = this.#slots!;
    const v = u.vector;
    for (let i = 0; i < v.length; i++) {
      if (v[i] !== 0 && slots[i]! >= slot!.rank) throw new ProtocolError('BAD_SHAPE', `update has a non-zero value in rank slot ${slots[i]} (assigned rank ${slot!.rank})`);
    }
    for (const e of this.#layout!.entries) {
      if (!conn.personal(e.name)) continue;
      for (let i = e.offset; i < e.offset + e.size; i++) if (v[i] !== 0) throw new ProtocolError('BAD_SHAPE', `update carries values for ${e.name}, which you declared personal`);
    }
    slot!.vector = v;
    slot!.weight = u.weight;
    slot!.status = 'uploaded';
    slot!.bytesUp += size;
    applyMetrics(slot!, u.metrics);
    rlog.debug(`${h.clientId}: update for round ${open!.round} (${size} bytes)`);
    this.#wake();
    return {};
  }

  #onSecAgg(conn: Conn, m: unknown, size: number): Record<string, unknown> {
    const h = this.#requireHello(conn);
    const env = parseSealedEnvelope(m, true);
    const open = this.#phase === 'training' ? this.#open : null;
    const sec = open?.secure;
    const slot = open?.slots.get(h.clientId);
    if (!open || !sec || !slot || env.roundId !== open.roundId) throw new ProtocolError('STALE_ROUND', `secagg message for round ${env.roundId} is not for a secure round open for you`);
    const kind = env.kind!;
    const inner = openFromClient(env, { round: open.round, sender: h.clientId, kind: `secagg/${kind}` }, this.#box!.keyPair.secretKey, this.#maxMessageBytes);
    // after the open: only authentic messages consume a nonce, a replayed one is named as such
    sec.replay.check(env.sealed);
    if (!inner || typeof inner !== 'object') throw new ProtocolError('BAD_MESSAGE', `secagg ${kind}: expected an object`);
    const msg = inner as Record<string, unknown>;
    const id = h.clientId;
    // the SecAggServer checks shapes, signatures, phases and duplicates of every message itself
    switch (kind) {
      case 'advertise': sec.server.receiveAdvertise(id, msg as never); break;
      case 'share': sec.server.receiveShareKeys(id, msg as never); break;
      case 'masked': {
        const metrics = parseUpdateMetrics(msg.metrics);
        sec.server.receiveMasked(id, { id: msg.id as string, masked: msg.masked as Uint32Array });
        slot.status = 'uploaded';
        applyMetrics(slot, metrics);
        rlog.debug(`${id}: masked input for round ${open.round} (${size} bytes)`);
        break;
      }
      case 'consistency': sec.server.receiveConsistency(id, msg as never); break;
      case 'unmask': sec.server.receiveUnmask(id, msg as never); break;
    }
    sec.received[kind].add(id);
    slot.bytesUp += size;
    this.#wake();
    return {};
  }

  #onDisconnect(conn: Conn, reason: string): void {
    this.#conns.delete(conn);
    const id = conn.hello?.clientId;
    if (!id) return;
    if (this.#byClient.get(id) === conn) this.#byClient.delete(id);
    log.info(`${id} disconnected (${reason})`);
    const slot = this.#open?.slots.get(id);
    if (slot && slot.conn === conn && (slot.status === 'pending' || this.#open?.secure)) {
      if (slot.status === 'pending') slot.status = 'dropped';
      slot.droppedAt = Date.now();
      rlog.info(`${id} dropped out of round ${this.#open!.round}`);
    }
    this.#wake();
  }

  // ---------- rounds ----------

  #wake(): void {
    const ws = [...this.#wakers];
    this.#wakers.clear();
    for (const w of ws) w();
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((res) => {
      const t = setTimeout(() => { this.#wakers.delete(done); res(); }, Math.max(0, ms));
      const done = () => { clearTimeout(t); res(); };
      this.#wakers.add(done);
    });
  }

  #readyConns(): Conn[] {
    return [...this.#byClient.values()].filter((c) => c.ready && c.socket.connected);
  }

  get #closed(): boolean { return this.#phase === 'closed'; }

  async #loop(): Promise<void> {
    const o = this.options;
    while (!this.#closed && this.#completed < o.rounds) {
      this.#phase = 'waiting';
      const picked = await this.#waitForClients();
      if (!picked) break;
      await this.#runRound(picked);
    }
    if (this.#closed) return;
    this.#phase = 'done';
    if (o.exportDir) {
      await savePeftAdapter(this.#global!, o.exportDir);
      log.info(`exported the global adapter to ${o.exportDir}`);
    }
    // only to joined connections: a refused or unauthenticated socket learns nothing about the session
    for (const c of this.#byClient.values()) c.socket.emit(EV.sessionDone, this.#signed(SIGNED_DOMAINS.sessionDone, { completedRounds: this.#completed }));
    log.info(`all ${o.rounds} rounds done`);
    this.#resolveDone({ completedRounds: this.#completed });
  }

  async #waitForClients(): Promise<Conn[] | null> {
    const o = this.options;
    let enoughSince: number | null = null;
    for (;;) {
      if (this.#closed) return null;
      const ready = this.#readyConns();
      if (ready.length >= o.clientsPerRound) return ready;
      if (ready.length >= o.minClients) {
        enoughSince ??= Date.now();
        const left = enoughSince + o.joinWaitMs - Date.now();
        if (left <= 0) return ready;
        await this.#sleep(left);
      } else {
        enoughSince = null;
        await this.#sleep(60_000);
      }
    }
  }

  async #runRound(ready: Conn[]): Promise<void> {
    const o = this.options;
    const round = this.#completed + 1;
    const attempt = ++this.#attempt;
    const roundId = `${this.sessionId}:${round}:${attempt}`;
    // seeded Fisher–Yates over client ids sorted, so a rerun with the same clients samples the same set
    const rnd = seededStream(o.seed, `sample:${round}:${attempt}`);
    const pool = [...ready].sort((a, b) => (a.hello!.clientId < b.hello!.clientId ? -1 : 1));
    for (let i = pool.length - 1; i > 0; i--) {
      const j = rnd() % (i + 1);
      [pool[i], pool[j]] = [pool[j]!, pool[i]!];
    }
    const picked = pool.slice(0, o.clientsPerRound).sort((a, b) => (a.hello!.clientId < b.hello!.clientId ? -1 : 1));
    const startedAt = Date.now();
    const participants: RoundParticipant[] = picked.map((c) => ({
      id: c.hello!.clientId, key: c.key!, rank: Math.min(c.hello!.capabilities.maxRank, o.maxRank), weight: Math.max(1, c.examples),
    }));
    const globalHash = sha256Hex(encode(tensorMapToWire(this.#global!.tensors)));
    const open: OpenRound = { round, roundId, startedAt, deadline: startedAt + o.roundTimeoutMs, slots: new Map(), startBytes: new Map(), participants, globalHash };
    for (const [i, c] of picked.entries()) {
      const p = participants[i]!;
      // under secure aggregation the weight is public from the start; plain uploads state theirs
      open.slots.set(p.id, { clientId: p.id, rank: p.rank, status: 'pending', weight: this.#secure ? p.weight : 0, bytesUp: 0, bytesDown: 0, conn: c });
    }
    if (this.#secure) open.secure = this.#prepareSecure(open);
    this.#open = open;
    this.#phase = 'training';
    rlog.info(`round ${round}/${o.rounds} (${roundId}) started with ${picked.length} client(s): ${[...open.slots.values()].map((s) => `${s.clientId}@r${s.rank}`).join(', ')}`);
    // not awaited: an ack that never comes (a client that died) must not hold the round; the slot
    // turns 'dropped' on disconnect or ack timeout, whichever comes first
    for (const s of open.slots.values()) void this.#sendStart(open, s);
    const secureSum = open.secure ? await this.#secureCollect(open) : null;
    while (!this.#closed && !open.secure) {
      const now = Date.now();
      const pending = [...open.slots.values()].filter((s) => s.status === 'pending');
      // a participant that just lost its connection gets a short grace to reconnect and rejoin
      const rejoining = [...open.slots.values()].filter((s) => s.status === 'dropped' && s.droppedAt !== undefined && now - s.droppedAt < o.rejoinGraceMs);
      if (pending.length === 0 && rejoining.length === 0) break;
      const left = open.deadline - now;
      if (left <= 0) {
        for (const s of pending) s.status = 'timeout';
        rlog.info(`round ${round}: deadline passed, ${pending.length} straggler(s) left out`);
        break;
      }
      const graceLeft = rejoining.length ? Math.min(...rejoining.map((s) => s.droppedAt! + o.rejoinGraceMs - now)) : Infinity;
      await this.#sleep(Math.min(left, graceLeft));
    }
    this.#open = null;
    if (this.#closed) return;
    this.#phase = 'aggregating';
    const contributors = [...open.slots.values()].filter((s) => s.status === 'uploaded');
    const record: RoundRecord = {
      round, roundId, status: 'failed', startedAt, endedAt: 0, contributors: contributors.length,
      participants: [...open.slots.values()].map(({ vector: _v, conn: _c, droppedAt: _d, lastNotice: _n, ...rec }) => rec),
      bytesUp: 0, bytesDown: 0, fullModelBytes: this.#store!.weightBytes,
    };
    for (const p of record.participants) { record.bytesUp += p.bytesUp; record.bytesDown += p.bytesDown; }
    if (open.secure) {
      const { info, quant, outcome } = open.secure;
      record.secure = { k: info.k, t: info.t, clip: quant.clip, fracBits: quant.fracBits, droppedAfterSharing: outcome?.droppedAfterSharing ?? [], badShares: outcome?.badShares ?? 0 };
    }
    let next: LoraAdapter | null = null;
    if (contributors.length >= o.minClients && (!open.secure || secureSum)) {
      next = this.#aggregate(secureSum ?? this.#plainSum(contributors), contributors);
      record.status = 'completed';
      const tw = contributors.reduce((s, c) => s + c.weight, 0);
      record.trainLoss = contributors.reduce((s, c) => s + (c.trainLoss ?? 0) * c.weight, 0) / tw;
      const ge = weightedEval(record.participants, 'global');
      const pe = weightedEval(record.participants, 'personal');
      if (ge) record.globalEval = ge;
      if (pe) record.personalEval = pe;
    }
    record.endedAt = Date.now();
    this.#history.push(record);
    if (next) {
      // the round counts (in /status too) only once its checkpoint is on disk
      await saveState(o.stateDir, {
        modelId: this.#store!.modelId, strategy: this.strategy.name, maxRank: o.maxRank, seed: o.seed, loraAlpha: o.loraAlpha,
        targetModules: this.#targetModules, completedRounds: round, strategyState: { initSeed: o.seed, frozenA: this.strategy.name === 'ffa' }, history: this.#history,
      }, next);
      this.#global = next;
      this.#completed = round;
      rlog.info(`round ${round} completed: ${contributors.length}/${open.slots.size} updates, train loss ${fmt(record.trainLoss)}, global eval loss ${fmt(record.globalEval?.loss)}, personal ${fmt(record.personalEval?.loss)}, ${record.bytesUp} B up / ${record.bytesDown} B down (${(record.endedAt - startedAt) / 1000}s)`);
    } else {
      rlog.warn(`round ${round} failed: ${open.secure && !secureSum ? 'secure aggregation did not complete' : `${contributors.length} update(s) < --min-clients ${o.minClients}`}; retrying`);
    }
    const end: RoundEnd = { roundId, round, status: record.status, contributors: contributors.length };
    const endBytes = this.#signed(SIGNED_DOMAINS.roundEnd, end);
    for (const s of open.slots.values()) s.conn.socket.emit(EV.roundEnd, endBytes);
    try { o.onRound?.(record); } catch (e) { log.warn(`onRound callback failed: ${errorMessage(e)}`); }
  }

  async #sendStart(open: OpenRound, slot: Slot): Promise<void> {
    const o = this.options;
    let bytes = open.startBytes.get(slot.rank);
    if (!bytes) {
      const a = adapterForRank(this.#global!, slot.rank);
      const payload: RoundStart = {
        roundId: open.roundId, round: open.round, rank: slot.rank, maxRank: o.maxRank, strategy: this.strategy.name,
        config: { r: a.config.r, loraAlpha: a.config.loraAlpha, targetModules: a.config.targetModules, fanInFanOut: a.config.fanInFanOut, useRslora: a.config.useRslora, taskType: a.config.taskType },
        global: tensorMapToWire(a.tensors),
        layout: this.#layout!.entries.map((e) => ({ name: e.name, shape: [...e.shape] })),
        train: { steps: o.localSteps, epochs: o.localEpochs, lr: o.lr, batchSize: o.batchSize, seed: (o.seed + open.round * 7919) >>> 0 },
        deadline: open.deadline,
        modelId: this.#store!.modelId,
        globalHash: open.globalHash,
        participants: open.participants,
        ...(open.secure ? { secure: open.secure.info } : {}),
      };
      bytes = signEnvelope(SIGNED_DOMAINS.roundStart, payload, this.#identity!);
      open.startBytes.set(slot.rank, bytes);
    }
    slot.bytesDown += bytes.byteLength;
    const conn = slot.conn;
    try {
      await requestEncoded(conn.socket, EV.roundStart, bytes, o.requestTimeoutMs);
    } catch (e) {
      if (slot.conn === conn && slot.status === 'pending') {
        slot.status = 'dropped';
        slot.droppedAt = Date.now();
        rlog.info(`${slot.clientId} did not accept round ${open.round}: ${errorMessage(e)}`);
        this.#wake();
      }
    }
  }

  #signed(domain: string, value: unknown): Uint8Array {
    return signEnvelope(domain, value, this.#identity!);
  }

  #prepareSecure(open: OpenRound): SecureRound {
    const o = this.options;
    const cfg = o.secAgg ?? {};
    const n = open.participants.length;
    const def = defaultSecAggSizes(n);
    let k = Math.min(cfg.k ?? def.k, n - 1);
    if (k < n - 1 && k % 2 === 1) k += 1; // the SecAgg+ graph needs an even degree below n−1
    const t = Math.min(Math.max(2, cfg.t ?? (cfg.k !== undefined ? Math.floor((k + 1) / 2) + 1 : def.t)), k + 1);
    const totalWeight = open.participants.reduce((s, p) => s + p.weight, 0);
    const quant = chooseQuantParams({ clip: cfg.clip ?? DEFAULT_CLIP, maxTotalWeight: totalWeight, maxClients: n });
    const params: SecAggParams = {
      round: open.round, modelHash: `${this.#store!.modelId}:${open.globalHash}`, vectorLength: this.#layout!.size,
      participants: open.participants.map((p) => ({ id: p.id, key: p.key })), k, t, nonce: new Uint8Array(randomBytes(32)), coordinatorKey: this.#identity!.publicKey,
    };
    const paramsSignature = signSecAggParams(params, this.#identity!);
    const info: SecureRoundInfo = { k, t, nonce: params.nonce, modelHash: params.modelHash, paramsSignature, quant: { ...quant } };
    rlog.info(`round ${open.round}: secure aggregation over ${n} clients, k=${k}, t=${t} (tolerates ${n - t} dropouts), clip ${quant.clip}, 2^-${quant.fracBits} fixed point, error bound ${quantErrorBound(quant).toExponential(2)} on the weighted sum`);
    return {
      server: new SecAggServer({ params, identity: this.#identity! }), params, info, quant, replay: new ReplayGuard(),
      received: { advertise: new Set(), share: new Set(), masked: new Set(), consistency: new Set(), unmask: new Set() },
    };
  }

  /** Is this participant connected, or disconnected for less than the rejoin grace? */
  #reachable(slot: Slot, now: number): boolean {
    if (slot.droppedAt !== undefined) return now - slot.droppedAt < this.options.rejoinGraceMs;
    return slot.conn.socket.connected;
  }

  async #awaitAll(open: OpenRound, ids: readonly string[], got: Set<string>, deadline: number): Promise<void> {
    while (!this.#closed) {
      const now = Date.now();
      const waiting = ids.map((id) => open.slots.get(id)!).filter((s) => !got.has(s.clientId) && this.#reachable(s, now));
      if (waiting.length === 0 || now >= deadline) return;
      const grace = waiting.filter((s) => s.droppedAt !== undefined).map((s) => s.droppedAt! + this.options.rejoinGraceMs - now);
      await this.#sleep(Math.min(deadline - now, ...grace, 60_000));
    }
  }

  #notify(open: OpenRound, event: 'secagg:keys' | 'secagg:shares' | 'secagg:survivors' | 'secagg:unmask', perClient: Map<string, unknown>): string[] {
    for (const [id, msg] of perClient) {
      const slot = open.slots.get(id)!;
      const bytes = encode({ roundId: open.roundId, msg });
      slot.lastNotice = { event, bytes };
      slot.bytesDown += bytes.byteLength;
      if (slot.conn.socket.connected) slot.conn.socket.emit(event, bytes);
    }
    return [...perClient.keys()];
  }

  /**
   * The secure round: advertise → share keys → masked input (clients train meanwhile) → consistency
   * → unmask. The coordinator only ever holds masked vectors (added into the SecAggServer's running
   * sum) and, at the end, the unmasked sum of the survivors, which it decodes from fixed point.
   */
  async #secureCollect(open: OpenRound): Promise<Float32Array | null> {
    const sec = open.secure!;
    const phaseMs = this.options.secAgg?.phaseTimeoutMs ?? 30_000;
    const until = (ms: number) => Math.min(open.deadline, Date.now() + ms);
    const slots = [...open.slots.values()];
    try {
      await this.#awaitAll(open, [...open.slots.keys()], sec.received.advertise, until(phaseMs));
      const u1 = this.#notify(open, EV.secaggKeys, sec.server.closeAdvertise());
      await this.#awaitAll(open, u1, sec.received.share, until(phaseMs));
      const u2 = this.#notify(open, EV.secaggShares, sec.server.closeShareKeys());
      await this.#awaitAll(open, u2, sec.received.masked, open.deadline);
      for (const s of slots) {
        if (s.status === 'pending') s.status = s.droppedAt !== undefined || !s.conn.socket.connected ? 'dropped' : 'timeout';
      }
      const list = sec.server.closeMaskedInput();
      const u3 = this.#notify(open, EV.secaggSurvivors, new Map(list.survivors.map((id) => [id, list])));
      await this.#awaitAll(open, u3, sec.received.consistency, Date.now() + phaseMs);
      const u4 = this.#notify(open, EV.secaggUnmask, sec.server.closeConsistency());
      await this.#awaitAll(open, u4, sec.received.unmask, Date.now() + phaseMs);
      if (this.#closed) return null;
      const res = sec.server.finalize();
      rlog.info(`round ${open.round}: unmasked the sum of ${res.survivors.length} client(s)${res.droppedAfterSharing.length ? `; recovered masks of ${res.droppedAfterSharing.join(', ')}` : ''}${res.badShares.length ? `; ${res.badShares.length} bad share(s) ignored` : ''}`);
      sec.outcome = { droppedAfterSharing: res.droppedAfterSharing, badShares: res.badShares.length };
      return decodeSum(res.sum, sec.quant);
    } catch (e) {
      if (this.#closed) return null;
      rlog.warn(`round ${open.round}: secure aggregation failed: ${errorMessage(e)}`);
      for (const s of slots) if (s.status === 'pending') s.status = 'dropped';
      return null;
    }
  }

  /** Insecure aggregation only: Σ of the plaintext uploads (float64 accumulation). */
  #plainSum(contributors: Slot[]): Float32Array {
    const acc = new Float64Array(this.#layout!.size);
    for (const c of contributors) {
      const v = c.vector!;
      for (let i = 0; i < v.length; i++) acc[i] = acc[i]! + v[i]!;
    }
    return Float32Array.from(acc);
  }

  /** New global adapter from Σ contributions (secure or plain) and the contributors' public rank and weight. */
  #aggregate(flatSum: Float32Array, contributors: Slot[]): LoraAdapter {
    const layout = this.#layout!;
    const prev = this.#global!;
    const o = this.options;
    const sum = unflatten(flatSum, layout);
    // tensors a client declared personal arrive as zeros from it; average each tensor only over
    // the clients that share it, so personal layers never drag the global one toward zero
    const groups = new Map<string, { names: string[]; parts: Slot[] }>();
    for (const e of layout.entries) {
      const parts = contributors.filter((c) => !c.conn.personal(e.name));
      const key = parts.map((p) => p.clientId).join('\u0000');
      const g = groups.get(key) ?? { names: [], parts };
      g.names.push(e.name);
      groups.set(key, g);
    }
    const tensors: TensorMap = new Map(prev.tensors);
    for (const g of groups.values()) {
      if (g.parts.length === 0) continue;
      const res = this.strategy.finalize(sum, g.parts.map((p): Participant => ({ rank: p.rank, weight: p.weight })), prev, o.maxRank);
      for (const n of g.names) tensors.set(n, res.tensors.get(n)!);
    }
    let next: LoraAdapter = { config: prev.config, tensors };
    if (o.refactor && this.strategy.refactorable) {
      const refactored = refactorAdapter(next);
      // a module some client keeps partly personal must not be rotated under it
      const personalSomewhere = (n: string) => [...this.#byClient.values()].some((c) => c.personal(n)) || contributors.some((c) => c.conn.personal(n));
      for (const m of adapterModules(next)) {
        if (personalSomewhere(loraAName(m)) || personalSomewhere(loraBName(m))) {
          refactored.tensors.set(loraAName(m), next.tensors.get(loraAName(m))!);
          refactored.tensors.set(loraBName(m), next.tensors.get(loraBName(m))!);
        }
      }
      next = refactored;
    }
    return next;
  }
}

function applyMetrics(slot: Slot, m: UpdateMetrics): void {
  slot.trainLoss = m.trainLoss;
  if (m.global) slot.global = m.global;
  if (m.personal) slot.personal = m.personal;
}

function fmt(x: number | undefined): string { return x === undefined ? '–' : x.toFixed(4); }

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
