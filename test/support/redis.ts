/**
 * Redis for tests: the server of this machine (or TOKENWARDEN_TEST_REDIS_URL), one fresh key prefix
 * per test, whose keys are deleted afterwards; nothing shared is ever flushed. When the server is
 * unreachable, suites declared with describeRedis fail under CI=true and are skipped, with the reason,
 * otherwise. Tests that must stop or empty a server start a private one (startPrivateRedis).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { createMemoryStore, openRedisStore, type RedisStore, type Store } from '../../src/store/index.js';
import { describeWithService } from './postgres.js';

export const REDIS_URL = process.env.TOKENWARDEN_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

const START_HINT =
  'start it with `redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" ' +
  '--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log`, or point ' +
  'TOKENWARDEN_TEST_REDIS_URL at another server';

/** null when `url` answers PING, else why not. */
export async function probeRedis(url = REDIS_URL): Promise<string | null> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, connectTimeout: 3000 });
  redis.on('error', () => {});
  try {
    await redis.connect();
    await redis.ping();
    return null;
  } catch (err) {
    return err instanceof Error ? err.message || err.name : String(err);
  } finally {
    redis.disconnect();
  }
}

/** A suite that needs Redis: runs, fails under CI=true, or is skipped saying why. */
export function describeRedis(name: string, define: () => void): Promise<void> {
  return describeWithService(
    { name: 'Redis', url: REDIS_URL, hint: START_HINT, probe: () => probeRedis() },
    name,
    define,
  );
}

/** A key prefix no other test uses. */
export function uniquePrefix(prefix = 'twtest'): string {
  return `${prefix}-${Date.now().toString(36)}-${randomBytes(5).toString('hex')}`;
}

/** Deletes every key of the store with this prefix (`{prefix}:*`), nothing else. */
export async function deletePrefix(prefix: string, url = REDIS_URL): Promise<number> {
  const redis = new Redis(url, { maxRetriesPerRequest: 1 });
  redis.on('error', () => {});
  try {
    let deleted = 0;
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `{${prefix}}:*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) deleted += await redis.del(...keys);
    } while (cursor !== '0');
    return deleted;
  } finally {
    redis.disconnect();
  }
}

/** A free TCP port on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface PrivateRedis {
  url: string;
  port: number;
  /** Stops the server (SIGKILL: like a crash; it keeps nothing on disk). */
  stop(): Promise<void>;
  /** Starts it again on the same port, empty. */
  start(): Promise<void>;
  cleanup(): Promise<void>;
}

/**
 * A redis-server of the test's own on a free port, keeping nothing on disk, for tests that stop it or
 * lose its data. Needs the `redis-server` binary (installed with the machine's Redis).
 */
export async function startPrivateRedis(): Promise<PrivateRedis> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'tw-redis-'));
  const url = `redis://127.0.0.1:${port}`;
  let child: ChildProcess | null = null;
  const start = async () => {
    child = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
      { stdio: 'ignore' },
    );
    const failed = new Promise<never>((_, reject) =>
      child?.once('error', (err) => reject(new Error(`cannot start redis-server: ${err.message}`))),
    );
    failed.catch(() => {});
    const deadline = Date.now() + 10_000;
    for (;;) {
      const problem = await Promise.race([probeRedis(url), failed]);
      if (problem === null) return;
      if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not start: ${problem}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const stop = async () => {
    const c = child as ChildProcess | null;
    child = null;
    if (!c || c.exitCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await exited;
  };
  await start();
  return {
    url,
    port,
    start,
    stop,
    async cleanup() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A Redis store over a memory ledger, on a fresh prefix; `cleanup` closes it and deletes its keys. */
export async function openTestRedisStore(
  opts: { url?: string; prefix?: string; ledger?: Store } = {},
): Promise<{ store: RedisStore; prefix: string; cleanup(): Promise<void> }> {
  const prefix = opts.prefix ?? uniquePrefix();
  const url = opts.url ?? REDIS_URL;
  const store = await openRedisStore({ url, prefix, ledger: opts.ledger ?? createMemoryStore() });
  // A new prefix over an empty ledger: the counters start empty.
  store.setRebuilder(async () => []);
  return {
    store,
    prefix,
    async cleanup() {
      try {
        await store.close();
      } finally {
        await deletePrefix(prefix, url).catch(() => 0);
      }
    },
  };
}
