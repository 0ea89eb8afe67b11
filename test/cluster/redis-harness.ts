/**
 * A real redis-server for the cluster tests: loopback only, a free port, no persistence. start()
 * resolves once the server says it accepts connections; stop() kills it and waits for the exit.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';

export interface RedisServer { url: string; port: number; stop(): Promise<void> }

const BIN = process.env.REDIS_SERVER ?? 'redis-server';

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => res(p)); });
  });
}

export async function startRedis(timeoutMs = 10_000): Promise<RedisServer> {
  const port = await freePort();
  const child: ChildProcess = spawn(BIN, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'yes'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  await new Promise<void>((res, rej) => {
    let out = '';
    const timer = setTimeout(() => { child.kill('SIGKILL'); rej(new Error(`redis-server did not start within ${timeoutMs} ms: ${out.slice(-500)}`)); }, timeoutMs);
    const onData = (d: Buffer) => {
      out += d.toString();
      if (out.includes('Ready to accept connections')) { clearTimeout(timer); child.stdout!.off('data', onData); res(); }
    };
    child.stdout!.on('data', onData);
    child.once('error', (e) => { clearTimeout(timer); rej(new Error(`cannot run ${BIN}: ${e.message} (install redis-server)`)); });
    child.once('exit', (code) => { clearTimeout(timer); rej(new Error(`redis-server exited (${code}): ${out.slice(-500)}`)); });
  });
  child.stdout!.resume();
  child.stderr!.resume();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    },
  };
}
