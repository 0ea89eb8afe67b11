/** `fedlora coordinator --role edge|leader` as child processes for the cluster tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import { waitFor } from '../coordinator/hostile-client.js';

export interface Proc { child: ChildProcess; log: string[]; exited: Promise<number | null>; kill(signal?: NodeJS.Signals): Promise<number | null> }

export function fedlora(args: string[]): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', 'bin/fedlora.ts', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const log: string[] = [];
  child.stdout!.on('data', (d: Buffer) => log.push(d.toString()));
  child.stderr!.on('data', (d: Buffer) => log.push(d.toString()));
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  return {
    child, log, exited,
    async kill(signal = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Starts an edge process; resolves with its client URL once it listens. */
export async function edgeProcess(redisUrl: string, prefix: string): Promise<Proc & { url: string }> {
  const p = fedlora(['coordinator', '--cluster', redisUrl, '--role', 'edge', '--cluster-prefix', prefix, '--port', '0']);
  const line = await waitFor('the edge to listen', () => /listening on (http:\/\/\S+)/.exec(p.log.join(''))?.[1] ?? (p.child.exitCode !== null ? Promise.reject(new Error(`edge exited: ${p.log.join('').slice(-500)}`)) : null), 30_000, 50);
  return Object.assign(p, { url: line });
}
