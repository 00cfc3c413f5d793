/**
 * The one behaviour suite every ControlStore runs (memory, SQLite, later PostgreSQL): alerts,
 * emergency state, settings, virtual keys and the ledger/counter reports. Like store-contract.ts it
 * tests only the port (src/store/ports.ts), never a backend's internals.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type {
  AlertRecord,
  EmergencyState,
  LedgerRow,
  Store,
  TimeseriesPoint,
  VirtualKeyRecord,
} from '../../src/store/ports.js';
import { ledgerRow } from './store-contract.js';

export interface ControlStoreFixture {
  store: Store;
  /** Closes the store and removes whatever it created (file, schema, key prefix). */
  cleanup(): Promise<void>;
}

const HOUR = 3_600_000;
const DAY = 86_400_000;
/** A multiple of both HOUR and DAY (2023-11-14T00:00:00Z). */
const T0 = 1_699_920_000_000;

function alert(over: Partial<AlertRecord> & { id: string }): AlertRecord {
  return {
    level: 'warning',
    budget: 'global',
    window: 'month',
    period: T0,
    percent: 80.25,
    at: T0 + 1000,
    message: 'global: month at 80.25% (112,350 of 140,000 tokens)',
    ...over,
  };
}

function key(over: Partial<VirtualKeyRecord> & { id: string; hash: string }): VirtualKeyRecord {
  return {
    prefix: `tw_${over.id.slice(-4)}`,
    agent: 'researcher',
    limits: null,
    createdAt: T0,
    revokedAt: null,
    ...over,
  };
}

/** A point with every total 0 but the given ones. */
function point(bucket: number, over: Partial<TimeseriesPoint>): TimeseriesPoint {
  return {
    bucket,
    requests: 0,
    counted: 0,
    inputTokens: 0,
    outputTokens: 0,
    cacheCreationTokens: 0,
    cacheReadTokens: 0,
    costUsd: 0,
    blocked: 0,
    ...over,
  };
}

export function describeControlStoreContract(
  name: string,
  makeStore: () => Promise<ControlStoreFixture>,
): void {
  describe(`ControlStore contract: ${name}`, () => {
    let store: Store;
    let cleanup: () => Promise<void>;

    beforeEach(async () => {
      ({ store, cleanup } = await makeStore());
    });
    afterEach(async () => {
      await cleanup();
    });

    /** Holds `amount` in one bucket of `series` without a limit; settle or leave it live. */
    const reserve = async (holdId: string, series: string, amount: number, bucket = 0): Promise<void> => {
      const r = await store.reserve({
        holdId,
        entries: [{ series, bucket, from: bucket, limit: null, amount }],
        owner: 'gw-1',
        expiresAt: Number.MAX_SAFE_INTEGER,
        draft: ledgerRow({ id: holdId, outcome: 'interrupted', usageSource: 'estimated', counted: amount }),
      });
      expect(r.ok).toBe(true);
    };
    const charge = async (holdId: string, series: string, used: number, bucket = 0): Promise<void> => {
      await reserve(holdId, series, used, bucket);
      await store.settle(holdId, [used], ledgerRow({ id: holdId, counted: used }));
    };
    const totals = async (series: string) => {
      const [t] = await store.usage([{ series, from: 0 }]);
      return t;
    };

    describe('alerts', () => {
      it('records an alert once per (budget, window, level, period)', async () => {
        const first = alert({ id: 'a1', message: 'héllo ✓ 日本 "quoted"' });
        expect(await store.recordAlert(first)).toBe(true);
        // Same budget, window, level and period under a new id, later: a duplicate.
        expect(await store.recordAlert(alert({ id: 'a2', at: T0 + 5000, percent: 81 }))).toBe(false);
        // The next period fires again at the same level.
        expect(await store.recordAlert(alert({ id: 'a3', period: T0 + DAY, at: T0 + DAY }))).toBe(true);
        // A higher level in the same period fires.
        expect(await store.recordAlert(alert({ id: 'a4', level: 'critical', percent: 95.5 }))).toBe(true);
        // Another window or another budget, same level and period, fires.
        expect(await store.recordAlert(alert({ id: 'a5', window: 'day' }))).toBe(true);
        expect(await store.recordAlert(alert({ id: 'a6', budget: 'opus' }))).toBe(true);
        expect(await store.recordAlert(alert({ id: 'a7', level: 'forecast', percent: 131.7 }))).toBe(true);
        expect(await store.recordAlert(alert({ id: 'a8', level: 'critical', percent: 99 }))).toBe(false);

        const all = await store.listAlerts({ limit: 100 });
        expect(all.map((a) => a.id).sort()).toEqual(['a1', 'a3', 'a4', 'a5', 'a6', 'a7']);
        // Every field round-trips, the first record kept as it was.
        expect(all.find((a) => a.id === 'a1')).toEqual(first);
        expect(all.find((a) => a.id === 'a7')).toEqual(
          alert({ id: 'a7', level: 'forecast', percent: 131.7 }),
        );
      });

      it('does not insert an alert whose id already exists', async () => {
        expect(await store.recordAlert(alert({ id: 'a1' }))).toBe(true);
        expect(await store.recordAlert(alert({ id: 'a1', level: 'emergency', percent: 98 }))).toBe(false);
        expect((await store.listAlerts({ limit: 10 })).map((a) => a.level)).toEqual(['warning']);
      });

      it('lists newest first (by at, then id), with limit and an inclusive since', async () => {
        const at = [300, 100, 200, 200, 400];
        for (const [i, t] of at.entries()) {
          expect(await store.recordAlert(alert({ id: `a${i}`, period: i, at: t }))).toBe(true);
        }
        const ids = async (q: { limit: number; since?: number }) =>
          (await store.listAlerts(q)).map((a) => a.id);
        expect(await ids({ limit: 10 })).toEqual(['a4', 'a0', 'a3', 'a2', 'a1']);
        expect(await ids({ limit: 2 })).toEqual(['a4', 'a0']);
        expect(await ids({ limit: 10, since: 200 })).toEqual(['a4', 'a0', 'a3', 'a2']);
        expect(await ids({ limit: 3, since: 201 })).toEqual(['a4', 'a0']);
        expect(await ids({ limit: 10, since: 401 })).toEqual([]);
        expect(await ids({ limit: 0 })).toEqual([]);
      });

      it('lists nothing when no alert was recorded', async () => {
        expect(await store.listAlerts({ limit: 10 })).toEqual([]);
      });
    });

    describe('emergency state', () => {
      const tripped: EmergencyState = {
        budget: 'global',
        since: T0,
        until: T0 + 30 * DAY,
        reason: 'month at 98.1% (137,340 of 140,000)',
        manual: false,
      };
      const halted: EmergencyState = {
        budget: '*',
        since: T0 + 5,
        until: null,
        reason: 'halt',
        manual: true,
      };
      const byBudget = (list: EmergencyState[]) =>
        [...list].sort((a, b) => (a.budget < b.budget ? -1 : a.budget > b.budget ? 1 : 0));

      it('round-trips until (a time or null) and manual', async () => {
        expect(await store.listEmergencies()).toEqual([]);
        await store.setEmergency(tripped);
        await store.setEmergency(halted);
        expect(byBudget(await store.listEmergencies())).toEqual([halted, tripped]);
      });

      it('upserts by budget name', async () => {
        await store.setEmergency(tripped);
        await store.setEmergency(halted);
        const again: EmergencyState = {
          budget: 'global',
          since: T0 + 9,
          until: null,
          reason: 'by hand',
          manual: true,
        };
        await store.setEmergency(again);
        expect(byBudget(await store.listEmergencies())).toEqual([halted, again]);
        const back: EmergencyState = { ...tripped, since: T0 + 10 };
        await store.setEmergency(back);
        expect(byBudget(await store.listEmergencies())).toEqual([halted, back]);
      });

      it('clears one budget, `*` alone, or all, and says how many it removed', async () => {
        await store.setEmergency(tripped);
        await store.setEmergency(halted);
        await store.setEmergency({ ...tripped, budget: 'opus' });
        expect(await store.clearEmergency('global')).toBe(1);
        expect(await store.clearEmergency('global')).toBe(0);
        expect(await store.clearEmergency('nobody')).toBe(0);
        expect(byBudget(await store.listEmergencies()).map((e) => e.budget)).toEqual(['*', 'opus']);
        // `*` is a budget name like any other here: it clears the global halt only.
        expect(await store.clearEmergency('*')).toBe(1);
        expect((await store.listEmergencies()).map((e) => e.budget)).toEqual(['opus']);
        await store.setEmergency(halted);
        expect(await store.clearEmergency()).toBe(2);
        expect(await store.listEmergencies()).toEqual([]);
        expect(await store.clearEmergency()).toBe(0);
      });
    });

    describe('settings', () => {
      it('returns null for a missing key, stores, and overwrites', async () => {
        expect(await store.getSetting('budgets')).toBeNull();
        const budgets = JSON.stringify([{ name: 'global', month: 140_000, note: 'héllo ✓' }]);
        await store.setSetting('budgets', budgets);
        expect(await store.getSetting('budgets')).toBe(budgets);
        await store.setSetting('budgets', '[]');
        expect(await store.getSetting('budgets')).toBe('[]');
        // An empty value is a value, not a missing key.
        await store.setSetting('other', '');
        expect(await store.getSetting('other')).toBe('');
        expect(await store.getSetting('budgets')).toBe('[]');
        expect(await store.getSetting('Budgets')).toBeNull();
      });
    });

    describe('virtual keys', () => {
      const k1 = key({ id: 'key_aaaa1111', hash: 'a'.repeat(64), agent: 'researcher', createdAt: T0 });
      const k2 = key({
        id: 'key_bbbb2222',
        hash: 'b'.repeat(64),
        agent: 'writer',
        limits: { month: 50_000, day: 2000, request: 1000 },
        createdAt: T0 + 1,
      });
      const byId = (list: VirtualKeyRecord[]) => [...list].sort((a, b) => (a.id < b.id ? -1 : 1));

      it('creates, finds by hash and lists keys, limits null or an object', async () => {
        expect(await store.listKeys()).toEqual([]);
        await store.createKey(k1);
        await store.createKey(k2);
        expect(await store.findKeyByHash(k1.hash)).toEqual(k1);
        expect(await store.findKeyByHash(k2.hash)).toEqual(k2);
        expect(await store.findKeyByHash('c'.repeat(64))).toBeNull();
        expect(byId(await store.listKeys())).toEqual([k1, k2]);
      });

      it('refuses a second key with the same id or the same hash', async () => {
        await store.createKey(k1);
        await expect(store.createKey({ ...k2, id: k1.id })).rejects.toThrow();
        await expect(store.createKey({ ...k2, hash: k1.hash })).rejects.toThrow();
        expect(await store.listKeys()).toEqual([k1]);
      });

      it('revokes once; an unknown or already revoked key gives false', async () => {
        await store.createKey(k1);
        await store.createKey(k2);
        expect(await store.revokeKey(k1.id, T0 + 100)).toBe(true);
        expect(await store.revokeKey(k1.id, T0 + 200)).toBe(false);
        expect(await store.revokeKey('key_nope', T0 + 200)).toBe(false);
        // A revoked key is still found, so the caller can tell "revoked" from "unknown".
        expect(await store.findKeyByHash(k1.hash)).toEqual({ ...k1, revokedAt: T0 + 100 });
        expect(byId(await store.listKeys())).toEqual([{ ...k1, revokedAt: T0 + 100 }, k2]);
      });

      it('revokes by a prefix of the id only when it names exactly one key', async () => {
        await store.createKey(k1);
        await store.createKey(k2);
        await store.createKey(key({ id: 'key_bbbb3333', hash: 'd'.repeat(64), createdAt: T0 + 2 }));
        expect(await store.revokeKey('key_', T0)).toBe(false);
        expect(await store.revokeKey('key_bbbb', T0)).toBe(false);
        expect(await store.revokeKey('', T0)).toBe(false);
        expect((await store.listKeys()).every((k) => k.revokedAt === null)).toBe(true);
        expect(await store.revokeKey('key_bbbb2', T0 + 7)).toBe(true);
        expect((await store.findKeyByHash(k2.hash))?.revokedAt).toBe(T0 + 7);
        expect(await store.revokeKey('key_bbbb2', T0 + 8)).toBe(false);
        expect(await store.revokeKey('key_aaaa', T0 + 9)).toBe(true);
      });

      it('returns copies: changing a returned record changes nothing stored', async () => {
        await store.createKey(k2);
        const found = await store.findKeyByHash(k2.hash);
        if (found?.limits == null) throw new Error('expected limits');
        found.limits.month = 1;
        found.agent = 'mallory';
        expect(await store.findKeyByHash(k2.hash)).toEqual(k2);
      });
    });

    describe('reports over the ledger', () => {
      const rows: LedgerRow[] = [
        ledgerRow({
          id: 'r1',
          ts: T0,
          agent: 'a',
          model: 'm1',
          counted: 10,
          inputTokens: 3,
          outputTokens: 4,
          cacheCreationTokens: 1,
          cacheReadTokens: 2,
          costUsd: 0.5,
        }),
        ledgerRow({ id: 'r2', ts: T0 + HOUR - 1, agent: 'b', model: 'm2', outcome: 'blocked', status: 429 }),
        ledgerRow({
          id: 'r3',
          ts: T0 + HOUR - 1,
          agent: 'a',
          model: 'm2',
          counted: 100,
          inputTokens: 60,
          outputTokens: 40,
          costUsd: 0.125,
        }),
        ledgerRow({
          id: 'r4',
          ts: T0 + HOUR,
          agent: 'a',
          model: 'm1',
          counted: 7,
          outputTokens: 7,
          costUsd: 0.25,
        }),
        ledgerRow({ id: 'r5', ts: T0 + HOUR + 5, agent: 'b', model: null, outcome: 'invalid', status: 400 }),
        // Outside [T0, T0 + 2h).
        ledgerRow({ id: 'r6', ts: T0 - 1, agent: 'a', model: 'm1', counted: 1000 }),
        ledgerRow({
          id: 'r7',
          ts: T0 + 2 * HOUR,
          agent: 'a',
          model: 'm1',
          counted: 1000,
          outcome: 'blocked',
        }),
      ];
      const seed = async () => {
        for (const i of [3, 0, 6, 1, 5, 2, 4]) await store.appendLedger(rows[i] as LedgerRow);
      };

      it('countLedger counts what queryLedger would return, with the same filters', async () => {
        await seed();
        const filters = [
          {},
          { agent: 'a' },
          { model: 'm1' },
          { outcome: 'blocked' as const },
          { since: T0 },
          { until: T0 + HOUR },
          { since: T0, until: T0 + 2 * HOUR },
          { agent: 'a', model: 'm1', since: T0 },
          { agent: 'b', outcome: 'invalid' as const, until: T0 + 2 * HOUR },
          { agent: 'nobody' },
        ];
        const expected = [7, 5, 4, 2, 6, 4, 5, 3, 1, 0];
        for (const [i, f] of filters.entries()) {
          expect(await store.countLedger(f), JSON.stringify(f)).toBe(expected[i]);
          expect((await store.queryLedger({ ...f, limit: 1000 })).length).toBe(expected[i]);
        }
      });

      it('countLedger of an empty ledger is 0', async () => {
        expect(await store.countLedger({})).toBe(0);
      });

      it('timeseries sums rows per aligned bucket, oldest first, over [since, until)', async () => {
        await seed();
        const hourly = await store.timeseries({ bucketMs: HOUR, since: T0, until: T0 + 2 * HOUR });
        expect(hourly).toEqual([
          point(T0, {
            requests: 3,
            counted: 110,
            inputTokens: 63,
            outputTokens: 44,
            cacheCreationTokens: 1,
            cacheReadTokens: 2,
            costUsd: 0.625,
            blocked: 1,
          }),
          point(T0 + HOUR, { requests: 2, counted: 7, outputTokens: 7, costUsd: 0.25 }),
        ]);
        // Buckets are multiples of bucketMs, not offsets from since.
        const fromMid = await store.timeseries({ bucketMs: HOUR, since: T0 + 1, until: T0 + HOUR + 1 });
        expect(fromMid.map((p) => [p.bucket, p.requests])).toEqual([
          [T0, 2],
          [T0 + HOUR, 1],
        ]);
        const daily = await store.timeseries({ bucketMs: DAY, since: 0, until: Number.MAX_SAFE_INTEGER });
        expect(daily.map((p) => [p.bucket, p.requests, p.counted, p.blocked])).toEqual([
          [T0 - DAY, 1, 1000, 0],
          [T0, 6, 1117, 2],
        ]);
        const minutes = await store.timeseries({
          bucketMs: 60_000,
          since: T0 - 60_000,
          until: T0 + 2 * HOUR,
        });
        expect(minutes.map((p) => [p.bucket, p.requests])).toEqual([
          [T0 - 60_000, 1],
          [T0, 1],
          [T0 + HOUR - 60_000, 2],
          [T0 + HOUR, 2],
        ]);
      });

      it('timeseries handles many fine buckets (a long span of seconds)', async () => {
        await seed();
        const seconds = await store.timeseries({ bucketMs: 1000, since: 0, until: Number.MAX_SAFE_INTEGER });
        expect(seconds.map((p) => [p.bucket, p.requests, p.counted, p.blocked])).toEqual([
          [T0 - 1000, 1, 1000, 0],
          [T0, 1, 10, 0],
          [T0 + HOUR - 1000, 2, 100, 1],
          [T0 + HOUR, 2, 7, 0],
          [T0 + 2 * HOUR, 1, 1000, 1],
        ]);
        const oneAgent = await store.timeseries({
          bucketMs: 1000,
          since: T0,
          until: T0 + 2 * HOUR,
          agent: 'a',
        });
        expect(oneAgent.map((p) => [p.bucket, p.requests])).toEqual([
          [T0, 1],
          [T0 + HOUR - 1000, 1],
          [T0 + HOUR, 1],
        ]);
      });

      it('timeseries filters by agent and model', async () => {
        await seed();
        const q = { bucketMs: HOUR, since: T0, until: T0 + 2 * HOUR };
        const byAgent = await store.timeseries({ ...q, agent: 'b' });
        expect(byAgent).toEqual([point(T0, { requests: 1, blocked: 1 }), point(T0 + HOUR, { requests: 1 })]);
        const byModel = await store.timeseries({ ...q, model: 'm2' });
        expect(byModel.map((p) => [p.bucket, p.requests, p.counted, p.blocked])).toEqual([[T0, 2, 100, 1]]);
        const both = await store.timeseries({ ...q, agent: 'a', model: 'm1' });
        expect(both.map((p) => [p.bucket, p.requests, p.counted, p.costUsd])).toEqual([
          [T0, 1, 10, 0.5],
          [T0 + HOUR, 1, 7, 0.25],
        ]);
        expect(await store.timeseries({ ...q, agent: 'b', model: 'm1' })).toEqual([]);
      });

      it('timeseries of an empty range or ledger is [], and a bucket of unpriced rows costs 0', async () => {
        expect(await store.timeseries({ bucketMs: HOUR, since: 0, until: Number.MAX_SAFE_INTEGER })).toEqual(
          [],
        );
        await seed();
        expect(await store.timeseries({ bucketMs: HOUR, since: T0, until: T0 })).toEqual([]);
        expect(
          await store.timeseries({ bucketMs: HOUR, since: T0 + 3 * HOUR, until: T0 + 9 * HOUR }),
        ).toEqual([]);
        const unpriced = await store.timeseries({
          bucketMs: HOUR,
          since: T0 + HOUR,
          until: T0 + 2 * HOUR,
          agent: 'b',
        });
        expect(unpriced).toEqual([point(T0 + HOUR, { requests: 1 })]);
      });

      it('timeseries refuses a bucket width that is not a positive integer', async () => {
        for (const bucketMs of [0, -HOUR, 1.5, Number.NaN]) {
          await expect(store.timeseries({ bucketMs, since: 0, until: T0 })).rejects.toThrow(RangeError);
        }
      });
    });

    describe('resetting usage', () => {
      it('clears used in every bucket of the given series, keeps reserved, and returns what it cleared', async () => {
        await charge('c1', 'g|month', 40, 0);
        await charge('c2', 'g|month', 15, 10);
        await charge('c3', 'g|day', 5, 10);
        await charge('c4', 'other', 7, 0);
        await reserve('live', 'g|month', 30, 10);
        expect(await totals('g|month')).toEqual({ used: 55, reserved: 30 });

        expect(await store.resetUsage(['g|month', 'g|day', 'g|month'])).toBe(60);
        expect(await totals('g|month')).toEqual({ used: 0, reserved: 30 });
        expect(await totals('g|day')).toEqual({ used: 0, reserved: 0 });
        expect(await totals('other')).toEqual({ used: 7, reserved: 0 });

        // The live hold settles against the kept reservation: only its own charge is left as used.
        await store.settle('live', [25], ledgerRow({ id: 'live', counted: 25 }));
        expect(await totals('g|month')).toEqual({ used: 25, reserved: 0 });
        // The ledger is not touched by a reset.
        expect(await store.countLedger({})).toBe(5);

        expect(await store.resetUsage(['g|day'])).toBe(0);
        expect(await store.resetUsage(['nobody'])).toBe(0);
        expect(await store.resetUsage([])).toBe(0);
        expect(await totals('other')).toEqual({ used: 7, reserved: 0 });
      });

      it('frees the room a limit counts', async () => {
        await charge('c1', 'm', 100);
        const hold = (holdId: string) => ({
          holdId,
          entries: [{ series: 'm', bucket: 0, from: 0, limit: 100, amount: 60 }],
          owner: 'gw-1',
          expiresAt: Number.MAX_SAFE_INTEGER,
          draft: ledgerRow({ id: holdId }),
        });
        expect((await store.reserve(hold('h1'))).ok).toBe(false);
        expect(await store.resetUsage(['m'])).toBe(100);
        expect(await store.reserve(hold('h2'))).toEqual({ ok: true, after: [60] });
      });

      it('listSeries names every series with counters, also after a reset', async () => {
        expect(await store.listSeries()).toEqual([]);
        await charge('c1', 'global|month', 3, 0);
        await charge('c2', 'global|month', 3, 10);
        await reserve('h1', 'agent:a|day', 3);
        await charge('c3', 'global|hour', 0);
        expect([...(await store.listSeries())].sort()).toEqual([
          'agent:a|day',
          'global|hour',
          'global|month',
        ]);
        await store.resetUsage(['global|month']);
        expect([...(await store.listSeries())].sort()).toEqual([
          'agent:a|day',
          'global|hour',
          'global|month',
        ]);
      });
    });
  });
}
