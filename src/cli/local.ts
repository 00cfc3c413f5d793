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
 * `database`) and open its SQLite database, which a running gateway may share (WAL). On a bad
 * configuration prints every problem and exits with code 2; when the database cannot be opened,
 * prints why and exits with code 1. Never returns without a usable store.
 */
export function openLocal(flags: LocalFlags): Local {
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
  let store: SqliteStore;
  try {
    store = openSqliteStore({ path: config.database });
  } catch (err) {
    process.stderr.write(`tokenwarden: cannot open database ${config.database}: ${(err as Error).message}\n`);
    process.exit(1);
  }
  return { config, store, close: () => store.close() };
}
