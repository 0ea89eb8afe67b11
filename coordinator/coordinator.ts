/**
 * The coordinator service as a thin host around the round engine (coordinator/engine): it owns
 * the HTTP server and socket.io, admits links (coordinator/admission.ts), serves base-model chunks,
 * turns socket events into engine events and carries out the engine's commands (requests, notices,
 * checkpoints). Round states, aggregation and secure-aggregation phases live in the engine; this
 * file only knows links by id.
 */
import { createServer, type Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket as NetSocket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Server, type Socket } from 'socket.io';
import { ConfigError, ProtocolError, errorMessage } from '../shared/errors.js';
import { logger } from '../shared/log.js';
import { EV, LIMITS, PROTOCOL_VERSION, globMatcher, parseChunkRequest, parseHello, parseReady, type ClientToServerEvents, type ServerToClientEvents } from '../shared/protocol/index.js';
import { chooseQuantParams, formatPublicKey, loadOrCreateIdentity, type AuthorizedClients, type Identity } from '../shared/crypto/index.js';
import { checkServerOpt, describeServerOpt, elementSlots, getStrategy, makeLayout, serverOptimizerOf, type ServerOptConfig, type Strategy, type StrategyName, needsXsFactors } from '../shared/aggregation/index.js';
import { adapterModules, isAdapterTensorName, parseMagnitudeName, type LoraAdapter } from '../shared/lora/adapter.js';
import { initDoraFromCheckpoint } from '../shared/lora/dora.js';
import { baseModelName, savePeftAdapter } from '../shared/lora/peft.js';
import { hasXs, xsToLora } from '../shared/lora/xs.js';
import { xsInitFromCheckpoint } from '../shared/lora/xs-checkpoint.js';
import { socketIoLink, type Link } from '../shared/link/index.js';
import { readModelInfo, targetShapes, defaultTargetModules } from '../shared/model/model-info.js';
import { ModelStore } from './model-store.js';
import { checkResumable, loadState, saveState } from './store/checkpoint-store.js';
import { CoordinatorMetrics, type RoundRecord } from './metrics.js';
import { Admission } from './admission.js';
import { httpHandler } from './http/handlers.js';
import { validateDpConfig, writePrivacyJson, type DpConfig, type DpMode } from '../shared/privacy/index.js';
import type { DpStatus } from './engine/dp.js';
import { RoundEngine, type Command, type EnginePhase } from './engine/round-engine.js';
import { Bus } from './cluster/bus.js';
import { Lease } from './cluster/lease.js';
import { BlobStore, RemoteLink } from './cluster/remote-link.js';
import { protocolVersionGate } from './http/version-gate.js';

const log = logger('fedlora:coordinator');
/** Default clip for every contribution: LoRA factor entries beyond ±8 are clipped before they are summed. */
export const DEFAULT_CLIP = 8;
export const DEFAULT_MAX_EXAMPLES_PER_CLIENT = 10_000;
/** How long close() waits for clients to acknowledge session:done. */
const FAREWELL_ACK_MS = 2000;
const FLOW_CONTROL = new Set(['BUSY', 'RATE_LIMITED']);

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
  /**
   * Server optimiser applied to each round's aggregate (shared/aggregation/server-opt.ts): FedAvgM,
   * FedAdam or FedYogi with optional lr / beta1 / beta2 / eps; default `{ name: 'none' }`. Checkpointed;
   * a resume must use the same settings.
   */
  serverOpt?: ServerOptConfig;
  /** DoRA (PEFT use_dora): the global adapter carries a magnitude vector per module, initialised to the
   *  base weight's row norms, shared and averaged like the factors; clients follow the round config. */
  dora?: boolean;
  /** How long a participant that lost its connection may take to come back before the round moves on without it. */
  rejoinGraceMs?: number;
  /** Keep the newest N checkpoint folders under stateDir (0: every one). Default 2 (this round's and the previous). */
  keepCheckpoints?: number;
  /** Disconnect a client after this many refused requests. */
  maxStrikes?: number;
  /** Declared example counts are cut to this (round weights are public and bounded). Default 10,000. */
  maxExamplesPerClient?: number;
  /** Links that have not joined (challenge + hello) within this many ms are closed. Default 30,000. */
  joinTimeoutMs?: number;
  /** model:chunk requests a connection may have in flight (not yet flushed to the OS). Default 4. */
  maxChunksInFlight?: number;
  /** At most this many ready messages per client in readyWindowMs (default 5 per 10 s). */
  maxReadyPerWindow?: number;
  readyWindowMs?: number;
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
  /**
   * Client-level differential privacy (docs/PRIVACY.md): mode central | distributed (off when
   * absent), L2 clip S (default 1), noise multiplier z (default 1), δ (default 1e-5), ε budget
   * (default none), population for q = clientsPerRound / population (default: the enrolled keys),
   * expected dropout rate the distributed noise is over-provisioned for (default 0).
   */
  dp?: { mode: DpMode; clip?: number; noise?: number; delta?: number; targetEpsilon?: number; population?: number; dropoutRate?: number };
  /**
   * Scale-out (coordinator/cluster, docs/ARCHITECTURE.md "Scale-out"): run as the cluster leader.
   * Clients connect to edge processes (`ClusterEdge`), which relay them over Redis; this process
   * waits for the Redis leader lease, serves only HTTP /status and /metrics itself, and gets one
   * partial sum of masked inputs per edge. `prefix` namespaces the Redis keys (default `fedlora`).
   */
  cluster?: { url: string; prefix?: string; leaseMs?: number };
}

const SECURITY_OPTIONS = ['cluster', 'identity', 'authorizedClients', 'allowAnyClient', 'insecureAggregation', 'secureAggregation', 'secAgg', 'tls', 'dp'] as const;
type SecurityOption = (typeof SECURITY_OPTIONS)[number];
type Phase = 'starting' | EnginePhase;

export interface CoordinatorStatus {
  protocolVersion: number;
  sessionId: string;
  modelId: string;
  strategy: StrategyName;
  /** The server optimiser in one line, e.g. `fedadam (lr 0.01, β1 0.9, β2 0.99, τ 0.001)`, or `none`. */
  serverOpt: string;
  maxRank: number;
  round: number;
  rounds: number;
  completedRounds: number;
  phase: Phase;
  /** Secure-aggregation (or plain upload) phase of the open attempt. */
  collecting: string | null;
  /** `name`: the enrollment name of the client's key (absent for keys without one); `backend`: the tfjs backend the client reports in use. */
  connected: { clientId: string; name?: string; ready: boolean; maxRank: number; backend: string; examples: number }[];
  participating: { clientId: string; name?: string; rank: number; status: string }[];
  lastRound: RoundRecord | null;
  /** `received`: bytes this process read from its client connections (TCP payload: WebSocket frames and HTTP); 0 on a cluster leader, whose clients' traffic arrives over the bus (cluster.inboundBytes). */
  bytes: { up: number; down: number; modelServed: number; fullModel: number; received: number };
  /** Client-level DP: ε spent so far and the settings (absent without DP). */
  privacy?: DpStatus;
  /** Why the run ended before all rounds (the privacy budget), when it did. */
  doneReason?: string;
  /** Cluster leader: its bus node id, fencing token, and the bytes it received over the bus (relayed requests, masked-input references, partial sums). */
  cluster?: { nodeId: string; fence: number; inboundBytes: number; relayedLinks: number; partialSums: number; maskedRefs: number };
}

/** One socket.io connection, before and after it joined. */
interface Conn {
  link: Link;
  clientId?: string;
  name?: string;
  maxRank: number;
  backend: string;
  challenges: number;
  strikes: number;
  chunksInFlight: number;
  joinTimer?: NodeJS.Timeout;
}

export class Coordinator {
  readonly options: Required<Omit<CoordinatorOptions, 'exportDir' | 'targetModules' | 'onRound' | SecurityOption>> & Pick<CoordinatorOptions, 'exportDir' | 'targetModules' | 'onRound' | SecurityOption>;
  readonly sessionId = randomBytes(6).toString('hex');
  readonly strategy: Strategy;
  /** Resolves when all rounds are done (and the export is written). */
  readonly done: Promise<{ completedRounds: number }>;
  #resolveDone!: (v: { completedRounds: number }) => void;
  #http?: HttpServer;
  #io?: Server<ClientToServerEvents, ServerToClientEvents>;
  #store?: ModelStore;
  #engine?: RoundEngine;
  #admission?: Admission;
  #identity?: Identity;
  #conns = new Set<Conn>();
  #byClient = new Map<string, Conn>();
  /** Enrollment names of the ids that joined (kept after a disconnect, for /status of a running round). */
  #names = new Map<string, string>();
  /** Option keys the caller set (the rest are defaults): only those are compared with a resumed state. */
  readonly #explicit: Set<string>;
  #errors = new Map<string, number>();
  #modelServed = 0;
  readonly #prom = new CoordinatorMetrics();
  #maxMessageBytes = 1 << 20;
  #targetModules: string[] = [];
  #timer?: NodeJS.Timeout;
  #closed = false;
  #farewells: Promise<boolean>[] = [];
  readonly #secure: boolean;
  /** Cluster leader: the bus, the lease, the links relayed by edges (by socket id), and who holds each masked input. */
  #bus?: Bus;
  #lease?: Lease;
  #remote = new Map<string, RemoteLink>();
  #maskedAt = new Map<string, { edge: string; roundId: string; digest: string }>();
  #connOf = new WeakMap<Link, Conn>();
  #partialSums = 0;
  #edgeWatch?: NodeJS.Timeout;
  #maskedRefs = 0;
  #layoutSize = 0;
  /** Open client connections and the bytes read on those already closed (bytes.received). */
  #sockets = new Set<NetSocket>();
  #receivedClosed = 0;

  constructor(opts: CoordinatorOptions) {
    this.options = {
      host: '127.0.0.1', rounds: 3, clientsPerRound: 3, minClients: 2, roundTimeoutMs: 600_000, strategy: 'rank-aware',
      maxRank: 8, loraAlpha: 16, localSteps: 20, localEpochs: 0, lr: 1e-3, batchSize: 4, seed: 42, joinWaitMs: 3000,
      requestTimeoutMs: 30_000, chunkSize: 1 << 20, refactor: true, serverOpt: { name: 'none' }, dora: false, maxStrikes: 50, rejoinGraceMs: 3000,
      maxExamplesPerClient: DEFAULT_MAX_EXAMPLES_PER_CLIENT, joinTimeoutMs: 30_000, maxChunksInFlight: 4, maxReadyPerWindow: 5, readyWindowMs: 10_000,
      keepCheckpoints: 2,
      ...stripUndefined(opts),
      modelDir: opts.modelDir, stateDir: opts.stateDir,
    };
    const o = this.options;
    this.#explicit = new Set(Object.keys(stripUndefined(opts)));
    const posInt = (v: number, flag: string, min = 1) => { if (!Number.isInteger(v) || v < min) throw new ConfigError(`${flag} must be an integer ≥ ${min}, got ${v}`); };
    posInt(o.rounds, '--rounds');
    posInt(o.minClients, '--min-clients');
    if (!Number.isInteger(o.clientsPerRound) || o.clientsPerRound < o.minClients) throw new ConfigError(`--clients-per-round (${o.clientsPerRound}) must be an integer ≥ --min-clients (${o.minClients})`);
    if (o.clientsPerRound > 100_000) throw new ConfigError('--clients-per-round must be at most 100000');
    if (!Number.isInteger(o.maxRank) || o.maxRank < 1 || o.maxRank > LIMITS.maxRank) throw new ConfigError(`--max-rank must be an integer in [1, ${LIMITS.maxRank}]`);
    if (!(o.roundTimeoutMs > 0)) throw new ConfigError('--round-timeout must be positive');
    if (!(o.lr > 0) || !Number.isInteger(o.batchSize) || o.batchSize < 1 || !Number.isInteger(o.localSteps) || o.localSteps < 0 || !(o.localEpochs >= 0)) throw new ConfigError('bad local training settings (--lr, --batch-size, --local-steps, --local-epochs)');
    if (o.localSteps === 0 && o.localEpochs === 0) throw new ConfigError('one of --local-steps or --local-epochs must be positive');
    if (o.chunkSize < 1024 || o.chunkSize > LIMITS.maxChunkBytes) throw new ConfigError(`chunk size must be in [1024, ${LIMITS.maxChunkBytes}]`);
    posInt(o.maxExamplesPerClient, '--max-examples-per-client');
    posInt(o.keepCheckpoints, '--keep-checkpoints', 0);
    posInt(o.maxChunksInFlight, 'maxChunksInFlight');
    posInt(o.maxReadyPerWindow, 'maxReadyPerWindow');
    if (!(o.joinTimeoutMs > 0)) throw new ConfigError('--join-timeout must be positive');
    this.strategy = getStrategy(o.strategy);
    // validated here (and the strategy asked whether it composes) so a bad setting fails before anything starts
    const opt = checkServerOpt(o.serverOpt, 'serverOpt');
    if (opt && serverOptimizerOf(this.strategy.createServer({ maxRank: o.maxRank, seed: o.seed, optimizer: o.serverOpt })) === null) {
      throw new ConfigError(`strategy ${o.strategy} does not take a server optimiser (--server-opt ${opt.name})`);
    }
    this.#secure = !(opts.insecureAggregation === true || opts.secureAggregation === false);
    if (this.#secure && o.minClients < 2) throw new ConfigError('secure aggregation needs --min-clients ≥ 2 (a sum over one client is that client\'s update)');
    if (opts.secAgg?.clip !== undefined && !(opts.secAgg.clip > 0 && Number.isFinite(opts.secAgg.clip))) throw new ConfigError('secAgg.clip must be a positive number');
    if (this.#secure) {
      // the largest possible round (every participant at the example cap) must fit the fixed-point range with room to spare
      const q = (() => {
        try { return chooseQuantParams({ clip: this.#clip, maxTotalWeight: o.clientsPerRound * o.maxExamplesPerClient, maxClients: o.clientsPerRound }); } catch { return null; }
      })();
      if (!q || q.fracBits < 8) throw new ConfigError(`--clients-per-round ${o.clientsPerRound} × --max-examples-per-client ${o.maxExamplesPerClient} × clip ${this.#clip} leaves too little fixed-point precision for secure aggregation; lower --max-examples-per-client`);
    }
    if (opts.dp && opts.dp.mode !== 'off') {
      const d = this.#dpConfig(opts.dp.population ?? o.clientsPerRound);
      validateDpConfig(d, o.clientsPerRound, this.#secure);
      // checked before anything is written: with --allow-any-client alone there is no enrolled count to default to
      if (opts.dp.population === undefined && !opts.authorizedClients) throw new ConfigError('--dp needs the client population for its sampling rate: pass --dp-population N (with --allow-any-client there is no enrolled count to use)');
    }
    if (!opts.authorizedClients && !opts.allowAnyClient) {
      throw new ConfigError('no --authorized-clients given: refusing to start (pass --allow-any-client to accept any key, for development only)');
    }
    this.done = new Promise((res) => { this.#resolveDone = res; });
  }

  get #clip(): number { return this.options.secAgg?.clip ?? DEFAULT_CLIP; }

  #dpConfig(population: number): DpConfig {
    const d = this.options.dp!;
    return {
      mode: d.mode as DpConfig['mode'], clip: d.clip ?? 1, noise: d.noise ?? 1, delta: d.delta ?? 1e-5, targetEpsilon: d.targetEpsilon ?? Infinity,
      population, dropoutRate: d.dropoutRate ?? 0,
    };
  }
  get completedRounds(): number { return this.#engine?.completedRounds ?? 0; }
  get phase(): Phase { return this.#closed ? 'closed' : this.#engine?.phase ?? 'starting'; }
  get globalAdapter(): LoraAdapter | undefined { return this.#engine?.global; }
  get history(): readonly RoundRecord[] { return this.#engine?.history ?? []; }
  get modelId(): string | undefined { return this.#store?.modelId; }
  /** Largest inbound message decoded; the transport drops the connection above this plus a little framing. */
  get maxMessageBytes(): number { return this.#maxMessageBytes; }
  /** The coordinator's identity key (`ed25519:…`), for clients to pin; available after serve(). */
  get publicKey(): string | undefined { return this.#identity ? formatPublicKey(this.#identity.publicKey) : undefined; }
  get secureAggregation(): boolean { return this.#secure; }

  async #init(): Promise<void> {
    const o = this.options;
    const store = this.#store = await ModelStore.open(o.modelDir);
    const info = await readModelInfo(o.modelDir);
    // sorted, as the resume check compares them (an unsorted --target-modules could otherwise never resume)
    this.#targetModules = o.targetModules?.length ? [...o.targetModules].sort() : defaultTargetModules(info.config);

    const loaded = await loadState(o.stateDir);
    // a rank above min(d_in, d_out) of a module adds parameters and no expressiveness: the global rank is capped at the smallest module's
    const targetsNow = loaded ? loaded.state.targetModules : this.#targetModules;
    const shapesNow = targetShapes(info, targetsNow);
    const cap = Math.min(...[...shapesNow.values()].map((d) => Math.min(d.in, d.out)));
    if (Number.isFinite(cap) && o.maxRank > cap) {
      const small = [...shapesNow].filter(([, d]) => Math.min(d.in, d.out) === cap).map(([m]) => m);
      log.warn(`--max-rank ${o.maxRank} is above min(d_in, d_out) = ${cap} of ${small.length} adapted module(s) (e.g. ${small.slice(0, 2).join(', ')}): using rank ${cap} for every module (clients train at min(their --max-rank, ${cap}))`);
      o.maxRank = cap;
    }
    const server = this.strategy.createServer({ maxRank: o.maxRank, seed: o.seed, optimizer: o.serverOpt });
    const serverOpt = describeServerOpt(checkServerOpt(o.serverOpt));
    let global: LoraAdapter, completed = 0, history: RoundRecord[] = [];
    const baseName = await baseModelName(o.modelDir);
    if (loaded) {
      checkResumable(loaded.state, {
        modelId: store.modelId, strategy: o.strategy, maxRank: o.maxRank,
        ...(this.#explicit.has('loraAlpha') ? { loraAlpha: o.loraAlpha } : {}),
        ...(o.targetModules?.length ? { targetModules: [...o.targetModules].sort() } : {}),
        useDora: o.dora === true,
      }, { useDora: loaded.adapter.config.useDora === true });
      global = loaded.adapter;
      if (global.config.baseModelNameOrPath == null) global = { ...global, config: { ...global.config, baseModelNameOrPath: baseName } };
      completed = loaded.state.completedRounds;
      history = loaded.state.history;
      this.#targetModules = loaded.state.targetModules;
      server.restore(loaded.state.strategyState);
      log.info(`resuming from ${o.stateDir}: ${completed} round(s) completed, server optimiser ${serverOpt}`);
    } else {
      const shapes = targetShapes(info, this.#targetModules);
      const base = { targetModules: this.#targetModules, fanInFanOut: info.fanInFanOut, useRslora: false, taskType: 'CAUSAL_LM', baseModelNameOrPath: baseName };
      if (needsXsFactors(this.strategy)) {
        // LoRA-XS: the frozen factors come from the base weights' truncated SVD, computed once here and
        // shipped inside the signed global adapter, so every participant holds the same bytes
        if (o.dora) throw new ConfigError('--dora cannot be combined with --strategy lora-xs');
        const t0 = Date.now();
        global = await xsInitFromCheckpoint(o.modelDir, o.maxRank, o.loraAlpha, base);
        log.info(`LoRA-XS factors for ${shapes.size} modules at rank ${o.maxRank} from the base weights' truncated SVD (${Date.now() - t0} ms)`);
      } else {
        global = this.strategy.init(shapes, o.maxRank, o.loraAlpha, o.seed, base);
      }
      if (o.dora) {
        // LoRA-XS-style adapters (frozen factors around a trained core) have no DoRA form here
        if (!adapterModules(global).length || [...global.tensors.keys()].some((n) => !isAdapterTensorName(n))) throw new ConfigError(`--dora needs a strategy whose adapter is plain LoRA A/B factors; ${o.strategy} is not`);
        global = await initDoraFromCheckpoint(o.modelDir, global);
      }
      log.info(`fresh run: ${shapes.size} modules, strategy ${o.strategy}, server optimiser ${serverOpt}, max rank ${o.maxRank}${o.dora ? ', DoRA' : ''}`);
    }
    if (o.dora) {
      // uploads are clipped to ±clip entry-wise (plain and secure); a magnitude beyond it would be cut
      let big = 0;
      for (const [n, t] of global.tensors) if (parseMagnitudeName(n)) for (const v of t.data) big = Math.max(big, Math.abs(v));
      if (big > this.#clip) throw new ConfigError(`--dora: a magnitude vector entry is ${big.toPrecision(4)}, above the upload clip ${this.#clip}; raise --secagg-clip to at least ${Math.ceil(big * 1.5)} (headroom for the magnitudes to grow in training)`);
      if (big > this.#clip / 1.5) log.warn(`--dora: the largest magnitude (${big.toPrecision(4)}) is within 1.5× of the upload clip ${this.#clip}; magnitudes that grow past it are clipped (raise --secagg-clip)`);
    }
    // the identity is created only once the state is known to be resumable (a refused start writes nothing)
    if (o.identity && typeof o.identity === 'object') this.#identity = o.identity;
    else {
      const file = (o.identity as string | undefined) ?? join(o.stateDir, 'coordinator.identity');
      const r = await loadOrCreateIdentity(file);
      if (r.created) log.info(`created coordinator identity ${file}`);
      this.#identity = r.identity;
    }
    const { admission, enrolled } = await Admission.create({ identity: this.#identity, ...(o.authorizedClients ? { authorizedClients: o.authorizedClients } : {}), allowAnyClient: o.allowAnyClient === true });
    this.#admission = admission;
    if (o.allowAnyClient) log.warn('--allow-any-client: any key that proves possession may join (development only)');
    if (!this.#secure) log.warn('--insecure-aggregation: client updates reach the coordinator in the clear (each is still clipped to ±c)');
    log.info(`coordinator key ${formatPublicKey(this.#identity.publicKey)}${enrolled !== null ? `, ${enrolled} enrolled client key(s)` : ''}`);
    let dp: DpConfig | undefined;
    if (o.dp && o.dp.mode !== 'off') {
      const population = o.dp.population ?? enrolled;
      if (!population) throw new ConfigError('--dp needs the client population for its sampling rate: pass --dp-population N (with --allow-any-client there is no enrolled count to use)');
      dp = this.#dpConfig(population);
      validateDpConfig(dp, o.clientsPerRound, this.#secure);
      log.info(`client-level DP (${dp.mode}): clip S=${dp.clip}, noise z=${dp.noise}, q=${o.clientsPerRound}/${population}, δ=${dp.delta}${Number.isFinite(dp.targetEpsilon) ? `, budget ε ≤ ${dp.targetEpsilon}` : ''}; personal tensors are outside the guarantee`);
    }
    const layout = makeLayout([...global.tensors].filter(([n]) => this.strategy.isShared(n)).map(([name, t]) => ({ name, shape: t.shape })));
    // an upload is 4 bytes per element plus a little framing; the global adapter goes the other way
    this.#maxMessageBytes = Math.max(1 << 20, layout.size * 4 + (1 << 16), o.chunkSize + (1 << 16));
    this.#layoutSize = layout.size;
    this.#engine = new RoundEngine({
      rounds: o.rounds, clientsPerRound: o.clientsPerRound, minClients: o.minClients, roundTimeoutMs: o.roundTimeoutMs, joinWaitMs: o.joinWaitMs,
      rejoinGraceMs: o.rejoinGraceMs, phaseTimeoutMs: o.secAgg?.phaseTimeoutMs ?? 30_000, maxRank: o.maxRank, seed: o.seed,
      maxExamplesPerClient: o.maxExamplesPerClient, clip: this.#clip, secure: this.#secure, secAgg: { ...(o.secAgg?.k !== undefined ? { k: o.secAgg.k } : {}), ...(o.secAgg?.t !== undefined ? { t: o.secAgg.t } : {}) },
      train: { steps: o.localSteps, epochs: o.localEpochs, lr: o.lr, batchSize: o.batchSize }, refactor: o.refactor,
      readyLimit: { max: o.maxReadyPerWindow, windowMs: o.readyWindowMs },
      ...(dp ? { dp } : {}),
      ...(o.cluster && this.#secure ? { hierarchical: true } : {}),
    }, {
      sessionId: this.sessionId, modelId: store.modelId, fullModelBytes: store.weightBytes, identity: this.#identity, boxSecretKey: admission.box.keyPair.secretKey,
      strategy: this.strategy, server, global, layout, elementSlots: elementSlots(layout), completedRounds: completed, history,
      attempt: history.reduce((m, r) => { const a = r.attempt ?? Number(r.roundId.split(':')[2]); return Number.isSafeInteger(a) && a > m ? a : m; }, 0),
      now: () => Date.now(), randomBytes: (n) => new Uint8Array(randomBytes(n)), out: (cmd) => this.#execute(cmd), maxMessageBytes: this.#maxMessageBytes,
    });
  }

  /** Starts listening; returns the URL clients connect to. Rounds begin as clients become ready. */
  async serve(port = 0): Promise<string> {
    if (this.options.cluster) return this.#serveCluster(port);
    await this.#init();
    const tls = this.options.tls;
    const pem = async (v: string | Uint8Array): Promise<string | Buffer> => (typeof v !== 'string' ? Buffer.from(v) : v.includes('-----BEGIN') ? v : readFile(v));
    const handler = httpHandler({ status: () => this.status(), metrics: () => this.#metrics() });
    const http: HttpServer = tls ? createHttpsServer({ cert: await pem(tls.cert), key: await pem(tls.key) }, handler) : createServer(handler);
    this.#http = http;
    // bytes read from client connections (TCP payload: WebSocket frames, HTTP), for /status bytes.received
    http.on('connection', (sock) => {
      this.#sockets.add(sock);
      sock.once('close', () => { this.#receivedClosed += sock.bytesRead; this.#sockets.delete(sock); });
    });
    this.#io = new Server<ClientToServerEvents, ServerToClientEvents>(http, {
      maxHttpBufferSize: this.#maxMessageBytes + 4096, pingTimeout: 60_000, pingInterval: 10_000, serveClient: false, cors: { origin: false },
    });
    this.#io.use(protocolVersionGate);
    this.#io.on('connection', (s) => this.#onLink((onRefused) => socketIoLink(s as never, { maxBytes: this.#maxMessageBytes, onRefused })));
    await new Promise<void>((res, rej) => { http.once('error', rej); http.listen(port, this.options.host, () => { http.off('error', rej); res(); }); });
    const addr = http.address() as AddressInfo;
    const host = this.options.host === '0.0.0.0' || this.options.host === '::' ? '127.0.0.1' : this.options.host;
    const url = `${tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${addr.port}`;
    log.info(`serving model ${this.#store!.modelId.slice(0, 12)}… on ${url} (session ${this.sessionId})`);
    this.#drive(() => this.#engine!.tick());
    return url;
  }

  /**
   * Cluster leader: wait for the Redis lease (a standby leader blocks here until the lease holder
   * is gone), load the last checkpoint, then serve edges over the bus and HTTP status locally.
   */
  async #serveCluster(port: number): Promise<string> {
    const c = this.options.cluster!;
    if (!/^rediss?:\/\//.test(c.url)) throw new ConfigError(`--cluster must be a redis:// URL, got ${c.url}`);
    const bus = this.#bus = new Bus({ url: c.url, prefix: c.prefix ?? 'fedlora' });
    await bus.start();
    const lease = this.#lease = new Lease(bus.redis, bus.prefix, bus.nodeId, c.leaseMs ?? 3000);
    await lease.acquire(() => this.#closed);
    lease.onLost = () => { log.error('lost the leader lease: stopping (another leader took over)'); void this.close(); };
    log.info(`cluster leader ${bus.nodeId} (fencing token ${lease.token})`);
    const blobs = new BlobStore(bus);
    await this.#init();
    bus.onRequest('edge:hello', () => ({ boxSecretKey: this.#admission!.box.keyPair.secretKey, maxMessageBytes: this.#maxMessageBytes }));
    bus.onRequest('c:open', (b, from) => {
      const sock = String((b as { sock?: unknown })?.sock ?? '');
      if (!sock || this.#remote.has(sock)) return;
      this.#onLink((onRefused) => {
        const link = new RemoteLink(bus, from, sock, { maxBytes: this.#maxMessageBytes, onRefused, blobs });
        this.#remote.set(sock, link);
        link.onClose(() => { if (this.#remote.get(sock) === link) this.#remote.delete(sock); });
        return link;
      });
    });
    bus.onRequest('c:close', (b, from) => {
      const link = this.#remote.get(String((b as { sock?: unknown })?.sock));
      if (link && link.edge === from) link.closed(String((b as { reason?: unknown }).reason ?? 'closed').slice(0, 100));
    });
    // a crashed edge sends no c:close: its links go down once its presence key has expired
    this.#edgeWatch = setInterval(() => {
      const byEdge = new Set([...this.#remote.values()].map((l) => l.edge));
      for (const edge of byEdge) {
        void bus.redis.exists(`${bus.prefix}:edge:${edge}`).then((n) => {
          if (n > 0 || this.#closed) return;
          log.warn(`edge ${edge} is gone: its clients count as disconnected`);
          for (const l of [...this.#remote.values()]) if (l.edge === edge) l.closed('edge gone');
        }, () => undefined);
      }
    }, 1000);
    bus.onRequest('c:req', (b, from) => {
      const o = b as { sock?: unknown; event?: unknown; bytes?: unknown };
      const link = this.#remote.get(String(o?.sock));
      if (!link || link.edge !== from) throw new ProtocolError('LINK_CLOSED', 'no such relayed connection');
      return link.dispatch(String(o.event), o.bytes).then((raw) => ({ raw }));
    });
    bus.onRequest('c:masked', (b, from) => {
      const o = b as { sock?: unknown; roundId?: unknown; digest?: unknown; size?: unknown; length?: unknown; ref?: unknown };
      const link = this.#remote.get(String(o?.sock));
      const conn = link && this.#connOf.get(link);
      if (!link || !conn || link.edge !== from) throw new ProtocolError('LINK_CLOSED', 'no such relayed connection');
      const id = this.#joined(conn);
      if (typeof o.roundId !== 'string' || typeof o.digest !== 'string' || typeof o.size !== 'number') throw new ProtocolError('BAD_MESSAGE', 'malformed masked reference');
      if (o.length !== this.#layoutSize) throw new ProtocolError('SECAGG_MESSAGE', `masked input of ${id} must be a Uint32Array of length ${this.#layoutSize}`);
      const accept = (): Record<string, unknown> => {
        // the newest edge to report an input holds it (a client that reconnected elsewhere re-sent it there);
        // set first: the last reference closes the phase and the gather reads this synchronously
        const before = this.#maskedAt.get(id);
        this.#maskedAt.set(id, { edge: from, roundId: o.roundId as string, digest: o.digest as string });
        try {
          this.#drive(() => this.#engine!.receiveRelayed(id, 'masked', o.roundId as string, o.ref, o.size as number, o.digest as string));
        } catch (e) {
          if (before) this.#maskedAt.set(id, before); else this.#maskedAt.delete(id);
          throw e;
        }
        this.#maskedRefs++;
        return {};
      };
      // The same input re-sent through another edge while the first edge is alive: that edge already
      // added it into its running sum (it cannot take it back out), so it stays there and the new edge
      // lets its copy go (`heldAt`). If the first edge is gone, the new one holds it.
      const prev = this.#maskedAt.get(id);
      if (prev && prev.roundId === o.roundId && prev.edge !== from && prev.digest === o.digest) {
        return bus.redis.exists(`${bus.prefix}:edge:${prev.edge}`).then((n) => n > 0, () => false).then((alive) => {
          const now = this.#maskedAt.get(id);
          if (alive && now && now.edge === prev.edge && now.roundId === prev.roundId) return { heldAt: prev.edge };
          return accept();
        });
      }
      return accept();
    });
    const handler = httpHandler({ status: () => this.status(), metrics: () => this.#metrics() });
    const http = this.#http = createServer(handler);
    await new Promise<void>((res, rej) => { http.once('error', rej); http.listen(port, this.options.host, () => { http.off('error', rej); res(); }); });
    const addr = http.address() as AddressInfo;
    const url = `http://${this.options.host.includes(':') ? `[${this.options.host}]` : this.options.host}:${addr.port}`;
    log.info(`leading model ${this.#store!.modelId.slice(0, 12)}… (session ${this.sessionId}); status on ${url}`);
    this.#drive(() => this.#engine!.tick());
    return url;
  }

  /** Cluster leader: one partial sum per edge over the inputs it holds, then let the engine close the phase. */
  #gather(roundId: string, ids: string[]): void {
    const byEdge = new Map<string, string[]>();
    for (const id of ids) {
      const at = this.#maskedAt.get(id);
      if (!at || at.roundId !== roundId) continue;
      let l = byEdge.get(at.edge);
      if (!l) byEdge.set(at.edge, l = []);
      l.push(id);
    }
    const timeout = this.options.secAgg?.phaseTimeoutMs ?? 30_000;
    void Promise.allSettled([...byEdge].map(async ([edge, list]) => {
      try {
        // an edge that is gone (closed, or its presence key expired) is not waited for
        const alive = () => this.#bus!.redis.exists(`${this.#bus!.prefix}:edge:${edge}`).then((n) => n > 0, () => true);
        if (!(await alive())) throw new ProtocolError('LINK_CLOSED', 'the edge is gone');
        // a crashed edge's presence key expires (EdgeOptions.presenceMs, 10 s): stop waiting for it then, not at the phase timeout
        let watch: NodeJS.Timeout | undefined;
        const gone = new Promise<never>((_res, rej) => {
          watch = setInterval(() => void alive().then((ok) => { if (!ok) rej(new ProtocolError('LINK_CLOSED', 'the edge went away')); }), 500);
        });
        gone.catch(() => undefined); // a late check after the race settled must not be an unhandled rejection
        const r = await Promise.race([this.#bus!.request(edge, 'partial', { roundId, ids: list }, timeout), gone]).finally(() => clearInterval(watch)) as { sum?: unknown };
        if (!(r?.sum instanceof Uint32Array)) throw new ProtocolError('BAD_MESSAGE', 'malformed partial sum');
        this.#partialSums++;
        if (!this.#closed) this.#drive(() => this.#engine!.partial(roundId, list, r.sum as Uint32Array));
      } catch (e) {
        log.warn(`edge ${edge}: no partial sum for ${list.length} masked input(s) of ${roundId}: ${errorMessage(e)} (they count as dropped)`);
      }
    })).then(() => {
      for (const [id, at] of this.#maskedAt) if (at.roundId === roundId) this.#maskedAt.delete(id);
      if (!this.#closed) this.#drive(() => this.#engine!.gathered(roundId));
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    await Promise.allSettled(this.#farewells.splice(0));
    this.#engine?.close();
    clearInterval(this.#edgeWatch);
    if (this.#bus) {
      await this.#lease?.release();
      await this.#bus.close();
    }
    for (const c of this.#conns) clearTimeout(c.joinTimer);
    const io = this.#io;
    if (io) await new Promise<void>((res) => { void io.close(() => res()); });
    else if (this.#http) await new Promise<void>((res) => this.#http!.close(() => res()));
    await this.#store?.close();
  }

  status(): CoordinatorStatus {
    const e = this.#engine;
    const history = e?.history ?? [];
    let received = this.#receivedClosed;
    for (const sock of this.#sockets) received += sock.bytesRead;
    const bytes = { up: 0, down: 0, modelServed: this.#modelServed, fullModel: this.#store?.weightBytes ?? 0, received };
    for (const r of history) { bytes.up += r.bytesUp; bytes.down += r.bytesDown; }
    return {
      protocolVersion: PROTOCOL_VERSION, sessionId: this.sessionId, modelId: this.#store?.modelId ?? '', strategy: this.strategy.name,
      serverOpt: describeServerOpt(checkServerOpt(this.options.serverOpt)),
      maxRank: this.options.maxRank, round: e?.round ?? 1, rounds: this.options.rounds, completedRounds: this.completedRounds, phase: this.phase,
      collecting: e?.collecting ?? null,
      connected: [...this.#byClient.values()].map((c) => ({
        clientId: c.clientId!, ...(c.name ? { name: c.name } : {}), ready: e?.isReady(c.clientId!) ?? false, maxRank: c.maxRank, backend: c.backend, examples: e?.examplesOf(c.clientId!) ?? 0,
      })),
      participating: (e?.participating() ?? []).map((p) => { const name = this.#names.get(p.clientId); return name ? { ...p, name } : p; }),
      lastRound: history.at(-1) ?? null,
      bytes,
      ...(e?.privacy ? { privacy: e.privacy } : {}),
      ...(e?.doneReason ? { doneReason: e.doneReason } : {}),
      ...(this.#bus ? { cluster: { nodeId: this.#bus.nodeId, fence: this.#lease?.token ?? 0, inboundBytes: this.#bus.inboundBytes, relayedLinks: this.#remote.size, partialSums: this.#partialSums, maskedRefs: this.#maskedRefs } } : {}),
    };
  }

  #metrics(): Promise<string> {
    const e = this.#engine;
    return this.#prom.render({
      round: e?.round ?? 1, completedRounds: this.completedRounds, connected: this.#byClient.size,
      ready: [...this.#byClient.keys()].filter((id) => e?.isReady(id)).length,
      fullModelBytes: this.#store?.weightBytes ?? 0, modelBytesServed: this.#modelServed, protocolErrors: this.#errors, history: e?.history ?? [],
    });
  }

  // ---------- engine host ----------

  /** Runs an engine call, then re-arms the one timer at the engine's next deadline. */
  #drive<T>(f: () => T): T {
    try {
      return f();
    } finally {
      this.#prom.phase(this.#engine?.phase, this.#engine?.collecting);
      this.#schedule();
    }
  }

  #schedule(): void {
    clearTimeout(this.#timer);
    const at = this.#closed ? null : this.#engine?.nextWake() ?? null;
    if (at === null) return;
    this.#timer = setTimeout(() => this.#drive(() => this.#engine!.tick()), Math.max(0, Math.min(at - Date.now(), 2 ** 31 - 1)));
  }

  #execute(cmd: Command): void {
    if (this.#closed) return;
    const o = this.options;
    switch (cmd.type) {
      case 'start': {
        const link = this.#byClient.get(cmd.to)?.link;
        const failed = (why: string) => queueMicrotask(() => { if (!this.#closed) this.#drive(() => this.#engine!.startFailed(cmd.to, cmd.roundId, why)); });
        if (!link) { failed('not connected'); return; }
        // an ack that never comes (a client that died) must not hold the round: the engine hears of it
        link.request(EV.roundStart, cmd.bytes, o.requestTimeoutMs)
          .then(() => { if (cmd.then) void link.notify(cmd.then.event, cmd.then.bytes, o.requestTimeoutMs); })
          .catch((e: unknown) => failed(errorMessage(e)));
        return;
      }
      case 'notify': {
        const link = this.#byClient.get(cmd.to)?.link;
        if (!link) return;
        // session:done is acked by clients; close() waits (briefly) for those acks so an exit does not cut it off
        const p = link.notify(cmd.event, cmd.bytes, cmd.event === EV.sessionDone ? FAREWELL_ACK_MS : o.requestTimeoutMs);
        if (cmd.event === EV.sessionDone) this.#farewells.push(p);
        return;
      }
      case 'checkpoint': {
        const round = cmd.round;
        // the round counts (in /status too) only once its checkpoint is on disk
        // a cluster leader writes only while it holds the lease under its fencing token
        (this.#lease ? this.#lease.check() : Promise.resolve()).then(() => saveState(o.stateDir, {
          modelId: this.#store!.modelId, strategy: this.strategy.name, maxRank: o.maxRank, seed: o.seed, loraAlpha: o.loraAlpha,
          targetModules: this.#targetModules, completedRounds: round, strategyState: cmd.strategyState, history: [...cmd.history],
        }, cmd.adapter, { keep: o.keepCheckpoints })).then(
          () => { if (!this.#closed) this.#drive(() => this.#engine!.checkpointed(round)); },
          (e: unknown) => { if (!this.#closed) this.#drive(() => this.#engine!.checkpointFailed(round, e)); },
        );
        return;
      }
      case 'gather':
        this.#gather(cmd.roundId, cmd.ids);
        return;
      case 'round':
        try { o.onRound?.(cmd.record); } catch (e) { log.warn(`onRound callback failed: ${errorMessage(e)}`); }
        return;
      case 'done':
        void this.#finish(cmd.global, cmd.completedRounds);
        return;
    }
  }

  async #finish(global: LoraAdapter, completedRounds: number): Promise<void> {
    const o = this.options;
    try {
      if (o.exportDir) {
        // a LoRA-XS global is exported as the plain LoRA it equals (lora_B = U_r Σ_r R, lora_A = V_rᵀ)
        await savePeftAdapter(hasXs(global) ? xsToLora(global) : global, o.exportDir);
        log.info(`exported the global adapter to ${o.exportDir}`);
        const p = [...(this.#engine?.history ?? [])].reverse().find((r) => r.privacy)?.privacy;
        if (p) await writePrivacyJson(o.exportDir, p);
      }
    } catch (e) {
      log.error(`export to ${o.exportDir} failed: ${errorMessage(e)}`);
    }
    this.#resolveDone({ completedRounds });
  }

  // ---------- links ----------

  /** A new client link, local (socket.io) or relayed by an edge (RemoteLink); `make` gets the refusal counter. */
  #onLink(make: (onRefused: (event: string, e: unknown) => void) => Link): void {
    const o = this.options;
    const conn: Conn = { link: undefined as unknown as Link, maxRank: 0, backend: '', challenges: 0, strikes: 0, chunksInFlight: 0 };
    const link = conn.link = make(
      (event, e) => {
        const code = (e as { code?: unknown })?.code ? String((e as { code: unknown }).code) : 'INTERNAL';
        this.#errors.set(code, (this.#errors.get(code) ?? 0) + 1);
        log.debug(`${conn.clientId ?? link.id}: ${event} refused: ${errorMessage(e)}`);
        // flow control (too many chunks in flight, too many readies) is answered, not held against the peer
        if (FLOW_CONTROL.has(code)) return;
        if (++conn.strikes >= o.maxStrikes) {
          log.warn(`${conn.clientId ?? link.id}: ${conn.strikes} refused requests, disconnecting`);
          link.close();
        }
      },
    );
    this.#conns.add(conn);
    this.#connOf.set(link, conn);
    // a link that never joins is closed: it holds a socket and learns nothing
    conn.joinTimer = setTimeout(() => {
      if (!conn.clientId) { log.info(`${link.id}: no join within ${o.joinTimeoutMs} ms, closing`); link.close(); }
    }, o.joinTimeoutMs);
    const closeAfterReply = () => setImmediate(() => link.close());
    link.onRequest(EV.authChallenge, () => {
      if (conn.clientId) throw new ProtocolError('ALREADY_HELLO', 'this connection already joined');
      // a few challenges (a client retrying after a lost ack), not an unbounded supply
      if (++conn.challenges > 3) { closeAfterReply(); throw new ProtocolError('TOO_MANY', 'too many join challenges on one connection'); }
      return this.#admission!.challenge(link.id);
    });
    link.onRequest(EV.hello, (m) => {
      if (conn.clientId) throw new ProtocolError('ALREADY_HELLO', 'hello already received on this connection');
      const parsed = parseHello(m);
      if (!parsed.proof) throw new ProtocolError('AUTH_REQUIRED', 'hello needs a join proof (request auth:challenge first)');
      let a;
      try {
        a = this.#admission!.admit(parsed, link.id);
      } catch (e) {
        // refusals name only the reason; nothing about the session leaves before a join succeeds
        closeAfterReply();
        throw e;
      }
      const h = a.hello;
      clearTimeout(conn.joinTimer);
      const prev = this.#byClient.get(h.clientId);
      if (prev && prev !== conn) {
        log.info(`${h.clientId}: new connection replaces the old one`);
        this.#byClient.delete(h.clientId);
        prev.link.close();
      }
      conn.clientId = h.clientId;
      if (a.name) { conn.name = a.name; this.#names.set(h.clientId, a.name); }
      conn.maxRank = h.capabilities.maxRank;
      conn.backend = h.capabilities.backend;
      this.#byClient.set(h.clientId, conn);
      this.#drive(() => this.#engine!.joined(h.clientId, { key: a.key, maxRank: h.capabilities.maxRank, personal: globMatcher(h.personal) }));
      log.info(`${h.clientId} (${this.#admission!.describe(a)}) joined (rank ≤ ${h.capabilities.maxRank}, ${h.capabilities.backend}${h.personal.length ? `, personal ${h.personal.join(' ')}` : ''})`);
      const store = this.#store!;
      return {
        protocolVersion: PROTOCOL_VERSION, sessionId: this.sessionId, modelId: store.modelId, files: [...store.files], chunkSize: o.chunkSize,
        strategy: this.strategy.name, maxRank: o.maxRank, rounds: o.rounds, completedRounds: this.completedRounds,
      };
    });
    link.onRequest(EV.modelChunk, async (m) => {
      this.#joined(conn);
      const r = parseChunkRequest(m);
      if (r.length > o.chunkSize) throw new ProtocolError('TOO_LARGE', `chunk length ${r.length} over ${o.chunkSize}`);
      // backpressure: a peer that does not read its replies gets refusals, not more buffered megabytes
      if (conn.chunksInFlight >= o.maxChunksInFlight) throw new ProtocolError('BUSY', `more than ${o.maxChunksInFlight} model chunks in flight on this connection; read the replies first`);
      conn.chunksInFlight++;
      let data: Uint8Array;
      try {
        data = await this.#store!.readChunk(r.modelId, r.file, r.offset, r.length);
      } catch (e) {
        conn.chunksInFlight--;
        throw e;
      }
      this.#modelServed += data.byteLength;
      // the reply is queued right after this returns; the slot frees once it reached the OS
      setImmediate(() => void link.drained().then(() => { conn.chunksInFlight--; }));
      return { data };
    });
    link.onRequest(EV.ready, (m) => {
      const id = this.#joined(conn);
      const r = parseReady(m);
      if (r.modelId !== this.#store!.modelId) throw new ProtocolError('MODEL_MISMATCH', 'ready for a different model');
      return this.#drive(() => this.#engine!.ready(id, r.examples));
    });
    link.onRequest(EV.update, (m, n) => { const id = this.#joined(conn); this.#drive(() => this.#engine!.receive(id, 'update', m, n)); return {}; });
    link.onRequest(EV.secagg, (m, n) => { const id = this.#joined(conn); this.#drive(() => this.#engine!.receive(id, 'secagg', m, n)); return {}; });
    link.onClose((reason) => {
      clearTimeout(conn.joinTimer);
      this.#conns.delete(conn);
      const id = conn.clientId;
      if (!id || this.#byClient.get(id) !== conn) return;
      this.#byClient.delete(id);
      log.info(`${id} disconnected (${reason})`);
      if (!this.#closed) this.#drive(() => this.#engine!.lost(id));
    });
  }

  /** The id of a joined link; only the link currently bound to that id speaks for it. */
  #joined(conn: Conn): string {
    if (!conn.clientId || this.#byClient.get(conn.clientId) !== conn) throw new ProtocolError('NO_HELLO', 'send hello first');
    return conn.clientId;
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
