/**
 * Storage ports: the narrow interface the gateway needs from a store. Every backend (memory, SQLite,
 * and later PostgreSQL, Redis) implements it natively and passes the same contract suite
 * (test/contract/store-contract.ts).
 */

export type Outcome =
  | 'ok'
  | 'blocked'
  | 'upstream_error'
  | 'client_aborted'
  | 'invalid'
  /** The gateway stopped (crash, kill) while the request was in flight; its hold was charged in full. */
  | 'interrupted';

export type UsageSource = 'reported' | 'estimated' | 'none';

/** One ledger row per request (SPEC §3 Ledger). Token fields are raw provider tokens. */
export interface LedgerRow {
  id: string;
  /** Request start, ms since epoch. */
  ts: number;
  agent: string;
  keyId: string | null;
  model: string | null;
  stream: boolean;
  outcome: Outcome;
  /** HTTP status answered to the client (0 when none was sent). */
  status: number;
  /** Counted tokens held for the request at admission (0 when not admitted). */
  reserved: number;
  inputTokens: number;
  outputTokens: number;
  cacheCreationTokens: number;
  cacheReadTokens: number;
  /** Counted (weighted) tokens charged to the budgets. */
  counted: number;
  costUsd: number | null;
  latencyMs: number | null;
  upstreamRequestId: string | null;
  blockReason: string | null;
  usageSource: UsageSource;
  /** Tags (`x-tokenwarden-tag-*`), user agent, and other facts about the request. */
  metadata: Record<string, unknown>;
}

/** One counter a hold is placed in: a bucket of a series, checked against the series total from `from`. */
export interface HoldEntry {
  series: string;
  bucket: number;
  /** Buckets >= from count toward the limit. */
  from: number;
  /** null: no limit, the amount is only recorded. */
  limit: number | null;
  /** Counted tokens to hold. */
  amount: number;
}

export interface ReserveRequest {
  holdId: string;
  entries: HoldEntry[];
  /** Identifies the gateway process that owns the hold (for reclaiming after a crash). */
  owner: string;
  /** After this time (ms) any process may reclaim the hold. */
  expiresAt: number;
  /**
   * The ledger row written if the hold is reclaimed rather than settled: the whole hold charged,
   * usage_source `estimated`, outcome `interrupted`.
   */
  draft: LedgerRow;
}

export type ReserveResult =
  /** `after[i]`: used + reserved of entry i's window after the hold was placed. */
  | { ok: true; after: number[] }
  /** `entry`: index of the first entry that did not fit; its window's used and reserved before. */
  | { ok: false; entry: number; used: number; reserved: number };

export interface UsageQuery {
  series: string;
  from: number;
}

export interface UsageTotals {
  used: number;
  reserved: number;
}

export interface LedgerQuery {
  agent?: string;
  model?: string;
  outcome?: Outcome;
  /** Inclusive lower bound on ts (ms). */
  since?: number;
  /** Exclusive upper bound on ts (ms). */
  until?: number;
  /** Max rows, newest first. */
  limit: number;
  /** Skip this many rows (paging). */
  offset?: number;
}

export interface GroupTotal {
  key: string;
  requests: number;
  counted: number;
}

export interface BudgetStore {
  /**
   * Atomically: if for every entry with a limit, (used + reserved of its window) + amount <= limit,
   * add `amount` to `reserved` of every entry's bucket and record the hold; otherwise change nothing.
   * Never partially applies. Rejects only on a storage failure.
   */
  reserve(req: ReserveRequest): Promise<ReserveResult>;

  /**
   * Atomically replace hold `holdId` by actual charges (`charges[i]` for entry i; 0 releases it)
   * and append `row` to the ledger. If the hold no longer exists (already reclaimed or settled),
   * counters are left alone and the row is only inserted if no row with that id exists.
   */
  settle(holdId: string, charges: number[], row: LedgerRow): Promise<void>;

  /** Append a row for a request that holds nothing (blocked, invalid). Idempotent on `row.id`. */
  appendLedger(row: LedgerRow): Promise<void>;

  /**
   * Charge in full (reserved -> used) every hold that expired by `now`, or whose owner is not
   * `keepOwner` when given, and write its draft ledger row. Returns how many holds were reclaimed.
   */
  reclaim(opts: { now: number; keepOwner?: string }): Promise<number>;

  /** Totals of each queried window (sum of the series' buckets >= from). */
  usage(queries: UsageQuery[]): Promise<UsageTotals[]>;

  /** Number of holds currently held (all owners). */
  holdCount(): Promise<number>;

  /** Ledger rows, newest first. */
  queryLedger(q: LedgerQuery): Promise<LedgerRow[]>;

  /** Ledger totals grouped by agent or model over [since, until). */
  groupLedger(by: 'agent' | 'model', since: number, until: number): Promise<GroupTotal[]>;

  close(): Promise<void>;
}
