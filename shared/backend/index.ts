/**
 * TensorFlow.js backend selection. `auto` tries, in order: tfjs-node-gpu (libtensorflow + CUDA),
 * webgpu through Dawn for Node, wasm, pure-JS cpu — and records why each earlier one was skipped.
 * All fedlora tensor code imports tfjs from here so there is one tfjs-core instance.
 */
// The union package's node build registers every gradient (tfjs-core's ESM register_all_gradients
// cannot be imported by Node's ESM loader: it uses directory imports).
import * as tf from '@tensorflow/tfjs';
import { BackendError, errorMessage } from '../errors.js';
import { logger } from '../log.js';

export { tf };
export type BackendName = 'tensorflow' | 'webgpu' | 'wasm' | 'cpu';
export type BackendChoice = BackendName | 'auto';
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'];
const ORDER: readonly BackendName[] = ['tensorflow', 'webgpu', 'wasm', 'cpu'];

const log = logger('fedlora:backend');

export interface BackendSelection {
  name: BackendName;
  /** Why each backend tried before the chosen one was skipped. */
  skipped: Array<{ name: BackendName; reason: string }>;
}

let current: BackendSelection | null = null;
let lastAuto: BackendSelection | null = null;

async function tryTensorflow(): Promise<void> {
  // Optional dependency: absent where its install could not download libtensorflow.
  const mod = '@tensorflow/tfjs-node-gpu';
  await import(/* webpackIgnore: true */ mod);
  if (!tf.findBackend('tensorflow')) throw new Error('tfjs-node-gpu loaded but registered no "tensorflow" backend');
}

async function tryWebgpu(): Promise<void> {
  const g = globalThis as unknown as { navigator?: { gpu?: unknown } };
  if (!g.navigator?.gpu) {
    const dawn = (await import('webgpu')) as unknown as { create: (o: string[]) => unknown; globals: Record<string, unknown> };
    Object.assign(globalThis, dawn.globals);
    const gpu = dawn.create([]) as { requestAdapter(): Promise<unknown> };
    const adapter = await gpu.requestAdapter();
    if (!adapter) throw new Error('Dawn found no GPU adapter (no Vulkan device)');
    // tfjs-backend-webgpu registers itself only if navigator.gpu exists at import time.
    Object.defineProperty(globalThis, 'navigator', { value: { ...(g.navigator ?? {}), gpu }, configurable: true, writable: true });
  }
  await import('@tensorflow/tfjs-backend-webgpu');
}

async function tryWasm(): Promise<void> {
  await import('@tensorflow/tfjs-backend-wasm');
}

async function tryCpu(): Promise<void> {
  await import('@tensorflow/tfjs-backend-cpu');
}

const LOADERS: Record<BackendName, () => Promise<void>> = { tensorflow: tryTensorflow, webgpu: tryWebgpu, wasm: tryWasm, cpu: tryCpu };

async function activate(name: BackendName): Promise<void> {
  await LOADERS[name]();
  const ok = await tf.setBackend(name);
  if (!ok) throw new Error(`tf.setBackend('${name}') failed to initialise`);
  await tf.ready();
  // smoke test: a tiny matmul must give the right answer
  const r = tf.tidy(() => tf.matMul(tf.tensor2d([1, 2, 3, 4], [2, 2]), tf.tensor2d([1, 0, 0, 1], [2, 2])).dataSync());
  if (r[3] !== 4) throw new Error(`backend ${name} failed its smoke test`);
}

/** Selects (and initialises) a backend; idempotent for the same choice. */
export async function selectBackend(choice: BackendChoice | string = 'auto'): Promise<BackendSelection> {
  if (!(BACKEND_CHOICES as readonly string[]).includes(choice)) {
    throw new BackendError(`unknown backend "${choice}"; choose one of ${BACKEND_CHOICES.join(', ')}`);
  }
  // idempotent per choice: an earlier `auto` result (or the same explicit backend) is reused while active
  const prior = choice === 'auto' ? lastAuto : current;
  if (prior && (choice === 'auto' || choice === prior.name) && tf.getBackend() === prior.name) return prior;
  const candidates = choice === 'auto' ? ORDER : [choice as BackendName];
  const skipped: BackendSelection['skipped'] = [];
  for (const name of candidates) {
    try {
      await activate(name);
      current = { name, skipped };
      if (choice === 'auto') lastAuto = current;
      for (const s of skipped) log.info(`backend ${s.name} skipped: ${s.reason}`);
      log.info(`using tfjs backend "${name}"`);
      return current;
    } catch (e) {
      skipped.push({ name, reason: firstLine(errorMessage(e)) });
    }
  }
  throw new BackendError(`no usable backend: ${skipped.map((s) => `${s.name}: ${s.reason}`).join('; ')}`);
}

function firstLine(s: string): string {
  const l = s.split('\n')[0] ?? s;
  return l.length > 200 ? `${l.slice(0, 200)}…` : l;
}

export function currentBackend(): BackendSelection | null {
  return current;
}
