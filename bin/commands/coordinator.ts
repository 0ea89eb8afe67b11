import { Coordinator } from '../../coordinator/index.js';
import { ConfigError } from '../../shared/errors.js';
import { hasStrategy, strategyNames } from '../../shared/aggregation/index.js';
import { durationMs, intFlag, listFlag, numFlag, str, type Command } from './flags.js';

export const coordinatorCommand: Command = {
  name: 'coordinator',
  summary: 'Run the federation coordinator: serves the base model, runs rounds, aggregates adapters, checkpoints.',
  usage: 'fedlora coordinator --model DIR --state DIR [--port N] [options]',
  flags: {
    model: { type: 'string', help: 'base model folder (config.json, model.safetensors, tokenizer files); required' },
    state: { type: 'string', help: 'state folder: checkpoints, round number, metrics; an existing state resumes; required' },
    port: { type: 'string', help: 'TCP port for socket.io + HTTP (/status, /metrics); 0 picks a free one', default: '7777' },
    host: { type: 'string', help: 'interface to bind', default: '127.0.0.1' },
    rounds: { type: 'string', help: 'total federated rounds', default: '3' },
    'clients-per-round': { type: 'string', help: 'clients sampled per round', default: '3' },
    'min-clients': { type: 'string', help: 'a round needs this many ready clients to start and this many updates to count', default: '2' },
    'round-timeout': { type: 'string', help: 'stop collecting updates after this long (e.g. 90, 30s, 10m); stragglers are left out', default: '10m' },
    'rejoin-grace': { type: 'string', help: 'how long a participant that lost its connection may take to rejoin the round', default: '3s' },
    'join-wait': { type: 'string', help: 'with ≥ min-clients ready, wait this long for more before starting a round', default: '3s' },
    strategy: { type: 'string', get help() { return `aggregation: ${strategyNames().join(' | ')}`; }, default: 'rank-aware' },
    'max-rank': { type: 'string', help: 'global LoRA rank; clients train at min(their --max-rank, this)', default: '8' },
    'target-modules': { type: 'string', help: 'comma-separated module names to adapt (PEFT target_modules); default: every linear layer', multiple: true },
    'lora-alpha': { type: 'string', help: 'LoRA alpha at max rank (scale alpha/r is kept across ranks)', default: '16' },
    'local-steps': { type: 'string', help: 'optimizer steps per client per round', default: '20' },
    'local-epochs': { type: 'string', help: 'if > 0, train this many passes over local data instead of --local-steps', default: '0' },
    lr: { type: 'string', help: 'client learning rate', default: '0.001' },
    'batch-size': { type: 'string', help: 'client batch size', default: '4' },
    seed: { type: 'string', help: 'seed for adapter init and client sampling', default: '42' },
    export: { type: 'string', help: 'write the final global adapter here in PEFT format when all rounds are done' },
    'no-refactor': { type: 'boolean', help: 'do not re-factor (QR+SVD) the global adapter after aggregation' },
    linger: { type: 'boolean', help: 'keep serving /status and /metrics after the last round instead of exiting' },
    identity: { type: 'string', help: 'coordinator identity file (created on first start); default: <state>/coordinator.identity' },
    'authorized-clients': { type: 'string', help: 'enrolled client keys, one `ed25519:… [name]` per line, `revoked ed25519:…` to revoke; required unless --allow-any-client' },
    'allow-any-client': { type: 'boolean', help: 'development: accept any client key that proves possession (logged as a warning)' },
    'insecure-aggregation': { type: 'boolean', help: 'aggregate plaintext updates instead of secure aggregation (logged as a warning; clients must opt in too)' },
    'secagg-k': { type: 'string', help: 'secure aggregation: neighbours per client (default n−1 up to 16 clients, else even ≥ 3·log2 n)' },
    'secagg-t': { type: 'string', help: 'secure aggregation: Shamir threshold (default ⌊(k+1)/2⌋+1: tolerates just under half of a neighbourhood dropping)' },
    'secagg-clip': { type: 'string', help: 'every contribution (secure or plain) is clipped to ±this per LoRA entry; the unmasked sum is checked against it', default: '8' },
    'max-examples-per-client': { type: 'string', help: 'example counts clients declare are cut to this; a round weight is min(examples, cap)', default: '10000' },
    'join-timeout': { type: 'string', help: 'close connections that have not joined (challenge + hello) within this long', default: '30s' },
    'tls-cert': { type: 'string', help: 'PEM certificate file: serve HTTPS/WSS (with --tls-key)' },
    'tls-key': { type: 'string', help: 'PEM private key file for --tls-cert' },
  },
  async run(v) {
    const strategy = str(v.strategy, 'strategy') as string;
    if (!hasStrategy(strategy)) throw new ConfigError(`--strategy must be one of ${strategyNames().join(', ')}, got ${JSON.stringify(strategy)}`);
    const tlsCert = str(v['tls-cert'], 'tls-cert'), tlsKey = str(v['tls-key'], 'tls-key');
    if (!!tlsCert !== !!tlsKey) throw new ConfigError('--tls-cert and --tls-key go together');
    const coord = new Coordinator({
      modelDir: str(v.model, 'model', true)!, stateDir: str(v.state, 'state', true)!, host: str(v.host, 'host'),
      rounds: intFlag(v.rounds, 'rounds', 1), clientsPerRound: intFlag(v['clients-per-round'], 'clients-per-round', 1), minClients: intFlag(v['min-clients'], 'min-clients', 1),
      roundTimeoutMs: durationMs(v['round-timeout'], 'round-timeout'), joinWaitMs: durationMs(v['join-wait'], 'join-wait'), rejoinGraceMs: durationMs(v['rejoin-grace'], 'rejoin-grace'),
      strategy, maxRank: intFlag(v['max-rank'], 'max-rank', 1), targetModules: listFlag(v['target-modules']),
      loraAlpha: numFlag(v['lora-alpha'], 'lora-alpha'), localSteps: intFlag(v['local-steps'], 'local-steps', 0), localEpochs: numFlag(v['local-epochs'], 'local-epochs'),
      lr: numFlag(v.lr, 'lr'), batchSize: intFlag(v['batch-size'], 'batch-size', 1), seed: intFlag(v.seed, 'seed', 0), exportDir: str(v.export, 'export'),
      refactor: v['no-refactor'] !== true,
      maxExamplesPerClient: intFlag(v['max-examples-per-client'], 'max-examples-per-client', 1), joinTimeoutMs: durationMs(v['join-timeout'], 'join-timeout'),
      identity: str(v.identity, 'identity'), authorizedClients: str(v['authorized-clients'], 'authorized-clients'), allowAnyClient: v['allow-any-client'] === true,
      insecureAggregation: v['insecure-aggregation'] === true,
      secAgg: { k: intFlag(v['secagg-k'], 'secagg-k', 1), t: intFlag(v['secagg-t'], 'secagg-t', 2), clip: numFlag(v['secagg-clip'], 'secagg-clip') },
      ...(tlsCert || tlsKey ? { tls: { cert: tlsCert!, key: tlsKey! } } : {}),
    });
    const url = await coord.serve(intFlag(v.port, 'port', 0));
    process.stdout.write(`coordinator key ${coord.publicKey} (clients pin it with --coordinator-key)\n`);
    process.stdout.write(`coordinator listening on ${url} (status: ${url}/status, metrics: ${url}/metrics)\n`);
    const stop = () => { void coord.close().then(() => process.exit(130)); };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    const r = await coord.done;
    process.stdout.write(`done: ${r.completedRounds} rounds completed\n`);
    if (v.linger === true) return new Promise<number>(() => undefined);
    await coord.close(); // waits for the clients' acks of session:done (bounded)
    return 0;
  },
};
