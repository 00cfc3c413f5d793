/**
 * The embedded Store: one SQLite file (better-sqlite3, WAL). Control state lives in control-store.ts. Each operation is one write
 * transaction begun IMMEDIATE, so the window check and the hold are atomic even against other
 * processes on the same file. Statements are prepared once, when the store opens.
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
import { buildControlStore } from './control-store.js';
import { migrate } from './migrations.js';

export interface SqliteStoreOptions {
  /** Database file; its directory is created if missing. `:memory:` for a private in-memory database. */
  path: string;
  /** How long to wait for another connection's write lock before failing, ms (default 5000). */
  busyTimeoutMs?: number;
}

export type SqliteStore = Store & { readonly db: Database.Database };

/** Stored form of a hold's entries: [series, bucket, amount] per entry, in entry order. */
type StoredEntry = [series: string, bucket: number, amount: number];

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
  // `timeout` is the busy timeout; passing it here covers the pragmas below too, which may have to wait
  // for another process that is creating the same file.
  const db = new Database(opts.path, { timeout: opts.busyTimeoutMs ?? 5000 });
  try {
    db.pragma('journal_mode = WAL');
    // In WAL mode NORMAL loses no committed transaction when the process dies (kill -9); only an OS
    // crash or power loss can drop the last few.
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    migrate(db);
    return buildStore(db);
  } catch (err) {
    db.close();
    throw err;
  }
}

function buildStore(db: Database.Database): SqliteStore {
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

  const reserveTx = db.transaction((req: ReserveRequest): ReserveResult => {
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
    insertHoldStmt.run(
      req.holdId,
      req.owner,
      req.expiresAt,
      JSON.stringify(stored),
      JSON.stringify(req.draft),
    );
    return { ok: true, after };
  });

  const settleTx = db.transaction((holdId: string, charges: number[], row: LedgerRow): void => {
    const entriesJson = takeHoldStmt.get(holdId);
    if (entriesJson !== undefined) {
      const entries = JSON.parse(entriesJson) as StoredEntry[];
      // Throwing here rolls the whole transaction back, hold included.
      checkCharges(holdId, entries.length, charges);
      entries.forEach(([series, bucket, amount], i) => {
        addStmt.run(series, bucket, charges[i] as number, -amount);
      });
    }
    insertLedger(row);
  });

  const appendTx = db.transaction(insertLedger);

  const reclaimTx = db.transaction((now: number, keepOwner: string | undefined): number => {
    const taken =
      keepOwner === undefined ? takeExpiredStmt.all(now) : takeExpiredOrForeignStmt.all(now, keepOwner);
    for (const hold of taken) {
      chargeInFull(hold.entries);
      insertLedger(JSON.parse(hold.draft) as LedgerRow);
    }
    return taken.length;
  });

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
    ...buildControlStore(db),

    async reserve(req) {
      return reserveTx.immediate(req);
    },

    async settle(holdId, charges, row) {
      settleTx.immediate(holdId, charges, row);
    },

    async appendLedger(row) {
      appendTx.immediate(row);
    },

    async reclaim({ now, keepOwner }) {
      return reclaimTx.immediate(now, keepOwner);
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
      return groupStmts[by].all(since, until);
    },

    async close() {
      if (db.open) db.close();
    },
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
