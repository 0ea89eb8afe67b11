/**
 * Message shapes and their runtime guards. Inbound payloads are decoded to `unknown` and pass
 * through a `parse*` function before anything uses them; shape checks against the round's
 * announced layout happen in `parseUpdate`.
 */
import { parseDpInfo, type DpRoundInfo } from '../privacy/dp.js';
import { ProtocolError } from '../errors.js';
import { assertFinite, describe, tensorMapFromWire, type WireTensor } from '../codec/index.js';
import type { TensorMap } from '../tensor.js';
import { strategyNames } from '../aggregation/registry.js';
import type { StrategyName } from '../aggregation/strategy.js';
import { arr, bad, bool, int, num, obj, oneOf, opt, str } from './guard.js';

/** Any name in the aggregation registry: peers must have registered the same strategies. */
export type WireStrategy = StrategyName;

/** Read at parse time (not load time) so strategies registered after startup are accepted too. */
function strategyField(v: unknown, path: string): WireStrategy {
  return oneOf(v, path, strategyNames());
}

export const ID_RE = /^[A-Za-z0-9._:@-]{1,128}$/;
export const HEX64 = /^[0-9a-f]{64}$/;
export const FILE_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export const LIMITS = {
  maxRank: 1024,
  maxExamples: 1e9,
  maxPersonalGlobs: 64,
  /** Per glob; the matcher is O(name · glob), so this caps the coordinator's per-tensor cost. */
  maxPersonalGlobLength: 256,
  maxChunkBytes: 4 * 1024 * 1024,
  maxFiles: 64,
  maxTensors: 4096,
  maxAdapterElements: 256 * 1024 * 1024,
};

export interface Capabilities { maxRank: number; backend: string; examples: number; gpu: boolean; memoryMb?: number }

export interface Hello {
  protocolVersion: number;
  clientId: string;
  capabilities: Capabilities;
  /** Globs over PEFT names of tensors this client keeps (they are public, their values never leave). */
  personal: string[];
  /** Join proof over the challenge from `auth:challenge`, bound to this connection. Required. */
  proof?: { nonce: Uint8Array; clientKey: Uint8Array; signature: Uint8Array };
}

export interface ModelFile { name: string; size: number; sha256: string }

export interface HelloReply {
  protocolVersion: number;
  sessionId: string;
  modelId: string;
  files: ModelFile[];
  chunkSize: number;
  strategy: WireStrategy;
  maxRank: number;
  rounds: number;
  completedRounds: number;
}

export interface ChunkRequest { modelId: string; file: string; offset: number; length: number }
export interface Ready { modelId: string; /** Training examples the client holds (caps its upload weight); 0 if unknown. */ examples: number }

export interface LayoutEntry { name: string; shape: number[] }

export interface TrainConfig { steps: number; epochs: number; lr: number; batchSize: number; seed: number }

export interface WireLoraConfig {
  r: number; loraAlpha: number; targetModules: string[]; fanInFanOut: boolean; useRslora: boolean; taskType: string;
  /** DoRA (PEFT use_dora): the global carries lora_magnitude_vector tensors. Sent only when true. */
  useDora?: boolean;
}

export interface RoundStart {
  roundId: string;
  round: number;
  rank: number;
  maxRank: number;
  strategy: WireStrategy;
  config: WireLoraConfig;
  /** Global adapter truncated to `rank`. */
  global: WireTensor[];
  /** The upload layout: shared tensors at `maxRank`, sorted by name; the upload is their concatenation. */
  layout: LayoutEntry[];
  train: TrainConfig;
  /** Milliseconds since the epoch after which the coordinator stops collecting. */
  deadline: number;
  /** Base model the round trains (signed with the round start). */
  modelId: string;
  /** SHA-256 (hex) of the global adapter at maxRank this round starts from. */
  globalHash: string;
  /** Everyone sampled for the round, with the public rank and weight the coordinator divides by. */
  participants: RoundParticipant[];
  /** Present when the round uses secure aggregation. */
  secure?: SecureRoundInfo;
  /** Present when the run has client-level differential privacy (docs/PRIVACY.md). */
  dp?: DpRoundInfo;
}

export interface RoundParticipant { id: string; key: Uint8Array; rank: number; weight: number }

export interface SecureRoundInfo {
  /** SecAgg neighbourhood size, threshold, nonce and model hash (the rest of SecAggParams is derived). */
  k: number;
  t: number;
  nonce: Uint8Array;
  modelHash: string;
  paramsSignature: Uint8Array;
  /** Public fixed-point parameters: every client encodes weight·clip(x) with them. */
  quant: { clip: number; fracBits: number; maxTotalWeight: number; maxClients: number };
}

export interface EvalReport { loss: number; accuracy: number; f1?: number; examples: number }

export interface UpdateMetrics {
  trainLoss: number;
  steps: number;
  trainMs: number;
  global?: EvalReport;
  personal?: EvalReport;
}

export interface Update {
  roundId: string;
  rank: number;
  /** Weight the contribution was scaled by (the client's training example count). */
  weight: number;
  /** Σ over shared tensors of weight · zero-padded tensor, flattened in layout order. */
  vector: Float32Array;
  metrics: UpdateMetrics;
}

export interface RoundEnd { roundId: string; round: number; status: 'completed' | 'failed'; contributors: number }
export interface SessionDone { completedRounds: number }

// ---------- guards ----------

export function parseHello(v: unknown): Hello {
  const o = obj(v, 'hello');
  const protocolVersion = int(o.protocolVersion, 'hello.protocolVersion', 0, 1e6);
  const c = obj(o.capabilities, 'hello.capabilities');
  const personal = arr(o.personal ?? [], 'hello.personal', LIMITS.maxPersonalGlobs).map((g, i) => str(g, `hello.personal[${i}]`, { min: 1, max: LIMITS.maxPersonalGlobLength }));
  return {
    protocolVersion,
    clientId: str(o.clientId, 'hello.clientId', { re: ID_RE }),
    capabilities: {
      maxRank: int(c.maxRank, 'hello.capabilities.maxRank', 1, LIMITS.maxRank),
      backend: str(c.backend, 'hello.capabilities.backend', { max: 32 }),
      examples: int(c.examples, 'hello.capabilities.examples', 0, LIMITS.maxExamples),
      gpu: opt(c.gpu, (x) => bool(x, 'hello.capabilities.gpu')) ?? false,
      ...(c.memoryMb !== undefined ? { memoryMb: int(c.memoryMb, 'hello.capabilities.memoryMb', 0, 1e9) } : {}),
    },
    personal,
    ...(o.proof !== undefined && o.proof !== null ? { proof: parseProof(o.proof) } : {}),
  };
}

function parseProof(v: unknown): NonNullable<Hello['proof']> {
  const p = obj(v, 'hello.proof');
  return { nonce: bytes(p.nonce, 'proof.nonce', 32), clientKey: bytes(p.clientKey, 'proof.clientKey', 32), signature: bytes(p.signature, 'proof.signature', 64) };
}

export function parseHelloReply(v: unknown): HelloReply {
  const o = obj(v, 'helloReply');
  return {
    protocolVersion: int(o.protocolVersion, 'helloReply.protocolVersion', 0, 1e6),
    sessionId: str(o.sessionId, 'helloReply.sessionId', { re: ID_RE }),
    modelId: str(o.modelId, 'helloReply.modelId', { re: HEX64 }),
    files: arr(o.files, 'helloReply.files', LIMITS.maxFiles).map((f, i) => {
      const x = obj(f, `helloReply.files[${i}]`);
      return { name: str(x.name, `files[${i}].name`, { re: FILE_RE }), size: int(x.size, `files[${i}].size`, 0, 2 ** 50), sha256: str(x.sha256, `files[${i}].sha256`, { re: HEX64 }) };
    }),
    chunkSize: int(o.chunkSize, 'helloReply.chunkSize', 1, LIMITS.maxChunkBytes),
    strategy: strategyField(o.strategy, 'helloReply.strategy'),
    maxRank: int(o.maxRank, 'helloReply.maxRank', 1, LIMITS.maxRank),
    rounds: int(o.rounds, 'helloReply.rounds', 0, 1e6),
    completedRounds: int(o.completedRounds, 'helloReply.completedRounds', 0, 1e6),
  };
}

export function parseChunkRequest(v: unknown): ChunkRequest {
  const o = obj(v, 'chunk');
  return {
    modelId: str(o.modelId, 'chunk.modelId', { re: HEX64 }),
    file: str(o.file, 'chunk.file', { re: FILE_RE }),
    offset: int(o.offset, 'chunk.offset', 0, 2 ** 50),
    length: int(o.length, 'chunk.length', 1, LIMITS.maxChunkBytes),
  };
}

export function parseChunkReply(v: unknown, expectMax: number): Uint8Array {
  const o = obj(v, 'chunkReply');
  const d = o.data;
  if (!(d instanceof Uint8Array)) bad('chunkReply.data', `expected bytes, got ${describe(d)}`);
  if (d.byteLength > expectMax) bad('chunkReply.data', `${d.byteLength} bytes, asked for at most ${expectMax}`, 'TOO_LARGE');
  return d;
}

export function parseReady(v: unknown): Ready {
  const o = obj(v, 'ready');
  return { modelId: str(o.modelId, 'ready.modelId', { re: HEX64 }), examples: o.examples === undefined ? 0 : int(o.examples, 'ready.examples', 0, LIMITS.maxExamples) };
}

function parseEval(v: unknown, path: string): EvalReport {
  const o = obj(v, path);
  return {
    loss: num(o.loss, `${path}.loss`, 0, 1e6),
    accuracy: num(o.accuracy, `${path}.accuracy`, 0, 1),
    ...(o.f1 !== undefined && o.f1 !== null ? { f1: num(o.f1, `${path}.f1`, 0, 1) } : {}),
    examples: int(o.examples, `${path}.examples`, 0, LIMITS.maxExamples),
  };
}

function parseLayoutEntries(v: unknown, path: string): LayoutEntry[] {
  const seen = new Set<string>();
  return arr(v, path, LIMITS.maxTensors).map((e, i) => {
    const x = obj(e, `${path}[${i}]`);
    const name = str(x.name, `${path}[${i}].name`, { max: 512 });
    if (seen.has(name)) bad(path, `duplicate entry ${name}`);
    seen.add(name);
    const shape = arr(x.shape, `${path}[${i}].shape`, 4).map((d, j) => int(d, `${path}[${i}].shape[${j}]`, 0, 1 << 30));
    return { name, shape };
  });
}

export function layoutLength(layout: readonly LayoutEntry[]): number {
  let n = 0;
  for (const e of layout) n += e.shape.reduce((a, b) => a * b, 1);
  return n;
}

export function parseRoundStart(v: unknown): RoundStart {
  const o = obj(v, 'roundStart');
  const c = obj(o.config, 'roundStart.config');
  const t = obj(o.train, 'roundStart.train');
  const maxRank = int(o.maxRank, 'roundStart.maxRank', 1, LIMITS.maxRank);
  const rank = int(o.rank, 'roundStart.rank', 1, maxRank);
  const global = tensorMapFromWire(o.global, { maxTensors: LIMITS.maxTensors, maxElements: LIMITS.maxAdapterElements }, 'roundStart.global');
  const layout = parseLayoutEntries(o.layout, 'roundStart.layout');
  if (layoutLength(layout) > LIMITS.maxAdapterElements) bad('roundStart.layout', 'too many elements', 'TOO_LARGE');
  return {
    roundId: str(o.roundId, 'roundStart.roundId', { re: ID_RE }),
    round: int(o.round, 'roundStart.round', 1, 1e6),
    rank,
    maxRank,
    strategy: strategyField(o.strategy, 'roundStart.strategy'),
    config: {
      r: int(c.r, 'config.r', 1, LIMITS.maxRank),
      loraAlpha: num(c.loraAlpha, 'config.loraAlpha', 0, 1e6),
      targetModules: arr(c.targetModules, 'config.targetModules', 256).map((s, i) => str(s, `config.targetModules[${i}]`, { max: 256 })),
      fanInFanOut: bool(c.fanInFanOut, 'config.fanInFanOut'),
      useRslora: bool(c.useRslora, 'config.useRslora'),
      taskType: str(c.taskType, 'config.taskType', { max: 64 }),
      ...(c.useDora !== undefined ? { useDora: bool(c.useDora, 'config.useDora') } : {}),
    },
    global: [...global].map(([name, x]) => ({ name, shape: x.shape, data: x.data })),
    layout,
    train: {
      steps: int(t.steps, 'train.steps', 0, 1e7),
      epochs: num(t.epochs, 'train.epochs', 0, 1e4),
      lr: num(t.lr, 'train.lr', 0, 10),
      batchSize: int(t.batchSize, 'train.batchSize', 1, 1e5),
      seed: int(t.seed, 'train.seed', 0, 2 ** 32),
    },
    deadline: num(o.deadline, 'roundStart.deadline', 0, 1e15),
    modelId: str(o.modelId, 'roundStart.modelId', { re: HEX64 }),
    globalHash: str(o.globalHash, 'roundStart.globalHash', { re: HEX64 }),
    participants: parseParticipants(o.participants),
    ...(o.secure !== undefined && o.secure !== null ? { secure: parseSecureInfo(o.secure) } : {}),
    ...(o.dp !== undefined && o.dp !== null ? { dp: parseDpInfo(o.dp) } : {}),
  };
}

function bytes(v: unknown, path: string, len?: number): Uint8Array {
  if (!(v instanceof Uint8Array) || (len !== undefined && v.length !== len)) bad(path, `expected ${len ?? ''} bytes, got ${describe(v)}`);
  return v;
}

function parseParticipants(v: unknown): RoundParticipant[] {
  const ids = new Set<string>();
  return arr(v, 'roundStart.participants', 100_000).map((p, i) => {
    const x = obj(p, `participants[${i}]`);
    const id = str(x.id, `participants[${i}].id`, { re: ID_RE });
    if (ids.has(id)) bad('roundStart.participants', `duplicate participant ${id}`);
    ids.add(id);
    return { id, key: bytes(x.key, `participants[${i}].key`, 32), rank: int(x.rank, `participants[${i}].rank`, 1, LIMITS.maxRank), weight: num(x.weight, `participants[${i}].weight`, 0, LIMITS.maxExamples) };
  });
}

function parseSecureInfo(v: unknown): SecureRoundInfo {
  const o = obj(v, 'roundStart.secure');
  const q = obj(o.quant, 'secure.quant');
  return {
    k: int(o.k, 'secure.k', 1, 100_000),
    t: int(o.t, 'secure.t', 2, 255),
    nonce: bytes(o.nonce, 'secure.nonce', 32),
    modelHash: str(o.modelHash, 'secure.modelHash', { min: 1, max: 256 }),
    paramsSignature: bytes(o.paramsSignature, 'secure.paramsSignature', 64),
    quant: {
      clip: num(q.clip, 'quant.clip', 0, 1e9),
      fracBits: int(q.fracBits, 'quant.fracBits', 0, 40),
      maxTotalWeight: num(q.maxTotalWeight, 'quant.maxTotalWeight', 0, 1e15),
      maxClients: int(q.maxClients, 'quant.maxClients', 1, 1e6),
    },
  };
}

export function roundStartTensors(rs: RoundStart): TensorMap {
  return new Map(rs.global.map((t) => [t.name, { shape: t.shape, data: t.data }]));
}

/** What the coordinator knows about the round when an upload arrives. */
export interface UpdateExpectation {
  roundId: string;
  rank: number;
  length: number;
  maxWeight: number;
}

/** Validates an upload against the round (id, assigned rank, layout length) and checks every value is finite. */
export function parseUpdate(v: unknown, expect: UpdateExpectation | null): Update {
  const o = obj(v, 'update');
  const roundId = str(o.roundId, 'update.roundId', { re: ID_RE });
  if (!expect || roundId !== expect.roundId) throw new ProtocolError('STALE_ROUND', `update for round ${roundId} is not for the current round${expect ? ` ${expect.roundId}` : ' (none open for you)'}`);
  const rank = int(o.rank, 'update.rank', 1, LIMITS.maxRank);
  if (rank !== expect.rank) bad('update.rank', `${rank} is not the assigned rank ${expect.rank}`, 'BAD_SHAPE');
  const weight = num(o.weight, 'update.weight', 0, expect.maxWeight);
  if (weight <= 0) bad('update.weight', 'must be positive');
  const vector = o.vector;
  if (!(vector instanceof Float32Array)) bad('update.vector', `expected a Float32Array, got ${describe(vector)}`);
  if (vector.length !== expect.length) bad('update.vector', `length ${vector.length} does not match the round layout (${expect.length})`, 'BAD_SHAPE');
  assertFinite(vector, 'update.vector');
  return { roundId, rank, weight, vector, metrics: parseUpdateMetrics(o.metrics) };
}

export function parseUpdateMetrics(v: unknown): UpdateMetrics {
  const m = obj(v, 'update.metrics');
  const metrics: UpdateMetrics = {
    trainLoss: num(m.trainLoss, 'metrics.trainLoss', 0, 1e6),
    steps: int(m.steps, 'metrics.steps', 0, 1e9),
    trainMs: num(m.trainMs, 'metrics.trainMs', 0, 1e10),
  };
  if (m.global !== undefined && m.global !== null) metrics.global = parseEval(m.global, 'metrics.global');
  if (m.personal !== undefined && m.personal !== null) metrics.personal = parseEval(m.personal, 'metrics.personal');
  return metrics;
}

export function parseRoundEnd(v: unknown): RoundEnd {
  const o = obj(v, 'roundEnd');
  return {
    roundId: str(o.roundId, 'roundEnd.roundId', { re: ID_RE }),
    round: int(o.round, 'roundEnd.round', 0, 1e6),
    status: oneOf(o.status, 'roundEnd.status', ['completed', 'failed'] as const),
    contributors: int(o.contributors, 'roundEnd.contributors', 0, 1e6),
  };
}

export function parseSessionDone(v: unknown): SessionDone {
  const o = obj(v, 'sessionDone');
  return { completedRounds: int(o.completedRounds, 'sessionDone.completedRounds', 0, 1e6) };
}
