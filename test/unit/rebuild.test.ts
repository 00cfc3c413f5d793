import { describe, expect, it } from 'vitest';
import { RESETS_SETTING } from '../../src/alerts/monitor.js';
import type { BudgetDef } from '../../src/budget/types.js';
import { WindowResolver } from '../../src/budget/windows.js';
import { countersFromLedger } from '../../src/service/rebuild.js';
import { createMemoryStore } from '../../src/store/index.js';
import { ledgerRow } from '../contract/store-contract.js';

const HOUR = 3_600_000;
const NOW = Date.UTC(2026, 10, 20, 12, 30);
const MONTH = Date.UTC(2026, 10, 1);
const DAY = Date.UTC(2026, 10, 20);

const budgets: BudgetDef[] = [
  { name: 'global', scope: {}, limits: { month: 100_000, day: 5000 }, rolling: false },
  {
    name: 'opus',
    scope: { model: 'claude-opus-*' },
    limits: { day: 2000 },
    rolling: false,
    usd: { month: 25 },
  },
];

describe('countersFromLedger', () => {
  it('charges each row to the buckets of its budgets at its time, only for the periods in force, skipping rows before a reset', async () => {
    const store = createMemoryStore();
    const resolver = new WindowResolver({ timezone: 'UTC', cycleDay: 1 });
    const rows = [
      ledgerRow({ id: 'old', ts: Date.UTC(2026, 9, 30), counted: 999 }), // last month: irrelevant
      ledgerRow({ id: 'a', ts: DAY - HOUR, counted: 100 }), // yesterday: month only
      ledgerRow({ id: 'b', ts: NOW - HOUR, counted: 40, model: 'claude-opus-4-5', costUsd: 0.5 }),
      ledgerRow({ id: 'c', ts: NOW - 10, counted: 7 }),
      ledgerRow({ id: 'blocked', ts: NOW - 5, counted: 0, outcome: 'blocked' }),
    ];
    for (const r of rows) await store.appendLedger(r);
    const seeds = await countersFromLedger({ store, resolver, budgets, now: NOW });
    const by = Object.fromEntries(seeds.map((s) => [`${s.series}@${s.bucket}`, s.used]));
    expect(by).toEqual({
      [`global|month@${MONTH}`]: 147,
      [`global|day@${DAY}`]: 47,
      [`global|hour@${Date.UTC(2026, 10, 20, 12)}`]: 7,
      [`opus|month@${MONTH}`]: 40,
      [`opus|day@${DAY}`]: 40,
      [`opus|usd-month@${MONTH}`]: 500_000,
      [`opus|usd-day@${DAY}`]: 500_000,
    });
    // Only the periods in force: yesterday's day bucket and the last hour's are left out.
    expect(seeds.some((s) => s.bucket < MONTH)).toBe(false);

    // An operator reset the global month at NOW - 30 min: only rows after it count there.
    await store.setSetting(RESETS_SETTING, JSON.stringify({ 'global|month': NOW - 30 * 60_000 }));
    const after = await countersFromLedger({ store, resolver, budgets, now: NOW });
    expect(after.find((s) => s.series === 'global|month')?.used).toBe(7);
    expect(after.find((s) => s.series === 'global|day' && s.bucket === DAY)?.used).toBe(47);
  });

  it('reads the ledger a page at a time without losing or repeating rows that share a time', async () => {
    const store = createMemoryStore();
    const resolver = new WindowResolver({ timezone: 'UTC', cycleDay: 1 });
    let expected = 0;
    for (let i = 0; i < 50; i++) {
      // Groups of up to 7 rows at the same millisecond straddle the page boundaries.
      await store.appendLedger(
        ledgerRow({ id: `r${i}`, ts: NOW - 1000 + Math.floor(i / 7), counted: i + 1 }),
      );
      expected += i + 1;
    }
    for (const pageSize of [1, 3, 5, 7, 50, 100]) {
      const seeds = await countersFromLedger({ store, resolver, budgets, now: NOW, pageSize });
      expect(seeds.find((s) => s.series === 'global|month')?.used, `page ${pageSize}`).toBe(expected);
    }
  });

  it("counts a virtual key's own budget for the rows of that key", async () => {
    const store = createMemoryStore();
    const resolver = new WindowResolver({ timezone: 'UTC', cycleDay: 1 });
    await store.createKey({
      id: 'key_1',
      hash: 'h',
      prefix: 'tw_x',
      agent: 'bot',
      limits: { day: 300 },
      createdAt: 0,
      revokedAt: null,
    });
    await store.appendLedger(ledgerRow({ id: 'k', ts: NOW - 10, counted: 30, agent: 'bot', keyId: 'key_1' }));
    const seeds = await countersFromLedger({ store, resolver, budgets: [], now: NOW });
    expect(seeds.find((s) => s.series === 'key:key_1|day')).toEqual({
      series: 'key:key_1|day',
      bucket: DAY,
      used: 30,
    });
  });
});
