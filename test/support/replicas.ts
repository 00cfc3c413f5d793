/**
 * Several real gateway processes (bin/tokenwarden.js serve) on one PostgreSQL schema, with or without
 * one Redis prefix, as a load balancer would see them. Each test gets a fresh schema and prefix,
 * dropped and deleted afterwards.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SummaryDoc } from '../../src/service/summary.js';
import { openStore } from '../../src/store/open.js';
import { dropSchema, POSTGRES_URL, uniqueSchema } from './postgres.js';
import { deletePrefix, uniquePrefix } from './redis.js';
import { type Served, serve } from './serve.js';

export type Replica = Served;

export interface ReplicaSet {
  replicas: Replica[];
  schema: string;
  prefix: string | null;
  config: Record<string, unknown>;
  /** The config file every replica was started with (for running the CLI on the same store). */
  configPath: string;
  summary(i: number): Promise<SummaryDoc>;
  post(i: number, path: string, body?: unknown): Promise<Response>;
  /** Holds left in the shared store (Redis when used, else PostgreSQL). */
  holdCount(): Promise<number>;
  /** Ledger rows in PostgreSQL. */
  ledgerCount(): Promise<number>;
  /** Starts one more replica on the same store. */
  add(): Promise<Replica>;
  close(): Promise<void>;
}

function serveReplica(configPath: string): Promise<Replica> {
  return serve(['--config', configPath, '--port', '0'], { timeoutMs: 30_000 });
}

/** Starts `n` replicas at once on a new, empty schema (and a new Redis prefix when `redis` is given). */
export async function startReplicas(
  n: number,
  opts: { upstream: string; redis?: string; config?: Record<string, unknown> },
): Promise<ReplicaSet> {
  const schema = uniqueSchema('tw_rep');
  const prefix = opts.redis ? uniquePrefix('twrep') : null;
  const dir = mkdtempSync(join(tmpdir(), 'tokenwarden-replicas-'));
  const config: Record<string, unknown> = {
    database: POSTGRES_URL,
    databaseSchema: schema,
    upstream: opts.upstream,
    logLevel: 'warn',
    ...(opts.redis ? { redis: opts.redis, redisPrefix: prefix } : {}),
    ...opts.config,
  };
  const configPath = join(dir, 'config.json');
  writeFileSync(configPath, JSON.stringify(config));
  const started = await Promise.allSettled(Array.from({ length: n }, () => serveReplica(configPath)));
  const replicas = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const storeConfig = {
    database: POSTGRES_URL,
    databaseSchema: schema,
    redis: opts.redis,
    redisPrefix: prefix ?? 'unused',
  };
  const close = async () => {
    await Promise.all(
      replicas.map(async (r) => {
        if (r.proc.exitCode === null && r.proc.signalCode === null) {
          r.proc.kill('SIGTERM');
          await Promise.race([r.exited, new Promise((res) => setTimeout(res, 10_000))]);
          r.proc.kill('SIGKILL');
        }
      }),
    );
    await dropSchema(schema).catch(() => undefined);
    if (prefix && opts.redis) await deletePrefix(prefix, opts.redis).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  };
  const failed = started.filter((r) => r.status === 'rejected');
  if (failed.length > 0) {
    await close();
    throw new Error(
      `${failed.length} of ${n} replicas did not start: ${(failed[0] as PromiseRejectedResult).reason}`,
    );
  }
  const withStore = async <T>(fn: (s: Awaited<ReturnType<typeof openStore>>['store']) => Promise<T>) => {
    const { store } = await openStore(storeConfig);
    try {
      return await fn(store);
    } finally {
      await store.close();
    }
  };
  const at = (i: number) => {
    const r = replicas[i];
    if (!r) throw new Error(`no replica ${i}`);
    return r;
  };
  return {
    replicas,
    schema,
    prefix,
    config,
    configPath,
    async summary(i) {
      const res = await fetch(`${at(i).url}/api/token-usage/summary`);
      if (!res.ok) throw new Error(`summary of replica ${i}: ${res.status} ${await res.text()}`);
      return (await res.json()) as SummaryDoc;
    },
    post(i, path, body = {}) {
      return fetch(`${at(i).url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    },
    holdCount: () => withStore((s) => s.holdCount()),
    ledgerCount: () => withStore((s) => s.countLedger({})),
    async add() {
      const r = await serveReplica(configPath);
      replicas.push(r);
      return r;
    },
    close,
  };
}
