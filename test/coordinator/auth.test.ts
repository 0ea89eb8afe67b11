/**
 * Acceptance 6 over a real socket: unenrolled and revoked keys, bad signatures, proofs for another
 * connection and replayed join proofs are refused, and a refused party receives nothing about the
 * session or its rounds, while enrolled clients (real Client, pinned coordinator key) finish a round.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { io, type Socket } from 'socket.io-client';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { encode } from '../../shared/codec/index.js';
import { PROTOCOL_VERSION, parseAuthChallengeReply } from '../../shared/protocol/index.js';
import { formatPublicKey, generateIdentity, proveJoin } from '../../shared/crypto/index.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, ask, pullTrainer, rawJoin } from './helpers.js';

describe('join: enrolled identities only', function () {
  this.timeout(30_000);
  let dir: string;
  const sockets: Socket[] = [];
  before(() => setLogLevel('error'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-auth-')); });
  afterEach(async () => { for (const s of sockets.splice(0)) s.close(); await rm(dir, { recursive: true, force: true }); });

  it('refuses to start without an allowlist unless any client is explicitly allowed', () => {
    expect(() => new Coordinator({ modelDir: FIXTURE, stateDir: join(dir, 'x') })).to.throw(/authorized-clients/);
    expect(() => new Coordinator({ modelDir: FIXTURE, stateDir: join(dir, 'x'), allowAnyClient: true })).not.to.throw();
  });

  it('refuses unknown, revoked, badly signed, misbound and replayed joins; refused sockets learn nothing; enrolled clients finish', async () => {
    const [alice, bob, probe, mallory, stranger] = [0, 1, 2, 3, 4].map(() => generateIdentity());
    const coord = new Coordinator({
      modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 1, clientsPerRound: 2, minClients: 2, maxRank: 4, localSteps: 1, joinWaitMs: 100,
      authorizedClients: [`${formatPublicKey(alice!.publicKey)} alice`, `${formatPublicKey(bob!.publicKey)} bob`, formatPublicKey(probe!.publicKey), `revoked ${formatPublicKey(mallory!.publicKey)} mallory`],
    });
    const url = await coord.serve(0);
    const connect = async () => {
      const s = io(url, { auth: { protocolVersion: PROTOCOL_VERSION }, transports: ['websocket'], reconnection: false });
      sockets.push(s);
      const events: string[] = [];
      s.onAny((ev: string) => events.push(ev));
      await new Promise<void>((res) => s.on('connect', () => res()));
      const closed = new Promise<void>((res) => s.on('disconnect', () => res()));
      return { s, events, closed };
    };
    const refused: { events: string[] }[] = [];
    const expectRefused = async (r: Awaited<ReturnType<typeof connect>>, reply: Record<string, unknown>, code: string) => {
      expect(reply.ok, JSON.stringify(reply)).to.equal(false);
      expect(reply.code).to.equal(code);
      // the refusal carries the reason and nothing else: no session, model or round
      expect(Object.keys(reply).sort()).to.deep.equal(['code', 'message', 'ok']);
      expect(String(reply.message)).not.to.include(coord.sessionId);
      expect(String(reply.message)).not.to.include(coord.modelId!);
      await r.closed; // and the coordinator hangs up
      refused.push(r);
    };

    // requests before a join are refused
    const pre = await connect();
    for (const ev of ['ready', 'model:chunk', 'round:update', 'secagg:msg']) expect((await ask(pre.s, ev, encode({}))).code, ev).to.equal('NO_HELLO');
    pre.s.close();

    const unknown = await connect();
    await expectRefused(unknown, (await rawJoin(unknown.s, stranger!, 'stranger')).hello, 'CRYPTO_UNKNOWN_KEY');
    const revoked = await connect();
    await expectRefused(revoked, (await rawJoin(revoked.s, mallory!, 'mallory')).hello, 'CRYPTO_REVOKED');

    const hello = (id: string, proof: unknown) => encode({ protocolVersion: PROTOCOL_VERSION, clientId: id, capabilities: { maxRank: 2, backend: 'cpu', examples: 5 }, personal: [], proof });
    const badSig = await connect();
    const c1 = parseAuthChallengeReply(await ask(badSig.s, 'auth:challenge', encode({})));
    const p1 = proveJoin(c1.challenge, badSig.s.id!, alice!);
    p1.signature[5]! ^= 1;
    await expectRefused(badSig, await ask(badSig.s, 'hello', hello('alice', p1)), 'CRYPTO_BAD_SIGNATURE');

    // a proof made for another connection (binding) does not verify on this one
    const misbound = await connect();
    const c2 = parseAuthChallengeReply(await ask(misbound.s, 'auth:challenge', encode({})));
    await expectRefused(misbound, await ask(misbound.s, 'hello', hello('alice', proveJoin(c2.challenge, 'another-socket-id', alice!))), 'CRYPTO_BAD_SIGNATURE');

    // a valid proof, captured and replayed on a new connection
    const good = await connect();
    const joined = await rawJoin(good.s, probe!, 'probe');
    expect(joined.hello.ok).to.equal(true);
    const captured = proveJoin(joined.challenge.challenge, good.s.id!, probe!);
    const replay = await connect();
    await ask(replay.s, 'auth:challenge', encode({}));
    await expectRefused(replay, await ask(replay.s, 'hello', hello('probe', captured)), 'CRYPTO_JOIN_REPLAY');
    // an enrolled key cannot take an id another key joined with
    const thief = await connect();
    await expectRefused(thief, (await rawJoin(thief.s, bob!, 'probe')).hello, 'IDENTITY_MISMATCH');

    // a client pinned to another coordinator key refuses to join; enrolled clients with the right pin finish the round
    const trainers = await Promise.all([0.1, 0.3].map((t) => pullTrainer(t)));
    const wrongPin = new Client({ coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, 'w'), clientId: 'w', maxRank: 4, identity: alice!, coordinatorKey: formatPublicKey(generateIdentity().publicKey), trainerFactory: async () => trainers[0]! });
    let pinErr: unknown;
    await wrongPin.run().catch((e: unknown) => { pinErr = e; });
    expect((pinErr as { code?: string }).code).to.equal('CRYPTO_UNKNOWN_KEY');
    const clients = [alice!, bob!].map((identity, i) => new Client({
      coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `c${i}`), clientId: `c${i}`, maxRank: 4, identity, coordinatorKey: coord.publicKey!, trainerFactory: async () => trainers[i]!,
    }));
    const [done] = await Promise.all([coord.done, ...clients.map((c) => c.run())]);
    expect(done.completedRounds).to.equal(1);
    expect(coord.history[0]!.contributors).to.equal(2);
    await new Promise((r) => setTimeout(r, 100));
    // nothing reached the refused sockets: no round:start, round:end, secagg or session:done
    expect(refused).to.have.length(6);
    for (const r of refused) expect(r.events).to.deep.equal([]);
    expect(good.events).to.include('session:done'); // the joined (but never ready) probe hears only that the session ended
    expect(good.events).not.to.include('round:start');
    await coord.close();
  });
});
