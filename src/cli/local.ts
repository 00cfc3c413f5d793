import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { counterPlaceMismatch, describeDatabase, isPostgresUrl, openStore } from '../store/open.js';
import type { Store } from '../store/ports.js';
import type { RedisStore } from '../store/redis/redis-store.js';
import { openSqliteStore, type SqliteStore } from '../store/sqlite/sqlite-store.js';

/** Flags shared by the commands that work on the local database (keys, status, reset, export…). */
export interface LocalFlags {
  config?: string;
  db?: string;
  redis?: string;
}

export interface Local {
  config: Config;
  store: Store;
  /** The SQLite store, when the database is a SQLite file (backups and restores work on it). */
  sqlite: SqliteStore | null;
  close(): Promise<void>;
}

/** Add `--config` and `--db` to a local command, with the same meaning as for `serve`. */
export function localOptions(cmd: Command): Command {
  return cmd
    .option('--config <file>', 'config file (default ./tokenwarden.config.json if present)')
    .option('--db <path>', 'SQLite database file (default ./tokenwarden.db) or postgres:// URL')
    .option('--redis <url>', 'Redis URL, when the gateways keep their counters there');
}

/**
 * Load the configuration exactly as `serve` does (defaults → file → env → flags, `--db` being
 * `database`). On a bad configuration prints every problem and exits with code 2.
 */
export function loadLocalConfig(flags: LocalFlags): Config {
  const loaded = loadConfig({ configPath: flags.config, flags: { database: flags.db, redis: flags.redis } });
  if (!loaded.ok) {
    process.stderr.write(
      `tokenwarden: invalid configuration:\n${loaded.errors.map((e) => `  - ${e}`).join('\n')}\n`,
    );
    process.exit(2);
  }
  const { config } = loaded;
  return config;
}

/** The database file was expected to exist (a command that reads usage) and does not. */
export class MissingDatabaseError extends Error {
  constructor(readonly path: string) {
    super(
      `no database at ${path} (has the gateway run with this database? ` +
        'pass --db or --config, or --url to ask a running gateway)',
    );
    this.name = 'MissingDatabaseError';
  }
}

/**
 * Open (migrating if needed) the database of `config`: the SQLite file, or PostgreSQL (with Redis for
 * the counters when configured), exactly as `serve` does. With `mustExist`, a missing SQLite file is
 * a MissingDatabaseError rather than a new empty database: reading the usage of a database nobody has
 * written is almost always a wrong path. Rejects when the database cannot be opened.
 */
export async function openConfiguredStore(
  config: Config,
  opts: { mustExist?: boolean } = {},
): Promise<{ store: Store; sqlite: SqliteStore | null; redis: RedisStore | null }> {
  if (isPostgresUrl(config.database)) {
    const { store, redis } = await openStore(config);
    // Reading (or resetting) other counters than the gateways' would mislead the operator.
    const mismatch = await counterPlaceMismatch(store, config).catch(async (err: unknown) => {
      await store.close();
      throw err;
    });
    if (mismatch) {
      await store.close();
      throw new Error(mismatch.message);
    }
    return { store, sqlite: null, redis };
  }
  if (opts.mustExist && config.database !== ':memory:' && !existsSync(config.database)) {
    throw new MissingDatabaseError(resolve(config.database));
  }
  if (config.redis) {
    const { store, redis } = await openStore(config);
    return { store, sqlite: null, redis };
  }
  const sqlite = openSqliteStore({ path: config.database });
  return { store: sqlite, sqlite, redis: null };
}

/** `database /abs/path.db` or `database postgres://…` (password hidden), for messages. */
export function databaseTarget(config: Config): string {
  return `database ${isPostgresUrl(config.database) ? describeDatabase(config.database) : resolve(config.database)}`;
}

/**
 * Load the configuration like {@link loadLocalConfig} and open its database, which a running gateway
 * may share. When the database cannot be opened, prints why and exits with code 1. Never returns
 * without a usable store.
 */
export async function openLocal(flags: LocalFlags, opts: { mustExist?: boolean } = {}): Promise<Local> {
  const config = loadLocalConfig(flags);
  try {
    const { store, sqlite } = await openConfiguredStore(config, opts);
    return { config, store, sqlite, close: () => store.close() };
  } catch (err) {
    const message =
      err instanceof MissingDatabaseError
        ? err.message
        : `cannot open database ${describeDatabase(config.database)}: ${(err as Error).message}`;
    process.stderr.write(`tokenwarden: ${message}\n`);
    process.exit(1);
  }
}
