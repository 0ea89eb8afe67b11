/**
 * A small deterministic LocalTrainer for protocol/coordinator tests: "training" pulls every
 * trainable tensor toward a client-specific target, "evaluation" is the squared distance to it.
 * It is not under test here; the coordinator, client and wire are. Real training runs in test/e2e.
 */
import type { LocalTrainer, EvalMetrics } from '../../client/trainer.js';
import type { LoraAdapter } from '../../shared/lora/adapter.js';
import type { TensorMap } from '../../shared/tensor.js';
import { readModelInfo } from '../../shared/model/model-info.js';

export const FIXTURE = 'test/fixtures/hf/llama-tiny/base';

export async function pullTrainer(target: number, examples = 10): Promise<LocalTrainer & { trained: TensorMap[] }> {
  const info = await readModelInfo(FIXTURE);
  const trained: TensorMap[] = [];
  const dist = (a: LoraAdapter) => {
    let s = 0, n = 0;
    for (const t of a.tensors.values()) for (const x of t.data) { s += (x - target) ** 2; n++; }
    return s / Math.max(1, n);
  };
  return {
    moduleShapes: info.linears,
    trainExamples: examples,
    evalExamples: 4,
    trained,
    async train(start, o) {
      const tensors: TensorMap = new Map();
      for (const [k, t] of start.tensors) {
        const d = new Float32Array(t.data);
        if (o.trainable(k)) for (let i = 0; i < d.length; i++) d[i] = d[i]! + 0.5 * (target - d[i]!);
        tensors.set(k, { shape: [...t.shape], data: d });
      }
      trained.push(tensors);
      const adapter = { config: start.config, tensors };
      return { adapter, trainLoss: dist(adapter), steps: o.steps, examples };
    },
    async evaluate(a): Promise<EvalMetrics> { return { loss: dist(a), accuracy: 0.5, examples: 4 }; },
    dispose() { /* nothing held */ },
  };
}

import type { Socket } from 'socket.io-client';
import { decode, encode } from '../../shared/codec/index.js';
import { PROTOCOL_VERSION, parseAuthChallengeReply, type AuthChallengeReply } from '../../shared/protocol/index.js';
import { proveJoin, verifyCoordinatorBoxKey, type Identity } from '../../shared/crypto/index.js';

export type Reply = { ok: boolean; code?: string; message?: string } & Record<string, unknown>;

export async function ask(s: Socket, ev: string, ...args: unknown[]): Promise<Reply> {
  const raw = await s.timeout(5000).emitWithAck(ev, ...args);
  return decode(raw) as Reply;
}

/** A raw socket.io client's join: challenge → proof bound to this socket → hello. Returns the replies and the box key. */
export async function rawJoin(s: Socket, identity: Identity, clientId: string, examples = 5, maxRank = 2): Promise<{ hello: Reply; challenge: AuthChallengeReply; boxKey: Uint8Array }> {
  const c = await ask(s, 'auth:challenge', encode({}));
  const challenge = parseAuthChallengeReply(c);
  const boxKey = verifyCoordinatorBoxKey(challenge.boxKey, challenge.challenge.coordinator);
  const proof = proveJoin(challenge.challenge, s.id!, identity);
  const hello = await ask(s, 'hello', encode({ protocolVersion: PROTOCOL_VERSION, clientId, capabilities: { maxRank, backend: 'cpu', examples }, personal: [], proof }));
  return { hello, challenge, boxKey };
}

import { getStrategy, makeLayout, unflatten } from '../../shared/aggregation/index.js';
import { quantErrorBound } from '../../shared/crypto/index.js';
import type { ClientObservers, ContributionObservation } from '../../client/index.js';

/** A client's plaintext contribution as its `observe.contribution` sees it (and `--debug-dump-contributions` writes it). */
export type Dump = ContributionObservation;

/** Observers that keep each client's contributions, by client index: `observe: dumps.observer(i)`. */
export function contributionLog(): { observer(i: number): ClientObservers; of(i: number, round?: number): Dump } {
  const seen = new Map<string, Dump>();
  return {
    observer: (i) => ({ contribution: (c) => { seen.set(`${i}/${c.round}`, c); } }),
    of: (i, round = 1) => {
      const d = seen.get(`${i}/${round}`);
      if (!d) throw new Error(`client ${i} contributed nothing in round ${round}`);
      return d;
    },
  };
}

/** The plain aggregate of these contributions through the same strategy, and the bound to compare within. */
export function plainAggregate(dumps: Dump[], previous: LoraAdapter, strategyName: 'rank-aware' | 'fedit', maxRank: number): { adapter: LoraAdapter; tolerance: number } {
  const layout = makeLayout(dumps[0]!.layout);
  const acc = new Float64Array(layout.size);
  for (const d of dumps) for (let i = 0; i < acc.length; i++) acc[i] = acc[i]! + d.contribution[i]!;
  const adapter = getStrategy(strategyName).finalize(unflatten(Float32Array.from(acc), layout), dumps.map((d) => ({ rank: d.rank, weight: d.weight })), previous, maxRank);
  // error of the decoded weighted sum, divided by the smallest weight a slot is averaged over
  const q = dumps[0]!.quant!;
  const minWeight = Math.min(...dumps.map((d) => d.weight));
  return { adapter, tolerance: quantErrorBound(q, dumps.length) / minWeight + 1e-6 };
}

export function maxDiff(a: LoraAdapter, b: LoraAdapter): number {
  let m = 0;
  for (const [k, t] of a.tensors) { const u = b.tensors.get(k)!; for (let i = 0; i < t.data.length; i++) m = Math.max(m, Math.abs(t.data[i]! - u.data[i]!)); }
  return m;
}

