/**
 * Group commit in the SQLite store: writes issued in one event-loop turn commit together, in arrival
 * order, each failing alone, and each promise settles only after its batch has committed.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openSqliteStore, type SqliteStore, type SqliteStoreOptions } from '../../src/store/index.js';
import type { ReserveRequest } from '../../src/store/ports.js';
import { createGroupCommit } from '../../src/store/sqlite/group-commit.js';
import { ledgerRow } from './store-contract.js';

const hold = (holdId: string, amount: number, limit: number | null = 100): ReserveRequest => ({
  holdId,
  entries: [{ series: 'm', bucket: 0, from: 0, limit, amount }],
  owner: 'gw-1',
  expiresAt: Number.MAX_SAFE_INTEGER,
  draft: ledgerRow({ id: holdId, outcome: 'interrupted', usageSource: 'estimated', counted: amount }),
});

describe('SQLite store group commit', () => {
  let dir: string;
  let path: string;
  let store: SqliteStore;
  /** A second connection to the same file: sees only what has been committed. */
  let other: Database.Database;
  const opened: SqliteStore[] = [];
  const open = (opts: Partial<SqliteStoreOptions> = {}): SqliteStore => {
    const s = openSqliteStore({ path, ...opts });
    opened.push(s);
    return s;
  };
  const committedRows = (): string[] =>
    (other.prepare('SELECT id FROM ledger ORDER BY id').pluck().all() as string[]).sort();
  const committedUsage = () =>
    other
      .prepare(
        "SELECT COALESCE(SUM(used), 0) AS used, COALESCE(SUM(reserved), 0) AS reserved FROM counters WHERE series = 'm'",
      )
      .get();

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tokenwarden-sqlite-batch-'));
    path = join(dir, 'batch.db');
    store = open();
    other = new Database(path);
  });
  afterEach(async () => {
    other.close();
    for (const s of opened.splice(0)) await s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('applies the writes of one turn in arrival order: a reserve sees the reserves before it', async () => {
    const results = await Promise.all([
      store.reserve(hold('h1', 60)),
      store.reserve(hold('h2', 40)),
      // The window is full now: refused, seeing both holds above.
      store.reserve(hold('h3', 1)),
      store.settle('h1', [10], ledgerRow({ id: 'h1', counted: 10 })),
      // h1 gave back 50 in the settle just before.
      store.reserve(hold('h4', 50)),
      store.reserve(hold('h5', 1)),
    ]);
    expect(results).toEqual([
      { ok: true, after: [60] },
      { ok: true, after: [100] },
      { ok: false, entry: 0, used: 0, reserved: 100 },
      undefined,
      { ok: true, after: [100] },
      { ok: false, entry: 0, used: 10, reserved: 90 },
    ]);
    expect(await store.usage([{ series: 'm', from: 0 }])).toEqual([{ used: 10, reserved: 90 }]);
    expect(await store.holdCount()).toBe(2);
  });

  it('never admits over the limit across a burst of one turn, even past the batch size', async () => {
    const small = open({ path: join(dir, 'small.db'), maxBatch: 7 });
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => small.reserve(hold(`c${i}`, 3))));
    // floor(100 / 3) = 33, and they are the first 33 to arrive.
    expect(results.map((r) => r.ok)).toEqual(Array.from({ length: 50 }, (_, i) => i < 33));
    expect(await small.usage([{ series: 'm', from: 0 }])).toEqual([{ used: 0, reserved: 99 }]);
  });

  it('rejects a bad settle alone; the writes around it in the same batch commit', async () => {
    expect((await store.reserve(hold('a', 30))).ok).toBe(true);
    expect((await store.reserve(hold('b', 30))).ok).toBe(true);

    let seenWhenRejected: string[] = [];
    const outcomes = await Promise.allSettled([
      store.settle('a', [20], ledgerRow({ id: 'a', counted: 20 })),
      store.reserve(hold('c', 10)),
      // Two charges for a one-entry hold: rejected, the hold and the counters left as they were.
      store.settle('b', [5, 5], ledgerRow({ id: 'b' })).catch((err: unknown) => {
        // By the time it rejects, the batch it was part of has committed, the write after it included.
        seenWhenRejected = committedRows();
        throw err;
      }),
      store.appendLedger(ledgerRow({ id: 'x', outcome: 'blocked', status: 429 })),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled']);
    expect(String((outcomes[2] as PromiseRejectedResult).reason)).toMatch(/2 charges for a hold of 1/);
    expect(seenWhenRejected).toEqual(['a', 'x']);
    expect(await store.usage([{ series: 'm', from: 0 }])).toEqual([{ used: 20, reserved: 40 }]);
    expect(await store.holdCount()).toBe(2);
    // b is still held and settles normally.
    await store.settle('b', [7], ledgerRow({ id: 'b', counted: 7 }));
    expect(await store.usage([{ series: 'm', from: 0 }])).toEqual([{ used: 27, reserved: 10 }]);
    expect(committedRows()).toEqual(['a', 'b', 'x']);
  });

  it('rejects a duplicate hold alone, leaving the counters it touched before failing untouched', async () => {
    const outcomes = await Promise.allSettled([
      store.reserve(hold('d', 10)),
      store.reserve(hold('d', 20)),
      store.reserve(hold('e', 30)),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect((outcomes[2] as PromiseFulfilledResult<unknown>).value).toEqual({ ok: true, after: [40] });
    expect(committedUsage()).toEqual({ used: 0, reserved: 40 });
  });

  it('resolves a write only once it is committed: another connection sees it at once', async () => {
    const seen: Record<string, unknown> = {};
    await Promise.all([
      store.reserve(hold('h1', 25)).then(() => {
        seen.reserve = committedUsage();
      }),
      store.settle('h1', [15], ledgerRow({ id: 'h1', counted: 15 })).then(() => {
        seen.settle = { usage: committedUsage(), rows: committedRows() };
      }),
      store.appendLedger(ledgerRow({ id: 'z' })).then(() => {
        seen.append = committedRows();
      }),
    ]);
    // All three were committed together, before any of them resolved.
    expect(seen).toEqual({
      reserve: { used: 15, reserved: 0 },
      settle: { usage: { used: 15, reserved: 0 }, rows: ['h1', 'z'] },
      append: ['h1', 'z'],
    });
  });

  it('waits for the end of the turn, and commits at once when the queue reaches the batch size', async () => {
    const small = open({ path: join(dir, 'small.db'), maxBatch: 2 });
    const watch = new Database(join(dir, 'small.db'));
    try {
      const count = () => watch.prepare('SELECT COUNT(*) FROM ledger').pluck().get();
      const first = small.appendLedger(ledgerRow({ id: 'r1' }));
      expect(count()).toBe(0);
      const second = small.appendLedger(ledgerRow({ id: 'r2' }));
      // The second filled the batch: both committed before appendLedger returned.
      expect(count()).toBe(2);
      const third = small.appendLedger(ledgerRow({ id: 'r3' }));
      expect(count()).toBe(2);
      await Promise.all([first, second, third]);
      expect(count()).toBe(3);
    } finally {
      watch.close();
    }
  });

  it('rejects every write of a batch that cannot take the write lock, and writes none of them', async () => {
    const impatient = open({ busyTimeoutMs: 50 });
    other.prepare('BEGIN IMMEDIATE').run();
    let outcomes: PromiseSettledResult<unknown>[];
    try {
      outcomes = await Promise.allSettled([
        impatient.reserve(hold('h1', 10)),
        impatient.appendLedger(ledgerRow({ id: 'r1' })),
      ]);
    } finally {
      other.prepare('ROLLBACK').run();
    }
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'rejected']);
    expect(outcomes.map((o) => (o as PromiseRejectedResult).reason?.code)).toEqual([
      'SQLITE_BUSY',
      'SQLITE_BUSY',
    ]);
    expect(committedRows()).toEqual([]);
    expect(committedUsage()).toEqual({ used: 0, reserved: 0 });
    // The store is fine once the lock is free.
    expect(await impatient.reserve(hold('h1', 10))).toEqual({ ok: true, after: [10] });
  });

  it('keeps arrival order with control-state writes, which do not queue', async () => {
    expect((await store.reserve(hold('h1', 50))).ok).toBe(true);
    const settled = store.settle('h1', [40], ledgerRow({ id: 'h1', counted: 40 }));
    // Issued after the settle: it must find the settle's 40 used, and clear it.
    expect(await store.resetUsage(['m'])).toBe(40);
    await settled;
    expect(await store.usage([{ series: 'm', from: 0 }])).toEqual([{ used: 0, reserved: 0 }]);
  });

  it('close() commits the queued writes first; writes after it reject', async () => {
    const pending = store.appendLedger(ledgerRow({ id: 'last' }));
    await store.close();
    await expect(pending).resolves.toBeUndefined();
    expect(committedRows()).toEqual(['last']);
    await expect(store.appendLedger(ledgerRow({ id: 'late' }))).rejects.toThrow(/not open/);
    await expect(store.reserve(hold('late', 1))).rejects.toThrow(/not open/);
  });

  it('stores a compact draft and reclaims it as the full row; older object drafts reclaim too', async () => {
    const req = hold('new', 10);
    req.draft = ledgerRow({
      id: 'new',
      outcome: 'interrupted',
      keyId: 'key_1',
      stream: true,
      costUsd: 0.5,
      latencyMs: null,
      metadata: { tags: { team: 'a' }, list: [1, null] },
    });
    expect((await store.reserve(req)).ok).toBe(true);
    // A hold written by an earlier version, its draft a row object.
    const old = ledgerRow({ id: 'old', outcome: 'interrupted', agent: 'old-agent', metadata: { v: 1 } });
    other
      .prepare('INSERT INTO holds (id, owner, expires_at, entries, draft) VALUES (?, ?, ?, ?, ?)')
      .run('old', 'gw-0', 0, JSON.stringify([['m', 0, 5]]), JSON.stringify(old));
    other.prepare("UPDATE counters SET reserved = reserved + 5 WHERE series = 'm'").run();

    expect(await store.reclaim({ now: 1, keepOwner: 'gw-2' })).toBe(2);
    const rows = await store.queryLedger({ limit: 10 });
    expect(rows.find((r) => r.id === 'new')).toEqual(req.draft);
    expect(rows.find((r) => r.id === 'old')).toEqual(old);
    expect(await store.usage([{ series: 'm', from: 0 }])).toEqual([{ used: 15, reserved: 0 }]);
  });

  it('records the draft as it was when reserve was called', async () => {
    const req = hold('h1', 10);
    const reserved = store.reserve(req);
    req.draft.metadata.changedLater = true;
    expect((await reserved).ok).toBe(true);
    await store.reclaim({ now: 0, keepOwner: 'someone-else' });
    expect((await store.queryLedger({ limit: 1 }))[0]?.metadata).toEqual({});
  });
});

describe('createGroupCommit', () => {
  let db: Database.Database;
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tokenwarden-group-commit-'));
    db = new Database(join(dir, 'gc.db'));
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE t (v INTEGER NOT NULL)');
  });
  afterEach(() => {
    if (db.open) db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('runs the operations of one turn in one transaction, in order', async () => {
    const watch = new Database(join(dir, 'gc.db'));
    try {
      const gc = createGroupCommit(db);
      const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
      const count = db.prepare('SELECT COUNT(*) FROM t').pluck();
      const committed = watch.prepare('SELECT COUNT(*) FROM t').pluck();
      const op = (v: number) => () => {
        insert.run(v);
        // Inside the batch: this connection sees the ops before, the other connection none of them.
        return { inTransaction: db.inTransaction, own: count.get(), committed: committed.get() };
      };
      const results = await Promise.all([gc.run(op(1)), gc.run(op(2)), gc.run(op(3))]);
      expect(results).toEqual([
        { inTransaction: true, own: 1, committed: 0 },
        { inTransaction: true, own: 2, committed: 0 },
        { inTransaction: true, own: 3, committed: 0 },
      ]);
      expect(committed.get()).toBe(3);
      expect(db.prepare('SELECT v FROM t ORDER BY rowid').pluck().all()).toEqual([1, 2, 3]);
    } finally {
      watch.close();
    }
  });

  it('rolls back only the operation that throws, and runs each operation again only if one does', async () => {
    const gc = createGroupCommit(db);
    const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
    const runs = [0, 0, 0];
    const outcomes = await Promise.allSettled([
      gc.run(() => {
        runs[0] = (runs[0] ?? 0) + 1;
        insert.run(1);
      }),
      gc.run(() => {
        runs[1] = (runs[1] ?? 0) + 1;
        insert.run(2);
        throw new Error('bad op');
      }),
      gc.run(() => {
        runs[2] = (runs[2] ?? 0) + 1;
        insert.run(3);
        return 'third';
      }),
    ]);
    expect(outcomes).toEqual([
      { status: 'fulfilled', value: undefined },
      { status: 'rejected', reason: new Error('bad op') },
      { status: 'fulfilled', value: 'third' },
    ]);
    expect(db.prepare('SELECT v FROM t ORDER BY rowid').pluck().all()).toEqual([1, 3]);
    // The first run stopped at the bad op and was rolled back; the second ran all three in savepoints.
    expect(runs).toEqual([2, 2, 1]);
    expect(db.inTransaction).toBe(false);

    // A batch where nothing throws runs each op once.
    let once = 0;
    await Promise.all([gc.run(() => once++), gc.run(() => once++)]);
    expect(once).toBe(2);
  });

  it('rejects a lone failing operation without running it again', async () => {
    const gc = createGroupCommit(db);
    let runs = 0;
    await expect(
      gc.run(() => {
        runs++;
        db.prepare('INSERT INTO t (v) VALUES (NULL)').run();
      }),
    ).rejects.toThrow(/NOT NULL/);
    expect(runs).toBe(1);
    expect(db.prepare('SELECT COUNT(*) FROM t').pluck().get()).toBe(0);
    expect(db.inTransaction).toBe(false);
  });

  it('rejects every operation of a batch whose commit fails, and keeps none of them', async () => {
    // A deferred foreign key is checked at COMMIT: an orphan row makes the commit itself fail.
    db.pragma('foreign_keys = ON');
    db.exec(
      'CREATE TABLE parent (id INTEGER PRIMARY KEY); ' +
        'CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)',
    );
    const gc = createGroupCommit(db);
    const outcomes = await Promise.allSettled([
      gc.run(() => db.prepare('INSERT INTO t (v) VALUES (1)').run().changes),
      gc.run(() => db.prepare('INSERT INTO child (p) VALUES (42)').run().changes),
      gc.run(() => db.prepare('INSERT INTO t (v) VALUES (2)').run().changes),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'rejected', 'rejected']);
    expect(outcomes.map((o) => (o as PromiseRejectedResult).reason?.code)).toEqual([
      'SQLITE_CONSTRAINT_FOREIGNKEY',
      'SQLITE_CONSTRAINT_FOREIGNKEY',
      'SQLITE_CONSTRAINT_FOREIGNKEY',
    ]);
    expect(db.inTransaction).toBe(false);
    expect(db.prepare('SELECT COUNT(*) FROM t').pluck().get()).toBe(0);
    await expect(gc.run(() => db.prepare('INSERT INTO t (v) VALUES (3)').run().changes)).resolves.toBe(1);
  });

  it('rejects the whole batch when it cannot begin, and stays usable', async () => {
    const impatient = new Database(join(dir, 'gc.db'), { timeout: 20 });
    const locker = new Database(join(dir, 'gc.db'));
    try {
      const gc = createGroupCommit(impatient);
      locker.prepare('BEGIN IMMEDIATE').run();
      const outcomes = await Promise.allSettled([gc.run(() => 1), gc.run(() => 2)]);
      locker.prepare('ROLLBACK').run();
      expect(outcomes.map((o) => (o as PromiseRejectedResult).reason?.code)).toEqual([
        'SQLITE_BUSY',
        'SQLITE_BUSY',
      ]);
      await expect(gc.run(() => 3)).resolves.toBe(3);
    } finally {
      impatient.close();
      locker.close();
    }
  });

  it('waits for a transaction held open on the connection across awaits, neither failing nor joining it', async () => {
    const gc = createGroupCommit(db);
    const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
    db.prepare('BEGIN IMMEDIATE').run();
    insert.run(1);
    let done = false;
    const queued = gc
      .run(() => insert.run(2).changes)
      .then((n) => {
        done = true;
        return n;
      });
    // flush() inside the transaction leaves the queue for later, as the turn does.
    gc.flush();
    await new Promise((r) => setTimeout(r, 20));
    expect(done).toBe(false);
    expect(gc.pending).toBe(1);
    db.prepare('ROLLBACK').run();
    await expect(queued).resolves.toBe(1);
    // The rolled-back transaction took only its own row with it.
    expect(db.prepare('SELECT v FROM t').pluck().all()).toEqual([2]);
  });
});
