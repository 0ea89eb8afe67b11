/**
 * Acceptance 6 over a real socket: unenrolled and revoked keys, bad signatures, proofs for another
 * connection and replayed join proofs are refused, and a refused party receives nothing about the
 * session or its rounds, while enrolled clients (real Client, pinned coordinator key) finish a round.
 */
import { expect } from 'chai';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { encode } from '../../shared/codec/index.js';
import { PROTOCOL_VERSION, parseAuthChallengeReply } from '../../shared/protocol/index.js';
import { formatPublicKey, generateIdentity, proveJoin, type Identity } from '../../shared/crypto/index.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, ask, pullTrainer, rawJoin } from './helpers.js';
import { Resources, openSocket, waitFor, within } from './hostile-client.js';

describe('join: enrolled identities only', function () {
  this.timeout(30_000);
  let dir: string;
  let r: Resources;
  let alice: Identity, bob: Identity, probe: Identity, mallory: Identity, stranger: Identity;
  before(() => setLogLevel('error'));
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fedlora-auth-'));
    r = new Resources();
    [alice, bob, probe, mallory, stranger] = [0, 1, 2, 3, 4].map(() => generateIdentity()) as [Identity, Identity, Identity, Identity, Identity];
  });
  afterEach(async () => { await r.closeAll(); await rm(dir, { recursive: true, force: true }); });

  const serve = async () => {
    const coord = r.coordinator(new Coordinator({
      modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 1, clientsPerRound: 2, minClients: 2, maxRank: 4, localSteps: 1, joinWaitMs: 100,
      authorizedClients: [`${formatPublicKey(alice.publicKey)} alice`, `${formatPublicKey(bob.publicKey)} bob`, formatPublicKey(probe.publicKey), `revoked ${formatPublicKey(mallory.publicKey)} mallory`],
    }));
    return { coord, url: await coord.serve(0) };
  };
  const connect = async (url: string) => {
    const s = await openSocket(url, r);
    const events: string[] = [];
    s.onAny((ev: string) => events.push(ev));
    const closed = new Promise<void>((res) => s.on('disconnect', () => res()));
    return { s, events, closed };
  };
  type Conn = Awaited<ReturnType<typeof connect>>;
  /** The refusal carries the reason and nothing else (no session, model or round), and the coordinator hangs up. */
  const expectRefused = async (coord: Coordinator, c: Conn, reply: Record<string, unknown>, code: string) => {
    expect(reply.ok, JSON.stringify(reply)).to.equal(false);
    expect(reply.code).to.equal(code);
    expect(Object.keys(reply).sort()).to.deep.equal(['code', 'message', 'ok']);
    expect(String(reply.message)).not.to.include(coord.sessionId);
    expect(String(reply.message)).not.to.include(coord.modelId!);
    await within('the coordinator to hang up', c.closed, 5000);
    expect(c.events).to.deep.equal([]);
  };
  const hello = (id: string, proof: unknown) => encode({ protocolVersion: PROTOCOL_VERSION, clientId: id, capabilities: { maxRank: 2, backend: 'cpu', examples: 5 }, personal: [], proof });

  it('refuses to start without an allowlist', () => {
    expect(() => new Coordinator({ modelDir: FIXTURE, stateDir: join(dir, 'x') })).to.throw(/authorized-clients/);
  });

  it('starts without an allowlist when any client is explicitly allowed', () => {
    expect(() => new Coordinator({ modelDir: FIXTURE, stateDir: join(dir, 'x'), allowAnyClient: true })).not.to.throw();
  });

  it('answers every request before a join with NO_HELLO', async () => {
    const { url } = await serve();
    const pre = await connect(url);
    for (const ev of ['ready', 'model:chunk', 'round:update', 'secagg:msg']) expect((await ask(pre.s, ev, encode({}))).code, ev).to.equal('NO_HELLO');
  });

  it('refuses an unknown key', async () => {
    const { coord, url } = await serve();
    const c = await connect(url);
    await expectRefused(coord, c, (await rawJoin(c.s, stranger, 'stranger')).hello, 'CRYPTO_UNKNOWN_KEY');
  });

  it('refuses a revoked key', async () => {
    const { coord, url } = await serve();
    const c = await connect(url);
    await expectRefused(coord, c, (await rawJoin(c.s, mallory, 'mallory')).hello, 'CRYPTO_REVOKED');
  });

  it('refuses a proof with a flipped signature byte', async () => {
    const { coord, url } = await serve();
    const c = await connect(url);
    const ch = parseAuthChallengeReply(await ask(c.s, 'auth:challenge', encode({})));
    const p = proveJoin(ch.challenge, c.s.id!, alice);
    p.signature[5]! ^= 1;
    await expectRefused(coord, c, await ask(c.s, 'hello', hello('alice', p)), 'CRYPTO_BAD_SIGNATURE');
  });

  it('refuses a proof bound to another connection', async () => {
    const { coord, url } = await serve();
    const c = await connect(url);
    const ch = parseAuthChallengeReply(await ask(c.s, 'auth:challenge', encode({})));
    await expectRefused(coord, c, await ask(c.s, 'hello', hello('alice', proveJoin(ch.challenge, 'another-socket-id', alice))), 'CRYPTO_BAD_SIGNATURE');
  });

  it('refuses a valid proof replayed on a new connection', async () => {
    const { coord, url } = await serve();
    const good = await connect(url);
    const joined = await rawJoin(good.s, probe, 'probe');
    expect(joined.hello.ok).to.equal(true);
    const captured = proveJoin(joined.challenge.challenge, good.s.id!, probe);
    const replay = await connect(url);
    await ask(replay.s, 'auth:challenge', encode({}));
    await expectRefused(coord, replay, await ask(replay.s, 'hello', hello('probe', captured)), 'CRYPTO_JOIN_REPLAY');
  });

  it('refuses an enrolled key taking an id another key joined with', async () => {
    const { coord, url } = await serve();
    const good = await connect(url);
    expect((await rawJoin(good.s, probe, 'probe')).hello.ok).to.equal(true);
    const thief = await connect(url);
    await expectRefused(coord, thief, (await rawJoin(thief.s, bob, 'probe')).hello, 'IDENTITY_MISMATCH');
  });

  it('a client pinned to another coordinator key refuses to join', async () => {
    const { url } = await serve();
    const trainer = await pullTrainer(0.1);
    const wrongPin = r.client(new Client({ coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, 'w'), clientId: 'w', maxRank: 4, identity: alice, coordinatorKey: formatPublicKey(generateIdentity().publicKey), trainerFactory: async () => trainer }));
    let pinErr: unknown;
    await wrongPin.run().catch((e: unknown) => { pinErr = e; });
    expect((pinErr as { code?: string }).code).to.equal('CRYPTO_UNKNOWN_KEY');
  });

  it('enrolled clients with the right pin finish; refused sockets hear nothing and a joined-but-not-ready one hears only session:done', async () => {
    const { coord, url } = await serve();
    const refused: Conn[] = [];
    for (const [id, who, code] of [['stranger', stranger, 'CRYPTO_UNKNOWN_KEY'], ['mallory', mallory, 'CRYPTO_REVOKED']] as const) {
      const c = await connect(url);
      await expectRefused(coord, c, (await rawJoin(c.s, who, id)).hello, code);
      refused.push(c);
    }
    const good = await connect(url);
    expect((await rawJoin(good.s, probe, 'probe')).hello.ok).to.equal(true);
    const trainers = await Promise.all([0.1, 0.3].map((t) => pullTrainer(t)));
    const clients = [alice, bob].map((identity, i) => r.client(new Client({
      coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `c${i}`), clientId: `c${i}`, maxRank: 4, identity, coordinatorKey: coord.publicKey!, trainerFactory: async () => trainers[i]!,
    })));
    const [done] = await Promise.all([coord.done, ...clients.map((c) => c.run())]);
    expect(done.completedRounds).to.equal(1);
    expect(coord.history[0]!.contributors).to.equal(2);
    await waitFor('session:done at the joined probe', () => good.events.includes('session:done'), 5000);
    expect(good.events).not.to.include('round:start');
    // the refused sockets were closed before the round began, so their (empty) event lists are final
    for (const c of refused) expect(c.events).to.deep.equal([]);
    expect(refused.every((c) => !c.s.connected)).to.equal(true);
  });
});
