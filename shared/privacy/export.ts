/**
 * privacy.json: the (ε, δ) guarantee of an exported adapter, written next to its
 * adapter_config.json by the coordinator's --export and by `fedlora export`.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface PrivacyJson {
  /** Client-level (ε, δ)-DP of the released adapter; personal tensors are outside it. */
  guarantee: 'client-level (epsilon, delta)-DP';
  mode: 'central' | 'distributed';
  /** 'gaussian' (central) or 'skellam' (distributed, fixed-point). */
  mechanism: string;
  /** Noise multiplier of the last round as accounted (distributed: realized survivors less one). */
  z: number;
  /** L2 clip S of a client's whole shared update. */
  S: number;
  q: number;
  rounds: number;
  delta: number;
  epsilon: number;
  accountant: 'RDP (sampled Gaussian / sampled Skellam), classic conversion';
}

export function privacyJson(r: { mode: 'central' | 'distributed'; mechanism: string; z: number; clip: number; q: number; rounds: number; delta: number; epsilon: number }): PrivacyJson {
  return {
    guarantee: 'client-level (epsilon, delta)-DP', mode: r.mode, mechanism: r.mechanism, z: r.z, S: r.clip, q: r.q, rounds: r.rounds, delta: r.delta, epsilon: r.epsilon,
    accountant: 'RDP (sampled Gaussian / sampled Skellam), classic conversion',
  };
}

export async function writePrivacyJson(dir: string, r: Parameters<typeof privacyJson>[0]): Promise<void> {
  await writeFile(join(dir, 'privacy.json'), `${JSON.stringify(privacyJson(r), null, 2)}\n`);
}
