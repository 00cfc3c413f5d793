/**
 * The PostgreSQL ControlStore: alerts, emergency state, settings and virtual keys (tables of migration
 * 2), and reports over the ledger and counters of migration 1. Each method is one statement.
 */
import type pg from 'pg';
import { checkBucketMs } from '../hold-rules.js';
import type {
  AlertLevel,
  AlertRecord,
  ControlStore,
  EmergencyState,
  LedgerQuery,
  TimeseriesPoint,
  VirtualKeyRecord,
} from '../ports.js';

export type LedgerFilter = Omit<LedgerQuery, 'limit' | 'offset'>;

interface AlertRow {
  id: string;
  level: string;
  budget: string;
  window: string;
  period: number;
  percent: number;
  at: number;
  message: string;
}

const KEY_COLUMNS = 'id, hash, prefix, agent, limits, created_at AS "createdAt", revoked_at AS "revokedAt"';

/**
 * The WHERE clause of a ledger filter and its parameters, numbered from `$1`: ts in [since, until),
 * then one equality per filter given (so each combination can use its index).
 */
export function ledgerWhere(q: LedgerFilter): { where: string; values: (string | number)[] } {
  const values: (string | number)[] = [
    q.since ?? Number.MIN_SAFE_INTEGER,
    q.until ?? Number.MAX_SAFE_INTEGER,
  ];
  const where = ['ts >= $1', 'ts < $2'];
  for (const [column, value] of [
    ['agent', q.agent],
    ['model', q.model],
    ['outcome', q.outcome],
  ] as const) {
    if (value === undefined) continue;
    values.push(value);
    where.push(`${column} = $${values.length}`);
  }
  return { where: where.join(' AND '), values };
}

/** The ControlStore over the tables of `schema` (a quoted identifier), migrated to version 2 or later. */
export function buildControlStore(pool: pg.Pool, schema: string): ControlStore {
  const s = schema;
  return {
    async recordAlert(a) {
      const r = await pool.query(
        `INSERT INTO ${s}.alerts (id, level, budget, window_name, period, percent, at, message) ` +
          'VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING',
        [a.id, a.level, a.budget, a.window, a.period, a.percent, a.at, a.message],
      );
      return r.rowCount === 1;
    },

    async listAlerts(q) {
      const r = await pool.query<AlertRow>(
        'SELECT id, level, budget, window_name AS "window", period, percent, at, message ' +
          `FROM ${s}.alerts WHERE at >= $1 ORDER BY at DESC, id DESC LIMIT $2`,
        [q.since ?? Number.MIN_SAFE_INTEGER, Math.max(0, q.limit)],
      );
      return r.rows.map((row): AlertRecord => ({ ...row, level: row.level as AlertLevel }));
    },

    async setEmergency(e) {
      await pool.query(
        `INSERT INTO ${s}.emergencies (budget, since, until, reason, manual) VALUES ($1, $2, $3, $4, $5) ` +
          'ON CONFLICT (budget) DO UPDATE SET since = excluded.since, until = excluded.until, ' +
          'reason = excluded.reason, manual = excluded.manual',
        [e.budget, e.since, e.until, e.reason, e.manual],
      );
    },

    async clearEmergency(budget) {
      const r =
        budget === undefined
          ? await pool.query(`DELETE FROM ${s}.emergencies`)
          : await pool.query(`DELETE FROM ${s}.emergencies WHERE budget = $1`, [budget]);
      return r.rowCount ?? 0;
    },

    async listEmergencies() {
      const r = await pool.query<EmergencyState>(
        `SELECT budget, since, until, reason, manual FROM ${s}.emergencies ORDER BY budget`,
      );
      return r.rows;
    },

    async getSetting(key) {
      const r = await pool.query<{ value: string }>(`SELECT value FROM ${s}.settings WHERE key = $1`, [key]);
      return r.rows[0]?.value ?? null;
    },

    async setSetting(key, value) {
      await pool.query(
        `INSERT INTO ${s}.settings (key, value) VALUES ($1, $2) ` +
          'ON CONFLICT (key) DO UPDATE SET value = excluded.value',
        [key, value],
      );
    },

    async createKey(k) {
      await pool.query(
        `INSERT INTO ${s}.virtual_keys (id, hash, prefix, agent, limits, created_at, revoked_at) ` +
          'VALUES ($1, $2, $3, $4, $5, $6, $7)',
        [
          k.id,
          k.hash,
          k.prefix,
          k.agent,
          k.limits === null ? null : JSON.stringify(k.limits),
          k.createdAt,
          k.revokedAt,
        ],
      );
    },

    async findKeyByHash(hash) {
      const r = await pool.query<VirtualKeyRecord>(
        `SELECT ${KEY_COLUMNS} FROM ${s}.virtual_keys WHERE hash = $1`,
        [hash],
      );
      return r.rows[0] ?? null;
    },

    async listKeys() {
      const r = await pool.query<VirtualKeyRecord>(
        `SELECT ${KEY_COLUMNS} FROM ${s}.virtual_keys ORDER BY created_at, id`,
      );
      return r.rows;
    },

    async revokeKey(id, at) {
      // The key with exactly this id, else the only key whose id starts with it (a non-empty prefix).
      const r = await pool.query(
        `UPDATE ${s}.virtual_keys SET revoked_at = $2 WHERE revoked_at IS NULL AND id = (` +
          "SELECT CASE WHEN bool_or(id = $1) THEN $1 WHEN $1 <> '' AND count(*) = 1 THEN min(id) END " +
          `FROM ${s}.virtual_keys WHERE starts_with(id, $1))`,
        [id, at],
      );
      return r.rowCount === 1;
    },

    async countLedger(q) {
      const { where, values } = ledgerWhere(q);
      const r = await pool.query<{ n: number }>(
        `SELECT COUNT(*) AS n FROM ${s}.ledger WHERE ${where}`,
        values,
      );
      return r.rows[0]?.n ?? 0;
    },

    async timeseries(q) {
      checkBucketMs(q.bucketMs);
      if (!(q.since < q.until)) return [];
      const { where, values } = ledgerWhere(q);
      values.push(q.bucketMs);
      const w = `$${values.length}::bigint`;
      // Floored to a multiple of the width, also for negative ts (% keeps the dividend's sign).
      const r = await pool.query<TimeseriesPoint>(
        `SELECT ts - ((ts % ${w}) + ${w}) % ${w} AS bucket, COUNT(*) AS requests, ` +
          'COALESCE(SUM(counted), 0)::bigint AS counted, ' +
          'COALESCE(SUM(input_tokens), 0)::bigint AS "inputTokens", ' +
          'COALESCE(SUM(output_tokens), 0)::bigint AS "outputTokens", ' +
          'COALESCE(SUM(cache_creation_tokens), 0)::bigint AS "cacheCreationTokens", ' +
          'COALESCE(SUM(cache_read_tokens), 0)::bigint AS "cacheReadTokens", ' +
          'COALESCE(SUM(cost_usd), 0)::float8 AS "costUsd", ' +
          "COUNT(*) FILTER (WHERE outcome = 'blocked') AS blocked " +
          `FROM ${s}.ledger WHERE ${where} GROUP BY 1 ORDER BY 1`,
        values,
      );
      return r.rows;
    },

    async resetUsage(series) {
      if (series.length === 0) return 0;
      // Rows are locked in (series, bucket) order, like every other writer of the counters.
      const r = await pool.query<{ cleared: number }>(
        `WITH locked AS (SELECT series, bucket, used FROM ${s}.counters ` +
          'WHERE series = ANY($1::text[]) AND used <> 0 ORDER BY series, bucket FOR UPDATE), ' +
          `cleared AS (UPDATE ${s}.counters AS c SET used = 0 FROM locked ` +
          'WHERE c.series = locked.series AND c.bucket = locked.bucket RETURNING locked.used) ' +
          'SELECT COALESCE(SUM(used), 0)::bigint AS cleared FROM cleared',
        [[...new Set(series)]],
      );
      return r.rows[0]?.cleared ?? 0;
    },

    async listSeries() {
      const r = await pool.query<{ series: string }>(
        `SELECT DISTINCT series FROM ${s}.counters ORDER BY series`,
      );
      return r.rows.map((row) => row.series);
    },
  };
}
