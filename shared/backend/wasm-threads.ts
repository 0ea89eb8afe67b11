/**
 * Multithreaded tfjs-backend-wasm under Node. tfjs ships a threaded-SIMD build (emscripten pthreads +
 * XNNPACK's thread pool) but turns it off in Node, and three things stand in the way of turning it on:
 *  1. the `WASM_HAS_MULTITHREAD_SUPPORT` flag is false (tfjs only probes browsers);
 *  2. emscripten starts its main script and pthread workers from `blob:` URLs, which Node's
 *     worker_threads cannot load: while the module initialises, `Blob` and `URL.createObjectURL` are
 *     replaced by versions that write each script to a file in a private temp folder (the main script
 *     gets a prelude defining the CommonJS names the bundle expects: `require$$N`, `__dirname`,
 *     `commonjsGlobal`; the worker script learns to pass file paths through `createObjectURL`);
 *  3. tfjs' backend.cc sizes the pool as min(requested, 8, logical cores / 2), so on a 2-core machine
 *     it would get one thread: `os.cpus()` reports at least 2 × N cores during initialisation only.
 * Then `setThreadsCount(N)`. Every global touched is restored before this returns; the temp folder
 * (the worker script the pool was started from) is removed when the process exits. Only XNNPACK
 * kernels (matMul, conv, some element-wise ops) use the pool; results are the same as single-threaded
 * (each output tile is computed by one thread, in the same order).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import type * as tfc from '@tensorflow/tfjs-core';

interface WasmModule { setThreadsCount(n: number): void; getThreadsCount(): number }

const MAIN_SCRIPT = 'var WasmBackendModuleThreadedSimd';
interface Unrefable { unref(): void }
const workers: Unrefable[] = [];
let unrefNew = false;

/**
 * The bundle assigns `globalThis.Worker = worker_threads.Worker` while it initialises and creates pool
 * threads with `new Worker(...)`. Running pool threads would keep the process alive after its work is
 * done, so the assignment is caught and the class wrapped: workers are recorded, and unref'd once the
 * pool is up (later ones at once).
 */
function catchWorkerClass(): () => void {
  const g = globalThis as Record<string, unknown>;
  const before = Object.getOwnPropertyDescriptor(g, 'Worker');
  let value: unknown = before?.value;
  Object.defineProperty(g, 'Worker', {
    configurable: true,
    get: () => value,
    set: (v: unknown) => {
      if (typeof v !== 'function') { value = v; return; }
      const W = v as new (...a: unknown[]) => Unrefable;
      value = class extends W {
        constructor(...a: unknown[]) {
          super(...a);
          if (unrefNew) this.unref(); else workers.push(this);
        }
      };
    },
  });
  // afterwards: a plain property holding whatever the bundle set (wrapped), as emscripten would leave it
  return () => { Object.defineProperty(g, 'Worker', { configurable: true, writable: true, enumerable: false, value }); };
}

/** Thread count for the wasm backend: `FEDLORA_THREADS` (a positive integer, or `auto` = every core), else 1. */
export function threadsFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.FEDLORA_THREADS?.trim();
  if (!v) return 1;
  if (v === 'auto') return defaultThreads();
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new RangeError(`FEDLORA_THREADS must be a whole number from 1 to 64 or "auto", got ${JSON.stringify(v)}`);
  return n;
}

/** Every core this process may use (the default for a real client or coordinator). tfjs caps the pool at 8. */
export function defaultThreads(): number {
  return Math.max(1, Math.min(8, typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length));
}

let tempDir: string | null = null;

/**
 * Initialises the `wasm` backend with `threads` threads (≥ 2). Resolves with the pool size tfjs reports
 * (`getThreadsCount()`); rejects, with every shim undone, when the threaded build cannot start — the
 * caller then initialises the single-threaded build.
 */
export async function initThreadedWasm(tf: typeof tfc, wasm: WasmModule, threads: number): Promise<number> {
  // FEDLORA_WASM_DIR: where the emscripten scripts are written (default: the OS temp folder)
  const dir = mkdtempSync(join(process.env.FEDLORA_WASM_DIR || os.tmpdir(), 'fedlora-wasm-'));
  const g = globalThis as unknown as { Blob: unknown };
  const realBlob = g.Blob;
  const realCreate = URL.createObjectURL;
  const realCpus = os.cpus;
  let n = 0;
  class FileBlob {
    readonly path: string;
    constructor(parts: unknown[]) {
      let s = parts.map(String).join('');
      if (s.startsWith(MAIN_SCRIPT)) {
        s = `var require$$0=require('fs'),require$$1=require('path'),require$$3=require('perf_hooks'),require$$4=require('os');var commonjsGlobal=globalThis;var __dirname=${JSON.stringify(dir)};\n${s}`;
      } else if (s.includes('nodeWorkerThreads')) {
        s = `URL.createObjectURL=(b)=>(b&&b.path)?b.path:String(b);\n${s}`;
      }
      this.path = join(dir, `part${n++}.js`);
      writeFileSync(this.path, s);
    }
  }
  const cores = 2 * threads;
  const releaseWorker = catchWorkerClass();
  try {
    g.Blob = FileBlob;
    URL.createObjectURL = ((b: unknown) => (b instanceof FileBlob ? b.path : realCreate(b as Blob))) as typeof URL.createObjectURL;
    os.cpus = () => { const c = realCpus(); while (c.length < cores && c.length > 0) c.push(c[0]!); return c; };
    tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
    wasm.setThreadsCount(threads);
    const ok = await tf.setBackend('wasm');
    if (!ok) throw new Error('the threaded-SIMD wasm module did not initialise');
    await tf.ready();
    const got = wasm.getThreadsCount();
    if (!(got >= 2)) throw new Error(`the threaded module started with ${got} thread(s)`);
    // the pool is up: its threads must not keep the process alive (nor must any started later)
    unrefNew = true;
    for (const w of workers.splice(0)) w.unref();
    tempDir = dir;
    process.once('exit', () => { try { rmSync(dir, { recursive: true, force: true }); } catch { /* best effort */ } });
    return got;
  } catch (e) {
    tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', false); // the single-threaded build next
    try { rmSync(dir, { recursive: true, force: true }); } catch { /* best effort */ }
    throw e;
  } finally {
    releaseWorker();
    g.Blob = realBlob;
    URL.createObjectURL = realCreate;
    os.cpus = realCpus;
  }
}

/** The folder the running pool's worker script lives in (null when single-threaded). */
export function threadedWasmDir(): string | null {
  return tempDir;
}
