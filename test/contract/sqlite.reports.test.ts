/**
 * How the SQLite store answers the operator reports (migration 3): which index each report reads, and
 * that the fast paths answer exactly what the plain queries answer. Speed itself is measured by
 * bench/api-bench.ts, not here.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MIGRATIONS, migrate, openSqliteStore, type SqliteStore } from '../../src/store/index.js';
import type { TimeseriesQuery } from '../../src/store/ports.js';
import { buildControlStore } from '../../src/store/sqlite/control-store.js';
import { ledgerRow } from './store-contract.js';

const HOUR = 3_600_000;
const T0 = 1_700_000_000_000 - (1_700_000_000_000 % HOUR);
const AGENTS = ['a1', 'a2', 'a3', 'a4'];
const MODELS = ['m1', 'm2', null];

// The report queries as the store issues them (sqlite-store.ts groupLedger, control-store.ts).
const GROUP_BY_AGENT =
  'SELECT agent AS key, COUNT(*) AS requests, COALESCE(SUM(counted), 0) AS counted FROM ledger ' +
  'WHERE ts >= ? AND ts < ? GROUP BY agent ORDER BY counted DESC, key ASC';
const GROUP_BY_MODEL =
  'SELECT model AS key, COUNT(*) AS requests, COALESCE(SUM(counted), 0) AS counted FROM ledger ' +
  'WHERE ts >= ? AND ts < ? AND model IS NOT NULL GROUP BY model ORDER BY counted DESC, key ASC';
const BUCKET_TOTALS =
  'SELECT COUNT(*) AS requests, COALESCE(SUM(counted), 0) AS counted, ' +
  'COALESCE(SUM(input_tokens), 0) AS inputTokens, COALESCE(SUM(output_tokens), 0) AS outputTokens, ' +
  'COALESCE(SUM(cache_creation_tokens), 0) AS cacheCreationTokens, ' +
  'COALESCE(SUM(cache_read_tokens), 0) AS cacheReadTokens, TOTAL(cost_usd) AS costUsd, ' +
  "COALESCE(SUM(outcome = 'blocked'), 0) AS blocked FROM ledger WHERE ts >= ? AND ts < ?";

function plan(db: Database.Database, sql: string, ...params: unknown[]): string {
  return (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...params) as { detail: string }[])
    .map((p) => p.detail)
    .join(' | ');
}

describe('SQLite ledger reports', () => {
  let dir: string;
  let store: SqliteStore;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tokenwarden-sqlite-reports-'));
    store = openSqliteStore({ path: join(dir, 'reports.db') });
    for (let i = 0; i < 240; i++) {
      await store.appendLedger(
        ledgerRow({
          id: `r${i}`,
          ts: T0 + i * 15 * 60_000,
          agent: AGENTS[i % AGENTS.length] as string,
          model: MODELS[i % MODELS.length] ?? null,
          outcome: i % 10 === 0 ? 'blocked' : 'ok',
          counted: i,
          inputTokens: i,
          costUsd: i % 2 ? 0.25 : null,
        }),
      );
    }
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('group a month by agent and by model in index order from a covering index, sorting no rows', () => {
    for (const sql of [GROUP_BY_AGENT, GROUP_BY_MODEL]) {
      for (const [since, until] of [
        [T0, T0 + 30 * 24 * HOUR],
        [T0 + 59 * HOUR, T0 + 60 * HOUR],
      ]) {
        const p = plan(store.db, sql, since, until);
        expect(p).toMatch(/USING COVERING INDEX ledger_(agent|model)_ts/);
        expect(p).not.toMatch(/TEMP B-TREE FOR GROUP BY/);
      }
    }
  });

  it('sum a timeseries bucket and count a filter from an index alone', () => {
    expect(plan(store.db, BUCKET_TOTALS, T0, T0 + HOUR)).toMatch(/USING COVERING INDEX ledger_ts/);
    const count = 'SELECT COUNT(*) FROM ledger WHERE ts >= ? AND ts < ?';
    expect(plan(store.db, `${count} AND agent = ? AND outcome = ?`, T0, T0 + HOUR, 'a1', 'ok')).toMatch(
      /USING COVERING INDEX ledger_agent_ts/,
    );
    expect(plan(store.db, `${count} AND model = ? AND outcome = ?`, T0, T0 + HOUR, 'm1', 'ok')).toMatch(
      /USING COVERING INDEX ledger_model_ts/,
    );
  });

  it('still page every filter newest first without sorting', () => {
    for (const filter of ['', ' AND agent = ?', ' AND model = ?', ' AND outcome = ?']) {
      const params: unknown[] = [T0, T0 + 30 * 24 * HOUR, ...(filter ? ['x'] : [])];
      const p = plan(
        store.db,
        `SELECT * FROM ledger WHERE ts >= ? AND ts < ?${filter} ORDER BY ts DESC, id DESC LIMIT 10 OFFSET 5`,
        ...params,
      );
      expect(p).toMatch(/USING INDEX ledger_/);
      expect(p).not.toMatch(/TEMP B-TREE/);
    }
  });

  it('report what the plain queries report', async () => {
    const agents = await store.groupLedger('agent', T0, T0 + 30 * 24 * HOUR);
    expect(agents).toEqual(
      store.db
        .prepare(GROUP_BY_AGENT.replace('FROM ledger', 'FROM ledger NOT INDEXED'))
        .all(T0, T0 + 30 * 24 * HOUR),
    );
    const points = await store.timeseries({ bucketMs: HOUR, since: T0, until: T0 + 30 * 24 * HOUR });
    expect(points).toHaveLength(60);
    const raw = store.db.prepare(BUCKET_TOTALS.replace('FROM ledger', 'FROM ledger NOT INDEXED'));
    for (const { bucket, ...totals } of points) expect(totals).toEqual(raw.get(bucket, bucket + HOUR));
  });

  it('count the whole ledger without a range scan, excluding the rows a range count excludes', async () => {
    const insert = store.db.prepare(
      "INSERT INTO ledger (id, ts, agent, stream, outcome, status, reserved, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, counted, usage_source) VALUES (?, ?, 'edge', 0, 'ok', 200, 0, 0, 0, 0, 0, 0, 'none')",
    );
    insert.run('far-past', Number.MIN_SAFE_INTEGER - 1);
    insert.run('far-future', Number.MAX_SAFE_INTEGER);
    insert.run('last-in-range', Number.MAX_SAFE_INTEGER - 1);
    expect(await store.countLedger({})).toBe(241);
    expect(await store.countLedger({})).toBe(
      await store.countLedger({ since: Number.MIN_SAFE_INTEGER, until: Number.MAX_SAFE_INTEGER }),
    );
    expect((await store.queryLedger({ limit: 1000 })).length).toBe(241);
    expect(await store.countLedger({ agent: 'a1' })).toBe(60);
    expect(await store.countLedger({ since: T0 + 24 * HOUR })).toBe(145);
  });

  it('upgrade a version-2 ledger: same rows, new indexes, planner statistics in place', () => {
    const path = join(dir, 'v2.db');
    const v2 = new Database(path);
    migrate(v2, MIGRATIONS.slice(0, 2));
    v2.exec(
      "INSERT INTO ledger (id, ts, agent, stream, outcome, status, reserved, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, counted, usage_source) VALUES ('old', 1, 'x', 0, 'ok', 200, 0, 1, 2, 3, 4, 10, 'reported')",
    );
    expect(migrate(v2).applied).toEqual(['ledger-report-indexes', 'ledger-append-only']);
    expect(v2.prepare('SELECT id, counted FROM ledger').all()).toEqual([{ id: 'old', counted: 10 }]);
    const columns = (index: string) =>
      (
        v2.prepare(`SELECT name FROM pragma_index_info('${index}') ORDER BY seqno`).all() as {
          name: string;
        }[]
      )
        .map((c) => c.name)
        .slice(0, 4);
    expect(columns('ledger_ts')).toEqual(['ts', 'id', 'counted', 'input_tokens']);
    expect(columns('ledger_agent_ts')).toEqual(['agent', 'ts', 'id', 'counted']);
    expect(columns('ledger_model_ts')).toEqual(['model', 'ts', 'id', 'counted']);
    const stats = v2.prepare("SELECT idx FROM sqlite_stat1 WHERE tbl = 'ledger' ORDER BY idx").pluck().all();
    expect(stats).toEqual([
      'ledger_agent_ts',
      'ledger_model_ts',
      'ledger_outcome_ts',
      'ledger_ts',
      'sqlite_autoindex_ledger_1',
    ]);
    v2.close();
  });

  it('refuse to change or remove a ledger row', () => {
    expect(() => store.db.prepare("UPDATE ledger SET counted = 0 WHERE id = 'r1'").run()).toThrow(
      /append-only/,
    );
    expect(() => store.db.prepare("DELETE FROM ledger WHERE id = 'r1'").run()).toThrow(/append-only/);
    expect(store.db.prepare("SELECT counted FROM ledger WHERE id = 'r1'").pluck().get()).toBe(1);
  });

  it('timeseries answers what a fresh sum answers, whatever rows arrive between calls', async () => {
    const widths = [60_000, HOUR, 24 * HOUR];
    const query = fc.record({
      bucketMs: fc.constantFrom(...widths),
      since: fc.integer({ min: -2 * HOUR, max: 50 * HOUR }).map((d) => T0 + d),
      span: fc.integer({ min: 1, max: 80 * HOUR }),
      agent: fc.constantFrom(undefined, 'a1', 'a2', 'new'),
      model: fc.constantFrom(undefined, 'm1', 'm2'),
    });
    const row = fc.record({
      ts: fc.integer({ min: -HOUR, max: 70 * HOUR }).map((d) => T0 + d),
      agent: fc.constantFrom('a1', 'a2', 'new'),
      model: fc.constantFrom('m1', 'm2', null),
      counted: fc.integer({ min: 0, max: 1000 }),
      costUsd: fc.constantFrom(null, 0.1, 0.2, 0.3, 1 / 3),
      blocked: fc.boolean(),
    });
    let n = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.array(row, { maxLength: 5 }), query), { maxLength: 12 }),
        async (steps) => {
          for (const [rows, q] of steps) {
            for (const r of rows) {
              await store.appendLedger(
                ledgerRow({
                  id: `p${n++}`,
                  ts: r.ts,
                  agent: r.agent,
                  model: r.model,
                  counted: r.counted,
                  outputTokens: r.counted,
                  costUsd: r.costUsd,
                  outcome: r.blocked ? 'blocked' : 'ok',
                }),
              );
            }
            const tq: TimeseriesQuery = {
              bucketMs: q.bucketMs,
              since: q.since,
              until: q.since + q.span,
              ...(q.agent ? { agent: q.agent } : {}),
              ...(q.model ? { model: q.model } : {}),
            };
            // A control store built afresh keeps no totals: every bucket is summed now.
            expect(await store.timeseries(tq)).toEqual(await buildControlStore(store.db).timeseries(tq));
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it('timeseries sees rows another connection adds', async () => {
    const q = { bucketMs: HOUR, since: T0, until: T0 + 70 * HOUR };
    const before = await store.timeseries(q);
    const other = openSqliteStore({ path: join(dir, 'reports.db') });
    try {
      await other.appendLedger(ledgerRow({ id: 'late', ts: T0 + 5 * HOUR + 1, agent: 'a1', counted: 1000 }));
    } finally {
      await other.close();
    }
    const after = await store.timeseries(q);
    expect(after.find((p) => p.bucket === T0 + 5 * HOUR)?.counted).toBe(
      (before.find((p) => p.bucket === T0 + 5 * HOUR)?.counted ?? 0) + 1000,
    );
    expect(after).toEqual(await buildControlStore(store.db).timeseries(q));
  });

  it('timeseries inside a transaction that rolls back keeps nothing of it', async () => {
    const q = { bucketMs: HOUR, since: T0, until: T0 + 70 * HOUR };
    const fresh = async () => buildControlStore(store.db).timeseries(q);
    const before = await store.timeseries(q);
    let seen: unknown = null;
    const insert = store.db.prepare(
      "INSERT INTO ledger (id, ts, agent, stream, outcome, status, reserved, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, counted, usage_source) VALUES (?, ?, 'a1', 0, 'ok', 200, 0, 0, 0, 0, 0, ?, 'none')",
    );
    expect(() =>
      store.db.transaction(() => {
        insert.run('doomed', T0 + 3 * HOUR, 500);
        // The store's methods run synchronously; the promise only carries the result.
        void store.timeseries(q).then((p) => {
          seen = p;
        });
        throw new Error('roll back');
      })(),
    ).toThrow('roll back');
    await new Promise((r) => setImmediate(r));
    expect((seen as { counted: number }[] | null)?.find((p) => p.counted >= 500)).toBeDefined();
    // A later row takes the rolled-back row's rowid, in another bucket.
    insert.run('later', T0 + 40 * HOUR, 7);
    const after = await store.timeseries(q);
    expect(after).toEqual(await fresh());
    expect(after).not.toEqual(before);
  });
});
