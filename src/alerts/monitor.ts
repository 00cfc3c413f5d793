/**
 * The alert monitor: after usage changes it re-reads the windows of every budget, records each newly
 * crossed threshold once per budget, window, level and period (the store dedupes, so several
 * replicas raise each alert once between them), sends it to every channel, trips the emergency state
 * when a month crosses the emergency threshold, and raises a forecast alert when the burn rate
 * projects the month's limit to be reached before it resets.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { matchesScope } from '../budget/scope.js';
import type { BudgetDef, WindowKind, WindowSlot } from '../budget/types.js';
import type { WindowResolver } from '../budget/windows.js';
import type {
  AlertRecord,
  EmergencyState,
  GroupTotal,
  TimeseriesPoint,
  TimeseriesQuery,
  UsageQuery,
  UsageTotals,
} from '../store/ports.js';
import type { AlertChannel } from './channels.js';
import {
  type BurnRates,
  crossedLevels,
  forecast,
  forecastMessage,
  formatTokens,
  percentOf,
  type ThresholdLevel,
  type Thresholds,
  thresholdMessage,
} from './thresholds.js';

const HOUR = 3_600_000;

/** All the monitor needs from a store (a `Store` satisfies it). */
export interface AlertStore {
  usage(queries: UsageQuery[]): Promise<UsageTotals[]>;
  groupLedger(by: 'agent' | 'model', since: number, until: number): Promise<GroupTotal[]>;
  recordAlert(alert: AlertRecord): Promise<boolean>;
  setEmergency(e: EmergencyState): Promise<void>;
  listEmergencies(): Promise<EmergencyState[]>;
  /** Optional: lets budgets scoped to an agent and an exact model get a forecast too. */
  timeseries?(q: TimeseriesQuery): Promise<TimeseriesPoint[]>;
  /** Optional: reads the reset marks (see RESETS_SETTING), so alerts can fire again after a reset. */
  getSetting?(key: string): Promise<string | null>;
}

/**
 * Setting holding, as JSON `{ "<budget>|<window>": ms }`, when each budget window was last reset. An
 * alert belongs to a period; a reset starts a new one, so the thresholds can alert (and trip the
 * emergency) again in the same calendar month.
 */
export const RESETS_SETTING = 'resets';

async function readResets(store: AlertStore): Promise<Record<string, number>> {
  const raw = store.getSetting ? await store.getSetting(RESETS_SETTING) : null;
  if (!raw) return {};
  try {
    const v: unknown = JSON.parse(raw);
    return typeof v === 'object' && v !== null ? (v as Record<string, number>) : {};
  } catch {
    return {};
  }
}

export interface AlertMonitorOptions {
  store: AlertStore;
  resolver: WindowResolver;
  /** Read on every evaluation, so budgets changed at run time take effect. */
  budgets: () => readonly BudgetDef[];
  /** Read on every evaluation. Percent of each window's limit. */
  thresholds: () => Thresholds;
  /**
   * Windows that raise threshold alerts (default `['month']`): an hourly window of 194 tokens would
   * otherwise alert dozens of times a day.
   */
  windows?: readonly WindowKind[];
  /** Raise forecast alerts for budgets with a month limit (default true). */
  forecast?: boolean;
  /**
   * At most one forecast check per this many ms (default 30 s): burn rates read the ledger, and a
   * projection over days does not change in a second.
   */
  forecastEveryMs?: number;
  channels: readonly AlertChannel[];
  /** Clock, ms since epoch. */
  now: () => number;
  logger: Logger;
  /** Called after the monitor put a budget into emergency state. Exceptions are logged. */
  onEmergency?: (e: EmergencyState) => void;
}

/** Only the month can trip an emergency; a full hour or day resets soon, so it caps at critical. */
function levelsFor(kind: WindowKind, levels: ThresholdLevel[]): ThresholdLevel[] {
  return kind === 'month' ? levels : levels.filter((l) => l !== 'emergency');
}

function newAlertId(): string {
  return `alert_${randomBytes(12).toString('base64url')}`;
}

/** Scope key for caching burn rates within one evaluation. */
function scopeKey(b: BudgetDef): string {
  return `${b.scope.agent ?? ''}\u0000${b.scope.model ?? ''}`;
}

const sumCounted = (rows: readonly { counted: number }[]): number =>
  rows.reduce((acc, r) => acc + r.counted, 0);

/**
 * Evaluates budgets against thresholds and raises alerts. Call {@link poke} whenever usage changed
 * (after each settle); evaluations are coalesced and never overlap.
 */
export class AlertMonitor {
  readonly #o: AlertMonitorOptions;
  readonly #windows: ReadonlySet<WindowKind>;
  /** Tail of the chain of evaluations; each link never rejects. */
  #tail: Promise<void> = Promise.resolve();
  /** An evaluation requested by poke() that has not started yet. */
  #queued = false;
  #closed = false;
  #lastForecast = Number.NEGATIVE_INFINITY;
  /** Emergency states whose write failed, retried on the next evaluations while still current. */
  readonly #pendingEmergencies = new Map<string, EmergencyState>();

  constructor(opts: AlertMonitorOptions) {
    this.#o = opts;
    this.#windows = new Set(opts.windows ?? ['month']);
  }

  /**
   * Requests an evaluation soon (on a later turn of the event loop). Coalesced: while one is queued,
   * further pokes add nothing; while one runs, at most one more is queued. No timer is left behind.
   * Never throws; evaluation errors are logged.
   */
  poke(): void {
    if (this.#closed || this.#queued) return;
    this.#queued = true;
    this.#tail = this.#tail
      .then(() => new Promise<void>((resolve) => setImmediate(resolve)))
      .then(() => {
        this.#queued = false;
        if (this.#closed) return;
        return this.#evaluate().then(
          () => {},
          (err: unknown) => this.#o.logger.error({ err }, 'alert evaluation failed'),
        );
      });
  }

  /**
   * Evaluates now (after any evaluation in progress) and returns the alerts it newly recorded, in
   * the order they were sent. Rejects if the store fails (poke() logs instead).
   */
  evaluate(): Promise<AlertRecord[]> {
    const run = this.#tail.then(() => this.#evaluate());
    this.#tail = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  /** Resolves once no evaluation is running or queued. */
  async idle(): Promise<void> {
    let tail: Promise<void>;
    do {
      tail = this.#tail;
      await tail;
    } while (tail !== this.#tail);
  }

  /** Stops accepting pokes and waits for the evaluation in progress. Channels are the caller's to close. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.idle();
  }

  async #evaluate(): Promise<AlertRecord[]> {
    const { store, resolver } = this.#o;
    const now = this.#o.now();
    const budgets = this.#o.budgets();
    const thresholds = this.#o.thresholds();
    const fired: AlertRecord[] = [];

    await this.#retryPendingEmergencies(now);

    // One usage round trip for every alerting window of every budget.
    const watched: Array<{ budget: BudgetDef; slot: WindowSlot; period: number }> = [];
    const months = new Map<BudgetDef, { slot: WindowSlot; period: number }>();
    const resets = await readResets(this.#o.store);
    for (const budget of budgets) {
      for (const slot of resolver.slots(budget, now)) {
        if (slot.limit === null || !(slot.limit > 0)) continue;
        const period = this.#period(budget, slot, now, resets);
        if (slot.kind === 'month') months.set(budget, { slot, period });
        if (this.#windows.has(slot.kind)) watched.push({ budget, slot, period });
      }
    }
    const forecastDue = now - this.#lastForecast >= (this.#o.forecastEveryMs ?? 30_000);
    const forecastOn = (this.#o.forecast ?? true) && forecastDue;
    if (forecastOn) this.#lastForecast = now;
    const forecasted = forecastOn ? [...months].filter(([b]) => !b.rolling) : [];
    const queries = [
      ...watched.map((w) => ({ series: w.slot.series, from: w.slot.from })),
      ...forecasted.map(([, m]) => ({ series: m.slot.series, from: m.slot.from })),
    ];
    const totals = queries.length === 0 ? [] : await store.usage(queries);

    let emergencies: Promise<EmergencyState[]> | null = null;
    const activeEmergency = async (budget: string): Promise<boolean> => {
      emergencies ??= store.listEmergencies();
      const list = await emergencies;
      return list.some((e) => e.budget === budget && (e.until === null || e.until > now));
    };

    for (const [i, { budget, slot, period }] of watched.entries()) {
      const used = totals[i]?.used ?? 0;
      const limit = slot.limit ?? 0;
      for (const level of levelsFor(slot.kind, crossedLevels(used, limit, thresholds))) {
        const alert: AlertRecord = {
          id: newAlertId(),
          level,
          budget: budget.name,
          window: slot.kind,
          period,
          percent: percentOf(used, limit),
          at: now,
          message: thresholdMessage({
            level,
            budget: budget.name,
            window: slot.kind,
            used,
            limit,
            threshold: thresholds[level],
            resetsAt: slot.resetsAt,
          }),
        };
        if (!(await store.recordAlert(alert))) continue;
        if (level === 'emergency' && slot.kind === 'month' && !(await activeEmergency(budget.name))) {
          await this.#trip(
            {
              budget: budget.name,
              since: now,
              until: slot.resetsAt,
              reason:
                `${percentOf(used, limit)}% of the month used (${formatTokens(used)} of ` +
                `${formatTokens(limit)} tokens), emergency threshold ${thresholds.emergency}%`,
              manual: false,
            },
            `${budget.name}\u0000${period}`,
          );
        }
        this.#send(alert);
        fired.push(alert);
      }
    }

    const rates = new Map<string, Promise<BurnRates | null>>();
    for (const [j, [budget, { slot, period }]] of forecasted.entries()) {
      const used = totals[watched.length + j]?.used ?? 0;
      const limit = slot.limit ?? 0;
      // No projection is needed once the limit is reached: admission already refuses everything.
      if (used >= limit) continue;
      const key = scopeKey(budget);
      let rate = rates.get(key);
      if (rate === undefined) {
        rate = this.#burnRates(budget, now);
        rates.set(key, rate);
      }
      const r = await rate;
      if (r === null) continue;
      const f = forecast({ used, limit, rates: r, now, resetsAt: slot.resetsAt });
      if (!f.due) continue;
      const alert: AlertRecord = {
        id: newAlertId(),
        level: 'forecast',
        budget: budget.name,
        window: 'month',
        period,
        percent: percentOf(f.projected.lastDay, limit),
        at: now,
        message: forecastMessage({
          budget: budget.name,
          used,
          limit,
          rates: r,
          forecast: f,
          resetsAt: slot.resetsAt,
        }),
      };
      if (!(await store.recordAlert(alert))) continue;
      this.#send(alert);
      fired.push(alert);
    }
    return fired;
  }

  /**
   * The period an alert of this window belongs to. Calendar windows: the window's start. A rolling
   * window's start moves with every bucket (each hour for the month), which would re-raise the same
   * alert every hour; its alerts are deduped per calendar window of the same kind instead.
   */
  #period(budget: BudgetDef, slot: WindowSlot, now: number, resets: Record<string, number>): number {
    const start = budget.rolling ? this.#o.resolver.window(slot.kind, now).start : slot.from;
    const reset = resets[`${budget.name}|${slot.kind}`];
    return typeof reset === 'number' && reset > start && reset <= now ? reset : start;
  }

  /**
   * Counted tokens per hour over the last hour and the last 24 h for the budget's scope, from the
   * ledger (which is not per budget). Global: the whole ledger; agent or model glob: the matching
   * groups; agent + exact model: the store's time series when it has one. null: no estimate (skip).
   */
  async #burnRates(budget: BudgetDef, now: number): Promise<BurnRates | null> {
    const { store } = this.#o;
    const { agent, model } = budget.scope;
    const until = now + 1;
    let hour: number;
    let day: number;
    if (agent !== undefined && model !== undefined) {
      if (store.timeseries === undefined || /[*?]/.test(model)) return null;
      const q = { bucketMs: HOUR, agent, model, until };
      const [h, d] = await Promise.all([
        store.timeseries({ ...q, since: now - HOUR }),
        store.timeseries({ ...q, since: now - 24 * HOUR }),
      ]);
      hour = sumCounted(h);
      day = sumCounted(d);
    } else {
      const by = model !== undefined ? 'model' : 'agent';
      const keep = (g: GroupTotal): boolean =>
        model !== undefined ? matchesScope({ model }, '', g.key) : agent === undefined || g.key === agent;
      const [h, d] = await Promise.all([
        store.groupLedger(by, now - HOUR, until),
        store.groupLedger(by, now - 24 * HOUR, until),
      ]);
      hour = sumCounted(h.filter(keep));
      day = sumCounted(d.filter(keep));
    }
    return { lastHour: hour, lastDay: day / 24 };
  }

  /** Persists an emergency state; `key` names its budget and period for retries. */
  async #trip(e: EmergencyState, key: string): Promise<void> {
    try {
      await this.#o.store.setEmergency(e);
    } catch (err) {
      // The alert is already recorded, so a later evaluation would not trip it again: keep retrying.
      this.#pendingEmergencies.set(key, e);
      this.#o.logger.error({ err, budget: e.budget }, 'could not persist emergency state; will retry');
      return;
    }
    this.#pendingEmergencies.delete(key);
    this.#o.logger.error(
      { budget: e.budget, until: e.until, reason: e.reason },
      'budget entered emergency state',
    );
    try {
      this.#o.onEmergency?.(e);
    } catch (err) {
      this.#o.logger.error({ err }, 'onEmergency handler threw');
    }
  }

  async #retryPendingEmergencies(now: number): Promise<void> {
    for (const [key, e] of [...this.#pendingEmergencies]) {
      if (e.until !== null && e.until <= now) {
        this.#pendingEmergencies.delete(key);
        continue;
      }
      await this.#trip(e, key);
    }
  }

  #send(alert: AlertRecord): void {
    for (const channel of this.#o.channels) {
      try {
        channel.send(alert);
      } catch (err) {
        // Channels promise never to throw; one that does must not stop the others.
        this.#o.logger.error({ err, channel: channel.name }, 'alert channel threw');
      }
    }
  }
}
