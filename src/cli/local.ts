import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { openSqliteStore, type SqliteStore } from '../store/sqlite/sqlite-store.js';

/** Flags shared by the commands that work on the local database (keys, status, reset, export…). */
export interface LocalFlags {
  config?: string;
  db?: string;
}

export interface Local {
  config: Config;
  store: SqliteStore;
  close(): Promise<void>;
}

/** Add `--config` and `--db` to a local command, with the same meaning as for `serve`. */
export function localOptions(cmd: Command): Command {
  return cmd
    .option('--config <file>', 'config file (default ./tokenwarden.config.json if present)')
    .option('--db <path>', 'SQLite database file (default ./tokenwarden.db)');
}

/**
 * Load the configuration exactly as `serve` does (defaults → file → env → flags, `--db` being
 * `database`). On a bad configuration prints every problem and exits with code 2.
 */
export function loadLocalConfig(flags: LocalFlags): Config {
  const loaded = loadConfig({ configPath: flags.config, flags: { database: flags.db } });
  if (!loaded.ok) {
    process.stderr.write(
      `tokenwarden: invalid configuration:\n${loaded.errors.map((e) => `  - ${e}`).join('\n')}\n`,
    );
    process.exit(2);
  }
  const { config } = loaded;
  if (/^postgres(ql)?:\/\//.test(config.database)) {
    // Otherwise SQLite would create a file named after the URL.
    process.stderr.write(
      'tokenwarden: invalid configuration:\n' +
        '  - database: PostgreSQL is not available in this version; use a SQLite file path\n',
    );
    process.exit(2);
  }
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
 * Open (migrating if needed) the SQLite database of `config`. With `mustExist`, a missing file is a
 * MissingDatabaseError rather than a new empty database: reading the usage of a database nobody has
 * written is almost always a wrong path. Throws when the file cannot be opened.
 */
export function openConfiguredStore(config: Config, opts: { mustExist?: boolean } = {}): SqliteStore {
  if (opts.mustExist && config.database !== ':memory:' && !existsSync(config.database)) {
    throw new MissingDatabaseError(resolve(config.database));
  }
  return openSqliteStore({ path: config.database });
}

/**
 * Load the configuration like {@link loadLocalConfig} and open its SQLite database, which a running
 * gateway may share (WAL). When the database cannot be opened, prints why and exits with code 1.
 * Never returns without a usable store.
 */
export function openLocal(flags: LocalFlags, opts: { mustExist?: boolean } = {}): Local {
  const config = loadLocalConfig(flags);
  let store: SqliteStore;
  try {
    store = openConfiguredStore(config, opts);
  } catch (err) {
    const message =
      err instanceof MissingDatabaseError
        ? err.message
        : `cannot open database ${config.database}: ${(err as Error).message}`;
    process.stderr.write(`tokenwarden: ${message}\n`);
    process.exit(1);
  }
  return { config, store, close: () => store.close() };
}
