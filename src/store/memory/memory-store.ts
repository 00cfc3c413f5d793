/**
 * In-process Store backed by Maps. Used by tests, the simulator and the engine benchmark, so
 * the reserve/settle path avoids every allocation it can: a hold keeps direct references to the
 * counters it touched, and settling is a few additions with no lookups.
 */

import { bucketOf, checkBucketMs, checkCharges, windowAfter } from '../hold-rules.js';
import type {
  AlertRecord,
  EmergencyState,
  GroupTotal,
  HoldEntry,
  LedgerQuery,
  LedgerRow,
  ReserveRequest,
  ReserveResult,
  Store,
  TimeseriesPoint,
  TimeseriesQuery,
  UsageQuery,
  UsageTotals,
  VirtualKeyRecord,
} from '../ports.js';

/** One (series, bucket) counter. Never removed, so holds may keep references to it. */
interface Counter {
  readonly bucket: number;
  used: number;
  reserved: number;
}

interface Hold {
  readonly owner: string;
  expiresAt: number;
  readonly draft: LedgerRow;
  /** counters[i] is entry i's bucket; amounts[i] what entry i holds there. */
  readonly counters: Counter[];
  readonly amounts: number[];
}

export interface MemoryStoreOptions {
  /**
   * Keep at most this many ledger rows, dropping the oldest inserted first (default: unbounded).
   * For long benchmarks and simulations; a dropped row's id may be inserted again.
   */
  maxLedgerRows?: number;
}

/** Creates an empty in-memory store. Nothing survives `close()` or the process. */
export function createMemoryStore(opts: MemoryStoreOptions = {}): Store {
  const maxLedgerRows = opts.maxLedgerRows ?? Number.POSITIVE_INFINITY;
  if (
    !(maxLedgerRows >= 1) ||
    (maxLedgerRows !== Number.POSITIVE_INFINITY && !Number.isInteger(maxLedgerRows))
  ) {
    throw new RangeError(`maxLedgerRows must be a positive integer, got ${maxLedgerRows}`);
  }
  /** Per series, its counters sorted by bucket ascending (new buckets almost always append). */
  const series = new Map<string, Counter[]>();
  const holds = new Map<string, Hold>();
  /** Insertion-ordered, keyed by row id. */
  const ledger = new Map<string, LedgerRow>();
  /**
   * With a row cap, the ids in insertion order as a ring (oldest at `ringHead` once full). Evicting
   * through `ledger.keys().next()` instead would skip every deleted entry the Map has not compacted
   * yet: O(cap) per insert.
   */
  const ring: string[] = [];
  let ringHead = 0;
  /** Insertion order; listAlerts sorts. */
  const alerts: AlertRecord[] = [];
  /** The (budget, window, level, period) of every alert in `alerts`, as alertKey() strings. */
  const alertKeys = new Set<string>();
  const alertIds = new Set<string>();
  const emergencies = new Map<string, EmergencyState>();
  const settings = new Map<string, string>();
  const keys = new Map<string, VirtualKeyRecord>();
  /** hash -> id */
  const keyHashes = new Map<string, string>();
  let closed = false;

  function assertOpen(): void {
    if (closed) throw new Error('memory store is closed');
  }

  /** used + reserved of a series' buckets >= from; windowTotals without the allocation (hot path). */
  function windowTotal(name: string, from: number): number {
    const counters = series.get(name);
    if (counters === undefined) return 0;
    let total = 0;
    for (let i = counters.length - 1; i >= 0; i--) {
      const c = counters[i] as Counter;
      if (c.bucket < from) break;
      total += c.used + c.reserved;
    }
    return total;
  }

  function windowTotals(name: string, from: number): UsageTotals {
    const counters = series.get(name);
    let used = 0;
    let reserved = 0;
    if (counters !== undefined) {
      for (let i = counters.length - 1; i >= 0; i--) {
        const c = counters[i] as Counter;
        if (c.bucket < from) break;
        used += c.used;
        reserved += c.reserved;
      }
    }
    return { used, reserved };
  }

  function counterFor(name: string, bucket: number): Counter {
    let counters = series.get(name);
    if (counters === undefined) {
      counters = [];
      series.set(name, counters);
    }
    // Search from the end: the current bucket is nearly always the last one.
    let i = counters.length - 1;
    while (i >= 0 && (counters[i] as Counter).bucket > bucket) i--;
    const found = counters[i];
    if (found !== undefined && found.bucket === bucket) return found;
    const created: Counter = { bucket, used: 0, reserved: 0 };
    counters.splice(i + 1, 0, created);
    return created;
  }

  function insertRow(row: LedgerRow): void {
    if (ledger.has(row.id)) return;
    ledger.set(row.id, { ...row });
    if (maxLedgerRows === Number.POSITIVE_INFINITY) return;
    if (ring.length < maxLedgerRows) {
      ring.push(row.id);
      return;
    }
    ledger.delete(ring[ringHead] as string);
    ring[ringHead] = row.id;
    ringHead = (ringHead + 1) % maxLedgerRows;
  }

  function chargeInFull(hold: Hold): void {
    for (let i = 0; i < hold.counters.length; i++) {
      const c = hold.counters[i] as Counter;
      const amount = hold.amounts[i] as number;
      c.reserved -= amount;
      c.used += amount;
    }
  }

  return {
    async reserve(req: ReserveRequest): Promise<ReserveResult> {
      assertOpen();
      const { entries, holdId } = req;
      if (holds.has(holdId)) throw new Error(`hold ${holdId} already exists`);
      const n = entries.length;
      const after = new Array<number>(n);
      for (let i = 0; i < n; i++) {
        const e = entries[i] as HoldEntry;
        const total = windowTotal(e.series, e.from) + windowAfter(entries, i);
        if (e.limit !== null && total > e.limit) {
          const before = windowTotals(e.series, e.from);
          return { ok: false, entry: i, used: before.used, reserved: before.reserved };
        }
        after[i] = total;
      }
      const counters = new Array<Counter>(n);
      const amounts = new Array<number>(n);
      for (let i = 0; i < n; i++) {
        const e = entries[i] as HoldEntry;
        const c = counterFor(e.series, e.bucket);
        c.reserved += e.amount;
        counters[i] = c;
        amounts[i] = e.amount;
      }
      holds.set(holdId, {
        owner: req.owner,
        expiresAt: req.expiresAt,
        draft: { ...req.draft },
        counters,
        amounts,
      });
      return { ok: true, after };
    },

    async settle(holdId: string, charges: number[], row: LedgerRow): Promise<void> {
      assertOpen();
      const hold = holds.get(holdId);
      if (hold !== undefined) {
        checkCharges(holdId, hold.amounts.length, charges);
        for (let i = 0; i < hold.counters.length; i++) {
          const c = hold.counters[i] as Counter;
          c.reserved -= hold.amounts[i] as number;
          c.used += charges[i] as number;
        }
        holds.delete(holdId);
      }
      insertRow(row);
    },

    async appendLedger(row: LedgerRow): Promise<void> {
      assertOpen();
      insertRow(row);
    },

    async reclaim({ now, keepOwner }: { now: number; keepOwner?: string }): Promise<number> {
      assertOpen();
      let count = 0;
      for (const [id, hold] of holds) {
        if (hold.expiresAt > now && (keepOwner === undefined || hold.owner === keepOwner)) continue;
        chargeInFull(hold);
        holds.delete(id);
        insertRow(hold.draft);
        count++;
      }
      return count;
    },

    async renew(holdIds: readonly string[], expiresAt: number): Promise<number> {
      assertOpen();
      let n = 0;
      for (const id of holdIds) {
        const hold = holds.get(id);
        if (hold === undefined) continue;
        if (expiresAt > hold.expiresAt) hold.expiresAt = expiresAt;
        n++;
      }
      return n;
    },

    async usage(queries: UsageQuery[]): Promise<UsageTotals[]> {
      assertOpen();
      return queries.map((q) => windowTotals(q.series, q.from));
    },

    async holdCount(): Promise<number> {
      assertOpen();
      return holds.size;
    },

    async queryLedger(q: LedgerQuery): Promise<LedgerRow[]> {
      assertOpen();
      const rows: LedgerRow[] = [];
      for (const row of ledger.values()) {
        if (matches(row, q)) rows.push(row);
      }
      rows.sort(newestFirst);
      const offset = q.offset ?? 0;
      // Copies shaped exactly as a JSON-backed store returns them, so callers cannot alias our rows.
      return rows
        .slice(offset, offset + q.limit)
        .map((row) => ({ ...row, metadata: JSON.parse(JSON.stringify(row.metadata)) }));
    },

    async groupLedger(by: 'agent' | 'model', since: number, until: number): Promise<GroupTotal[]> {
      assertOpen();
      const groups = new Map<string, GroupTotal>();
      for (const row of ledger.values()) {
        if (row.ts < since || row.ts >= until) continue;
        const key = by === 'agent' ? row.agent : row.model;
        if (key === null) continue;
        const group = groups.get(key);
        if (group === undefined) groups.set(key, { key, requests: 1, counted: row.counted });
        else {
          group.requests++;
          group.counted += row.counted;
        }
      }
      return [...groups.values()].sort(byCountedDesc);
    },

    async recordAlert(alert: AlertRecord): Promise<boolean> {
      assertOpen();
      const key = alertKey(alert);
      if (alertKeys.has(key) || alertIds.has(alert.id)) return false;
      alerts.push({ ...alert });
      alertKeys.add(key);
      alertIds.add(alert.id);
      return true;
    },

    async listAlerts(q: { limit: number; since?: number }): Promise<AlertRecord[]> {
      assertOpen();
      const since = q.since ?? Number.NEGATIVE_INFINITY;
      return alerts
        .filter((a) => a.at >= since)
        .sort(alertsNewestFirst)
        .slice(0, Math.max(0, q.limit))
        .map((a) => ({ ...a }));
    },

    async setEmergency(e: EmergencyState): Promise<void> {
      assertOpen();
      emergencies.set(e.budget, { ...e });
    },

    async clearEmergency(budget?: string): Promise<number> {
      assertOpen();
      if (budget !== undefined) return emergencies.delete(budget) ? 1 : 0;
      const n = emergencies.size;
      emergencies.clear();
      return n;
    },

    async listEmergencies(): Promise<EmergencyState[]> {
      assertOpen();
      return [...emergencies.values()].sort((a, b) => compare(a.budget, b.budget)).map((e) => ({ ...e }));
    },

    async getSetting(key: string): Promise<string | null> {
      assertOpen();
      return settings.get(key) ?? null;
    },

    async setSetting(key: string, value: string): Promise<void> {
      assertOpen();
      settings.set(key, value);
    },

    async createKey(k: VirtualKeyRecord): Promise<void> {
      assertOpen();
      if (keys.has(k.id)) throw new Error(`virtual key ${k.id} already exists`);
      if (keyHashes.has(k.hash)) throw new Error(`a virtual key with hash ${k.hash} already exists`);
      keys.set(k.id, copyKey(k));
      keyHashes.set(k.hash, k.id);
    },

    async findKeyByHash(hash: string): Promise<VirtualKeyRecord | null> {
      assertOpen();
      const id = keyHashes.get(hash);
      const k = id === undefined ? undefined : keys.get(id);
      return k === undefined ? null : copyKey(k);
    },

    async listKeys(): Promise<VirtualKeyRecord[]> {
      assertOpen();
      return [...keys.values()].sort(keysOldestFirst).map(copyKey);
    },

    async revokeKey(id: string, at: number): Promise<boolean> {
      assertOpen();
      let k = keys.get(id);
      if (k === undefined && id !== '') {
        let found: VirtualKeyRecord | undefined;
        for (const candidate of keys.values()) {
          if (!candidate.id.startsWith(id)) continue;
          if (found !== undefined) return false; // ambiguous prefix
          found = candidate;
        }
        k = found;
      }
      if (k === undefined || k.revokedAt !== null) return false;
      k.revokedAt = at;
      return true;
    },

    async countLedger(q: Omit<LedgerQuery, 'limit' | 'offset'>): Promise<number> {
      assertOpen();
      let n = 0;
      for (const row of ledger.values()) {
        if (matches(row, q)) n++;
      }
      return n;
    },

    async timeseries(q: TimeseriesQuery): Promise<TimeseriesPoint[]> {
      assertOpen();
      checkBucketMs(q.bucketMs);
      const points = new Map<number, TimeseriesPoint>();
      for (const row of ledger.values()) {
        if (row.ts < q.since || row.ts >= q.until) continue;
        if (q.agent !== undefined && row.agent !== q.agent) continue;
        if (q.model !== undefined && row.model !== q.model) continue;
        const bucket = bucketOf(row.ts, q.bucketMs);
        let p = points.get(bucket);
        if (p === undefined) {
          p = {
            bucket,
            requests: 0,
            counted: 0,
            inputTokens: 0,
            outputTokens: 0,
            cacheCreationTokens: 0,
            cacheReadTokens: 0,
            costUsd: 0,
            blocked: 0,
          };
          points.set(bucket, p);
        }
        p.requests++;
        p.counted += row.counted;
        p.inputTokens += row.inputTokens;
        p.outputTokens += row.outputTokens;
        p.cacheCreationTokens += row.cacheCreationTokens;
        p.cacheReadTokens += row.cacheReadTokens;
        p.costUsd += row.costUsd ?? 0;
        if (row.outcome === 'blocked') p.blocked++;
      }
      return [...points.values()].sort((a, b) => a.bucket - b.bucket);
    },

    async resetUsage(names: string[]): Promise<number> {
      assertOpen();
      let cleared = 0;
      for (const name of new Set(names)) {
        for (const c of series.get(name) ?? []) {
          cleared += c.used;
          c.used = 0;
        }
      }
      return cleared;
    },

    async listSeries(): Promise<string[]> {
      assertOpen();
      return [...series.keys()].sort(compare);
    },

    async close(): Promise<void> {
      closed = true;
      series.clear();
      holds.clear();
      ledger.clear();
      ring.length = 0;
      alerts.length = 0;
      alertKeys.clear();
      alertIds.clear();
      emergencies.clear();
      settings.clear();
      keys.clear();
      keyHashes.clear();
    },
  };
}

function matches(row: LedgerRow, q: Omit<LedgerQuery, 'limit' | 'offset'>): boolean {
  if (q.since !== undefined && row.ts < q.since) return false;
  if (q.until !== undefined && row.ts >= q.until) return false;
  if (q.agent !== undefined && row.agent !== q.agent) return false;
  if (q.model !== undefined && row.model !== q.model) return false;
  if (q.outcome !== undefined && row.outcome !== q.outcome) return false;
  return true;
}

/** An alert fires once per (budget, window, level, period). */
function alertKey(a: AlertRecord): string {
  return JSON.stringify([a.budget, a.window, a.level, a.period]);
}

function copyKey(k: VirtualKeyRecord): VirtualKeyRecord {
  return { ...k, limits: k.limits === null ? null : { ...k.limits } };
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function alertsNewestFirst(a: AlertRecord, b: AlertRecord): number {
  if (a.at !== b.at) return b.at - a.at;
  return compare(b.id, a.id);
}

function keysOldestFirst(a: VirtualKeyRecord, b: VirtualKeyRecord): number {
  if (a.createdAt !== b.createdAt) return a.createdAt - b.createdAt;
  return compare(a.id, b.id);
}

function newestFirst(a: LedgerRow, b: LedgerRow): number {
  if (a.ts !== b.ts) return b.ts - a.ts;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

function byCountedDesc(a: GroupTotal, b: GroupTotal): number {
  if (a.counted !== b.counted) return b.counted - a.counted;
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}
