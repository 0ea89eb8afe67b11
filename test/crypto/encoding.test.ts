import { expect } from 'chai';
import type { CryptoError } from '../../shared/errors.js';
import { bytesEqual, fromBase64Url, toBase64Url, toHex } from '../../shared/crypto/index.js';

const utf8 = (s: string) => new TextEncoder().encode(s);
function code(f: () => unknown): string {
  try { f(); } catch (e) { return (e as CryptoError).code ?? 'no-code'; }
  return 'did-not-throw';
}

describe('crypto/encoding helpers (Node built-ins)', () => {
  it('base64url: RFC 4648 test vectors without padding, the URL-safe alphabet, and a strict decoder', () => {
    const vectors: [string, string][] = [['', ''], ['f', 'Zg'], ['fo', 'Zm8'], ['foo', 'Zm9v'], ['foob', 'Zm9vYg'], ['fooba', 'Zm9vYmE'], ['foobar', 'Zm9vYmFy']];
    for (const [plain, enc] of vectors) {
      expect(toBase64Url(utf8(plain))).to.equal(enc);
      expect(toHex(fromBase64Url(enc))).to.equal(toHex(utf8(plain)));
    }
    expect(toBase64Url(Uint8Array.of(0xfb, 0xff, 0xbf))).to.equal('-_-_');
    expect(toBase64Url(new Uint8Array(Uint8Array.of(9, 0xfb, 0xff).buffer, 1, 2))).to.equal('-_8'); // a view, not the whole buffer
    for (const bad of ['Zg==', 'Zm9v+', 'a/b', 'Z', 'Zm9vY', 'a b', 'Zm9v\n']) expect(code(() => fromBase64Url(bad)), JSON.stringify(bad)).to.equal('CRYPTO_BAD_ENCODING');
  });

  it('hex and constant-time equality', () => {
    expect(toHex(Uint8Array.of(0, 1, 0xab, 0xff))).to.equal('0001abff');
    expect(bytesEqual(Uint8Array.of(1, 2, 3), Uint8Array.of(1, 2, 3))).to.equal(true);
    expect(bytesEqual(Uint8Array.of(1, 2, 3), Uint8Array.of(1, 2, 4))).to.equal(false);
    expect(bytesEqual(Uint8Array.of(1, 2, 3), Uint8Array.of(1, 2))).to.equal(false);
    expect(bytesEqual(new Uint8Array(0), new Uint8Array(0))).to.equal(true);
    const big = new Uint8Array(64).fill(7);
    expect(bytesEqual(big.subarray(8, 40), new Uint8Array(32).fill(7))).to.equal(true);
  });
});
