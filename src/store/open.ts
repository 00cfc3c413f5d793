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
    /** SQLite: checkpoint the WAL from a worker thread (a long-running gateway). */
    backgroundCheckpoints?: boolean;
  } = {},
): Promise<OpenedStore> {
  const postgres = isPostgresUrl(config.database);
  const ledger: Store = postgres
    ? await openPostgresStore({
        url: config.database,
        schema: config.databaseSchema,
        onError: (err) => opts.onError?.('postgres', err),
      })
    : openSqliteStore({ path: config.database, backgroundCheckpoints: opts.backgroundCheckpoints === true });
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

/** Setting where a gateway records where its window counters live (the database, or Redis). */
export const COUNTERS_SETTING = 'counters';

/** What a gateway on `config` writes in COUNTERS_SETTING. */
export function counterPlace(config: Pick<StoreConfig, 'redis' | 'redisPrefix'>): string {
  return JSON.stringify(
    config.redis ? { store: 'redis', prefix: config.redisPrefix } : { store: 'database' },
  );
}

/**
 * Whether this process would use the same window counters as the gateways that last ran on this
 * database: null if so (or nothing is recorded), else why not. `intoRedis`: the others keep them in
 * the database and this one in Redis, which is safe (Redis rebuilds them from the ledger).
 */
export async function counterPlaceMismatch(
  store: Pick<Store, 'getSetting'>,
  config: StoreConfig,
): Promise<{ message: string; intoRedis: boolean } | null> {
  const raw = await store.getSetting(COUNTERS_SETTING);
  if (raw === null) return null;
  let place: { store?: string; prefix?: string };
  try {
    place = JSON.parse(raw) as typeof place;
  } catch {
    return null;
  }
  if (place.store === 'redis' && !config.redis) {
    return {
      intoRedis: false,
      message:
        `the gateways on this database keep their counters in Redis (prefix ${place.prefix}); ` +
        'pass --redis (or "redis" in the config), or ask a gateway with --url',
    };
  }
  if (place.store === 'redis' && place.prefix !== config.redisPrefix) {
    return {
      intoRedis: false,
      message:
        `the gateways on this database use the Redis prefix ${place.prefix}, not ${config.redisPrefix}; ` +
        'set "redisPrefix" to match',
    };
  }
  if (place.store === 'database' && config.redis) {
    return {
      intoRedis: true,
      message: 'the gateways on this database keep their counters in it, not in Redis; drop --redis',
    };
  }
  return null;
}
