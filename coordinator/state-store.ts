/**
 * Transitional entry point: the checkpoint store lives in ./store/checkpoint-store.ts. This file
 * stays because coordinator.ts (being rewritten) and bin/commands/export.ts import it.
 */
import { saveState as saveCheckpoint, type PersistedState, type ServerStrategyState, type StateToSave } from './store/checkpoint-store.js';
import type { LoraAdapter } from '../shared/lora/adapter.js';

export * from './store/checkpoint-store.js';

/**
 * saveState that also takes the pre-format-2 opaque `strategyState` (e.g. `{ initSeed, frozenA }`,
 * or `{}`), which callers not yet moved to ServerStrategyState still pass; it is kept as `meta` with
 * no server tensors. New code should import saveState from ./store/checkpoint-store.js.
 */
export async function saveState(
  stateDir: string,
  state: Omit<StateToSave, 'strategyState'> & { strategyState: ServerStrategyState | Record<string, unknown> },
  adapter: LoraAdapter,
): Promise<PersistedState> {
  const s = state.strategyState;
  const strategyState: ServerStrategyState = isServerStrategyState(s) ? s : { meta: s as ServerStrategyState['meta'], tensors: new Map() };
  return saveCheckpoint(stateDir, { ...state, strategyState }, adapter);
}

function isServerStrategyState(s: ServerStrategyState | Record<string, unknown>): s is ServerStrategyState {
  return 'meta' in s && s.tensors instanceof Map;
}
