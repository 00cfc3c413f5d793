/**
 * In-process BudgetStore backed by Maps. Used by tests, the simulator and the engine benchmark, so
 * the reserve/settle path avoids every allocation it can: a hold keeps direct references to the
 * counters it touched, and settling is a few additions with no lookups.
 */

import { checkCharges, windowAfter } from '../hold-rules.js';
import type {
  BudgetStore,
  GroupTotal,
  HoldEntry,
  LedgerQuery,
  LedgerRow,
  ReserveRequest,
  ReserveResult,
  UsageQuery,
  UsageTotals,
} from '../ports.js';

/** One (series, bucket) counter. Never removed, so holds may keep references to it. */
interface Counter {
  readonly bucket: number;
  used: number;
  reserved: number;
}

interface Hold {
  readonly owner: string;
  readonly expiresAt: number;
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
export function createMemoryStore(opts: MemoryStoreOptions = {}): BudgetStore {
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
      const since = q.since ?? Number.NEGATIVE_INFINITY;
      const until = q.until ?? Number.POSITIVE_INFINITY;
      const rows: LedgerRow[] = [];
      for (const row of ledger.values()) {
        if (row.ts < since || row.ts >= until) continue;
        if (q.agent !== undefined && row.agent !== q.agent) continue;
        if (q.model !== undefined && row.model !== q.model) continue;
        if (q.outcome !== undefined && row.outcome !== q.outcome) continue;
        rows.push(row);
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

    async close(): Promise<void> {
      closed = true;
      series.clear();
      holds.clear();
      ledger.clear();
      ring.length = 0;
    },
  };
}

function newestFirst(a: LedgerRow, b: LedgerRow): number {
  if (a.ts !== b.ts) return b.ts - a.ts;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

function byCountedDesc(a: GroupTotal, b: GroupTotal): number {
  if (a.counted !== b.counted) return b.counted - a.counted;
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}
