/**
 * Known-answer vectors for every byte fedlora puts on the wire: canonical encoding and hashes,
 * signatures, mask keys and their keystream, X25519 + seal key + seal framing, Shamir shares.
 *
 * `buildKat()` computes them from the fixed inputs below with the production code; the pinned copy
 * is test/fixtures/kat/wire.json (kat.test.ts regenerates and compares, byte for byte). Regenerate
 * the fixture only on a deliberate wire change (and bump PROTOCOL_VERSION):
 *   npx tsx test/crypto/kat.ts --write
 * Inputs are JSON-readable for implementers in other languages: byte strings as hex; in canonical
 * values `{"$bytes": hex}` is a Uint8Array and `{"$u32": [..]}` a Uint32Array.
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import nacl from 'tweetnacl';
import {
  type Canonical, type MaskDomain, type SealContext, canonicalEncode, hashCanonical, domainPrefix, deriveMaskKey, expandMask,
  x25519, x25519Base, sharedKey, sealFrame, splitSecret, identityFromSeed, signMessage,
} from '../../shared/crypto/index.js';
import { PROTOCOL_VERSION } from '../../shared/protocol/events.js';

export const KAT_FILE = fileURLToPath(new URL('../fixtures/kat/wire.json', import.meta.url));

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');
const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));
/** Bytes 0, 1, 2, … offset by `start` (mod 256): a fixed, obviously non-secret input. */
const ramp = (n: number, start: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (start + i) & 255);

type JsonValue = null | boolean | number | string | JsonValue[] | { [k: string]: JsonValue };

function fromJson(v: JsonValue): Canonical {
  if (Array.isArray(v)) return v.map(fromJson);
  if (v !== null && typeof v === 'object') {
    if (typeof v.$bytes === 'string') return unhex(v.$bytes);
    if (Array.isArray(v.$u32)) return Uint32Array.from(v.$u32 as number[]);
    const o: Record<string, Canonical> = {};
    for (const [k, x] of Object.entries(v)) o[k] = fromJson(x);
    return o;
  }
  return v;
}

const CANONICAL_INPUTS: { name: string; value: JsonValue }[] = [
  { name: 'null', value: null },
  { name: 'false', value: false },
  { name: 'true', value: true },
  { name: 'zero', value: 0 },
  { name: 'number', value: -1.5 },
  { name: 'integer', value: 4294967296 },
  { name: 'empty string', value: '' },
  { name: 'utf8 string', value: 'héllo ✓' },
  { name: 'bytes', value: { $bytes: '00ff10' } },
  { name: 'uint32 array', value: { $u32: [1, 3735928559] } },
  { name: 'array', value: [1, 'a', null, []] },
  { name: 'object (keys sorted)', value: { round: 3, a: { $bytes: '' }, B: [true], é: 'x' } },
  { name: 'nested', value: { session: { $bytes: hex(ramp(8, 0x40)) }, list: [{ id: 'c1', w: 0.25 }, { id: 'c2', w: 2 }] } },
];

const MASK_SEED = ramp(32, 0);
const MASK_DOMAINS: { name: string; domain: MaskDomain }[] = [
  { name: 'pair', domain: { session: ramp(32, 0x80), round: 1, purpose: 'pair', pair: ['client-a', 'client-b'] } },
  { name: 'self', domain: { session: ramp(32, 0x80), round: 7, purpose: 'self', owner: 'client-a' } },
  { name: 'graph', domain: { session: MASK_SEED, round: 0, purpose: 'graph' } },
  { name: 'string session, tensor', domain: { session: 'round-0001', round: 2, purpose: 'pair', pair: ['a', 'b'], tensor: 'layers.0.q.lora_A' } },
];

const SEAL_SK_A = ramp(32, 0x10);
const SEAL_SK_B = ramp(32, 0xa0);
const SEAL_NONCE = ramp(24, 0x30);
const SEAL_PAYLOADS: { name: string; payload: Uint8Array; ctx: SealContext }[] = [
  { name: 'bytes session', payload: ramp(40, 0xc0), ctx: { session: ramp(32, 0x80), round: 3, sender: 'client-a', recipient: 'client-b', kind: 'secagg/share' } },
  { name: 'string session, empty payload', payload: new Uint8Array(0), ctx: { session: 'r-000001', round: 1, sender: 'client-a', recipient: 'coordinator', kind: 'update' } },
];

const SHAMIR = { secret: ramp(32, 0x55), n: 5, t: 3, xs: [3, 7, 1, 200, 255], coefficients: ramp(2 * 32, 0x9b) };

const SIGN_SEED = ramp(32, 0xe0);

export interface Kat {
  protocolVersion: number;
  note: string;
  canonical: { name: string; value: JsonValue; encoding: string; hash: { domain: string; hex: string } }[];
  domainPrefix: { tag: string; domain: string; hex: string }[];
  signature: { seed: string; publicKey: string; domain: string; value: JsonValue; signature: string };
  maskKey: { name: string; seed: string; domain: JsonValue; key: string; keystreamWords0to7: string }[];
  x25519: { skA: string; pkA: string; skB: string; pkB: string; shared: string };
  seal: { key: string; nonce: string; cases: { name: string; payload: string; context: JsonValue; plaintext: string; box: string }[] };
  shamir: { secret: string; n: number; t: number; xs: number[]; coefficients: string; shares: { x: number; y: string }[] };
}

function domainJson(d: MaskDomain): JsonValue {
  const o: Record<string, JsonValue> = { session: typeof d.session === 'string' ? d.session : { $bytes: hex(d.session) }, round: d.round, purpose: d.purpose };
  if (d.pair) o.pair = [d.pair[0], d.pair[1]];
  if (d.owner !== undefined) o.owner = d.owner;
  if (d.tensor !== undefined) o.tensor = d.tensor;
  return o;
}

export function buildKat(): Kat {
  const canonical = CANONICAL_INPUTS.map(({ name, value }) => ({
    name, value,
    encoding: hex(canonicalEncode(fromJson(value))),
    hash: { domain: 'fedlora/kat', hex: hex(hashCanonical('fedlora/kat', fromJson(value))) },
  }));
  const prefixes = [['fedlora-hash-v1', 'fedlora/kat'], ['fedlora-sig-v1', 'fedlora/kat'], ['fedlora-hkdf-v1', 'fedlora/prg/v2'], ['fedlora-hkdf-v1', 'fedlora/seal-key/v2']]
    .map(([tag, domain]) => ({ tag: tag!, domain: domain!, hex: hex(domainPrefix(tag!, domain!)) }));

  const id = identityFromSeed(SIGN_SEED);
  const signedValue: JsonValue = { round: 1, modelHash: 'sha256:00', ids: ['a', 'b'] };
  const signature = { seed: hex(SIGN_SEED), publicKey: hex(id.publicKey), domain: 'fedlora/kat', value: signedValue, signature: hex(signMessage('fedlora/kat', fromJson(signedValue), id.secretKey)) };

  const maskKey = MASK_DOMAINS.map(({ name, domain }) => {
    const key = deriveMaskKey(MASK_SEED, domain);
    const words = expandMask(key, 8);
    return { name, seed: hex(MASK_SEED), domain: domainJson(domain), key: hex(key), keystreamWords0to7: [...words].map((w) => w.toString(16).padStart(8, '0')).join(' ') };
  });

  const pkA = x25519Base(SEAL_SK_A), pkB = x25519Base(SEAL_SK_B);
  const key = sharedKey(pkB, SEAL_SK_A);
  const seal = {
    key: hex(key), nonce: hex(SEAL_NONCE),
    cases: SEAL_PAYLOADS.map(({ name, payload, ctx }) => {
      const plaintext = sealFrame(payload, ctx);
      return {
        name, payload: hex(payload),
        context: { ...ctx, session: typeof ctx.session === 'string' ? ctx.session : { $bytes: hex(ctx.session) } } as JsonValue,
        plaintext: hex(plaintext), box: hex(nacl.secretbox(plaintext, SEAL_NONCE, key)),
      };
    }),
  };

  const coeffs = SHAMIR.coefficients;
  const shares = splitSecret(SHAMIR.secret, SHAMIR.n, SHAMIR.t, SHAMIR.xs, (k) => { if (k !== coeffs.length) throw new Error(`KAT RNG: asked ${k} bytes`); return coeffs.slice(); });

  return {
    protocolVersion: PROTOCOL_VERSION,
    note: 'Generated by test/crypto/kat.ts from fixed inputs; checked by test/crypto/kat.test.ts. Byte strings are hex; in canonical values {"$bytes": hex} is a Uint8Array and {"$u32": [...]} a Uint32Array. Specification: docs/SECURITY.md.',
    canonical, domainPrefix: prefixes, signature, maskKey,
    x25519: { skA: hex(SEAL_SK_A), pkA: hex(pkA), skB: hex(SEAL_SK_B), pkB: hex(pkB), shared: hex(x25519(SEAL_SK_A, pkB)) },
    seal,
    shamir: { secret: hex(SHAMIR.secret), n: SHAMIR.n, t: SHAMIR.t, xs: SHAMIR.xs, coefficients: hex(coeffs), shares: shares.map((s) => ({ x: s.x, y: hex(s.y) })) },
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1] && process.argv.includes('--write')) {
  writeFileSync(KAT_FILE, JSON.stringify(buildKat(), null, 2) + '\n');
  console.log(`wrote ${KAT_FILE}`);
}
