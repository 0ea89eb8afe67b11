import { expect } from 'chai';
import nacl from 'tweetnacl';
import { hkdfSync } from 'node:crypto';
import type { CryptoError } from '../../shared/errors.js';
import {
  type SealContext, generateBoxKeyPair, sealTo, openFrom, sealAnonymous, openAnonymous, sharedKey, sealWithKey, openWithKey,
  makeCoordinatorBoxKey, verifyCoordinatorBoxKey, generateIdentity, ReplayGuard, x25519, x25519Base, x25519KeyPair, SEAL_KEY_INFO_DOMAIN, domainPrefix,
} from '../../shared/crypto/index.js';
import { seededBytes, testRng } from './seed.js';

function code(f: () => unknown): string {
  try { f(); } catch (e) { return (e as CryptoError).code ?? 'no-code'; }
  return 'did-not-throw';
}

describe('crypto/seal', () => {
  // case data is seeded; box keys (alice, bob) come from real randomness like in production
  const rng = testRng('seal');
  const alice = generateBoxKeyPair(), bob = generateBoxKeyPair();
  const ctx: SealContext = { session: seededBytes(rng, 32), round: 7, sender: 'alice', recipient: 'coordinator', kind: 'secagg/masked' };
  const payload = seededBytes(rng, 300);

  it('round-trips; X25519 agrees with tweetnacl, the seal key with node:crypto HKDF', () => {
    expect([...openFrom(sealTo(payload, ctx, bob.publicKey, alice.secretKey), ctx, alice.publicKey, bob.secretKey)]).to.deep.equal([...payload]);
    const info = domainPrefix('fedlora-hkdf-v1', SEAL_KEY_INFO_DOMAIN);
    const ref = new Uint8Array(hkdfSync('sha256', nacl.scalarMult(alice.secretKey, bob.publicKey), new Uint8Array(0), info, 32));
    expect([...sharedKey(bob.publicKey, alice.secretKey)]).to.deep.equal([...ref]);
    expect([...sharedKey(alice.publicKey, bob.secretKey)]).to.deep.equal([...ref]);
    expect([...x25519(alice.secretKey, bob.publicKey)]).to.deep.equal([...nacl.scalarMult(alice.secretKey, bob.publicKey)]);
    expect([...x25519Base(alice.secretKey)]).to.deep.equal([...nacl.scalarMult.base(alice.secretKey)]);
  });

  it('generated key pairs agree with tweetnacl; a wiped secret key is not served its cached KeyObject', () => {
    const kp = x25519KeyPair();
    expect([...kp.publicKey]).to.deep.equal([...nacl.scalarMult.base(kp.secretKey)]);
    expect([...x25519(kp.secretKey, bob.publicKey)]).to.deep.equal([...nacl.scalarMult(kp.secretKey, bob.publicKey)]);
    kp.secretKey.set(seededBytes(rng, 32));
    expect([...x25519(kp.secretKey, bob.publicKey)]).to.deep.equal([...nacl.scalarMult(kp.secretKey, bob.publicKey)]);
  });

  it('refuses a low-order public key (all-zero shared secret) instead of deriving a known key', () => {
    const lowOrder = [new Uint8Array(32), Uint8Array.of(1, ...new Array<number>(31).fill(0))];
    for (const pk of lowOrder) {
      expect([...x25519(alice.secretKey, pk)]).to.deep.equal(new Array(32).fill(0));
      expect(code(() => sealTo(payload, ctx, pk, alice.secretKey))).to.equal('CRYPTO_BAD_ENCODING');
    }
  });

  it('every message kind: any flipped byte (nonce, MAC, ciphertext, ephemeral key) is rejected', () => {
    for (const kind of ['secagg/share', 'secagg/masked', 'secagg/unmask', 'capabilities', 'metrics']) {
      const c = { ...ctx, kind };
      const s = sealTo(payload, c, bob.publicKey, alice.secretKey);
      const total = s.nonce.length + s.box.length;
      for (let i = 0; i < total; i += 13) {
        const n = s.nonce.slice(), b = s.box.slice();
        if (i < n.length) n[i]! ^= 0x80; else b[i - n.length]! ^= 0x01;
        expect(code(() => openFrom({ nonce: n, box: b }, c, alice.publicKey, bob.secretKey)), `${kind}@${i}`).to.equal('CRYPTO_SEAL_TAMPERED');
      }
      const a = sealAnonymous(payload, c, bob.publicKey);
      const e = a.ephemeral.slice(); e[3]! ^= 4;
      expect(code(() => openAnonymous({ ...a, ephemeral: e }, c, bob.secretKey))).to.equal('CRYPTO_SEAL_TAMPERED');
      expect([...openAnonymous(a, c, bob.secretKey)]).to.deep.equal([...payload]);
    }
  });

  it('a payload replayed into another session/round/sender/recipient/kind is refused by name', () => {
    const key = sharedKey(bob.publicKey, alice.secretKey);
    const s = sealWithKey(payload, ctx, key);
    const variants: [keyof SealContext, SealContext][] = [
      ['session', { ...ctx, session: seededBytes(rng, 32) }],
      ['round', { ...ctx, round: 8 }],
      ['sender', { ...ctx, sender: 'mallory' }],
      ['recipient', { ...ctx, recipient: 'bob' }],
      ['kind', { ...ctx, kind: 'secagg/unmask' }],
    ];
    for (const [field, c] of variants) {
      let err: CryptoError | undefined;
      try { openWithKey(s, c, key); } catch (e) { err = e as CryptoError; }
      expect(err?.code, field).to.equal('CRYPTO_SEAL_CONTEXT');
      expect(err?.message).to.include(field);
    }
    expect(code(() => openWithKey({ nonce: s.nonce }, ctx, key))).to.equal('CRYPTO_BAD_ENCODING');
    expect(code(() => openFrom(s, ctx, generateBoxKeyPair().publicKey, bob.secretKey))).to.equal('CRYPTO_SEAL_TAMPERED');
  });

  it('replay guard refuses the same sealed message twice', () => {
    const g = new ReplayGuard(4);
    const s = sealTo(payload, ctx, bob.publicKey, alice.secretKey);
    g.check(s);
    expect(code(() => g.check(s))).to.equal('SECAGG_MESSAGE');
  });

  it('coordinator box key is certified by its Ed25519 identity; clients seal to it', () => {
    const coord = generateIdentity();
    const now = 5_000_000;
    const { keyPair, certificate } = makeCoordinatorBoxKey(coord, 60_000, now);
    const pk = verifyCoordinatorBoxKey(certificate, coord.publicKey, now + 1);
    const sealed = sealAnonymous(payload, ctx, pk);
    expect([...openAnonymous(sealed, ctx, keyPair.secretKey)]).to.deep.equal([...payload]);
    expect(code(() => verifyCoordinatorBoxKey(certificate, generateIdentity().publicKey, now))).to.equal('CRYPTO_UNKNOWN_KEY');
    expect(code(() => verifyCoordinatorBoxKey({ ...certificate, boxPublicKey: generateBoxKeyPair().publicKey }, coord.publicKey, now))).to.equal('CRYPTO_BAD_SIGNATURE');
    expect(code(() => verifyCoordinatorBoxKey(certificate, coord.publicKey, now + 60_001))).to.equal('CRYPTO_JOIN_EXPIRED');
  });
});
