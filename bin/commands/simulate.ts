import { configureThreads } from '../../shared/backend/index.js';
import { join } from 'node:path';
import { formatSummaryTable, formatRoundLine } from '../../simulations/report/index.js';
import { loadScenario, parseScenario, presetNames } from '../../simulations/scenario.js';
import { runScenario, type SimEvent, type SimProgress } from '../../simulations/runner/run.js';
import { ConfigError } from '../../shared/errors.js';
import { setLogLevel } from '../../shared/log.js';
import { intFlag, str, type Command } from './flags.js';

const SCENARIO_HELP = `
Scenario files (JSON; docs/SCENARIOS.md has every field and its default):
  {
    "name": "my-run", "model": "path/to/hf-model",   leave out for the bundled model
    "dataset": "spam" | "path/to/data.jsonl",      {"prompt","completion"} or {"text"} lines
    "maxExamples": 900,                              pooled examples dealt to clients (0 = all)
    "partition": {"kind": "dirichlet", "alpha": 0.5} | "iid",
    "clients": 6, "clientsPerRound": 6, "minClients": 3, "rounds": 3,
    "strategy": "rank-aware", "compare": "all" | ["fedit", "ffa", "fedsa"],
    "baselines": {"localOnly": true, "centralized": true},
    "rankMix": {"4": 0.5, "8": 0.3, "16": 0.2},      rank → fraction of clients
    "personal": ["*.layers.1.*"],                    PEFT-name globs kept on each client
    "train": {"localSteps": 8, "lr": 0.005, "batchSize": 8, "maxSeqLen": 128},
    "faults": {"dropoutProbability": 0.3, "dropoutsPerRound": 1,
               "stragglers": {"fraction": 0.2, "minDelayMs": 1000, "maxDelayMs": 8000},
               "kill": {"client": 0, "round": 2, "afterMs": 300}},
    "evalFraction": 0.3, "maxEvalPerClient": 32,      each client's held-out split and its cap
    "maxTrainPerClient": 24,                         cap on each client's training examples (0 = all)
    "testSet": 256,                                  pooled test set (fixed, drawn before the partition; 0 = none)
    "finalWindow": 3,                                final figures = mean of the last K evaluated rounds
    "evalEvery": 1,                                  evaluate every n-th round (and always the last finalWindow)
    "roundTimeoutMs": 120000, "secureAggregation": true, "seed": 42, "backend": "wasm", "workers": 0,
    "seeds": [42, 43, 44],                           several seeds: one run each, report of mean ± sd
    "extends": "default"                             start from a preset's fields
  }
`;

/** Progress lines when stderr is not a terminal (CI logs, pipes): one every this many ms. */
export const PLAIN_PROGRESS_MS = 15_000;

/**
 * What `simulate` writes to stderr for the runner's events. On a terminal: a live progress line
 * (rewritten in place) and the round lines. Elsewhere (CI logs, pipes): the round lines, and a
 * plain progress line whenever nothing was written for `intervalMs`, so long phases such as the
 * baselines are not minutes of silence.
 */
export function eventPrinter(write: (text: string) => void, tty: boolean, intervalMs = PLAIN_PROGRESS_MS, now: () => number = Date.now): (e: SimEvent) => void {
  let live = false;
  let lastLine = now();
  return (e) => {
    if (e.type === 'progress') {
      if (tty) {
        write(`\r\x1b[2K${progressLine(e.progress)}`);
        live = true;
      } else if (now() - lastLine >= intervalMs) {
        lastLine = now();
        write(`${progressLine(e.progress)}\n`);
      }
      return;
    }
    if (live) { write('\r\x1b[2K'); live = false; }
    lastLine = now();
    write(`${e.type === 'log' ? e.message : formatRoundLine(e)}\n`);
  };
}

export function progressLine(p: SimProgress): string {
  const fed = p.runsDone < p.runsTotal
    ? `${p.run} round ${p.round}/${p.rounds} ${p.phase}: ${p.uploaded}/${p.participants} uploaded${p.dropped ? `, ${p.dropped} dropped` : ''}`
    : 'federated runs done';
  return `[${(p.elapsedMs / 1000).toFixed(0).padStart(4)}s] ${fed} · runs done ${p.runsDone}/${p.runsTotal}${p.detail ? ` · ${p.detail}` : ''}`;
}


export const simulateCommand: Command = {
  name: 'simulate',
  summary: 'Run a federation locally: one coordinator per strategy and many clients over the real protocol, with baselines and a report.',
  usage: 'fedlora simulate [--scenario FILE|PRESET | --preset NAME] [--out DIR] [overrides]',
  flags: {
    scenario: { type: 'string', help: 'scenario JSON file or preset name (default, benchmark, dropout30, stragglers, killed-client, tiny-ci)', default: 'default' },
    preset: { type: 'string', help: 'a bundled preset by name (same as --scenario NAME), e.g. --preset benchmark (3 seeds, mean ± sd)' },
    out: { type: 'string', help: 'output folder for report.json/.html/.png, client data and checkpoints (default: runs/<timestamp>)' },
    rounds: { type: 'string', help: 'override the scenario\'s rounds' },
    clients: { type: 'string', help: 'override the number of clients (clients per round follows when it was "all")' },
    seed: { type: 'string', help: 'override the seed (partition, ranks, sampling, faults, init); runs that one seed only' },
    seeds: { type: 'string', help: 'comma-separated seeds: one run each and a report of mean ± sd (e.g. 42,43,44)' },
    backend: { type: 'string', help: 'override the tfjs backend: auto | tensorflow | webgpu | wasm | cpu' },
    workers: { type: 'string', help: 'worker processes hosting clients (0 = one per CPU core)' },
    threads: { type: 'string', placeholder: 'N', help: 'wasm threads in each process of the simulation (its workers share the cores already)', default: '1' },
    'insecure-aggregation': { type: 'boolean', help: 'turn secure aggregation off (plain sums; faster, for comparison only)' },
    'list-presets': { type: 'boolean', help: 'list the bundled scenario presets and exit' },
  },
  async run(v) {
    if (v['list-presets'] === true) { process.stdout.write(`${(await presetNames()).join('\n')}\n`); return 0; }
    const preset = str(v.preset, 'preset');
    if (preset !== undefined && !/^[\w-]+$/.test(preset)) throw new ConfigError(`--preset ${JSON.stringify(preset)}: a preset name (${(await presetNames()).join(', ')}); use --scenario for a file`);
    if (preset !== undefined && v.scenario !== undefined && v.scenario !== 'default') throw new ConfigError('give --preset or --scenario, not both');
    const base = await loadScenario(preset ?? str(v.scenario, 'scenario') ?? 'default');
    const raw: Record<string, unknown> = { ...base };
    const rounds = intFlag(v.rounds, 'rounds', 1);
    const clients = intFlag(v.clients, 'clients', 1);
    const seed = intFlag(v.seed, 'seed', 0);
    const workers = intFlag(v.workers, 'workers', 0);
    const threads = intFlag(v.threads, 'threads', 1) ?? 1;
    if (threads > 64) throw new ConfigError(`--threads must be at most 64, got ${threads}`);
    // this process and every worker it forks (they inherit the environment)
    process.env.FEDLORA_THREADS = String(threads);
    configureThreads(threads);
    if (rounds !== undefined) raw.rounds = rounds;
    if (clients !== undefined) {
      raw.clients = clients;
      if (base.clientsPerRound === base.clients || base.clientsPerRound > clients) raw.clientsPerRound = clients;
      raw.minClients = Math.min(base.minClients, raw.clientsPerRound as number);
      if (base.faults.kill && base.faults.kill.client >= clients) throw new ConfigError(`--clients ${clients}: the scenario kills client ${base.faults.kill.client}`);
    }
    if (seed !== undefined) { raw.seed = seed; raw.seeds = []; }
    if (v.seeds !== undefined) {
      const list = (str(v.seeds, 'seeds') ?? '').split(',').map((x) => x.trim());
      if (seed !== undefined) throw new ConfigError('give --seed or --seeds, not both');
      if (!list.every((x) => /^\d{1,10}$/.test(x))) throw new ConfigError(`--seeds must be comma-separated non-negative integers, got ${JSON.stringify(v.seeds)}`);
      raw.seeds = list.map(Number);
    }
    if (workers !== undefined) raw.workers = workers;
    if (v.backend !== undefined) raw.backend = str(v.backend, 'backend');
    if (v['insecure-aggregation'] === true) raw.secureAggregation = false;
    const scenario = parseScenario(raw, base.name);
    const outDir = str(v.out, 'out') ?? join('runs', new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19));
    const onEvent = eventPrinter((t) => process.stderr.write(t), process.stderr.isTTY === true);
    const seedsNote = scenario.seeds.length > 1 ? `, seeds ${scenario.seeds.join(', ')} (one run each, then mean ± sd)` : '';
    process.stderr.write(`fedlora simulate: scenario ${scenario.name}: ${scenario.clients} clients, ${scenario.rounds} rounds, ${[scenario.strategy, ...scenario.compare].join(' + ')}${scenario.secureAggregation ? ', secure aggregation' : ''}${seedsNote} → ${outDir}\n`);
    // the runner reports progress itself; library info lines (every join, every phase) would bury it
    if (!process.env.FEDLORA_LOG) setLogLevel('warn');
    const res = await runScenario(scenario, { outDir, onEvent });
    if (process.stderr.isTTY) process.stderr.write('\r\x1b[2K');
    process.stdout.write(`${formatSummaryTable(res.report)}\n`);
    process.stdout.write(`wall time ${(res.report.wallMs / 1000).toFixed(1)} s\nreport: ${res.files.json}\n        ${res.files.html}\n        ${res.files.png}\n`);
    return 0;
  },
};
simulateCommand.usage += `\n${SCENARIO_HELP}`;
