/**
 * The embedded Store: one SQLite file (better-sqlite3, WAL). Control state lives in control-store.ts.
 * Statements are prepared once, when the store opens.
 *
 * Writes (reserve, settle, appendLedger, reclaim) go through a group commit (group-commit.ts): those
 * queued in one event-loop turn run in arrival order in one transaction begun IMMEDIATE, one that
 * throws rolled back alone, and their promises resolve once it has committed. So the window check and
 * the hold stay atomic even against other processes on the same file, a reserve sees every reserve
 * queued before it, and a resolved write is durable; but a busy gateway pays one lock and one commit
 * per turn rather than two per request.
 *
 * Reads do not wait for the queue: they run synchronously outside any batch (a batch begins and
 * commits within one synchronous call), so they see exactly the committed state, which includes every
 * write whose promise has resolved (read-your-writes). Flushing the queue before each read would cut
 * the batches of a busy gateway short (key lookups and headroom reads happen per request) for nothing a
 * caller can rely on: a write not yet awaited has no promised effect. Control-state writes, which are
 * rare and not queued, do flush the queue first, so every write applies in arrival order.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { checkCharges, windowAfter } from '../hold-rules.js';
import type {
  GroupTotal,
  HoldEntry,
  LedgerQuery,
  LedgerRow,
  Outcome,
  ReserveRequest,
  ReserveResult,
  Store,
  UsageQuery,
  UsageSource,
  UsageTotals,
} from '../ports.js';
import { retryBusy } from './busy.js';
import { startCheckpointer } from './checkpointer.js';
import { buildControlStore } from './control-store.js';
import { createGroupCommit } from './group-commit.js';
import { migrate } from './migrations.js';

export interface SqliteStoreOptions {
  /** Database file; its directory is created if missing. `:memory:` for a private in-memory database. */
  path: string;
  /** How long to wait for another connection's write lock before failing, ms (default 5000). */
  busyTimeoutMs?: number;
  /** Most writes committed together (default 256); 1 commits each write on its own. */
  maxBatch?: number;
  /**
   * Checkpoint the WAL from a worker thread instead of inside commits (the gateway sets it; short
   * lived users such as the CLI do not need it).
   */
  backgroundCheckpoints?: boolean;
}

export type SqliteStore = Store & { readonly db: Database.Database };

/** Stored form of a hold's entries: [series, bucket, amount] per entry, in entry order. */
type StoredEntry = [series: string, bucket: number, amount: number];

/**
 * Stored form of a hold's draft ledger row: its fields in LEDGER_COLUMNS order. Every reserve writes
 * one and almost none is ever read (only a reclaim reads it), so it is kept small: half the JSON of
 * the row object, and quicker to write. Drafts written as row objects (before this form) still read.
 */
type StoredDraft = [
  id: string,
  ts: number,
  agent: string,
  keyId: string | null,
  model: string | null,
  stream: boolean,
  outcome: Outcome,
  status: number,
  reserved: number,
  inputTokens: number,
  outputTokens: number,
  cacheCreationTokens: number,
  cacheReadTokens: number,
  counted: number,
  costUsd: number | null,
  latencyMs: number | null,
  upstreamRequestId: string | null,
  blockReason: string | null,
  usageSource: UsageSource,
  metadata: Record<string, unknown>,
];

interface LedgerRecord {
  id: string;
  ts: number;
  agent: string;
  key_id: string | null;
  model: string | null;
  stream: number;
  outcome: string;
  status: number;
  reserved: number;
  input_tokens: number;
  output_tokens: number;
  cache_creation_tokens: number;
  cache_read_tokens: number;
  counted: number;
  cost_usd: number | null;
  latency_ms: number | null;
  upstream_request_id: string | null;
  block_reason: string | null;
  usage_source: string;
  metadata: string;
}

const LEDGER_COLUMNS =
  'id, ts, agent, key_id, model, stream, outcome, status, reserved, input_tokens, output_tokens, ' +
  'cache_creation_tokens, cache_read_tokens, counted, cost_usd, latency_ms, upstream_request_id, ' +
  'block_reason, usage_source, metadata';

/**
 * Opens (creating and migrating if needed) the SQLite store at `opts.path`. Throws if the file cannot
 * be opened or its schema is newer than this build (SchemaTooNewError).
 */
export function openSqliteStore(opts: SqliteStoreOptions): SqliteStore {
  if (opts.path !== ':memory:' && opts.path !== '') mkdirSync(dirname(opts.path), { recursive: true });
  const busyTimeoutMs = opts.busyTimeoutMs ?? 5000;
  // `timeout` is the busy timeout: the locks SQLite may wait for (beginning a transaction) wait that
  // long for another process. The steps below that SQLite answers BUSY at once, without waiting, are
  // retried by retryBusy for as long (busy.ts says which and why).
  const db = new Database(opts.path, { timeout: busyTimeoutMs });
  const retry = <T>(step: string, fn: () => T): T =>
    retryBusy(fn, { path: opts.path, step, boundMs: busyTimeoutMs });
  try {
    // On a new file this reads the header and then rewrites it: a read lock upgraded to a write lock,
    // which fails at once while another process does the same.
    retry('switching it to WAL', () => db.pragma('journal_mode = WAL'));
    // In WAL mode NORMAL loses no committed transaction when the process dies (kill -9); only an OS
    // crash or power loss can drop the last few.
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    // BEGIN IMMEDIATE waits for the lock itself; the retry turns a wait past the timeout into a
    // clear error, and covers the schema read a new connection may have to repeat.
    retry('migrating its schema', () => migrate(db));
    const store = buildStore(db, opts.maxBatch);
    if (!opts.backgroundCheckpoints || opts.path === ':memory:' || opts.path === '') return store;
    const checkpointer = startCheckpointer(db, opts.path);
    const close = store.close;
    return Object.assign(store, {
      async close() {
        await checkpointer.stop();
        await close();
      },
    });
  } catch (err) {
    db.close();
    throw err;
  }
}

function buildStore(db: Database.Database, maxBatch: number | undefined): SqliteStore {
  const windowStmt = db.prepare<[string, number], UsageTotals>(
    'SELECT COALESCE(SUM(used), 0) AS used, COALESCE(SUM(reserved), 0) AS reserved ' +
      'FROM counters WHERE series = ? AND bucket >= ?',
  );
  const addStmt = db.prepare<[string, number, number, number]>(
    'INSERT INTO counters (series, bucket, used, reserved) VALUES (?, ?, ?, ?) ' +
      'ON CONFLICT (series, bucket) DO UPDATE SET ' +
      'used = used + excluded.used, reserved = reserved + excluded.reserved',
  );
  const insertHoldStmt = db.prepare<[string, string, number, string, string]>(
    'INSERT INTO holds (id, owner, expires_at, entries, draft) VALUES (?, ?, ?, ?, ?)',
  );
  const takeHoldStmt = db
    .prepare<[string], string>('DELETE FROM holds WHERE id = ? RETURNING entries')
    .pluck();
  const takeExpiredStmt = db.prepare<[number], { entries: string; draft: string }>(
    'DELETE FROM holds WHERE expires_at <= ? RETURNING entries, draft',
  );
  const takeExpiredOrForeignStmt = db.prepare<[number, string], { entries: string; draft: string }>(
    'DELETE FROM holds WHERE expires_at <= ? OR owner <> ? RETURNING entries, draft',
  );
  const holdCountStmt = db.prepare<[], number>('SELECT COUNT(*) FROM holds').pluck();
  const renewStmt = db.prepare<[number, string]>(
    'UPDATE holds SET expires_at = max(expires_at, ?) WHERE id = ?',
  );
  const insertLedgerStmt = db.prepare<unknown[]>(
    `INSERT INTO ledger (${LEDGER_COLUMNS}) VALUES (${LEDGER_COLUMNS.split(',')
      .map(() => '?')
      .join(', ')}) ON CONFLICT (id) DO NOTHING`,
  );
  const groupStmts = {
    agent: db.prepare<[number, number], GroupTotal>(
      'SELECT agent AS key, COUNT(*) AS requests, COALESCE(SUM(counted), 0) AS counted FROM ledger ' +
        'WHERE ts >= ? AND ts < ? GROUP BY agent ORDER BY counted DESC, key ASC',
    ),
    model: db.prepare<[number, number], GroupTotal>(
      'SELECT model AS key, COUNT(*) AS requests, COALESCE(SUM(counted), 0) AS counted FROM ledger ' +
        'WHERE ts >= ? AND ts < ? AND model IS NOT NULL GROUP BY model ORDER BY counted DESC, key ASC',
    ),
  };
  // Group totals from a start time on, kept between calls and topped up with the rows added since
  // (by rowid; the ledger is append-only): the summary asks for the month's totals every few
  // seconds, and re-reading a month of rows each time costs tens of milliseconds.
  const maxRowidStmt = db.prepare<[], number>('SELECT COALESCE(MAX(rowid), 0) FROM ledger').pluck();
  const groupFromStmts = {
    agent: db.prepare<[number, number], GroupTotal & { maxTs: number }>(
      'SELECT agent AS key, COUNT(*) AS requests, COALESCE(SUM(counted), 0) AS counted, MAX(ts) AS maxTs ' +
        'FROM ledger WHERE ts >= ? AND rowid <= ? GROUP BY agent',
    ),
    model: db.prepare<[number, number], GroupTotal & { maxTs: number }>(
      'SELECT model AS key, COUNT(*) AS requests, COALESCE(SUM(counted), 0) AS counted, MAX(ts) AS maxTs ' +
        'FROM ledger WHERE ts >= ? AND rowid <= ? AND model IS NOT NULL GROUP BY model',
    ),
  };
  const groupAddedStmts = {
    agent: db.prepare<[number, number, number], { key: string | null; ts: number; counted: number }>(
      'SELECT agent AS key, ts, counted FROM ledger WHERE rowid > ? AND rowid <= ? AND ts >= ?',
    ),
    model: db.prepare<[number, number, number], { key: string | null; ts: number; counted: number }>(
      'SELECT model AS key, ts, counted FROM ledger WHERE rowid > ? AND rowid <= ? AND ts >= ?',
    ),
  };
  interface GroupCache {
    rowid: number;
    /** Latest ts among the rows counted: the totals answer any `until` above it. */
    maxTs: number;
    totals: Map<string, { requests: number; counted: number }>;
  }
  const groupCaches = new Map<string, GroupCache>();
  const groupTx = db.transaction((by: 'agent' | 'model', since: number, until: number): GroupTotal[] => {
    const rowid = maxRowidStmt.get() as number;
    const key = `${by}|${since}`;
    let cache = groupCaches.get(key);
    if (cache === undefined || rowid < cache.rowid || rowid - cache.rowid > 10_000) {
      cache = { rowid, maxTs: Number.NEGATIVE_INFINITY, totals: new Map() };
      for (const g of groupFromStmts[by].all(since, rowid)) {
        cache.totals.set(g.key, { requests: g.requests, counted: g.counted });
        cache.maxTs = Math.max(cache.maxTs, g.maxTs);
      }
      groupCaches.set(key, cache);
      if (groupCaches.size > 8) groupCaches.delete(groupCaches.keys().next().value as string);
    } else {
      // Most recently used last, so the totals the dashboard polls outlive one-off ranges.
      groupCaches.delete(key);
      groupCaches.set(key, cache);
    }
    if (rowid > cache.rowid) {
      for (const r of groupAddedStmts[by].all(cache.rowid, rowid, since)) {
        if (r.key === null) continue;
        const t = cache.totals.get(r.key);
        if (t) {
          t.requests += 1;
          t.counted += r.counted;
        } else cache.totals.set(r.key, { requests: 1, counted: r.counted });
        cache.maxTs = Math.max(cache.maxTs, r.ts);
      }
      cache.rowid = rowid;
    }
    // Rows at or after `until` (a clock ahead, or a range in the past): ask the ledger exactly.
    if (cache.maxTs >= until) return groupStmts[by].all(since, until);
    return [...cache.totals]
      .map(([k, t]) => ({ key: k, requests: t.requests, counted: t.counted }))
      .sort((a, b) => b.counted - a.counted || Buffer.compare(Buffer.from(a.key), Buffer.from(b.key)));
  });

  // One statement per combination of equality filters (8 at most), so each can use its index.
  const queryStmts = new Map<string, Database.Statement<unknown[], LedgerRecord>>();

  function insertLedger(row: LedgerRow): void {
    insertLedgerStmt.run(
      row.id,
      row.ts,
      row.agent,
      row.keyId,
      row.model,
      row.stream ? 1 : 0,
      row.outcome,
      row.status,
      row.reserved,
      row.inputTokens,
      row.outputTokens,
      row.cacheCreationTokens,
      row.cacheReadTokens,
      row.counted,
      row.costUsd,
      row.latencyMs,
      row.upstreamRequestId,
      row.blockReason,
      row.usageSource,
      JSON.stringify(row.metadata),
    );
  }

  function chargeInFull(entriesJson: string): void {
    for (const [series, bucket, amount] of JSON.parse(entriesJson) as StoredEntry[]) {
      addStmt.run(series, bucket, amount, -amount);
    }
  }

  // The write operations below run inside a group-commit batch, which may run them twice (see
  // group-commit.ts): they touch nothing but the database. Throwing rolls back the operation's own
  // changes and nothing else.
  function reserveOp(req: ReserveRequest, draftJson: string): ReserveResult {
    const { entries } = req;
    const n = entries.length;
    const after = new Array<number>(n);
    for (let i = 0; i < n; i++) {
      const e = entries[i] as HoldEntry;
      const before = windowStmt.get(e.series, e.from) as UsageTotals;
      const total = before.used + before.reserved + windowAfter(entries, i);
      if (e.limit !== null && total > e.limit) {
        return { ok: false, entry: i, used: before.used, reserved: before.reserved };
      }
      after[i] = total;
    }
    const stored: StoredEntry[] = new Array(n);
    for (let i = 0; i < n; i++) {
      const e = entries[i] as HoldEntry;
      addStmt.run(e.series, e.bucket, 0, e.amount);
      stored[i] = [e.series, e.bucket, e.amount];
    }
    insertHoldStmt.run(req.holdId, req.owner, req.expiresAt, JSON.stringify(stored), draftJson);
    return { ok: true, after };
  }

  function settleOp(holdId: string, charges: number[], row: LedgerRow): void {
    const entriesJson = takeHoldStmt.get(holdId);
    if (entriesJson !== undefined) {
      const entries = JSON.parse(entriesJson) as StoredEntry[];
      // Throwing here rolls the operation back, the taking of the hold included.
      checkCharges(holdId, entries.length, charges);
      entries.forEach(([series, bucket, amount], i) => {
        addStmt.run(series, bucket, charges[i] as number, -amount);
      });
    }
    insertLedger(row);
  }

  function reclaimOp(now: number, keepOwner: string | undefined): number {
    const taken =
      keepOwner === undefined ? takeExpiredStmt.all(now) : takeExpiredOrForeignStmt.all(now, keepOwner);
    for (const hold of taken) {
      chargeInFull(hold.entries);
      insertLedger(decodeDraft(hold.draft));
    }
    return taken.length;
  }

  const writes = createGroupCommit(db, maxBatch === undefined ? {} : { maxBatch });
  const control = buildControlStore(db);
  /** A control-state write: runs after every queued write, so writes apply in arrival order. */
  const inOrder =
    <A extends unknown[], R>(write: (...args: A) => Promise<R>) =>
    (...args: A): Promise<R> => {
      writes.flush();
      return write(...args);
    };

  const usageTx = db.transaction((queries: UsageQuery[]): UsageTotals[] =>
    queries.map((q) => {
      const t = windowStmt.get(q.series, q.from) as UsageTotals;
      return { used: t.used, reserved: t.reserved };
    }),
  );

  function queryStmt(q: LedgerQuery): Database.Statement<unknown[], LedgerRecord> {
    const key = `${q.agent !== undefined ? 'a' : ''}${q.model !== undefined ? 'm' : ''}${q.outcome !== undefined ? 'o' : ''}`;
    let stmt = queryStmts.get(key);
    if (stmt === undefined) {
      const where = ['ts >= @since', 'ts < @until'];
      if (q.agent !== undefined) where.push('agent = @agent');
      if (q.model !== undefined) where.push('model = @model');
      if (q.outcome !== undefined) where.push('outcome = @outcome');
      stmt = db.prepare<unknown[], LedgerRecord>(
        `SELECT ${LEDGER_COLUMNS} FROM ledger WHERE ${where.join(' AND ')} ` +
          'ORDER BY ts DESC, id DESC LIMIT @limit OFFSET @offset',
      );
      queryStmts.set(key, stmt);
    }
    return stmt;
  }

  return {
    db,
    ...control,
    recordAlert: inOrder(control.recordAlert),
    setEmergency: inOrder(control.setEmergency),
    clearEmergency: inOrder(control.clearEmergency),
    setSetting: inOrder(control.setSetting),
    createKey: inOrder(control.createKey),
    revokeKey: inOrder(control.revokeKey),
    resetUsage: inOrder(control.resetUsage),

    reserve(req) {
      // The draft is encoded now, so the hold records the request as it was when reserve was called.
      let draftJson: string;
      try {
        draftJson = encodeDraft(req.draft);
      } catch (err) {
        return Promise.reject(err);
      }
      return writes.run(() => reserveOp(req, draftJson));
    },

    settle(holdId, charges, row) {
      return writes.run(() => settleOp(holdId, charges, row));
    },

    appendLedger(row) {
      return writes.run(() => insertLedger(row));
    },

    reclaim({ now, keepOwner }) {
      return writes.run(() => reclaimOp(now, keepOwner));
    },

    renew(holdIds, expiresAt) {
      const ids = [...holdIds];
      return writes.run(() => {
        let n = 0;
        for (const id of ids) n += renewStmt.run(expiresAt, id).changes;
        return n;
      });
    },

    async usage(queries) {
      return usageTx.deferred(queries);
    },

    async holdCount() {
      return holdCountStmt.get() as number;
    },

    async queryLedger(q) {
      const params: Record<string, string | number> = {
        since: q.since ?? Number.MIN_SAFE_INTEGER,
        until: q.until ?? Number.MAX_SAFE_INTEGER,
        limit: q.limit,
        offset: q.offset ?? 0,
      };
      if (q.agent !== undefined) params.agent = q.agent;
      if (q.model !== undefined) params.model = q.model;
      if (q.outcome !== undefined) params.outcome = q.outcome;
      return queryStmt(q).all(params).map(toLedgerRow);
    },

    async groupLedger(by, since, until) {
      // Inside a caller's transaction rows may still be rolled back: read them plainly, keep nothing.
      return db.inTransaction ? groupStmts[by].all(since, until) : groupTx.deferred(by, since, until);
    },

    async close() {
      // Queued writes commit first; any queued after this reject (the database is closed).
      writes.flush();
      if (db.open) db.close();
    },
  };
}

function encodeDraft(r: LedgerRow): string {
  const stored: StoredDraft = [
    r.id,
    r.ts,
    r.agent,
    r.keyId,
    r.model,
    r.stream,
    r.outcome,
    r.status,
    r.reserved,
    r.inputTokens,
    r.outputTokens,
    r.cacheCreationTokens,
    r.cacheReadTokens,
    r.counted,
    r.costUsd,
    r.latencyMs,
    r.upstreamRequestId,
    r.blockReason,
    r.usageSource,
    r.metadata,
  ];
  return JSON.stringify(stored);
}

function decodeDraft(json: string): LedgerRow {
  const parsed = JSON.parse(json) as StoredDraft | LedgerRow;
  if (!Array.isArray(parsed)) return parsed;
  const [
    id,
    ts,
    agent,
    keyId,
    model,
    stream,
    outcome,
    status,
    reserved,
    inputTokens,
    outputTokens,
    cacheCreationTokens,
    cacheReadTokens,
    counted,
    costUsd,
    latencyMs,
    upstreamRequestId,
    blockReason,
    usageSource,
    metadata,
  ] = parsed;
  return {
    id,
    ts,
    agent,
    keyId,
    model,
    stream,
    outcome,
    status,
    reserved,
    inputTokens,
    outputTokens,
    cacheCreationTokens,
    cacheReadTokens,
    counted,
    costUsd,
    latencyMs,
    upstreamRequestId,
    blockReason,
    usageSource,
    metadata,
  };
}

function toLedgerRow(r: LedgerRecord): LedgerRow {
  return {
    id: r.id,
    ts: r.ts,
    agent: r.agent,
    keyId: r.key_id,
    model: r.model,
    stream: r.stream === 1,
    outcome: r.outcome as Outcome,
    status: r.status,
    reserved: r.reserved,
    inputTokens: r.input_tokens,
    outputTokens: r.output_tokens,
    cacheCreationTokens: r.cache_creation_tokens,
    cacheReadTokens: r.cache_read_tokens,
    counted: r.counted,
    costUsd: r.cost_usd,
    latencyMs: r.latency_ms,
    upstreamRequestId: r.upstream_request_id,
    blockReason: r.block_reason,
    usageSource: r.usage_source as UsageSource,
    metadata: JSON.parse(r.metadata) as Record<string, unknown>,
  };
}
