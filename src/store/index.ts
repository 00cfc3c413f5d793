export { createMemoryStore, type MemoryStoreOptions } from './memory/memory-store.js';
export type * from './ports.js';
export {
  LATEST_VERSION,
  MIGRATIONS,
  type Migration,
  type MigrationResult,
  migrate,
  SchemaTooNewError,
} from './sqlite/migrations.js';
export { openSqliteStore, type SqliteStore, type SqliteStoreOptions } from './sqlite/sqlite-store.js';
