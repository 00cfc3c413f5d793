import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { WindowResolver } from '../../src/budget/windows.js';
import { toBudgetDefs } from '../../src/service/operator.js';
import { buildSummary } from '../../src/service/summary.js';
import { createMemoryStore, openSqliteStore } from '../../src/store/index.js';
import type { Store } from '../../src/store/ports.js';
import { ledgerRow } from '../contract/store-contract.js';

const HOUR = 3_600_000;
const NOW = Date.UTC(2026, 10, 20, 12, 30);

const stores: Array<[string, () => { store: Store; cleanup(): void }]> = [
  ['memory', () => ({ store: createMemoryStore({ maxLedgerRows: 1000 }), cleanup() {} })],
  [
    'sqlite',
    () => {
      const dir = mkdtempSync(join(tmpdir(), 'tokenwarden-summary-'));
      return {
        store: openSqliteStore({ path: join(dir, 'summary.db') }),
        cleanup: () => rmSync(dir, { recursive: true, force: true }),
      };
    },
  ],
];

describe.each(stores)('buildSummary over the %s store', (_name, make) => {
  const open: Array<{ store: Store; cleanup(): void }> = [];
  afterEach(async () => {
    for (const o of open.splice(0)) {
      await o.store.close();
      o.cleanup();
    }
  });

  it('burn rates total counted tokens over [now - 1 h, now] and [now - 24 h, now], edges included', async () => {
    const o = make();
    open.push(o);
    const rows: Array<[string, number, string, string | null, number]> = [
      ['day-edge-out', NOW - 24 * HOUR - 1, 'a', 'm1', 1_000_000],
      ['day-edge-in', NOW - 24 * HOUR, 'a', 'm1', 2_400],
      ['day', NOW - 5 * HOUR, 'b', null, 480],
      ['hour-edge-out', NOW - HOUR - 1, 'c', 'm2', 24],
      ['hour-edge-in', NOW - HOUR, 'c', 'm2', 100],
      ['now', NOW, 'a', 'm1', 7],
      ['future', NOW + 1, 'a', 'm1', 50_000],
      ['month-start', Date.UTC(2026, 10, 1), 'b', 'm2', 3],
    ];
    for (const [id, ts, agent, model, counted] of rows) {
      await o.store.appendLedger(ledgerRow({ id, ts, agent, model, counted }));
    }
    const doc = await buildSummary({
      store: o.store,
      resolver: new WindowResolver({ timezone: 'UTC', cycleDay: 1 }),
      budgets: toBudgetDefs([{ name: 'global', month: 10_000_000, rolling: false }]),
      config: { thresholds: { warning: 80, critical: 95, emergency: 98 }, mode: 'enforce' },
      now: NOW,
    });
    expect(doc.burnRate).toEqual({
      lastHour: 107,
      lastDay: Math.round(((2_400 + 480 + 24 + 100 + 7) / 24) * 100) / 100,
    });
    // The month: every row from the 1st up to and including now.
    expect(doc.byAgent).toEqual([
      { agent: 'a', requests: 3, tokens: 1_002_407 },
      { agent: 'b', requests: 2, tokens: 483 },
      { agent: 'c', requests: 2, tokens: 124 },
    ]);
    expect(doc.byModel).toEqual([
      { model: 'm1', requests: 3, tokens: 1_002_407 },
      { model: 'm2', requests: 3, tokens: 127 },
    ]);
  });
});
