/**
 * TensorFlow.js backend selection. `auto` tries, in order: tfjs-node-gpu (libtensorflow + CUDA),
 * webgpu through Dawn for Node, wasm, pure-JS cpu — and records why each earlier one was skipped.
 * All fedlora tensor code imports tfjs from here so there is one tfjs-core instance.
 */
// tfjs-core alone (no @tensorflow/tfjs union): the backends below register into its engine, and
// gradients.ts registers the gradients training needs (see there why that takes a bundle).
import * as tf from '@tensorflow/tfjs-core';
import { readFileSync, readdirSync } from 'node:fs';
import { BackendError, errorMessage } from '../errors.js';
import { logger } from '../log.js';
import { registerGradients } from './gradients.js';
import { initThreadedWasm, threadsFromEnv } from './wasm-threads.js';
import { installWasmKernels } from './wasm-kernels.js';
import { installLeanBackprop } from './backprop.js';
import { installFusedKernels } from './fused-kernels.js';

await registerGradients();
// gradients and saved tensors freed during the backward pass (backprop.ts); FEDLORA_BACKPROP=stock keeps tfjs' own
if (process.env.FEDLORA_BACKPROP !== 'stock') installLeanBackprop();

export { tf };
export type BackendName = 'tensorflow' | 'webgpu' | 'wasm' | 'cpu';
export type BackendChoice = BackendName | 'auto';
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'];
const ORDER: readonly BackendName[] = ['tensorflow', 'webgpu', 'wasm', 'cpu'];

const log = logger('fedlora:backend');

export interface BackendSelection {
  name: BackendName;
  /** Threads the backend computes with (wasm: XNNPACK's pool; 1 = single-threaded). */
  threads: number;
  /** Why fewer threads than asked for run (threaded wasm failed to start, or another backend). */
  threadsNote?: string;
  /** Why each backend tried before the chosen one was skipped. */
  skipped: Array<{ name: BackendName; reason: string }>;
}

let current: BackendSelection | null = null;
let lastAuto: BackendSelection | null = null;

/** Imports an optional dependency; a missing one becomes a one-line reason, not a stack trace. */
async function optional(name: string): Promise<unknown> {
  try {
    return await import(/* webpackIgnore: true */ name);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if ((code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') && errorMessage(e).includes(name)) {
      throw new Error(`${name} is not installed (an optional dependency)`);
    }
    throw e;
  }
}

async function tryTensorflow(): Promise<void> {
  // Optional dependency: absent where its install could not download libtensorflow.
  await optional('@tensorflow/tfjs-node-gpu');
  if (!tf.findBackend('tensorflow')) throw new Error('tfjs-node-gpu loaded but registered no "tensorflow" backend');
}

async function tryWebgpu(): Promise<void> {
  const g = globalThis as unknown as { navigator?: { gpu?: unknown } };
  if (!g.navigator?.gpu) {
    // loading Dawn where no GPU can exist prints Vulkan/XDG warnings straight to stderr: look for a device first
    const none = noGpuDevice();
    if (none) throw new Error(none);
    // optional dependencies: Dawn for Node (webgpu) and tfjs-backend-webgpu; either missing → next backend
    const dawn = (await optional('webgpu')) as { create: (o: string[]) => unknown; globals: Record<string, unknown> };
    Object.assign(globalThis, dawn.globals);
    const gpu = dawn.create([]) as { requestAdapter(): Promise<unknown> };
    const adapter = await gpu.requestAdapter();
    if (!adapter) throw new Error('Dawn found no GPU adapter (no Vulkan device)');
    // tfjs-backend-webgpu registers itself only if navigator.gpu exists at import time.
    Object.defineProperty(globalThis, 'navigator', { value: { ...(g.navigator ?? {}), gpu }, configurable: true, writable: true });
  }
  await optional('@tensorflow/tfjs-backend-webgpu');
}

/**
 * On Linux, Dawn runs on Vulkan: it needs a GPU device node (DRM render node, NVIDIA device, or WSL's
 * /dev/dxg), the Vulkan loader (libvulkan.so.1) and an installed driver manifest (ICD). Without any
 * of them it can only fail, and it says so straight to stderr (Vulkan and XDG_RUNTIME_DIR warnings
 * that no log level silences), so it is not loaded. Returns why webgpu is skipped, or null to try it.
 * FEDLORA_WEBGPU_PROBE=0 skips this check.
 */
function noGpuDevice(): string | null {
  if (process.platform !== 'linux' || process.env.FEDLORA_WEBGPU_PROBE === '0') return null;
  const list = (dir: string) => { try { return readdirSync(dir); } catch { return []; } };
  const device = list('/dev/dri').some((n) => n.startsWith('renderD')) || list('/dev').some((n) => /^nvidia\d+$/.test(n) || n === 'dxg');
  if (!device) return 'no GPU device (/dev/dri/renderD*, /dev/nvidia*, /dev/dxg); Dawn not loaded';
  const libDirs = [...(process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean), '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib', '/lib/x86_64-linux-gnu', '/lib64', '/usr/local/lib'];
  let loader = libDirs.some((d) => list(d).includes('libvulkan.so.1'));
  if (!loader) { try { loader = readFileSync('/etc/ld.so.cache').includes('libvulkan.so.1'); } catch { /* no cache */ } }
  if (!loader) return 'a GPU device but no Vulkan loader (libvulkan.so.1); Dawn not loaded';
  const icdDirs = ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d', '/usr/local/share/vulkan/icd.d', `${process.env.HOME ?? ''}/.local/share/vulkan/icd.d`];
  const icd = !!(process.env.VK_ICD_FILENAMES || process.env.VK_DRIVER_FILES) || icdDirs.some((d) => list(d).some((n) => n.endsWith('.json')));
  if (!icd) return 'a GPU device but no Vulkan driver manifest (vulkan/icd.d/*.json); Dawn not loaded';
  return null;
}

let wantThreads: number | null = null;
let wasmThreads = 1;
let wasmThreadsNote: string | undefined;
/** The wasm module initialises once per process; its thread count is fixed from then on. */
let wasmStarted = false;

/**
 * Threads for the wasm backend (`--threads`); call before the first backend selection. Without a call,
 * `FEDLORA_THREADS` decides (a number or `auto`), else 1. Once wasm has started, its pool size is fixed
 * for the life of the process: a different later request is logged and ignored.
 */
export function configureThreads(n: number | 'auto'): void {
  const v = n === 'auto' ? threadsFromEnv({ FEDLORA_THREADS: 'auto' }) : n;
  if (!Number.isInteger(v) || v < 1 || v > 64) throw new BackendError(`threads must be a whole number from 1 to 64 or "auto", got ${JSON.stringify(n)}`);
  if (current?.name === 'wasm' && tf.getBackend() === 'wasm' && v !== wasmThreads && wantThreads !== v) {
    log.info(`wasm already runs with ${wasmThreads} thread(s); --threads ${v} applies to a new process`);
  }
  wantThreads = v;
}

function requestedThreads(): number {
  if (wantThreads !== null) return wantThreads;
  try { return threadsFromEnv(); } catch (e) { throw new BackendError(errorMessage(e)); }
}

async function tryWasm(): Promise<void> {
  const wasm = (await import('@tensorflow/tfjs-backend-wasm')) as unknown as { setThreadsCount(n: number): void; getThreadsCount(): number };
  const n = requestedThreads();
  if (wasmStarted) return; // (tf.findBackend would itself start the module: not called here)
  wasmStarted = true;
  wasmThreads = 1;
  wasmThreadsNote = undefined;
  if (n < 2) return;
  try {
    wasmThreads = await initThreadedWasm(tf, wasm, n);
    if (wasmThreads < n) wasmThreadsNote = `tfjs caps the pool at ${wasmThreads}`;
  } catch (e) {
    wasmThreads = 1;
    wasmThreadsNote = `threaded wasm failed to start (${firstLine(errorMessage(e))}); running single-threaded`;
    log.info(wasmThreadsNote);
    wasm.setThreadsCount(1);
  }
}

async function tryCpu(): Promise<void> {
  await import('@tensorflow/tfjs-backend-cpu');
}

const LOADERS: Record<BackendName, () => Promise<void>> = { tensorflow: tryTensorflow, webgpu: tryWebgpu, wasm: tryWasm, cpu: tryCpu };

async function activate(name: BackendName): Promise<void> {
  // the cpu backend's "install tfjs-node" banner is a console.warn that tfjs leaves out in PROD mode
  if (name === 'cpu') tf.env().set('PROD', true);
  await LOADERS[name]();
  if (name === 'wasm') installWasmKernels();
  if (name === 'wasm' || name === 'cpu') installFusedKernels();
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
      const threads = name === 'wasm' ? wasmThreads : 1;
      const note = name === 'wasm' ? wasmThreadsNote : undefined;
      current = { name, skipped, threads, ...(note ? { threadsNote: note } : {}) };
      if (choice === 'auto') lastAuto = current;
      // one quiet line: the backend in use and why the earlier ones were skipped
      log.info(`using tfjs backend "${name}"${name === 'wasm' ? ` (${threads} thread${threads === 1 ? '' : 's'})` : ''}${skipped.length ? ` (skipped ${skipped.map((x) => `${x.name}: ${x.reason}`).join('; ')})` : ''}`);
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
