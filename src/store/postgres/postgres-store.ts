/**
 * The shared Store: PostgreSQL through a `pg` pool, for several gateway replicas on one budget. Every
 * operation is one statement in its own (autocommit) transaction, so one round trip: admission,
 * settlement and reclaiming are PL/pgSQL functions created by the migrations (see migrations.ts for
 * how admission stays exact under READ COMMITTED). Control state lives in control-store.ts.
 */
import pg from 'pg';
import type {
  GroupTotal,
  HoldEntry,
  LedgerQuery,
  LedgerRow,
  ReserveRequest,
  ReserveResult,
  Store,
  UsageQuery,
  UsageTotals,
} from '../ports.js';
import { buildControlStore, ledgerWhere } from './control-store.js';
import { migratePostgres, schemaNames } from './migrations.js';

export interface PostgresStoreOptions {
  /** `postgres://user:password@host:port/database` (any libpq-style URL `pg` accepts). */
  url: string;
  /** Schema holding every table and function, created if missing (default `public`). */
  schema?: string;
  /** Most connections the pool opens (default 10). */
  poolSize?: number;
  /** How long to wait for a new connection before the operation rejects, ms (default 10000). */
  connectTimeoutMs?: number;
  /** `application_name` of the connections, as shown in pg_stat_activity (default `tokenwarden`). */
  applicationName?: string;
  /**
   * Called with errors of idle connections (the server went away, an administrator ended the
   * backend). The pool drops such a connection and opens another on the next operation; without a
   * listener these errors would crash the process.
   */
  onError?: (err: Error) => void;
}

export type PostgresStore = Store & {
  /** The schema the store uses. */
  readonly schema: string;
  close(): Promise<void>;
};

const INT8_OID = 20;

/**
 * Per pool, not the global registry: bigint columns (token counts, ms timestamps) come back as numbers.
 * Every value the store writes is a safe integer, so none loses precision.
 */
const types = {
  getTypeParser: (oid: number, format?: 'text' | 'binary') =>
    oid === INT8_OID && format !== 'binary' ? Number : pg.types.getTypeParser(oid, format),
} as pg.CustomTypesConfig;

const LEDGER_COLUMNS =
  'id, ts, agent, key_id AS "keyId", model, stream, outcome, status, reserved, ' +
  'input_tokens AS "inputTokens", output_tokens AS "outputTokens", ' +
  'cache_creation_tokens AS "cacheCreationTokens", cache_read_tokens AS "cacheReadTokens", counted, ' +
  'cost_usd AS "costUsd", latency_ms AS "latencyMs", upstream_request_id AS "upstreamRequestId", ' +
  'block_reason AS "blockReason", usage_source AS "usageSource", metadata';

interface ReserveRow {
  ok: boolean;
  entry: number | null;
  used: number | null;
  reserved: number | null;
  after: number[] | null;
}

/**
 * Opens a pool on `opts.url`, brings the schema to the latest version (creating it if missing) and
 * returns the store. Rejects when the server cannot be reached or the schema is newer than this build
 * (PostgresSchemaTooNewError); the pool is closed again in both cases. Afterwards every method rejects
 * on a storage failure and never throws synchronously; a lost connection never crashes the process.
 */
export async function openPostgresStore(opts: PostgresStoreOptions): Promise<PostgresStore> {
  const schema = opts.schema ?? 'public';
  const names = schemaNames(schema);
  const poolSize = opts.poolSize ?? 10;
  if (!Number.isSafeInteger(poolSize) || poolSize < 1) {
    throw new RangeError(`poolSize must be a positive integer, got ${poolSize}`);
  }
  const pool = new pg.Pool({
    connectionString: opts.url,
    max: poolSize,
    connectionTimeoutMillis: opts.connectTimeoutMs ?? 10_000,
    application_name: opts.applicationName ?? 'tokenwarden',
    types,
  });
  pool.on('error', (err) => opts.onError?.(err));
  try {
    const client = await pool.connect();
    // A checked-out client that loses its connection emits `error` too; the query then rejects.
    const ignore = (): void => {};
    client.on('error', ignore);
    let failure: Error | undefined;
    try {
      await migratePostgres(client, schema);
    } catch (err) {
      failure = err instanceof Error ? err : new Error(String(err));
      throw err;
    } finally {
      client.off('error', ignore);
      // Destroy the connection after a failure: it may be mid-transaction or broken.
      client.release(failure);
    }
  } catch (err) {
    await pool.end().catch(() => {});
    throw err;
  }
  return buildStore(pool, names.schema, schema);
}

function buildStore(pool: pg.Pool, s: string, schema: string): PostgresStore {
  const reserveSql = {
    name: 'tw_reserve',
    text:
      'SELECT ok, entry, used, reserved, after::float8[] AS after ' +
      `FROM ${s}.tw_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
  };
  const settleSql = { name: 'tw_settle', text: `SELECT FROM ${s}.tw_settle($1, $2, $3)` };
  const appendSql = {
    name: 'tw_append',
    text:
      `INSERT INTO ${s}.ledger SELECT * FROM jsonb_populate_record(NULL::${s}.ledger, $1) ` +
      'ON CONFLICT (id) DO NOTHING',
  };
  const reclaimSql = { name: 'tw_reclaim', text: `SELECT ${s}.tw_reclaim($1, $2) AS n` };
  const renewSql = {
    name: 'tw_renew',
    text: `UPDATE ${s}.holds SET expires_at = GREATEST(expires_at, $2) WHERE id = ANY($1::text[])`,
  };
  const usageSql = {
    name: 'tw_usage',
    text:
      'SELECT COALESCE(t.used, 0) AS used, COALESCE(t.reserved, 0) AS reserved ' +
      'FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS q(series, since, i) ' +
      'LEFT JOIN LATERAL (SELECT SUM(c.used)::bigint AS used, SUM(c.reserved)::bigint AS reserved ' +
      `FROM ${s}.counters AS c WHERE c.series = q.series AND c.bucket >= q.since) AS t ON true ORDER BY q.i`,
  };
  const groupSql = {
    agent:
      'SELECT agent AS key, COUNT(*) AS requests, COALESCE(SUM(counted), 0)::bigint AS counted ' +
      `FROM ${s}.ledger WHERE ts >= $1 AND ts < $2 GROUP BY agent ORDER BY counted DESC, key ASC`,
    model:
      'SELECT model AS key, COUNT(*) AS requests, COALESCE(SUM(counted), 0)::bigint AS counted ' +
      `FROM ${s}.ledger WHERE ts >= $1 AND ts < $2 AND model IS NOT NULL ` +
      'GROUP BY model ORDER BY counted DESC, key ASC',
  };
  let closed: Promise<void> | undefined;

  return {
    schema,
    ...buildControlStore(pool, s),

    async reserve(req: ReserveRequest): Promise<ReserveResult> {
      const n = req.entries.length;
      const series = new Array<string>(n);
      const bucket = new Array<number>(n);
      const from = new Array<number>(n);
      const limit = new Array<number | null>(n);
      const amount = new Array<number>(n);
      for (let i = 0; i < n; i++) {
        const e = req.entries[i] as HoldEntry;
        checkInteger(req.holdId, 'bucket', e.bucket);
        checkInteger(req.holdId, 'from', e.from);
        checkInteger(req.holdId, 'amount', e.amount);
        if (e.limit !== null) checkInteger(req.holdId, 'limit', e.limit);
        series[i] = e.series;
        bucket[i] = e.bucket;
        from[i] = e.from;
        limit[i] = e.limit;
        amount[i] = e.amount;
      }
      const r = await pool.query<ReserveRow>({
        ...reserveSql,
        values: [
          req.holdId,
          req.owner,
          req.expiresAt,
          ledgerJson(req.draft),
          series,
          bucket,
          from,
          limit,
          amount,
        ],
      });
      const row = r.rows[0];
      if (row === undefined) throw new Error('tw_reserve returned no row');
      if (row.ok) return { ok: true, after: row.after ?? [] };
      return { ok: false, entry: row.entry ?? 0, used: row.used ?? 0, reserved: row.reserved ?? 0 };
    },

    async settle(holdId: string, charges: number[], row: LedgerRow): Promise<void> {
      // The count is checked in the database, against the hold (rolling back if it does not match).
      for (const c of charges) {
        if (!Number.isSafeInteger(c) || c < 0) {
          throw new TypeError(`settle(${holdId}): charge ${c} is not a non-negative integer`);
        }
      }
      await pool.query({ ...settleSql, values: [holdId, charges, ledgerJson(row)] });
    },

    async appendLedger(row: LedgerRow): Promise<void> {
      await pool.query({ ...appendSql, values: [ledgerJson(row)] });
    },

    async reclaim({ now, keepOwner }: { now: number; keepOwner?: string }): Promise<number> {
      const r = await pool.query<{ n: number }>({ ...reclaimSql, values: [now, keepOwner ?? null] });
      return r.rows[0]?.n ?? 0;
    },

    async renew(holdIds: readonly string[], expiresAt: number): Promise<number> {
      if (holdIds.length === 0) return 0;
      checkInteger('renew', 'expiresAt', expiresAt);
      const r = await pool.query({
        ...renewSql,
        values: [[...holdIds], expiresAt],
      });
      return r.rowCount ?? 0;
    },

    async usage(queries: UsageQuery[]): Promise<UsageTotals[]> {
      if (queries.length === 0) return [];
      const r = await pool.query<UsageTotals>({
        ...usageSql,
        values: [queries.map((q) => q.series), queries.map((q) => q.from)],
      });
      return r.rows;
    },

    async holdCount(): Promise<number> {
      const r = await pool.query<{ n: number }>(`SELECT COUNT(*) AS n FROM ${s}.holds`);
      return r.rows[0]?.n ?? 0;
    },

    async queryLedger(q: LedgerQuery): Promise<LedgerRow[]> {
      const { where, values } = ledgerWhere(q);
      values.push(Math.max(0, q.limit), Math.max(0, q.offset ?? 0));
      const r = await pool.query<LedgerRow>(
        `SELECT ${LEDGER_COLUMNS} FROM ${s}.ledger WHERE ${where} ` +
          `ORDER BY ts DESC, id DESC LIMIT $${values.length - 1} OFFSET $${values.length}`,
        values,
      );
      return r.rows;
    },

    async groupLedger(by: 'agent' | 'model', since: number, until: number): Promise<GroupTotal[]> {
      const r = await pool.query<GroupTotal>(groupSql[by], [since, until]);
      return r.rows;
    },

    close(): Promise<void> {
      closed ??= pool.end();
      return closed;
    },
  };
}

/** Counters are bigint: reject a fractional or unsafe number before it reaches the database. */
function checkInteger(holdId: string, field: string, value: number): void {
  if (!Number.isSafeInteger(value)) {
    throw new TypeError(`reserve(${holdId}): ${field} ${value} is not a safe integer`);
  }
}

/** Characters jsonb refuses: NUL and UTF-16 surrogates (only lone ones are a problem). */
const SUSPECT = /[\0\ud800-\udfff]/;
const UNSTORABLE = /\0|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/**
 * JSON.stringify replacer: PostgreSQL cannot store NUL or a lone surrogate in text or jsonb, so they
 * become U+FFFD rather than making the whole write (a ledger row, a hold) fail.
 */
function storable(_key: string, value: unknown): unknown {
  if (typeof value === 'string') return SUSPECT.test(value) ? value.replace(UNSTORABLE, '\ufffd') : value;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return value;
  const keys = Object.keys(value);
  if (!keys.some((k) => SUSPECT.test(k))) return value;
  const fixed: Record<string, unknown> = {};
  for (const k of keys) fixed[k.replace(UNSTORABLE, '\ufffd')] = (value as Record<string, unknown>)[k];
  return fixed;
}

/** The row as a JSON object keyed by ledger column, for jsonb_populate_record. */
function ledgerJson(r: LedgerRow): string {
  return JSON.stringify(
    {
      id: r.id,
      ts: r.ts,
      agent: r.agent,
      key_id: r.keyId,
      model: r.model,
      stream: r.stream,
      outcome: r.outcome,
      status: r.status,
      reserved: r.reserved,
      input_tokens: r.inputTokens,
      output_tokens: r.outputTokens,
      cache_creation_tokens: r.cacheCreationTokens,
      cache_read_tokens: r.cacheReadTokens,
      counted: r.counted,
      cost_usd: r.costUsd,
      latency_ms: r.latencyMs,
      upstream_request_id: r.upstreamRequestId,
      block_reason: r.blockReason,
      usage_source: r.usageSource,
      metadata: r.metadata,
    },
    storable,
  );
}
