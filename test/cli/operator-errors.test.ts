/**
 * The operator's error paths (issue 9), each through the real CLI in a child process: exit codes,
 * what stderr says, and that a refused start leaves no files behind. Coordinators the clients talk
 * to are real (TLS with an openssl certificate, plain http, or a closed port).
 */
import { expect } from 'chai';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { saveState } from '../../coordinator/state-store.js';
import { loadPeftAdapter } from '../../shared/lora/peft.js';
import { setLogLevel } from '../../shared/log.js';
import { formatPublicKey, generateIdentity, saveIdentity } from '../../shared/crypto/index.js';
import { idForKey } from '../../client/client.js';
import { Cli, makeCert, runCli } from './cli-harness.js';

const TINY = 'test/fixtures/hf/llama-tiny/base';
const SPAM = 'simulations/models/spam-llama';
const GOOD_DATA = '{"text":"hello there, how are you"}\n{"text":"fine thanks and you"}\n{"text":"all good here"}\n';

async function listen(server: Server, port = 0): Promise<number> {
  await new Promise<void>((res, rej) => { server.once('error', rej); server.listen(port, '127.0.0.1', () => res()); });
  return (server.address() as { port: number }).port;
}

describe('operator error paths (CLI, real processes)', function () {
  // several CLI starts per test (each loads tsx and tfjs): generous on a loaded 2-core machine
  this.timeout(300_000);
  let dir: string;
  before(() => setLogLevel('error'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-ops-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  describe('flags and help', () => {
    it('an unknown flag is named once, with a "did you mean", exit 2', async () => {
      const r = await runCli(['coordinator', '--prot', '5']);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/^fedlora coordinator: unknown option --prot; did you mean --port\?/);
      expect(r.stderr).to.not.match(/coordinator: coordinator:/);
      const c = await runCli(['client', '--tls-cs', 'x.pem']);
      expect(c.code).to.equal(2);
      expect(c.stderr).to.match(/^fedlora client: unknown option --tls-cs; did you mean --tls-ca\?/);
    });

    it('--help shows N/DIR/FILE/URL/GLOB placeholders (never VALUE); the command list and README name every command, export included', async () => {
      const top = await runCli(['--help']);
      const commands = [...top.stdout.matchAll(/^ {2}([a-z]+) {2,}/gm)].map((m) => m[1]!);
      expect(commands).to.include.members(['coordinator', 'client', 'simulate', 'keygen', 'export']);
      const readme = await readFile('README.md', 'utf8');
      for (const c of commands) {
        const h = await runCli([c, '--help']);
        expect(h.code, c).to.equal(0);
        expect(h.stdout, `${c} --help`).to.not.match(/\bVALUE\b/);
        expect(readme, `README mentions fedlora ${c}`).to.include(`fedlora ${c}`);
      }
      const client = await runCli(['client', '--help']);
      expect(client.stdout).to.match(/--coordinator URL/).and.match(/--data FILE/).and.match(/--state DIR/).and.match(/--personal GLOB/).and.match(/--max-rank N/);
      const coord = await runCli(['coordinator', '--help']);
      expect(coord.stdout).to.match(/--keep-checkpoints N/).and.match(/--round-timeout DURATION/);
    });
  });

  describe('coordinator: every flag checked before anything is written', () => {
    const refused = async (extra: string[], re: RegExp) => {
      const state = join(dir, 'state');
      const r = await runCli(['coordinator', '--model', TINY, '--state', state, '--allow-any-client', ...extra]);
      expect(r.code, `${extra.join(' ')}: ${r.stderr}`).to.equal(2);
      expect(r.stderr, extra.join(' ')).to.match(re);
      expect(r.stderr, 'a message, not a stack trace').to.not.match(/\n\s+at /);
      expect(existsSync(state), `${extra.join(' ')} created the state folder`).to.equal(false);
    };

    it('--port 99999, a port in use, bad numbers, a missing model or enrollment list, half a TLS pair: exit 2, no state folder or identity', async () => {
      const busy = createServer();
      const port = await listen(busy);
      try {
        await refused(['--port', '99999'], /--port must be an integer in \[0, 65535\], got "99999"/);
        await refused(['--port', String(port)], new RegExp(`port ${port} is in use`));
        await refused(['--rounds', '0'], /--rounds must be an integer ≥ 1/);
        await refused(['--keep-checkpoints', 'all'], /--keep-checkpoints must be an integer ≥ 0/);
        await refused(['--strategy', 'fedsgd'], /--strategy must be one of/);
        await refused(['--round-timeout', 'soon'], /--round-timeout must be a duration/);
        await refused(['--target-modules', 'nope_proj'], /--target-modules nope_proj matches no linear module/);
        await refused(['--tls-cert', join(dir, 'cert.pem')], /--tls-cert and --tls-key go together/);
        await refused(['--authorized-clients', join(dir, 'nobody')], /cannot read --authorized-clients .*nobody: ENOENT/);
        await writeFile(join(dir, 'enrolled'), 'not-a-key hospital\n');
        await refused(['--authorized-clients', join(dir, 'enrolled')], /enrolled/);
      } finally {
        busy.close();
      }
      const r = await runCli(['coordinator', '--model', join(dir, 'no-model'), '--state', join(dir, 'state'), '--allow-any-client']);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/--model .*no-model is not a folder/);
      expect(existsSync(join(dir, 'state'))).to.equal(false);
    });

    it('a restart with other settings on the same --state lists every mismatch at once with the flags that resume, and writes nothing', async () => {
      const adapter = await loadPeftAdapter('test/fixtures/hf/llama-tiny/adapter');
      const state = join(dir, 'state');
      await saveState(state, { modelId: 'sha256:feedbeef', strategy: 'fedit', maxRank: 4, seed: 1, loraAlpha: 8, targetModules: adapter.config.targetModules, completedRounds: 2, strategyState: {}, history: [] }, adapter);
      const before = (await readdir(state)).sort();
      const r = await runCli(['coordinator', '--model', TINY, '--state', state, '--allow-any-client', '--port', '0', '--strategy', 'rank-aware', '--max-rank', '8', '--lora-alpha', '16']);
      expect(r.code).to.equal(2);
      for (const f of ['modelId', 'strategy', 'maxRank', 'loraAlpha']) expect(r.stderr).to.include(`${f}: the state has`);
      expect(r.stderr).to.match(/resume it with: --model <the folder of base model sha256:feedbeef…> --strategy fedit --max-rank 4 --lora-alpha 8; or start a new run with a fresh --state/);
      expect((await readdir(state)).sort(), 'no identity or other file added').to.deep.equal(before);
    });

    it('--max-rank above min(d_in, d_out) is capped with a warning; /status shows the capped rank', async () => {
      const c = new Cli(['coordinator', '--model', TINY, '--state', join(dir, 'state'), '--allow-any-client', '--port', '0', '--max-rank', '1000', '--min-clients', '2']);
      try {
        const [, url] = await c.waitFor('stdout', /listening on (http:\/\/[^ ]+) /);
        expect(c.stderr).to.match(/--max-rank 1000 is above min\(d_in, d_out\) = 32 of \d+ adapted module\(s\) \(e\.g\. [^)]*k_proj[^)]*\): using rank 32/);
        const status = await (await fetch(`${url}/status`)).json() as { maxRank: number };
        expect(status.maxRank).to.equal(32);
      } finally {
        await c.kill();
      }
    });
  });

  describe('client: local inputs checked before connecting', () => {
    it('no scheme, bad JSONL, wrong fields, --backend gpu, an unreadable or non-PEM --tls-ca: clear error, no connection, no state folder', async () => {
      let connections = 0;
      const server = createServer((s) => { connections++; s.destroy(); });
      const port = await listen(server);
      const good = join(dir, 'good.jsonl');
      await writeFile(good, GOOD_DATA);
      await writeFile(join(dir, 'bad.jsonl'), '{"text":"ok line"}\n{"text": oops}\n');
      await writeFile(join(dir, 'fields.jsonl'), '{"text":"ok line"}\n{"body":"no text field"}\n');
      await writeFile(join(dir, 'not-a-cert.pem'), 'hello\n');
      const url = `http://127.0.0.1:${port}`;
      const cases: [string[], RegExp][] = [
        [['--coordinator', `127.0.0.1:${port}`, '--data', good], new RegExp(`not a URL; it needs a scheme, e\\.g\\. http://127\\.0\\.0\\.1:${port}`)],
        [['--coordinator', `localhost:${port}`, '--data', good], new RegExp(`no scheme; write http://localhost:${port}`)],
        [['--coordinator', `ftp://127.0.0.1:${port}`, '--data', good], /scheme ftp:\/\/ is not supported; use http:\/\/ or https:\/\//],
        [['--coordinator', `${url}/socket`, '--data', good], new RegExp(`drop the path /socket: http://127\\.0\\.0\\.1:${port}`)],
        [['--coordinator', url, '--data', join(dir, 'bad.jsonl')], /bad\.jsonl:2: invalid JSON/],
        [['--coordinator', url, '--data', join(dir, 'fields.jsonl')], /fields\.jsonl:2: needs "text" or "prompt" \+ "completion"/],
        [['--coordinator', url, '--data', join(dir, 'missing.jsonl')], /missing\.jsonl/],
        [['--coordinator', url, '--data', good, '--backend', 'gpu'], /--backend must be one of auto, tensorflow, webgpu, wasm, cpu, got "gpu"/],
        [['--coordinator', url, '--data', good, '--tls-ca', join(dir, 'none.pem')], /cannot read --tls-ca .*none\.pem: ENOENT/],
        [['--coordinator', url, '--data', good, '--tls-ca', join(dir, 'not-a-cert.pem')], /not-a-cert\.pem holds no PEM certificate/],
        [['--coordinator', url, '--data', good, '--coordinator-key', 'ed25519:short'], /--coordinator-key: .*not an ed25519 public key/],
        [['--coordinator', url, '--data', good, '--model', join(dir, 'no-model')], /--model .*no-model holds no config\.json/],
        [['--coordinator', url, '--data', good, '--id', 'bad id!'], /client id "bad id!" must match/],
      ];
      try {
        for (const [args, re] of cases) {
          const state = join(dir, 'client-state');
          const r = await runCli(['client', '--state', state, '--backend', 'cpu', ...args]);
          expect(r.code, `${args.join(' ')}: ${r.stderr}`).to.be.oneOf([1, 2]);
          expect(r.stderr, args.join(' ')).to.match(re);
          expect(existsSync(state), `${args.join(' ')} created the state folder`).to.equal(false);
        }
        expect(connections, 'no case connected to the coordinator').to.equal(0);
      } finally {
        server.close();
      }
    });
  });

  describe('client: why a connection fails', () => {
    let coord: Coordinator | undefined;
    afterEach(async () => { await coord?.close(); coord = undefined; });
    const serve = async (tls: boolean) => {
      const { cert, key } = makeCert(dir);
      coord = new Coordinator({ allowAnyClient: true, ...(tls ? { tls: { cert, key } } : {}), modelDir: TINY, stateDir: join(dir, 'coord'), rounds: 1, minClients: 2, clientsPerRound: 2, maxRank: 4, localSteps: 1 });
      return { url: await coord.serve(0), cert };
    };
    const client = async (url: string, extra: string[] = []) => {
      await writeFile(join(dir, 'data.jsonl'), GOOD_DATA);
      return runCli(['client', '--coordinator', url, '--data', join(dir, 'data.jsonl'), '--state', join(dir, 'client'), '--backend', 'cpu', ...extra]);
    };

    it('a self-signed TLS coordinator without --tls-ca: "not trusted, pass --tls-ca", exit 2 (no endless retry); with it the client joins', async () => {
      const { url, cert } = await serve(true);
      const r = await client(url);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/certificate at 127\.0\.0\.1:\d+ is not trusted \(DEPTH_ZERO_SELF_SIGNED_CERT: self[- ]signed certificate\); pass --tls-ca FILE/);
      expect(r.stderr).to.not.match(/websocket error/);
      const ok = new Cli(['client', '--coordinator', url, '--tls-ca', cert, '--data', join(dir, 'data.jsonl'), '--state', join(dir, 'client'), '--backend', 'cpu']);
      try {
        await ok.waitFor('stderr', /connected to https:/);
      } finally {
        await ok.kill();
      }
    });

    it('http:// against an https coordinator and https:// against an http one: "wrong scheme", exit 2', async () => {
      const { url } = await serve(true);
      const r = await client(url.replace('https:', 'http:'));
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/speaks TLS: the coordinator serves https; use https:\/\/127\.0\.0\.1:\d+/);
      await coord!.close();
      const plain = await serve(false);
      const r2 = await client(plain.url.replace('http:', 'https:'));
      expect(r2.code).to.equal(2);
      expect(r2.stderr).to.match(/does not speak TLS \(EPROTO\): the coordinator serves plain http; use http:\/\/127\.0\.0\.1:\d+/);
    });

    it('a dead coordinator: the real cause (ECONNREFUSED host:port) and "still retrying, next in N s", not once per attempt', async () => {
      const s = createServer();
      const port = await listen(s);
      await new Promise<void>((res) => s.close(() => res()));
      await writeFile(join(dir, 'data.jsonl'), GOOD_DATA);
      const c = new Cli(['client', '--coordinator', `http://127.0.0.1:${port}`, '--data', join(dir, 'data.jsonl'), '--state', join(dir, 'client'), '--backend', 'cpu'], { FEDLORA_LOG: 'debug' });
      try {
        await c.waitFor('stderr', /connect attempt 4 failed \(ECONNREFUSED\)/);
        const lines = c.stderr.split('\n').filter((l) => /cannot reach/.test(l));
        expect(lines, 'one line for four failures with the same cause').to.have.length(1);
        expect(lines[0]).to.match(new RegExp(`cannot reach http://127\\.0\\.0\\.1:${port}: connection refused \\(ECONNREFUSED 127\\.0\\.0\\.1:${port}\\).*; still retrying \\(attempt 1\\), next in about 0\\.5 s`));
        expect(c.stderr).to.not.match(/websocket error/);
      } finally {
        await c.kill();
      }
    });
  });

  describe('what the operator sees of a running federation', () => {
    let coord: Coordinator | undefined;
    afterEach(async () => { await coord?.close(); coord = undefined; });

    it('GET /status names a client by its enrollment name and shows the backend it resolved from --backend auto', async () => {
      const identity = generateIdentity();
      const idFile = join(dir, 'client.identity');
      await saveIdentity(idFile, identity);
      coord = new Coordinator({ authorizedClients: [`${formatPublicKey(identity.publicKey)} hospital-a`], modelDir: SPAM, stateDir: join(dir, 'coord'), rounds: 1, minClients: 2, clientsPerRound: 2, maxRank: 4, localSteps: 1 });
      const url = await coord.serve(0);
      await writeFile(join(dir, 'data.jsonl'), GOOD_DATA);
      const c = new Cli(['client', '--coordinator', url, '--identity', idFile, '--data', join(dir, 'data.jsonl'), '--state', join(dir, 'client'), '--backend', 'auto']);
      try {
        const [, backend] = await c.waitFor('stderr', /using tfjs backend "([a-z]+)"/, 60_000);
        await c.waitFor('stderr', /: ready \(/, 60_000);
        const status = await (await fetch(`${url}/status`)).json() as { connected: { clientId: string; name?: string; backend: string; ready: boolean }[] };
        expect(status.connected).to.have.length(1);
        expect(status.connected[0]!.name).to.equal('hospital-a');
        expect(status.connected[0]!.backend).to.equal(backend).and.not.equal('auto');
        expect(status.connected[0]!.clientId).to.equal(idForKey(identity.publicKey));
      } finally {
        await c.kill();
      }
    });

    it('fedlora export records base_model_name_or_path: the recorded name, else --model\'s folder name, else the model hash', async () => {
      const adapter = await loadPeftAdapter('test/fixtures/hf/llama-tiny/adapter');
      const state = join(dir, 'state');
      const nameless = { ...adapter, config: { ...adapter.config, baseModelNameOrPath: null } };
      await saveState(state, { modelId: 'sha256:feedbeef', strategy: 'rank-aware', maxRank: 4, seed: 1, loraAlpha: 8, targetModules: adapter.config.targetModules, completedRounds: 1, strategyState: {}, history: [] }, nameless);
      const cfg = async (d: string) => JSON.parse(await readFile(join(d, 'adapter_config.json'), 'utf8')) as { base_model_name_or_path: unknown };
      expect((await runCli(['export', '--state', state, '--out', join(dir, 'a')])).code).to.equal(0);
      expect((await cfg(join(dir, 'a'))).base_model_name_or_path).to.equal('sha256:feedbeef');
      expect((await runCli(['export', '--state', state, '--out', join(dir, 'b'), '--model', TINY])).code).to.equal(0);
      expect((await cfg(join(dir, 'b'))).base_model_name_or_path).to.equal('base');
      await saveState(state, { modelId: 'sha256:feedbeef', strategy: 'rank-aware', maxRank: 4, seed: 1, loraAlpha: 8, targetModules: adapter.config.targetModules, completedRounds: 2, strategyState: {}, history: [] },
        { ...adapter, config: { ...adapter.config, baseModelNameOrPath: 'org/tiny-llama' } });
      expect((await runCli(['export', '--state', state, '--out', join(dir, 'c'), '--model', TINY])).code).to.equal(0);
      expect((await cfg(join(dir, 'c'))).base_model_name_or_path).to.equal('org/tiny-llama');
    });
  });

  describe('backend auto on this machine', () => {
    it('one info line names the backend in use and the skipped ones; no tfjs banner, no Dawn/Vulkan/XDG noise without a GPU device', async () => {
      const { spawn } = await import('node:child_process');
      const p = spawn(process.execPath, ['--import', 'tsx', '-e', "import('./shared/backend/index.ts').then((b) => b.selectBackend('auto')).then((s) => console.log(s.name))"],
        { env: { ...process.env, FEDLORA_LOG: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '', err = '';
      p.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
      p.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
      const code = await new Promise<number | null>((res) => p.once('close', res));
      expect(code, err).to.equal(0);
      const name = out.trim().split('\n').at(-1)!;
      const lines = err.split('\n').filter(Boolean);
      expect(lines.filter((l) => /fedlora:backend/.test(l)), err).to.have.length(1);
      expect(lines[0]).to.match(new RegExp(`info +fedlora:backend using tfjs backend "${name}"`));
      expect(err).to.not.match(/looks like you are running TensorFlow\.js/);
      const gpuNode = existsSync('/dev/dri') || existsSync('/dev/nvidia0') || existsSync('/dev/dxg');
      if (process.platform === 'linux' && !gpuNode) {
        expect(lines, err).to.have.length(1);
        expect(err).to.not.match(/XDG_RUNTIME_DIR|Couldn't load Vulkan|BackendVk/);
        expect(lines[0]).to.match(/webgpu: no GPU device/);
      }
    });
  });
});
