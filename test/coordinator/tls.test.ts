/** HTTPS/WSS: a coordinator with --tls-cert/--tls-key and a client trusting its CA complete a secure round. */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, pullTrainer } from './helpers.js';

describe('TLS', function () {
  this.timeout(30_000);
  let dir: string;
  before(() => setLogLevel('error'));
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'fedlora-tls-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  it('serves wss with a self-signed certificate; clients that trust it finish, clients that do not cannot connect', async function () {
    const cert = join(dir, 'cert.pem'), key = join(dir, 'key.pem');
    const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'ignore' });
    // .ci/run installs openssl where it is missing; a missing tool must fail, not hide the test
    if (r.status !== 0) throw new Error('openssl could not create a test certificate (install the Debian package openssl)');
    const coord = new Coordinator({ allowAnyClient: true, tls: { cert, key }, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 1, clientsPerRound: 2, minClients: 2, maxRank: 4, localSteps: 1, joinWaitMs: 50 });
    const url = await coord.serve(0);
    expect(url).to.match(/^https:\/\/127\.0\.0\.1:\d+$/);
    const trainers = await Promise.all([0.1, 0.3].map((t) => pullTrainer(t)));
    // without the CA the TLS handshake fails and the client keeps retrying without ever joining
    const untrusting = new Client({ coordinatorUrl: url, dataFile: 'x', stateDir: join(dir, 'u'), clientId: 'u', maxRank: 4, reconnectInitialMs: 100, trainerFactory: async () => trainers[0]! });
    void untrusting.run().catch(() => undefined);
    const clients = [0, 1].map((i) => new Client({ coordinatorUrl: url, tlsCa: cert, dataFile: 'x', stateDir: join(dir, `c${i}`), clientId: `c${i}`, maxRank: 4, trainerFactory: async () => trainers[i]! }));
    const [done] = await Promise.all([coord.done, ...clients.map((c) => c.run())]);
    expect(done.completedRounds).to.equal(1);
    expect(coord.history[0]!.participants.map((p) => p.clientId).sort()).to.deep.equal(['c0', 'c1']);
    expect(untrusting.connected).to.equal(false);
    await untrusting.stop();
    await coord.close();
  });
});
