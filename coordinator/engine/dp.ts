/**
 * The coordinator's side of client-level DP (docs/PRIVACY.md): per-attempt settings announced in
 * round:start, central Gaussian noise on the checked sum, the accountant (ε after every round,
 * restored from the last checkpointed round record), and the budget check before each round.
 */
import {
  CryptoUniform, PrivacyAccountant, centralRound, chooseDpQuant, distributedRound, roundRdp, sampleGaussian,
  type AccountantState, type DpConfig, type DpRoundInfo, type RoundPrivacy,
} from '../../shared/privacy/index.js';
import type { QuantParams } from '../../shared/crypto/index.js';
import type { RoundRecord } from '../metrics.js';
import { errorMessage } from '../../shared/errors.js';
import { logger } from '../../shared/log.js';

const log = logger('fedlora:coordinator:dp');

export interface DpAttempt {
  info: DpRoundInfo;
  /** Fixed-point parameters of a secure DP round (scale chosen with noise headroom). */
  quant?: QuantParams;
  /** Bound on |distributed noise| per coordinate, fixed-point units (0 for central noise). */
  noiseBound: number;
}

/** What a completed DP round records (round records, /status, report.json, privacy.json). */
export interface RoundPrivacyRecord {
  mode: 'central' | 'distributed';
  mechanism: RoundPrivacy['mechanism'];
  /** ε after this round (classic RDP conversion) at `delta`. */
  epsilon: number;
  delta: number;
  /** Noise multiplier the accountant counted for this round (distributed: realized survivors − 1). */
  z: number;
  /** L2 clip S. */
  clip: number;
  /** Sampling rate clients per round / population. */
  q: number;
  /** DP rounds composed so far. */
  rounds: number;
  survivors: number;
  /** Distributed: per-client Skellam variance (fixed-point units) and the fixed-point scale. */
  clientVariance?: number;
  fracBits?: number;
  /** Cumulative RDP at each order: lets a resumed coordinator continue the composition. */
  accountant: AccountantState;
}

export interface DpStatus {
  mode: 'central' | 'distributed';
  epsilon: number;
  delta: number;
  targetEpsilon: number | null;
  rounds: number;
  z: number;
  clip: number;
  q: number;
  population: number;
}

export class DpEngine {
  readonly #c: DpConfig;
  readonly #o: { clientsPerRound: number; minClients: number; clip: number; length: number };
  #acc: PrivacyAccountant;
  #uniform: CryptoUniform | null = null;

  constructor(c: DpConfig, o: { clientsPerRound: number; minClients: number; clip: number; length: number; history: readonly RoundRecord[] }) {
    this.#c = c;
    this.#o = o;
    // the latest record that carries the accountant (a distributed round whose checkpoint failed still counts)
    const last = [...o.history].reverse().find((r) => r.privacy);
    this.#acc = new PrivacyAccountant(last?.privacy?.accountant);
    // a fixed-point scale must exist for the largest round (ConfigError at start, not mid-run)
    if (c.mode === 'distributed') this.#quant(o.clientsPerRound);
  }

  get mode(): DpConfig['mode'] { return this.#c.mode; }
  get q(): number { return this.#o.clientsPerRound / this.#c.population; }
  get epsilon(): number { return this.#acc.epsilon(this.#c.delta); }

  status(): DpStatus {
    const c = this.#c;
    return {
      mode: c.mode, epsilon: this.epsilon, delta: c.delta, targetEpsilon: Number.isFinite(c.targetEpsilon) ? c.targetEpsilon : null,
      rounds: this.#acc.rounds, z: c.noise, clip: c.clip, q: this.q, population: c.population,
    };
  }

  /** Settings of an attempt over n participants. */
  prepare(n: number, secure: boolean): DpAttempt {
    const c = this.#c, info: DpRoundInfo = { mode: c.mode, clip: c.clip, noise: c.noise };
    if (!secure) return { info, noiseBound: 0 };
    const dq = this.#quant(n);
    if (c.mode === 'distributed') info.clientVariance = dq.clientVariance;
    return { info, quant: dq.quant, noiseBound: c.mode === 'distributed' ? dq.noiseBound : 0 };
  }

  #quant(n: number) {
    const c = this.#c;
    // each client adds 1/((n−1)(1−dropout)) of z²(S·2^f)²: the survivors less one carry the target noise
    return chooseDpQuant({
      clip: this.#o.clip, dpClip: c.clip, noise: c.noise, clients: n, expectedClients: Math.max(1, n - 1), dropoutRate: c.dropoutRate,
      length: this.#o.length, distributed: c.mode === 'distributed',
    });
  }

  /** The next round's cost under the least noise it may complete with (planned dropouts). */
  #preview(): RoundPrivacy {
    const c = this.#c;
    if (c.mode === 'central') return centralRound(c.noise, this.q);
    const n = this.#o.clientsPerRound;
    const dq = this.#quant(n);
    const survivors = Math.max(this.#o.minClients, Math.ceil(n * (1 - c.dropoutRate)));
    return distributedRound({ clientVariance: dq.clientVariance, survivors, dpClip: c.clip, fracBits: dq.quant.fracBits, length: this.#o.length, q: this.q });
  }

  readonly #rdpCache = new Map<string, number[]>();
  /** One round's RDP curve (the same settings recur every round; fractional orders are not free). */
  #rdp(r: RoundPrivacy): number[] {
    const key = JSON.stringify(r);
    let v = this.#rdpCache.get(key);
    if (!v) {
      v = roundRdp(this.#acc.orders, r);
      if (this.#rdpCache.size > 64) this.#rdpCache.clear();
      this.#rdpCache.set(key, v);
    }
    return v;
  }

  /** A reason to end the run instead of starting the next round, or null. */
  refuseNextRound(): string | null {
    const c = this.#c;
    if (!Number.isFinite(c.targetEpsilon)) return null;
    let next: number;
    try {
      next = this.#acc.epsilon(c.delta, this.#rdp(this.#preview()));
    } catch (e) {
      // never an engine failure: the attempt's own preparation reports it (and backs off)
      log.warn(`privacy budget check failed: ${errorMessage(e)}`);
      return null;
    }
    if (next <= c.targetEpsilon) return null;
    return `privacy budget: another round would take ε from ${this.epsilon.toFixed(4)} to ${next.toFixed(4)} > --dp-target-epsilon ${c.targetEpsilon} (δ=${c.delta})`;
  }

  /**
   * Central noise: adds N(0, z²S²) to every coordinate of the checked sum (Box–Muller on
   * node:crypto uniforms). Then composes the round into the accountant, from the noise actually
   * present (distributed: the realized survivors).
   */
  release(a: DpAttempt, sum: Float32Array, survivors: number): RoundPrivacyRecord {
    const c = this.#c;
    let round: RoundPrivacy;
    if (c.mode === 'central') {
      const u = this.#uniform ??= new CryptoUniform();
      const std = c.noise * c.clip;
      for (let i = 0; i < sum.length; i++) sum[i] = sum[i]! + std * sampleGaussian(u);
      round = centralRound(c.noise, this.q);
    } else {
      round = distributedRound({ clientVariance: a.info.clientVariance!, survivors, dpClip: c.clip, fracBits: a.quant!.fracBits, length: this.#o.length, q: this.q });
    }
    this.#acc.add(this.#rdp(round));
    return {
      mode: c.mode, mechanism: round.mechanism, epsilon: this.epsilon, delta: c.delta, z: round.z, clip: c.clip, q: this.q,
      rounds: this.#acc.rounds, survivors,
      ...(c.mode === 'distributed' ? { clientVariance: a.info.clientVariance!, fracBits: a.quant!.fracBits } : {}),
      accountant: this.#acc.serialize(),
    };
  }

  save(): AccountantState { return this.#acc.serialize(); }
  restore(s: AccountantState): void { this.#acc = new PrivacyAccountant(s); }
}
