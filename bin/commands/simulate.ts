import { join } from 'node:path';
import { formatSummaryTable } from '../../simulations/report/index.js';
import { loadScenario, parseScenario, presetNames } from '../../simulations/scenario.js';
import { runSimulation, type SimEvent } from '../../simulations/runner/run.js';
import { ConfigError } from '../../shared/errors.js';
import { setLogLevel } from '../../shared/log.js';
import { intFlag, str, type Command } from './flags.js';

const SCENARIO_HELP = `
Scenario files (JSON; docs/SCENARIOS.md has every field and its default):
  {
    "name": "my-run", "model": "simulations/models/spam-llama",
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
    "roundTimeoutMs": 120000, "secureAggregation": true, "seed": 42, "backend": "wasm", "workers": 0
  }
`;

function clear(): void { process.stderr.write('\r\x1b[2K'); }

export const simulateCommand: Command = {
  name: 'simulate',
  summary: 'Run a federation locally: one coordinator per strategy and many clients over the real protocol, with baselines and a report.',
  usage: 'fedlora simulate [--scenario FILE|PRESET] [--out DIR] [overrides]',
  flags: {
    scenario: { type: 'string', help: 'scenario JSON file or preset name (default, dropout30, stragglers, killed-client, tiny-ci)', default: 'default' },
    out: { type: 'string', help: 'output folder for report.json/.html/.png, client data and checkpoints (default: runs/<timestamp>)' },
    rounds: { type: 'string', help: 'override the scenario\'s rounds' },
    clients: { type: 'string', help: 'override the number of clients (clients per round follows when it was "all")' },
    seed: { type: 'string', help: 'override the seed (partition, ranks, sampling, faults, init)' },
    backend: { type: 'string', help: 'override the tfjs backend: auto | tensorflow | webgpu | wasm | cpu' },
    workers: { type: 'string', help: 'worker processes hosting clients (0 = one per CPU core)' },
    'insecure-aggregation': { type: 'boolean', help: 'turn secure aggregation off (plain sums; faster, for comparison only)' },
    'list-presets': { type: 'boolean', help: 'list the bundled scenario presets and exit' },
  },
  async run(v) {
    if (v['list-presets'] === true) { process.stdout.write(`${(await presetNames()).join('\n')}\n`); return 0; }
    const base = await loadScenario(str(v.scenario, 'scenario') ?? 'default');
    const raw: Record<string, unknown> = { ...base };
    const rounds = intFlag(v.rounds, 'rounds', 1);
    const clients = intFlag(v.clients, 'clients', 1);
    const seed = intFlag(v.seed, 'seed', 0);
    const workers = intFlag(v.workers, 'workers', 0);
    if (rounds !== undefined) raw.rounds = rounds;
    if (clients !== undefined) {
      raw.clients = clients;
      if (base.clientsPerRound === base.clients || base.clientsPerRound > clients) raw.clientsPerRound = clients;
      raw.minClients = Math.min(base.minClients, raw.clientsPerRound as number);
      if (base.faults.kill && base.faults.kill.client >= clients) throw new ConfigError(`--clients ${clients}: the scenario kills client ${base.faults.kill.client}`);
    }
    if (seed !== undefined) raw.seed = seed;
    if (workers !== undefined) raw.workers = workers;
    if (v.backend !== undefined) raw.backend = str(v.backend, 'backend');
    if (v['insecure-aggregation'] === true) raw.secureAggregation = false;
    const scenario = parseScenario(raw, base.name);
    const outDir = str(v.out, 'out') ?? join('runs', new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19));
    const tty = process.stderr.isTTY === true;
    let live = false;
    const onEvent = (e: SimEvent) => {
      if (e.type === 'progress') {
        if (!tty) return;
        const p = e.progress;
        clear();
        process.stderr.write(`[${(p.elapsedMs / 1000).toFixed(0).padStart(4)}s] ${p.run} round ${p.round}/${p.rounds} ${p.phase}: ${p.uploaded}/${p.participants} uploaded${p.dropped ? `, ${p.dropped} dropped` : ''} · runs done ${p.runsDone}/${p.runsTotal}`);
        live = true;
        return;
      }
      if (live) { clear(); live = false; }
      if (e.type === 'log') process.stderr.write(`${e.message}\n`);
      else {
        const acc = (x: number | null) => (x === null ? '–' : x.toFixed(3));
        process.stderr.write(`${e.run}: round ${e.round}/${e.rounds} done in ${(e.wallMs / 1000).toFixed(1)}s — ${e.contributors}/${e.participants} updates${e.dropouts.length ? ` (dropped: ${e.dropouts.join(', ')})` : ''}, train loss ${e.trainLoss?.toFixed(3) ?? '–'}, global acc ${acc(e.globalAcc)}, personalized acc ${acc(e.personalAcc)}\n`);
      }
    };
    process.stderr.write(`fedlora simulate: scenario ${scenario.name}: ${scenario.clients} clients, ${scenario.rounds} rounds, ${[scenario.strategy, ...scenario.compare].join(' + ')}${scenario.secureAggregation ? ', secure aggregation' : ''} → ${outDir}\n`);
    // the runner reports progress itself; library info lines (every join, every phase) would bury it
    if (!process.env.FEDLORA_LOG) setLogLevel('warn');
    const res = await runSimulation(scenario, { outDir, onEvent });
    if (live) clear();
    process.stdout.write(`${formatSummaryTable(res.report)}\n`);
    process.stdout.write(`wall time ${(res.report.wallMs / 1000).toFixed(1)} s\nreport: ${res.files.json}\n        ${res.files.html}\n        ${res.files.png}\n`);
    return 0;
  },
};
simulateCommand.usage += `\n${SCENARIO_HELP}`;
