import { randomInt } from 'node:crypto';
import { Rng } from '../../shared/data/random.js';

/**
 * One seed per test process for generated cases (inputs, dropout patterns, tamper positions, random
 * globs), printed once so a failure reproduces with FEDLORA_TEST_SEED=<seed>. Secrets the protocol
 * itself draws (client keys, Shamir coefficients, salts) keep using real randomness: the tests must
 * exercise the code paths production runs.
 */
export const TEST_SEED: string = process.env.FEDLORA_TEST_SEED?.trim() || String(randomInt(0, 2 ** 31));

let announced = false;

/** A fresh generator for one test or helper; the label keeps streams of different tests apart. */
export function testRng(label: string): Rng {
  if (!announced) {
    announced = true;
    console.log(`      test seed ${TEST_SEED} (rerun with FEDLORA_TEST_SEED=${TEST_SEED})`);
  }
  return new Rng(`${TEST_SEED}:${label}`);
}

/** `n` bytes from a seeded generator (test inputs, not key material). */
export function seededBytes(rng: Rng, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.int(256);
  return out;
}
