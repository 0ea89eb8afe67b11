/**
 * The one table of aggregation strategies, keyed by name. Every list of strategy names (CLI help and
 * validation, wire guards, scenario validation) is read from here, so a strategy registered before
 * those run is selectable everywhere. The built-ins are registered when this module loads.
 */
import { ConfigError } from '../errors.js';
import { fedAvgMStrategy } from './fedavgm.js';
import { loraXsStrategy } from './lora-xs.js';
import { linearStrategy, type Strategy } from './strategy.js';

/** Lower-case, CLI- and wire-safe (fits the protocol's ID_RE), never an Object.prototype key. */
const NAME_RE = /^[a-z][a-z0-9._-]{0,63}$/;

const table = new Map<string, Strategy>();
const builtIn = new Set<string>();

function check(strategy: Strategy): void {
  if (typeof strategy !== 'object' || strategy === null) throw new ConfigError('registerStrategy needs a strategy object');
  const { name } = strategy;
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw new ConfigError(`strategy name ${JSON.stringify(name)} must match ${NAME_RE} (lower-case letters, digits, ".", "_", "-")`);
  }
  if (typeof strategy.description !== 'string' || strategy.description.trim() === '') throw new ConfigError(`strategy ${name}: description must be a non-empty string`);
  if (typeof strategy.refactorable !== 'boolean') throw new ConfigError(`strategy ${name}: refactorable must be true or false`);
  for (const m of ['isShared', 'isPersonal', 'isTrainable', 'contribution', 'finalize', 'init', 'createServer'] as const) {
    if (typeof strategy[m] !== 'function') throw new ConfigError(`strategy ${name}: ${m} must be a function`);
  }
}

/**
 * Adds a strategy under its name. A taken name is refused unless `replace` is set; built-ins can
 * never be replaced, because peers that did not re-register would disagree on what the name means.
 */
export function registerStrategy(strategy: Strategy, options: { replace?: boolean } = {}): Strategy {
  check(strategy);
  if (builtIn.has(strategy.name)) throw new ConfigError(`strategy ${strategy.name} is built in and cannot be replaced`);
  if (table.has(strategy.name) && options.replace !== true) throw new ConfigError(`strategy ${strategy.name} is already registered`);
  table.set(strategy.name, strategy);
  return strategy;
}

/** Removes a strategy registered with registerStrategy (tests, plugins); built-ins stay. Returns whether it was there. */
export function unregisterStrategy(name: string): boolean {
  if (builtIn.has(name)) throw new ConfigError(`strategy ${name} is built in and cannot be unregistered`);
  return table.delete(name);
}

export function hasStrategy(name: unknown): boolean {
  return typeof name === 'string' && table.has(name);
}

/** Registered names, built-ins first, then in registration order. */
export function strategyNames(): string[] {
  return [...table.keys()];
}

export function getStrategy(name: string): Strategy {
  const s = typeof name === 'string' ? table.get(name) : undefined;
  if (!s) throw new ConfigError(`unknown aggregation strategy ${JSON.stringify(name)}; choose one of ${strategyNames().join(', ')}`);
  return s;
}

const BUILT_INS: Strategy[] = [
  linearStrategy({
    name: 'fedit',
    description: 'FedIT: per-tensor weighted average of zero-padded A and B (weights = example counts); a rank slot a client lacks counts as zero',
    shareA: true, shareB: true, personalA: false, personalB: false, trainA: true, divisor: 'total', refactorable: true,
  }),
  linearStrategy({
    name: 'ffa',
    description: 'FFA-LoRA: A frozen from the shared seed, only B trained and averaged, so the global product is exactly the weighted mean of client products; half the upload',
    shareA: false, shareB: true, personalA: false, personalB: false, trainA: false, divisor: 'total', refactorable: false,
  }),
  linearStrategy({
    name: 'rank-aware',
    description: 'rank-aware: rank slot j (row j of A, column j of B) averaged only over clients whose rank exceeds j',
    shareA: true, shareB: true, personalA: false, personalB: false, trainA: true, divisor: 'slot', refactorable: true,
  }),
  linearStrategy({
    name: 'fedsa',
    description: 'FedSA-LoRA: A shared and averaged rank-aware, B personal to each client and never uploaded',
    shareA: true, shareB: false, personalA: false, personalB: true, trainA: true, divisor: 'slot', refactorable: false,
  }),
  fedAvgMStrategy(),
  loraXsStrategy(),
];

for (const s of BUILT_INS) {
  registerStrategy(s);
  builtIn.add(s.name);
}
