/**
 * PostgreSQL for tests: the server of this machine (or TOKENWARDEN_TEST_POSTGRES_URL), one fresh
 * schema per test (random name, dropped with CASCADE afterwards), so tests never collide and never
 * flush anything shared. When the server is unreachable, suites declared with describePostgres fail
 * under CI=true and are skipped, with the reason, otherwise.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { beforeAll, describe } from 'vitest';
import { openPostgresStore, type PostgresStore, type PostgresStoreOptions } from '../../src/store/index.js';

export const POSTGRES_URL =
  process.env.TOKENWARDEN_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

const START_HINT =
  'start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, ' +
  'or point TOKENWARDEN_TEST_POSTGRES_URL at another server';

/** null when `url` answers `SELECT 1`, else why not. */
export async function probePostgres(url = POSTGRES_URL): Promise<string | null> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000 });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return null;
  } catch (err) {
    return err instanceof Error ? err.message || err.name : String(err);
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * Declares a suite that needs a service. Reachable (`probe` resolves null): `define` runs as usual.
 * Unreachable with CI=true: the suite fails in beforeAll with the reason. Otherwise it is skipped,
 * its name and a warning saying why.
 */
export async function describeWithService(
  service: { name: string; url: string; hint: string; probe: () => Promise<string | null> },
  name: string,
  define: () => void,
): Promise<void> {
  const problem = await service.probe();
  if (problem === null) {
    describe(name, define);
  } else if (process.env.CI === 'true') {
    describe(name, () => {
      beforeAll(() => {
        throw new Error(
          `${service.name} is required (CI=true) but unreachable at ${service.url}: ${problem}; ${service.hint}`,
        );
      });
      define();
    });
  } else {
    const reason = `${service.name} unreachable at ${service.url} (${problem}); set CI=true to fail instead`;
    console.warn(`[${name}] skipped: ${reason}; ${service.hint}`);
    describe.skip(`${name} [skipped: ${reason}]`, define);
  }
}

/** A suite that needs PostgreSQL (see describeWithService). */
export function describePostgres(name: string, define: () => void): Promise<void> {
  return describeWithService(
    { name: 'PostgreSQL', url: POSTGRES_URL, hint: START_HINT, probe: () => probePostgres() },
    name,
    define,
  );
}

/** A schema name no other test uses. */
export function uniqueSchema(prefix = 'tw_test'): string {
  return `${prefix}_${Date.now().toString(36)}_${randomBytes(5).toString('hex')}`;
}

/** Runs `fn` with a short-lived client of its own (for setup, inspection and cleanup). */
export async function withClient<T>(fn: (client: pg.Client) => Promise<T>, url = POSTGRES_URL): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  client.on('error', () => {});
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/** Drops `schema` and everything in it, if it exists. */
export async function dropSchema(schema: string): Promise<void> {
  await withClient((c) => c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`));
}

export interface PostgresFixture {
  store: PostgresStore;
  schema: string;
  /** Closes the store and drops its schema. */
  cleanup(): Promise<void>;
}

/** A store on a new schema of its own; `cleanup` closes it and drops the schema. */
export async function openTestStore(
  opts: Partial<Omit<PostgresStoreOptions, 'url'>> = {},
): Promise<PostgresFixture> {
  const schema = opts.schema ?? uniqueSchema();
  // Small pools: test files run in parallel against one server with a bounded max_connections.
  const store = await openPostgresStore({ poolSize: 4, ...opts, url: POSTGRES_URL, schema });
  return {
    store,
    schema,
    async cleanup() {
      try {
        await store.close();
      } finally {
        await dropSchema(schema);
      }
    },
  };
}
