/** HTTPS/WSS: a coordinator with --tls-cert/--tls-key and a client trusting its CA complete a secure round. */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { io } from 'socket.io-client';
import { Coordinator } from '../../coordinator/index.js';
import { Client } from '../../client/index.js';
import { PROTOCOL_VERSION } from '../../shared/protocol/index.js';
import { setLogLevel } from '../../shared/log.js';
import { FIXTURE, pullTrainer } from './helpers.js';
import { Resources, within } from './hostile-client.js';

describe('TLS', function () {
  this.timeout(30_000);
  let dir: string;
  let r: Resources;
  let cert: string, key: string;
  before(() => setLogLevel('error'));
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fedlora-tls-'));
    r = new Resources();
    cert = join(dir, 'cert.pem'); key = join(dir, 'key.pem');
    const p = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'ignore' });
    // .ci/run installs openssl where it is missing; a missing tool must fail, not hide the test
    if (p.status !== 0) throw new Error('openssl could not create a test certificate (install the Debian package openssl)');
  });
  afterEach(async () => { await r.closeAll(); await rm(dir, { recursive: true, force: true }); });

  const serve = async () => {
    const coord = r.coordinator(new Coordinator({ allowAnyClient: true, tls: { cert, key }, modelDir: FIXTURE, stateDir: join(dir, 'coord'), rounds: 1, clientsPerRound: 2, minClients: 2, maxRank: 4, localSteps: 1, joinWaitMs: 50 }));
    return { coord, url: await coord.serve(0) };
  };

  it('serves https/wss with a self-signed certificate; clients that trust it finish a secure round', async () => {
    const { coord, url } = await serve();
    expect(url).to.match(/^https:\/\/127\.0\.0\.1:\d+$/);
    const trainers = await Promise.all([0.1, 0.3].map((t) => pullTrainer(t)));
    const clients = [0, 1].map((i) => r.client(new Client({ coordinatorUrl: url, tlsCa: cert, dataFile: 'x', stateDir: join(dir, `c${i}`), clientId: `c${i}`, maxRank: 4, trainerFactory: async () => trainers[i]! })));
    const [done] = await Promise.all([coord.done, ...clients.map((c) => c.run())]);
    expect(done.completedRounds).to.equal(1);
    expect(coord.history[0]!.participants.map((p) => p.clientId).sort()).to.deep.equal(['c0', 'c1']);
  });

  it('a connection that does not trust the certificate fails the TLS handshake', async () => {
    const { url } = await serve();
    const s = r.socket(io(url, { auth: { protocolVersion: PROTOCOL_VERSION }, transports: ['websocket'], reconnection: false }));
    const err = await within('connect_error', new Promise<Error & { description?: unknown }>((res) => s.once('connect_error', res)), 10_000);
    expect(s.connected).to.equal(false);
    expect(String((err.description as { message?: string } | undefined)?.message ?? err.message)).to.match(/self[- ]signed|certificate|websocket error/i);
  });
});
