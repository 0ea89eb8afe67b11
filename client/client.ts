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
  EV, PROTOCOL_VERSION, ID_RE, globMatcher, okReply, errorReply, parseChunkReply, parseHelloReply, parseRoundEnd, parseRoundStart,
  parseSessionDone, request, requestEncoded, roundStartTensors,
  type ClientToServerEvents, type HelloReply, type RoundStart, type ServerToClientEvents, type Update,
} from '../shared/protocol/index.js';
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

interface Job { roundId: string; promise: Promise<Uint8Array | null>; upload?: Uint8Array }

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
  get connected(): boolean { return this.#socket?.connected ?? false; }

  /** Participates until the coordinator declares the session done (or `stop()`). */
  async run(): Promise<{ completedRounds: number; roundsTrained: number }> {
    const o = this.options;
    await mkdir(o.stateDir, { recursive: true });
    this.#clientId = o.clientId ?? (await this.#loadOrCreateId());
    const done = new Promise<{ completedRounds: number; roundsTrained: number }>((res, rej) => { this.#resolveRun = res; this.#rejectRun = rej; });
    const socket: Socket<ServerToClientEvents, ClientToServerEvents> = io(o.coordinatorUrl, {
      auth: { protocolVersion: PROTOCOL_VERSION },
      transports: ['websocket'],
      reconnection: true,
      reconnectionDelay: o.reconnectInitialMs ?? 500,
      reconnectionDelayMax: o.reconnectMaxMs ?? 10_000,
      randomizationFactor: 0.3,
      timeout: 10_000,
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
        const e = parseRoundEnd(decode(payload, 1 << 16));
        log.debug(`round ${e.round} ${e.status} with ${e.contributors} contributor(s)`);
      } catch (err) { log.warn(`bad round:end from coordinator: ${errorMessage(err)}`); }
    });
    on(EV.sessionDone, (payload: unknown) => {
      try {
        const d = parseSessionDone(decode(payload, 1 << 16));
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
    if (e instanceof FedloraError && ['VERSION_MISMATCH', 'MODEL_FORMAT', 'DATA', 'CONFIG', 'MODEL_MISMATCH', 'BACKEND'].includes(e.code)) { this.#fail(e); return; }
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

  async #handshake(): Promise<void> {
    const o = this.options;
    const socket = this.#socket!;
    const hello = parseHelloReply(await request(socket, EV.hello, {
      protocolVersion: PROTOCOL_VERSION, clientId: this.#clientId,
      capabilities: { maxRank: o.maxRank!, backend: o.backend ?? 'auto', examples: this.#trainer?.trainExamples ?? 0, gpu: false },
      personal: o.personal ?? [],
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
      rs = parseRoundStart(decode(payload));
      if (!this.#trainer || !this.#strategy) throw new ProtocolError('NOT_READY', 'client is not ready');
      if (rs.strategy !== this.#strategy.name) throw new ProtocolError('BAD_MESSAGE', `round strategy ${rs.strategy} differs from the session's ${this.#strategy.name}`);
      if (rs.rank > this.options.maxRank!) throw new ProtocolError('BAD_MESSAGE', `assigned rank ${rs.rank} exceeds this client's ${this.options.maxRank}`);
    } catch (e) {
      reply(errorReply(e));
      return;
    }
    const bytesDown = payload instanceof Uint8Array ? payload.byteLength : 0;
    reply(okReply());
    // the coordinator resends round:start after a reconnect: reuse the job for the same round
    if (this.#job?.roundId === rs.roundId) {
      const job = this.#job;
      void job.promise.then((bytes) => { if (bytes) return this.#upload(rs, bytes, null, bytesDown); });
      return;
    }
    const startedAt = Date.now();
    // one trainer, one job at a time: a newer round (e.g. after a coordinator restart) waits its turn
    const prev = this.#job?.promise.catch(() => null) ?? Promise.resolve(null);
    const job: Job = { roundId: rs.roundId, promise: prev.then(() => (this.#stopped ? null : this.#train(rs))) };
    this.#job = job;
    void job.promise.then(async (bytes) => {
      if (!bytes) return;
      await this.#upload(rs, bytes, startedAt, bytesDown);
    }).catch((e: unknown) => {
      log.error(`${this.#clientId}: round ${rs.round} failed locally: ${errorMessage(e)}`);
    });
  }

  #lastSummary: ClientRoundSummary | null = null;

  async #upload(rs: RoundStart, bytes: Uint8Array, startedAt: number | null, bytesDown: number): Promise<void> {
    const socket = this.#socket;
    if (!socket?.connected || this.#stopped) return; // the coordinator resends round:start after we reconnect
    if (this.#handshaking) await this.#handshaking;
    let accepted = false;
    try {
      await requestEncoded(socket, EV.update, bytes, this.#timeout());
      accepted = true;
    } catch (e) {
      log.warn(`${this.#clientId}: round ${rs.round} upload refused: ${errorMessage(e)}`);
    }
    const s = this.#lastSummary;
    if (s && s.roundId === rs.roundId) {
      s.accepted = accepted; s.bytesUp = bytes.byteLength; s.bytesDown = bytesDown;
      const ev = (m?: EvalMetrics) => (m ? `loss ${m.loss.toFixed(4)} acc ${m.accuracy.toFixed(3)}` : '–');
      log.info(`${this.#clientId}: round ${rs.round} rank ${rs.rank}: train loss ${s.trainLoss.toFixed(4)} (${s.steps} steps${startedAt ? `, ${((Date.now() - startedAt) / 1000).toFixed(1)}s` : ''}); global ${ev(s.global)}; personalized ${ev(s.personal)}; ${bytesDown} B down, ${bytes.byteLength} B up${accepted ? '' : ' (refused)'}`);
      this.options.onRound?.({ ...s });
    }
  }

  /** Strategy- or config-personal: stays on this client, persisted between rounds. */
  #isPersonal(name: string): boolean {
    const p = parseLoraName(name);
    if (!p) return false;
    if (this.#strategy!.name === 'fedsa' && p.factor === 'B') return true;
    return this.#isPersonalGlob(name);
  }

  async #train(rs: RoundStart): Promise<Uint8Array | null> {
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
    // upload: the layout's tensors, contributions for shared ones, zeros where personal
    const layout = makeLayout(rs.layout);
    const weight = Math.max(1, res.examples);
    const contrib: TensorMap = new Map();
    for (const e of layout.entries) {
      const t = res.adapter.tensors.get(e.name);
      if (this.#isPersonal(e.name) || !t) {
        if (!t && !this.#isPersonal(e.name)) throw new ProtocolError('LAYOUT', `trained adapter lacks ${e.name}`);
        contrib.set(e.name, { shape: [...e.shape], data: new Float32Array(e.size) });
      } else {
        contrib.set(e.name, strategy.contribution(e.name, t, weight, rs.maxRank));
      }
    }
    const vector = flatten(contrib, layout);
    const metrics: Update['metrics'] = { trainLoss: Math.min(1e6, Math.max(0, finiteOr(res.trainLoss, 0))), steps: res.steps, trainMs: trainMs };
    if (global) metrics.global = cleanEval(global);
    if (personalMetrics) metrics.personal = cleanEval(personalMetrics);
    const update: Update = { roundId: rs.roundId, rank: rs.rank, weight, vector, metrics };
    const bytes = encode(update);
    this.#lastSummary = { round: rs.round, roundId: rs.roundId, rank: rs.rank, trainLoss: res.trainLoss, steps: res.steps, global, personal: personalMetrics, bytesUp: bytes.byteLength, bytesDown: 0, accepted: false };
    o.onUpload?.(bytes, rs.round);
    return bytes;
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
