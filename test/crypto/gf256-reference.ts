/**
 * Reference GF(2^8) multiplication with the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11b), written
 * as the textbook shift-and-add loop: no tables, nothing shared with shared/crypto/shamir.ts (which
 * uses log/exp tables), so the two can check each other.
 */
export function gfMulReference(a: number, b: number): number {
  let p = 0;
  for (let i = 0; i < 8; i++) {
    if (b & 1) p ^= a;
    const hi = a & 0x80;
    a = (a << 1) & 0xff;
    if (hi) a ^= 0x1b;
    b >>= 1;
  }
  return p;
}
