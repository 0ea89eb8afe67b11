/** Worker child processes (worker.ts) with a request/response layer over IPC. */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { existsSync } from 'node:fs';
import { FedloraError } from '../../shared/errors.js';
import type { FromWorker, ToWorker, WorkerInit } from './messages.js';

/**
 * The worker's entry point. Compiled (dist/, an installed package): worker.js next to this file,
 * run by plain node: no TypeScript loader, tsx is a devDependency. From source (a clone, through
 * tsx): worker.ts with tsx as the child's loader.
 */
function workerEntry(): { file: string; execArgv: string[] } {
  if (import.meta.url.endsWith('.js')) {
    const js = fileURLToPath(new URL('./worker.js', import.meta.url));
    if (!existsSync(js)) throw new FedloraError('SIMULATION', `simulation worker ${js} is missing (an incomplete build?)`);
    return { file: js, execArgv: [] };
  }
  const ts = fileURLToPath(new URL('./worker.ts', import.meta.url));
  return { file: ts, execArgv: ['--import', import.meta.resolve('tsx')] };
}

type Job = Extract<ToWorker, { jobId: string }>;
type DistOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
export type JobRequest = DistOmit<Job, 'jobId'>;

export class SimWorker {
  readonly index: number;
  readonly proc: ChildProcess;
  backend = '';
  parameters = 0;
  #jobs = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #listeners = new Set<(m: FromWorker) => void>();
  #exited = false;
  #seq = 0;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(index: number, logLevel: string) {
    this.index = index;
    const { file, execArgv } = workerEntry();
    this.proc = fork(file, [], { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: { ...process.env, FEDLORA_LOG: logLevel } });
    this.proc.on('message', (m: FromWorker) => {
      if (m.type === 'result' || m.type === 'jobError') {
        const j = this.#jobs.get(m.jobId);
        this.#jobs.delete(m.jobId);
        if (m.type === 'result') j?.resolve(m.result);
        else j?.reject(new FedloraError('SIMULATION', `worker ${index}: ${m.message}`));
        return;
      }
      for (const l of this.#listeners) l(m);
    });
    this.exited = new Promise((res) => this.proc.once('exit', (code, signal) => {
      this.#exited = true;
      for (const j of this.#jobs.values()) j.reject(new FedloraError('SIMULATION', `worker ${index} exited (${signal ?? code}) with a job pending`));
      this.#jobs.clear();
      res({ code, signal });
    }));
  }

  get alive(): boolean { return !this.#exited; }

  on(fn: (m: FromWorker) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  post(m: ToWorker): void {
    if (!this.#exited && this.proc.connected) this.proc.send(m);
  }

  async start(init: WorkerInit): Promise<void> {
    await new Promise<void>((res, rej) => {
      const off = this.on((m) => {
        if (m.type === 'ready') { this.backend = m.backend; this.parameters = m.parameters; off(); res(); }
        if (m.type === 'fatal') { off(); rej(new FedloraError('SIMULATION', `worker ${this.index} failed to start: ${m.message}`)); }
      });
      void this.exited.then((e) => rej(new FedloraError('SIMULATION', `worker ${this.index} exited during start (${e.signal ?? e.code})`)));
      this.post(init);
    });
  }

  /** Sends a job (local / central / eval) and resolves with its result. */
  job<R>(m: JobRequest): Promise<R> {
    const jobId = `j${this.index}-${++this.#seq}`;
    return new Promise<R>((resolve, reject) => {
      if (this.#exited) { reject(new FedloraError('SIMULATION', `worker ${this.index} is not running`)); return; }
      this.#jobs.set(jobId, { resolve: resolve as (v: unknown) => void, reject });
      this.post({ ...m, jobId } as ToWorker);
    });
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (!this.#exited) this.proc.kill(signal);
  }

  async stop(): Promise<void> {
    if (this.#exited) return;
    this.post({ type: 'exit' });
    const t = setTimeout(() => this.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(t);
  }
}
