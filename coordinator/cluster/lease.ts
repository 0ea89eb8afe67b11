/**
 * Leadership: a Redis lease (`SET key node NX PX ttl`, renewed by the holder only) plus a fencing
 * token (`INCR`) taken each time the lease is won. The leader checks both before each checkpoint
 * write, so a leader that lost its lease (paused, partitioned) cannot overwrite its successor's state.
 */
import type { Redis } from 'ioredis';
import { FedloraError } from '../../shared/errors.js';

const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end`;
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`;

export class LeaseLostError extends FedloraError {
  constructor(message: string) { super('LEASE_LOST', message); }
}

export class Lease {
  readonly #redis: Redis;
  readonly #key: string;
  readonly #fenceKey: string;
  readonly #node: string;
  readonly #ttlMs: number;
  #token = 0;
  #timer?: NodeJS.Timeout;
  #held = false;
  onLost?: () => void;

  constructor(redis: Redis, prefix: string, node: string, ttlMs = 3000) {
    this.#redis = redis;
    this.#key = `${prefix}:leader`;
    this.#fenceKey = `${prefix}:fence`;
    this.#node = node;
    this.#ttlMs = ttlMs;
  }

  get token(): number { return this.#token; }
  get held(): boolean { return this.#held; }

  /** Tries once; true when this node now holds the lease (with a fresh fencing token). */
  async tryAcquire(): Promise<boolean> {
    const r = await this.#redis.set(this.#key, this.#node, 'PX', this.#ttlMs, 'NX');
    if (r !== 'OK') return false;
    this.#token = await this.#redis.incr(this.#fenceKey);
    this.#held = true;
    this.#timer = setInterval(() => void this.#renew(), Math.max(100, Math.floor(this.#ttlMs / 3)));
    return true;
  }

  /** Waits until the lease is won (a standby leader), polling every ttl/3, until `stop()` says no. */
  async acquire(stop: () => boolean = () => false): Promise<void> {
    for (;;) {
      if (await this.tryAcquire()) return;
      if (stop()) throw new LeaseLostError('stopped while waiting for the leader lease');
      await new Promise((res) => setTimeout(res, Math.max(50, Math.floor(this.#ttlMs / 3))));
    }
  }

  async #renew(): Promise<void> {
    try {
      const ok = await this.#redis.eval(RENEW, 1, this.#key, this.#node, String(this.#ttlMs));
      if (ok === 1) return;
    } catch { /* counted as lost below only if Redis says so on the next check */ return; }
    this.#lost();
  }

  #lost(): void {
    if (!this.#held) return;
    this.#held = false;
    clearInterval(this.#timer);
    this.onLost?.();
  }

  /** Throws LeaseLostError unless this node still holds the lease under its fencing token. */
  async check(): Promise<void> {
    const [holder, fence] = await Promise.all([this.#redis.get(this.#key), this.#redis.get(this.#fenceKey)]);
    if (holder !== this.#node || Number(fence) !== this.#token) {
      this.#lost();
      throw new LeaseLostError(`not the leader any more (lease held by ${holder ?? 'nobody'}, fence ${fence} ≠ ${this.#token})`);
    }
  }

  async release(): Promise<void> {
    clearInterval(this.#timer);
    if (!this.#held) return;
    this.#held = false;
    await this.#redis.eval(RELEASE, 1, this.#key, this.#node).catch(() => undefined);
  }
}
