/**
 * Secure-aggregation cost: client masking time, coordinator unmasking time and bytes per client for
 * n = 10, 100, 1000 with a GPT-2-124M LoRA r=8 (all linear layers) sized vector: 1,179,648 values.
 *   npx tsx bench/secagg.ts [--n 10,100,1000] [--full-n 100] [--drop 0.05]
 * n ≤ --full-n runs every client at full length. Larger n run the whole protocol in-process at
 * length L/16 (all clients, exact-sum check) and report the mask-dependent times ×16 (they are
 * linear in L: one AES-CTR keystream + add per mask) next to the measured ones; upload bytes use full L.
 */
import nacl from 'tweetnacl';
import { pack } from 'msgpackr';
import { xsalsa20 } from '@noble/ciphers/salsa.js';
import {
  SecAggClient, SecAggServer, identityFromSeed, signSecAggParams, defaultSecAggSizes, deriveMaskKey, addMask, chacha20Keystream,
  expandMaskWebCrypto, type SecAggParams,
} from '../shared/crypto/index.js';
import { setLogLevel } from '../shared/log.js';

setLogLevel('error');
const L_FULL = 1_179_648;
const arg = (name: string, dflt: string) => { const i = process.argv.indexOf(`--${name}`); return i >= 0 ? process.argv[i + 1]! : dflt; };
const NS = arg('n', '10,100,1000').split(',').map(Number);
const FULL_N = Number(arg('full-n', '100'));
const DROP = Number(arg('drop', '0.05'));
const out = (s: string) => process.stdout.write(s + '\n');

async function prgBench(): Promise<void> {
  const key = nacl.randomBytes(32), acc = new Uint32Array(L_FULL), reps = 5;
  const time = async (f: () => unknown) => { await f(); const t = performance.now(); for (let i = 0; i < reps; i++) await f(); return (performance.now() - t) / reps; };
  const addStream = (b: Uint8Array) => { const m = new Uint32Array(b.buffer, b.byteOffset, L_FULL); for (let i = 0; i < L_FULL; i++) acc[i] = (acc[i]! + m[i]!) >>> 0; };
  const cc = await time(() => addStream(chacha20Keystream(key, L_FULL * 4)));
  const xs = await time(() => addStream(xsalsa20(key, new Uint8Array(24), new Uint8Array(L_FULL * 4))));
  const aes = await time(() => addMask(acc, key, 1));
  const wc = await time(async () => { const m = await expandMaskWebCrypto(key, L_FULL); for (let i = 0; i < L_FULL; i++) acc[i] = (acc[i]! + m[i]!) >>> 0; });
  out(`PRG + add over ${L_FULL.toLocaleString()} uint32 (ms): ChaCha20/@noble/ciphers ${cc.toFixed(1)} | XSalsa20/@noble/ciphers ${xs.toFixed(1)} | AES-256-CTR/node:crypto ${aes.toFixed(1)} | AES-256-CTR/WebCrypto ${wc.toFixed(1)}`);
}

function bytes(v: unknown): number { return pack(v).length; }

async function run(n: number): Promise<void> {
  const full = n <= FULL_N;
  const scale = full ? 1 : 16;
  const L = L_FULL / scale;
  const coordinator = identityFromSeed(nacl.randomBytes(32));
  const ids = Array.from({ length: n }, (_, i) => `client-${String(i).padStart(4, '0')}`);
  const idents = ids.map(() => identityFromSeed(nacl.randomBytes(32)));
  const { k, t } = defaultSecAggSizes(n);
  const params: SecAggParams = { round: 1, modelHash: 'sha256:bench', vectorLength: L, participants: ids.map((id, i) => ({ id, key: idents[i]!.publicKey })), k, t, nonce: nacl.randomBytes(32), coordinatorKey: coordinator.publicKey };
  const sig = signSecAggParams(params, coordinator);
  const clients = ids.map((id, i) => new SecAggClient({ params, paramsSignature: sig, coordinatorKey: coordinator.publicKey, identity: idents[i]!, id }));
  const server = new SecAggServer({ params, identity: coordinator });
  const up = new Map<string, number>(), down = new Map<string, number>();
  const add = (m: Map<string, number>, id: string, b: number) => m.set(id, (m.get(id) ?? 0) + b);
  const byId = new Map(ids.map((id, i) => [id, clients[i]!]));
  // drop a fraction after key sharing (recovered through key shares), spread out on the ring
  const dropped = new Set(ids.filter((_, i) => i % Math.max(2, Math.round(1 / DROP)) === 1).slice(0, Math.floor(n * DROP)));
  const tClient = { advertise: 0, share: 0, mask: 0, check: 0, unmask: 0 };
  let tt = performance.now();
  for (const c of clients) { const m = c.advertiseKeys(); add(up, c.id, bytes(m)); server.receiveAdvertise(c.id, m); }
  tClient.advertise = performance.now() - tt;
  let ts = performance.now();
  const keys = server.closeAdvertise();
  let tServer = performance.now() - ts;
  tt = performance.now();
  for (const [id, m] of keys) { add(down, id, bytes(m)); const r = byId.get(id)!.shareKeys(m); add(up, id, bytes(r)); ts = performance.now(); server.receiveShareKeys(id, r); tServer += performance.now() - ts; }
  tClient.share = performance.now() - tt;
  const shares = server.closeShareKeys();
  const input = new Uint32Array(L);
  for (let i = 0; i < L; i++) input[i] = i & 0xffff;
  let masked = 0, nMasked = 0, tRecv = 0;
  for (const [id, m] of shares) {
    add(down, id, bytes(m));
    if (dropped.has(id)) continue;
    const t0 = performance.now();
    const r = byId.get(id)!.maskedInput(m, input);
    masked += performance.now() - t0; nMasked++;
    add(up, id, bytes({ id: r.id, masked: new Uint32Array(0) }));
    const t1 = performance.now(); server.receiveMasked(id, r); tRecv += performance.now() - t1;
  }
  const list = server.closeMaskedInput();
  for (const id of list.survivors) { add(down, id, bytes(list)); const r = byId.get(id)!.consistencyCheck(list); add(up, id, bytes(r)); server.receiveConsistency(id, r); }
  const reqs = server.closeConsistency();
  let tUnmaskSrv = 0;
  for (const [id, m] of reqs) { add(down, id, bytes(m)); const r = byId.get(id)!.unmask(m); add(up, id, bytes(r)); const t0 = performance.now(); server.receiveUnmask(id, r); tUnmaskSrv += performance.now() - t0; }
  const t0 = performance.now();
  const res = server.finalize();
  const tFinal = performance.now() - t0;
  // exact check: Σ survivors' inputs
  const expect = (input[L - 1]! * res.survivors.length) >>> 0;
  if (res.sum[L - 1] !== expect || res.sum[0] !== 0) throw new Error('bench: wrong sum');
  const avg = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0) / m.size;
  const perClientMask = masked / nMasked;
  out([
    String(n).padStart(5), String(k).padStart(3), String(t).padStart(3), String(dropped.size).padStart(4),
    (full ? perClientMask.toFixed(0) : `${perClientMask.toFixed(1)}→${(perClientMask * scale).toFixed(0)}`).padStart(11),
    ((tClient.share / n)).toFixed(1).padStart(9),
    (full ? (tFinal + tUnmaskSrv).toFixed(0) : `${(tFinal + tUnmaskSrv).toFixed(0)}→${(tFinal * scale + tUnmaskSrv).toFixed(0)}`).padStart(13),
    ((tFinal * scale + tUnmaskSrv) / res.survivors.length).toFixed(1).padStart(10),
    (tRecv * scale / nMasked).toFixed(1).padStart(8),
    (avg(up) / 1024).toFixed(1).padStart(11),
    (avg(down) / 1024).toFixed(1).padStart(9),
    (1 + (avg(up) + avg(down)) / (4 * L_FULL)).toFixed(4).padStart(9),
    full ? 'full L' : `L/${scale}, ×${scale}`,
  ].join(' '));
}

await prgBench();
out(`vector: ${L_FULL.toLocaleString()} uint32 (GPT-2-124M LoRA r=8, all linear layers) = ${(4 * L_FULL / 2 ** 20).toFixed(2)} MiB; ${Math.round(DROP * 100)}% of clients drop after key sharing`);
out('    n   k   t drop  mask ms/cl share ms/cl  server unmask ms  srv ms/surv  recv ms  up KiB+vec  down KiB  total/vec  note');
for (const n of NS) await run(n);
