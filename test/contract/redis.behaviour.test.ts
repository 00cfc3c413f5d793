/**
 * What the Redis store does beyond the shared contract: replicas sharing one prefix, a Redis that
 * lost its data (counters rebuilt from the ledger before the next admission), a Redis that is down
 * (operations reject at once, and work again once it is back, without a new store), and the script
 * cache being emptied (EVALSHA falls back to EVAL).
 */
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { createMemoryStore, type ReserveRequest, type Store } from '../../src/store/index.js';
import { waitUntil } from '../support/harness.js';
import {
  describeRedis,
  openTestRedisStore,
  REDIS_URL,
  startPrivateRedis,
  uniquePrefix,
} from '../support/redis.js';
import { ledgerRow } from './store-contract.js';

function hold(id: string, amount: number, limit: number | null = 1000, owner = 'o1'): ReserveRequest {
  return {
    holdId: id,
    entries: [{ series: 'g|month', bucket: 1_700_000_000_000, from: 1_700_000_000_000, limit, amount }],
    owner,
    expiresAt: Date.now() + 60_000,
    draft: ledgerRow({ id, outcome: 'interrupted', counted: amount, usageSource: 'estimated' }),
  };
}
const month = (s: Store) => s.usage([{ series: 'g|month', from: 1_700_000_000_000 }]).then((t) => t[0]);

await describeRedis('redis store behaviour', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  });

  it('two replicas on one prefix share the counters exactly under 400 concurrent holds', async () => {
    const prefix = uniquePrefix();
    const ledger = createMemoryStore();
    const a = await openTestRedisStore({ prefix, ledger });
    const b = await openTestRedisStore({ prefix, ledger: createMemoryStore() });
    cleanups.push(a.cleanup, b.cleanup);
    const results = await Promise.all(
      Array.from({ length: 400 }, (_, i) =>
        (i % 2 ? a.store : b.store).reserve(hold(`h${i}`, 7, 1000, `o${i % 2}`)),
      ),
    );
    expect(results.filter((r) => r.ok)).toHaveLength(Math.floor(1000 / 7));
    expect(await month(a.store)).toEqual({ used: 0, reserved: 142 * 7 });
    expect(await month(b.store)).toEqual(await month(a.store));
  });

  it('rebuilds the counters from the ledger when Redis lost them, before admitting again', async () => {
    const fx = await openTestRedisStore();
    cleanups.push(fx.cleanup);
    const { store } = fx;
    let rebuilds = 0;
    store.setRebuilder(async () => {
      rebuilds++;
      return [{ series: 'g|month', bucket: 1_700_000_000_000, used: 900 }];
    });
    expect((await store.reserve(hold('a', 50))).ok).toBe(true);
    expect(rebuilds).toBe(1);
    await store.settle('a', [40], ledgerRow({ id: 'a', counted: 40 }));
    expect(await month(store)).toEqual({ used: 940, reserved: 0 });

    // Lose everything (as a restart without persistence would), with one hold in flight.
    expect((await store.reserve(hold('b', 30))).ok).toBe(true);
    const raw = new Redis(REDIS_URL);
    const keys = await raw.keys(`{${fx.prefix}}:*`);
    await raw.del(...keys);
    raw.disconnect();

    // The next admission rebuilds first (the callback says 940 used), so 61 tokens no longer fit.
    store.setRebuilder(async () => {
      rebuilds++;
      return [{ series: 'g|month', bucket: 1_700_000_000_000, used: 940 }];
    });
    const refused = await store.reserve(hold('c', 61));
    expect(refused).toEqual({ ok: false, entry: 0, used: 940, reserved: 0 });
    expect(rebuilds).toBe(2);
    // The hold lost with the data is charged what it used when it settles: never under-counted.
    await store.settle('b', [25], ledgerRow({ id: 'b', counted: 25 }));
    expect(await month(store)).toEqual({ used: 965, reserved: 0 });
    expect((await store.reserve(hold('d', 36))).ok).toBe(false);
    expect((await store.reserve(hold('e', 35))).ok).toBe(true);
  });

  it('only one of several replicas rebuilds; the others wait for it', async () => {
    const prefix = uniquePrefix();
    const stores = await Promise.all([1, 2, 3].map(() => openTestRedisStore({ prefix })));
    cleanups.push(...stores.map((s) => s.cleanup));
    let rebuilds = 0;
    for (const { store } of stores) {
      store.setRebuilder(async () => {
        rebuilds++;
        await new Promise((r) => setTimeout(r, 200));
        return [{ series: 'g|month', bucket: 1_700_000_000_000, used: 500 }];
      });
    }
    const results = await Promise.all(stores.map(({ store }, i) => store.reserve(hold(`r${i}`, 10))));
    expect(results.every((r) => r.ok)).toBe(true);
    expect(rebuilds).toBe(1);
    expect(await month(stores[0]?.store as Store)).toEqual({ used: 500, reserved: 30 });
  });

  it('refuses admissions while the ledger database cannot be written, and admits again once it can', async () => {
    const memory = createMemoryStore();
    let failing = false;
    const ledger: Store = {
      ...memory,
      async appendLedger(row) {
        if (failing) throw new Error('ledger down');
        return memory.appendLedger(row);
      },
      async getSetting(key) {
        if (failing) throw new Error('ledger down');
        return memory.getSetting(key);
      },
    };
    const fx = await openTestRedisStore({ ledger });
    cleanups.push(fx.cleanup);
    const { store } = fx;
    expect((await store.reserve(hold('a', 10))).ok).toBe(true);
    failing = true;
    await expect(store.settle('a', [5], ledgerRow({ id: 'a' }))).rejects.toThrow(/ledger down/);
    // The hold stays (reclaimed in full later) and nothing more is admitted while rows cannot be written.
    await expect(store.reserve(hold('b', 10))).rejects.toThrow(/ledger/);
    failing = false;
    await waitUntil(
      async () => (await store.reserve(hold(`c${Date.now()}`, 1)).catch(() => null)) !== null,
      3000,
    );
    await store.settle('a', [5], ledgerRow({ id: 'a' }));
    expect(await memory.queryLedger({ limit: 10 })).toHaveLength(1);
  });

  it('forgets buckets older than any window in force (hourly, on reclaim), but never one with tokens held', async () => {
    const fx = await openTestRedisStore();
    cleanups.push(fx.cleanup);
    const { store } = fx;
    const now = Date.now();
    const old = now - 50 * 86_400_000;
    const at = (id: string, bucket: number) => ({
      ...hold(id, 10, null),
      entries: [{ series: 's|hour', bucket, from: bucket, limit: null, amount: 10 }],
    });
    for (const [id, bucket] of [
      ['old-settled', old],
      ['old-held', old + 3_600_000],
      ['new', now],
    ] as const) {
      expect((await store.reserve(at(id, bucket))).ok).toBe(true);
    }
    await store.settle('old-settled', [10], ledgerRow({ id: 'old-settled' }));
    await store.settle('new', [10], ledgerRow({ id: 'new' }));
    expect(await store.reclaim({ now })).toBe(0);
    // The settled old bucket is gone; the one a hold still reserves in stays; the current one stays.
    expect(await store.usage([{ series: 's|hour', from: 0 }])).toEqual([{ used: 10, reserved: 10 }]);
  });

  describe('with a private Redis server', () => {
    it('rejects at once while Redis is down and works again once it is back, without a new store', async () => {
      const server = await startPrivateRedis();
      cleanups.push(server.cleanup);
      const fx = await openTestRedisStore({ url: server.url });
      cleanups.push(fx.cleanup);
      expect((await fx.store.reserve(hold('a', 10))).ok).toBe(true);
      await server.stop();
      const started = Date.now();
      await expect(fx.store.reserve(hold('b', 10))).rejects.toThrow();
      expect(Date.now() - started).toBeLessThan(2500);
      // The socket's close may be seen just after the failed command.
      await waitUntil(() => !fx.store.connected, 2000);
      await expect(fx.store.reserve(hold('b2', 10))).rejects.toThrow();
      await server.start();
      // Back, but empty: the store reconnects by itself and rebuilds (here from nothing).
      const deadline = Date.now() + 10_000;
      let result = null;
      while (Date.now() < deadline) {
        result = await fx.store.reserve(hold('c', 10)).catch(() => null);
        if (result) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(result).toEqual({ ok: true, after: [10] });
      expect(fx.store.connected).toBe(true);
    });

    it('falls back from EVALSHA to EVAL when the server forgot its scripts', async () => {
      const server = await startPrivateRedis();
      cleanups.push(server.cleanup);
      const fx = await openTestRedisStore({ url: server.url });
      cleanups.push(fx.cleanup);
      expect((await fx.store.reserve(hold('a', 10))).ok).toBe(true);
      const raw = new Redis(server.url);
      await raw.script('FLUSH');
      raw.disconnect();
      expect((await fx.store.reserve(hold('b', 10))).ok).toBe(true);
      expect(await month(fx.store)).toEqual({ used: 0, reserved: 20 });
    });

    it('refuses to open when Redis cannot be reached, naming it without the password', async () => {
      const server = await startPrivateRedis();
      await server.cleanup();
      await expect(openTestRedisStore({ url: `redis://:s3cret@127.0.0.1:${server.port}` })).rejects.toThrow(
        new RegExp(`cannot connect to Redis at redis://:\\*\\*\\*@127.0.0.1:${server.port}`),
      );
    });
  });
});
