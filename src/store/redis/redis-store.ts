/**
 * The Redis store: window counters and holds in Redis, shared by every replica, with admission as one
 * Lua script across all windows (scripts.ts). The ledger and the control state (alerts, emergencies,
 * settings, keys) stay in the database store it wraps (PostgreSQL, or SQLite for one instance): the
 * ledger is the truth and Redis a fast, shared copy of the counters.
 *
 * Writes that span both go ledger first: a settle appends the row, then settles the hold in Redis. A
 * crash between the two leaves a hold that is reclaimed in full (more than was used, never less), and
 * the row already written wins over the reclaimed hold's draft.
 *
 * When Redis loses its data (a restart without persistence, a failover to an empty replica), the
 * `ready` marker is gone with it: the next admission or usage read notices, one replica rebuilds the
 * counters from the ledger (through the `rebuild` callback, which knows the budgets and windows) while
 * the others wait, and only then does admission go on.
 *
 * The connection never queues commands while Redis is unreachable: every operation rejects at once,
 * and the gateway fails closed (or lets traffic through, if the operator chose `onStoreError: allow`)
 * until ioredis has reconnected by itself.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis, type Result } from 'ioredis';
import type {
  HoldEntry,
  LedgerRow,
  ReserveRequest,
  ReserveResult,
  Store,
  UsageQuery,
  UsageTotals,
} from '../ports.js';
import { NOT_READY, PRUNE, RECLAIM, REFUSED, RENEW, RESERVE, RESET, SEED, SETTLE, USAGE } from './scripts.js';

/** One counter as the ledger says it should be: `used` counted tokens in (series, bucket). */
export interface CounterSeed {
  series: string;
  bucket: number;
  used: number;
}

export interface RedisStoreOptions {
  /** `redis://[:password@]host:port[/db]` or `rediss://…`. */
  url: string;
  /** Key prefix, also the hash tag (`{prefix}:…`); replicas sharing a budget share it. Default `tokenwarden`. */
  prefix?: string;
  /** The database store holding the ledger and the control state. Closed with this store. */
  ledger: Store;
  /** Most time a command may take before it rejects, ms (default 2000). */
  commandTimeoutMs?: number;
  /** How long to wait for the first connection, ms (default 5000). */
  connectTimeoutMs?: number;
  /** Errors of the connection (it reconnects by itself); without a listener they would be printed. */
  onError?: (err: Error) => void;
  /** Told when the connection is lost and when it is back. */
  onConnectionChange?: (connected: boolean) => void;
}

export type RedisStore = Store & {
  readonly prefix: string;
  /** True while the connection is up. */
  readonly connected: boolean;
  /**
   * How to compute the counters from the ledger when Redis does not have them (a new prefix, or
   * Redis lost its data). Until one is set, such a store refuses to admit or report usage rather than
   * start from empty counters, which would reset every budget.
   */
  setRebuilder(rebuild: () => Promise<CounterSeed[]>): void;
  /**
   * Make sure the counters are in Redis, rebuilding them from the ledger if Redis lost them (one
   * replica rebuilds, the others wait). Rejects if Redis is unreachable or the rebuild fails.
   */
  ensureReady(): Promise<void>;
};

type Reply = Array<number | string>;

declare module 'ioredis' {
  interface RedisCommander<Context> {
    twReserve(numKeys: number, ...args: Array<string | number>): Result<Reply, Context>;
    twSettle(numKeys: number, ...args: Array<string | number>): Result<number, Context>;
    twReclaim(numKeys: number, ...args: Array<string | number>): Result<string[], Context>;
    twRenew(numKeys: number, ...args: Array<string | number>): Result<number, Context>;
    twUsage(numKeys: number, ...args: Array<string | number>): Result<Reply, Context>;
    twReset(numKeys: number, ...args: Array<string | number>): Result<number | string, Context>;
    twSeed(numKeys: number, ...args: Array<string | number>): Result<number, Context>;
    twPrune(numKeys: number, ...args: Array<string | number>): Result<number, Context>;
  }
}

/** How long a rebuild may hold its lock, and how long the other replicas wait for it. */
const REBUILD_LOCK_MS = 60_000;
/** Candidates a reclaim looks at per round. */
const RECLAIM_BATCH = 200;
/** Buckets older than this are forgotten (the longest window is a month, or 30 rolling days). */
const KEEP_BUCKETS_MS = 40 * 86_400_000;
/** How often reclaim also prunes old buckets. */
const PRUNE_EVERY_MS = 3_600_000;

/**
 * Connects to Redis (rejecting if it cannot within `connectTimeoutMs`; the wrapped store is not
 * closed then) and returns the store. Afterwards operations reject while Redis is unreachable and the
 * connection comes back by itself.
 */
export async function openRedisStore(opts: RedisStoreOptions): Promise<RedisStore> {
  const prefix = opts.prefix ?? 'tokenwarden';
  if (!/^[A-Za-z0-9_.:-]{1,100}$/.test(prefix)) {
    throw new RangeError(`redis prefix must be 1-100 of A-Z a-z 0-9 _ . : -, got "${prefix}"`);
  }
  let connected = false;
  let opened = false;
  const redis = new Redis(opts.url, {
    lazyConnect: true,
    // Fail closed at once while disconnected instead of queueing admissions for later.
    enableOfflineQueue: false,
    // A command in flight when the connection drops is failed, never sent twice.
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    commandTimeout: opts.commandTimeoutMs ?? 2000,
    connectTimeout: opts.connectTimeoutMs ?? 5000,
    retryStrategy: (times) => Math.min(50 * 2 ** Math.min(times, 5), 1000),
    connectionName: 'tokenwarden',
  });
  redis.on('error', (err: Error) => opts.onError?.(err));
  // Reported only after the first connection: the start-up connection is not news.
  redis.on('ready', () => {
    if (!connected && opened) opts.onConnectionChange?.(true);
    connected = true;
  });
  redis.on('close', () => {
    if (connected && opened) opts.onConnectionChange?.(false);
    connected = false;
  });
  redis.defineCommand('twReserve', { lua: RESERVE });
  redis.defineCommand('twSettle', { lua: SETTLE });
  redis.defineCommand('twReclaim', { lua: RECLAIM });
  redis.defineCommand('twRenew', { lua: RENEW });
  redis.defineCommand('twUsage', { lua: USAGE });
  redis.defineCommand('twReset', { lua: RESET });
  redis.defineCommand('twSeed', { lua: SEED });
  redis.defineCommand('twPrune', { lua: PRUNE });
  try {
    await redis.connect();
  } catch (err) {
    redis.disconnect();
    throw new Error(`cannot connect to Redis at ${redactUrl(opts.url)}: ${(err as Error).message}`);
  }
  connected = true;
  opened = true;
  return buildStore(redis, prefix, opts.ledger, () => redis.status === 'ready');
}

/** The URL without its password, for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparseable URL)';
  }
}

function buildStore(redis: Redis, prefix: string, ledger: Store, isConnected: () => boolean): RedisStore {
  const tag = `{${prefix}}`;
  const K = {
    used: `${tag}:used`,
    resv: `${tag}:resv`,
    series: `${tag}:series`,
    holds: `${tag}:holds`,
    pending: `${tag}:pending`,
    ready: `${tag}:ready`,
    lock: `${tag}:rebuild`,
    buckets: (series: string) => `${tag}:b:${series}`,
    hold: (id: string) => `${tag}:h:${id}`,
    tomb: (id: string) => `${tag}:t:${id}`,
  };
  /** Entries of the holds this process placed and has not settled: to charge them if Redis loses them. */
  const mine = new Map<string, HoldEntry[]>();
  let rebuilder: (() => Promise<CounterSeed[]>) | null = null;
  /**
   * Set when a ledger write failed: admitting then would serve requests whose rows cannot be written,
   * so admission fails closed until the ledger's database answers again (probed at most once a second).
   */
  let ledgerDown = false;
  let lastLedgerProbe = 0;
  async function ledgerWrite(row: LedgerRow): Promise<void> {
    try {
      await ledger.appendLedger(row);
      ledgerDown = false;
    } catch (err) {
      ledgerDown = true;
      throw err;
    }
  }
  async function checkLedger(): Promise<void> {
    if (!ledgerDown) return;
    const now = Date.now();
    if (now - lastLedgerProbe < 1000) throw new Error('the ledger database is unreachable');
    lastLedgerProbe = now;
    await ledger.getSetting('budgets');
    ledgerDown = false;
  }
  let readying: Promise<void> | null = null;
  let lastPrune = 0;
  let closed: Promise<void> | undefined;

  async function rebuildOnce(): Promise<void> {
    const deadline = Date.now() + REBUILD_LOCK_MS;
    while (Date.now() < deadline) {
      if ((await redis.exists(K.ready)) === 1) return;
      const rebuild = rebuilder;
      if (!rebuild) {
        throw new Error(
          'the budget counters are not in Redis (new prefix, or Redis lost its data) and this process ' +
            'cannot rebuild them from the ledger; a gateway does when it starts or admits',
        );
      }
      const token = randomUUID();
      if ((await redis.set(K.lock, token, 'PX', REBUILD_LOCK_MS, 'NX')) === 'OK') {
        try {
          const seeds = await rebuild();
          const keys = [K.used, K.series, K.ready, K.lock, ...seeds.map((s) => K.buckets(s.series))];
          const args: Array<string | number> = [token, String(Date.now())];
          for (const s of seeds) args.push(s.series, intString(s.bucket), intString(s.used));
          if ((await redis.twSeed(keys.length, ...keys, ...args)) !== 1) {
            throw new Error('the counter rebuild took longer than its lock; another replica took over');
          }
          return;
        } catch (err) {
          await redis.eval(DEL_IF_MINE, 1, K.lock, token).catch(() => undefined);
          throw err;
        }
      }
      // Another replica is rebuilding: wait for it.
      await sleep(50);
    }
    throw new Error('timed out waiting for the counters to be rebuilt from the ledger');
  }

  function ensureReady(): Promise<void> {
    readying ??= rebuildOnce().finally(() => {
      readying = null;
    });
    return readying;
  }

  async function reserveOnce(req: ReserveRequest): Promise<Reply> {
    const n = req.entries.length;
    const keys = [K.used, K.resv, K.series, K.holds, K.hold(req.holdId), K.ready];
    const args: Array<string | number> = [
      req.holdId,
      req.owner,
      intString(req.expiresAt),
      JSON.stringify(req.draft),
      JSON.stringify(req.entries.map((e) => [e.series, intString(e.bucket), intString(e.amount)])),
      n,
    ];
    for (const e of req.entries) {
      keys.push(K.buckets(e.series));
      args.push(
        e.series,
        intString(e.bucket),
        intString(e.from),
        e.limit === null ? '' : intString(e.limit),
        intString(e.amount),
      );
    }
    return redis.twReserve(keys.length, ...keys, ...args);
  }

  async function usageOnce(queries: UsageQuery[]): Promise<Reply> {
    const keys = [K.used, K.resv, K.ready, ...queries.map((q) => K.buckets(q.series))];
    const args = [...queries.map((q) => q.series), ...queries.map((q) => intString(q.from))];
    return redis.twUsage(keys.length, ...keys, ...args);
  }

  /** Write the drafts of reclaimed holds to the ledger (kept in Redis until they are). */
  async function flushPending(): Promise<void> {
    const pending = await redis.hgetall(K.pending);
    for (const [id, draft] of Object.entries(pending)) {
      await ledgerWrite(JSON.parse(draft) as LedgerRow);
      await redis.hdel(K.pending, id);
    }
  }

  return {
    ...ledger,
    prefix,
    get connected() {
      return isConnected();
    },
    setRebuilder(fn) {
      rebuilder = fn;
    },
    ensureReady,

    async reserve(req: ReserveRequest): Promise<ReserveResult> {
      for (const e of req.entries) {
        checkInteger(req.holdId, 'bucket', e.bucket);
        checkInteger(req.holdId, 'from', e.from);
        checkInteger(req.holdId, 'amount', e.amount);
        if (e.amount < 0) throw new TypeError(`reserve(${req.holdId}): amount ${e.amount} is negative`);
        if (e.limit !== null) checkInteger(req.holdId, 'limit', e.limit);
      }
      checkInteger(req.holdId, 'expiresAt', req.expiresAt);
      await checkLedger();
      let reply = await reserveOnce(req);
      if (reply[0] === NOT_READY) {
        await ensureReady();
        reply = await reserveOnce(req);
        if (reply[0] === NOT_READY) throw new Error('Redis lost the counters again during admission');
      }
      if (reply[0] === REFUSED) {
        return {
          ok: false,
          entry: Number(reply[1]),
          used: Number(reply[2]),
          reserved: Number(reply[3]),
        };
      }
      mine.set(req.holdId, req.entries);
      return { ok: true, after: reply.slice(1).map(Number) };
    },

    async settle(holdId: string, charges: number[], row: LedgerRow): Promise<void> {
      for (const c of charges) {
        if (!Number.isSafeInteger(c) || c < 0) {
          throw new TypeError(`settle(${holdId}): charge ${c} is not a non-negative integer`);
        }
      }
      const known = mine.get(holdId);
      if (known && known.length !== charges.length) {
        throw new TypeError(
          `settle(${holdId}): ${charges.length} charges for a hold of ${known.length} entries`,
        );
      }
      if (!known) {
        // A hold this process did not place: check the count before the row goes in.
        const held = await redis.hget(K.hold(holdId), 'e');
        const count = held === null ? null : (JSON.parse(held) as unknown[]).length;
        if (count !== null && count !== charges.length) {
          throw new TypeError(`settle(${holdId}): ${charges.length} charges for a hold of ${count} entries`);
        }
      }
      // Ledger first: if Redis fails now, the hold is reclaimed in full later and this row stays.
      // Whatever happens from here, this process is done with the hold: if the write below fails,
      // the hold is reclaimed in full (or, if Redis lost it, the ledger row counts it in the rebuild).
      mine.delete(holdId);
      await ledgerWrite(row);
      const keys = [K.used, K.resv, K.series, K.holds, K.hold(holdId), K.tomb(holdId)];
      for (const e of known ?? []) keys.push(K.buckets(e.series));
      const knownJson = known
        ? JSON.stringify(known.map((e) => [e.series, intString(e.bucket), intString(e.amount)]))
        : '';
      await redis.twSettle(
        keys.length,
        ...keys,
        holdId,
        charges.length,
        ...charges.map(intString),
        knownJson,
      );
    },

    appendLedger: (row) => ledgerWrite(row),

    async reclaim({ now, keepOwner }: { now: number; keepOwner?: string }): Promise<number> {
      await flushPending();
      let total = 0;
      // Expired leases first, then (with keepOwner) every hold, in batches.
      const candidates =
        keepOwner === undefined
          ? await redis.zrangebyscore(K.holds, '-inf', intString(now))
          : await redis.zrange(K.holds, 0, -1);
      for (let i = 0; i < candidates.length; i += RECLAIM_BATCH) {
        const ids = candidates.slice(i, i + RECLAIM_BATCH);
        const keys = [K.used, K.resv, K.holds, K.pending];
        for (const id of ids) keys.push(K.hold(id), K.tomb(id));
        const taken = await redis.twReclaim(keys.length, ...keys, intString(now), keepOwner ?? '', ...ids);
        for (const id of taken) mine.delete(id);
        total += taken.length;
      }
      await flushPending();
      if (now - lastPrune >= PRUNE_EVERY_MS) {
        lastPrune = now;
        const series = await redis.smembers(K.series);
        const keys = [K.used, K.resv, ...series.map((sr) => K.buckets(sr))];
        await redis.twPrune(keys.length, ...keys, intString(now - KEEP_BUCKETS_MS), ...series);
      }
      return total;
    },

    async renew(holdIds: readonly string[], expiresAt: number): Promise<number> {
      if (holdIds.length === 0) return 0;
      return redis.twRenew(1, K.holds, intString(expiresAt), ...holdIds);
    },

    async usage(queries: UsageQuery[]): Promise<UsageTotals[]> {
      if (queries.length === 0) return [];
      let reply = await usageOnce(queries);
      if (reply[0] === NOT_READY) {
        await ensureReady();
        reply = await usageOnce(queries);
        if (reply[0] === NOT_READY) throw new Error('Redis lost the counters again');
      }
      return queries.map((_, i) => ({ used: Number(reply[2 * i]), reserved: Number(reply[2 * i + 1]) }));
    },

    async holdCount(): Promise<number> {
      return redis.zcard(K.holds);
    },

    async resetUsage(series: string[]): Promise<number> {
      if (series.length === 0) return 0;
      const keys = [K.used, ...series.map((s) => K.buckets(s))];
      return Number(await redis.twReset(keys.length, ...keys, ...series));
    },

    async listSeries(): Promise<string[]> {
      return (await redis.smembers(K.series)).sort();
    },

    close(): Promise<void> {
      closed ??= (async () => {
        try {
          await redis.quit();
        } catch {
          redis.disconnect();
        }
        await ledger.close();
      })();
      return closed;
    },
  };
}

const DEL_IF_MINE =
  "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/** Counters and times are integers; reject anything else before it reaches a script. */
function checkInteger(holdId: string, field: string, value: number): void {
  if (!Number.isSafeInteger(value)) {
    throw new TypeError(`reserve(${holdId}): ${field} ${value} is not a safe integer`);
  }
}

/** A safe integer as decimal digits (never exponent notation). */
function intString(n: number): string {
  return BigInt(n).toString();
}
