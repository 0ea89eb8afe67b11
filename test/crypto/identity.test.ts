import { expect } from 'chai';
import nacl from 'tweetnacl';
import { mkdtemp, readFile, stat, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CryptoError } from '../../shared/errors.js';
import {
  generateIdentity, saveIdentity, loadIdentity, loadOrCreateIdentity, formatPublicKey, parsePublicKey,
  parseAuthorizedClients, signMessage, verifyMessage, ed25519Sign, ed25519Verify, makeJoinChallenge, proveJoin, JoinVerifier,
  signed, openSigned, SIGNING_DOMAINS, canonicalEncode,
} from '../../shared/crypto/index.js';
import { seededBytes, testRng } from './seed.js';

function code(f: () => unknown): string {
  try { f(); } catch (e) { return (e as CryptoError).code ?? 'no-code'; }
  return 'did-not-throw';
}

describe('crypto/identity', () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-id-')); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  it('saves with mode 0600, loads back, and loadOrCreate creates once', async () => {
    const id = generateIdentity();
    const f = join(dir, 'a.key');
    await saveIdentity(f, id);
    expect((await stat(f)).mode & 0o777).to.equal(0o600);
    const back = await loadIdentity(f);
    expect(Buffer.from(back.secretKey).equals(Buffer.from(id.secretKey))).to.equal(true);
    const g = join(dir, 'b.key');
    const first = await loadOrCreateIdentity(g);
    const second = await loadOrCreateIdentity(g);
    expect([first.created, second.created]).to.deep.equal([true, false]);
    expect(formatPublicKey(second.identity.publicKey)).to.equal(formatPublicKey(first.identity.publicKey));
    expect((await stat(g)).mode & 0o777).to.equal(0o600);
  });

  it('refuses corrupted or mismatched identity files', async () => {
    const f = join(dir, 'c.key');
    await saveIdentity(f, generateIdentity());
    const j = JSON.parse(await readFile(f, 'utf8'));
    j.publicKey = formatPublicKey(generateIdentity().publicKey);
    await writeFile(f, JSON.stringify(j));
    let c = ''; try { await loadIdentity(f); } catch (e) { c = (e as CryptoError).code; }
    expect(c).to.equal('CRYPTO_BAD_ENCODING');
    await writeFile(f, 'x'.repeat(10_000));
    c = ''; try { await loadIdentity(f); } catch (e) { c = (e as CryptoError).code; }
    expect(c).to.equal('CRYPTO_BAD_ENCODING');
  });

  it('prints and parses ed25519:<base64url> keys strictly', () => {
    const pk = generateIdentity().publicKey;
    const s = formatPublicKey(pk);
    expect(s).to.match(/^ed25519:[A-Za-z0-9_-]{43}$/);
    expect([...parsePublicKey(s)]).to.deep.equal([...pk]);
    for (const bad of ['ed25519:abc', s.slice(1), s + 'A', s.replace(/.$/, '+')]) expect(code(() => parsePublicKey(bad))).to.equal('CRYPTO_BAD_ENCODING');
  });

  it('parses the allowlist: names, comments, revocation in either order, duplicates refused', () => {
    const [a, b, c] = [generateIdentity(), generateIdentity(), generateIdentity()].map((i) => i.publicKey) as [Uint8Array, Uint8Array, Uint8Array];
    const text = [
      '# fedlora clients',
      `revoked ${formatPublicKey(c)}   # lost laptop`,
      `${formatPublicKey(a)} hospital A  # enrolled 2024`,
      '',
      `${formatPublicKey(b)}`,
      `${formatPublicKey(c)} bank C`,
    ].join('\n');
    const list = parseAuthorizedClients(text);
    expect(list.size).to.equal(3);
    expect(list.check(a).name).to.equal('hospital A');
    expect(list.check(b).name).to.equal(undefined);
    expect(code(() => list.check(c))).to.equal('CRYPTO_REVOKED');
    expect(list.get(c)!.name).to.equal('bank C');
    expect(code(() => list.check(generateIdentity().publicKey))).to.equal('CRYPTO_UNKNOWN_KEY');
    expect(code(() => parseAuthorizedClients(`${formatPublicKey(a)} x\n${formatPublicKey(a)} y`))).to.equal('CRYPTO_BAD_ENCODING');
    expect(() => parseAuthorizedClients('ed25519:nope name')).to.throw(/:1:/);
  });

  it('signatures are domain-separated and cover every field; key order does not matter', () => {
    const id = generateIdentity();
    const msg = { round: 3, modelHash: 'abc', participants: ['x', 'y'], nonce: new Uint8Array([1, 2]) };
    const sig = signMessage(SIGNING_DOMAINS.roundStart, msg, id.secretKey);
    expect(verifyMessage(SIGNING_DOMAINS.roundStart, { nonce: new Uint8Array([1, 2]), participants: ['x', 'y'], modelHash: 'abc', round: 3 }, sig, id.publicKey)).to.equal(true);
    expect(verifyMessage(SIGNING_DOMAINS.survivors, msg, sig, id.publicKey)).to.equal(false);
    expect(verifyMessage(SIGNING_DOMAINS.roundStart, { ...msg, round: 4 }, sig, id.publicKey)).to.equal(false);
    expect(verifyMessage(SIGNING_DOMAINS.roundStart, { ...msg, participants: ['x', 'y', 'z'] }, sig, id.publicKey)).to.equal(false);
    expect(verifyMessage(SIGNING_DOMAINS.roundStart, msg, sig, generateIdentity().publicKey)).to.equal(false);
    for (let i = 0; i < 64; i += 7) { const s2 = sig.slice(); s2[i]! ^= 1; expect(verifyMessage(SIGNING_DOMAINS.roundStart, msg, s2, id.publicKey)).to.equal(false); }
    // canonical encoding is injective on the obvious collisions
    expect(Buffer.from(canonicalEncode(['ab', 'c'])).equals(Buffer.from(canonicalEncode(['a', 'bc'])))).to.equal(false);
    expect(Buffer.from(canonicalEncode({ a: 1 })).equals(Buffer.from(canonicalEncode({ a: '1' })))).to.equal(false);
    const env = signed(SIGNING_DOMAINS.modelHash, { modelHash: 'h' }, id);
    expect(openSigned(SIGNING_DOMAINS.modelHash, env, id.publicKey)).to.deep.equal({ modelHash: 'h' });
    expect(code(() => openSigned(SIGNING_DOMAINS.modelHash, { ...env, body: { modelHash: 'g' } }, id.publicKey))).to.equal('CRYPTO_BAD_SIGNATURE');
    expect(code(() => openSigned(SIGNING_DOMAINS.modelHash, env, generateIdentity().publicKey))).to.equal('CRYPTO_UNKNOWN_KEY');
  });

  it('OpenSSL and tweetnacl Ed25519 agree (signatures interchangeable)', () => {
    const rng = testRng('identity:ed25519');
    for (let i = 0; i < 5; i++) {
      const kp = nacl.sign.keyPair(); const m = seededBytes(rng, 100 + i);
      const s1 = ed25519Sign(m, kp.secretKey), s2 = nacl.sign.detached(m, kp.secretKey);
      expect(Buffer.from(s1).equals(Buffer.from(s2))).to.equal(true);
      expect(ed25519Verify(m, s2, kp.publicKey)).to.equal(true);
      expect(nacl.sign.detached.verify(m, s1, kp.publicKey)).to.equal(true);
    }
  });

  describe('join', () => {
    const coord = generateIdentity();
    const alice = generateIdentity(), bob = generateIdentity(), eve = generateIdentity();
    const allow = parseAuthorizedClients(`${formatPublicKey(alice.publicKey)} alice\nrevoked ${formatPublicKey(bob.publicKey)} bob`);

    it('accepts an enrolled client once; replay, other connection, expiry, unknown and revoked are refused', () => {
      let now = 1_000_000;
      const v = new JoinVerifier({ coordinator: coord, authorized: allow, ttlMs: 1000, now: () => now });
      const ch = v.challenge('sock-1');
      const proof = proveJoin(ch, 'sock-1', alice);
      expect(v.verify(proof, 'sock-1').name).to.equal('alice');
      expect(code(() => v.verify(proof, 'sock-1'))).to.equal('CRYPTO_JOIN_REPLAY');
      const ch2 = v.challenge('sock-2');
      expect(code(() => v.verify(proveJoin(ch2, 'sock-2', alice), 'sock-3'))).to.equal('CRYPTO_JOIN_BINDING');
      expect(code(() => v.verify(proveJoin(ch2, 'sock-2', alice), 'sock-2'))).to.equal('CRYPTO_JOIN_REPLAY'); // a refused attempt burns the challenge
      const ch3 = v.challenge('s'); now += 1001;
      expect(code(() => v.verify(proveJoin(ch3, 's', alice), 's'))).to.equal('CRYPTO_JOIN_EXPIRED');
      const ch4 = v.challenge('s');
      expect(code(() => v.verify(proveJoin(ch4, 's', eve), 's'))).to.equal('CRYPTO_UNKNOWN_KEY');
      const ch5 = v.challenge('s');
      expect(code(() => v.verify(proveJoin(ch5, 's', bob), 's'))).to.equal('CRYPTO_REVOKED');
      const ch6 = v.challenge('s');
      const forged = { ...proveJoin(ch6, 's', eve), clientKey: alice.publicKey };
      expect(code(() => v.verify(forged, 's'))).to.equal('CRYPTO_BAD_SIGNATURE');
      expect(code(() => v.verify(proveJoin(makeJoinChallenge(coord.publicKey), 's', alice), 's'))).to.equal('CRYPTO_JOIN_REPLAY'); // never issued
      expect(code(() => v.verify({ nonce: 'x' }, 's'))).to.equal('CRYPTO_BAD_ENCODING');
    });

    it('a proof made for another coordinator does not verify', () => {
      const other = generateIdentity();
      const v = new JoinVerifier({ coordinator: coord, authorized: allow });
      const ch = v.challenge('s');
      const proof = proveJoin({ ...ch, coordinator: other.publicKey }, 's', alice);
      expect(code(() => v.verify(proof, 's'))).to.equal('CRYPTO_BAD_SIGNATURE');
    });

    it('allowAny accepts unknown keys but still refuses revoked ones; no allowlist without allowAny is an error', () => {
      const v = new JoinVerifier({ coordinator: coord, authorized: allow, allowAny: true });
      expect(v.verify(proveJoin(v.challenge('s'), 's', eve), 's').name).to.equal(undefined);
      expect(code(() => v.verify(proveJoin(v.challenge('s'), 's', bob), 's'))).to.equal('CRYPTO_REVOKED');
      expect(() => new JoinVerifier({ coordinator: coord })).to.throw();
    });
  });
});
