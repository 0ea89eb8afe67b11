/**
 * Client behaviour an operator relies on (issue 9), against a real coordinator over TCP: rejoining
 * with the same identity on a fresh --state, the refusal hint when a key already holds another id,
 * the warning for a --personal glob that matches nothing, honest round counts after the coordinator
 * resumed, and the base model name recorded in the global adapter, and checkpoint retention.
 */
import { expect } from 'chai';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client, idForKey } from '../../client/client.js';
import type { LocalTrainer } from '../../client/trainer.js';
import { formatPublicKey, generateIdentity, saveIdentity } from '../../shared/crypto/index.js';
import { setLogLevel, setLogSink, type Level } from '../../shared/log.js';
import { FIXTURE, pullTrainer } from '../coordinator/helpers.js';
import { Resources, within } from '../coordinator/hostile-client.js';

/** Captures log lines (level info and up) and lets a test await one. */
function logWatch(): { lines: { level: Level; msg: string }[]; waitFor(re: RegExp, from?: number, ms?: number): Promise<string>; restore(): void } {
  const lines: { level: Level; msg: string }[] = [];
  let waiters: (() => void)[] = [];
  setLogLevel('info');
  setLogSink((level, _ns, msg) => { lines.push({ level, msg }); const w = waiters; waiters = []; for (const f of w) f(); });
  return {
    lines,
    waitFor: (re, from = 0, ms = 20_000) => within(`log ${re}`, new Promise<string>((res) => {
      const check = () => { const l = lines.slice(from).find((x) => re.test(x.msg)); if (l) res(l.msg); else waiters.push(check); };
      check();
    }), ms),
    restore: () => {
      setLogSink((level, ns, msg) => process.stderr.write(`${new Date().toISOString().slice(11, 23)} ${level.padEnd(5)} ${ns} ${msg}\n`));
      setLogLevel('warn');
    },
  };
}

describe('client: operator-facing behaviour', function () {
  this.timeout(60_000);
  let dir: string;
  let r: Resources;
  let logs: ReturnType<typeof logWatch>;
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-clientops-')); r = new Resources(); logs = logWatch(); });
  afterEach(async () => { logs.restore(); await r.closeAll(); await rm(dir, { recursive: true, force: true }); });

  it('the same identity on a fresh --state rejoins under the same id; a state holding another id gets a hint naming --id and the --state', async () => {
    const coord = r.coordinator(new Coordinator({ allowAnyClient: true, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 1, clientsPerRound: 2, minClients: 2, maxRank: 4, localSteps: 1 }));
    const url = await coord.serve(0);
    const identity = generateIdentity();
    const idFile = join(dir, 'client.identity');
    await saveIdentity(idFile, identity);
    const derived = idForKey(identity.publicKey);
    const trainer = await pullTrainer(0.1);
    const make = (state: string) => r.client(new Client({ coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, state), identity: idFile, maxRank: 4, trainerFactory: async () => trainer }));

    const a = make('s1');
    void a.run().catch(() => undefined);
    await logs.waitFor(new RegExp(`^${derived}: ready`));
    expect(a.clientId).to.equal(derived);
    await a.stop();

    // a crashed client restarted on a fresh --state with the same identity file: same id, admitted
    const mark = logs.lines.length;
    const b = make('s2');
    void b.run().catch(() => undefined);
    await logs.waitFor(new RegExp(`^${derived}: ready`), mark);
    expect(b.clientId).to.equal(derived);
    expect(coord.status().connected.map((c) => c.clientId)).to.deep.equal([derived]);
    await b.stop();

    // a --state written before ids were derived from keys holds another id: refused, with the way back
    const s3 = join(dir, 's3');
    await mkdir(s3);
    await writeFile(join(s3, 'client-id'), 'client-0123456789ab\n');
    const c = make('s3');
    let err: Error & { code?: string } | undefined;
    try { await within('refused run', c.run(), 20_000); } catch (e) { err = e as Error & { code?: string }; }
    expect(err?.code).to.equal('IDENTITY_MISMATCH');
    expect(err?.message).to.include(`this key already joined as ${derived}`);
    expect(err?.message).to.include(`--state ${s3} holds id client-0123456789ab`);
    expect(err?.message).to.include(`pass --id ${derived}`);
    expect(err?.message).to.include(formatPublicKey(identity.publicKey));
  });

  it('warns about a --personal glob that matches no tensor (naming it and real tensor names); counts each round once after the coordinator resumed; records the base model name', async () => {
    const stateDir = join(dir, 'coord');
    const opts = { allowAnyClient: true, modelDir: FIXTURE, stateDir, rounds: 2, clientsPerRound: 2, minClients: 2, maxRank: 4, localSteps: 1, joinWaitMs: 50, rejoinGraceMs: 200, keepCheckpoints: 1 };
    const coord1 = r.coordinator(new Coordinator(opts));
    const url = await coord1.serve(0);
    const port = Number(new URL(url).port);
    expect(coord1.globalAdapter!.config.baseModelNameOrPath, 'the fixture folder is named "base"').to.equal('base');

    // client 1 stalls in its second training call (round 2) until the first coordinator is gone
    const base0 = await pullTrainer(0.1), base1 = await pullTrainer(0.3);
    let calls0 = 0, calls1 = 0;
    let open!: () => void;
    const gate = new Promise<void>((res) => { open = res; });
    let round2By0!: () => void;
    const trained2 = new Promise<void>((res) => { round2By0 = res; });
    // (a personal fine-tune pass is an extra train call on the 'personal' optimizer key: not a round's training)
    const t0: LocalTrainer = { ...base0, train: async (s, o) => { const out = await base0.train(s, o); if (o.optimizerKey !== 'personal' && ++calls0 === 2) round2By0(); return out; } };
    const t1: LocalTrainer = { ...base1, train: async (s, o) => { if (++calls1 === 2) await gate; return base1.train(s, o); } };
    const clients = [t0, t1].map((t, i) => r.client(new Client({
      coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, `c${i}`), clientId: `c${i}`, maxRank: 4, trainerFactory: async () => t,
      reconnectInitialMs: 100, reconnectMaxMs: 500, ...(i === 0 ? { personal: ['*.layers.11.*', '*.layers.1.*'] } : {}),
    })));
    const runs = clients.map((c) => c.run());

    await within('client 0 trains round 2', trained2, 30_000);
    expect(coord1.completedRounds).to.equal(1);
    const warned = logs.lines.filter((l) => l.level === 'warn' && /--personal/.test(l.msg));
    expect(warned, 'one warning, for the glob that matches nothing').to.have.length(1);
    expect(warned[0]!.msg).to.match(/--personal "\*\.layers\.11\.\*" matches none of the \d+ adapter tensors, so it keeps nothing personal; tensor names look like "base_model\.model\.model\.layers\.0\./);

    // the coordinator goes away mid-round 2 and comes back on the same state and port: round 2 runs again
    await coord1.close();
    const coord2 = r.coordinator(new Coordinator(opts));
    await coord2.serve(port);
    open();
    const [done0, done1] = await within('both clients finish', Promise.all(runs), 40_000);
    expect(calls0, 'client 0 trained round 2 twice (before and after the resume)').to.equal(3);
    expect(done0).to.deep.equal({ completedRounds: 2, roundsTrained: 2 });
    expect(done1!.completedRounds).to.equal(2);
    expect(done1!.roundsTrained).to.be.at.most(2);
    expect((await coord2.done).completedRounds).to.equal(2);
    expect(coord2.globalAdapter!.config.baseModelNameOrPath).to.equal('base');
    // --keep-checkpoints 1: only the newest checkpoint folder stays
    expect((await readdir(stateDir)).filter((n) => n.startsWith('checkpoint-'))).to.deep.equal(['checkpoint-000002']);
  });
});
