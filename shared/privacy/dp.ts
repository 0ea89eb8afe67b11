/**
 * Client-level DP-FedAvg (McMahan et al. 2018) as fedlora runs it: what the coordinator announces
 * in round:start, how a client clips its whole shared update, how the fixed-point scale is chosen
 * so that the noisy sum never wraps around mod 2^32, and what one round costs in RDP.
 *
 *   central      clients clip to L2 ≤ S; the coordinator adds N(0, z²S²) to the unmasked sum.
 *   distributed  clients clip to L2 ≤ S, encode to fixed point (scale 2^f) and add their share of
 *                Skellam noise to the integers before masking; the coordinator only sees the
 *                noisy sum. Survivors' shares add up to Sk(m·μ_client) exactly.
 */
import { ConfigError, ProtocolError } from '../errors.js';
import type { QuantParams } from '../crypto/quantize.js';
import { PrivacyAccountant, type SkellamRound } from './accountant.js';
import { skellamTailBound } from './sampler.js';

export type DpMode = 'off' | 'central' | 'distributed';

/** Announced to every participant in round:start (signed with it). */
export interface DpRoundInfo {
  mode: 'central' | 'distributed';
  /** L2 clip S of a client's whole shared update (all shared tensors, zero-padded to maxRank). */
  clip: number;
  /** Noise multiplier z: noise std / S. */
  noise: number;
  /** Distributed: variance μ_client of the Skellam noise each client adds per coordinate, in fixed-point units. */
  clientVariance?: number;
}

/** Coordinator-side DP settings (CLI flags). */
export interface DpConfig {
  mode: 'central' | 'distributed';
  clip: number;
  noise: number;
  delta: number;
  /** Refuse rounds that would take ε above this; Infinity: account only. */
  targetEpsilon: number;
  /** Clients that could be sampled (q = clientsPerRound / population). */
  population: number;
  /** Distributed: each client adds noise for this dropout rate, e.g. 0.2 → ×1/(1−0.2) of its share. */
  dropoutRate: number;
}

export function validateDpConfig(c: DpConfig, clientsPerRound: number, secure: boolean): void {
  const pos = (v: number, flag: string) => { if (!(v > 0) || !Number.isFinite(v)) throw new ConfigError(`${flag} must be a positive number, got ${v}`); };
  pos(c.clip, '--dp-clip');
  pos(c.noise, '--dp-noise');
  if (!(c.delta > 0 && c.delta < 1)) throw new ConfigError(`--dp-delta must be in (0, 1), got ${c.delta}`);
  if (!(c.targetEpsilon > 0)) throw new ConfigError(`--dp-target-epsilon must be positive, got ${c.targetEpsilon}`);
  if (!Number.isInteger(c.population) || c.population < clientsPerRound) throw new ConfigError(`--dp-population (${c.population}) must be an integer ≥ --clients-per-round (${clientsPerRound})`);
  if (!(c.dropoutRate >= 0 && c.dropoutRate < 0.9)) throw new ConfigError(`--dp-dropout must be in [0, 0.9), got ${c.dropoutRate}`);
  if (c.mode === 'distributed' && !secure) throw new ConfigError('--dp distributed adds noise before masking and needs secure aggregation (drop --insecure-aggregation, or use --dp central)');
}

export function parseDpInfo(v: unknown, path = 'roundStart.dp'): DpRoundInfo {
  const bad = (m: string): never => { throw new ProtocolError('BAD_MESSAGE', `${path}: ${m}`); };
  if (!v || typeof v !== 'object' || Array.isArray(v)) bad('expected an object');
  const o = v as Record<string, unknown>;
  const num = (x: unknown, f: string, max: number): number => (typeof x === 'number' && x > 0 && x <= max ? x : bad(`${f} must be a number in (0, ${max}]`));
  const mode = o.mode === 'central' || o.mode === 'distributed' ? o.mode : bad('mode must be central or distributed');
  const info: DpRoundInfo = { mode, clip: num(o.clip, 'clip', 1e6), noise: num(o.noise, 'noise', 1e6) };
  if (mode === 'distributed') info.clientVariance = num(o.clientVariance, 'clientVariance', 2 * 2 ** 40);
  else if (o.clientVariance !== undefined) bad('clientVariance is for distributed noise only');
  return info;
}

/**
 * A client's check of the announced distributed noise: its share must be at least
 * z²(S·2^f)²/(n − 1), what the coordinator owes for the z it announces over n participants
 * (more is fine: over-provisioning for dropouts). Guards against a coordinator that announces z but
 * asks for less noise.
 */
export function checkDistributedShare(info: DpRoundInfo, fracBits: number, participants: number): void {
  if (info.mode !== 'distributed') return;
  const need = (info.noise * info.clip * 2 ** fracBits) ** 2 / Math.max(1, participants - 1);
  if (!(info.clientVariance! >= need * (1 - 1e-9))) {
    throw new ProtocolError('DP_NOISE', `announced Skellam variance ${info.clientVariance} per client is below z²(S·2^f)²/(n−1) = ${need.toExponential(4)} for z=${info.noise}, S=${info.clip}, f=${fracBits}, n=${participants}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Clipping

/**
 * Scales `x` (float32) so that its L2 norm is at most S, and, when it will be fixed-point encoded
 * at scale 2^f, so that the rounded integers still have norm ≤ S·2^f: rounding moves each non-zero
 * coordinate by at most 2^−(f+1), so the float vector is clipped to S − √nnz·2^−(f+1). A further
 * factor (1 − 2^−20) absorbs float32 rounding of the scaled entries.
 */
export function clipL2(x: Float32Array, S: number, fracBits?: number): Float32Array {
  let nnz = 0, sq = 0;
  for (let i = 0; i < x.length; i++) { const v = x[i]!; if (v !== 0) { nnz++; sq += v * v; } }
  const slack = fracBits === undefined ? 0 : Math.sqrt(nnz) * 2 ** -(fracBits + 1);
  const target = S - slack;
  if (!(target > 0)) throw new ProtocolError('DP_CLIP', `fixed-point rounding (√${nnz}·2^-${(fracBits ?? 0) + 1}) leaves no room under the L2 clip ${S}`);
  const norm = Math.sqrt(sq);
  if (norm <= target * (1 - 2 ** -20)) return x;
  const scale = (target / norm) * (1 - 2 ** -20);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i]! * scale;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Fixed point with noise headroom

/** Probability, per round, that the noise of one coordinate exceeds the headroom (union over the vector). */
export const WRAP_PROBABILITY = 2 ** -64;

export interface DpQuant {
  quant: QuantParams;
  /** Variance each client adds per coordinate (fixed-point units); 0 for central noise. */
  clientVariance: number;
  /** Bound on |total noise| per coordinate (fixed-point units) that holds except with WRAP_PROBABILITY. */
  noiseBound: number;
}

/**
 * The fixed-point parameters of a DP round with n sampled clients (weight 1 each) and vectors of
 * length d. Each client's coordinate is at most min(c, S) in magnitude, so the integer sum obeys
 *   |Σ q| ≤ n·(min(c,S)·2^f + ½) + B,   B = Chernoff bound on |Sk(V_max)| at WRAP_PROBABILITY/d,
 * with V_max the noise of all n clients; f is the largest scale for which that stays below 2^31
 * (so the signed reading of the sum mod 2^32 is exact), and at most the scale at which rounding
 * costs 1% of S (higher scales only inflate the Poisson draws).
 */
export function chooseDpQuant(o: { clip: number; dpClip: number; noise: number; clients: number; expectedClients?: number; dropoutRate?: number; length: number; distributed: boolean }): DpQuant {
  const n = o.clients, S = o.dpClip;
  const per = Math.min(o.clip, S);
  const share = o.distributed ? 1 / ((o.expectedClients ?? n) * (1 - (o.dropoutRate ?? 0))) : 0;
  const fits = (f: number) => {
    const scale = 2 ** f;
    const v = o.noise * o.noise * (S * scale) ** 2 * share;
    const B = o.distributed ? skellamTailBound(v * n, WRAP_PROBABILITY / o.length) : 0;
    return { ok: n * (per * scale + 0.5) + B < 2 ** 31, v, B };
  };
  const want = Math.ceil(Math.log2((100 * Math.sqrt(o.length)) / (2 * S)));
  let best = -1;
  for (let f = 0; f <= 40; f++) { if (fits(f).ok) best = f; else break; }
  if (best < 0) throw new ConfigError(`no fixed-point scale keeps ${n} clipped contributions and their noise below 2^31`);
  const f = Math.min(best, Math.max(want, 0));
  if (Math.sqrt(o.length) * 2 ** -(f + 1) >= S / 2) {
    throw new ConfigError(`fixed point at 2^-${f} rounds a ${o.length}-element update by up to ${(Math.sqrt(o.length) * 2 ** -(f + 1)).toExponential(2)}, too close to --dp-clip ${S}; raise --dp-clip or lower --clients-per-round`);
  }
  const r = fits(f);
  return { quant: { clip: o.clip, fracBits: f, maxTotalWeight: n, maxClients: n }, clientVariance: r.v, noiseBound: r.B };
}

// ---------------------------------------------------------------------------------------------
// What a round costs

export interface RoundPrivacy {
  mechanism: 'gaussian' | 'skellam';
  /** Effective noise multiplier of the noise the accountant counted. */
  z: number;
  q: number;
  /** Distributed: the Skellam round the accountant composed. */
  skellam?: SkellamRound;
}

/** Central noise: the sampled Gaussian at multiplier z. */
export function centralRound(z: number, q: number): RoundPrivacy { return { mechanism: 'gaussian', z, q }; }

/**
 * Distributed noise over `survivors` clients that each added Sk(clientVariance). A removed client
 * takes its own noise share with it, so only survivors − 1 shares are counted (add/remove
 * neighbouring). Sensitivities are those of one clipped client at scale 2^f: L2 ≤ S·2^f, and
 * L1 ≤ min(√d·L2, L2²) (integer vectors).
 */
export function distributedRound(o: { clientVariance: number; survivors: number; dpClip: number; fracBits: number; length: number; q: number }): RoundPrivacy {
  const l2 = o.dpClip * 2 ** o.fracBits;
  const variance = o.clientVariance * Math.max(1, o.survivors - 1);
  const skellam: SkellamRound = { variance, l2, l1: Math.min(Math.sqrt(o.length) * l2, l2 * l2) };
  return { mechanism: 'skellam', z: Math.sqrt(variance) / l2, q: o.q, skellam };
}

export function roundRdp(orders: readonly number[], r: RoundPrivacy): number[] {
  return r.mechanism === 'gaussian'
    ? PrivacyAccountant.roundRdp(orders, r.q, { mechanism: 'gaussian', z: r.z })
    : PrivacyAccountant.roundRdp(orders, r.q, { mechanism: 'skellam', skellam: r.skellam! });
}
