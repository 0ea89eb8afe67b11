/**
 * The leader lease and its fencing token against a real redis-server: one holder at a time, a
 * standby waits and wins once the holder is gone, and a former holder's check() fails (so it can
 * no longer write checkpoints) after someone else won the lease.
 */
import { expect } from 'chai';
import { Redis } from 'ioredis';
import { Lease, LeaseLostError } from '../../coordinator/cluster/lease.js';
import { startRedis, type RedisServer } from './redis-harness.js';

describe('cluster: leader lease with fencing', function () {
  this.timeout(20_000);
  let redis: RedisServer | undefined;
  const conns: Redis[] = [];
  const leases: Lease[] = [];
  const conn = () => { const c = new Redis(redis!.url, { maxRetriesPerRequest: 1 }); conns.push(c); return c; };
  beforeEach(async () => { redis = await startRedis(); });
  afterEach(async () => {
    await Promise.all(leases.splice(0).map((l) => l.release().catch(() => undefined)));
    for (const c of conns.splice(0)) c.disconnect();
    await redis?.stop();
    redis = undefined;
  });

  it('one holder; the standby wins after it is gone with a higher token; the old holder is fenced off', async () => {
    const a = new Lease(conn(), 't', 'A', 600), b = new Lease(conn(), 't', 'B', 600);
    leases.push(a, b);
    expect(await a.tryAcquire()).to.equal(true);
    expect(await b.tryAcquire()).to.equal(false);
    await a.check();
    let lost = false;
    a.onLost = () => { lost = true; };
    // A stops renewing as a crashed or paused process would; its key expires and B, waiting, wins
    const standby = b.acquire();
    const admin = conn();
    await admin.del('t:leader'); // the expiry, without waiting for it
    await standby;
    expect(b.token).to.be.greaterThan(a.token);
    await b.check();
    let err: unknown;
    try { await a.check(); } catch (e) { err = e; }
    expect(err).to.be.instanceOf(LeaseLostError);
    expect(lost).to.equal(true);
    expect(a.held).to.equal(false);
    expect(await admin.get('t:leader')).to.equal('B');
  });
});
