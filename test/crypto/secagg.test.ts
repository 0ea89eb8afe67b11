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

describe('crypto/secagg: hardening against one malicious participant', () => {
  const L = 8;

  describe('a refused message leaves the server unchanged, so the corrected resend is accepted', () => {
    it('half-valid unmask messages (valid first share, malformed or misdirected second) are refused whole', () => {
      const s = setup(5, L);
      const inputs = randomInputs(s.ids, L);
      let tried = 0;
      const { result } = runRound(s, inputs, {}, {
        sent: {
          unmask: (id, m, server) => {
            expect(m.reveals.length).to.be.at.least(2);
            const [first, second] = m.reveals as [typeof m.reveals[0], typeof m.reveals[0]];
            const rest = m.reveals.slice(2);
            expect(code(() => server.receiveUnmask(id, { id, reveals: [first, { ...second, y: second.y.subarray(0, 31) }, ...rest] }))).to.equal('SECAGG_MESSAGE');
            expect(code(() => server.receiveUnmask(id, { id, reveals: [first, { ...second, kind: second.kind === 'b' ? 's' : 'b' }, ...rest] }))).to.equal('SECAGG_MESSAGE');
            expect(code(() => server.receiveUnmask(id, { id, reveals: [first, { ...second, dealer: 'zz-unknown' }, ...rest] }))).to.equal('SECAGG_MESSAGE');
            // a first share that fails its commitment must not be recorded as evidence either
            const forged = first.y.slice(); forged[0]! ^= 1;
            expect(code(() => server.receiveUnmask(id, { id, reveals: [{ ...first, y: forged }, { ...second, salt: second.salt.subarray(1) }, ...rest] }))).to.equal('SECAGG_MESSAGE');
            tried++;
            return m;
          },
        },
      });
      expect(tried).to.equal(5);
      expect(result.badShares).to.deep.equal([]);
      expect([...result.sum]).to.deep.equal([...plainSum(inputs, s.ids, L)]);
    });

    it('half-valid share-keys messages (valid first envelope, malformed second; bad commitment list; bad signature) are refused whole', () => {
      const s = setup(5, L);
      const inputs = randomInputs(s.ids, L);
      const clients = makeClients(s);
      let tried = 0;
      const { result } = runRound(s, inputs, {}, {
        sent: {
          shareKeys: (id, m, server) => {
            const [e0, e1] = m.envelopes as [ShareKeysMsg['envelopes'][0], ShareKeysMsg['envelopes'][0]];
            const rest = m.envelopes.slice(2);
            const variants: ShareKeysMsg[] = [
              { ...m, envelopes: [e0, { to: e1.to, sealed: { nonce: e1.sealed.nonce.subarray(0, 12), box: e1.sealed.box } }, ...rest] },
              { ...m, envelopes: [e0, { to: e0.to, sealed: e1.sealed }, ...rest] },
              { ...m, envelopes: [e0, { to: 'zz-unknown', sealed: e1.sealed }, ...rest] },
              { ...m, envelopes: [e0, e1, ...rest, { to: id, sealed: e0.sealed }] },
              { ...m, commitments: m.commitments.slice(1) },
              { ...m, signature: junk(64) },
            ];
            for (const v of variants) expect(code(() => server.receiveShareKeys(id, v))).to.be.oneOf(['SECAGG_MESSAGE', 'CRYPTO_BAD_SIGNATURE']);
            tried++;
            return m;
          },
        },
      }, clients);
      expect(tried).to.equal(5);
      // a relayed leftover from a refused attempt would reach clients as a duplicate or rejected envelope
      for (const c of clients.values()) expect(c.rejectedPeers).to.deep.equal([]);
      expect(result.complaints).to.deep.equal([]);
      expect([...result.sum]).to.deep.equal([...plainSum(inputs, s.ids, L)]);
    });

    it('masked inputs with a bad `rejected` list and consistency messages with a bad signature are refused, the resend accepted', () => {
      const s = setup(5, L);
      const inputs = randomInputs(s.ids, L);
      const { result } = runRound(s, inputs, {}, {
        sent: {
          masked: (id, m, server) => {
            expect(m.rejected).to.equal(undefined); // honest round: field absent, as from older clients
            const other = s.ids.find((x) => x !== id)!;
            for (const rejected of [[id], ['zz-unknown'], [other, other], 'c0000' as unknown as string[]]) {
              expect(code(() => server.receiveMasked(id, { ...m, rejected }))).to.equal('SECAGG_MESSAGE');
            }
            return m;
          },
          consistency: (id, m, server) => {
            expect(code(() => server.receiveConsistency(id, { ...m, signature: junk(64) }))).to.equal('CRYPTO_BAD_SIGNATURE');
            return m;
          },
        },
      });
      expect([...result.sum]).to.deep.equal([...plainSum(inputs, s.ids, L)]);
    });
  });

  /** A dealer that sends undecryptable envelopes (the relay cannot tell) to `victims`. */
  const garbageTo = (malicious: string, victims: (to: string) => boolean) => (id: string, m: ShareKeysMsg): ShareKeysMsg => (id !== malicious ? m : {
    ...m,
    envelopes: m.envelopes.map((e) => (victims(e.to) ? { to: e.to, sealed: { nonce: junk(24), box: junk(e.sealed.box.length) } } : e)),
  });

  function blameOf(f: () => unknown): SecAggBlameError {
    try { f(); } catch (e) {
      expect(e).to.be.instanceOf(SecAggBlameError);
      expect(e).to.be.instanceOf(CryptoError);
      return e as SecAggBlameError;
    }
    throw new Error('expected a SecAggBlameError');
  }

  describe('garbage share envelopes from one participant', () => {
    const s = setup(5, L);
    const inputs = randomInputs(s.ids, L, 'garbage');
    const M = s.ids[2]!;
    const honest = s.ids.filter((x) => x !== M);

    it('to every neighbour, malicious one uploads: honest clients all mask; the round fails naming it, before unmasking', () => {
      const clients = makeClients(s);
      let server: SecAggServer | undefined;
      const masked = new Map<string, string[] | undefined>();
      const e = blameOf(() => runRound(s, inputs, {}, {
        sent: { shareKeys: garbageTo(M, () => true), masked: (id, m, srv) => { server = srv; masked.set(id, m.rejected); return m; } },
      }, clients));
      for (const id of honest) {
        expect(clients.get(id)!.phase, id).to.equal('consistency'); // produced its masked input, did not abort
        expect(clients.get(id)!.rejectedPeers).to.deep.equal([M]);
        expect(masked.get(id)).to.deep.equal([M]);
      }
      expect(masked.get(M)).to.equal(undefined);
      expect(e.code).to.equal('SECAGG_THRESHOLD');
      expect(e.culprits).to.deep.equal([M]);
      // only M itself holds a valid share of its self-mask seed: 1 < t=3
      expect(e.blame).to.deep.equal([{ dealer: M, kind: 'b', reason: 'insufficient-shares', shares: 1, complaints: honest, missing: [] }]);
      expect(server!.phase).to.equal('failed');
    });

    it('to every neighbour, malicious one drops before upload: its mask key is unrecoverable, the round fails naming it', () => {
      const clients = makeClients(s);
      const e = blameOf(() => runRound(s, inputs, { afterShare: [M] }, { sent: { shareKeys: garbageTo(M, () => true) } }, clients));
      for (const id of honest) expect(clients.get(id)!.rejectedPeers, id).to.deep.equal([M]);
      expect(e.culprits).to.deep.equal([M]);
      expect(e.blame).to.deep.equal([{ dealer: M, kind: 's', reason: 'insufficient-shares', shares: 0, complaints: honest, missing: [] }]);
    });

    it('to one neighbour: the round completes with its input (it uploads) and reports the complaint; the victim reveals nothing for it', () => {
      const V = honest[0]!;
      const clients = makeClients(s);
      const { result } = runRound(s, inputs, {}, { sent: { shareKeys: garbageTo(M, (to) => to === V) } }, clients);
      expect(result.complaints).to.deep.equal([{ dealer: M, holder: V }]);
      expect([...result.sum]).to.deep.equal([...plainSum(inputs, s.ids, L)]);
      expect(clients.get(V)!.revealedKinds().has(M)).to.equal(false);
      expect(clients.get(V)!.phase).to.equal('done');
    });

    it('to one neighbour, then it drops before upload: its mask key is recovered from the others, honest sum exact', () => {
      const V = honest[0]!;
      const clients = makeClients(s);
      const { result } = runRound(s, inputs, { afterShare: [M] }, { sent: { shareKeys: garbageTo(M, (to) => to === V) } }, clients);
      expect(result.survivors).to.deep.equal(honest);
      expect(result.droppedAfterSharing).to.deep.equal([M]);
      expect([...result.sum]).to.deep.equal([...plainSum(inputs, honest, L)]);
      expect(clients.get(V)!.revealedKinds().has(M)).to.equal(false);
      for (const id of honest.slice(1)) expect(clients.get(id)!.revealedKinds().get(M), id).to.equal('s');
    });

    it('to two neighbours, then an accepting holder goes silent at unmasking: finalize names the dealer, with complaints and the silent holder', () => {
      const [V1, V2, H] = honest as [string, string, string];
      const e = blameOf(() => runRound(s, inputs, { duringUnmask: [H] }, { sent: { shareKeys: garbageTo(M, (to) => to === V1 || to === V2) } }));
      expect(e.code).to.equal('SECAGG_THRESHOLD');
      expect(e.culprits).to.deep.equal([M]); // the other dealers still have 3 revealers each
      expect(e.blame).to.deep.equal([{ dealer: M, kind: 'b', reason: 'insufficient-shares', shares: 2, complaints: [V1, V2].sort(), missing: [H] }]);
    });
  });

  describe('blame for dropouts', () => {
    it('a dropped dealer without t valid shares of its mask key is named (complaint plus a silent holder)', () => {
      const s = setup(5, L);
      const inputs = randomInputs(s.ids, L, 'dropped');
      const [D, V, H] = [s.ids[4]!, s.ids[0]!, s.ids[1]!];
      const e = blameOf(() => runRound(s, inputs, { afterShare: [D], duringUnmask: [H] }, { sent: { shareKeys: garbageTo(D, (to) => to === V) } }));
      expect(e.culprits).to.deep.equal([D]);
      expect(e.blame).to.deep.equal([{ dealer: D, kind: 's', reason: 'insufficient-shares', shares: 2, complaints: [V], missing: [H] }]);
    });

    it('without any malice, too many silent holders make every dealer a culprit — with empty complaints, and the silent ones listed as missing', () => {
      const s = setup(5, L);
      const inputs = randomInputs(s.ids, L, 'dropped');
      const D = s.ids[4]!, silent = [s.ids[0]!, s.ids[1]!];
      const e = blameOf(() => runRound(s, inputs, { afterShare: [D], duringUnmask: silent }));
      expect(e.culprits).to.deep.equal(s.ids);
      for (const b of e.blame) {
        expect(b.complaints, b.dealer).to.deep.equal([]);
        expect(b.shares, b.dealer).to.equal(2);
        expect(b.missing, b.dealer).to.deep.equal(b.dealer === D ? silent : [...silent, D].sort()); // D dropped: it reveals nothing either
        expect(b.kind, b.dealer).to.equal(b.dealer === D ? 's' : 'b');
      }
    });
  });
});
