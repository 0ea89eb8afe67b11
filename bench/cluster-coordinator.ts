/**
 * Child process of bench/cluster.ts: the exported Coordinator (a single process, or the cluster
 * leader with `cluster`), configured for one synthetic federation. It is the same class
 * `fedlora coordinator` runs; the child exists because the CLI has no flag for the secure-aggregation
 * phase timeout, and with 2,000 clients on two cores delivering round:start and collecting every
 * advertisement takes longer than the default 30 s. Prints one JSON line `{ url, key }` once it
 * serves, `{ done }` when the rounds are over, and keeps serving /status until SIGTERM.
 *
 *   tsx bench/cluster-coordinator.ts '{"modelDir":…,"stateDir":…,"clients":N,"rounds":R,"redis":URL?,"prefix":P?}'
 */
import { Coordinator } from '../coordinator/index.js';
import { setLogLevel } from '../shared/log.js';

interface Args { modelDir: string; stateDir: string; clients: number; rounds: number; seed: number; redis?: string; prefix?: string; phaseTimeoutMs: number }

const a = JSON.parse(process.argv[2] ?? '{}') as Args;
setLogLevel((process.env.FEDLORA_BENCH_LOG as 'info' | undefined) ?? 'warn');
const coord = new Coordinator({
  modelDir: a.modelDir, stateDir: a.stateDir, allowAnyClient: true,
  rounds: a.rounds, clientsPerRound: a.clients, minClients: a.clients, joinWaitMs: 0, localSteps: 1, maxRank: 8, seed: a.seed,
  strategy: 'fedit', refactor: false, keepCheckpoints: 1, maxExamplesPerClient: 1, // every synthetic client declares 1 example
  // 2,000 sockets join in a burst and the masked phase is CPU-bound on the clients' side
  roundTimeoutMs: 3_600_000, joinTimeoutMs: 600_000, requestTimeoutMs: 600_000, rejoinGraceMs: 60_000,
  secAgg: { phaseTimeoutMs: a.phaseTimeoutMs },
  // the default 3 s lease is lost when the leader's event loop stalls past it (a join burst of 1,000 clients
  // on two shared cores did, and the leader stopped itself); a bench leader has no standby to hand over to
  ...(a.redis ? { cluster: { url: a.redis, prefix: a.prefix ?? 'bench', leaseMs: 30_000 } } : {}),
});
const url = await coord.serve(0);
process.stdout.write(`${JSON.stringify({ url, key: coord.publicKey })}\n`);
process.once('SIGTERM', () => { void coord.close().finally(() => process.exit(0)); });
const r = await coord.done;
process.stdout.write(`${JSON.stringify({ done: r.completedRounds })}\n`);
