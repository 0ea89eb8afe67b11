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

  // one session, one raw hostile socket and two honest clients; each `it` is one stage of it, in order
  describe('gets an error ack for every malformed, oversized, wrong-shape, NaN, stale and duplicate message while honest clients finish', () => {
    let coord: Coordinator;
    let url: string;
    let evil: Socket;
    const starts: RoundStart[] = [];
    let coordKey: Uint8Array = new Uint8Array(32);
    let boxKey: Uint8Array;
    let modelId: string;
    let runs: Promise<{ completedRounds: number; roundsTrained: number }>[] = [];
    const codes: string[] = [];
    let sr: Resources;
    let sdir: string;
    const expectCode = async (code: string, ev: string, ...args: unknown[]) => {
      const reply = await ask(evil, ev, ...args);
      expect(reply.ok, `${ev} → ${JSON.stringify(reply)}`).to.equal(false);
      expect(reply.code, `${ev}: ${reply.message}`).to.equal(code);
      codes.push(code);
    };
    const up = (rs: RoundStart, o: Record<string, unknown>) => {
      const n = rs.layout.reduce((acc, e) => acc + e.shape.reduce((a, b) => a * b, 1), 0);
      const body = { roundId: rs.roundId, rank: rs.rank, weight: 5, vector: new Float32Array(n), metrics: { trainLoss: 1, steps: 1, trainMs: 1 }, ...o };
      return sealForCoordinator(encode(body), { roundId: body.roundId as string, round: rs.round, sender: 'evil', kind: 'update' }, boxKey);
    };
    const sizeOf = (rs: RoundStart) => rs.layout.reduce((acc, e) => acc + e.shape.reduce((a, b) => a * b, 1), 0);

    before(async () => {
      sdir = await mkdtemp(join(tmpdir(), 'fedlora-hostile-session-'));
      sr = new Resources();
      coord = sr.coordinator(new Coordinator({ allowAnyClient: true, insecureAggregation: true, modelDir: FIXTURE, stateDir: join(sdir, 'coord'), rounds: 2, clientsPerRound: 3, minClients: 2, maxRank: 4, localSteps: 1, joinWaitMs: 60_000, roundTimeoutMs: 2500 }));
      url = await coord.serve(0);
      evil = sr.socket(io(url, { auth: { protocolVersion: PROTOCOL_VERSION }, transports: ['websocket'], reconnection: false }));
      await within('connect', new Promise<void>((res) => evil.on('connect', () => res())), 5000);
      evil.on('round:start', (p: unknown, ack: (x: Uint8Array) => void) => { starts.push(parseRoundStart(openEnvelope(SIGNED_DOMAINS.roundStart, p, coordKey))); ack(encode({ ok: true })); });
    });
    after(async () => { await sr.closeAll(); await rm(sdir, { recursive: true, force: true }); });

    it('before the join: NO_HELLO, bad encodings, oversize, bad fields, unknown events, a hello without proof', async () => {
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
    });

    it('after the join: a second hello, chunk requests out of bounds or for other files/models, an update outside any round', async () => {
      const joined = await rawJoin(evil, generateIdentity(), 'evil');
      const hello = joined.hello;
      expect(hello.ok, JSON.stringify(hello)).to.equal(true);
      coordKey = joined.challenge.challenge.coordinator;
      boxKey = joined.boxKey;
      modelId = hello.modelId as string;
      await expectCode('ALREADY_HELLO', 'hello', encode({ protocolVersion: PROTOCOL_VERSION, clientId: 'evil', capabilities: { maxRank: 4, backend: 'cpu', examples: 5 }, personal: [] }));
      await expectCode('BAD_MESSAGE', 'model:chunk', encode({ modelId, file: '../state.json', offset: 0, length: 10 }));
      await expectCode('UNKNOWN_FILE', 'model:chunk', encode({ modelId, file: 'secrets.txt', offset: 0, length: 10 }));
      await expectCode('MODEL_MISMATCH', 'model:chunk', encode({ modelId: 'b'.repeat(64), file: 'config.json', offset: 0, length: 10 }));
      await expectCode('TOO_LARGE', 'model:chunk', encode({ modelId, file: 'config.json', offset: 0, length: 4 << 20 }));
      await expectCode('BAD_RANGE', 'model:chunk', encode({ modelId, file: 'config.json', offset: 1 << 30, length: 10 }));
      await expectCode('STALE_ROUND', 'round:update', sealForCoordinator(encode({ roundId: 'x:1:1', rank: 4, weight: 1, vector: new Float32Array(4), metrics: { trainLoss: 1, steps: 1, trainMs: 1 } }), { roundId: 'x:1:1', round: 1, sender: 'evil', kind: 'update' }, boxKey));
      const ready = await ask(evil, 'ready', encode({ modelId, examples: 5 }));
      expect(ready.ok).to.equal(true);
    });

    it('in round 1: tampered, unsealed, misaddressed, wrong-shape, non-finite, stale and beyond-rank uploads are refused; one is accepted, its duplicate refused', async () => {
      // two honest clients; the hostile one is the third participant of round 1
      const trainers = await Promise.all([0.1, 0.3].map((t) => pullTrainer(t)));
      // honest training takes a moment, so the round is still open while the hostile client misbehaves
      const slow = trainers.map((t) => ({ ...t, train: async (...a: Parameters<typeof t.train>) => { await new Promise((res) => setTimeout(res, 600)); return t.train(...a); } }));
      const honest = [0, 1].map((i) => sr.client(new Client({ insecureAggregation: true, coordinatorUrl: url, dataFile: 'x', stateDir: join(sdir, `c${i}`), maxRank: 4, clientId: `c${i}`, trainerFactory: async () => slow[i]! })));
      runs = honest.map((c) => c.run());
      await waitFor('round 1 start at the hostile client', () => starts.length > 0, 15_000);
      const rs = starts[0]!;
      const n = sizeOf(rs);
      // sealed payloads: a flipped byte, a plaintext update, one sealed for another sender or kind
      const flipped = decode(up(rs, {})) as { roundId: string; sealed: { nonce: Uint8Array; box: Uint8Array; ephemeral: Uint8Array } };
      flipped.sealed.box[40]! ^= 1;
      await expectCode('CRYPTO_SEAL_TAMPERED', 'round:update', encode(flipped));
      await expectCode('BAD_MESSAGE', 'round:update', encode({ roundId: rs.roundId, rank: rs.rank, weight: 5, vector: new Float32Array(n), metrics: { trainLoss: 1, steps: 1, trainMs: 1 } }));
      await expectCode('CRYPTO_SEAL_CONTEXT', 'round:update', sealForCoordinator(encode({}), { roundId: rs.roundId, round: rs.round, sender: 'c0', kind: 'update' }, boxKey));
      await expectCode('CRYPTO_SEAL_CONTEXT', 'round:update', sealForCoordinator(encode({}), { roundId: rs.roundId, round: rs.round, sender: 'evil', kind: 'secagg/masked' }, boxKey));
      await expectCode('BAD_SHAPE', 'round:update', up(rs, { vector: new Float32Array(n - 1) }));
      await expectCode('BAD_SHAPE', 'round:update', up(rs, { rank: 1 }));
      const nan = new Float32Array(n); nan[7] = NaN;
      await expectCode('NON_FINITE', 'round:update', up(rs, { vector: nan }));
      const inf = new Float32Array(n); inf[n - 1] = -Infinity;
      await expectCode('NON_FINITE', 'round:update', up(rs, { vector: inf }));
      await expectCode('BAD_MESSAGE', 'round:update', up(rs, { vector: Array.from({ length: 8 }, () => 0) }));
      await expectCode('BAD_MESSAGE', 'round:update', up(rs, { vector: new Float64Array(n) }));
      await expectCode('BAD_MESSAGE', 'round:update', up(rs, { weight: 0 })); // the upload's weight only normalises it (the round weight is fixed at round start) and must be positive
      await expectCode('NON_FINITE', 'round:update', up(rs, { metrics: { trainLoss: NaN, steps: 1, trainMs: 1 } }));
      await expectCode('STALE_ROUND', 'round:update', up(rs, { roundId: `${rs.roundId.split(':')[0]}:0:0` }));
      expect(rs.rank).to.equal(2);
      const slots = elementSlots(makeLayout(rs.layout));
      const beyond = new Float32Array(n); beyond[slots.indexOf(3)] = 0.5; // rank slot 3 of a rank-2 client
      await expectCode('BAD_SHAPE', 'round:update', up(rs, { vector: beyond }));
      const ok = await ask(evil, 'round:update', up(rs, {}));
      expect(ok.ok).to.equal(true);
      await expectCode('DUPLICATE', 'round:update', up(rs, {}));
    });

    it('in round 2: a fresh round-1 upload is stale, and the accepted one replayed under the new round id fails its seal context', async () => {
      // the hostile client accepts round 2 but never uploads; the deadline moves on without it
      await waitFor('round 2 start at the hostile client', () => starts.length > 1, 15_000);
      const rs = starts[0]!, rs2 = starts[1]!;
      await expectCode('STALE_ROUND', 'round:update', up(rs, {}));
      const replay = decode(up(rs, {})) as Record<string, unknown>;
      await expectCode('CRYPTO_SEAL_CONTEXT', 'round:update', encode({ ...replay, roundId: rs2.roundId }));
    });

    it('the honest clients finish both rounds; the silent participant times out of round 2', async () => {
      await coord.done;
      const results = await Promise.all(runs);
      expect(results.map((x) => x.completedRounds)).to.deep.equal([2, 2]);
      const h = coord.history;
      expect(h.map((x) => [x.round, x.status, x.contributors])).to.deep.equal([[1, 'completed', 3], [2, 'completed', 2]]);
      expect(h[1]!.participants.find((p) => p.clientId === 'evil')!.status).to.equal('timeout');
    });

    it('/metrics counts the refusals by code', async () => {
      const metrics = await (await fetch(`${url}/metrics`)).text();
      expect(metrics).to.match(/fedlora_protocol_errors_total\{code="NON_FINITE"\} 3/);
      expect(metrics).to.match(/fedlora_protocol_errors_total\{code="CRYPTO_SEAL_CONTEXT"\} 3/);
      expect(codes.length).to.be.greaterThan(20);
    });
  });
});
