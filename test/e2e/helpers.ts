/** Real-process helpers for the e2e tests: spawn `node --import tsx bin/fedlora.ts ...`, wait for output, kill -9. */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';

export interface Proc { child: ChildProcess; out: () => string; exited: Promise<number | null> }

export function fedlora(args: string[], env: Record<string, string> = {}): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', 'bin/fedlora.ts', ...args], { env: { ...process.env, FEDLORA_LOG: 'info', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => { buf += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { buf += d.toString(); });
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  return { child, out: () => buf, exited };
}

export async function waitFor<T>(what: string, f: () => T | undefined | null | false | Promise<T | undefined | null | false>, timeoutMs: number, everyMs = 100): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => res(p)); });
    s.on('error', rej);
  });
}

/** A small text corpus per client: repeated phrases a tiny byte-level LM learns within a few steps. */
export async function writeCorpus(file: string, client: number, n = 40): Promise<void> {
  const phrases = ['the cat sat on the mat.', 'a dog ran in the park.', 'we fine tune lora together.'];
  const lines: string[] = [];
  for (let i = 0; i < n; i++) lines.push(JSON.stringify({ text: `${phrases[(i + client) % phrases.length]} ${phrases[(i * 7 + client) % phrases.length]}` }));
  await writeFile(file, `${lines.join('\n')}\n`);
}

export async function getJson(url: string): Promise<Record<string, unknown> | null> {
  try { return (await (await fetch(url)).json()) as Record<string, unknown>; } catch { return null; }
}
