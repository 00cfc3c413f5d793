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

  /**
   * Extend the lease of the given holds to `expiresAt` (never shortening it). The owning process
   * renews the holds it still has in flight, so a hold outlives a long stream but not its process:
   * once the owner stops renewing (crash, kill -9), any process reclaims it when the lease runs out.
   * Unknown ids are ignored. Returns how many holds were renewed.
   */
  renew(holdIds: readonly string[], expiresAt: number): Promise<number>;

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

// ---------------------------------------------------------------------------------------------------
// Control state: alerts, emergency state, persisted settings, virtual keys, reports. Implemented by
// the same backends (memory, SQLite; PostgreSQL later) and checked by test/contract/control-contract.ts.
// ---------------------------------------------------------------------------------------------------

export type AlertLevel = 'warning' | 'critical' | 'emergency' | 'forecast';

export interface AlertRecord {
  id: string;
  level: AlertLevel;
  budget: string;
  /** `month`, `day` or `hour`. */
  window: string;
  /** Start (ms) of the window period the alert belongs to: an alert fires once per period. */
  period: number;
  /** used / limit × 100 when it fired (for `forecast`: projected month-end percent). */
  percent: number;
  at: number;
  message: string;
}

export interface EmergencyState {
  /** Budget name, or `*` for every budget (a global halt). */
  budget: string;
  since: number;
  /** When it lifts by itself (the end of the period that tripped it), or null: until resumed. */
  until: number | null;
  reason: string;
  /** Tripped by an operator (`halt`) rather than by the emergency threshold. */
  manual: boolean;
}

export interface VirtualKeyRecord {
  /** Public id (`key_…`), safe to show and log. */
  id: string;
  /** SHA-256 hex of the full key; the key itself is never stored. */
  hash: string;
  /** First characters of the key (`tw_ab12…`), to recognise it in lists. */
  prefix: string;
  agent: string;
  /** Optional per-key limits: `{ month?, day?, hour?, request? }`. */
  limits: Record<string, number> | null;
  createdAt: number;
  revokedAt: number | null;
}

export interface TimeseriesQuery {
  /** Bucket width in ms (60_000, 3_600_000, 86_400_000); buckets are aligned to multiples of it. */
  bucketMs: number;
  since: number;
  until: number;
  agent?: string;
  model?: string;
}

export interface TimeseriesPoint {
  /** Bucket start, ms. */
  bucket: number;
  requests: number;
  counted: number;
  inputTokens: number;
  outputTokens: number;
  cacheCreationTokens: number;
  cacheReadTokens: number;
  costUsd: number;
  blocked: number;
}

export interface ControlStore {
  /** Insert unless an alert with the same (budget, window, level, period) exists; true if inserted. */
  recordAlert(alert: AlertRecord): Promise<boolean>;
  /** Newest first. */
  listAlerts(q: { limit: number; since?: number }): Promise<AlertRecord[]>;

  /** Upsert by budget name. */
  setEmergency(e: EmergencyState): Promise<void>;
  /** Remove the state of one budget (or `*`), or of all when `budget` is undefined; returns how many. */
  clearEmergency(budget?: string): Promise<number>;
  listEmergencies(): Promise<EmergencyState[]>;

  /** Small persisted settings (e.g. `budgets` as JSON, set at run time through the API). */
  getSetting(key: string): Promise<string | null>;
  setSetting(key: string, value: string): Promise<void>;

  createKey(k: VirtualKeyRecord): Promise<void>;
  findKeyByHash(hash: string): Promise<VirtualKeyRecord | null>;
  listKeys(): Promise<VirtualKeyRecord[]>;
  /** Mark revoked (by id or prefix-unique id); false when no such active key. */
  revokeKey(id: string, at: number): Promise<boolean>;

  /** Ledger rows matching the filter (for paging totals). */
  countLedger(q: Omit<LedgerQuery, 'limit' | 'offset'>): Promise<number>;
  /** Ledger aggregated per time bucket, oldest first, only buckets with rows. */
  timeseries(q: TimeseriesQuery): Promise<TimeseriesPoint[]>;

  /**
   * Set `used` to 0 in every bucket of the given series (reserved amounts of in-flight holds are
   * kept, so their settlement stays balanced). Returns the total used that was cleared.
   */
  resetUsage(series: string[]): Promise<number>;
  /** All series names that have counters (for resetting by budget or window). */
  listSeries(): Promise<string[]>;
}

/** What a backend provides: budget accounting and control state. */
export type Store = BudgetStore & ControlStore;
