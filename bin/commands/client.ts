import { Client, dumpContributions } from '../../client/index.js';
import { ConfigError } from '../../shared/errors.js';
import { configureThreads } from '../../shared/backend/index.js';
import { intFlag, listFlag, numFlag, str, threadsFlag, type Command } from './flags.js';

export const clientCommand: Command = {
  name: 'client',
  summary: 'Join a federation: fetch the base model once, train LoRA on local data each round, upload only shared adapter tensors.',
  usage: 'fedlora client --coordinator URL --data FILE --state DIR [options]',
  flags: {
    coordinator: { type: 'string', placeholder: 'URL', help: 'coordinator URL with its scheme: http://10.0.0.5:7777, or https://… for a coordinator started with --tls-cert; a comma-separated list of cluster edges is tried in turn when one cannot be reached; required' },
    data: { type: 'string', placeholder: 'FILE', help: 'JSONL training data: {"text"} or {"prompt","completion"} per line (loss on completion only); required' },
    state: { type: 'string', placeholder: 'DIR', help: 'client folder: id, model cache, personal tensors; required' },
    'max-rank': { type: 'string', placeholder: 'N', help: 'largest LoRA rank this machine can train', default: '8' },
    backend: { type: 'string', placeholder: 'NAME', help: 'tfjs backend: auto | tensorflow | webgpu | wasm | cpu', default: 'auto' },
    'base-dtype': { type: 'string', placeholder: 'TYPE', help: 'keep the frozen base\'s linear weights outside the tfjs heap as fp32 | bf16 | int8 | nf4 (QLoRA 4-bit) and materialise one layer at a time: bases larger than the wasm heap train, steps get slower (default: all weights in the heap)' },
    'recompute-blocks': { type: 'boolean', help: 'recompute each transformer block\'s activations in the backward pass instead of keeping them: less training memory for about twice the step time (a Qwen2-0.5B nf4 step: 1.5 instead of 1.8 GiB, 43 instead of 21 s)' },
    threads: { type: 'string', placeholder: 'N', help: 'threads for the wasm backend (XNNPACK matrix products): a number, or auto = every core (tfjs uses at most 8); falls back to 1 with the reason logged if the threaded build cannot start', default: 'auto' },
    personal: { type: 'string', placeholder: 'GLOB', help: 'glob over PEFT tensor names this client personalizes, e.g. "*.layers.11.*" (comma-separated or repeated); see --personal-mode', multiple: true },
    'personal-mode': { type: 'string', placeholder: 'MODE', help: 'finetune: the matched tensors are shared like the rest and, each round, a private copy is fine-tuned on top of the global adapter; exclusive: they never leave this client (the global copy is then trained by nobody who keeps them)', default: 'finetune' },
    'personal-steps': { type: 'string', placeholder: 'N', help: 'fine-tuning steps for the personal copy each round under --personal-mode finetune (default: the round\'s local steps)' },
    'eval-fraction': { type: 'string', placeholder: 'X', help: 'fraction of local data held out to evaluate global and personalized adapters', default: '0.2' },
    model: { type: 'string', placeholder: 'DIR', help: 'folder already holding the base model (verified against the coordinator\'s hash; skips download)' },
    id: { type: 'string', placeholder: 'ID', help: 'client id (default: derived from the identity key, kept in the state folder); to rejoin under the id a key already holds, pass it here' },
    seed: { type: 'string', placeholder: 'N', help: 'local seed (data split, batch order)', default: '0' },
    identity: { type: 'string', placeholder: 'FILE', help: 'client identity file (created on first run; its public key is printed for enrollment); default: <state>/client.identity' },
    'coordinator-key': { type: 'string', placeholder: 'KEY', help: 'pin the coordinator key (ed25519:…); without it the first key seen is trusted and stored under --state' },
    'insecure-aggregation': { type: 'boolean', help: 'also take part in rounds without secure aggregation (the update then reaches the coordinator in the clear)' },
    'tls-ca': { type: 'string', placeholder: 'FILE', help: 'PEM certificate (or CA) to trust for an https:// coordinator with a self-signed or private-CA certificate' },
    'debug-dump-contributions': { type: 'string', placeholder: 'DIR', help: 'TEST ONLY: also write each round\'s plaintext contribution to DIR/debug-contribution-<round>.msgpack (defeats secure aggregation)' },
  },
  async run(v) {
    configureThreads(threadsFlag(v.threads));
    const dumpDir = str(v['debug-dump-contributions'], 'debug-dump-contributions');
    const client = new Client({
      coordinatorUrl: str(v.coordinator, 'coordinator', true)!, dataFile: str(v.data, 'data', true)!, stateDir: str(v.state, 'state', true)!,
      maxRank: intFlag(v['max-rank'], 'max-rank', 1), backend: str(v.backend, 'backend'), ...(v['base-dtype'] !== undefined ? { baseDtype: str(v['base-dtype'], 'base-dtype') as 'nf4' } : {}), ...(v['recompute-blocks'] === true ? { recomputeBlocks: true } : {}), personal: listFlag(v.personal),
      personalMode: personalMode(v['personal-mode']), personalSteps: intFlag(v['personal-steps'], 'personal-steps', 0),
      evalFraction: numFlag(v['eval-fraction'], 'eval-fraction'), modelDir: str(v.model, 'model'), clientId: str(v.id, 'id'),
      seed: intFlag(v.seed, 'seed', 0), progress: process.stderr.isTTY === true,
      identity: str(v.identity, 'identity'), coordinatorKey: str(v['coordinator-key'], 'coordinator-key'), insecureAggregation: v['insecure-aggregation'] === true,
      tlsCa: str(v['tls-ca'], 'tls-ca'),
      ...(dumpDir ? { observe: { contribution: dumpContributions(dumpDir) } } : {}),
    });
    if (dumpDir) process.stderr.write(`warning: --debug-dump-contributions writes this client's plaintext updates to ${dumpDir} (tests only)\n`);
    await client.prepare(); // dataset, backend, CA file, key pin: checked before the state folder is created or anything connects
    const me = await client.loadIdentity();
    process.stdout.write(`client public key ${me.publicKey}${me.created ? ' (new identity: enroll it on the coordinator)' : ''}\n`);
    const stop = () => { void client.stop().then(() => process.exit(130)); };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    const r = await client.run();
    process.stdout.write(`done: trained in ${r.roundsTrained} of the ${r.completedRounds} completed rounds\n`);
    return 0;
  },
};

function personalMode(v: unknown): 'finetune' | 'exclusive' {
  const m = str(v, 'personal-mode') ?? 'finetune';
  if (m !== 'finetune' && m !== 'exclusive') throw new ConfigError(`--personal-mode must be finetune or exclusive, got ${JSON.stringify(m)}`);
  return m;
}
