import { createServer } from 'node:net';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Coordinator, type CoordinatorOptions } from '../../coordinator/index.js';
import { ClusterEdge } from '../../coordinator/cluster/edge.js';
import { ConfigError, errorMessage } from '../../shared/errors.js';
import { parseAuthorizedClients } from '../../shared/crypto/index.js';
import { SERVER_OPT_DEFAULTS, SERVER_OPT_NAMES, checkServerOpt, hasStrategy, strategyNames, type ServerOptConfig } from '../../shared/aggregation/index.js';
import { durationMs, intFlag, listFlag, numFlag, str, type Command } from './flags.js';

/** --server-opt and its hyper-parameter flags as CoordinatorOptions.serverOpt, checked with the flags named in errors. */
function serverOptFlags(v: Record<string, unknown>): ServerOptConfig {
  const cfg = {
    name: (str(v['server-opt'], 'server-opt') ?? 'none') as ServerOptConfig['name'],
    lr: numFlag(v['server-lr'], 'server-lr'), beta1: numFlag(v['server-beta1'], 'server-beta1'),
    beta2: numFlag(v['server-beta2'], 'server-beta2'), eps: numFlag(v['server-eps'], 'server-eps'),
  };
  checkServerOpt(cfg, 'serverOpt', true);
  return Object.fromEntries(Object.entries(cfg).filter(([, x]) => x !== undefined)) as unknown as ServerOptConfig;
}

/** --dp and its flags as CoordinatorOptions.dp (validated with the other options by the Coordinator). */
function dpFlags(v: Record<string, unknown>): { dp?: CoordinatorOptions['dp'] } {
  const mode = str(v.dp, 'dp') ?? 'off';
  if (mode !== 'off' && mode !== 'central' && mode !== 'distributed') throw new ConfigError(`--dp must be off, central or distributed, got ${JSON.stringify(mode)}`);
  if (mode === 'off') return {};
  const target = numFlag(v['dp-target-epsilon'], 'dp-target-epsilon'), population = intFlag(v['dp-population'], 'dp-population', 1);
  return {
    dp: {
      mode, clip: numFlag(v['dp-clip'], 'dp-clip'), noise: numFlag(v['dp-noise'], 'dp-noise'), delta: numFlag(v['dp-delta'], 'dp-delta'),
      dropoutRate: numFlag(v['dp-dropout'], 'dp-dropout'), ...(target !== undefined ? { targetEpsilon: target } : {}), ...(population !== undefined ? { population } : {}),
    },
  };
}

export const coordinatorCommand: Command = {
  name: 'coordinator',
  summary: 'Run the federation coordinator: serves the base model, runs rounds, aggregates adapters, checkpoints.',
  usage: 'fedlora coordinator --model DIR --state DIR [--port N] [options]',
  flags: {
    model: { type: 'string', placeholder: 'DIR', help: 'base model folder (config.json, model.safetensors, tokenizer files); required' },
    state: { type: 'string', placeholder: 'DIR', help: 'state folder: checkpoints, round number, metrics; an existing state resumes; required' },
    port: { type: 'string', placeholder: 'N', help: 'TCP port for socket.io + HTTP (/status, /metrics); 0 picks a free one', default: '7777' },
    host: { type: 'string', placeholder: 'ADDR', help: 'interface to bind', default: '127.0.0.1' },
    rounds: { type: 'string', placeholder: 'N', help: 'total federated rounds', default: '3' },
    'clients-per-round': { type: 'string', placeholder: 'N', help: 'clients sampled per round', default: '3' },
    'min-clients': { type: 'string', placeholder: 'N', help: 'a round needs this many ready clients to start and this many updates to count', default: '2' },
    'round-timeout': { type: 'string', placeholder: 'DURATION', help: 'stop collecting updates after this long (e.g. 90, 30s, 10m); stragglers are left out', default: '10m' },
    'rejoin-grace': { type: 'string', placeholder: 'DURATION', help: 'how long a participant that lost its connection may take to rejoin the round', default: '3s' },
    'join-wait': { type: 'string', placeholder: 'DURATION', help: 'with ≥ min-clients ready, wait this long for more before starting a round', default: '3s' },
    strategy: { type: 'string', placeholder: 'NAME', get help() { return `aggregation: ${strategyNames().join(' | ')}`; }, default: 'rank-aware' },
    'max-rank': { type: 'string', placeholder: 'N', help: 'global LoRA rank; clients train at min(their --max-rank, this)', default: '8' },
    'target-modules': { type: 'string', placeholder: 'LIST', help: 'comma-separated module names to adapt (PEFT target_modules); default: every linear layer', multiple: true },
    'lora-alpha': { type: 'string', placeholder: 'X', help: 'LoRA alpha at max rank (scale alpha/r is kept across ranks)', default: '16' },
    'local-steps': { type: 'string', placeholder: 'N', help: 'optimizer steps per client per round', default: '20' },
    'local-epochs': { type: 'string', placeholder: 'X', help: 'if > 0, train this many passes over local data instead of --local-steps', default: '0' },
    lr: { type: 'string', placeholder: 'X', help: 'client learning rate', default: '0.001' },
    'batch-size': { type: 'string', placeholder: 'N', help: 'client batch size', default: '4' },
    seed: { type: 'string', placeholder: 'N', help: 'seed for adapter init and client sampling', default: '42' },
    export: { type: 'string', placeholder: 'DIR', help: 'write the final global adapter here in PEFT format when all rounds are done' },
    'no-refactor': { type: 'boolean', help: 'do not re-factor (QR+SVD) the global adapter after aggregation' },
    'server-opt': { type: 'string', placeholder: 'NAME', help: `server optimiser on each round's aggregate: ${SERVER_OPT_NAMES.join(' | ')} (works with every linear strategy; checkpointed, a resume needs the same settings)`, default: 'none' },
    'server-lr': { type: 'string', placeholder: 'X', help: `server learning rate η (default ${SERVER_OPT_DEFAULTS.fedavgm.lr} for fedavgm, ${SERVER_OPT_DEFAULTS.fedadam.lr} for fedadam/fedyogi)` },
    'server-beta1': { type: 'string', placeholder: 'X', help: `server momentum / first-moment decay β1 in [0, 1) (default ${SERVER_OPT_DEFAULTS.fedavgm.beta1} for fedavgm, ${SERVER_OPT_DEFAULTS.fedadam.beta1} for fedadam/fedyogi)` },
    'server-beta2': { type: 'string', placeholder: 'X', help: `fedadam/fedyogi: second-moment decay β2 in [0, 1) (default ${SERVER_OPT_DEFAULTS.fedadam.beta2})` },
    'server-eps': { type: 'string', placeholder: 'X', help: `fedadam/fedyogi: adaptivity τ added to √v (default ${SERVER_OPT_DEFAULTS.fedadam.eps})` },
    dora: { type: 'boolean', help: 'DoRA (PEFT use_dora): train and share a magnitude vector per module too (initialised to the base weight row norms)' },
    'keep-checkpoints': { type: 'string', placeholder: 'N', help: 'keep the last N checkpoint-NNNNNN/ folders under --state (0 keeps every one)', default: '2' },
    linger: { type: 'boolean', help: 'keep serving /status and /metrics after the last round instead of exiting' },
    identity: { type: 'string', placeholder: 'FILE', help: 'coordinator identity file (created on first start); default: <state>/coordinator.identity' },
    'authorized-clients': { type: 'string', placeholder: 'FILE', help: 'enrolled client keys, one `ed25519:… [name]` per line, `revoked ed25519:…` to revoke; required unless --allow-any-client' },
    'allow-any-client': { type: 'boolean', help: 'development: accept any client key that proves possession (logged as a warning)' },
    'insecure-aggregation': { type: 'boolean', help: 'aggregate plaintext updates instead of secure aggregation (logged as a warning; clients must opt in too)' },
    'secagg-k': { type: 'string', placeholder: 'N', help: 'secure aggregation: neighbours per client (default n−1 up to 16 clients, else even ≥ 3·log2 n)' },
    'secagg-t': { type: 'string', placeholder: 'N', help: 'secure aggregation: Shamir threshold (default ⌊(k+1)/2⌋+1: tolerates just under half of a neighbourhood dropping)' },
    'secagg-clip': { type: 'string', placeholder: 'X', help: 'every contribution (secure or plain) is clipped to ±this per LoRA entry; the unmasked sum is checked against it', default: '8' },
    'max-examples-per-client': { type: 'string', placeholder: 'N', help: 'example counts clients declare are cut to this; a round weight is min(examples, cap)', default: '10000' },
    'join-timeout': { type: 'string', placeholder: 'DURATION', help: 'close connections that have not joined (challenge + hello) within this long', default: '30s' },
    'tls-cert': { type: 'string', placeholder: 'FILE', help: 'PEM certificate file: serve HTTPS/WSS (with --tls-key)' },
    'tls-key': { type: 'string', placeholder: 'FILE', help: 'PEM private key file for --tls-cert' },
    dp: { type: 'string', placeholder: 'MODE', help: 'client-level differential privacy (docs/PRIVACY.md): off | central (coordinator adds N(0, z²S²) to the sum; trusts the coordinator) | distributed (clients add Skellam noise before masking; needs secure aggregation). Personal tensors are outside the guarantee', default: 'off' },
    'dp-clip': { type: 'string', placeholder: 'S', help: 'DP: L2 clip of a client\'s whole shared update (all shared tensors, zero-padded to max rank); start near the median L2 norm of the shared vectors clients upload', default: '1' },
    'dp-noise': { type: 'string', placeholder: 'Z', help: 'DP: noise multiplier z (noise std = z·S on the sum); larger z, smaller ε per round', default: '1' },
    'dp-delta': { type: 'string', placeholder: 'D', help: 'DP: δ of the (ε, δ) guarantee; keep it well below 1/population', default: '1e-5' },
    'dp-target-epsilon': { type: 'string', placeholder: 'E', help: 'DP: refuse to start a round that would take ε above E, and end the run cleanly' },
    'dp-population': { type: 'string', placeholder: 'N', help: 'DP: clients that could be sampled (q = clients-per-round / N); default: the number of enrolled keys' },
    cluster: { type: 'string', placeholder: 'URL', help: 'scale-out (docs/ARCHITECTURE.md "Scale-out"): redis://HOST:PORT shared by one leader and its edges; with --role' },
    role: { type: 'string', placeholder: 'ROLE', help: 'with --cluster: leader (runs the rounds; needs --model/--state; a second leader waits as a standby for the lease) | edge (holds client sockets on --port; needs only --cluster, --port, TLS flags)' },
    'cluster-prefix': { type: 'string', placeholder: 'NAME', help: 'with --cluster: Redis key namespace of this federation', default: 'fedlora' },
    'dp-dropout': { type: 'string', placeholder: 'X', help: 'DP distributed: expected dropout rate in [0, 0.9); clients add 1/(1−X) more noise so the survivors still carry z', default: '0' },
  },
  async run(v) {
    // every flag is parsed and every input checked before anything is written (state folder, identity)
    const strategy = str(v.strategy, 'strategy') as string;
    if (!hasStrategy(strategy)) throw new ConfigError(`--strategy must be one of ${strategyNames().join(', ')}, got ${JSON.stringify(strategy)}`);
    const tlsCert = str(v['tls-cert'], 'tls-cert'), tlsKey = str(v['tls-key'], 'tls-key');
    if (!!tlsCert !== !!tlsKey) throw new ConfigError('--tls-cert and --tls-key go together');
    const port = intFlag(v.port, 'port', 0, 65535)!;
    const host = str(v.host, 'host') ?? '127.0.0.1';
    const cluster = str(v.cluster, 'cluster'), role = str(v.role, 'role'), prefix = str(v['cluster-prefix'], 'cluster-prefix') ?? 'fedlora';
    if (!!cluster !== !!role) throw new ConfigError('--cluster and --role go together');
    if (role && role !== 'leader' && role !== 'edge') throw new ConfigError(`--role must be leader or edge, got ${JSON.stringify(role)}`);
    if (role === 'edge') return runEdge({ cluster: cluster!, prefix, host, port, ...(tlsCert ? { tls: { cert: tlsCert, key: tlsKey! } } : {}) });
    const modelDir = str(v.model, 'model', true)!, stateDir = str(v.state, 'state', true)!;
    const authorizedClients = str(v['authorized-clients'], 'authorized-clients');
    const coord = new Coordinator({
      modelDir, stateDir, host,
      rounds: intFlag(v.rounds, 'rounds', 1), clientsPerRound: intFlag(v['clients-per-round'], 'clients-per-round', 1), minClients: intFlag(v['min-clients'], 'min-clients', 1),
      roundTimeoutMs: durationMs(v['round-timeout'], 'round-timeout'), joinWaitMs: durationMs(v['join-wait'], 'join-wait'), rejoinGraceMs: durationMs(v['rejoin-grace'], 'rejoin-grace'),
      strategy, maxRank: intFlag(v['max-rank'], 'max-rank', 1), targetModules: listFlag(v['target-modules']),
      loraAlpha: numFlag(v['lora-alpha'], 'lora-alpha'), localSteps: intFlag(v['local-steps'], 'local-steps', 0), localEpochs: numFlag(v['local-epochs'], 'local-epochs'),
      lr: numFlag(v.lr, 'lr'), batchSize: intFlag(v['batch-size'], 'batch-size', 1), seed: intFlag(v.seed, 'seed', 0), exportDir: str(v.export, 'export'),
      refactor: v['no-refactor'] !== true, serverOpt: serverOptFlags(v), dora: v.dora === true, keepCheckpoints: intFlag(v['keep-checkpoints'], 'keep-checkpoints', 0),
      maxExamplesPerClient: intFlag(v['max-examples-per-client'], 'max-examples-per-client', 1), joinTimeoutMs: durationMs(v['join-timeout'], 'join-timeout'),
      identity: str(v.identity, 'identity'), authorizedClients, allowAnyClient: v['allow-any-client'] === true,
      insecureAggregation: v['insecure-aggregation'] === true,
      secAgg: { k: intFlag(v['secagg-k'], 'secagg-k', 1), t: intFlag(v['secagg-t'], 'secagg-t', 2), clip: numFlag(v['secagg-clip'], 'secagg-clip') },
      ...(tlsCert || tlsKey ? { tls: { cert: tlsCert!, key: tlsKey! } } : {}),
      ...dpFlags(v),
      ...(cluster ? { cluster: { url: cluster, prefix } } : {}),
    });
    await checkInputs({ modelDir, stateDir, authorizedClients, tlsCert, tlsKey, identity: str(v.identity, 'identity'), host, port });
    const url = await coord.serve(port);
    process.stdout.write(`coordinator key ${coord.publicKey} (clients pin it with --coordinator-key)\n`);
    process.stdout.write(`coordinator listening on ${url} (status: ${url}/status, metrics: ${url}/metrics)\n`);
    const stop = () => { void coord.close().then(() => process.exit(130)); };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    const r = await coord.done;
    process.stdout.write(`done: ${r.completedRounds} rounds completed\n`);
    const st = coord.status();
    if (st.doneReason) process.stdout.write(`ended early: ${st.doneReason}\n`);
    if (st.privacy) process.stdout.write(`client-level DP (${st.privacy.mode}): ε = ${st.privacy.epsilon.toFixed(4)} at δ = ${st.privacy.delta} after ${st.privacy.rounds} round(s)\n`);
    if (v.linger === true) return new Promise<number>(() => undefined);
    await coord.close(); // waits for the clients' acks of session:done (bounded)
    return 0;
  },
};

/** `--role edge`: hold client sockets for the cluster's leader until SIGINT/SIGTERM. */
async function runEdge(o: { cluster: string; prefix: string; host: string; port: number; tls?: { cert: string; key: string } }): Promise<number> {
  const edge = new ClusterEdge({ cluster: o.cluster, prefix: o.prefix, host: o.host, ...(o.tls ? { tls: o.tls } : {}) });
  const url = await edge.serve(o.port);
  process.stdout.write(`edge ${edge.nodeId} listening on ${url} (cluster ${o.cluster})\n`);
  return new Promise<number>((res) => {
    const stop = () => { void edge.close().then(() => res(130)); };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}

const readable = async (file: string, flag: string): Promise<string> => {
  try { return await readFile(file, 'utf8'); } catch (e) { throw new ConfigError(`cannot read --${flag} ${file}: ${(e as NodeJS.ErrnoException).code ?? errorMessage(e)}`); }
};

/**
 * Read-only checks of the inputs a start would otherwise trip over after creating the state folder
 * and the identity: the model folder, the enrollment list, the TLS files, the state folder's kind,
 * and the port (bound once and released: a port in use or an address this host lacks fails here).
 */
async function checkInputs(o: { modelDir: string; stateDir: string; authorizedClients?: string; tlsCert?: string; tlsKey?: string; identity?: string; host: string; port: number }): Promise<void> {
  const isDir = await stat(o.modelDir).then((st) => st.isDirectory(), () => false);
  if (!isDir) throw new ConfigError(`--model ${o.modelDir} is not a folder (it needs config.json, model.safetensors and the tokenizer files)`);
  try { JSON.parse(await readable(join(o.modelDir, 'config.json'), 'model')); } catch (e) {
    throw e instanceof ConfigError ? new ConfigError(`--model ${o.modelDir} has no readable config.json`) : new ConfigError(`--model ${o.modelDir}: config.json is not valid JSON (${errorMessage(e)})`);
  }
  const st = await stat(o.stateDir).catch(() => null);
  if (st && !st.isDirectory()) throw new ConfigError(`--state ${o.stateDir} exists and is not a folder`);
  if (o.authorizedClients) {
    const text = await readable(o.authorizedClients, 'authorized-clients');
    try { parseAuthorizedClients(text, o.authorizedClients); } catch (e) { throw new ConfigError(`--authorized-clients ${errorMessage(e)}`); }
  }
  if (o.tlsCert && !(await readable(o.tlsCert, 'tls-cert')).includes('-----BEGIN CERTIFICATE')) throw new ConfigError(`--tls-cert ${o.tlsCert} holds no PEM certificate`);
  if (o.tlsKey && !/-----BEGIN [A-Z ]*PRIVATE KEY/.test(await readable(o.tlsKey, 'tls-key'))) throw new ConfigError(`--tls-key ${o.tlsKey} holds no PEM private key`);
  if (o.identity) {
    const id = await stat(o.identity).catch(() => null);
    if (id && !id.isFile()) throw new ConfigError(`--identity ${o.identity} is not a file`);
  }
  if (o.port !== 0) {
    const probe = createServer();
    await new Promise<void>((res, rej) => {
      probe.once('error', (e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN') { rej(new ConfigError(`--host ${o.host}: no such host name (${e.code})`)); return; }
        const why = e.code === 'EADDRINUSE' ? 'is in use by another process' : e.code === 'EADDRNOTAVAIL' ? 'is not an address of this machine' : e.code === 'EACCES' ? 'needs privileges (ports below 1024)' : `cannot be bound (${e.code ?? errorMessage(e)})`;
        rej(new ConfigError(`--host ${o.host} --port ${o.port}: ${e.code === 'EADDRNOTAVAIL' ? `${o.host} ${why}` : `port ${o.port} ${why}`}`));
      });
      probe.listen(o.port, o.host, () => probe.close(() => res()));
    });
  }
}
