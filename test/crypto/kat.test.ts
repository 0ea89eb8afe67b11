import { expect } from 'chai';
import { createCipheriv, hkdfSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import nacl from 'tweetnacl';
import { combine } from 'shamir-secret-sharing';
import { canonicalEncode, domainPrefix, openWithKey, type SealContext } from '../../shared/crypto/index.js';
import { PROTOCOL_VERSION } from '../../shared/protocol/events.js';
import { KAT_FILE, buildKat, type Kat } from './kat.js';
import { gfMulReference } from './gf256-reference.js';

const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));
const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');

describe('crypto/known-answer vectors (test/fixtures/kat/wire.json)', () => {
  const pinned = JSON.parse(readFileSync(KAT_FILE, 'utf8')) as Kat;
  const now = buildKat();

  it('the pinned vectors belong to this protocol version', () => {
    expect(pinned.protocolVersion).to.equal(PROTOCOL_VERSION);
  });

  // one `it` per section, so a wire change names what changed
  for (const section of ['canonical', 'domainPrefix', 'signature', 'maskKey', 'x25519', 'seal', 'shamir'] as const) {
    it(`${section}: the code regenerates the pinned bytes`, () => {
      expect(now[section], `${section} differs from ${KAT_FILE}; a deliberate wire change needs a PROTOCOL_VERSION bump and \`npx tsx test/crypto/kat.ts --write\``).to.deep.equal(pinned[section]);
    });
  }

  it('canonical: every encoding starts with its tag and each hash is the first 32 bytes of SHA-512 over the documented prefix', () => {
    const tags: Record<string, number> = { null: 0, false: 1, true: 2, zero: 3, number: 3, integer: 3, 'empty string': 4, 'utf8 string': 4, bytes: 5, 'uint32 array': 6, array: 7 };
    for (const c of pinned.canonical) {
      if (c.name in tags) expect(unhex(c.encoding)[0], c.name).to.equal(tags[c.name]);
      const h = nacl.hash(new Uint8Array([...domainPrefix('fedlora-hash-v1', c.hash.domain), ...unhex(c.encoding)])).slice(0, 32);
      expect(hex(h), c.name).to.equal(c.hash.hex);
    }
    expect(pinned.canonical.find((c) => c.name === 'utf8 string')!.encoding).to.equal('04' + '0000000a' + hex(new TextEncoder().encode('héllo ✓')));
  });

  it('signature: tweetnacl verifies it over the documented signed bytes', () => {
    const s = pinned.signature;
    const v = s.value as { round: number; modelHash: string; ids: string[] };
    const msg = new Uint8Array([...domainPrefix('fedlora-sig-v1', s.domain), ...canonicalEncode(v)]);
    expect(nacl.sign.detached.verify(msg, unhex(s.signature), unhex(s.publicKey))).to.equal(true);
    expect(hex(nacl.sign.keyPair.fromSeed(unhex(s.seed)).publicKey)).to.equal(s.publicKey);
  });

  it('maskKey: node:crypto HKDF-SHA256 and AES-256-CTR reproduce key and keystream from the documented inputs', () => {
    const info0 = domainPrefix('fedlora-hkdf-v1', 'fedlora/prg/v2');
    for (const m of pinned.maskKey) {
      const d = m.domain as Record<string, unknown>;
      const session = typeof d.session === 'string' ? d.session : unhex((d.session as { $bytes: string }).$bytes);
      const info = new Uint8Array([...info0, ...canonicalEncode({ ...d, session } as never)]);
      const key = new Uint8Array(hkdfSync('sha256', unhex(m.seed), new Uint8Array(0), info, 32));
      expect(hex(key), m.name).to.equal(m.key);
      const ks = createCipheriv('aes-256-ctr', key, new Uint8Array(16)).update(new Uint8Array(32));
      const words = Array.from({ length: 8 }, (_, i) => ks.readUInt32LE(4 * i).toString(16).padStart(8, '0')).join(' ');
      expect(words, m.name).to.equal(m.keystreamWords0to7);
    }
  });

  it('seal: tweetnacl X25519 + node:crypto HKDF give the key; the box opens to the framed plaintext', () => {
    const x = pinned.x25519;
    expect(hex(nacl.scalarMult.base(unhex(x.skA)))).to.equal(x.pkA);
    expect(hex(nacl.scalarMult(unhex(x.skB), unhex(x.pkA)))).to.equal(x.shared);
    const info = domainPrefix('fedlora-hkdf-v1', 'fedlora/seal-key/v2');
    expect(hex(new Uint8Array(hkdfSync('sha256', unhex(x.shared), new Uint8Array(0), info, 32)))).to.equal(pinned.seal.key);
    for (const c of pinned.seal.cases) {
      const plain = nacl.secretbox.open(unhex(c.box), unhex(pinned.seal.nonce), unhex(pinned.seal.key));
      expect(plain && hex(plain), c.name).to.equal(c.plaintext);
      const ctx = c.context as unknown as SealContext & { session: string | { $bytes: string } };
      const session = typeof ctx.session === 'string' ? ctx.session : unhex(ctx.session.$bytes);
      const json = JSON.stringify([1, typeof session === 'string' ? `s:${session}` : `b:${Buffer.from(session).toString('base64url')}`, ctx.round, ctx.sender, ctx.recipient, ctx.kind]);
      const head = Buffer.alloc(4); head.writeUInt32BE(Buffer.byteLength(json));
      expect(c.plaintext, c.name).to.equal(head.toString('hex') + Buffer.from(json).toString('hex') + c.payload);
      const opened = openWithKey({ nonce: unhex(pinned.seal.nonce), box: unhex(c.box) }, { ...ctx, session }, unhex(pinned.seal.key));
      expect(hex(opened), c.name).to.equal(c.payload);
    }
  });

  it('shamir: shares are the documented polynomials (reference GF(2^8) arithmetic) and shamir-secret-sharing combines them', async () => {
    const s = pinned.shamir, secret = unhex(s.secret), coeffs = unhex(s.coefficients), L = secret.length;
    for (const share of s.shares) {
      const y = unhex(share.y);
      for (let j = 0; j < L; j++) {
        // y = secret + c1·x + c2·x² + …, coefficient c of byte j at coeffs[(c−1)·L + j]
        let acc = secret[j]!, xp = 1;
        for (let c = 1; c < s.t; c++) { xp = gfMulReference(xp, share.x); acc ^= gfMulReference(coeffs[(c - 1) * L + j]!, xp); }
        expect(y[j], `x=${share.x} byte ${j}`).to.equal(acc);
      }
    }
    const theirs = s.shares.slice(1, 1 + s.t).map((sh) => new Uint8Array([...unhex(sh.y), sh.x]));
    expect(hex(await combine(theirs))).to.equal(s.secret);
  });
});
