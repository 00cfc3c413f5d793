import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  LATEST_VERSION,
  MIGRATIONS,
  migrate,
  openSqliteStore,
  SchemaTooNewError,
  type SqliteStore,
} from '../../src/store/index.js';
import { describeStoreContract, ledgerRow } from './store-contract.js';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

function tempDir(): { dir: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'tokenwarden-sqlite-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

describeStoreContract('sqlite', async () => {
  const tmp = tempDir();
  const store = openSqliteStore({ path: join(tmp.dir, 'contract.db') });
  return {
    store,
    async cleanup() {
      await store.close();
      tmp.remove();
    },
  };
});

describe('SQLite store', () => {
  let tmp: { dir: string; remove(): void };
  let path: string;
  const opened: SqliteStore[] = [];
  const open = (): SqliteStore => {
    const s = openSqliteStore({ path });
    opened.push(s);
    return s;
  };

  beforeEach(() => {
    tmp = tempDir();
    // A directory that does not exist yet: the store creates it.
    path = join(tmp.dir, 'nested', 'dir', 'tokenwarden.db');
  });
  afterEach(async () => {
    for (const s of opened.splice(0)) await s.close();
    tmp.remove();
  });

  const hold = (holdId: string, amount: number, owner: string, limit: number | null = 10_000) => ({
    holdId,
    entries: [
      { series: 'global|month', bucket: 0, from: 0, limit, amount },
      { series: 'global|hour', bucket: 0, from: 0, limit: null, amount },
    ],
    owner,
    expiresAt: Date.now() + 600_000,
    draft: ledgerRow({ id: holdId, outcome: 'interrupted', usageSource: 'estimated', counted: 2 * amount }),
  });

  it('creates the file with WAL, synchronous NORMAL, foreign keys and a busy timeout', () => {
    const { db } = open();
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(db.pragma('synchronous', { simple: true })).toBe(1); // NORMAL
    expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
    expect(db.pragma('busy_timeout', { simple: true })).toBe(5000);
  });

  it('keeps counters, holds and the ledger across close and reopen', async () => {
    const a = open();
    expect((await a.reserve(hold('h1', 100, 'gw-1'))).ok).toBe(true);
    await a.settle('h1', [70, 70], ledgerRow({ id: 'h1', counted: 70, metadata: { stream: true, n: null } }));
    expect((await a.reserve(hold('h2', 50, 'gw-1'))).ok).toBe(true);
    await a.appendLedger(ledgerRow({ id: 'b1', outcome: 'blocked', status: 429, blockReason: 'month' }));
    const before = await a.queryLedger({ limit: 10 });
    await a.close();

    const b = open();
    expect(await b.usage([{ series: 'global|month', from: 0 }])).toEqual([{ used: 70, reserved: 50 }]);
    expect(await b.holdCount()).toBe(1);
    expect(await b.queryLedger({ limit: 10 })).toEqual(before);
    expect(before.map((r) => r.id).sort()).toEqual(['b1', 'h1']);
    await b.settle('h2', [10, 10], ledgerRow({ id: 'h2', counted: 10 }));
    expect(await b.usage([{ series: 'global|month', from: 0 }])).toEqual([{ used: 80, reserved: 0 }]);
  });

  it('reclaims a hold left by a closed store on the next open (keepOwner = the new owner)', async () => {
    const crashed = open();
    expect((await crashed.reserve(hold('left', 40, 'gw-old'))).ok).toBe(true);
    await crashed.close();

    const next = open();
    // The hold has not expired; it is reclaimed because its owner is gone.
    expect(await next.reclaim({ now: Date.now(), keepOwner: 'gw-new' })).toBe(1);
    expect(await next.holdCount()).toBe(0);
    expect(await next.usage([{ series: 'global|month', from: 0 }])).toEqual([{ used: 40, reserved: 0 }]);
    const [row] = await next.queryLedger({ limit: 10 });
    expect(row).toMatchObject({ id: 'left', outcome: 'interrupted', usageSource: 'estimated', counted: 80 });
  });

  it('stores ledger fields as columns that SQL can aggregate', async () => {
    const s = open();
    await s.appendLedger(
      ledgerRow({ id: 'q1', agent: 'x', counted: 5, stream: true, metadata: { tags: { team: 'a' } } }),
    );
    await s.appendLedger(ledgerRow({ id: 'q2', agent: 'x', counted: 7, metadata: { tags: { team: 'b' } } }));
    const row = s.db
      .prepare(
        "SELECT SUM(counted) AS counted, SUM(stream) AS streams, group_concat(json_extract(metadata, '$.tags.team'), ',') AS teams FROM ledger WHERE agent = 'x'",
      )
      .get();
    expect(row).toEqual({ counted: 12, streams: 1, teams: 'a,b' });
    const plan = s.db
      .prepare("EXPLAIN QUERY PLAN SELECT * FROM ledger WHERE agent = 'x' ORDER BY ts DESC, id DESC")
      .all() as { detail: string }[];
    expect(plan.map((p) => p.detail).join(' ')).toMatch(/USING INDEX ledger_agent_ts/);
  });

  describe('migrations', () => {
    const LATEST_TABLES = [
      'alerts',
      'counters',
      'emergencies',
      'holds',
      'ledger',
      'settings',
      'virtual_keys',
    ];
    // The schema's own tables: SQLite's internal ones (sqlite_stat1 of migration 3) are not listed.
    const tables = (db: Database.Database): string[] =>
      (
        db
          .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
          )
          .all() as {
          name: string;
        }[]
      ).map((t) => t.name);

    it('run on a fresh file and are idempotent on reopen', async () => {
      const s = open();
      expect(s.db.pragma('user_version', { simple: true })).toBe(LATEST_VERSION);
      expect(LATEST_VERSION).toBe(MIGRATIONS.length);
      expect(tables(s.db)).toEqual(LATEST_TABLES);
      await s.appendLedger(ledgerRow({ id: 'keep' }));
      expect(migrate(s.db)).toEqual({ from: LATEST_VERSION, to: LATEST_VERSION, applied: [] });
      await s.close();

      const again = open();
      expect(again.db.pragma('user_version', { simple: true })).toBe(LATEST_VERSION);
      expect((await again.queryLedger({ limit: 10 })).map((r) => r.id)).toEqual(['keep']);
    });

    it('report what they applied on a fresh database', () => {
      const db = new Database(':memory:');
      try {
        expect(migrate(db)).toEqual({ from: 0, to: LATEST_VERSION, applied: MIGRATIONS.map((m) => m.name) });
      } finally {
        db.close();
      }
    });

    it('apply appended migrations in order and roll back all of them if one fails', async () => {
      const s = open();
      const next = [
        ...MIGRATIONS,
        {
          version: LATEST_VERSION + 1,
          name: 'extra',
          up: (db: Database.Database) => db.exec('CREATE TABLE extra (id TEXT)'),
        },
        {
          version: LATEST_VERSION + 2,
          name: 'broken',
          up: (db: Database.Database) => {
            db.exec('CREATE TABLE half (id TEXT)');
            throw new Error('boom');
          },
        },
      ];
      expect(() => migrate(s.db, next)).toThrow('boom');
      expect(s.db.pragma('user_version', { simple: true })).toBe(LATEST_VERSION);
      expect(tables(s.db)).toEqual(LATEST_TABLES);

      expect(migrate(s.db, next.slice(0, -1))).toEqual({
        from: LATEST_VERSION,
        to: LATEST_VERSION + 1,
        applied: ['extra'],
      });
      expect(tables(s.db)).toEqual([...LATEST_TABLES, 'extra'].sort());
    });

    it('upgrade a database written at version 1 to the latest, its data intact', async () => {
      mkdirSync(dirname(path), { recursive: true });
      const v1 = new Database(path);
      v1.pragma('journal_mode = WAL');
      expect(migrate(v1, MIGRATIONS.slice(0, 1))).toEqual({
        from: 0,
        to: 1,
        applied: MIGRATIONS.slice(0, 1).map((m) => m.name),
      });
      // What a version-1 gateway leaves behind: ledger rows, counters and a live hold.
      v1.prepare(
        'INSERT INTO ledger (id, ts, agent, key_id, model, stream, outcome, status, reserved, input_tokens, ' +
          'output_tokens, cache_creation_tokens, cache_read_tokens, counted, cost_usd, latency_ms, ' +
          'upstream_request_id, block_reason, usage_source, metadata) ' +
          "VALUES (?, ?, 'old-agent', NULL, 'claude-sonnet-4-5', 1, ?, 200, 50, 10, 20, 0, 0, 30, 0.5, 12.5, " +
          'NULL, NULL, \'reported\', \'{"tags":{"team":"a"}}\')',
      ).run('old-1', 3_600_000, 'ok');
      v1.prepare(
        "INSERT INTO counters (series, bucket, used, reserved) VALUES ('global|month', 0, 30, 40)",
      ).run();
      v1.prepare(
        "INSERT INTO holds (id, owner, expires_at, entries, draft) VALUES ('live', 'gw-old', ?, ?, ?)",
      ).run(
        Number.MAX_SAFE_INTEGER,
        JSON.stringify([['global|month', 0, 40]]),
        JSON.stringify(ledgerRow({ id: 'live', outcome: 'interrupted', counted: 40 })),
      );
      v1.close();

      const raw = new Database(path);
      try {
        expect(migrate(raw)).toEqual({
          from: 1,
          to: LATEST_VERSION,
          applied: MIGRATIONS.slice(1).map((m) => m.name),
        });
      } finally {
        raw.close();
      }

      const s = open();
      expect(s.db.pragma('user_version', { simple: true })).toBe(LATEST_VERSION);
      expect(tables(s.db)).toEqual(LATEST_TABLES);
      const [row] = await s.queryLedger({ limit: 10 });
      expect(row).toMatchObject({
        id: 'old-1',
        agent: 'old-agent',
        stream: true,
        counted: 30,
        costUsd: 0.5,
        metadata: { tags: { team: 'a' } },
      });
      expect(await s.usage([{ series: 'global|month', from: 0 }])).toEqual([{ used: 30, reserved: 40 }]);
      expect(await s.holdCount()).toBe(1);
      await s.settle('live', [25], ledgerRow({ id: 'live', ts: 3_600_001, counted: 25 }));
      expect(await s.usage([{ series: 'global|month', from: 0 }])).toEqual([{ used: 55, reserved: 0 }]);
      // The new tables work and the old rows feed the new reports.
      expect(await s.timeseries({ bucketMs: 3_600_000, since: 0, until: 7_200_000 })).toMatchObject([
        { bucket: 3_600_000, requests: 2, counted: 55 },
      ]);
      expect(await s.listSeries()).toEqual(['global|month']);
      await s.setSetting('budgets', '[]');
      expect(await s.getSetting('budgets')).toBe('[]');
      expect(await s.listAlerts({ limit: 10 })).toEqual([]);
    });

    it('refuse a migration list with a gap', () => {
      const db = new Database(':memory:');
      try {
        const gap = [...MIGRATIONS, { version: LATEST_VERSION + 2, name: 'gap', up: () => {} }];
        expect(() => migrate(db, gap)).toThrow(/expected/);
        expect(db.pragma('user_version', { simple: true })).toBe(0);
      } finally {
        db.close();
      }
    });

    it('refuse to open a database written by a newer version, with a clear error', async () => {
      const s = open();
      s.db.pragma(`user_version = ${LATEST_VERSION + 1}`);
      await s.close();
      let error: unknown;
      try {
        open();
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(SchemaTooNewError);
      expect((error as Error).message).toContain(`database schema version ${LATEST_VERSION + 1} is newer`);
      // The file is left as it was.
      const db = new Database(path);
      try {
        expect(db.pragma('user_version', { simple: true })).toBe(LATEST_VERSION + 1);
      } finally {
        db.close();
      }
    });
  });

  it('two stores on the same new file in one process see each other (WAL)', async () => {
    const a = open();
    const b = open();
    expect((await a.reserve(hold('a1', 6000, 'gw-a'))).ok).toBe(true);
    expect(await b.reserve(hold('b1', 5000, 'gw-b'))).toEqual({
      ok: false,
      entry: 0,
      used: 0,
      reserved: 6000,
    });
    expect((await b.reserve(hold('b2', 4000, 'gw-b'))).ok).toBe(true);
    await b.settle('a1', [100, 100], ledgerRow({ id: 'a1' }));
    expect(await a.holdCount()).toBe(1);
    expect(await a.usage([{ series: 'global|month', from: 0 }])).toEqual([{ used: 100, reserved: 4000 }]);
  });

  it('several processes opening the same new file at once all migrate and never overrun a limit', async () => {
    const processes = 4;
    const attempts = 300;
    const amount = 7;
    const limit = 1000;
    const startAt = Date.now() + 1500;
    // Each iteration tries to hold 7 of the shared 1000 (kept, never settled) and also holds and
    // releases on a busy unlimited series, so the processes keep writing against each other.
    const script = `
      const { openSqliteStore } = await import(${JSON.stringify(join(repoRoot, 'src/store/index.ts'))});
      const [path, who, startAt, attempts, amount, limit] = process.argv.slice(1);
      const draft = (id) => ({ id, ts: 0, agent: who, keyId: null, model: null, stream: false,
        outcome: 'interrupted', status: 0, reserved: 0, inputTokens: 0, outputTokens: 0,
        cacheCreationTokens: 0, cacheReadTokens: 0, counted: 0, costUsd: null, latencyMs: null,
        upstreamRequestId: null, blockReason: null, usageSource: 'estimated', metadata: {} });
      const req = (id, series, limit, amount) => ({ holdId: id, owner: who, expiresAt: Date.now() + 60000,
        entries: [{ series, bucket: 0, from: 0, limit, amount }], draft: draft(id) });
      await new Promise((r) => setTimeout(r, Math.max(0, Number(startAt) - Date.now())));
      const store = openSqliteStore({ path });
      let admitted = 0;
      for (let i = 0; i < Number(attempts); i++) {
        if ((await store.reserve(req(who + '-' + i, 's', Number(limit), Number(amount)))).ok) admitted++;
        const churn = who + '-churn-' + i;
        if (!(await store.reserve(req(churn, 'churn', null, 5))).ok) throw new Error('churn refused');
        await store.settle(churn, [0], draft(churn));
      }
      await store.close();
      console.log(JSON.stringify({ admitted }));
    `;
    const run = promisify(execFile);
    const outputs = await Promise.all(
      Array.from({ length: processes }, (_, p) =>
        run(
          process.execPath,
          [
            '--import',
            'tsx',
            '--input-type=module',
            '--eval',
            script,
            path,
            `p${p}`,
            String(startAt),
            String(attempts),
            String(amount),
            String(limit),
          ],
          { cwd: repoRoot },
        ),
      ),
    );
    const admitted = outputs.map((o) => (JSON.parse(o.stdout.trim()) as { admitted: number }).admitted);
    // 1200 attempts of 7 against 1000: exactly 142 fit, whoever got them.
    expect(admitted.reduce((a, b) => a + b, 0)).toBe(Math.floor(limit / amount));
    const s = open();
    expect(
      await s.usage([
        { series: 's', from: 0 },
        { series: 'churn', from: 0 },
      ]),
    ).toEqual([
      { used: 0, reserved: 142 * amount },
      { used: 0, reserved: 0 },
    ]);
    expect(await s.holdCount()).toBe(142);
    expect((await s.queryLedger({ limit: 10_000 })).length).toBe(processes * attempts);
    expect(s.db.pragma('user_version', { simple: true })).toBe(LATEST_VERSION);
  }, 60_000);
});
