import { expect } from 'chai';
import {
  SecAggServer, NeighbourGraph, defaultSecAggSizes, signMessage, SECAGG_DOMAINS, SecAggBlameError,
  type SharesMsg, type SurvivorListMsg, type ShareKeysMsg, SecAggClient,
} from '../../shared/crypto/index.js';
import { CryptoError } from '../../shared/errors.js';
import { setup, makeClients, randomInputs, plainSum, runRound, testIdentity, type Drops } from './harness.js';
import { seededBytes, testRng } from './seed.js';

const rng = testRng('secagg');
const junk = (n: number) => seededBytes(rng, n);

function code(f: () => unknown): string {
  try { f(); } catch (e) { return (e as CryptoError).code ?? 'no-code'; }
  return 'did-not-throw';
}

function combos<T>(xs: T[], r: number): T[][] {
  if (r === 0) return [[]];
  const out: T[][] = [];
  xs.forEach((x, i) => { for (const rest of combos(xs.slice(i + 1), r - 1)) out.push([x, ...rest]); });
  return out;
}

describe('crypto/secagg', () => {
  it('masks cancel exactly: unmasked sum equals the plain sum (complete graph and sparse graph)', () => {
    for (const [n, L] of [[5, 257], [40, 100]] as const) {
      const s = setup(n, L);
      const inputs = randomInputs(s.ids, L);
      const { result } = runRound(s, inputs);
      expect(result.survivors).to.deep.equal(s.ids);
      expect([...result.sum]).to.deep.equal([...plainSum(inputs, s.ids, L)]);
    }
  });

  it('masked uploads look nothing like the inputs (a zero input is fully masked)', () => {
    const s = setup(5, 64);
    const inputs = new Map(s.ids.map((id) => [id, new Uint32Array(64)]));
    const clients = makeClients(s);
    const server = new SecAggServer({ params: s.params, identity: s.coordinator });
    for (const [id, c] of clients) server.receiveAdvertise(id, c.advertiseKeys());
    for (const [id, m] of server.closeAdvertise()) server.receiveShareKeys(id, clients.get(id)!.shareKeys(m));
    for (const [id, m] of server.closeShareKeys()) {
      const up = clients.get(id)!.maskedInput(m, inputs.get(id)!);
      expect(up.masked.filter((x) => x === 0).length).to.be.below(3);
    }
  });

  it('n=5 (k=4, t=3): every pattern of up to n−t dropouts after sharing / after upload / during unmasking is recovered', function () {
    this.timeout(60_000);
    const n = 5, L = 33;
    const s = setup(n, L);
    expect(s.params.t).to.equal(3);
    const inputs = randomInputs(s.ids, L);
    let rounds = 0;
    for (let r = 0; r <= n - s.params.t; r++) {
      for (const who of combos(s.ids, r)) {
        // assign each dropped client one of the three stages (3^r patterns)
        for (let m = 0; m < 3 ** r; m++) {
          const drops = { afterShare: [] as string[], afterMask: [] as string[], duringUnmask: [] as string[] };
          who.forEach((id, i) => {
            const stage = Math.floor(m / 3 ** i) % 3;
            [drops.afterShare, drops.afterMask, drops.duringUnmask][stage]!.push(id);
          });
          const { result } = runRound(s, inputs, drops);
          const survivors = s.ids.filter((id) => !drops.afterShare.includes(id));
          expect(result.survivors).to.deep.equal(survivors);
          expect([...result.sum]).to.deep.equal([...plainSum(inputs, survivors, L)]);
          rounds++;
        }
      }
    }
    expect(rounds).to.equal(1 + 5 * 3 + 10 * 9);
  });

  it('sparse n=40: sampled dropout patterns (incl. before advertising) recover the survivors\' sum', function () {
    this.timeout(60_000);
    const n = 40, L = 50;
    const s = setup(n, L);
    expect(s.params.k).to.be.below(n - 1);
    const inputs = randomInputs(s.ids, L);
    const rnd = (k: number) => rng.int(k);
    for (let trial = 0; trial < 6; trial++) {
      const pool = [...s.ids];
      const pick = (c: number) => Array.from({ length: c }, () => pool.splice(rnd(pool.length), 1)[0]!);
      const drops: Drops = { beforeAdvertise: pick(1), afterAdvertise: pick(1), afterShare: pick(2), afterMask: pick(1), duringUnmask: pick(2) };
      const { result } = runRound(s, inputs, drops);
      const gone = new Set([...drops.beforeAdvertise!, ...drops.afterAdvertise!, ...drops.afterShare!]);
      const survivors = s.ids.filter((id) => !gone.has(id));
      expect(result.survivors).to.deep.equal(survivors);
      expect([...result.sum]).to.deep.equal([...plainSum(inputs, survivors, L)]);
    }
  });

  it('fails clearly when a neighbourhood loses more than k+1−t members', () => {
    const s = setup(5, 8);
    const inputs = randomInputs(s.ids, 8);
    expect(() => runRound(s, inputs, { afterShare: s.ids.slice(0, 3) })).to.throw(/threshold/);
    expect(code(() => runRound(s, inputs, { afterMask: s.ids.slice(0, 3) }))).to.equal('SECAGG_SURVIVORS'); // clients refuse: < t confirmations
  });

  it('neighbour graph is symmetric, k-regular, derived only from the session seed', () => {
    const seed = junk(32);
    const g = new NeighbourGraph(101, 20, seed), g2 = new NeighbourGraph(101, 20, seed), g3 = new NeighbourGraph(101, 20, junk(32));
    let differs = false;
    for (let i = 0; i < 101; i++) {
      const nb = g.neighbours(i);
      expect(nb).to.have.length(20);
      expect(nb).to.not.include(i);
      for (const j of nb) { expect(g.neighbours(j)).to.include(i); expect(g.areNeighbours(i, j)).to.equal(true); }
      expect(g2.neighbours(i)).to.deep.equal(nb);
      if (g3.neighbours(i).join() !== nb.join()) differs = true;
    }
    expect(differs).to.equal(true);
    expect(defaultSecAggSizes(5)).to.deep.equal({ k: 4, t: 3 });
    expect(defaultSecAggSizes(1000)).to.deep.equal({ k: 30, t: 16 });
  });

  describe('tampering and misuse', () => {
    it('a flipped byte anywhere in a relayed share envelope is rejected: the recipient drops that share, reports it, and the round still completes', () => {
      const s = setup(5, 8);
      const inputs = randomInputs(s.ids, 8);
      const victim = s.ids[2]!;
      for (let trial = 0; trial < 12; trial++) {
        const clients = makeClients(s);
        let flipped = '', dealer = '';
        const hook = (id: string, m: SharesMsg): SharesMsg => {
          if (id !== victim) return m;
          const e = m.envelopes[rng.int(m.envelopes.length)]!;
          const field = trial % 3 === 0 ? 'nonce' : 'box';
          const buf = e.sealed[field].slice();
          buf[rng.int(buf.length)]! ^= 1 << rng.int(8);
          flipped = field; dealer = e.from;
          return { envelopes: m.envelopes.map((x) => (x === e ? { from: x.from, sealed: { ...x.sealed, [field]: buf } } : x)) };
        };
        const { result } = runRound(s, inputs, {}, { shares: hook }, clients);
        const c = clients.get(victim)!;
        expect(c.phase, flipped).to.equal('done');
        expect(c.rejectedPeers).to.deep.equal([dealer]);
        expect(c.revealedKinds().has(dealer)).to.equal(false);
        expect(result.complaints).to.deep.equal([{ dealer, holder: victim }]);
        expect([...result.sum]).to.deep.equal([...plainSum(inputs, s.ids, 8)]);
      }
    });

    it('an envelope relabelled to another sender or relayed to another recipient is rejected', () => {
      const s = setup(5, 8);
      const inputs = randomInputs(s.ids, 8);
      const [a, b] = s.ids as [string, string];
      const relabel = (id: string, m: SharesMsg): SharesMsg => id !== a ? m : {
        envelopes: m.envelopes.map((e, i) => (i === 0 ? { from: m.envelopes[1]!.from, sealed: e.sealed } : i === 1 ? { from: m.envelopes[0]!.from, sealed: e.sealed } : e)),
      };
      // two swapped labels: a rejects both envelopes, still holds t=3 valid shares (its own + 2)
      const clients = makeClients(s);
      const { result } = runRound(s, inputs, {}, { shares: relabel }, clients);
      expect(clients.get(a)!.rejectedPeers).to.have.length(2);
      expect(result.complaints.map((x) => x.holder)).to.deep.equal([a, a]);
      expect([...result.sum]).to.deep.equal([...plainSum(inputs, s.ids, 8)]);
      let stolen: SharesMsg | undefined;
      const misroute = (id: string, m: SharesMsg): SharesMsg => {
        if (id === a) { stolen = m; return m; }
        if (id === b) return { envelopes: m.envelopes.map((e) => stolen!.envelopes.find((x) => x.from === e.from && e.from !== a) ?? e) };
        return m;
      };
      // b can open only a's envelope: 2 valid holders (a and itself) < t, so it aborts
      const c2 = makeClients(s);
      expect(code(() => runRound(s, inputs, {}, { shares: misroute }, c2))).to.equal('SECAGG_THRESHOLD');
      expect(c2.get(b)!.phase).to.equal('aborted');
    });

    it('server refuses duplicated uploads, wrong-length vectors, spoofed senders and late messages', () => {
      const s = setup(5, 16);
      const clients = makeClients(s);
      const server = new SecAggServer({ params: s.params, identity: s.coordinator });
      const [a, b] = s.ids as [string, string];
      const adv = clients.get(a)!.advertiseKeys();
      server.receiveAdvertise(a, adv);
      expect(code(() => server.receiveAdvertise(a, adv))).to.equal('SECAGG_MESSAGE');
      expect(code(() => server.receiveAdvertise(b, adv))).to.equal('SECAGG_MESSAGE');
      expect(code(() => server.receiveAdvertise('intruder', adv))).to.equal('SECAGG_MESSAGE');
      expect(code(() => server.receiveAdvertise(b, { ...clients.get(b)!.advertiseKeys(), sPk: junk(32) }))).to.equal('CRYPTO_BAD_SIGNATURE');
      for (const [id, c] of clients) if (id !== a && id !== b) server.receiveAdvertise(id, c.advertiseKeys());
      const keys = server.closeAdvertise();
      expect(code(() => server.receiveAdvertise(b, adv))).to.equal('SECAGG_PHASE');
      for (const [id, m] of keys) server.receiveShareKeys(id, clients.get(id)!.shareKeys(m));
      const shares = server.closeShareKeys();
      const up = clients.get(a)!.maskedInput(shares.get(a)!, new Uint32Array(16));
      server.receiveMasked(a, up);
      expect(code(() => server.receiveMasked(a, up))).to.equal('SECAGG_MESSAGE');
      const c2 = s.ids[2]!;
      expect(code(() => server.receiveMasked(c2, up))).to.equal('SECAGG_MESSAGE');
      expect(code(() => server.receiveMasked(c2, { id: c2, masked: new Uint32Array(15) }))).to.equal('SECAGG_MESSAGE');
      expect(code(() => server.receiveMasked(b, { id: b, masked: new Uint32Array(16) }))).to.equal('SECAGG_MESSAGE'); // b never advertised
      expect(code(() => clients.get(c2)!.maskedInput(shares.get(c2)!, new Uint32Array(17)))).to.equal('SECAGG_MESSAGE');
      expect(code(() => server.finalize())).to.equal('SECAGG_PHASE');
    });

    it('a share tampered by its holder is detected, attributed, and the sum still recovered', () => {
      const s = setup(6, 8, { k: 5, t: 3 });
      const inputs = randomInputs(s.ids, 8);
      const clients = makeClients(s);
      const server = new SecAggServer({ params: s.params, identity: s.coordinator });
      for (const [id, c] of clients) server.receiveAdvertise(id, c.advertiseKeys());
      for (const [id, m] of server.closeAdvertise()) server.receiveShareKeys(id, clients.get(id)!.shareKeys(m));
      for (const [id, m] of server.closeShareKeys()) server.receiveMasked(id, clients.get(id)!.maskedInput(m, inputs.get(id)!));
      const list = server.closeMaskedInput();
      for (const id of list.survivors) server.receiveConsistency(id, clients.get(id)!.consistencyCheck(list));
      const liar = s.ids[1]!;
      for (const [id, m] of server.closeConsistency()) {
        const u = clients.get(id)!.unmask(m);
        if (id === liar) u.reveals[0]!.y[5]! ^= 0x40;
        server.receiveUnmask(id, u);
      }
      const res = server.finalize();
      expect(res.badShares).to.have.length(1);
      expect(res.badShares[0]!.holder).to.equal(liar);
      expect([...res.sum]).to.deep.equal([...plainSum(inputs, s.ids, 8)]);
    });

    it('keys message must be coordinator-signed and advertisements signed by enrolled identities', () => {
      const s = setup(5, 8);
      const inputs = randomInputs(s.ids, 8);
      expect(code(() => runRound(s, inputs, {}, { keys: (id, m) => (id === s.ids[0] ? { ...m, keysDigest: junk(32) } : m) }))).to.equal('CRYPTO_BAD_SIGNATURE');
      expect(code(() => runRound(s, inputs, {}, {
        keys: (id, m) => (id === s.ids[0] ? { ...m, neighbours: m.neighbours.map((a, i) => (i === 0 ? { ...a, cPk: junk(32) } : a)) } : m),
      }))).to.equal('CRYPTO_BAD_SIGNATURE');
      expect(code(() => runRound(s, inputs, {}, { keys: (id, m) => (id === s.ids[0] ? { ...m, neighbours: m.neighbours.slice(1) } : m) }))).to.equal('SECAGG_MESSAGE');
    });

    it('clients refuse params not signed by the pinned coordinator', () => {
      const s = setup(5, 8);
      const id = s.ids[0]!;
      const base = { params: s.params, identity: s.identities.get(id)!, id };
      expect(code(() => new SecAggClient({ ...base, paramsSignature: s.paramsSignature, coordinatorKey: testIdentity('mallory').publicKey }))).to.equal('CRYPTO_UNKNOWN_KEY');
      expect(code(() => new SecAggClient({ ...base, params: { ...s.params, round: 2 }, paramsSignature: s.paramsSignature, coordinatorKey: s.coordinator.publicKey }))).to.equal('CRYPTO_BAD_SIGNATURE');
      expect(code(() => new SecAggClient({ ...base, identity: testIdentity('other'), paramsSignature: s.paramsSignature, coordinatorKey: s.coordinator.publicKey }))).to.equal('CRYPTO_UNKNOWN_KEY');
    });
  });

  describe('survivor list checks', () => {
    const s = setup(6, 8, { k: 5, t: 4 });
    const inputs = randomInputs(s.ids, 8);
    const sign = (survivors: string[], session: Uint8Array) => ({ survivors, signature: signMessage(SECAGG_DOMAINS.survivors, { session, survivors }, s.coordinator.secretKey) });
    const tamper = (f: (m: SurvivorListMsg, session: Uint8Array) => SurvivorListMsg) => {
      const clients = makeClients(s);
      const victim = s.ids[0]!;
      let c: string = 'no-throw';
      try {
        runRound(s, inputs, { afterAdvertise: [s.ids[5]!] }, {
          survivors: (id, m) => (id === victim ? f(m, clients.get(victim)!.session!) : m),
        }, clients);
      } catch (e) { c = (e as CryptoError).code; }
      return { c, client: clients.get(victim)! };
    };

    it('aborts when listed as dead, on duplicates, unknown ids, dropped neighbours listed alive, too few survivors, bad signature', () => {
      const cases: [string, (m: SurvivorListMsg, session: Uint8Array) => SurvivorListMsg][] = [
        ['listed as dead', (m, ss) => sign(m.survivors.slice(1), ss)],
        ['duplicated id', (m, ss) => sign([...m.survivors, m.survivors[2]!].sort(), ss)],
        ['unknown id', (m, ss) => sign([...m.survivors, 'zz-unknown'], ss)],
        ['neighbour that never shared keys listed', (m, ss) => sign([...s.ids], ss)],
        ['fewer than t survive', (m, ss) => sign(m.survivors.slice(0, 3), ss)],
        ['unsigned', (m) => ({ survivors: m.survivors, signature: new Uint8Array(64) })],
        ['signed by someone else', (m, ss) => ({ survivors: m.survivors, signature: signMessage(SECAGG_DOMAINS.survivors, { session: ss, survivors: m.survivors }, testIdentity('mallory').secretKey) })],
      ];
      for (const [name, f] of cases) {
        const { c, client } = tamper(f);
        expect(c, name).to.equal('SECAGG_SURVIVORS');
        expect(client.phase, name).to.equal('aborted');
        expect(client.revealedKinds().size, name).to.equal(0);
      }
    });

    it('aborts when the server shows different survivor lists to different clients', () => {
      // the server tells victim that u is dead but everyone else that u is alive → signatures do not match
      const clients = makeClients(s);
      const victim = s.ids[0]!, u = s.ids[3]!;
      const server = new SecAggServer({ params: s.params, identity: s.coordinator });
      for (const [id, c] of clients) server.receiveAdvertise(id, c.advertiseKeys());
      for (const [id, m] of server.closeAdvertise()) server.receiveShareKeys(id, clients.get(id)!.shareKeys(m));
      for (const [id, m] of server.closeShareKeys()) server.receiveMasked(id, clients.get(id)!.maskedInput(m, inputs.get(id)!));
      const list = server.closeMaskedInput();
      const session = clients.get(victim)!.session!;
      const forked = sign(list.survivors.filter((x) => x !== u), session);
      const cs = new Map<string, Uint8Array>();
      for (const id of list.survivors) cs.set(id, clients.get(id)!.consistencyCheck(id === victim ? forked : list).signature);
      const req = { survivorList: forked, signatures: [...cs].map(([id, signature]) => ({ id, signature })) };
      expect(code(() => clients.get(victim)!.unmask(req))).to.equal('SECAGG_SURVIVORS');
      expect(clients.get(victim)!.revealedKinds().size).to.equal(0);
      // and a different list at unmasking than the one confirmed is refused too
      const other = clients.get(s.ids[1]!)!;
      expect(code(() => other.unmask({ survivorList: forked, signatures: req.signatures }))).to.equal('SECAGG_SURVIVORS');
    });

    it('never reveals both shares of one peer: one kind per dealer, and unmask only once', () => {
      const clients = makeClients(s);
      const dropped = s.ids[5]!;
      const { result } = runRound(s, inputs, { afterShare: [dropped] }, {}, clients);
      expect(result.droppedAfterSharing).to.deep.equal([dropped]);
      for (const [id, c] of clients) {
        if (id === dropped) continue;
        const kinds = c.revealedKinds();
        expect(kinds.get(dropped), id).to.equal('s');
        for (const [dealer, kind] of kinds) if (dealer !== dropped) expect(kind).to.equal('b');
        expect(code(() => c.unmask({ survivorList: { survivors: [], signature: new Uint8Array(64) }, signatures: [] }))).to.equal('SECAGG_PHASE');
      }
    });
  });
});
