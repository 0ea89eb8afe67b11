/**
 * npm run bench:cluster — one coordinator process vs 1 leader + N edges (docs/ARCHITECTURE.md
 * "Scale-out") on loopback, with bounded synthetic clients that speak the real protocol (socket.io
 * over TCP, join with identities, SecAgg+ advertise / shares / masked input / unmask) and upload a
 * seeded random update of the GPT-2 124M LoRA r=8 size instead of training.
 *
 * Per (mode, n): round time (round:start → round:end from the coordinator's round record), peak RSS
 * (VmHWM) of every process, and the leader's inbound bytes during the round (single: bytes.received,
 * the TCP bytes read from client connections; cluster: cluster.inboundBytes, the bytes it read over
 * the Redis bus). Processes: redis-server, the coordinator / leader (bench/cluster-coordinator.ts, the
 * exported Coordinator), edges (`fedlora coordinator --role edge`), client drivers
 * (bench/cluster-driver.ts, many clients each).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { GPT2_124M, LORA_RANK, loraValues, shapeForValues, writeSyntheticGpt2 } from './cluster-model.js';

const HELP = `npm run bench:cluster -- [options]

  --clients LIST     client counts, comma-separated (default 200,1000,2000)
  --edges N          edges in cluster mode (default 3)
  --values N         update length (default ${loraValues(GPT2_124M)} = GPT-2 124M LoRA r=${LORA_RANK} on c_attn, attn.c_proj,
                     c_fc, mlp.c_proj; other N: one GPT-2 block whose width gives the largest update ≤ N)
  --rounds N         rounds per run (default 1)
  --mode LIST        single,cluster (default both)
  --drivers N        client driver processes (default 2; 1 below 20 clients)
  --concurrency N    clients per driver building a masked input at once (default 2)
  --seed N           seed of the synthetic updates (default 1)
  --timeout SEC      give up on one run after this long (default 3600)
  --json FILE        write the results as JSON
  --help

Needs redis-server (REDIS_SERVER=path to override) for cluster mode.
`;

interface Opts { clients: number[]; edges: number; values?: number; rounds: number; modes: ('single' | 'cluster')[]; drivers?: number; concurrency: number; seed: number; timeoutS: number; json?: string }

function parseArgs(argv: string[]): Opts {
  const o: Opts = { clients: [200, 1000, 2000], edges: 3, rounds: 1, modes: ['single', 'cluster'], concurrency: 2, seed: 1, timeoutS: 3600 };
  const int = (v: string | undefined, flag: string, min: number): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < min) throw new Error(`${flag} must be an integer ≥ ${min}, got ${JSON.stringify(v)}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!, v = argv[i + 1];
    switch (a) {
      case '--help': case '-h': process.stdout.write(HELP); process.exit(0);
      // eslint-disable-next-line no-fallthrough
      case '--clients': o.clients = (v ?? '').split(',').map((x) => int(x.trim(), '--clients', 2)); i++; break;
      case '--edges': o.edges = int(v, '--edges', 1); i++; break;
      case '--values': o.values = int(v, '--values', 1); i++; break;
      case '--rounds': o.rounds = int(v, '--rounds', 1); i++; break;
      case '--drivers': o.drivers = int(v, '--drivers', 1); i++; break;
      case '--concurrency': o.concurrency = int(v, '--concurrency', 1); i++; break;
      case '--seed': o.seed = int(v, '--seed', 0); i++; break;
      case '--timeout': o.timeoutS = int(v, '--timeout', 1); i++; break;
      case '--json': if (!v) throw new Error('--json needs a file'); o.json = v; i++; break;
      case '--mode': {
        const m = (v ?? '').split(',').map((x) => x.trim());
        if (!m.length || m.some((x) => x !== 'single' && x !== 'cluster')) throw new Error(`--mode must be a list of single, cluster; got ${JSON.stringify(v)}`);
        o.modes = m as Opts['modes']; i++; break;
      }
      default: throw new Error(`unknown option ${a} (see --help)`);
    }
  }
  return o;
}

interface Proc { name: string; child: ChildProcess; out: string; lines: unknown[]; exited: Promise<void>; hwmKiB?: number }

/** Every child still running: stopped on SIGINT / SIGTERM too. */
const live = new Set<Proc>();
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => { for (const p of live) p.child.kill('SIGKILL'); process.exit(130); });
}

function start(name: string, cmd: string, args: string[]): Proc {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
  const p: Proc = { name, child, out: '', lines: [], exited: new Promise((res) => child.once('exit', () => { live.delete(p); res(); })) };
  live.add(p);
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    const s = d.toString();
    p.out = (p.out + s).slice(-20_000);
    buf += s;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl); buf = buf.slice(nl + 1);
      if (line.startsWith('{')) try { p.lines.push(JSON.parse(line)); } catch { /* not ours */ }
    }
  });
  child.stderr!.on('data', (d: Buffer) => { p.out = (p.out + d.toString()).slice(-20_000); });
  return p;
}

const tsx = (script: string, args: string[], name: string) => start(name, process.execPath, ['--import', 'tsx', script, ...args]);

async function until<T>(what: string, f: () => T | null | undefined | Promise<T | null | undefined>, timeoutMs: number, procs: Proc[] = [], everyMs = 200): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== null && v !== undefined) return v;
    const dead = procs.find((p) => p.child.exitCode !== null || p.child.signalCode !== null);
    if (dead) throw new Error(`${dead.name} exited while waiting for ${what}: ${dead.out.slice(-1500)}`);
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Peak resident set (VmHWM) of a live process, in KiB. */
function vmHWM(pid: number | undefined): number | undefined {
  if (!pid) return undefined;
  try { const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8')); return m ? Number(m[1]) : undefined; } catch { return undefined; }
}

async function stop(p: Proc): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill('SIGTERM');
  const t = setTimeout(() => p.child.kill('SIGKILL'), 5000);
  await p.exited;
  clearTimeout(t);
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => { const port = (s.address() as { port: number }).port; s.close(() => res(port)); });
  });
}

interface Status {
  phase: string; completedRounds: number; connected: { ready: boolean }[];
  lastRound: { round: number; status: string; contributors: number; startedAt: number; endedAt: number; failure?: string } | null;
  bytes: { received?: number };
  cluster?: { inboundBytes: number; partialSums: number; maskedRefs: number };
}

async function status(url: string): Promise<Status | null> {
  try { const r = await fetch(`${url}/status`, { signal: AbortSignal.timeout(60_000) }); return r.ok ? (await r.json()) as Status : null; } catch { return null; }
}

export interface RunResult {
  mode: 'single' | 'cluster'; clients: number; edges: number; values: number;
  rounds: { round: number; status: string; contributors: number; ms: number; failure?: string }[];
  /** Mean round time (round:start → round:end) over the completed rounds, ms. */
  roundMs: number;
  /** Bytes the coordinator / leader received from "every client ready" to the last round's end, per round. */
  inboundBytesPerRound: number;
  /** Everything it received over the run (joins included). */
  inboundBytesTotal: number;
  partialSums?: number; maskedRefs?: number;
  /** Peak RSS (VmHWM) in MiB. */
  rssMiB: { coordinator: number; edges: number[]; drivers: number[]; redis?: number };
  /** Synthetic clients that did not end with session:done. */
  clientFailures: number;
  /** Times a synthetic client lost its connection (it reconnects and joins again, as the real client does). */
  clientDisconnects: number;
  wallS: number;
  /** Why the run did not finish, when it did not. */
  error?: string;
}

async function runOne(o: Opts, mode: 'single' | 'cluster', n: number, modelDir: string, values: number, root: string): Promise<RunResult> {
  const t0 = Date.now();
  const procs: Proc[] = [];
  const dir = join(root, `${mode}-${n}`);
  try {
    let redisUrl: string | undefined;
    let redis: Proc | undefined;
    if (mode === 'cluster') {
      const port = await freePort();
      redis = start('redis-server', process.env.REDIS_SERVER ?? 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
      procs.push(redis);
      await until('redis-server', () => (redis!.out.includes('Ready to accept connections') ? true : null), 15_000, [redis]);
      redisUrl = `redis://127.0.0.1:${port}`;
    }
    const coord = tsx('bench/cluster-coordinator.ts', [JSON.stringify({
      modelDir, stateDir: join(dir, 'state'), clients: n, rounds: o.rounds, seed: o.seed, phaseTimeoutMs: o.timeoutS * 1000,
      ...(redisUrl ? { redis: redisUrl, prefix: `bench${n}` } : {}),
    })], mode === 'cluster' ? 'leader' : 'coordinator');
    procs.push(coord);
    const hello = await until('the coordinator to serve', () => coord.lines.find((l) => (l as { url?: string }).url) as { url: string; key: string } | undefined, 120_000, [coord]);
    const edges: Proc[] = [];
    if (mode === 'cluster') {
      for (let i = 0; i < o.edges; i++) {
        const e = tsx('bin/fedlora.ts', ['coordinator', '--cluster', redisUrl!, '--role', 'edge', '--cluster-prefix', `bench${n}`, '--port', '0'], `edge${i + 1}`);
        edges.push(e); procs.push(e);
      }
    }
    const urls = mode === 'cluster'
      ? await Promise.all(edges.map((e) => until(`${e.name} to listen`, () => /listening on (http:\/\/\S+)/.exec(e.out)?.[1], 60_000, [e])))
      : [hello.url];
    const nd = Math.min(n, o.drivers ?? (n < 20 ? 1 : 2));
    const drivers: Proc[] = [];
    for (let d = 0, first = 0; d < nd; d++) {
      const count = Math.floor(n / nd) + (d < n % nd ? 1 : 0);
      const p = tsx('bench/cluster-driver.ts', [JSON.stringify({ urls, first, count, seed: o.seed, coordinatorKey: hello.key, concurrency: o.concurrency })], `driver${d + 1}`);
      drivers.push(p); procs.push(p);
      first += count;
    }
    const inbound = (s: Status) => (mode === 'cluster' ? s.cluster?.inboundBytes ?? 0 : s.bytes.received ?? 0);
    const deadline = o.timeoutS * 1000;
    // every client joined and said ready: the round starts now (joinWait 0); the counter from here on is the round's
    const ready = await until('every client to be ready', async () => {
      const s = await status(hello.url);
      return s && (s.connected.filter((c) => c.ready).length >= n || s.phase !== 'waiting') ? s : null;
    }, deadline, procs, 250);
    const inbound0 = inbound(ready);
    process.stderr.write(`  ${mode} n=${n}: ${n} clients ready after ${((Date.now() - t0) / 1000).toFixed(1)} s; round running…\n`);
    const rounds: RunResult['rounds'] = [];
    let last: Status | null = null;
    await until('the rounds to end', async () => {
      const s = await status(hello.url);
      if (!s) return null;
      last = s;
      const r = s.lastRound;
      if (r && !rounds.some((x) => x.round === r.round && x.status === r.status && x.ms === r.endedAt - r.startedAt)) rounds.push({ round: r.round, status: r.status, contributors: r.contributors, ms: r.endedAt - r.startedAt, ...((r as { failure?: string }).failure ? { failure: (r as { failure?: string }).failure!.slice(0, 300) } : {}) });
      if (s.completedRounds >= o.rounds || s.phase === 'done') return true;
      if (rounds.some((x) => x.status === 'failed') && s.connected.length === 0) throw new Error(`an attempt failed and no client is connected any more: ${s.lastRound?.failure?.slice(0, 400)}`);
      if (rounds.filter((x) => x.status === 'failed').length >= 3) throw new Error(`3 failed attempts: ${JSON.stringify(s.lastRound && (s.lastRound as { failure?: string }).failure).slice(0, 400)}`);
      return null;
    }, deadline, [coord, ...edges], 1000);
    const final = (await status(hello.url)) ?? last!;
    // the drivers end once their clients got session:done
    await until('the client drivers to finish', () => (drivers.every((d) => d.lines.some((l) => (l as { done?: number }).done !== undefined)) ? true : null), 120_000, [], 250).catch((e: unknown) => {
      process.stderr.write(`  warning: ${(e as Error).message}\n`);
    });
    for (const d of drivers) {
      const r = d.lines.find((l) => (l as { done?: number }).done !== undefined) as { done: number; failed: string[] } | undefined;
      if (r?.failed.length) process.stderr.write(`  ${d.name}: ${r.failed.length} client(s) failed, e.g. ${r.failed[0]}\n`);
    }
    for (const p of procs) p.hwmKiB = vmHWM(p.child.pid) ?? (p.lines.find((l) => (l as { hwmKiB?: number }).hwmKiB) as { hwmKiB?: number } | undefined)?.hwmKiB;
    const disconnects = drivers.reduce((s, d) => s + ((d.lines.find((l) => (l as { done?: number }).done !== undefined) as { disconnects?: number } | undefined)?.disconnects ?? 0), 0);
    const failures = drivers.reduce((s, d) => s + ((d.lines.find((l) => (l as { done?: number }).done !== undefined) as { failures?: number } | undefined)?.failures ?? 0), 0);
    const mib = (k?: number) => Math.round((k ?? 0) / 1024);
    const done = rounds.filter((r) => r.status === 'completed');
    return {
      mode, clients: n, edges: mode === 'cluster' ? o.edges : 0, values,
      rounds, roundMs: done.length ? Math.round(done.reduce((s, r) => s + r.ms, 0) / done.length) : NaN,
      inboundBytesPerRound: Math.round((inbound(final) - inbound0) / o.rounds), inboundBytesTotal: inbound(final),
      ...(final.cluster ? { partialSums: final.cluster.partialSums, maskedRefs: final.cluster.maskedRefs } : {}),
      rssMiB: { coordinator: mib(coord.hwmKiB), edges: edges.map((e) => mib(e.hwmKiB)), drivers: drivers.map((d) => mib(d.hwmKiB)), ...(redis ? { redis: mib(redis.hwmKiB) } : {}) },
      clientFailures: failures, clientDisconnects: disconnects,
      wallS: Math.round((Date.now() - t0) / 100) / 10,
    };
  } catch (e) {
    // what the other processes said, for the report
    const tails = procs.map((p) => `--- ${p.name}:\n${p.out.split('\n').filter((l) => !l.startsWith('{')).slice(-8).join('\n')}`).join('\n');
    throw new Error(`${(e as Error).message}\n${tails}`);
  } finally {
    // clients first, then edges, the coordinator and redis
    for (const p of [...procs].reverse()) await stop(p);
    await rm(dir, { recursive: true, force: true });
  }
}

function fmtBytes(b: number): string {
  return b >= 1 << 30 ? `${(b / (1 << 30)).toFixed(2)} GiB` : b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB` : b >= 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${b} B`;
}

function table(rs: RunResult[]): string {
  const rows = [['mode', 'clients', 'round', 'leader in / round', 'peak RSS coordinator/leader', 'edges', 'drivers', 'redis']];
  for (const r of rs) {
    rows.push([
      r.mode === 'single' ? '1 process' : `1 leader + ${r.edges} edges`, String(r.clients), Number.isFinite(r.roundMs) ? `${(r.roundMs / 1000).toFixed(1)} s` : 'failed',
      fmtBytes(r.inboundBytesPerRound), `${r.rssMiB.coordinator} MiB`, r.rssMiB.edges.length ? r.rssMiB.edges.map((x) => `${x}`).join(' / ') + ' MiB' : '–',
      r.rssMiB.drivers.join(' / ') + ' MiB', r.rssMiB.redis !== undefined ? `${r.rssMiB.redis} MiB` : '–',
    ]);
  }
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r, j) => r.map((c, i) => c.padEnd(w[i]!)).join('  ') + (j === 0 ? `\n${w.map((x) => '-'.repeat(x)).join('  ')}` : '')).join('\n');
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const shape = shapeForValues(o.values);
  const root = await mkdtemp(join(tmpdir(), 'fedlora-bench-cluster-'));
  const results: RunResult[] = [];
  try {
    const modelDir = join(root, 'model');
    const { values } = await writeSyntheticGpt2(modelDir, shape);
    process.stderr.write(`bench:cluster: update ${values} values (GPT-2 shape ${shape.nLayer}×${shape.nEmbd}, LoRA r=${LORA_RANK}), clients ${o.clients.join(',')}, modes ${o.modes.join(',')}, ${o.edges} edge(s); ${cpus().length} CPU(s) ${cpus()[0]?.model ?? ''}, load ${loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
    for (const n of o.clients) {
      for (const mode of o.modes) {
        let r: RunResult;
        try { r = await runOne(o, mode, n, modelDir, values, root); } catch (e) {
          process.stderr.write(`  ${mode} n=${n}: FAILED: ${(e as Error).message}\n`);
          results.push({ mode, clients: n, edges: mode === 'cluster' ? o.edges : 0, values, rounds: [], roundMs: NaN, inboundBytesPerRound: NaN, inboundBytesTotal: NaN, rssMiB: { coordinator: NaN, edges: [], drivers: [] }, clientFailures: n, clientDisconnects: 0, wallS: NaN, error: (e as Error).message.slice(0, 2000) });
          continue;
        }
        process.stderr.write(`  ${mode} n=${n}: round ${(r.roundMs / 1000).toFixed(1)} s, leader in ${fmtBytes(r.inboundBytesPerRound)}/round, coordinator RSS ${r.rssMiB.coordinator} MiB (wall ${r.wallS} s)\n`);
        results.push(r);
      }
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  const out = {
    machine: { cpus: cpus().length, cpu: cpus()[0]?.model ?? '', memGiB: Math.round(totalmem() / (1 << 30)), loadAfter: loadavg() },
    command: `npm run bench:cluster -- ${process.argv.slice(2).join(' ')}`.trim(), results,
  };
  process.stdout.write(`${table(results)}\n\n${JSON.stringify(out, null, 2)}\n`);
  if (o.json) await writeFile(o.json, `${JSON.stringify(out, null, 2)}\n`);
}

main().catch((e: unknown) => { process.stderr.write(`bench:cluster: ${(e as Error).message}\n`); process.exit(1); });
