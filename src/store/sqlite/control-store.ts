/**
 * The SQLite ControlStore: alerts, emergency state, settings and virtual keys (tables of migration 2),
 * and reports over the ledger and counters of migration 1. Statements are prepared once, when the
 * store opens; each write is one statement or one IMMEDIATE transaction.
 */
import type Database from 'better-sqlite3';
import { bucketOf, checkBucketMs } from '../hold-rules.js';
import type {
  AlertLevel,
  AlertRecord,
  ControlStore,
  EmergencyState,
  LedgerQuery,
  TimeseriesPoint,
  TimeseriesQuery,
  VirtualKeyRecord,
} from '../ports.js';

interface AlertRow {
  id: string;
  level: string;
  budget: string;
  window_name: string;
  period: number;
  percent: number;
  at: number;
  message: string;
}

interface EmergencyRow {
  budget: string;
  since: number;
  until: number | null;
  reason: string;
  manual: number;
}

interface KeyRow {
  id: string;
  hash: string;
  prefix: string;
  agent: string;
  limits: string | null;
  created_at: number;
  revoked_at: number | null;
}

type LedgerFilter = Omit<LedgerQuery, 'limit' | 'offset'>;

const KEY_COLUMNS = 'id, hash, prefix, agent, limits, created_at, revoked_at';

/**
 * Bucket start of `ts`, floored to a multiple of @bucketMs. better-sqlite3 binds JS numbers as REAL,
 * so the width is cast: `ts / 3600000.0` would not be integer division.
 */
const BUCKET =
  'ts - ((ts % CAST(@bucketMs AS INTEGER)) + CAST(@bucketMs AS INTEGER)) % CAST(@bucketMs AS INTEGER)';

/** One TimeseriesPoint's totals; COALESCE because SUM over no rows is NULL. */
const TOTALS =
  'COUNT(*) AS requests, COALESCE(SUM(counted), 0) AS counted, ' +
  'COALESCE(SUM(input_tokens), 0) AS inputTokens, COALESCE(SUM(output_tokens), 0) AS outputTokens, ' +
  'COALESCE(SUM(cache_creation_tokens), 0) AS cacheCreationTokens, ' +
  'COALESCE(SUM(cache_read_tokens), 0) AS cacheReadTokens, TOTAL(cost_usd) AS costUsd, ' +
  "COALESCE(SUM(outcome = 'blocked'), 0) AS blocked";

/**
 * Up to this many buckets, timeseries() aggregates each bucket with its own index range query; beyond
 * it, with one GROUP BY. The walk avoids GROUP BY's sort of every row (about half the time for a
 * month of hourly buckets over 100k rows) but pays an index seek per bucket, empty or not.
 */
const WALK_LIMIT = 4096;

/**
 * timeseries() keeps the totals of the whole buckets it has summed, per bucket width and filter: the
 * ledger is append-only (migration 4 enforces it), so a bucket's totals change only when a row is
 * added to it. Each call reads the ts of the rows added since the last call (by rowid, which only
 * grows) and forgets the buckets they fall in; it sums only the buckets it does not know: new ones,
 * ones that got rows, and the partial ones at either end of the range. So a dashboard polling a month
 * of hours sums one or two buckets instead of the month, and every answer equals a fresh sum.
 */
interface BucketCache {
  /** Highest ledger rowid the kept totals account for. */
  rowid: number;
  /** Totals of whole buckets, by bucket start (requests 0 for an empty one). */
  totals: Map<number, BucketTotals>;
}

type BucketTotals = Omit<TimeseriesPoint, 'bucket'>;

/** Most (width, filter) pairs kept; the least recently used goes first. */
const CACHED_SERIES = 16;
/** Beyond this many rows added since a pair was last read, drop its totals rather than read the rows. */
const CACHE_CATCH_UP = 10_000;

interface TimeseriesStmts {
  /** Oldest and newest ts in [@since, @until) matching the filters (null when none). */
  first: Database.Statement<unknown[], number | null>;
  last: Database.Statement<unknown[], number | null>;
  /** Totals of one bucket: [@lo, @hi). */
  bucket: Database.Statement<unknown[], BucketTotals>;
  /** Every bucket of [@since, @until) at once, for spans too long to walk. */
  grouped: Database.Statement<unknown[], TimeseriesPoint>;
}

/** The ControlStore over `db`, which must be migrated to version 2 or later. Prepares every statement. */
export function buildControlStore(db: Database.Database): ControlStore {
  const insertAlertStmt = db.prepare<[AlertRow]>(
    'INSERT INTO alerts (id, level, budget, window_name, period, percent, at, message) ' +
      'VALUES (@id, @level, @budget, @window_name, @period, @percent, @at, @message) ON CONFLICT DO NOTHING',
  );
  const listAlertsStmt = db.prepare<[number, number], AlertRow>(
    'SELECT id, level, budget, window_name, period, percent, at, message FROM alerts ' +
      'WHERE at >= ? ORDER BY at DESC, id DESC LIMIT ?',
  );
  const setEmergencyStmt = db.prepare<[EmergencyRow]>(
    'INSERT INTO emergencies (budget, since, until, reason, manual) ' +
      'VALUES (@budget, @since, @until, @reason, @manual) ON CONFLICT (budget) DO UPDATE SET ' +
      'since = excluded.since, until = excluded.until, reason = excluded.reason, manual = excluded.manual',
  );
  const clearEmergencyStmt = db.prepare<[string]>('DELETE FROM emergencies WHERE budget = ?');
  const clearEmergenciesStmt = db.prepare<[]>('DELETE FROM emergencies');
  const listEmergenciesStmt = db.prepare<[], EmergencyRow>(
    'SELECT budget, since, until, reason, manual FROM emergencies ORDER BY budget',
  );
  const getSettingStmt = db.prepare<[string], string>('SELECT value FROM settings WHERE key = ?').pluck();
  const setSettingStmt = db.prepare<[string, string]>(
    'INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
  );
  const insertKeyStmt = db.prepare<[KeyRow]>(
    `INSERT INTO virtual_keys (${KEY_COLUMNS}) ` +
      'VALUES (@id, @hash, @prefix, @agent, @limits, @created_at, @revoked_at)',
  );
  const findKeyStmt = db.prepare<[string], KeyRow>(`SELECT ${KEY_COLUMNS} FROM virtual_keys WHERE hash = ?`);
  const listKeysStmt = db.prepare<[], KeyRow>(
    `SELECT ${KEY_COLUMNS} FROM virtual_keys ORDER BY created_at, id`,
  );
  const keyIdStmt = db.prepare<[string], string>('SELECT id FROM virtual_keys WHERE id = ?').pluck();
  // substr rather than LIKE: an id may contain `_` and `%`.
  const keyIdsByPrefixStmt = db
    .prepare<[string, string], string>(
      'SELECT id FROM virtual_keys WHERE substr(id, 1, length(?)) = ? ORDER BY id LIMIT 2',
    )
    .pluck();
  const revokeStmt = db.prepare<[number, string]>(
    'UPDATE virtual_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL',
  );
  const seriesUsedStmt = db
    .prepare<[string], number>('SELECT COALESCE(SUM(used), 0) FROM counters WHERE series = ?')
    .pluck();
  const resetSeriesStmt = db.prepare<[string]>('UPDATE counters SET used = 0 WHERE series = ? AND used <> 0');
  const listSeriesStmt = db
    .prepare<[], string>('SELECT DISTINCT series FROM counters ORDER BY series')
    .pluck();
  // The unfiltered, unbounded count (the requests page's default total): COUNT(*) of a whole table is
  // answered from the b-tree's page headers, ~100x faster than counting 100k index entries. The rows
  // outside [MIN_SAFE_INTEGER, MAX_SAFE_INTEGER), which the range count excludes (none in practice),
  // are taken off by two index seeks, so the result is exactly the range count, in one snapshot.
  const countAllStmt = db
    .prepare<[{ since: number; until: number }], number>(
      'SELECT (SELECT COUNT(*) FROM ledger) - (SELECT COUNT(*) FROM ledger WHERE ts < @since) ' +
        '- (SELECT COUNT(*) FROM ledger WHERE ts >= @until)',
    )
    .pluck();
  // One statement per combination of equality filters, so each can use its index.
  const countStmts = new Map<string, Database.Statement<unknown[], number>>();
  const timeseriesStmts = new Map<string, TimeseriesStmts>();
  const maxRowidStmt = db.prepare<[], number>('SELECT COALESCE(MAX(rowid), 0) FROM ledger').pluck();
  const addedTsStmt = db.prepare<[number], number>('SELECT ts FROM ledger WHERE rowid > ?').pluck();
  const bucketCaches = new Map<string, BucketCache>();

  const revokeTx = db.transaction((id: string, at: number): boolean => {
    let target = keyIdStmt.get(id);
    if (target === undefined && id !== '') {
      const ids = keyIdsByPrefixStmt.all(id, id);
      // A prefix must name exactly one key.
      if (ids.length === 1) target = ids[0];
    }
    return target !== undefined && revokeStmt.run(at, target).changes === 1;
  });

  const resetTx = db.transaction((series: string[]): number => {
    let cleared = 0;
    for (const name of new Set(series)) {
      cleared += seriesUsedStmt.get(name) as number;
      resetSeriesStmt.run(name);
    }
    return cleared;
  });

  function countStmt(q: LedgerFilter): Database.Statement<unknown[], number> {
    const key = filterKey(q);
    let stmt = countStmts.get(key);
    if (stmt === undefined) {
      stmt = db.prepare<unknown[], number>(`SELECT COUNT(*) FROM ledger WHERE ${ledgerWhere(q)}`).pluck();
      countStmts.set(key, stmt);
    }
    return stmt;
  }

  function timeseriesStmtsFor(q: TimeseriesQuery): TimeseriesStmts {
    const key = filterKey(q);
    let stmts = timeseriesStmts.get(key);
    if (stmts === undefined) {
      const where = ledgerWhere(q);
      stmts = {
        first: db.prepare<unknown[], number | null>(`SELECT MIN(ts) FROM ledger WHERE ${where}`).pluck(),
        last: db.prepare<unknown[], number | null>(`SELECT MAX(ts) FROM ledger WHERE ${where}`).pluck(),
        bucket: db.prepare(`SELECT ${TOTALS} FROM ledger WHERE ${ledgerWhere(q, '@lo', '@hi')}`),
        grouped: db.prepare(
          `SELECT ${BUCKET} AS bucket, ${TOTALS} FROM ledger WHERE ${where} GROUP BY 1 ORDER BY 1`,
        ),
      };
      timeseriesStmts.set(key, stmts);
    }
    return stmts;
  }

  /** The kept totals of `q`'s width and filter, brought up to the current snapshot. */
  function bucketCacheFor(q: TimeseriesQuery): BucketCache {
    const key = JSON.stringify([q.bucketMs, q.agent ?? null, q.model ?? null]);
    const rowid = maxRowidStmt.get() as number;
    let cache = bucketCaches.get(key);
    bucketCaches.delete(key);
    if (
      cache === undefined ||
      rowid < cache.rowid ||
      rowid - cache.rowid > CACHE_CATCH_UP ||
      cache.totals.size > 2 * WALK_LIMIT
    ) {
      cache = { rowid, totals: new Map() };
    } else if (rowid > cache.rowid) {
      for (const ts of addedTsStmt.all(cache.rowid)) cache.totals.delete(bucketOf(ts, q.bucketMs));
      cache.rowid = rowid;
    }
    bucketCaches.set(key, cache);
    if (bucketCaches.size > CACHED_SERIES) bucketCaches.delete(bucketCaches.keys().next().value as string);
    return cache;
  }

  // One read transaction: every bucket, and the kept totals' rowid, see the same snapshot (WAL readers
  // never block writers). Called inside a caller's transaction it may see rows that are later rolled
  // back (and their rowids reused), so then it neither uses nor keeps totals.
  const timeseriesTx = db.transaction((q: TimeseriesQuery, keep: boolean): TimeseriesPoint[] => {
    const stmts = timeseriesStmtsFor(q);
    const params = ledgerParams(q);
    // Walk only the span that has rows, so an open range (since 0) costs nothing extra.
    const first = stmts.first.get(params);
    const last = stmts.last.get(params);
    if (first == null || last == null) return [];
    const { bucketMs } = q;
    const from = bucketOf(first, bucketMs);
    const to = bucketOf(last, bucketMs);
    if ((to - from) / bucketMs >= WALK_LIMIT) return stmts.grouped.all({ ...params, bucketMs });
    const cache: BucketCache = keep ? bucketCacheFor(q) : { rowid: 0, totals: new Map() };
    const points: TimeseriesPoint[] = [];
    for (let bucket = from; bucket <= to; bucket += bucketMs) {
      const lo = Math.max(bucket, q.since);
      const hi = Math.min(bucket + bucketMs, q.until);
      const whole = lo === bucket && hi === bucket + bucketMs;
      let totals = whole ? cache.totals.get(bucket) : undefined;
      if (totals === undefined) {
        totals = stmts.bucket.get({ ...params, lo, hi }) as BucketTotals;
        if (whole) cache.totals.set(bucket, totals);
      }
      if (totals.requests > 0) points.push({ bucket, ...totals });
    }
    return points;
  });

  return {
    async recordAlert(a) {
      return (
        insertAlertStmt.run({
          id: a.id,
          level: a.level,
          budget: a.budget,
          window_name: a.window,
          period: a.period,
          percent: a.percent,
          at: a.at,
          message: a.message,
        }).changes === 1
      );
    },

    async listAlerts(q) {
      return listAlertsStmt.all(q.since ?? Number.MIN_SAFE_INTEGER, Math.max(0, q.limit)).map(toAlert);
    },

    async setEmergency(e) {
      setEmergencyStmt.run({
        budget: e.budget,
        since: e.since,
        until: e.until,
        reason: e.reason,
        manual: e.manual ? 1 : 0,
      });
    },

    async clearEmergency(budget) {
      return (budget === undefined ? clearEmergenciesStmt.run() : clearEmergencyStmt.run(budget)).changes;
    },

    async listEmergencies() {
      return listEmergenciesStmt.all().map(toEmergency);
    },

    async getSetting(key) {
      return getSettingStmt.get(key) ?? null;
    },

    async setSetting(key, value) {
      setSettingStmt.run(key, value);
    },

    async createKey(k) {
      insertKeyStmt.run({
        id: k.id,
        hash: k.hash,
        prefix: k.prefix,
        agent: k.agent,
        limits: k.limits === null ? null : JSON.stringify(k.limits),
        created_at: k.createdAt,
        revoked_at: k.revokedAt,
      });
    },

    async findKeyByHash(hash) {
      const row = findKeyStmt.get(hash);
      return row === undefined ? null : toKey(row);
    },

    async listKeys() {
      return listKeysStmt.all().map(toKey);
    },

    async revokeKey(id, at) {
      return revokeTx.immediate(id, at);
    },

    async countLedger(q) {
      const params = ledgerParams(q);
      if (filterKey(q) === '' && q.since === undefined && q.until === undefined) {
        return countAllStmt.get({ since: params.since as number, until: params.until as number }) as number;
      }
      return countStmt(q).get(params) as number;
    },

    async timeseries(q) {
      checkBucketMs(q.bucketMs);
      if (!(q.since < q.until)) return [];
      return timeseriesTx.deferred(q, !db.inTransaction);
    },

    async resetUsage(series) {
      return resetTx.immediate(series);
    },

    async listSeries() {
      return listSeriesStmt.all();
    },
  };
}

/** Which equality filters a query uses: one prepared statement per combination. */
function filterKey(q: LedgerFilter): string {
  return `${q.agent !== undefined ? 'a' : ''}${q.model !== undefined ? 'm' : ''}${q.outcome !== undefined ? 'o' : ''}`;
}

/** The WHERE clause of a ledger filter, ts bounded by the parameters named `since` and `until`. */
function ledgerWhere(q: LedgerFilter, since = '@since', until = '@until'): string {
  const where = [`ts >= ${since}`, `ts < ${until}`];
  if (q.agent !== undefined) where.push('agent = @agent');
  if (q.model !== undefined) where.push('model = @model');
  if (q.outcome !== undefined) where.push('outcome = @outcome');
  return where.join(' AND ');
}

function ledgerParams(q: LedgerFilter): Record<string, string | number> {
  const params: Record<string, string | number> = {
    since: q.since ?? Number.MIN_SAFE_INTEGER,
    until: q.until ?? Number.MAX_SAFE_INTEGER,
  };
  if (q.agent !== undefined) params.agent = q.agent;
  if (q.model !== undefined) params.model = q.model;
  if (q.outcome !== undefined) params.outcome = q.outcome;
  return params;
}

function toAlert(r: AlertRow): AlertRecord {
  return {
    id: r.id,
    level: r.level as AlertLevel,
    budget: r.budget,
    window: r.window_name,
    period: r.period,
    percent: r.percent,
    at: r.at,
    message: r.message,
  };
}

function toEmergency(r: EmergencyRow): EmergencyState {
  return { budget: r.budget, since: r.since, until: r.until, reason: r.reason, manual: r.manual === 1 };
}

function toKey(r: KeyRow): VirtualKeyRecord {
  return {
    id: r.id,
    hash: r.hash,
    prefix: r.prefix,
    agent: r.agent,
    limits: r.limits === null ? null : (JSON.parse(r.limits) as Record<string, number>),
    createdAt: r.created_at,
    revokedAt: r.revoked_at,
  };
}
