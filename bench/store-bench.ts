/**
 * Store benchmark: reserve+settle cycles of a 3-entry hold (month, day, hour), the shape of one
 * admitted request, each settle writing its ledger row. Each store runs them one at a time
 * (concurrency 1: the latency of a lone request) and, except memory, also from 32 concurrent loops
 * (the gateway under load, where the store can commit many operations together). Stores: memory,
 * SQLite (a temporary file), PostgreSQL (a temporary schema on TOKENWARDEN_BENCH_POSTGRES_URL, default
 * the local server) and Redis counters over that PostgreSQL ledger (a temporary key prefix on
 * TOKENWARDEN_BENCH_REDIS_URL). An unreachable server is reported as skipped. Reports throughput and
 * per-cycle latency.
 *
 *   node --import tsx bench/store-bench.ts
 */

import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import pg from 'pg';
import {
  createMemoryStore,
  openPostgresStore,
  openRedisStore,
  openSqliteStore,
  type PostgresStore,
} from '../src/store/index.js';
import type { BudgetStore, HoldEntry, LedgerRow } from '../src/store/ports.js';

export interface StoreBenchResult {
  store: 'memory' | 'sqlite' | 'postgres' | 'redis+postgres';
  /** Reserve+settle loops running at once, each awaiting its own reserve then settle. */
  concurrency: number;
  /** Measured reserve+settle cycles (after warm-up). */
  cycles: number;
  cyclesPerSec: number;
  /** Latency of one reserve+settle cycle, microseconds. */
  p50Us: number;
  p99Us: number;
  /** Process CPU time (user + system) per cycle, microseconds: steadier than wall time on a busy machine. */
  cpuUsPerCycle: number;
}

export interface StoreBenchOptions {
  memoryCycles?: number;
  sqliteCycles?: number;
  /** Cycles per PostgreSQL and Redis run (default 3000). */
  sharedCycles?: number;
  /** Loops of the concurrent SQLite run (default 32, the load scenario's connections); 0 skips it. */
  concurrency?: number;
}

const BASE_ROW: LedgerRow = {
  id: '',
  ts: 0,
  agent: 'bench',
  keyId: null,
  model: 'claude-sonnet-4-5',
  stream: true,
  outcome: 'ok',
  status: 200,
  reserved: 1000,
  inputTokens: 400,
  outputTokens: 200,
  cacheCreationTokens: 0,
  cacheReadTokens: 0,
  counted: 600,
  costUsd: 0.0042,
  latencyMs: 12,
  upstreamRequestId: 'req_bench',
  blockReason: null,
  usageSource: 'reported',
  metadata: { userAgent: 'bench' },
};

async function measure(
  store: BudgetStore,
  cycles: number,
  warmup: number,
  concurrency: number,
): Promise<Omit<StoreBenchResult, 'store'>> {
  const now = Date.now();
  const entries: HoldEntry[] = [
    { series: 'global|month', bucket: 0, from: 0, limit: Number.MAX_SAFE_INTEGER, amount: 1000 },
    { series: 'global|day', bucket: 0, from: 0, limit: Number.MAX_SAFE_INTEGER, amount: 1000 },
    { series: 'global|hour', bucket: 0, from: 0, limit: Number.MAX_SAFE_INTEGER, amount: 1000 },
  ];
  const charges = [600, 600, 600];
  const latencies = new Float64Array(cycles);
  let started = 0;
  let cpu = process.cpuUsage();
  // Cycles are numbered -warmup … cycles-1 and handed out in order to whichever loop is free.
  let next = -warmup;
  let measuring = false;
  const loop = async (): Promise<void> => {
    while (next < cycles) {
      const i = next++;
      if (i >= 0 && !measuring) {
        measuring = true;
        started = performance.now();
        cpu = process.cpuUsage();
      }
      const t0 = performance.now();
      const holdId = `bench-${i}`;
      const r = await store.reserve({
        holdId,
        entries,
        owner: 'bench',
        expiresAt: now + 600_000,
        draft: { ...BASE_ROW, id: holdId, ts: now, outcome: 'interrupted', usageSource: 'estimated' },
      });
      if (!r.ok) throw new Error('bench hold refused');
      await store.settle(holdId, charges, { ...BASE_ROW, id: holdId, ts: now });
      if (i >= 0) latencies[i] = performance.now() - t0;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  const elapsedMs = performance.now() - started;
  const cpuUsed = process.cpuUsage(cpu);
  latencies.sort();
  const pct = (p: number) => (latencies[Math.min(cycles - 1, Math.floor(p * cycles))] ?? 0) * 1000;
  return {
    concurrency,
    cycles,
    cyclesPerSec: Math.round((cycles / elapsedMs) * 1000),
    p50Us: pct(0.5),
    p99Us: pct(0.99),
    cpuUsPerCycle: (cpuUsed.user + cpuUsed.system) / cycles,
  };
}

/** Runs the benchmark against a fresh memory store and a fresh SQLite file (removed afterwards). */
export async function runStoreBench(opts: StoreBenchOptions = {}): Promise<StoreBenchResult[]> {
  const memoryCycles = opts.memoryCycles ?? 200_000;
  const sqliteCycles = opts.sqliteCycles ?? 20_000;
  const concurrency = opts.concurrency ?? 32;
  const sharedCycles = opts.sharedCycles ?? ((opts as { quick?: boolean }).quick ? 600 : 3000);
  const results: StoreBenchResult[] = [];

  const memory = createMemoryStore({ maxLedgerRows: 10_000 });
  results.push({ store: 'memory', ...(await measure(memory, memoryCycles, memoryCycles / 10, 1)) });
  await memory.close();

  // Each SQLite run gets a fresh file, so the second does not start with a bigger database.
  for (const c of concurrency > 1 ? [1, concurrency] : [1]) {
    const dir = mkdtempSync(join(tmpdir(), 'tokenwarden-store-bench-'));
    try {
      const sqlite = openSqliteStore({ path: join(dir, 'bench.db') });
      try {
        results.push({ store: 'sqlite', ...(await measure(sqlite, sqliteCycles, sqliteCycles / 10, c)) });
      } finally {
        await sqlite.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  // Shared stores: PostgreSQL alone, then Redis counters over a PostgreSQL ledger (as deployed).
  const pgUrl = process.env.TOKENWARDEN_BENCH_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
  const redisUrl = process.env.TOKENWARDEN_BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';
  for (const kind of ['postgres', 'redis+postgres'] as const) {
    for (const c of concurrency > 1 ? [1, concurrency] : [1]) {
      const schema = `tw_bench_${randomBytes(5).toString('hex')}`;
      const prefix = `twbench-${randomBytes(5).toString('hex')}`;
      let ledger: PostgresStore | null = null;
      try {
        ledger = await openPostgresStore({ url: pgUrl, schema, poolSize: Math.min(c, 16) });
        let store: BudgetStore = ledger;
        if (kind === 'redis+postgres') {
          const redis = await openRedisStore({ url: redisUrl, prefix, ledger });
          // A new prefix over a new, empty ledger: the counters start empty.
          redis.setRebuilder(async () => []);
          store = redis;
        }
        try {
          results.push({ store: kind, ...(await measure(store, sharedCycles, sharedCycles / 10, c)) });
        } finally {
          await store.close();
        }
      } catch (err) {
        await ledger?.close().catch(() => undefined);
        console.log(`  ${kind} (${c} loops) skipped: ${(err as Error).message}`);
      } finally {
        await cleanupShared(pgUrl, schema, redisUrl, kind === 'redis+postgres' ? prefix : null);
      }
    }
  }
  return results;
}

/** Drops the bench schema and deletes the bench key prefix (nothing else). */
async function cleanupShared(pgUrl: string, schema: string, redisUrl: string, prefix: string | null) {
  const client = new pg.Client({ connectionString: pgUrl, connectionTimeoutMillis: 3000 });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } catch {
    // unreachable: nothing was created
  } finally {
    await client.end().catch(() => undefined);
  }
  if (!prefix) return;
  const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 0 });
  redis.on('error', () => {});
  try {
    await redis.connect();
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `{${prefix}}:*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) await redis.del(...keys);
    } while (cursor !== '0');
  } catch {
    // unreachable: nothing was created
  } finally {
    redis.disconnect();
  }
}

/** The results as a fixed-width table. */
export function formatStoreBench(results: readonly StoreBenchResult[]): string {
  const head = ['store', 'loops', 'cycles', 'reserve+settle/s', 'p50 µs', 'p99 µs', 'CPU µs/cycle'];
  const rows = results.map((r) => [
    r.store,
    String(r.concurrency),
    String(r.cycles),
    r.cyclesPerSec.toLocaleString('en-US'),
    r.p50Us.toFixed(1),
    r.p99Us.toFixed(1),
    r.cpuUsPerCycle.toFixed(1),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
  return [line(head), ...rows.map(line)].join('\n');
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(formatStoreBench(await runStoreBench()));
}
