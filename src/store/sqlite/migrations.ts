/**
 * Ordered, numbered schema migrations for the SQLite store. The schema version lives in
 * `PRAGMA user_version`; all pending migrations run in one write transaction, so a crash leaves the
 * file at the old version and several processes opening the same file apply them exactly once.
 * Append new migrations to the end of MIGRATIONS; never edit or reorder a released one.
 */
import type { Database } from 'better-sqlite3';

export interface Migration {
  /** 1, 2, 3, … with no gaps: the user_version the database has after this migration. */
  readonly version: number;
  readonly name: string;
  readonly up: (db: Database) => void;
}

export interface MigrationResult {
  /** Schema version found when opening. */
  from: number;
  /** Schema version after migrating. */
  to: number;
  /** Names of the migrations applied by this call, in order (empty when already current). */
  applied: string[];
}

/** The database was written by a newer tokenwarden with migrations this build does not know. */
export class SchemaTooNewError extends Error {
  constructor(
    readonly found: number,
    readonly known: number,
  ) {
    super(
      `database schema version ${found} is newer than this tokenwarden supports (${known}); ` +
        'upgrade tokenwarden or point it at another database file',
    );
    this.name = 'SchemaTooNewError';
  }
}

/**
 * What timeseries() sums of each ledger row, carried in ledger_ts by migration 3 so that the
 * unfiltered walk over a month of buckets reads the index alone.
 */
const TOTALS_COLUMNS =
  'counted, input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, cost_usd, outcome';

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'ledger-counters-holds',
    up(db) {
      db.exec(`
        CREATE TABLE ledger (
          id                    TEXT    NOT NULL PRIMARY KEY,
          ts                    INTEGER NOT NULL,
          agent                 TEXT    NOT NULL,
          key_id                TEXT,
          model                 TEXT,
          stream                INTEGER NOT NULL CHECK (stream IN (0, 1)),
          outcome               TEXT    NOT NULL,
          status                INTEGER NOT NULL,
          reserved              INTEGER NOT NULL,
          input_tokens          INTEGER NOT NULL,
          output_tokens         INTEGER NOT NULL,
          cache_creation_tokens INTEGER NOT NULL,
          cache_read_tokens     INTEGER NOT NULL,
          counted               INTEGER NOT NULL,
          cost_usd              REAL,
          latency_ms            REAL,
          upstream_request_id   TEXT,
          block_reason          TEXT,
          usage_source          TEXT    NOT NULL,
          metadata              TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
        );
        -- id closes each index so "newest first by ts, then id" needs no sort.
        CREATE INDEX ledger_ts ON ledger (ts, id);
        CREATE INDEX ledger_agent_ts ON ledger (agent, ts, id);
        CREATE INDEX ledger_model_ts ON ledger (model, ts, id);
        CREATE INDEX ledger_outcome_ts ON ledger (outcome, ts, id);

        CREATE TABLE counters (
          series   TEXT    NOT NULL,
          bucket   INTEGER NOT NULL,
          used     INTEGER NOT NULL DEFAULT 0,
          reserved INTEGER NOT NULL DEFAULT 0,
          PRIMARY KEY (series, bucket)
        ) WITHOUT ROWID;

        CREATE TABLE holds (
          id         TEXT    NOT NULL PRIMARY KEY,
          owner      TEXT    NOT NULL,
          expires_at INTEGER NOT NULL,
          -- JSON [[series, bucket, amount], ...]: what settle and reclaim give back, in entry order.
          entries    TEXT    NOT NULL,
          -- JSON LedgerRow written if the hold is reclaimed.
          draft      TEXT    NOT NULL
        );
        -- No index on expires_at: the table only holds in-flight requests, reclaim scanning it is
        -- cheap, and an index would cost two more page writes on every reserve and settle.
      `);
    },
  },
  {
    version: 2,
    name: 'alerts-emergencies-settings-keys',
    up(db) {
      db.exec(`
        CREATE TABLE alerts (
          id          TEXT    NOT NULL PRIMARY KEY,
          level       TEXT    NOT NULL,
          budget      TEXT    NOT NULL,
          -- "window" is a keyword in SQLite and PostgreSQL.
          window_name TEXT    NOT NULL,
          -- Start (ms) of the window period: an alert fires once per (budget, window, level, period).
          period      INTEGER NOT NULL,
          percent     REAL    NOT NULL,
          at          INTEGER NOT NULL,
          message     TEXT    NOT NULL,
          UNIQUE (budget, window_name, level, period)
        );
        -- id closes the index so "newest first by at, then id" needs no sort.
        CREATE INDEX alerts_at ON alerts (at, id);

        CREATE TABLE emergencies (
          budget TEXT    NOT NULL PRIMARY KEY,
          since  INTEGER NOT NULL,
          -- NULL: until an operator resumes.
          until  INTEGER,
          reason TEXT    NOT NULL,
          manual INTEGER NOT NULL CHECK (manual IN (0, 1))
        ) WITHOUT ROWID;

        CREATE TABLE settings (
          key   TEXT NOT NULL PRIMARY KEY,
          value TEXT NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE virtual_keys (
          id         TEXT    NOT NULL PRIMARY KEY,
          -- SHA-256 hex of the key; the key itself is never stored.
          hash       TEXT    NOT NULL UNIQUE,
          prefix     TEXT    NOT NULL,
          agent      TEXT    NOT NULL,
          -- JSON object of per-key limits, or NULL for none.
          limits     TEXT    CHECK (limits IS NULL OR json_valid(limits)),
          created_at INTEGER NOT NULL,
          revoked_at INTEGER
        );
      `);
    },
  },
  {
    version: 3,
    name: 'ledger-report-indexes',
    up(db) {
      // The operator reports (summary, timeseries) aggregate a month of ledger rows. Through the table
      // that means reading every row's page, and for GROUP BY sorting every row. So each ts index now
      // also carries what the reports read: ledger_ts the timeseries totals, the agent and model
      // indexes the counted tokens that groupLedger sums (and the outcome, so a count filtered by
      // agent or model and outcome reads the index alone). Wider entries cost a summary's groups
      // ~15% more to walk, hence not all totals there. The indexes replace ones of the same name and
      // leading columns, so every existing plan keeps its shape, rather than adding any: a ledger
      // insert still writes one entry per index, only a few bytes longer.
      db.exec(`
        DROP INDEX ledger_ts;
        DROP INDEX ledger_agent_ts;
        DROP INDEX ledger_model_ts;
        CREATE INDEX ledger_ts ON ledger (ts, id, ${TOTALS_COLUMNS});
        CREATE INDEX ledger_agent_ts ON ledger (agent, ts, id, counted, outcome);
        CREATE INDEX ledger_model_ts ON ledger (model, ts, id, counted, outcome);
      `);
      // Without statistics SQLite takes any ts range for a small one, and groups a month by agent
      // with a range scan and a sort of every row (~3x slower at 100k rows) instead of walking
      // ledger_agent_ts in agent order. Nothing runs ANALYZE on a gateway's ledger, so these are
      // the statistics of a typical one (a million rows, tens of agents, a few models and outcomes,
      // unique ids, near-unique timestamps), written as SQLite documents for steering the planner.
      // The price: groupLedger by agent over any range seeks once per distinct agent, so a ledger of
      // tens of thousands of agents (metadata.user_id per end user) pays ~1 ms per thousand agents
      // even for the last hour. A later ANALYZE or PRAGMA optimize replaces these with measured
      // statistics, which choose the same plans for tens of agents and a range scan for many.
      db.exec('ANALYZE sqlite_schema'); // creates sqlite_stat1 if missing
      db.prepare("DELETE FROM sqlite_stat1 WHERE tbl = 'ledger'").run();
      const hasStat4 = db.prepare("SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_stat4'").get();
      if (hasStat4) db.prepare("DELETE FROM sqlite_stat4 WHERE tbl = 'ledger'").run();
      // One number for the table, then rows per distinct value of each leading column prefix.
      const stat = (perPrefix: number[]) => ['1000000', ...perPrefix].join(' ');
      const ones = (n: number) => new Array<number>(n).fill(1);
      const insert = db.prepare("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('ledger', ?, ?)");
      insert.run('sqlite_autoindex_ledger_1', stat([1]));
      insert.run('ledger_ts', stat([2, ...ones(1 + TOTALS_COLUMNS.split(',').length)]));
      insert.run('ledger_agent_ts', stat([50_000, 2, 1, 1, 1]));
      insert.run('ledger_model_ts', stat([100_000, 2, 1, 1, 1]));
      insert.run('ledger_outcome_ts', stat([200_000, 2, 1]));
      // Makes this connection's planner load the rows just written.
      db.exec('ANALYZE sqlite_schema');
    },
  },
  {
    version: 4,
    name: 'ledger-append-only',
    up(db) {
      // A ledger row is written once and never changed or removed (a reset clears counters, not rows).
      // The timeseries report relies on it: it keeps the totals of whole buckets and only re-sums a
      // bucket that gained rows (control-store.ts). Whoever needs to prune the ledger must drop these
      // triggers and clear those totals. They cost nothing on insert.
      db.exec(`
        CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
        BEGIN SELECT RAISE(ABORT, 'ledger rows are never changed (the ledger is append-only)'); END;
        CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
        BEGIN SELECT RAISE(ABORT, 'ledger rows are never removed (the ledger is append-only)'); END;
      `);
    },
  },
];

/** The schema version this build writes. */
export const LATEST_VERSION = MIGRATIONS.length;

/**
 * Brings `db` to LATEST_VERSION. Idempotent; safe to call from several processes at once (the
 * write lock is taken before the version is read). Throws SchemaTooNewError, changing nothing, when
 * the file is newer than this build.
 */
export function migrate(db: Database, migrations: readonly Migration[] = MIGRATIONS): MigrationResult {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1)
      throw new Error(`migration ${m.name} has version ${m.version}, expected ${i + 1}`);
  });
  const run = db.transaction((): MigrationResult => {
    const from = db.pragma('user_version', { simple: true }) as number;
    if (from > migrations.length) throw new SchemaTooNewError(from, migrations.length);
    const applied: string[] = [];
    for (const m of migrations.slice(from)) {
      m.up(db);
      applied.push(m.name);
    }
    const to = migrations.length;
    if (to !== from) db.pragma(`user_version = ${to}`);
    return { from, to, applied };
  });
  return run.immediate();
}
