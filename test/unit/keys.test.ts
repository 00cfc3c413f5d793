import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  generateKey,
  hashKey,
  KEY_RANDOM_CHARS,
  KeyInputError,
  KeyService,
  type KeyStore,
  looksLikeVirtualKey,
} from '../../src/keys/keys.js';
import { createMemoryStore } from '../../src/store/memory/memory-store.js';
import type { VirtualKeyRecord } from '../../src/store/ports.js';
import { openSqliteStore } from '../../src/store/sqlite/sqlite-store.js';

const BASE62 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/** The smallest store that keeps the ControlStore key contract; exact ids only. */
function fakeStore(): KeyStore & { records: Map<string, VirtualKeyRecord> } {
  const records = new Map<string, VirtualKeyRecord>();
  return {
    records,
    async createKey(k) {
      if (records.has(k.id) || [...records.values()].some((r) => r.hash === k.hash)) throw new Error('dup');
      records.set(k.id, { ...k });
    },
    async findKeyByHash(hash) {
      const r = [...records.values()].find((k) => k.hash === hash);
      return r ? { ...r } : null;
    },
    async listKeys() {
      return [...records.values()].map((r) => ({ ...r }));
    },
    async revokeKey(id, at) {
      const r = records.get(id);
      if (!r || r.revokedAt !== null) return false;
      r.revokedAt = at;
      return true;
    },
  };
}

/** Wraps a store to count the lookups that reach it. */
function counting(store: KeyStore): KeyStore & { finds: number; creates: number } {
  const wrapped = {
    finds: 0,
    creates: 0,
    createKey: (k: VirtualKeyRecord) => {
      wrapped.creates++;
      return store.createKey(k);
    },
    findKeyByHash: (hash: string) => {
      wrapped.finds++;
      return store.findKeyByHash(hash);
    },
    listKeys: () => store.listKeys(),
    revokeKey: (id: string, at: number) => store.revokeKey(id, at),
  };
  return wrapped;
}

function clock(start = 1_750_000_000_000) {
  const c = { t: start, now: () => c.t };
  return c;
}

/** A record for a key of our choosing, as another process would have stored it. */
function recordFor(key: string, over: Partial<VirtualKeyRecord> = {}): VirtualKeyRecord {
  return {
    id: `key_${key.slice(3, 15)}`,
    hash: hashKey(key),
    prefix: `${key.slice(0, 9)}…`,
    agent: 'someone',
    limits: null,
    createdAt: 1,
    revokedAt: null,
    ...over,
  };
}

describe('generateKey', () => {
  it('has the documented shape', () => {
    const g = generateKey();
    expect(g.key).toMatch(/^tw_[A-Za-z0-9]{40}$/);
    expect(g.id).toMatch(/^key_[A-Za-z0-9]{12}$/);
    expect(g.prefix).toBe(`${g.key.slice(0, 9)}…`);
    expect(g.hash).toBe(createHash('sha256').update(g.key).digest('hex'));
    expect(g.prefix.length).toBeLessThan(g.key.length);
  });

  it('carries at least 230 bits of entropy', () => {
    expect(KEY_RANDOM_CHARS * Math.log2(62)).toBeGreaterThanOrEqual(230);
  });

  it('never repeats a key or an id', () => {
    const keys = new Set<string>();
    const ids = new Set<string>();
    for (let i = 0; i < 5000; i++) {
      const g = generateKey();
      keys.add(g.key);
      ids.add(g.id);
    }
    expect(keys.size).toBe(5000);
    expect(ids.size).toBe(5000);
  });

  it('draws every base62 character uniformly (no modulo bias)', () => {
    const counts = new Map<string, number>();
    const n = 2500;
    for (let i = 0; i < n; i++) {
      for (const ch of generateKey().key.slice(3)) counts.set(ch, (counts.get(ch) ?? 0) + 1);
    }
    expect([...counts.keys()].sort()).toEqual([...BASE62].sort());
    const expected = (n * KEY_RANDOM_CHARS) / 62;
    let chi2 = 0;
    for (const c of counts.values()) chi2 += (c - expected) ** 2 / expected;
    // 61 degrees of freedom: mean 61, p ≈ 1e-6 at ~125. A plain `byte % 62` scores about 500 here.
    expect(chi2).toBeLessThan(125);
  });
});

describe('hashKey / looksLikeVirtualKey', () => {
  it('is SHA-256 hex', () => {
    expect(hashKey('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });

  it('recognises the exact key shape only', () => {
    const { key } = generateKey();
    expect(looksLikeVirtualKey(key)).toBe(true);
    for (const bad of [
      '',
      'tw_',
      key.slice(0, -1),
      `${key}A`,
      `${key.slice(0, -1)}-`,
      ` ${key}`,
      key.replace('tw_', 'tx_'),
      'sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789ABCD',
    ]) {
      expect(looksLikeVirtualKey(bad), bad).toBe(false);
    }
  });
});

const stores: [string, () => KeyStore][] = [
  ['fake', fakeStore],
  ['memory', () => createMemoryStore()],
  ['sqlite', () => openSqliteStore({ path: ':memory:' })],
];

describe.each(stores)('KeyService on the %s store', (_name, makeStore) => {
  it('creates a key, stores only its hash, and verifies it', async () => {
    const c = clock();
    const store = makeStore();
    const service = new KeyService({ store, now: c.now });
    const { key, record } = await service.create({ agent: 'researcher', limits: { month: 5000, hour: 0 } });
    expect(looksLikeVirtualKey(key)).toBe(true);
    expect(record).toEqual({
      id: expect.stringMatching(/^key_/),
      hash: hashKey(key),
      prefix: `${key.slice(0, 9)}…`,
      agent: 'researcher',
      limits: { month: 5000, hour: 0 },
      createdAt: c.t,
      revokedAt: null,
    });
    const stored = await store.listKeys();
    expect(stored).toEqual([record]);
    expect(JSON.stringify(stored)).not.toContain(key.slice(3));
    expect(await service.verify(key)).toMatchObject({ id: record.id, agent: 'researcher' });
  });

  it('stores absent or empty limits as null', async () => {
    const service = new KeyService({ store: makeStore(), now: Date.now });
    expect((await service.create({ agent: 'a' })).record.limits).toBeNull();
    expect((await service.create({ agent: 'b', limits: {} })).record.limits).toBeNull();
    expect((await service.create({ agent: 'c', limits: { day: undefined } })).record.limits).toBeNull();
  });

  it('verify: null for malformed, unknown and revoked keys', async () => {
    const c = clock();
    const store = makeStore();
    const service = new KeyService({ store, now: c.now });
    const { key, record } = await service.create({ agent: 'a' });
    expect(await service.verify('not-a-key')).toBeNull();
    expect(await service.verify(generateKey().key)).toBeNull();
    expect(await service.verify(key)).not.toBeNull();
    expect(await service.revoke(record.id)).toBe(true);
    // Revoked through this service: its own cache is dropped at once.
    expect(await service.verify(key)).toBeNull();
  });

  it('verify: a key revoked by another process stops working within cacheMs', async () => {
    const c = clock();
    const store = makeStore();
    const gateway = new KeyService({ store, now: c.now, cacheMs: 1000 });
    const cli = new KeyService({ store, now: c.now });
    const { key, record } = await cli.create({ agent: 'a' });
    expect(await gateway.verify(key)).not.toBeNull();
    expect(await cli.revoke(record.id)).toBe(true);
    c.t += 999;
    expect(await gateway.verify(key)).not.toBeNull(); // still cached: the bound, not a promise of staleness
    c.t += 1;
    expect(await gateway.verify(key)).toBeNull();
    c.t += 5000;
    expect(await gateway.verify(key)).toBeNull();
  });

  it('revoke: by id, display prefix or full key; false when unknown or already revoked', async () => {
    const service = new KeyService({ store: makeStore(), now: Date.now });
    const a = await service.create({ agent: 'a' });
    const b = await service.create({ agent: 'b' });
    const c = await service.create({ agent: 'c' });
    expect(await service.revoke('key_doesnotexist')).toBe(false);
    expect(await service.revoke(generateKey().key)).toBe(false);
    expect(await service.revoke('')).toBe(false);
    expect(await service.revoke(a.record.id)).toBe(true);
    expect(await service.revoke(a.record.id)).toBe(false);
    expect(await service.revoke(b.record.prefix)).toBe(true);
    expect(await service.revoke(c.key)).toBe(true);
    expect(await service.revoke(c.key)).toBe(false);
    const list = await service.list();
    expect(list.every((k) => k.revokedAt !== null)).toBe(true);
  });

  it('revoke: refuses a display prefix shared by two active keys', async () => {
    const store = makeStore();
    const service = new KeyService({ store, now: Date.now });
    const k1 = `tw_AAAAAA${'x'.repeat(34)}`;
    const k2 = `tw_AAAAAA${'y'.repeat(34)}`;
    await store.createKey(recordFor(k1, { id: 'key_one000000000' }));
    await store.createKey(recordFor(k2, { id: 'key_two000000000' }));
    await expect(service.revoke('tw_AAAAAA…')).rejects.toThrow(/matches 2 active keys/);
    expect(await service.revoke('key_one000000000')).toBe(true);
    // Now only one active key has that prefix.
    expect(await service.revoke('tw_AAAAAA')).toBe(true);
    expect(await service.verify(k2)).toBeNull();
  });

  it('list: every key oldest first, revoked included, never a key or hash', async () => {
    const c = clock();
    const service = new KeyService({ store: makeStore(), now: c.now });
    const created = [];
    for (const agent of ['x', 'y', 'z']) {
      created.push(await service.create({ agent, limits: { request: 100 } }));
      c.t += 10;
    }
    await service.revoke(created[1]?.record.id ?? '');
    const list = await service.list();
    expect(list.map((k) => k.agent)).toEqual(['x', 'y', 'z']);
    expect(list[1]?.revokedAt).toBe(c.t);
    expect(list[0]?.revokedAt).toBeNull();
    for (const k of list)
      expect(Object.keys(k).sort()).toEqual(['agent', 'createdAt', 'id', 'limits', 'prefix', 'revokedAt']);
    const text = JSON.stringify(list);
    for (const { key, record } of created) {
      expect(text).not.toContain(key);
      expect(text).not.toContain(record.hash);
    }
  });
});

describe('KeyService input validation', () => {
  const service = () => {
    const store = counting(fakeStore());
    return { store, service: new KeyService({ store, now: Date.now }) };
  };

  it('accepts the x-tokenwarden-agent alphabet, 1-128 characters', async () => {
    const { service: s } = service();
    for (const agent of ['a', 'researcher', 'team/a+b@host:1.2_x-y', 'x'.repeat(128)]) {
      expect((await s.create({ agent })).record.agent).toBe(agent);
    }
  });

  it('rejects other agent names before touching the store', async () => {
    const { store, service: s } = service();
    for (const agent of [
      '',
      ' ',
      'a b',
      'x'.repeat(129),
      'café',
      'a\nb',
      'a,b',
      undefined as unknown as string,
    ]) {
      await expect(s.create({ agent }), JSON.stringify(agent)).rejects.toThrow(KeyInputError);
    }
    await expect(s.create({ agent: 'a b' })).rejects.toThrow(/agent: expected 1-128 characters/);
    expect(store.creates).toBe(0);
  });

  it('accepts non-negative integer limits and rejects anything else', async () => {
    const { store, service: s } = service();
    expect((await s.create({ agent: 'a', limits: { month: 0, request: 2 ** 40 } })).record.limits).toEqual({
      month: 0,
      request: 2 ** 40,
    });
    const bad: [unknown, RegExp][] = [
      [{ month: -3 }, /limits\.month: expected a non-negative whole number/],
      [{ day: 1.5 }, /limits\.day/],
      [{ hour: Number.NaN }, /limits\.hour/],
      [{ request: Number.POSITIVE_INFINITY }, /limits\.request/],
      [{ month: '5' }, /limits\.month/],
      [{ week: 5 }, /limits\.week: unknown limit/],
      [[5], /limits: expected an object/],
      [5, /limits: expected an object/],
    ];
    for (const [limits, message] of bad) {
      await expect(s.create({ agent: 'a', limits: limits as never }), JSON.stringify(limits)).rejects.toThrow(
        message,
      );
    }
    expect(store.creates).toBe(1);
  });
});

describe('KeyService verify cache', () => {
  it('answers repeated verifies from memory until cacheMs has passed', async () => {
    const c = clock();
    const store = counting(fakeStore());
    const service = new KeyService({ store, now: c.now, cacheMs: 1000 });
    const { key } = await service.create({ agent: 'a' });
    await service.verify(key);
    await service.verify(key);
    c.t += 999;
    await service.verify(key);
    expect(store.finds).toBe(1);
    c.t += 1;
    await service.verify(key);
    expect(store.finds).toBe(2);
  });

  it('coalesces concurrent lookups of one key', async () => {
    const store = counting(fakeStore());
    const service = new KeyService({ store, now: Date.now });
    const { key } = await service.create({ agent: 'a' });
    const results = await Promise.all(Array.from({ length: 20 }, () => service.verify(key)));
    expect(results.every((r) => r?.agent === 'a')).toBe(true);
    expect(store.finds).toBe(1);
  });

  it('does not cache unknown keys: a key created elsewhere works at once', async () => {
    const base = fakeStore();
    const service = new KeyService({ store: base, now: Date.now });
    const { key } = generateKey();
    expect(await service.verify(key)).toBeNull();
    await base.createKey(recordFor(key));
    expect(await service.verify(key)).toMatchObject({ agent: 'someone' });
  });

  it('does not cache malformed keys and never asks the store about them', async () => {
    const store = counting(fakeStore());
    const service = new KeyService({ store, now: Date.now });
    for (let i = 0; i < 100; i++) expect(await service.verify(`tw_garbage${i}`)).toBeNull();
    expect(store.finds).toBe(0);
    expect(service.cacheSize).toBe(0);
  });

  it('cacheMs 0 always asks the store', async () => {
    const store = counting(fakeStore());
    const service = new KeyService({ store, now: Date.now, cacheMs: 0 });
    const { key } = await service.create({ agent: 'a' });
    await service.verify(key);
    await service.verify(key);
    expect(store.finds).toBe(2);
    expect(service.cacheSize).toBe(0);
  });

  it('stays bounded, evicting the oldest entries', async () => {
    const c = clock();
    const store = counting(fakeStore());
    const service = new KeyService({ store, now: c.now, cacheMs: 60_000, cacheMaxEntries: 3 });
    const keys = [];
    for (let i = 0; i < 10; i++) keys.push((await service.create({ agent: `a${i}` })).key);
    for (const key of keys) expect(await service.verify(key)).not.toBeNull();
    expect(service.cacheSize).toBe(3);
    store.finds = 0;
    await service.verify(keys[9] ?? ''); // newest: cached
    expect(store.finds).toBe(0);
    await service.verify(keys[0] ?? ''); // oldest: evicted, looked up again
    expect(store.finds).toBe(1);
    expect(service.cacheSize).toBe(3);
  });

  it('has a default bound of 10,000 keys', async () => {
    const store = fakeStore();
    // Bypass the fake's O(n) lookup: index by hash.
    const byHash = new Map<string, VirtualKeyRecord>();
    const keys: string[] = [];
    for (let i = 0; i < 10_050; i++) {
      const g = generateKey();
      keys.push(g.key);
      byHash.set(g.hash, recordFor(g.key, { id: g.id }));
    }
    store.findKeyByHash = async (hash) => byHash.get(hash) ?? null;
    const service = new KeyService({ store, now: Date.now, cacheMs: 60_000 });
    for (const key of keys) await service.verify(key);
    expect(service.cacheSize).toBe(10_000);
  });

  it('caches by hash, never by the key in clear text', async () => {
    const service = new KeyService({ store: fakeStore(), now: Date.now });
    const { key } = await service.create({ agent: 'a' });
    await service.verify(key);
    const internals = service as unknown as Record<string, unknown>;
    const mapKeys: string[] = [];
    for (const value of Object.values(internals)) {
      if (value instanceof Map) mapKeys.push(...(value.keys() as Iterable<string>));
    }
    expect(mapKeys).toContain(hashKey(key));
    expect(mapKeys.some((k) => k.includes(key.slice(3)))).toBe(false);
  });

  it('returns a record callers cannot alter for the next request', async () => {
    const service = new KeyService({ store: fakeStore(), now: Date.now });
    const { key } = await service.create({ agent: 'a', limits: { month: 10 } });
    const first = await service.verify(key);
    expect(() => {
      (first as VirtualKeyRecord).agent = 'mallory';
    }).toThrow();
    expect((await service.verify(key))?.agent).toBe('a');
  });
});
