import nacl from 'tweetnacl';
import {
  type Identity, type SecAggParams, type SecAggResult, type KeysMsg, type SharesMsg, type SurvivorListMsg, type UnmaskRequestMsg,
  type ShareKeysMsg, type MaskedInputMsg, type ConsistencyMsg, type UnmaskMsg,
  SecAggClient, SecAggServer, identityFromSeed, signSecAggParams, defaultSecAggSizes,
} from '../../shared/crypto/index.js';
import { seededBytes, testRng } from './seed.js';

/** Deterministic identities so tests are reproducible and cheap. */
export function testIdentity(label: string): Identity {
  return identityFromSeed(nacl.hash(new TextEncoder().encode(`test-identity:${label}`)).slice(0, 32));
}

export interface Setup {
  params: SecAggParams;
  paramsSignature: Uint8Array;
  coordinator: Identity;
  ids: string[];
  identities: Map<string, Identity>;
}

/** The round nonce (hence the neighbour graph) is drawn from the test seed, keyed by the call's arguments. */
export function setup(n: number, L: number, o: { k?: number; t?: number; round?: number } = {}): Setup {
  const coordinator = testIdentity('coordinator');
  const ids = Array.from({ length: n }, (_, i) => `c${String(i).padStart(4, '0')}`);
  const identities = new Map(ids.map((id) => [id, testIdentity(id)]));
  const d = defaultSecAggSizes(n);
  const params: SecAggParams = {
    round: o.round ?? 1, modelHash: 'sha256:test-model', vectorLength: L,
    participants: ids.map((id) => ({ id, key: identities.get(id)!.publicKey })),
    k: o.k ?? d.k, t: o.t ?? d.t, nonce: seededBytes(testRng(`nonce:${n}:${L}:${o.k}:${o.t}:${o.round}`), 32), coordinatorKey: coordinator.publicKey,
  };
  return { params, paramsSignature: signSecAggParams(params, coordinator), coordinator, ids, identities };
}

export function makeClients(s: Setup): Map<string, SecAggClient> {
  return new Map(s.ids.map((id) => [id, new SecAggClient({
    params: s.params, paramsSignature: s.paramsSignature, coordinatorKey: s.coordinator.publicKey, identity: s.identities.get(id)!, id,
  })]));
}

/** Seeded inputs: the same (ids, L, label) give the same vectors for a given test seed. */
export function randomInputs(ids: string[], L: number, label = ''): Map<string, Uint32Array> {
  const rng = testRng(`inputs:${ids.length}:${L}:${label}`);
  return new Map(ids.map((id) => {
    const v = new Uint32Array(L);
    for (let i = 0; i < L; i++) v[i] = rng.int(2 ** 32);
    return [id, v];
  }));
}

export function plainSum(inputs: Map<string, Uint32Array>, ids: Iterable<string>, L: number): Uint32Array {
  const s = new Uint32Array(L);
  for (const id of ids) { const v = inputs.get(id)!; for (let i = 0; i < L; i++) s[i] = (s[i]! + v[i]!) >>> 0; }
  return s;
}

export interface Drops {
  beforeAdvertise?: Iterable<string>;
  afterAdvertise?: Iterable<string>;   // advertised, never shared keys
  afterShare?: Iterable<string>;       // shared keys, never uploaded
  afterMask?: Iterable<string>;        // uploaded, never confirmed the survivor list
  duringUnmask?: Iterable<string>;     // confirmed, never revealed shares
}

export interface RunHooks {
  // what the (possibly dishonest) server hands each client
  keys?: (id: string, m: KeysMsg) => KeysMsg;
  shares?: (id: string, m: SharesMsg) => SharesMsg;
  survivors?: (id: string, m: SurvivorListMsg) => SurvivorListMsg;
  unmask?: (id: string, m: UnmaskRequestMsg) => UnmaskRequestMsg;
  // what a (possibly malicious) client sends the server; `deliver` receives the server first so a
  // test can try a bad variant and check it is refused before the real message goes through
  sent?: {
    shareKeys?: (id: string, m: ShareKeysMsg, server: SecAggServer) => ShareKeysMsg;
    masked?: (id: string, m: MaskedInputMsg, server: SecAggServer) => MaskedInputMsg;
    consistency?: (id: string, m: ConsistencyMsg, server: SecAggServer) => ConsistencyMsg;
    unmask?: (id: string, m: UnmaskMsg, server: SecAggServer) => UnmaskMsg;
  };
}

/** Runs one full round in-process, honest server unless hooks tamper with what clients receive. */
export function runRound(s: Setup, inputs: Map<string, Uint32Array>, drops: Drops = {}, hooks: RunHooks = {}, clients = makeClients(s)): { result: SecAggResult; server: SecAggServer; clients: Map<string, SecAggClient> } {
  const server = new SecAggServer({ params: s.params, identity: s.coordinator });
  const set = (x?: Iterable<string>) => new Set(x ?? []);
  const d0 = set(drops.beforeAdvertise), d1 = set(drops.afterAdvertise), d2 = set(drops.afterShare), d3 = set(drops.afterMask), d4 = set(drops.duringUnmask);
  for (const [id, c] of clients) if (!d0.has(id)) server.receiveAdvertise(id, c.advertiseKeys());
  const keys = server.closeAdvertise();
  const out = hooks.sent ?? {};
  for (const [id, m] of keys) {
    if (d1.has(id)) continue;
    const sent = clients.get(id)!.shareKeys(hooks.keys ? hooks.keys(id, m) : m);
    server.receiveShareKeys(id, out.shareKeys ? out.shareKeys(id, sent, server) : sent);
  }
  const shares = server.closeShareKeys();
  for (const [id, m] of shares) {
    if (d2.has(id)) continue;
    const sent = clients.get(id)!.maskedInput(hooks.shares ? hooks.shares(id, m) : m, inputs.get(id)!);
    server.receiveMasked(id, out.masked ? out.masked(id, sent, server) : sent);
  }
  const list = server.closeMaskedInput();
  for (const id of list.survivors) {
    if (d3.has(id)) continue;
    const sent = clients.get(id)!.consistencyCheck(hooks.survivors ? hooks.survivors(id, list) : list);
    server.receiveConsistency(id, out.consistency ? out.consistency(id, sent, server) : sent);
  }
  const reqs = server.closeConsistency();
  for (const [id, m] of reqs) {
    if (d4.has(id)) continue;
    const sent = clients.get(id)!.unmask(hooks.unmask ? hooks.unmask(id, m) : m);
    server.receiveUnmask(id, out.unmask ? out.unmask(id, sent, server) : sent);
  }
  return { result: server.finalize(), server, clients };
}
