/**
 * Alert arithmetic: which thresholds a window's usage has crossed, whether the month's burn rate
 * projects the limit to be reached before reset, and the human text of each alert. Pure: no I/O and
 * no clock reads (`now` is passed in).
 */
import type { AlertLevel } from '../store/ports.js';

/** Alert thresholds in percent of a window's limit (config `thresholds`, SPEC §2: 80/95/98). */
export interface Thresholds {
  warning: number;
  critical: number;
  emergency: number;
}

/** The threshold levels, in the order alerts about them are raised. */
export type ThresholdLevel = Exclude<AlertLevel, 'forecast'>;
export const THRESHOLD_LEVELS: readonly ThresholdLevel[] = ['warning', 'critical', 'emergency'];

const HOUR = 3_600_000;

/**
 * The levels whose threshold `used` has reached (`used / limit × 100 >= threshold`), in the order
 * warning → critical → emergency. A limit of 0 or null (no limit) raises no alerts. Compared as
 * `used × 100 >= threshold × limit`, so integer inputs are exact at the boundary (112,000 of 140,000
 * is 80 %, not 79.999…). Never throws; non-finite inputs yield no levels.
 */
export function crossedLevels(used: number, limit: number | null, t: Thresholds): ThresholdLevel[] {
  if (limit === null || !(limit > 0) || !Number.isFinite(used) || !Number.isFinite(limit)) return [];
  const out: ThresholdLevel[] = [];
  for (const level of THRESHOLD_LEVELS) {
    if (used * 100 >= t[level] * limit) out.push(level);
  }
  return out;
}

/** `used / limit × 100`, rounded to two decimals (as stored in AlertRecord.percent); 0 without a limit. */
export function percentOf(used: number, limit: number | null): number {
  if (limit === null || !(limit > 0)) return 0;
  return Math.round((used / limit) * 10_000) / 100;
}

/** Burn rates in counted tokens per hour. */
export interface BurnRates {
  /** Tokens used over the last hour. */
  lastHour: number;
  /** Tokens used over the last 24 hours, divided by 24. */
  lastDay: number;
}

export interface ForecastInput {
  /** Month window usage so far (counted tokens). */
  used: number;
  limit: number | null;
  rates: BurnRates;
  /** ms since epoch. */
  now: number;
  /** When the month window resets, ms. */
  resetsAt: number;
}

export interface Forecast {
  /** Hours from `now` to `resetsAt` (>= 0). */
  hoursLeft: number;
  /** Projected month-end usage, `used + rate × hoursLeft`, for each rate. */
  projected: BurnRates;
  /**
   * When the limit would be reached at the last day's rate, if before the reset; null when it would
   * not (or when there is no limit).
   */
  exhaustsAt: number | null;
  /**
   * A forecast alert is due: there is a positive limit not yet reached, and **both** projections
   * exceed it (strictly). Requiring both means one hot hour alone does not raise it, and neither does
   * a busy yesterday that has since cooled down.
   */
  due: boolean;
}

/** Projects month-end usage from the burn rates. Never throws; negative rates count as 0. */
export function forecast(input: ForecastInput): Forecast {
  const { used, limit, now, resetsAt } = input;
  const hoursLeft = Math.max(0, (resetsAt - now) / HOUR);
  const hourRate = Math.max(0, input.rates.lastHour);
  const dayRate = Math.max(0, input.rates.lastDay);
  const projected = { lastHour: used + hourRate * hoursLeft, lastDay: used + dayRate * hoursLeft };
  const hasLimit = limit !== null && limit > 0;
  let exhaustsAt: number | null = null;
  if (hasLimit && dayRate > 0) {
    const at = now + (Math.max(0, limit - used) / dayRate) * HOUR;
    if (at < resetsAt) exhaustsAt = Math.round(at);
  }
  const due = hasLimit && used < limit && projected.lastHour > limit && projected.lastDay > limit;
  return { hoursLeft, projected, exhaustsAt, due };
}

// ---------------------------------------------------------------------------------------------
// Messages

const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

/** Counted tokens for people: `113,680` (fractional weights are rounded). */
export function formatTokens(n: number): string {
  return integer.format(Math.round(n));
}

/** ISO 8601 in UTC without milliseconds: `2026-12-01T00:00:00Z`. */
export function formatInstant(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/**
 * Percent with one decimal, rounded **down**, so a window at 97.96 % never reads "98.0 %" in an
 * alert that says the 98 % threshold was not crossed.
 */
function formatPercent(used: number, limit: number): string {
  return (Math.floor((used * 1000) / limit) / 10).toFixed(1);
}

export interface ThresholdMessageInput {
  level: ThresholdLevel;
  budget: string;
  window: string;
  used: number;
  limit: number;
  /** The threshold crossed, percent. */
  threshold: number;
  /** When the window resets, ms. */
  resetsAt: number;
}

/**
 * The text of a threshold alert, e.g.
 * `Budget "global" month window at 81.2% (113,680 of 140,000 tokens) — warning threshold 80% crossed;
 * resets 2026-12-01T00:00:00Z`. An emergency on the month window says agent traffic is blocked.
 */
export function thresholdMessage(m: ThresholdMessageInput): string {
  const head =
    `Budget ${JSON.stringify(m.budget)} ${m.window} window at ${formatPercent(m.used, m.limit)}% ` +
    `(${formatTokens(m.used)} of ${formatTokens(m.limit)} tokens) — ${m.level} threshold ${m.threshold}% crossed`;
  const blocked =
    m.level === 'emergency' && m.window === 'month'
      ? '; agent traffic under this budget is blocked until the reset or `tokenwarden resume`'
      : '';
  return `${head}${blocked}; resets ${formatInstant(m.resetsAt)}`;
}

export interface ForecastMessageInput {
  budget: string;
  used: number;
  limit: number;
  rates: BurnRates;
  forecast: Forecast;
  resetsAt: number;
}

/**
 * The text of a forecast alert, e.g. `Budget "global" month forecast: at 2,000 tokens/h (last hour)
 * and 1,500 tokens/h (last day) the month would end at 152,000–170,000 of 140,000 tokens (108.6% at
 * the daily rate); limit reached around 2026-11-28T14:00:00Z; resets 2026-12-01T00:00:00Z`.
 */
export function forecastMessage(m: ForecastMessageInput): string {
  const { projected, exhaustsAt } = m.forecast;
  const low = Math.min(projected.lastHour, projected.lastDay);
  const high = Math.max(projected.lastHour, projected.lastDay);
  const range =
    formatTokens(low) === formatTokens(high)
      ? formatTokens(low)
      : `${formatTokens(low)}–${formatTokens(high)}`;
  const reached = exhaustsAt === null ? '' : `; limit reached around ${formatInstant(exhaustsAt)}`;
  return (
    `Budget ${JSON.stringify(m.budget)} month forecast: at ${formatTokens(m.rates.lastHour)} tokens/h ` +
    `(last hour) and ${formatTokens(m.rates.lastDay)} tokens/h (last day) the month would end at ` +
    `${range} of ${formatTokens(m.limit)} tokens (${formatPercent(projected.lastDay, m.limit)}% at the ` +
    `daily rate)${reached}; resets ${formatInstant(m.resetsAt)}`
  );
}
