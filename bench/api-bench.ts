/**
 * Operator API benchmark: over a synthetic 100,000-row ledger, `GET /api/token-usage/summary`,
 * `/requests` and `/timeseries` must each answer in under 50 ms. The ledger is written through the
 * real SQLite store (rows with appendLedger, window counters with reserve+settle), then the real
 * gateway is started in-process on that file and each endpoint is timed over HTTP, sequentially,
 * after a warm-up. Wall time is the target; CPU time per request is shown beside it because on a
 * shared 2-core machine wall time mostly measures the neighbours.
 *
 *   node --import tsx bench/api-bench.ts [--rows N] [--iterations N] [--quick]
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { Client } from 'undici';
import { planAdmission } from '../src/budget/admission.js';
import type { WindowSlot } from '../src/budget/types.js';
import { WindowResolver } from '../src/budget/windows.js';
import { parseConfig } from '../src/config/load.js';
import type { BudgetConfig } from '../src/config/schema.js';
import { createLogger } from '../src/logger.js';
import { startGateway } from '../src/main.js';
import { toBudgetDefs } from '../src/service/operator.js';
import type { LedgerRow, Outcome } from '../src/store/ports.js';
import { openSqliteStore } from '../src/store/sqlite/sqlite-store.js';

/** The target: every operator read answers in under this many ms. */
export const API_TARGET_MS = 50;

/** Ledger rows written at the gateway's clock before each round (live traffic). */
const LIVE_ROWS_PER_ROUND = 5;

export interface ApiBenchOptions {
  /** Ledger rows to generate (default 100,000). */
  rows?: number;
  /** Timed requests per case, after the warm-up (default 30). */
  iterations?: number;
  /** Untimed requests per case first (default 5). */
  warmup?: number;
  /** Fewer iterations (run.ts --quick); the ledger keeps its full size, the target is about it. */
  quick?: boolean;
}

export interface ApiBenchCase {
  endpoint: 'summary' | 'requests' | 'timeseries';
  /** What the case asks for, e.g. `agent=researcher`. */
  variant: string;
  path: string;
  n: number;
  p50Ms: number;
  p95Ms: number;
  maxMs: number;
  /** The first request of the case, before the warm-up: cold statement, page and report caches. */
  firstMs: number;
  /**
   * Mean CPU time (user + system) of this process per request, ms: gateway and client together, the
   * gateway's share by far. Steadier than wall time when other work shares the cores.
   */
  cpuMs: number;
  /** Response body size, bytes (of the last request). */
  bytes: number;
  /** p95 under the target. */
  pass: boolean;
}

export interface ApiBenchResult {
  rows: number;
  targetMs: number;
  /** Wall time to write the ledger and counters, ms. */
  fillMs: number;
  /** Database file size after filling (main file + WAL), bytes. */
  dbBytes: number;
  cases: ApiBenchCase[];
  /** Every case's p95 under the target. */
  pass: boolean;
}

// ---------------------------------------------------------------------------------------------
// synthetic ledger

/** mulberry32: a small seeded PRNG, so every run benchmarks the same ledger. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pick<T>(rand: () => number, items: readonly (readonly [T, number])[]): T {
  let r = rand() * items.reduce((s, [, w]) => s + w, 0);
  for (const [item, w] of items) {
    r -= w;
    if (r < 0) return item;
  }
  return (items[items.length - 1] as readonly [T, number])[0];
}

/** Roughly log-normal token counts between lo and hi. */
function tokens(rand: () => number, lo: number, hi: number): number {
  const u = (rand() + rand() + rand()) / 3;
  return Math.round(lo * (hi / lo) ** u);
}

const AGENTS = [
  ['researcher', 30],
  ['coder', 25],
  ['reviewer', 15],
  ['summarizer', 12],
  ['planner', 8],
  ['triage', 6],
  ['support-bot', 3],
  ['nightly-eval', 1],
] as const;

/** USD per million tokens: input, output, cache write, cache read. */
const MODELS = [
  ['claude-sonnet-4-5', 55, [3, 15, 3.75, 0.3]],
  ['claude-haiku-4-5', 33, [1, 5, 1.25, 0.1]],
  ['claude-opus-4-1', 12, [15, 75, 18.75, 1.5]],
] as const;

const OUTCOMES: readonly (readonly [Outcome, number])[] = [
  ['ok', 91],
  ['blocked', 5],
  ['upstream_error', 1.5],
  ['client_aborted', 1.5],
  ['invalid', 1],
];

const USER_AGENTS = ['Anthropic/JS 0.62.0', 'Anthropic/Python 0.64.0', 'claude-cli/1.0.80'] as const;

/** The budgets the gateway runs with; limits are set after filling so the month is about 75% used. */
function benchBudgets(limits: { month: number; day: number; hour: number }): BudgetConfig[] {
  return [
    { name: 'global', ...limits, request: 200_000, rolling: false },
    { name: 'researcher', agent: 'researcher', month: Math.round(limits.month * 0.4), rolling: false },
    { name: 'opus', model: 'claude-opus-*', day: Math.round(limits.day * 0.3), rolling: false },
  ];
}

/**
 * `count` rows with timestamps spread over [from, to), oldest first (the order a gateway writes them),
 * busier in working hours. Deterministic for a given seed.
 */
export function syntheticLedger(count: number, from: number, to: number, seed = 42): LedgerRow[] {
  const rand = prng(seed);
  const stamps: number[] = [];
  while (stamps.length < count) {
    const ts = from + Math.floor(rand() * (to - from));
    const hour = new Date(ts).getUTCHours();
    // Office hours (08–18 UTC) three times as busy as the night.
    if (hour >= 8 && hour < 18 ? true : rand() < 1 / 3) stamps.push(ts);
  }
  stamps.sort((a, b) => a - b);
  return stamps.map((ts, i): LedgerRow => {
    const agent = pick(rand, AGENTS);
    const modelIdx = pick(
      rand,
      MODELS.map((m, j) => [j, m[1]] as const),
    );
    const [model, , price] = MODELS[modelIdx] as (typeof MODELS)[number];
    const outcome = pick(rand, OUTCOMES);
    const stream = rand() < 0.7;
    const maxTokens = pick(rand, [
      [1024, 3],
      [4096, 4],
      [8192, 2],
      [16_000, 1],
    ]);
    const input = tokens(rand, 300, 40_000);
    const reserved = outcome === 'blocked' || outcome === 'invalid' ? 0 : Math.ceil(input * 1.3) + maxTokens;
    let inputTokens = 0;
    let outputTokens = 0;
    let cacheCreationTokens = 0;
    let cacheReadTokens = 0;
    let usageSource: LedgerRow['usageSource'] = 'none';
    if (outcome === 'ok' || outcome === 'client_aborted') {
      const cached = rand() < 0.4;
      inputTokens = cached ? tokens(rand, 20, 2_000) : input;
      cacheReadTokens = cached ? Math.max(0, input - inputTokens) : 0;
      cacheCreationTokens = !cached && rand() < 0.2 ? tokens(rand, 1_000, 10_000) : 0;
      outputTokens = Math.min(maxTokens, tokens(rand, 30, 3_000));
      usageSource = outcome === 'ok' ? 'reported' : 'estimated';
      if (outcome === 'client_aborted') outputTokens = maxTokens;
    }
    const counted = inputTokens + outputTokens + cacheCreationTokens + cacheReadTokens;
    const [pin, pout, pwrite, pread] = price;
    const costUsd =
      counted === 0
        ? null
        : Math.round(
            (inputTokens * pin +
              outputTokens * pout +
              cacheCreationTokens * pwrite +
              cacheReadTokens * pread) *
              1000,
          ) / 1e9;
    const status =
      outcome === 'ok'
        ? 200
        : outcome === 'blocked'
          ? 429
          : outcome === 'invalid'
            ? 400
            : outcome === 'upstream_error'
              ? pick(rand, [
                  [529, 3],
                  [502, 1],
                  [504, 1],
                ])
              : 200;
    const metadata: Record<string, unknown> = {
      userAgent: pick(
        rand,
        USER_AGENTS.map((u) => [u, 1]),
      ),
    };
    if (rand() < 0.3)
      metadata.tags = {
        project: pick(rand, [
          ['alpha', 2],
          ['beta', 1],
          ['ops', 1],
        ]),
      };
    return {
      id: `twreq_${seed.toString(16)}${i.toString(16).padStart(8, '0')}${Math.floor(rand() * 2 ** 48)
        .toString(16)
        .padStart(12, '0')}`,
      ts,
      agent,
      keyId: null,
      model: outcome === 'invalid' && rand() < 0.5 ? null : model,
      stream,
      outcome,
      status,
      reserved,
      inputTokens,
      outputTokens,
      cacheCreationTokens,
      cacheReadTokens,
      counted,
      costUsd,
      latencyMs:
        outcome === 'blocked' || outcome === 'invalid'
          ? Math.round(rand() * 200) / 100
          : Math.round(tokens(rand, 400, 60_000)),
      upstreamRequestId:
        outcome === 'ok' || outcome === 'client_aborted' || outcome === 'upstream_error'
          ? `req_${Math.floor(rand() * 2 ** 52).toString(36)}`
          : null,
      blockReason: outcome === 'blocked' ? 'budget=global; window=hour' : null,
      usageSource,
      metadata,
    };
  });
}

interface Filled {
  fillMs: number;
  limits: { month: number; day: number; hour: number };
}

/**
 * Writes `rows` to the store at `path`: each row with appendLedger, and the window counters with one
 * reserve+settle per group of rows that charge the same counter buckets (a row's budgets and calendar
 * hour), so `used` in every window equals the ledger's counted tokens.
 */
async function fill(path: string, rows: readonly LedgerRow[], now: number): Promise<Filled> {
  const started = performance.now();
  // Limits only matter for reading; counters are written without checks (history, not admission).
  const totals = { month: 0, day: new Map<number, number>(), hour: new Map<number, number>() };
  const resolver = new WindowResolver({ timezone: 'UTC', cycleDay: 1 });
  const defs = toBudgetDefs(benchBudgets({ month: 1, day: 1, hour: 1 }));
  const groups = new Map<string, { charge: number; first: LedgerRow; slots: WindowSlot[] }>();
  for (const row of rows) {
    if (row.counted === 0) continue;
    const plan = planAdmission({
      budgets: defs,
      resolver,
      now: row.ts,
      agent: row.agent,
      model: row.model,
      amount: row.counted,
    });
    const key = plan.slots.map((s) => `${s.series}@${s.bucket}`).join(',');
    const g = groups.get(key);
    if (g) g.charge += row.counted;
    else groups.set(key, { charge: row.counted, first: row, slots: plan.slots });
    totals.month += row.counted;
    const day = Math.floor(row.ts / 86_400_000);
    const hour = Math.floor(row.ts / 3_600_000);
    totals.day.set(day, (totals.day.get(day) ?? 0) + row.counted);
    totals.hour.set(hour, (totals.hour.get(hour) ?? 0) + row.counted);
  }

  const store = openSqliteStore({ path });
  try {
    // Through the store's own write path (batched by its group commit when it has one), a few
    // thousand operations in flight at a time; each store applies its writes in arrival order, so a
    // group's settle follows its reserve.
    let pending: Promise<unknown>[] = [];
    const drain = async (max: number) => {
      if (pending.length < max) return;
      await Promise.all(pending);
      pending = [];
    };
    for (const row of rows) {
      pending.push(store.appendLedger(row));
      await drain(4096);
    }
    let n = 0;
    for (const g of groups.values()) {
      const holdId = `fill-${n++}`;
      pending.push(
        store
          .reserve({
            holdId,
            entries: g.slots.map((s) => ({
              series: s.series,
              bucket: s.bucket,
              from: s.from,
              limit: null,
              amount: g.charge,
            })),
            owner: 'api-bench',
            expiresAt: now + 600_000,
            draft: { ...g.first, outcome: 'interrupted', usageSource: 'estimated' },
          })
          .then((r) => {
            if (!r.ok) throw new Error('api-bench: a fill hold was refused');
          }),
      );
      // Settling with a row already appended leaves the ledger as it is (idempotent on id).
      pending.push(store.settle(holdId, new Array<number>(g.slots.length).fill(g.charge), g.first));
      await drain(4096);
    }
    await drain(0);
    if ((await store.holdCount()) !== 0) throw new Error('api-bench: holds left after filling');
  } finally {
    await store.close();
  }
  const max = (m: Map<number, number>) => Math.max(0, ...m.values());
  return {
    fillMs: performance.now() - started,
    limits: {
      month: Math.ceil(totals.month / 0.75),
      day: Math.ceil(max(totals.day) * 1.25),
      hour: Math.ceil(max(totals.hour) * 1.25),
    },
  };
}

// ---------------------------------------------------------------------------------------------
// timing

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] ?? Number.NaN;
}

/**
 * Fills a temp database, starts the gateway on it, times every case and removes the database.
 * The gateway runs on an injected clock placed 90% of the way through the current UTC month, so the
 * month holds the whole ledger whatever day the benchmark runs.
 */
export async function runApiBench(opts: ApiBenchOptions = {}): Promise<ApiBenchResult> {
  const rowCount = opts.rows ?? 100_000;
  const iterations = opts.iterations ?? (opts.quick ? 10 : 30);
  const warmup = opts.warmup ?? (opts.quick ? 3 : 5);

  const real = new Date();
  const monthStart = Date.UTC(real.getUTCFullYear(), real.getUTCMonth(), 1);
  const monthEnd = Date.UTC(real.getUTCFullYear(), real.getUTCMonth() + 1, 1);
  const benchNow = monthStart + Math.floor((monthEnd - monthStart) * 0.9);
  const offset = benchNow - Date.now();
  const now = () => Date.now() + offset;

  const dir = mkdtempSync(join(tmpdir(), 'tokenwarden-api-bench-'));
  try {
    const path = join(dir, 'ledger.db');
    const rows = syntheticLedger(rowCount, monthStart, benchNow - 1000);
    const { fillMs, limits } = await fill(path, rows, benchNow);
    const dbBytes = [path, `${path}-wal`].reduce((s, f) => {
      try {
        return s + statSync(f).size;
      } catch {
        return s;
      }
    }, 0);

    const gateway = await startGateway(
      parseConfig({
        port: 0,
        host: '127.0.0.1',
        database: path,
        upstream: 'http://127.0.0.1:9',
        budgets: benchBudgets(limits),
        logLevel: 'silent',
      }),
      { logger: createLogger('silent'), now },
    );
    const client = new Client(gateway.url, { pipelining: 1 });
    try {
      const base = '/api/token-usage';
      const since = new Date(monthStart).toISOString();
      const cases: Array<Pick<ApiBenchCase, 'endpoint' | 'variant' | 'path'>> = [
        { endpoint: 'summary', variant: '', path: `${base}/summary` },
        { endpoint: 'requests', variant: 'default page', path: `${base}/requests` },
        { endpoint: 'requests', variant: 'agent=researcher', path: `${base}/requests?agent=researcher` },
        {
          endpoint: 'requests',
          variant: `offset=${Math.floor(rowCount * 0.9)}`,
          path: `${base}/requests?offset=${Math.floor(rowCount * 0.9)}`,
        },
        {
          endpoint: 'timeseries',
          variant: 'hour, month',
          path: `${base}/timeseries?bucket=hour&since=${encodeURIComponent(since)}`,
        },
        { endpoint: 'timeseries', variant: 'day, 30 d', path: `${base}/timeseries?bucket=day` },
        { endpoint: 'timeseries', variant: 'minute, 1 h', path: `${base}/timeseries?bucket=minute` },
      ];
      const times = cases.map(() => [] as number[]);
      const first = cases.map(() => Number.NaN);
      const cpu = cases.map(() => 0);
      const bytes = cases.map(() => 0);
      // Traffic goes on while the operator looks: before every round a few requests are ledgered at
      // the gateway's now, so no report can answer every round from what it kept of the last.
      const live = syntheticLedger((warmup + iterations) * LIVE_ROWS_PER_ROUND, benchNow, benchNow + 1, 43);
      // Round-robin, so a burst of load from elsewhere on the machine spreads over every case.
      for (let i = -warmup; i < iterations; i++) {
        if (i > -warmup) {
          for (const row of live.splice(0, LIVE_ROWS_PER_ROUND)) {
            await gateway.store.appendLedger({ ...row, ts: now() });
          }
        }
        for (const [c, spec] of cases.entries()) {
          const cpu0 = process.cpuUsage();
          const t0 = performance.now();
          const res = await client.request({ method: 'GET', path: spec.path });
          const body = await res.body.text();
          const ms = performance.now() - t0;
          const used = process.cpuUsage(cpu0);
          if (res.statusCode !== 200) {
            throw new Error(`api-bench: ${spec.path} answered ${res.statusCode}: ${body.slice(0, 200)}`);
          }
          if (i === -warmup) {
            check(spec.endpoint, spec.variant, JSON.parse(body), rows);
            first[c] = ms;
          }
          if (i >= 0) {
            (times[c] as number[]).push(ms);
            cpu[c] = (cpu[c] ?? 0) + (used.user + used.system) / 1000;
          }
          bytes[c] = body.length;
        }
      }
      const results = cases.map((spec, c): ApiBenchCase => {
        const t = [...(times[c] as number[])].sort((a, b) => a - b);
        const p95Ms = percentile(t, 0.95);
        return {
          ...spec,
          n: t.length,
          p50Ms: round2(percentile(t, 0.5)),
          p95Ms: round2(p95Ms),
          maxMs: round2(t[t.length - 1] ?? Number.NaN),
          firstMs: round2(first[c] ?? Number.NaN),
          cpuMs: round2((cpu[c] ?? 0) / Math.max(1, t.length)),
          bytes: bytes[c] ?? 0,
          pass: p95Ms < API_TARGET_MS,
        };
      });
      return {
        rows: rowCount,
        targetMs: API_TARGET_MS,
        fillMs: Math.round(fillMs),
        dbBytes,
        cases: results,
        pass: results.every((r) => r.pass),
      };
    } finally {
      await client.close();
      await gateway.close({ graceMs: 1000 });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Sanity checks on the first answer of each case: a fast wrong answer is no result. */
function check(
  endpoint: ApiBenchCase['endpoint'],
  variant: string,
  doc: unknown,
  rows: readonly LedgerRow[],
) {
  const fail = (what: string) => {
    throw new Error(`api-bench: ${endpoint} ${variant}: ${what}`);
  };
  if (endpoint === 'summary') {
    const s = doc as { byAgent?: { tokens: number }[]; budgets?: { windows: { month: { used: number } } }[] };
    const counted = rows.reduce((acc, r) => acc + r.counted, 0);
    const byAgent = (s.byAgent ?? []).reduce((acc, a) => acc + a.tokens, 0);
    if (byAgent !== counted) fail(`byAgent totals ${byAgent}, ledger ${counted}`);
    const used = s.budgets?.[0]?.windows.month.used;
    if (used !== counted) fail(`global month used ${used}, ledger ${counted}`);
  } else if (endpoint === 'requests') {
    const r = doc as { requests?: unknown[]; total?: number };
    const want = variant.startsWith('agent=')
      ? rows.filter((x) => x.agent === variant.slice('agent='.length)).length
      : rows.length;
    if (r.total !== want) fail(`total ${r.total}, expected ${want}`);
    if ((r.requests?.length ?? 0) === 0) fail('no rows');
  } else if ((doc as { points?: unknown[] }).points?.length === 0) {
    fail('no points');
  }
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

/** The results as a fixed-width table with a PASS/FAIL column against the target. */
export function formatApiBench(r: ApiBenchResult): string {
  const head = [
    'endpoint',
    'case',
    'n',
    'p50 ms',
    'p95 ms',
    'max ms',
    'CPU ms',
    'first ms',
    'bytes',
    `< ${r.targetMs} ms`,
  ];
  const rows = r.cases.map((c) => [
    c.endpoint,
    c.variant,
    String(c.n),
    c.p50Ms.toFixed(1),
    c.p95Ms.toFixed(1),
    c.maxMs.toFixed(1),
    c.cpuMs.toFixed(1),
    c.firstMs.toFixed(1),
    c.bytes.toLocaleString('en-US'),
    c.pass ? 'PASS' : 'FAIL',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i < 2 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
  return [
    `${r.rows.toLocaleString('en-US')} ledger rows, filled in ${(r.fillMs / 1000).toFixed(1)} s, ` +
      `${(r.dbBytes / 2 ** 20).toFixed(1)} MiB, ${LIVE_ROWS_PER_ROUND} rows ledgered before each round; ` +
      `PASS = p95 under ${r.targetMs} ms; CPU = mean per request; first = the first request, cold`,
    line(head),
    ...rows.map(line),
    r.pass ? 'all cases PASS' : 'some cases FAIL',
  ].join('\n');
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: { rows: { type: 'string' }, iterations: { type: 'string' }, quick: { type: 'boolean' } },
  });
  const result = await runApiBench({
    ...(values.rows ? { rows: Number(values.rows) } : {}),
    ...(values.iterations ? { iterations: Number(values.iterations) } : {}),
    quick: values.quick ?? false,
  });
  console.log(formatApiBench(result));
  if (!result.pass) process.exitCode = 1;
}
