import { CryptoError } from '../errors.js';

/**
 * Machine-readable reasons for a refused crypto check. Every failure is a CryptoError (so callers
 * that only care about "crypto failed" can catch the class); `code` says precisely why, so the wire
 * layer can answer `{ok:false, code}` and tests can assert the reason rather than a message.
 */
export type CryptoCode =
  | 'CRYPTO_BAD_ENCODING'      // malformed key / identity file / canonical value / message shape
  | 'CRYPTO_BAD_SIGNATURE'     // Ed25519 signature does not verify
  | 'CRYPTO_UNKNOWN_KEY'       // public key not on the allowlist / not a participant
  | 'CRYPTO_REVOKED'           // key is on the allowlist but revoked
  | 'CRYPTO_JOIN_REPLAY'       // join challenge already used (or never issued)
  | 'CRYPTO_JOIN_EXPIRED'      // join challenge past its deadline
  | 'CRYPTO_JOIN_BINDING'      // proof was made for another connection / coordinator
  | 'CRYPTO_SEAL_TAMPERED'     // authenticated decryption failed (flipped byte, wrong key)
  | 'CRYPTO_SEAL_CONTEXT'      // decrypted fine but for another session/round/sender/recipient/kind
  | 'CRYPTO_SHARE_INVALID'     // Shamir share malformed or fails its commitment
  | 'CRYPTO_SHARE_INSUFFICIENT'// fewer than t usable shares
  | 'CRYPTO_RECONSTRUCT'       // shares combine to a secret that fails its commitment
  | 'CRYPTO_QUANT_OVERFLOW'    // fixed-point parameters could overflow the modulus
  | 'CRYPTO_QUANT_INPUT'       // non-finite input, bad weight, wrong length
  | 'SECAGG_PHASE'             // a state-machine method called out of order / twice
  | 'SECAGG_MESSAGE'           // malformed, misaddressed, duplicated or unexpected message
  | 'SECAGG_SURVIVORS'         // survivor list inconsistent -> client aborts
  | 'SECAGG_THRESHOLD'         // fewer than t members left in a neighbourhood
  | 'SECAGG_PARAMS';           // invalid round parameters

export function cryptoError(code: CryptoCode, message: string, cause?: unknown): CryptoError {
  const e = new CryptoError(`${code}: ${message}`, cause === undefined ? undefined : { cause });
  // FedloraError sets `code` in its constructor; refine it to the specific reason.
  Object.defineProperty(e, 'code', { value: code, enumerable: true, writable: false, configurable: true });
  return e;
}

export function fail(code: CryptoCode, message: string, cause?: unknown): never {
  throw cryptoError(code, message, cause);
}

/** Why secure aggregation could not recover one dealer's secret. */
export interface DealerBlame {
  dealer: string;
  /** b: self-mask seed of a survivor; s: mask key of a participant that dropped after sharing. */
  kind: 'b' | 's';
  /** insufficient-shares: fewer than t usable shares (rejected envelopes, dropped holders);
   *  inconsistent-shares: t or more shares that match the dealer's own commitments yet do not
   *  reconstruct the secret it committed to (only the dealer can cause that). */
  reason: 'insufficient-shares' | 'inconsistent-shares';
  /** Valid shares at finalize; at an earlier close step, holders still able to reveal one. */
  shares: number;
  /** Holders that reported this dealer's share envelope as unopenable or invalid. */
  complaints: string[];
  /** Other holders that gave (or, at an earlier close step, will give) no valid share: dropped,
   *  silent, or revealed a share failing its commitment. Culprits with empty `complaints` failed
   *  because of these, not by their own doing. */
  missing: string[];
}

/**
 * A round that failed because particular dealers' secrets cannot be recovered. Still a CryptoError
 * with the usual specific `code`; `culprits` names the dealers so the coordinator can leave them
 * out of the retry instead of failing the same way again.
 */
export class SecAggBlameError extends CryptoError {
  readonly culprits: string[];
  readonly blame: DealerBlame[];
  constructor(code: CryptoCode, message: string, blame: DealerBlame[]) {
    super(`${code}: ${message}`);
    Object.defineProperty(this, 'code', { value: code, enumerable: true, writable: false, configurable: true });
    this.blame = blame;
    this.culprits = [...new Set(blame.map((b) => b.dealer))].sort();
  }
}
