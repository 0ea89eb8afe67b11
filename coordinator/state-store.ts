/**
 * Coordinator checkpoints under --state. Each completed round writes the global adapter (PEFT
 * format) into a fresh `checkpoint-<round>` folder via a temp folder + rename, then replaces
 * `state.json` atomically. state.json names the checkpoint, so a crash at any point leaves either
 * the previous or the new round fully visible, never a mix.
 */
import { mkdir, readFile, rename, rm, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError, ModelFormatError } from '../shared/errors.js';
import { atomicWrite } from '../shared/model/safetensors.js';
import { loadPeftAdapter, savePeftAdapter } from '../shared/lora/peft.js';
import type { LoraAdapter } from '../shared/lora/adapter.js';
import type { RoundRecord } from './metrics.js';

export const STATE_FORMAT = 1;

export interface PersistedState {
  format: number;
  modelId: string;
  strategy: string;
  maxRank: number;
  seed: number;
  loraAlpha: number;
  targetModules: string[];
  completedRounds: number;
  checkpoint: string;
  /** Strategy-specific state (e.g. the frozen-A seed under ffa); opaque JSON. */
  strategyState: Record<string, unknown>;
  history: RoundRecord[];
}

export interface LoadedState { state: PersistedState; adapter: LoraAdapter }

export async function loadState(stateDir: string): Promise<LoadedState | null> {
  let text: string;
  try {
    text = await readFile(join(stateDir, 'state.json'), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  let state: PersistedState;
  try { state = JSON.parse(text) as PersistedState; } catch { throw new ModelFormatError('state.json is not JSON', join(stateDir, 'state.json')); }
  if (state.format !== STATE_FORMAT || typeof state.checkpoint !== 'string' || !/^checkpoint-\d+$/.test(state.checkpoint) || !Number.isInteger(state.completedRounds)) {
    throw new ModelFormatError('state.json has an unknown format', join(stateDir, 'state.json'));
  }
  const adapter = await loadPeftAdapter(join(stateDir, state.checkpoint));
  return { state, adapter };
}

/** Refuses to resume a state written for a different model or federation setup. */
export function checkResumable(s: PersistedState, want: Pick<PersistedState, 'modelId' | 'strategy' | 'maxRank'>): void {
  for (const k of ['modelId', 'strategy', 'maxRank'] as const) {
    if (s[k] !== want[k]) throw new ConfigError(`--state holds a run with ${k}=${String(s[k])}, but this coordinator has ${k}=${String(want[k])}; use a fresh --state directory`);
  }
}

export async function saveState(stateDir: string, state: Omit<PersistedState, 'checkpoint' | 'format'>, adapter: LoraAdapter): Promise<PersistedState> {
  await mkdir(stateDir, { recursive: true });
  const checkpoint = `checkpoint-${String(state.completedRounds).padStart(6, '0')}`;
  const tmp = join(stateDir, `.${checkpoint}.tmp-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  await savePeftAdapter(adapter, tmp);
  await rm(join(stateDir, checkpoint), { recursive: true, force: true });
  await rename(tmp, join(stateDir, checkpoint));
  const full: PersistedState = { ...state, format: STATE_FORMAT, checkpoint };
  await atomicWrite(join(stateDir, 'state.json'), `${JSON.stringify(full, null, 1)}\n`);
  // older checkpoints are no longer referenced; keep the previous one as a fallback
  for (const n of await readdir(stateDir)) {
    const m = /^checkpoint-(\d+)$/.exec(n);
    if (m && Number(m[1]) < state.completedRounds - 1) await rm(join(stateDir, n), { recursive: true, force: true });
  }
  return full;
}
