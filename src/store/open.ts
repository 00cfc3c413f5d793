/**
 * Which store a configuration means: a SQLite file (one instance), PostgreSQL (several replicas), and
 * optionally Redis in front of either for the counters and holds. The gateway and the local CLI
 * commands open their store here, so both always agree.
 */
import type { Store } from './ports.js';
import { openPostgresStore } from './postgres/postgres-store.js';
import { openRedisStore, type RedisStore, redactUrl } from './redis/redis-store.js';
import { openSqliteStore } from './sqlite/sqlite-store.js';

export interface StoreConfig {
  database: string;
  databaseSchema: string;
  redis?: string | undefined;
  redisPrefix: string;
}

export interface OpenedStore {
  store: Store;
  /** Several processes may share this store (PostgreSQL or Redis): never reclaim another's live holds. */
  shared: boolean;
  /** The Redis store, when the counters live in Redis. */
  redis: RedisStore | null;
  /** `sqlite ./tokenwarden.db`, `postgres postgres://…` (password hidden), plus ` + redis …`. */
  description: string;
}

export function isPostgresUrl(database: string): boolean {
  return /^postgres(ql)?:\/\//.test(database);
}

/** The database setting for messages: a URL's password is hidden. */
export function describeDatabase(database: string): string {
  return isPostgresUrl(database) ? redactUrl(database) : database;
}

export async function openStore(
  config: StoreConfig,
  opts: {
    onError?: (source: 'postgres' | 'redis', err: Error) => void;
    onRedisConnection?: (connected: boolean) => void;
  } = {},
): Promise<OpenedStore> {
  const postgres = isPostgresUrl(config.database);
  const ledger: Store = postgres
    ? await openPostgresStore({
        url: config.database,
        schema: config.databaseSchema,
        onError: (err) => opts.onError?.('postgres', err),
      })
    : openSqliteStore({ path: config.database });
  let description = `${postgres ? 'postgres' : 'sqlite'} ${describeDatabase(config.database)}`;
  if (config.redis === undefined) return { store: ledger, shared: postgres, redis: null, description };
  let redis: RedisStore;
  try {
    redis = await openRedisStore({
      url: config.redis,
      prefix: config.redisPrefix,
      ledger,
      onError: (err) => opts.onError?.('redis', err),
      ...(opts.onRedisConnection ? { onConnectionChange: opts.onRedisConnection } : {}),
    });
  } catch (err) {
    await ledger.close().catch(() => undefined);
    throw err;
  }
  description += ` + redis ${redactUrl(config.redis)} (prefix ${config.redisPrefix})`;
  return { store: redis, shared: true, redis, description };
}
