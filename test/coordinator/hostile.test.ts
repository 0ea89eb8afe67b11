import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { io, type Socket } from 'socket.io-client';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { decode, encode } from '../../shared/codec/index.js';
import { PROTOCOL_VERSION, SIGNED_DOMAINS, openEnvelope, parseRoundStart, sealForCoordinator, type RoundStart } from '../../shared/protocol/index.js';
import { generateIdentity } from '../../shared/crypto/index.js';
import { setLogLevel } from '../../shared/log.js';
import { elementSlots, makeLayout } from '../../shared/aggregation/index.js';
import { FIXTURE, ask, pullTrainer, rawJoin } from './helpers.js';
import { Resources, waitFor, within } from './hostile-client.js';

describe('hostile client', function () {
  this.timeout(30_000);
  let dir: string;
  let r: Resources;
  before(() => setLogLevel('error'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-hostile-')); r = new Resources(); });
  afterEach(async () => { await r.closeAll(); await rm(dir, { recursive: true, force: true }); });

  it('a wrong protocol version is refused in the handshake with a clear reason', async () => {
    const coord = r.coordinator(new Coordinator({ allowAnyClient: true, insecureAggregation: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 1, clientsPerRound: 2, minClients: 2, maxRank: 4, localSteps: 1 }));
    const url = await coord.serve(0);
    const old = r.socket(io(url, { auth: { protocolVersion: PROTOCOL_VERSION + 1 }, transports: ['websocket'], reconnection: false }));
    const refusal = await within('connect_error', new Promise<Error>((res) => old.on('connect_error', res)), 5000);
    expect(refusal.message).to.match(/VERSION_MISMATCH/);
  });

  it('gets an error ack for every malformed, oversized, wrong-shape, NaN, stale and duplicate message (before the join, after it, and in rounds) while honest clients finish', async () => {
    const coord = r.coordinator(new Coordinator({ allowAnyClient: true, insecureAggregation: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 2, clientsPerRound: 3, minClients: 2, maxRank: 4, localSteps: 1, joinWaitMs: 60_000, roundTimeoutMs: 2500 }));
    const url = await coord.serve(0);

    const evil = r.socket(io(url, { auth: { protocolVersion: PROTOCOL_VERSION }, transports: ['websocket'], reconnection: false }));
    await within('connect', new Promise<void>((res) => evil.on('connect', () => res())), 5000);
    const starts: RoundStart[] = [];
    let coordKey: Uint8Array = new Uint8Array(32);
    evil.on('round:start', (p: unknown, ack: (r: Uint8Array) => void) => { starts.push(parseRoundStart(openEnvelope(SIGNED_DOMAINS.roundStart, p, coordKey))); ack(encode({ ok: true })); });

    const codes: string[] = [];
    const expectCode = async (code: string, ev: string, ...args: unknown[]) => {
      const r = await ask(evil, ev, ...args);
      expect(r.ok, `${ev} → ${JSON.stringify(r)}`).to.equal(false);
      expect(r.code, `${ev}: ${r.message}`).to.equal(code);
      codes.push(code);
    };
    await expectCode('NO_HELLO', 'model:chunk', encode({ modelId: 'a'.repeat(64), file: 'config.json', offset: 0, length: 10 }));
    await expectCode('BAD_ENCODING', 'hello', 'not msgpack');
    await expectCode('BAD_ENCODING', 'hello', { protocolVersion: PROTOCOL_VERSION, clientId: 'evil' });
    await expectCode('BAD_ENCODING', 'hello', Buffer.from([0xc1, 0xc1]));
    await expectCode('TOO_LARGE', 'hello', new Uint8Array(coord.maxMessageBytes + 100)); // over the decode cap, under the transport cap
    await expectCode('BAD_MESSAGE', 'hello', encode({ protocolVersion: PROTOCOL_VERSION, clientId: '../../etc', capabilities: { maxRank: 4, backend: 'x', examples: 1 } }));
    await expectCode('BAD_MESSAGE', 'hello', encode({ protocolVersion: PROTOCOL_VERSION, clientId: 'evil', capabilities: { maxRank: NaN, backend: 'x', examples: 1 } }));
    await expectCode('BAD_MESSAGE', 'hello', encode('x'), encode('y'));
    await expectCode('UNKNOWN_EVENT', 'admin:shutdown', encode({}));
    await expectCode('AUTH_REQUIRED', 'hello', encode({ protocolVersion: PROTOCOL_VERSION, clientId: 'evil', capabilities: { maxRank: 2, backend: 'cpu', examples: 5 }, personal: [] }));
    const joined = await rawJoin(evil, generateIdentity(), 'evil');
    const hello = joined.hello;
    expect(hello.ok, JSON.stringify(hello)).to.equal(true);
    coordKey = joined.challenge.challenge.coordinator;
    const boxKey = joined.boxKey;
    const modelId = hello.modelId as string;
    await expectCode('ALREADY_HELLO', 'hello', encode({ protocolVersion: PROTOCOL_VERSION, clientId: 'evil', capabilities: { maxRank: 4, backend: 'cpu', examples: 5 }, personal: [] }));
    await expectCode('BAD_MESSAGE', 'model:chunk', encode({ modelId, file: '../state.json', offset: 0, length: 10 }));
    await expectCode('UNKNOWN_FILE', 'model:chunk', encode({ modelId, file: 'secrets.txt', offset: 0, length: 10 }));
    await expectCode('MODEL_MISMATCH', 'model:chunk', encode({ modelId: 'b'.repeat(64), file: 'config.json', offset: 0, length: 10 }));
    await expectCode('TOO_LARGE', 'model:chunk', encode({ modelId, file: 'config.json', offset: 0, length: 4 << 20 }));
    await expectCode('BAD_RANGE', 'model:chunk', encode({ modelId, file: 'config.json', offset: 1 << 30, length: 10 }));
    await expectCode('STALE_ROUND', 'round:update', sealForCoordinator(encode({ roundId: 'x:1:1', rank: 4, weight: 1, vector: new Float32Array(4), metrics: { trainLoss: 1, steps: 1, trainMs: 1 } }), { roundId: 'x:1:1', round: 1, sender: 'evil', kind: 'update' }, boxKey));
    const ready = await ask(evil, 'ready', encode({ modelId, examples: 5 }));
    expect(ready.ok).to.equal(true);

    // two honest clients; the hostile one is the third participant of round 1
    const trainers = await Promise.all([0.1, 0.3].map((t) => pullTrainer(t)));
    // honest training takes a moment, so the round is still open while the hostile client misbehaves
    const slow = trainers.map((t) => ({ ...t, train: async (...a: Parameters<typeof t.train>) => { await new Promise((r) => setTimeout(r, 600)); return t.train(...a); } }));
    const honest = [0, 1].map((i) => r.client(new Client({ insecureAggregation: true, coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `c${i}`), maxRank: 4, clientId: `c${i}`, trainerFactory: async () => slow[i]! })));
    const runs = honest.map((c) => c.run());
    await waitFor('round 1 start at the hostile client', () => starts.length > 0, 15_000);
    const rs = starts[0]!;
    const n = rs.layout.reduce((s, e) => s + e.shape.reduce((a, b) => a * b, 1), 0);
    const up = (o: Record<string, unknown>) => {
      const body = { roundId: rs.roundId, rank: rs.rank, weight: 5, vector: new Float32Array(n), metrics: { trainLoss: 1, steps: 1, trainMs: 1 }, ...o };
      return sealForCoordinator(encode(body), { roundId: body.roundId as string, round: rs.round, sender: 'evil', kind: 'update' }, boxKey);
    };
    // sealed payloads: a flipped byte, a plaintext update, one sealed for another sender or kind
    const flipped = decode(up({})) as { roundId: string; sealed: { nonce: Uint8Array; box: Uint8Array; ephemeral: Uint8Array } };
    flipped.sealed.box[40]! ^= 1;
    await expectCode('CRYPTO_SEAL_TAMPERED', 'round:update', encode(flipped));
    await expectCode('BAD_MESSAGE', 'round:update', encode({ roundId: rs.roundId, rank: rs.rank, weight: 5, vector: new Float32Array(n), metrics: { trainLoss: 1, steps: 1, trainMs: 1 } }));
    await expectCode('CRYPTO_SEAL_CONTEXT', 'round:update', sealForCoordinator(encode({}), { roundId: rs.roundId, round: rs.round, sender: 'c0', kind: 'update' }, boxKey));
    await expectCode('CRYPTO_SEAL_CONTEXT', 'round:update', sealForCoordinator(encode({}), { roundId: rs.roundId, round: rs.round, sender: 'evil', kind: 'secagg/masked' }, boxKey));
    await expectCode('BAD_SHAPE', 'round:update', up({ vector: new Float32Array(n - 1) }));
    await expectCode('BAD_SHAPE', 'round:update', up({ rank: 1 }));
    const nan = new Float32Array(n); nan[7] = NaN;
    await expectCode('NON_FINITE', 'round:update', up({ vector: nan }));
    const inf = new Float32Array(n); inf[n - 1] = -Infinity;
    await expectCode('NON_FINITE', 'round:update', up({ vector: inf }));
    await expectCode('BAD_MESSAGE', 'round:update', up({ vector: Array.from({ length: 8 }, () => 0) }));
    await expectCode('BAD_MESSAGE', 'round:update', up({ vector: new Float64Array(n) }));
    await expectCode('BAD_MESSAGE', 'round:update', up({ weight: 0 })); // the upload's weight only normalises it (the round weight is fixed at round start) and must be positive
    await expectCode('NON_FINITE', 'round:update', up({ metrics: { trainLoss: NaN, steps: 1, trainMs: 1 } }));
    await expectCode('STALE_ROUND', 'round:update', up({ roundId: `${rs.roundId.split(':')[0]}:0:0` }));
    expect(rs.rank).to.equal(2);
    const slots = elementSlots(makeLayout(rs.layout));
    const beyond = new Float32Array(n); beyond[slots.indexOf(3)] = 0.5; // rank slot 3 of a rank-2 client
    await expectCode('BAD_SHAPE', 'round:update', up({ vector: beyond }));
    const ok = await ask(evil, 'round:update', up({}));
    expect(ok.ok).to.equal(true);
    await expectCode('DUPLICATE', 'round:update', up({}));

    // round 2: the hostile client accepts the round but never uploads; the deadline moves on without it
    await waitFor('round 2 start at the hostile client', () => starts.length > 1, 15_000);
    await expectCode('STALE_ROUND', 'round:update', up({}));
    // round 1's accepted sealed upload replayed into round 2 under the new round id: its context names round 1
    const replay = decode(up({})) as Record<string, unknown>;
    const rs2 = starts[1]!;
    await expectCode('CRYPTO_SEAL_CONTEXT', 'round:update', encode({ ...replay, roundId: rs2.roundId }));
    await coord.done;
    const results = await Promise.all(runs);
    expect(results.map((r) => r.completedRounds)).to.deep.equal([2, 2]);
    const h = coord.history;
    expect(h.map((r) => [r.round, r.status, r.contributors])).to.deep.equal([[1, 'completed', 3], [2, 'completed', 2]]);
    expect(h[1]!.participants.find((p) => p.clientId === 'evil')!.status).to.equal('timeout');
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).to.match(/fedlora_protocol_errors_total\{code="NON_FINITE"\} 3/);
    expect(metrics).to.match(/fedlora_protocol_errors_total\{code="CRYPTO_SEAL_CONTEXT"\} 3/);
    expect(codes.length).to.be.greaterThan(20);
  });
});
