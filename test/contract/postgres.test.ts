import type pg from 'pg';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  migratePostgres,
  openPostgresStore,
  POSTGRES_LATEST_VERSION,
  POSTGRES_MIGRATIONS,
  type PostgresMigration,
  PostgresSchemaTooNewError,
  type PostgresStore,
  type PostgresStoreOptions,
  type ReserveRequest,
  SchemaTooNewError,
} from '../../src/store/index.js';
import {
  describePostgres,
  dropSchema,
  openTestStore,
  POSTGRES_URL,
  uniqueSchema,
  withClient,
} from '../support/postgres.js';
import { describeStoreContract, ledgerRow } from './store-contract.js';

await describePostgres('postgres store', () => {
  describeStoreContract('postgres', () => openTestStore());

  describe('PostgreSQL store', () => {
    let schema: string;
    const opened: PostgresStore[] = [];
    /** A store on this test's schema (one pool each: several are like several replicas). */
    const open = async (opts: Partial<PostgresStoreOptions> = {}): Promise<PostgresStore> => {
      const s = await openPostgresStore({ url: POSTGRES_URL, schema, poolSize: 4, ...opts });
      opened.push(s);
      return s;
    };
    const sql = <R extends pg.QueryResultRow>(text: string, values?: unknown[]) =>
      withClient(async (c) => (await c.query<R>(text, values)).rows);
    const versions = async () =>
      (await sql<{ version: number }>(`SELECT version FROM "${schema}".schema_migrations ORDER BY 1`)).map(
        (r) => r.version,
      );
    const tables = async () =>
      (
        await sql<{ name: string }>(
          'SELECT table_name AS name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name COLLATE "C"',
          [schema],
        )
      ).map((r) => r.name);
    const LATEST_TABLES = [
      'alerts',
      'counters',
      'emergencies',
      'holds',
      'ledger',
      'schema_migrations',
      'settings',
      'virtual_keys',
    ];

    const hold = (
      holdId: string,
      entries: ReserveRequest['entries'],
      over: Partial<Omit<ReserveRequest, 'entries' | 'holdId'>> = {},
    ): ReserveRequest => ({
      holdId,
      entries,
      owner: 'gw-1',
      expiresAt: Number.MAX_SAFE_INTEGER,
      draft: ledgerRow({ id: holdId, outcome: 'interrupted', usageSource: 'estimated', counted: 0 }),
      ...over,
    });

    beforeEach(() => {
      schema = uniqueSchema();
    });
    afterEach(async () => {
      for (const s of opened.splice(0)) await s.close();
      await dropSchema(schema);
    });

    describe('migrations', () => {
      it('three stores opening the same empty schema at once all come up, migrating it once', async () => {
        const stores = await Promise.all([open(), open(), open()]);
        expect(await versions()).toEqual(POSTGRES_MIGRATIONS.map((m) => m.version));
        expect(await tables()).toEqual(LATEST_TABLES);
        // They share one budget.
        const [a, b, c] = stores as [PostgresStore, PostgresStore, PostgresStore];
        expect(
          await a.reserve(hold('a1', [{ series: 'm', bucket: 0, from: 0, limit: 10, amount: 6 }])),
        ).toEqual({ ok: true, after: [6] });
        expect(
          await b.reserve(hold('b1', [{ series: 'm', bucket: 0, from: 0, limit: 10, amount: 5 }])),
        ).toEqual({ ok: false, entry: 0, used: 0, reserved: 6 });
        await c.settle('a1', [2], ledgerRow({ id: 'a1', counted: 2 }));
        expect(await b.usage([{ series: 'm', from: 0 }])).toEqual([{ used: 2, reserved: 0 }]);
      });

      it('six migrations racing on one empty schema apply each version exactly once', async () => {
        const results = await Promise.all(
          Array.from({ length: 6 }, () => withClient((c) => migratePostgres(c, schema))),
        );
        // Exactly one caller found the schema empty; every other one found it current.
        const fresh = results.filter((r) => r.from === 0);
        expect(fresh).toEqual([
          { from: 0, to: POSTGRES_LATEST_VERSION, applied: POSTGRES_MIGRATIONS.map((m) => m.name) },
        ]);
        for (const r of results.filter((r) => r.from !== 0)) {
          expect(r).toEqual({ from: POSTGRES_LATEST_VERSION, to: POSTGRES_LATEST_VERSION, applied: [] });
        }
        expect(await versions()).toEqual([1, 2]);
      });

      it('three stores with the default schema starting at once on an empty database all come up', async () => {
        const database = uniqueSchema('tw_testdb');
        await sql(`CREATE DATABASE "${database}"`);
        const url = new URL(POSTGRES_URL);
        url.pathname = `/${database}`;
        const stores: PostgresStore[] = [];
        try {
          const all = await Promise.allSettled(
            [1, 2, 3].map(() => openPostgresStore({ url: url.href, poolSize: 2 })),
          );
          for (const r of all) if (r.status === 'fulfilled') stores.push(r.value);
          expect(all.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled']);
          expect(stores.map((s) => s.schema)).toEqual(['public', 'public', 'public']);
          await stores[0]?.appendLedger(ledgerRow({ id: 'x' }));
          expect(await stores[2]?.countLedger({})).toBe(1);
          const applied = await withClient(
            async (c) => (await c.query('SELECT version FROM public.schema_migrations ORDER BY 1')).rows,
            url.href,
          );
          expect(applied).toEqual([{ version: 1 }, { version: 2 }]);
        } finally {
          for (const s of stores) await s.close();
          await sql(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
        }
      });

      it('run on a fresh schema, report what they applied, and are idempotent on reopen', async () => {
        expect(await withClient((c) => migratePostgres(c, schema))).toEqual({
          from: 0,
          to: POSTGRES_LATEST_VERSION,
          applied: POSTGRES_MIGRATIONS.map((m) => m.name),
        });
        expect(POSTGRES_LATEST_VERSION).toBe(POSTGRES_MIGRATIONS.length);
        const s = await open();
        await s.appendLedger(ledgerRow({ id: 'keep' }));
        expect(await withClient((c) => migratePostgres(c, schema))).toEqual({
          from: POSTGRES_LATEST_VERSION,
          to: POSTGRES_LATEST_VERSION,
          applied: [],
        });
        await s.close();
        const again = await open();
        expect((await again.queryLedger({ limit: 10 })).map((r) => r.id)).toEqual(['keep']);
        expect(await versions()).toEqual([1, 2]);
      });

      it('apply appended migrations in order and roll back all of them if one fails', async () => {
        await open();
        const next: PostgresMigration[] = [
          ...POSTGRES_MIGRATIONS,
          { version: 3, name: 'extra', up: ({ schema: s }) => `CREATE TABLE ${s}.extra (id text)` },
          {
            version: 4,
            name: 'broken',
            up: ({ schema: s }) => `CREATE TABLE ${s}.half (id text); SELECT no_such_function();`,
          },
        ];
        await expect(withClient((c) => migratePostgres(c, schema, next))).rejects.toThrow(/no_such_function/);
        expect(await versions()).toEqual([1, 2]);
        expect(await tables()).toEqual(LATEST_TABLES);

        expect(await withClient((c) => migratePostgres(c, schema, next.slice(0, -1)))).toEqual({
          from: 2,
          to: 3,
          applied: ['extra'],
        });
        expect(await tables()).toEqual([...LATEST_TABLES, 'extra'].sort());
        expect(await versions()).toEqual([1, 2, 3]);
      });

      it('a failed first migration leaves no schema behind', async () => {
        const broken: PostgresMigration[] = [{ version: 1, name: 'broken', up: () => 'SELECT 1/0' }];
        await expect(withClient((c) => migratePostgres(c, schema, broken))).rejects.toThrow(
          /division by zero/,
        );
        expect(await sql('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema])).toEqual([]);
      });

      it('upgrade a schema written at version 1 to the latest, its data intact', async () => {
        expect(await withClient((c) => migratePostgres(c, schema, POSTGRES_MIGRATIONS.slice(0, 1)))).toEqual({
          from: 0,
          to: 1,
          applied: [POSTGRES_MIGRATIONS[0]?.name],
        });
        // What a version-1 gateway leaves behind: counters, a ledger row and a live hold.
        await sql(
          `INSERT INTO "${schema}".counters (series, bucket, used, reserved) VALUES ('global|month', 0, 30, 40)`,
        );
        await sql(
          `INSERT INTO "${schema}".ledger SELECT * FROM jsonb_populate_record(NULL::"${schema}".ledger, $1)`,
          [
            JSON.stringify({
              id: 'old-1',
              ts: 3_600_000,
              agent: 'old-agent',
              key_id: null,
              model: 'claude-sonnet-4-5',
              stream: true,
              outcome: 'ok',
              status: 200,
              reserved: 50,
              input_tokens: 10,
              output_tokens: 20,
              cache_creation_tokens: 0,
              cache_read_tokens: 0,
              counted: 30,
              cost_usd: 0.5,
              latency_ms: 12.5,
              upstream_request_id: null,
              block_reason: null,
              usage_source: 'reported',
              metadata: { tags: { team: 'a' } },
            }),
          ],
        );
        await sql(
          `INSERT INTO "${schema}".holds (id, owner, expires_at, entries, draft) VALUES ('live', 'gw-old', $1, $2, $3)`,
          [
            Number.MAX_SAFE_INTEGER,
            JSON.stringify([['global|month', 0, 40]]),
            JSON.stringify({
              id: 'live',
              ts: 0,
              agent: 'a',
              stream: false,
              outcome: 'interrupted',
              status: 0,
            }),
          ],
        );
        expect(await versions()).toEqual([1]);

        const s = await open();
        expect(await versions()).toEqual([1, 2]);
        expect(await tables()).toEqual(LATEST_TABLES);
        expect((await s.queryLedger({ limit: 10 }))[0]).toMatchObject({
          id: 'old-1',
          stream: true,
          counted: 30,
          costUsd: 0.5,
          metadata: { tags: { team: 'a' } },
        });
        expect(await s.holdCount()).toBe(1);
        await s.settle('live', [25], ledgerRow({ id: 'live', ts: 3_600_001, counted: 25 }));
        expect(await s.usage([{ series: 'global|month', from: 0 }])).toEqual([{ used: 55, reserved: 0 }]);
        expect(await s.timeseries({ bucketMs: 3_600_000, since: 0, until: 7_200_000 })).toMatchObject([
          { bucket: 3_600_000, requests: 2, counted: 55 },
        ]);
        await s.setSetting('budgets', '[]');
        expect(await s.getSetting('budgets')).toBe('[]');
      });

      it('refuse a migration list with a gap', async () => {
        const gap = [...POSTGRES_MIGRATIONS, { version: 4, name: 'gap', up: () => 'SELECT 1' }];
        await expect(withClient((c) => migratePostgres(c, schema, gap))).rejects.toThrow(/expected 3/);
        expect(await sql('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema])).toEqual([]);
      });

      it('refuse to open a schema written by a newer version, with a clear error, leaving it as it was', async () => {
        const s = await open();
        await s.close();
        await sql(`INSERT INTO "${schema}".schema_migrations (version, name) VALUES (3, 'from-the-future')`);
        const appName = uniqueSchema('tw_app');
        const error = await open({ applicationName: appName }).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(PostgresSchemaTooNewError);
        expect(error).toBeInstanceOf(SchemaTooNewError);
        expect((error as Error).message).toContain(
          `database schema version 3 (schema "${schema}") is newer than this tokenwarden supports (2)`,
        );
        expect(await versions()).toEqual([1, 2, 3]);
        // The refused store closed its pool.
        expect(await sql('SELECT pid FROM pg_stat_activity WHERE application_name = $1', [appName])).toEqual(
          [],
        );
      });

      it('refuse a schema name that is not a plain identifier', async () => {
        for (const bad of ['', 'a-b', 'x"; DROP TABLE y; --', '1abc', 'a'.repeat(64)]) {
          await expect(openPostgresStore({ url: POSTGRES_URL, schema: bad })).rejects.toThrow(RangeError);
        }
      });
    });

    describe('replicas', () => {
      it('500 concurrent reserves over three pools, into buckets created concurrently, admit exactly what fits', async () => {
        const stores = await Promise.all([
          open({ poolSize: 5 }),
          open({ poolSize: 5 }),
          open({ poolSize: 5 }),
        ]);
        // A rolling window over 25 buckets that do not exist yet: the early reserves insert bucket rows
        // that a concurrent reserve can neither see nor lock. Nothing else is shared: the other entry
        // is a series of each replica's own.
        const results = await Promise.all(
          Array.from({ length: 500 }, (_, i) =>
            (stores[i % 3] as PostgresStore).reserve(
              hold(
                `r${i}`,
                [
                  { series: `gw-${i % 3}`, bucket: 0, from: 0, limit: null, amount: 7 },
                  { series: 'roll', bucket: 100 + (i % 25), from: 100, limit: 1000, amount: 7 },
                ],
                { owner: `gw-${i % 3}` },
              ),
            ),
          ),
        );
        const admitted = results.filter((r) => r.ok);
        expect(admitted.length).toBe(142);
        for (const r of results) if (!r.ok) expect(r.entry).toBe(1);
        const afters = admitted.map((r) => (r.ok ? r.after[1] : 0)).sort((a, b) => (a ?? 0) - (b ?? 0));
        expect(afters).toEqual(Array.from({ length: 142 }, (_, i) => 7 * (i + 1)));
        const [a] = stores;
        const [roll, ...own] = await a.usage(
          ['roll', 'gw-0', 'gw-1', 'gw-2'].map((series) => ({ series, from: 0 })),
        );
        expect(roll).toEqual({ used: 0, reserved: 994 });
        expect(own.reduce((sum, t) => sum + t.reserved, 0)).toBe(994);
        expect(await a.holdCount()).toBe(142);
      });

      it('concurrent reserves into new buckets of an empty window never overrun it', async () => {
        const stores = await Promise.all([
          open({ poolSize: 5 }),
          open({ poolSize: 5 }),
          open({ poolSize: 5 }),
        ]);
        // 50 rolling windows, each empty and hit by 10 reserves at once, every one into a bucket of its
        // own: no reserve can find a row another one is creating. Each window has room for two.
        const results = await Promise.all(
          Array.from({ length: 500 }, (_, i) => {
            // Consecutive calls share a window, so they are in flight together.
            const w = Math.floor(i / 10);
            const k = i % 10;
            return (stores[i % 3] as PostgresStore).reserve(
              hold(`e${i}`, [{ series: `w${w}`, bucket: 1000 + k, from: 1000, limit: 20, amount: 7 }]),
            );
          }),
        );
        const perWindow = Array.from({ length: 50 }, () => 0);
        results.forEach((r, i) => {
          const w = Math.floor(i / 10);
          if (r.ok) perWindow[w] = (perWindow[w] ?? 0) + 1;
        });
        expect(perWindow).toEqual(Array.from({ length: 50 }, () => 2));
        const [a] = stores;
        const totals = await a.usage(Array.from({ length: 50 }, (_, w) => ({ series: `w${w}`, from: 0 })));
        expect(totals).toEqual(Array.from({ length: 50 }, () => ({ used: 0, reserved: 14 })));
      });

      it('reserves and settles of multi-entry holds in opposite entry orders never deadlock', async () => {
        const stores = await Promise.all([
          open({ poolSize: 6 }),
          open({ poolSize: 6 }),
          open({ poolSize: 6 }),
        ]);
        const series = ['a', 'b', 'c'];
        const run = async (i: number): Promise<void> => {
          const store = stores[i % 3] as PostgresStore;
          // Rotated and reversed orders of the same three series and two buckets.
          const order = i % 2 === 0 ? series : [...series].reverse();
          const entries = order.map((name, k) => ({
            series: name,
            bucket: (i + k) % 2,
            from: 0,
            limit: null,
            amount: 5,
          }));
          const r = await store.reserve(hold(`d${i}`, entries));
          expect(r.ok).toBe(true);
          await store.settle(`d${i}`, [1, 2, 3], ledgerRow({ id: `d${i}`, counted: 6 }));
        };
        await Promise.all(Array.from({ length: 300 }, (_, i) => run(i)));
        const [a] = stores;
        expect(await a.holdCount()).toBe(0);
        const totals = await a.usage(series.map((name) => ({ series: name, from: 0 })));
        // Each series gets charge 1, 2 or 3 depending on its position in the hold.
        expect(totals.reduce((sum, t) => sum + t.used, 0)).toBe(300 * 6);
        expect(totals.every((t) => t.reserved === 0)).toBe(true);
        expect(await a.countLedger({})).toBe(300);
      });

      it('a settle racing reclaims on other replicas never double-charges', async () => {
        const [settler, r1, r2] = (await Promise.all([
          open({ poolSize: 6 }),
          open({ poolSize: 3 }),
          open({ poolSize: 3 }),
        ])) as [PostgresStore, PostgresStore, PostgresStore];
        const n = 200;
        // Hold i expires at i; the reclaimers walk the clock forward while the holds are settled in
        // the same order, so reclaims and settlements of the same holds overlap.
        for (let i = 0; i < n; i++) {
          const r = await settler.reserve(
            hold(
              `x${i}`,
              [
                { series: 'm', bucket: 0, from: 0, limit: null, amount: 10 },
                { series: 'd', bucket: i % 3, from: 0, limit: null, amount: 10 },
              ],
              {
                expiresAt: i,
                draft: ledgerRow({
                  id: `x${i}`,
                  outcome: 'interrupted',
                  usageSource: 'estimated',
                  counted: 20,
                }),
              },
            ),
          );
          expect(r.ok).toBe(true);
        }
        let clock = 0;
        let reclaimed = 0;
        const reclaimLoop = async (store: PostgresStore): Promise<void> => {
          while (clock < n) {
            const now = clock++;
            const got = await store.reclaim({ now });
            reclaimed += got;
          }
        };
        await Promise.all([
          ...Array.from({ length: n }, (_, i) =>
            settler.settle(`x${i}`, [3, 4], ledgerRow({ id: `x${i}`, outcome: 'ok', counted: 7 })),
          ),
          reclaimLoop(r1),
          reclaimLoop(r2),
        ]);
        reclaimed += await r1.reclaim({ now: n });
        const rows = await settler.queryLedger({ limit: 1000 });
        expect(rows.length).toBe(n);
        const interrupted = rows.filter((r) => r.outcome === 'interrupted').length;
        const settled = rows.filter((r) => r.outcome === 'ok').length;
        expect(interrupted + settled).toBe(n);
        // Each hold was charged exactly once: in full by one reclaim, or by its settlement.
        expect(reclaimed).toBe(interrupted);
        expect(
          await settler.usage([
            { series: 'm', from: 0 },
            { series: 'd', from: 0 },
          ]),
        ).toEqual([
          { used: 10 * interrupted + 3 * settled, reserved: 0 },
          { used: 10 * interrupted + 4 * settled, reserved: 0 },
        ]);
        expect(await settler.holdCount()).toBe(0);
      });

      it("reclaims a closed replica's holds from another (keepOwner) and keeps them across reopen", async () => {
        const old = await open();
        expect(
          (
            await old.reserve(
              hold('left', [{ series: 'm', bucket: 0, from: 0, limit: 100, amount: 40 }], {
                owner: 'gw-old',
              }),
            )
          ).ok,
        ).toBe(true);
        expect(
          (
            await old.reserve(
              hold('mine', [{ series: 'm', bucket: 0, from: 0, limit: 100, amount: 5 }], { owner: 'gw-new' }),
            )
          ).ok,
        ).toBe(true);
        await old.close();
        const next = await open();
        expect(await next.holdCount()).toBe(2);
        expect(await next.reclaim({ now: Date.now(), keepOwner: 'gw-new' })).toBe(1);
        expect(await next.usage([{ series: 'm', from: 0 }])).toEqual([{ used: 40, reserved: 5 }]);
        expect((await next.queryLedger({ limit: 10 })).map((r) => [r.id, r.outcome])).toEqual([
          ['left', 'interrupted'],
        ]);
      });
    });

    describe('failures', () => {
      it('rejects opening when the server cannot be reached, without hanging', async () => {
        const started = Date.now();
        await expect(
          openPostgresStore({ url: 'postgres://postgres@127.0.0.1:1/test', schema, connectTimeoutMs: 2000 }),
        ).rejects.toThrow(/ECONNREFUSED/);
        expect(Date.now() - started).toBeLessThan(5000);
      });

      it('a call whose connection dies rejects; idle connections that die are reported; the store goes on', async () => {
        const appName = uniqueSchema('tw_app');
        const errors: Error[] = [];
        const store = await open({ applicationName: appName, onError: (e) => errors.push(e) });
        await store.appendLedger(ledgerRow({ id: 'before' }));
        const backends = () =>
          sql<{ pid: number; waiting: boolean }>(
            "SELECT pid, wait_event_type = 'Lock' AS waiting FROM pg_stat_activity WHERE application_name = $1",
            [appName],
          );

        // Make a call wait on a lock, then end its backend.
        await withClient(async (blocker) => {
          await blocker.query('BEGIN');
          await blocker.query(`LOCK TABLE "${schema}".holds IN ACCESS EXCLUSIVE MODE`);
          // The handler is attached now: the rejection may arrive before the terminate call returns.
          const pending = store.holdCount().then(
            () => null,
            (err: unknown) => err,
          );
          let waiting: { pid: number }[] = [];
          for (let i = 0; i < 100 && waiting.length === 0; i++) {
            await new Promise((r) => setTimeout(r, 50));
            waiting = (await backends()).filter((b) => b.waiting);
          }
          expect(waiting.length).toBe(1);
          await blocker.query('SELECT pg_terminate_backend($1)', [waiting[0]?.pid]);
          expect(String(await pending)).toMatch(/terminat/);
          await blocker.query('ROLLBACK');
        });

        // Open a few connections, then end every one of them while idle: the pool reports each and
        // drops it.
        await Promise.all([store.holdCount(), store.holdCount(), store.holdCount()]);
        const idle = await backends();
        expect(idle.length).toBeGreaterThan(0);
        await sql('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [
          appName,
        ]);
        for (let i = 0; i < 100 && errors.length < idle.length; i++)
          await new Promise((r) => setTimeout(r, 20));
        expect(errors.length).toBe(idle.length);
        expect(errors[0]?.message).toMatch(/terminat/);

        // New connections serve the next calls.
        expect(await store.holdCount()).toBe(0);
        await store.appendLedger(ledgerRow({ id: 'after' }));
        expect(await store.countLedger({})).toBe(2);
      });

      it('rejects every call after close', async () => {
        const store = await open();
        await store.close();
        await expect(store.holdCount()).rejects.toThrow();
        await expect(store.reserve(hold('h', []))).rejects.toThrow();
        await store.close();
      });

      it('stores NUL and lone surrogates, which PostgreSQL cannot hold, as U+FFFD instead of failing', async () => {
        const store = await open();
        const odd = 'a\u0000b\ud800c\udc00d\ud83d\ude00';
        const clean = 'a\ufffdb\ufffdc\ufffdd\ud83d\ude00';
        await store.appendLedger(ledgerRow({ id: 'n1', agent: odd, model: odd, metadata: { [odd]: [odd] } }));
        const req = hold('n2', [{ series: 'm', bucket: 0, from: 0, limit: null, amount: 1 }], {
          expiresAt: 0,
        });
        req.draft = ledgerRow({ id: 'n2', outcome: 'interrupted', blockReason: odd });
        expect((await store.reserve(req)).ok).toBe(true);
        expect(await store.reclaim({ now: 0 })).toBe(1);
        const rows = await store.queryLedger({ limit: 10 });
        expect(rows.find((r) => r.id === 'n1')).toMatchObject({
          agent: clean,
          model: clean,
          metadata: { [clean]: [clean] },
        });
        expect(rows.find((r) => r.id === 'n2')?.blockReason).toBe(clean);
      });

      it('refuses amounts and charges that are not integers, changing nothing', async () => {
        const store = await open();
        await expect(
          store.reserve(hold('f', [{ series: 'm', bucket: 0, from: 0, limit: 100, amount: 1.5 }])),
        ).rejects.toThrow(TypeError);
        expect(await store.holdCount()).toBe(0);
        expect(
          (await store.reserve(hold('g', [{ series: 'm', bucket: 0, from: 0, limit: 100, amount: 5 }]))).ok,
        ).toBe(true);
        await expect(store.settle('g', [2.5], ledgerRow({ id: 'g' }))).rejects.toThrow(TypeError);
        await expect(store.settle('g', [Number.NaN], ledgerRow({ id: 'g' }))).rejects.toThrow(TypeError);
        expect(await store.holdCount()).toBe(1);
        expect(await store.usage([{ series: 'm', from: 0 }])).toEqual([{ used: 0, reserved: 5 }]);
      });
    });

    describe('schema', () => {
      it('keeps stores on different schemas apart', async () => {
        const mine = await open();
        const other = await openTestStore();
        try {
          expect(
            (await mine.reserve(hold('h', [{ series: 'm', bucket: 0, from: 0, limit: 10, amount: 10 }]))).ok,
          ).toBe(true);
          expect(
            await other.store.reserve(
              hold('h', [{ series: 'm', bucket: 0, from: 0, limit: 10, amount: 10 }]),
            ),
          ).toEqual({
            ok: true,
            after: [10],
          });
          expect(await other.store.holdCount()).toBe(1);
          await other.store.settle('h', [1], ledgerRow({ id: 'h' }));
          expect(await mine.usage([{ series: 'm', from: 0 }])).toEqual([{ used: 0, reserved: 10 }]);
        } finally {
          await other.cleanup();
        }
      });

      it('stores ledger fields as columns SQL can aggregate, with an index per filter', async () => {
        const s = await open();
        await s.appendLedger(
          ledgerRow({ id: 'q1', agent: 'x', counted: 5, stream: true, metadata: { tags: { team: 'a' } } }),
        );
        await s.appendLedger(
          ledgerRow({ id: 'q2', agent: 'x', counted: 7, metadata: { tags: { team: 'b' } } }),
        );
        expect(
          await sql(
            `SELECT SUM(counted)::int AS counted, COUNT(*) FILTER (WHERE stream)::int AS streams, ` +
              `string_agg(metadata #>> '{tags,team}', ',' ORDER BY id) AS teams FROM "${schema}".ledger WHERE agent = 'x'`,
          ),
        ).toEqual([{ counted: 12, streams: 1, teams: 'a,b' }]);
        const indexes = await sql<{ indexdef: string }>(
          'SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = $2 ORDER BY indexname',
          [schema, 'ledger'],
        );
        const defs = indexes.map((i) => i.indexdef.replace(/^.* USING btree /, ''));
        expect(defs).toEqual(['(agent, ts, id)', '(model, ts, id)', '(outcome, ts, id)', '(id)', '(ts, id)']);
      });
    });
  });
});
