/**
 * Ordered, numbered schema migrations for the PostgreSQL store. Everything lives in one schema (created
 * if missing); `schema_migrations` in that schema records the applied versions. All pending migrations
 * run in one transaction that first takes a transaction-level advisory lock named after the schema, so
 * several replicas starting at once on an empty database wait for each other and apply each migration
 * exactly once; a failure rolls every migration of the call back.
 * Append new migrations to the end of POSTGRES_MIGRATIONS; never edit or reorder a released one.
 */
import type pg from 'pg';
import { SchemaTooNewError } from '../sqlite/migrations.js';

export interface PostgresMigration {
  /** 1, 2, 3, … with no gaps. */
  readonly version: number;
  readonly name: string;
  /**
   * The SQL of the migration (several statements allowed). `s` is the quoted schema name, to qualify
   * every object: functions are created with qualified names so they never depend on a search_path.
   */
  readonly up: (s: SchemaNames) => string;
}

export interface SchemaNames {
  /** The schema as a quoted identifier, e.g. `"tokenwarden"`. */
  readonly schema: string;
  /** The first key of the advisory locks that serialize admission on a series in this schema. */
  readonly lockSpace: string;
}

export interface PostgresMigrationResult {
  /** Schema version found (0 for an empty schema). */
  from: number;
  /** Schema version after migrating. */
  to: number;
  /** Names of the migrations applied by this call, in order (empty when already current). */
  applied: string[];
}

/** The schema was written by a newer tokenwarden with migrations this build does not know. */
export class PostgresSchemaTooNewError extends SchemaTooNewError {
  constructor(
    readonly schema: string,
    found: number,
    known: number,
  ) {
    super(found, known);
    this.message =
      `database schema version ${found} (schema "${schema}") is newer than this tokenwarden supports ` +
      `(${known}); upgrade tokenwarden or point it at another database or schema`;
    this.name = 'PostgresSchemaTooNewError';
  }
}

/** A plain identifier: quoted anyway, but never needs escaping in an identifier or a literal. */
const SCHEMA_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/** Throws unless `schema` is a plain identifier of at most 63 characters (PostgreSQL truncates longer). */
export function checkSchemaName(schema: string): void {
  if (!SCHEMA_NAME.test(schema)) {
    throw new RangeError(
      `schema must be a plain identifier (letters, digits, _; at most 63 characters), got ${JSON.stringify(schema)}`,
    );
  }
}

export function schemaNames(schema: string): SchemaNames {
  checkSchemaName(schema);
  return { schema: `"${schema}"`, lockSpace: `hashtext('tokenwarden:${schema}')` };
}

// Text columns are COLLATE "C": ordering (ids, names) is by bytes whatever the database's locale,
// as in the SQLite store, and the lock order of counter rows is the same for every session.
export const POSTGRES_MIGRATIONS: readonly PostgresMigration[] = [
  {
    version: 1,
    name: 'ledger-counters-holds',
    up: ({ schema: s, lockSpace }) => `
      CREATE TABLE ${s}.ledger (
        id                    text COLLATE "C" NOT NULL PRIMARY KEY,
        ts                    bigint           NOT NULL,
        agent                 text COLLATE "C" NOT NULL,
        key_id                text COLLATE "C",
        model                 text COLLATE "C",
        stream                boolean          NOT NULL,
        outcome               text COLLATE "C" NOT NULL,
        status                integer          NOT NULL,
        reserved              bigint           NOT NULL,
        input_tokens          bigint           NOT NULL,
        output_tokens         bigint           NOT NULL,
        cache_creation_tokens bigint           NOT NULL,
        cache_read_tokens     bigint           NOT NULL,
        counted               bigint           NOT NULL,
        cost_usd              double precision,
        latency_ms            double precision,
        upstream_request_id   text,
        block_reason          text,
        usage_source          text COLLATE "C" NOT NULL,
        metadata              jsonb            NOT NULL DEFAULT '{}'
      );
      -- id closes each index so "newest first by ts, then id" needs no sort.
      CREATE INDEX ledger_ts ON ${s}.ledger (ts, id);
      CREATE INDEX ledger_agent_ts ON ${s}.ledger (agent, ts, id);
      CREATE INDEX ledger_model_ts ON ${s}.ledger (model, ts, id);
      CREATE INDEX ledger_outcome_ts ON ${s}.ledger (outcome, ts, id);

      CREATE TABLE ${s}.counters (
        series   text COLLATE "C" NOT NULL,
        bucket   bigint           NOT NULL,
        used     bigint           NOT NULL DEFAULT 0,
        reserved bigint           NOT NULL DEFAULT 0,
        PRIMARY KEY (series, bucket)
      );

      CREATE TABLE ${s}.holds (
        id         text COLLATE "C" NOT NULL PRIMARY KEY,
        owner      text COLLATE "C" NOT NULL,
        expires_at bigint           NOT NULL,
        -- [[series, bucket, amount], ...]: what settle and reclaim give back, in entry order.
        entries    jsonb            NOT NULL,
        -- The ledger row (column names as keys) written if the hold is reclaimed.
        draft      jsonb            NOT NULL
      );

      -- Admission. Whoever places a hold on a series first takes a transaction-level advisory lock
      -- on (schema, series), all of a request's series in key order, so checks on one series never
      -- interleave. Row locks on the counters alone would not do: a bucket row another session is
      -- inserting is invisible to FOR UPDATE, so two sessions creating two new buckets of one rolling
      -- window would each pass the check without seeing the other. Settle and reclaim only ever lower
      -- a window's total (or raise it by an overcharge, which no order would refuse) and need no such
      -- lock: each statement reads the latest committed counters, and updates are increments under
      -- row locks, so none is lost. Counter rows are always locked in (series, bucket) order.
      CREATE FUNCTION ${s}.tw_reserve(
        p_hold text, p_owner text, p_expires_at bigint, p_draft jsonb,
        p_series text[], p_bucket bigint[], p_from bigint[], p_limit bigint[], p_amount bigint[],
        OUT ok boolean, OUT entry integer, OUT used bigint, OUT reserved bigint, OUT after bigint[])
      LANGUAGE plpgsql AS $fn$
      DECLARE
        w record;
      BEGIN
        IF cardinality(p_bucket) <> cardinality(p_series) OR cardinality(p_from) <> cardinality(p_series)
           OR cardinality(p_limit) <> cardinality(p_series) OR cardinality(p_amount) <> cardinality(p_series) THEN
          RAISE EXCEPTION 'tw_reserve(%): entry arrays differ in length', p_hold USING ERRCODE = '22023';
        END IF;
        PERFORM pg_advisory_xact_lock(${lockSpace}, k.key)
          FROM (SELECT DISTINCT hashtext(x) AS key FROM unnest(p_series) AS x ORDER BY 1) AS k;
        after := '{}';
        FOR w IN
          SELECT e.i, e.lim, COALESCE(t.used, 0) AS used, COALESCE(t.reserved, 0) AS reserved,
                 -- What the hold adds to this window: its own amount and every other entry's that
                 -- lands in the same series at a bucket the window counts (hold-rules.ts windowAfter).
                 (SELECT COALESCE(SUM(o.amount), 0)
                    FROM unnest(p_series, p_bucket, p_amount) WITH ORDINALITY AS o(series, bucket, amount, j)
                   WHERE o.j = e.i OR (o.series = e.series AND o.bucket >= e.since))::bigint AS adding
            FROM unnest(p_series, p_from, p_limit) WITH ORDINALITY AS e(series, since, lim, i)
            LEFT JOIN LATERAL (
              SELECT SUM(c.used)::bigint AS used, SUM(c.reserved)::bigint AS reserved
                FROM ${s}.counters AS c WHERE c.series = e.series AND c.bucket >= e.since
            ) AS t ON true
           ORDER BY e.i
        LOOP
          IF w.lim IS NOT NULL AND w.used + w.reserved + w.adding > w.lim THEN
            ok := false;
            entry := w.i - 1;
            used := w.used;
            reserved := w.reserved;
            after := NULL;
            RETURN;
          END IF;
          after := after || (w.used + w.reserved + w.adding);
        END LOOP;
        INSERT INTO ${s}.counters AS c (series, bucket, reserved)
          SELECT o.series, o.bucket, SUM(o.amount)
            FROM unnest(p_series, p_bucket, p_amount) AS o(series, bucket, amount)
           GROUP BY o.series, o.bucket
           ORDER BY o.series COLLATE "C", o.bucket
        ON CONFLICT (series, bucket) DO UPDATE SET reserved = c.reserved + excluded.reserved;
        INSERT INTO ${s}.holds (id, owner, expires_at, entries, draft)
          SELECT p_hold, p_owner, p_expires_at,
                 COALESCE(jsonb_agg(jsonb_build_array(o.series, o.bucket, o.amount) ORDER BY o.j), '[]'),
                 p_draft
            FROM unnest(p_series, p_bucket, p_amount) WITH ORDINALITY AS o(series, bucket, amount, j);
        ok := true;
      END
      $fn$;

      -- Replace a hold by its charges and append the ledger row. A hold already settled or reclaimed
      -- (DELETE finds nothing, after waiting for whoever has it) leaves the counters alone.
      CREATE FUNCTION ${s}.tw_settle(p_hold text, p_charges bigint[], p_row jsonb)
      RETURNS void LANGUAGE plpgsql AS $fn$
      DECLARE
        v_entries jsonb;
        n integer;
      BEGIN
        DELETE FROM ${s}.holds WHERE id = p_hold RETURNING entries INTO v_entries;
        IF FOUND THEN
          n := jsonb_array_length(v_entries);
          IF cardinality(p_charges) IS DISTINCT FROM n THEN
            RAISE EXCEPTION 'settle(%): % charges for a hold of % entries',
              p_hold, COALESCE(cardinality(p_charges), 0), n USING ERRCODE = '22023';
          END IF;
          IF n > 1 THEN
            PERFORM 1 FROM ${s}.counters AS c
              WHERE (c.series, c.bucket) IN (SELECT e->>0, (e->>1)::bigint FROM jsonb_array_elements(v_entries) AS e)
              ORDER BY c.series, c.bucket FOR UPDATE;
          END IF;
          UPDATE ${s}.counters AS c SET used = c.used + d.charge, reserved = c.reserved - d.amount
            FROM (SELECT e.value->>0 AS series, (e.value->>1)::bigint AS bucket,
                         SUM((e.value->>2)::bigint) AS amount, SUM(p_charges[e.j]) AS charge
                    FROM jsonb_array_elements(v_entries) WITH ORDINALITY AS e(value, j)
                   GROUP BY 1, 2) AS d
           WHERE c.series = d.series AND c.bucket = d.bucket;
        END IF;
        INSERT INTO ${s}.ledger SELECT * FROM jsonb_populate_record(NULL::${s}.ledger, p_row)
          ON CONFLICT (id) DO NOTHING;
      END
      $fn$;

      -- Charge in full every hold expired by p_now or owned by another than p_keep (when not null),
      -- and write their drafts. SKIP LOCKED: a hold being settled, or taken by another replica's
      -- reclaim, is theirs.
      CREATE FUNCTION ${s}.tw_reclaim(p_now bigint, p_keep text)
      RETURNS integer LANGUAGE plpgsql AS $fn$
      DECLARE
        v_count integer;
        v_entries jsonb;
        v_drafts jsonb;
      BEGIN
        WITH taken AS (
          DELETE FROM ${s}.holds AS h
           WHERE h.id IN (SELECT id FROM ${s}.holds WHERE expires_at <= p_now OR owner <> p_keep
                          FOR UPDATE SKIP LOCKED)
          RETURNING h.entries, h.draft
        )
        SELECT count(*), jsonb_agg(entries), jsonb_agg(draft) INTO v_count, v_entries, v_drafts FROM taken;
        IF v_count = 0 THEN
          RETURN 0;
        END IF;
        PERFORM 1 FROM ${s}.counters AS c
          WHERE (c.series, c.bucket) IN (
            SELECT e->>0, (e->>1)::bigint
              FROM jsonb_array_elements(v_entries) AS h(entries), jsonb_array_elements(h.entries) AS e)
          ORDER BY c.series, c.bucket FOR UPDATE;
        UPDATE ${s}.counters AS c SET used = c.used + d.amount, reserved = c.reserved - d.amount
          FROM (SELECT e->>0 AS series, (e->>1)::bigint AS bucket, SUM((e->>2)::bigint) AS amount
                  FROM jsonb_array_elements(v_entries) AS h(entries), jsonb_array_elements(h.entries) AS e
                 GROUP BY 1, 2) AS d
         WHERE c.series = d.series AND c.bucket = d.bucket;
        INSERT INTO ${s}.ledger
          SELECT r.* FROM jsonb_array_elements(v_drafts) AS d(draft),
                          jsonb_populate_record(NULL::${s}.ledger, d.draft) AS r
          ON CONFLICT (id) DO NOTHING;
        RETURN v_count;
      END
      $fn$;
    `,
  },
  {
    version: 2,
    name: 'alerts-emergencies-settings-keys',
    up: ({ schema: s }) => `
      CREATE TABLE ${s}.alerts (
        id          text COLLATE "C" NOT NULL PRIMARY KEY,
        level       text COLLATE "C" NOT NULL,
        budget      text COLLATE "C" NOT NULL,
        -- "window" is a keyword in SQLite and PostgreSQL.
        window_name text COLLATE "C" NOT NULL,
        -- Start (ms) of the window period: an alert fires once per (budget, window, level, period).
        period      bigint           NOT NULL,
        percent     double precision NOT NULL,
        at          bigint           NOT NULL,
        message     text             NOT NULL,
        UNIQUE (budget, window_name, level, period)
      );
      -- id closes the index so "newest first by at, then id" needs no sort.
      CREATE INDEX alerts_at ON ${s}.alerts (at, id);

      CREATE TABLE ${s}.emergencies (
        budget text COLLATE "C" NOT NULL PRIMARY KEY,
        since  bigint           NOT NULL,
        -- NULL: until an operator resumes.
        until  bigint,
        reason text             NOT NULL,
        manual boolean          NOT NULL
      );

      CREATE TABLE ${s}.settings (
        key   text COLLATE "C" NOT NULL PRIMARY KEY,
        value text             NOT NULL
      );

      CREATE TABLE ${s}.virtual_keys (
        id         text COLLATE "C" NOT NULL PRIMARY KEY,
        -- SHA-256 hex of the key; the key itself is never stored.
        hash       text COLLATE "C" NOT NULL UNIQUE,
        prefix     text             NOT NULL,
        agent      text COLLATE "C" NOT NULL,
        -- Object of per-key limits, or NULL for none.
        limits     jsonb,
        created_at bigint           NOT NULL,
        revoked_at bigint
      );
    `,
  },
];

/** The schema version this build writes. */
export const POSTGRES_LATEST_VERSION = POSTGRES_MIGRATIONS.length;

/**
 * Brings `schema` (created if missing) to the latest version of `migrations`, in one transaction on
 * `client` under an advisory lock, so concurrent callers (replicas starting together) all succeed and
 * each migration runs once. Idempotent. Rejects with PostgresSchemaTooNewError, changing nothing, when
 * the schema is newer than `migrations`; on any failure nothing of this call is kept. `client` must
 * not be inside a transaction.
 */
export async function migratePostgres(
  client: pg.ClientBase,
  schema: string,
  migrations: readonly PostgresMigration[] = POSTGRES_MIGRATIONS,
): Promise<PostgresMigrationResult> {
  const names = schemaNames(schema);
  migrations.forEach((m, i) => {
    if (m.version !== i + 1)
      throw new Error(`migration ${m.name} has version ${m.version}, expected ${i + 1}`);
  });
  const s = names.schema;
  await client.query('BEGIN');
  try {
    // The single-bigint advisory key space; admission locks use the two-integer one, which never
    // overlaps it.
    await client.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [
      `tokenwarden:migrate:${schema}`,
    ]);
    // Checked before creating anything: a schema that is up to date needs no CREATE privilege.
    const found = await client.query<{ ns: boolean; table: boolean }>(
      'SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS ns, ' +
        'to_regclass($2) IS NOT NULL AS table',
      [schema, `${s}.schema_migrations`],
    );
    const row = found.rows[0];
    if (row?.ns !== true) await client.query(`CREATE SCHEMA ${s}`);
    if (row?.table !== true) {
      await client.query(
        `CREATE TABLE ${s}.schema_migrations (` +
          'version integer NOT NULL PRIMARY KEY, name text NOT NULL, ' +
          'applied_at timestamptz NOT NULL DEFAULT now())',
      );
    }
    const current = await client.query<{ version: number }>(
      `SELECT COALESCE(MAX(version), 0) AS version FROM ${s}.schema_migrations`,
    );
    const from = current.rows[0]?.version ?? 0;
    if (from > migrations.length) throw new PostgresSchemaTooNewError(schema, from, migrations.length);
    const applied: string[] = [];
    for (const m of migrations.slice(from)) {
      await client.query(m.up(names));
      await client.query(`INSERT INTO ${s}.schema_migrations (version, name) VALUES ($1, $2)`, [
        m.version,
        m.name,
      ]);
      applied.push(m.name);
    }
    await client.query('COMMIT');
    return { from, to: migrations.length, applied };
  } catch (err) {
    // A failed ROLLBACK (connection gone) must not hide the error that caused it.
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}
