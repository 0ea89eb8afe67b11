/** Spawns the real CLI (`node --import tsx bin/fedlora.ts …`) and waits on its output and exit. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

export interface Exit { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

export class Cli {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exit: Promise<Exit>;
  #waiters: (() => void)[] = [];

  constructor(args: string[], env: Record<string, string> = {}) {
    this.child = spawn(process.execPath, ['--import', 'tsx', 'bin/fedlora.ts', ...args], { env: { ...process.env, FEDLORA_LOG: 'info', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => { this.stdout += d; this.#wake(); });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => { this.stderr += d; this.#wake(); });
    this.exit = new Promise((res) => this.child.once('close', (code, signal) => { this.#wake(); res({ code, signal, stdout: this.stdout, stderr: this.stderr }); }));
  }

  #wake(): void { for (const w of this.#waiters.splice(0)) w(); }

  /** Resolves with the match once `re` matches the stream; rejects if the process exits first or after `ms`. */
  waitFor(stream: 'stdout' | 'stderr', re: RegExp, ms = 30_000): Promise<RegExpMatchArray> {
    return new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error(`no ${re} on ${stream} within ${ms} ms; stderr:\n${this.stderr.slice(-3000)}`)), ms);
      const check = () => {
        const m = this[stream].match(re);
        if (m) { clearTimeout(t); res(m); return; }
        if (this.child.exitCode !== null || this.child.signalCode !== null) {
          clearTimeout(t);
          rej(new Error(`exited (${this.child.exitCode ?? this.child.signalCode}) before ${re} on ${stream}; stderr:\n${this.stderr.slice(-3000)}`));
          return;
        }
        this.#waiters.push(check);
      };
      check();
    });
  }

  kill(): Promise<Exit> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    return this.exit;
  }
}

/** Runs the CLI to completion. */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<Exit> {
  return new Cli(args, env).exit;
}

/** A self-signed certificate for 127.0.0.1 made with openssl (as test/coordinator/tls.test.ts does). */
export function makeCert(dir: string): { cert: string; key: string } {
  const cert = join(dir, 'cert.pem'), key = join(dir, 'key.pem');
  const p = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'ignore' });
  if (p.status !== 0) throw new Error('openssl could not create a test certificate (install the Debian package openssl)');
  return { cert, key };
}
