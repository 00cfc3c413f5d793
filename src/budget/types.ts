/**
 * Core domain types of the budget engine. Pure data: no I/O lives here or in src/budget/.
 * All times are milliseconds since the Unix epoch; all token amounts are counted (weighted) tokens.
 */

export type WindowKind = 'month' | 'day' | 'hour';
export const WINDOW_KINDS: readonly WindowKind[] = ['month', 'day', 'hour'];

/** Who a budget applies to. Absent fields match everything; `model` is a glob (`*`, `?`). */
export interface BudgetScope {
  agent?: string;
  model?: string;
}

export interface BudgetDef {
  name: string;
  scope: BudgetScope;
  /** Token limit per window; an absent window has no limit (its usage is still tracked). */
  limits: Partial<Record<WindowKind, number>>;
  /** Per-request limit: worst case (input estimate + max output), in counted tokens. */
  request?: number;
  /** Rolling windows (last 30 d / 24 h / 60 min) instead of calendar-aligned ones. */
  rolling: boolean;
  /** USD limits per window and per request (dollars), enforced on the price table's cost. */
  usd?: Partial<Record<WindowKind | 'request', number>>;
}

export interface CalendarSettings {
  /** IANA time zone, e.g. `UTC`, `Europe/Berlin`. */
  timezone: string;
  /** Day of the month the monthly window starts on (1–31; clamped to the month's last day). */
  cycleDay: number;
}

/** Multipliers applied to each usage component to get counted tokens. */
export interface Weights {
  input: number;
  output: number;
  cacheCreation: number;
  cacheRead: number;
}

/** Token usage as the provider reports it (raw tokens, not weighted). */
export interface Usage {
  inputTokens: number;
  outputTokens: number;
  cacheCreationTokens: number;
  cacheReadTokens: number;
  /** Of `cacheCreationTokens`, those written with the 1-hour TTL (priced higher); absent: none. */
  cacheCreation1hTokens?: number;
}

/**
 * One window of one budget, resolved for a point in time, as the stores see it.
 * Usage is kept in buckets of a `series`: a calendar window has one bucket (its start); a rolling
 * window has many (one per granularity step) and its total is the sum of the buckets >= `from`.
 */
export interface WindowSlot {
  budget: string;
  kind: WindowKind;
  /** Counter series, e.g. `global|month` (calendar) or `global|rolling-hour`. */
  series: string;
  /** Bucket (ms) this request is charged to. */
  bucket: number;
  /** First bucket (ms, inclusive) that counts toward the window's total. */
  from: number;
  /** null: no limit, usage only tracked. */
  limit: number | null;
  /** When the window resets (calendar) or next frees usage (rolling, conservatively), ms. */
  resetsAt: number;
}
