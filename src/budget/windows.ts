/**
 * Window arithmetic: which calendar or rolling window of a budget an instant falls in, and the
 * counter slots a request is charged to. Pure: the clock is always passed in (`now`, ms since epoch).
 */
import { Info } from 'luxon';
import type { BudgetDef, CalendarSettings, WindowKind, WindowSlot } from './types.js';
import { WINDOW_KINDS } from './types.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** A half-open span of time `[start, end)` in ms since epoch. */
export interface Span {
  start: number;
  end: number;
}

/** What a summary shows for one window: the span it covers and when it next frees usage (ms). */
export interface WindowBounds {
  /** Inclusive. Calendar: window start. Rolling: start of the oldest bucket still counted. */
  start: number;
  /** Exclusive. Calendar: window end. Rolling: end of the bucket `now` is in. */
  end: number;
  /** Calendar: `end`. Rolling: when the oldest counted bucket leaves the window. */
  resetsAt: number;
}

export interface RollingSpec {
  /** Length of the window, ms. */
  duration: number;
  /** Bucket size, ms. The window counts `duration / granularity + 1` buckets. */
  granularity: number;
}

/**
 * Rolling windows. Granularities keep the number of buckets a store sums small (61, 97, 721) while
 * the over-count from the partially expired oldest bucket stays under 2 % (hour), 1 % (day) and
 * 0.14 % (month) of the window.
 */
export const ROLLING: Readonly<Record<WindowKind, RollingSpec>> = Object.freeze({
  month: Object.freeze({ duration: 30 * DAY, granularity: HOUR }),
  day: Object.freeze({ duration: DAY, granularity: 15 * MINUTE }),
  hour: Object.freeze({ duration: HOUR, granularity: MINUTE }),
});

/** A rolling window resolved for an instant; see {@link WindowSlot}. */
export interface RollingWindow {
  bucket: number;
  from: number;
  resetsAt: number;
}

/**
 * The rolling window of `kind` at `now` (ms). `bucket` is the granularity step `now` is in; the
 * window counts every bucket `>= from`, where `from` is the bucket holding `now - duration`, so the
 * oldest partly expired bucket is counted whole and usage is never under-counted. `resetsAt` is when
 * that oldest bucket drops out (always `> now`). Never throws.
 */
export function rollingWindow(kind: WindowKind, now: number): RollingWindow {
  const { duration, granularity: g } = ROLLING[kind];
  const bucket = Math.floor(now / g) * g;
  const from = Math.floor((now - duration) / g) * g;
  return { bucket, from, resetsAt: from + g + duration };
}

// ---------------------------------------------------------------------------------------------
// Time zone offsets

/** Offset of local wall time from UTC at instant `t`, in ms. */
type OffsetFn = (t: number) => number;

interface ZoneInfo {
  offset: OffsetFn;
  /** The offset never changes (UTC, `UTC+3`): transitions need no searching. */
  fixed: boolean;
}

const zoneCache = new Map<string, ZoneInfo>();

function zoneInfo(timezone: string): ZoneInfo {
  const cached = zoneCache.get(timezone);
  if (cached !== undefined) return cached;
  const zone = typeof timezone === 'string' && timezone !== '' ? Info.normalizeZone(timezone) : null;
  // `system`/`local` zones depend on the host, which must never change where a budget window starts.
  if (zone === null || !zone.isValid || (zone.type !== 'iana' && zone.type !== 'fixed')) {
    throw new RangeError(`invalid time zone: ${JSON.stringify(timezone)}`);
  }
  const info: ZoneInfo = zone.isUniversal
    ? { offset: constantOffset(zone.offset(0) * MINUTE), fixed: true }
    : { offset: (t) => zone.offset(t) * MINUTE, fixed: false };
  zoneCache.set(timezone, info);
  return info;
}

function constantOffset(ms: number): OffsetFn {
  return () => ms;
}

/**
 * True if `timezone` is accepted by the window functions: an IANA zone name (`Europe/Berlin`) or a
 * fixed offset luxon understands (`UTC`, `UTC+3`). Never throws.
 */
export function isValidTimezone(timezone: string): boolean {
  try {
    zoneInfo(timezone);
    return true;
  } catch {
    return false;
  }
}

function checkCycleDay(cycleDay: number): void {
  if (!Number.isInteger(cycleDay) || cycleDay < 1 || cycleDay > 31) {
    throw new RangeError(`invalid cycle day: ${String(cycleDay)} (expected an integer 1..31)`);
  }
}

/**
 * Smallest x in (lo, hi] with pred(x), given !pred(lo) and pred(hi). Offsets change at most once in
 * the spans searched here (an hour or a day), so the predicate switches once.
 */
function firstTrue(lo: number, hi: number, pred: (x: number) => boolean): number {
  let a = lo;
  let b = hi;
  while (b - a > 1) {
    const mid = a + Math.floor((b - a) / 2);
    if (pred(mid)) b = mid;
    else a = mid;
  }
  return b;
}

function mod(x: number, m: number): number {
  const r = x % m;
  return r < 0 ? r + m : r;
}

// ---------------------------------------------------------------------------------------------
// Calendar windows
//
// Windows are maximal runs of instants with the same label, so consecutive windows abut by
// construction. Hour label: (local hour, UTC offset), so a repeated fall-back hour is two windows
// and a mid-hour transition (Lord Howe's 30-minute shift) splits the hour. Day label: the local
// date alone, so DST days are 23/25 h long and a day whose midnight is skipped starts at the first
// instant that carries its date.

function hourSpan(t: number, z: ZoneInfo): Span {
  const off = z.offset;
  const o = off(t);
  const s0 = t - mod(t + o, HOUR);
  const e0 = s0 + HOUR;
  if (z.fixed) return { start: s0, end: e0 };
  const start = off(s0) === o ? s0 : firstTrue(s0, t, (x) => off(x) === o);
  const end = off(e0 - 1) === o ? e0 : firstTrue(t, e0 - 1, (x) => off(x) !== o);
  return { start, end };
}

const localDay = (t: number, o: number): number => Math.floor((t + o) / DAY);

/** Guards the walks below; real zones need at most two steps. */
const MAX_STEPS = 8;

function dayStart(at: number, z: ZoneInfo): number {
  const off = z.offset;
  let t = at;
  let o = off(t);
  const d = localDay(t, o);
  let cand = d * DAY - o;
  if (z.fixed) return cand;
  for (let i = 0; i < MAX_STEPS; i++) {
    cand = d * DAY - o;
    let boundary: number;
    if (off(cand) === o) {
      boundary = cand;
    } else {
      const oo = o;
      boundary = firstTrue(cand, t, (x) => off(x) === oo);
    }
    const p = boundary - 1;
    const op = off(p);
    // A transition exactly at the boundary that keeps the date (a fall-back onto local midnight)
    // is not a day boundary: keep walking back through the earlier offset.
    if (op === o || localDay(p, op) !== d) return boundary;
    t = p;
    o = op;
  }
  return cand;
}

function dayEnd(at: number, z: ZoneInfo): number {
  const off = z.offset;
  let t = at;
  let o = off(t);
  const d = localDay(t, o);
  let cand = (d + 1) * DAY - o;
  if (z.fixed) return cand;
  for (let i = 0; i < MAX_STEPS; i++) {
    cand = (d + 1) * DAY - o;
    let boundary: number;
    if (off(cand - 1) === o) {
      boundary = cand;
    } else {
      const oo = o;
      boundary = firstTrue(t, cand - 1, (x) => off(x) !== oo);
    }
    const ob = off(boundary);
    if (ob === o || localDay(boundary, ob) !== d) return boundary;
    t = boundary;
    o = ob;
  }
  return cand;
}

function daySpan(t: number, z: ZoneInfo): Span {
  return { start: dayStart(t, z), end: dayEnd(t, z) };
}

function daysInMonth(year: number, month0: number): number {
  return new Date(Date.UTC(year, month0 + 1, 0)).getUTCDate();
}

/** Start of the day window of local date year-month0-day (the first instant carrying that date). */
function localDateStart(year: number, month0: number, day: number, z: ZoneInfo): number {
  const off = z.offset;
  // Local noon is never inside a DST gap in any real zone, so it finds an instant of that date.
  const wall = Date.UTC(year, month0, day, 12);
  let t = wall - off(wall);
  for (let i = 0; i < 3; i++) {
    const drift = wall - (t + off(t));
    if (drift === 0) break;
    t += drift;
  }
  // The date was skipped entirely (Samoa 2011): its window is empty, the next date starts here.
  if (localDay(t, off(t)) < Math.floor(wall / DAY)) return dayEnd(t, z);
  return dayStart(t, z);
}

function cycleStart(year: number, month0: number, cycleDay: number, z: ZoneInfo): number {
  return localDateStart(year, month0, Math.min(cycleDay, daysInMonth(year, month0)), z);
}

function monthSpan(t: number, cycleDay: number, z: ZoneInfo): Span {
  const wall = new Date(t + z.offset(t));
  // Month index counted from year 0, so neighbours are simple +/- 1.
  let m = wall.getUTCFullYear() * 12 + wall.getUTCMonth();
  const startOf = (mi: number): number => cycleStart(Math.floor(mi / 12), mod(mi, 12), cycleDay, z);
  let start = startOf(m);
  if (t < start) {
    m -= 1;
    start = startOf(m);
  }
  let end = startOf(m + 1);
  // Only a pathological zone could leave `t` outside after one step; keep the contract anyway.
  for (let i = 0; i < MAX_STEPS && t >= end; i++) {
    m += 1;
    start = end;
    end = startOf(m + 1);
  }
  for (let i = 0; i < MAX_STEPS && t < start; i++) {
    m -= 1;
    end = start;
    start = startOf(m);
  }
  return { start, end };
}

function computeSpan(kind: WindowKind, now: number, cycleDay: number, z: ZoneInfo): Span {
  switch (kind) {
    case 'hour':
      return hourSpan(now, z);
    case 'day':
      return daySpan(now, z);
    case 'month':
      return monthSpan(now, cycleDay, z);
  }
}

/**
 * The calendar window of `kind` containing `now` (ms): `[start, end)` with `start <= now < end`,
 * aligned in the IANA zone `cal.timezone`. The window at `end` starts exactly at `end`.
 * - hour: a local clock hour; a fall-back repeated hour is two windows, a skipped hour has none,
 *   and an offset change inside an hour (30-minute DST shifts) splits it.
 * - day: local midnight to the next (23/25 h on DST days); without a midnight, from the first
 *   instant of that date.
 * - month: from 00:00 of local day `cal.cycleDay` (or the month's last day when shorter) to the
 *   next one.
 * Costs tens of µs on a slow host (time-zone lookups); use {@link WindowResolver} on hot paths.
 * Throws RangeError only for invalid settings (unknown zone, cycle day not an integer 1..31).
 */
export function calendarWindow(kind: WindowKind, now: number, cal: CalendarSettings): Span {
  checkCycleDay(cal.cycleDay);
  return computeSpan(kind, now, cal.cycleDay, zoneInfo(cal.timezone));
}

// ---------------------------------------------------------------------------------------------
// Slots

interface SeriesNames {
  month: string;
  day: string;
  hour: string;
}

function seriesNames(name: string, rolling: boolean): SeriesNames {
  const p = rolling ? `${name}|rolling-` : `${name}|`;
  return { month: `${p}month`, day: `${p}day`, hour: `${p}hour` };
}

/**
 * Resolves windows and slots for one calendar setting, memoising each calendar span while `now`
 * stays inside it, so the per-request cost is a few comparisons and allocations (time-zone lookups
 * happen once per hour/day/month). `now` may move backwards; the span is then recomputed.
 */
export class WindowResolver {
  readonly calendar: Readonly<CalendarSettings>;
  readonly #zone: ZoneInfo;
  #month: Readonly<Span> = { start: 0, end: 0 };
  #day: Readonly<Span> = { start: 0, end: 0 };
  #hour: Readonly<Span> = { start: 0, end: 0 };
  readonly #names = new Map<string, SeriesNames>();
  readonly #rollingNames = new Map<string, SeriesNames>();

  /** Throws RangeError for an unknown time zone or a cycle day outside 1..31 (validate at boot). */
  constructor(cal: CalendarSettings) {
    checkCycleDay(cal.cycleDay);
    this.#zone = zoneInfo(cal.timezone);
    this.calendar = Object.freeze({ timezone: cal.timezone, cycleDay: cal.cycleDay });
  }

  /** The calendar window of `kind` containing `now` (ms); see {@link calendarWindow}. Never throws. */
  window(kind: WindowKind, now: number): Readonly<Span> {
    const cached = kind === 'hour' ? this.#hour : kind === 'day' ? this.#day : this.#month;
    if (now >= cached.start && now < cached.end) return cached;
    const span = Object.freeze(computeSpan(kind, now, this.calendar.cycleDay, this.#zone));
    if (kind === 'hour') this.#hour = span;
    else if (kind === 'day') this.#day = span;
    else this.#month = span;
    return span;
  }

  /**
   * One slot per window kind, in the order month, day, hour (always all three; `limit` null when
   * the budget sets none). Calendar: `bucket = from = start`, `resetsAt = end`, series
   * `<name>|<kind>`. Rolling: see {@link rollingWindow}, series `<name>|rolling-<kind>`.
   * Fresh objects on every call (callers may keep them). Never throws.
   */
  slots(budget: BudgetDef, now: number): WindowSlot[] {
    const names = this.#seriesNames(budget);
    const out: WindowSlot[] = [];
    for (const kind of WINDOW_KINDS) {
      const limit = budget.limits[kind] ?? null;
      if (budget.rolling) {
        const r = rollingWindow(kind, now);
        out.push({
          budget: budget.name,
          kind,
          series: names[kind],
          bucket: r.bucket,
          from: r.from,
          limit,
          resetsAt: r.resetsAt,
        });
      } else {
        const w = this.window(kind, now);
        out.push({
          budget: budget.name,
          kind,
          series: names[kind],
          bucket: w.start,
          from: w.start,
          limit,
          resetsAt: w.end,
        });
      }
    }
    return out;
  }

  /** Span and reset time of one window of `budget` at `now`, for display. Never throws. */
  bounds(budget: BudgetDef, kind: WindowKind, now: number): WindowBounds {
    if (budget.rolling) {
      const r = rollingWindow(kind, now);
      return { start: r.from, end: r.bucket + ROLLING[kind].granularity, resetsAt: r.resetsAt };
    }
    const w = this.window(kind, now);
    return { start: w.start, end: w.end, resetsAt: w.end };
  }

  #seriesNames(budget: BudgetDef): SeriesNames {
    const map = budget.rolling ? this.#rollingNames : this.#names;
    let names = map.get(budget.name);
    if (names === undefined) {
      // Budgets come from config, so the map stays small; the cap only guards against misuse.
      if (map.size >= 10_000) map.clear();
      names = seriesNames(budget.name, budget.rolling);
      map.set(budget.name, names);
    }
    return names;
  }
}

const sharedResolvers = new Map<string, WindowResolver>();

function sharedResolver(cal: CalendarSettings): WindowResolver {
  const key = `${cal.cycleDay}|${cal.timezone}`;
  let r = sharedResolvers.get(key);
  if (r === undefined) {
    if (sharedResolvers.size >= 64) sharedResolvers.clear();
    r = new WindowResolver(cal);
    sharedResolvers.set(key, r);
  }
  return r;
}

/**
 * The three slots (month, day, hour) of `budget` at `now` (ms); see {@link WindowResolver.slots}.
 * Memoised per calendar setting. Throws RangeError only for invalid calendar settings.
 */
export function resolveSlots(budget: BudgetDef, now: number, cal: CalendarSettings): WindowSlot[] {
  return sharedResolver(cal).slots(budget, now);
}

/**
 * Span and reset time of one window of `budget` at `now` (ms), for display; see
 * {@link WindowResolver.bounds}. Throws RangeError only for invalid calendar settings.
 */
export function windowBounds(
  budget: BudgetDef,
  kind: WindowKind,
  now: number,
  cal: CalendarSettings,
): WindowBounds {
  return sharedResolver(cal).bounds(budget, kind, now);
}
