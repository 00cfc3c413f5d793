export {
  migratePostgres,
  POSTGRES_LATEST_VERSION,
  POSTGRES_MIGRATIONS,
  type PostgresMigration,
  type PostgresMigrationResult,
  PostgresSchemaTooNewError,
} from './migrations.js';
export { openPostgresStore, type PostgresStore, type PostgresStoreOptions } from './postgres-store.js';
