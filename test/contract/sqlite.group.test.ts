import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { LedgerRow } from '../../src/store/ports.js';
import { openSqliteStore } from '../../src/store/sqlite/sqlite-store.js';

function row(i: number, ts: number, agent: string, model: string | null, counted: number): LedgerRow {
  return {
    id: `r${i}`,
    ts,
    agent,
    keyId: null,
    model,
    stream: false,
    outcome: 'ok',
    status: 200,
    reserved: counted,
    inputTokens: counted,
    outputTokens: 0,
    cacheCreationTokens: 0,
    cacheReadTokens: 0,
    counted,
    costUsd: null,
    latencyMs: null,
    upstreamRequestId: null,
    blockReason: null,
    usageSource: 'reported',
    metadata: {},
  };
}

describe('SQLite groupLedger kept totals', () => {
  it('always equal a fresh GROUP BY, whatever rows arrive between calls (future timestamps included)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tw-group-'));
    try {
      const step = fc.oneof(
        fc.record({
          kind: fc.constant('insert' as const),
          rows: fc.array(
            fc.record({
              ts: fc.integer({ min: 0, max: 2000 }),
              agent: fc.constantFrom('a', 'b', 'c', 'é', '𝒜'),
              model: fc.constantFrom('m1', 'm2', null),
              counted: fc.integer({ min: 0, max: 500 }),
            }),
            { maxLength: 20 },
          ),
        }),
        fc.record({
          kind: fc.constant('query' as const),
          by: fc.constantFrom('agent' as const, 'model' as const),
          since: fc.constantFrom(0, 500, 1000),
          until: fc.constantFrom(900, 1500, 2001, 5000),
        }),
      );
      let run = 0;
      await fc.assert(
        fc.asyncProperty(fc.array(step, { maxLength: 25 }), async (steps) => {
          const store = openSqliteStore({ path: join(dir, `g${run++}.db`) });
          try {
            let n = 0;
            for (const s of steps) {
              if (s.kind === 'insert') {
                for (const r of s.rows) await store.appendLedger(row(n++, r.ts, r.agent, r.model, r.counted));
              } else {
                const got = await store.groupLedger(s.by, s.since, s.until);
                const where = s.by === 'model' ? ' AND model IS NOT NULL' : '';
                const want = store.db
                  .prepare(
                    `SELECT ${s.by} AS key, COUNT(*) AS requests, COALESCE(SUM(counted), 0) AS counted FROM ledger ` +
                      `WHERE ts >= ? AND ts < ?${where} GROUP BY ${s.by} ORDER BY counted DESC, key ASC`,
                  )
                  .all(s.since, s.until);
                expect(got).toEqual(want);
              }
            }
          } finally {
            await store.close();
          }
        }),
        { numRuns: 60 },
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
