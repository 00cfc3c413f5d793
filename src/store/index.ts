export { createMemoryStore, type MemoryStoreOptions } from './memory/memory-store.js';
export type * from './ports.js';
export {
  migratePostgres,
  openPostgresStore,
  POSTGRES_LATEST_VERSION,
  POSTGRES_MIGRATIONS,
  type PostgresMigration,
  type PostgresMigrationResult,
  PostgresSchemaTooNewError,
  type PostgresStore,
  type PostgresStoreOptions,
} from './postgres/index.js';
export {
  type CounterSeed,
  openRedisStore,
  type RedisStore,
  type RedisStoreOptions,
  redactUrl,
} from './redis/redis-store.js';
export {
  LATEST_VERSION,
  MIGRATIONS,
  type Migration,
  type MigrationResult,
  migrate,
  SchemaTooNewError,
} from './sqlite/migrations.js';
export { openSqliteStore, type SqliteStore, type SqliteStoreOptions } from './sqlite/sqlite-store.js';
