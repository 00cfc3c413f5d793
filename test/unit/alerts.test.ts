import fc from 'fast-check';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import type { AlertChannel } from '../../src/alerts/channels.js';
import { AlertMonitor, type AlertMonitorOptions, type AlertStore } from '../../src/alerts/monitor.js';
import {
  crossedLevels,
  forecast,
  forecastMessage,
  percentOf,
  THRESHOLD_LEVELS,
  type Thresholds,
  thresholdMessage,
} from '../../src/alerts/thresholds.js';
import type { BudgetDef, WindowKind } from '../../src/budget/types.js';
import { WindowResolver } from '../../src/budget/windows.js';
import { createMemoryStore } from '../../src/store/memory/memory-store.js';
import type {
  AlertRecord,
  EmergencyState,
  GroupTotal,
  LedgerRow,
  TimeseriesPoint,
  TimeseriesQuery,
  UsageQuery,
  UsageTotals,
} from '../../src/store/ports.js';

const HOUR = 3_600_000;
const at = (iso: string): number => Date.parse(iso);
const DEFAULTS: Thresholds = { warning: 80, critical: 95, emergency: 98 };

describe('crossedLevels', () => {
  it('uses the SPEC §2 boundaries exactly (>=)', () => {
    expect(crossedLevels(111_999, 140_000, DEFAULTS)).toEqual([]);
    expect(crossedLevels(112_000, 140_000, DEFAULTS)).toEqual(['warning']);
    expect(crossedLevels(132_999, 140_000, DEFAULTS)).toEqual(['warning']);
    expect(crossedLevels(133_000, 140_000, DEFAULTS)).toEqual(['warning', 'critical']);
    expect(crossedLevels(137_199, 140_000, DEFAULTS)).toEqual(['warning', 'critical']);
    expect(crossedLevels(137_200, 140_000, DEFAULTS)).toEqual(['warning', 'critical', 'emergency']);
    expect(crossedLevels(500_000, 140_000, DEFAULTS)).toEqual(['warning', 'critical', 'emergency']);
  });

  it('raises nothing without a limit or with a limit of 0', () => {
    expect(crossedLevels(1_000, null, DEFAULTS)).toEqual([]);
    expect(crossedLevels(1_000, 0, DEFAULTS)).toEqual([]);
    expect(crossedLevels(0, 0, DEFAULTS)).toEqual([]);
  });

  it('is exact where floating-point division is not (7 of 10 at 70%)', () => {
    // 7 / 10 * 100 === 70.00000000000001 in floating point, 0.7 * 100 !== 70 either way round.
    expect(crossedLevels(7, 10, { warning: 70, critical: 90, emergency: 99 })).toEqual(['warning']);
    expect(crossedLevels(29, 100, { warning: 29, critical: 90, emergency: 99 })).toEqual(['warning']);
  });

  const thresholdsArb = fc
    .tuple(
      fc.double({ min: 1, max: 100, noNaN: true }),
      fc.double({ min: 1, max: 100, noNaN: true }),
      fc.double({ min: 1, max: 100, noNaN: true }),
    )
    .map(([a, b, c]) => {
      const [warning, critical, emergency] = [a, b, c].sort((x, y) => x - y) as [number, number, number];
      return { warning, critical, emergency };
    });

  it('property: levels are monotone in used, in order, and a prefix of warning → critical → emergency', () => {
    fc.assert(
      fc.property(
        fc.nat({ max: 1_000_000 }),
        fc.nat({ max: 1_000_000 }),
        fc.integer({ min: 1, max: 1_000_000 }),
        thresholdsArb,
        (a, b, limit, t) => {
          const [lo, hi] = a <= b ? [a, b] : [b, a];
          const low = crossedLevels(lo, limit, t);
          const high = crossedLevels(hi, limit, t);
          expect(high.length).toBeGreaterThanOrEqual(low.length);
          for (const l of low) expect(high).toContain(l);
          expect(high).toEqual(THRESHOLD_LEVELS.slice(0, high.length));
          // Agrees with the definition percent >= threshold (away from rounding boundaries).
          const pct = (hi / limit) * 100;
          for (const l of THRESHOLD_LEVELS) {
            if (Math.abs(pct - t[l]) > 1e-9) expect(high.includes(l)).toBe(pct >= t[l]);
          }
        },
      ),
    );
  });
});

describe('forecast', () => {
  const now = at('2026-11-16T00:00:00Z');
  const resetsAt = at('2026-12-01T00:00:00Z'); // 360 hours left

  it('projects used + rate × hours left for both rates', () => {
    const f = forecast({
      used: 70_000,
      limit: 140_000,
      rates: { lastHour: 300, lastDay: 150 },
      now,
      resetsAt,
    });
    expect(f.hoursLeft).toBe(360);
    expect(f.projected).toEqual({ lastHour: 70_000 + 300 * 360, lastDay: 70_000 + 150 * 360 });
  });

  it('is due only when both projections exceed the limit', () => {
    const due = (lastHour: number, lastDay: number) =>
      forecast({ used: 70_000, limit: 140_000, rates: { lastHour, lastDay }, now, resetsAt }).due;
    expect(due(250, 200)).toBe(true); // 160,000 and 142,000
    expect(due(1_000, 100)).toBe(false); // one hot hour: 430,000 but 106,000
    expect(due(100, 1_000)).toBe(false); // a busy day that has cooled down
    expect(due(0, 0)).toBe(false);
    // Exactly reaching the limit is not exceeding it.
    expect(due(70_000 / 360, 70_000 / 360)).toBe(false);
  });

  it('is never due once the limit is reached, without a limit, or after the reset', () => {
    const rates = { lastHour: 10_000, lastDay: 10_000 };
    expect(forecast({ used: 140_000, limit: 140_000, rates, now, resetsAt }).due).toBe(false);
    expect(forecast({ used: 1, limit: null, rates, now, resetsAt }).due).toBe(false);
    expect(forecast({ used: 1, limit: 0, rates, now, resetsAt }).due).toBe(false);
    expect(forecast({ used: 1, limit: 140_000, rates, now: resetsAt, resetsAt }).due).toBe(false);
  });

  it('says when the limit is reached at the daily rate, if before the reset', () => {
    const f = forecast({
      used: 70_000,
      limit: 140_000,
      rates: { lastHour: 500, lastDay: 350 },
      now,
      resetsAt,
    });
    expect(f.exhaustsAt).toBe(now + 200 * HOUR);
    const slow = forecast({
      used: 70_000,
      limit: 140_000,
      rates: { lastHour: 500, lastDay: 100 },
      now,
      resetsAt,
    });
    expect(slow.exhaustsAt).toBeNull();
  });
});

describe('messages', () => {
  it('formats a threshold alert for people', () => {
    expect(
      thresholdMessage({
        level: 'warning',
        budget: 'global',
        window: 'month',
        used: 113_680,
        limit: 140_000,
        threshold: 80,
        resetsAt: at('2026-12-01T00:00:00Z'),
      }),
    ).toBe(
      'Budget "global" month window at 81.2% (113,680 of 140,000 tokens) — warning threshold 80% crossed; ' +
        'resets 2026-12-01T00:00:00Z',
    );
  });

  it('rounds the percent down, so 97.96% never reads as 98.0%', () => {
    const m = thresholdMessage({
      level: 'critical',
      budget: 'b',
      window: 'day',
      used: 9_796,
      limit: 10_000,
      threshold: 95,
      resetsAt: at('2026-11-17T00:00:00Z'),
    });
    expect(m).toContain('at 97.9% (9,796 of 10,000 tokens) — critical threshold 95% crossed');
  });

  it('says a month emergency blocks traffic', () => {
    const base = { budget: 'global', used: 137_200, limit: 140_000, threshold: 98, resetsAt: 0 };
    expect(thresholdMessage({ ...base, level: 'emergency', window: 'month' })).toMatch(/blocked until/);
    expect(thresholdMessage({ ...base, level: 'critical', window: 'month' })).not.toMatch(/blocked/);
  });

  it('formats a forecast alert with both rates, the projection and the exhaustion time', () => {
    const now = at('2026-11-16T00:00:00Z');
    const resetsAt = at('2026-12-01T00:00:00Z');
    const rates = { lastHour: 500, lastDay: 350 };
    const f = forecast({ used: 70_000, limit: 140_000, rates, now, resetsAt });
    expect(
      forecastMessage({ budget: 'global', used: 70_000, limit: 140_000, rates, forecast: f, resetsAt }),
    ).toBe(
      'Budget "global" month forecast: at 500 tokens/h (last hour) and 350 tokens/h (last day) the month ' +
        'would end at 196,000–250,000 of 140,000 tokens (140.0% at the daily rate); limit reached around ' +
        '2026-11-24T08:00:00Z; resets 2026-12-01T00:00:00Z',
    );
  });

  it('percentOf rounds to two decimals', () => {
    expect(percentOf(113_680, 140_000)).toBe(81.2);
    expect(percentOf(1, 3)).toBe(33.33);
    expect(percentOf(5, null)).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------
// Monitor

interface Row {
  ts: number;
  agent: string;
  model: string | null;
  counted: number;
}

/** The store methods the monitor calls, with the ControlStore dedupe semantics, in memory. */
class FakeStore implements AlertStore {
  /** Used tokens per series (the current period's; tests set it as usage "rises"). */
  readonly used = new Map<string, number>();
  readonly alerts: AlertRecord[] = [];
  readonly emergencies = new Map<string, EmergencyState>();
  readonly setEmergencyCalls: EmergencyState[] = [];
  readonly rows: Row[] = [];
  usageCalls = 0;
  inFlight = 0;
  maxInFlight = 0;
  /** When set, usage() waits for it (to hold an evaluation open). */
  gate: Promise<void> | null = null;
  failSetEmergency = 0;

  async usage(queries: UsageQuery[]): Promise<UsageTotals[]> {
    this.usageCalls++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      if (this.gate) await this.gate;
      return queries.map((q) => ({ used: this.used.get(q.series) ?? 0, reserved: 0 }));
    } finally {
      this.inFlight--;
    }
  }

  async groupLedger(by: 'agent' | 'model', since: number, until: number): Promise<GroupTotal[]> {
    const groups = new Map<string, GroupTotal>();
    for (const r of this.rows) {
      const key = by === 'agent' ? r.agent : r.model;
      if (r.ts < since || r.ts >= until || key === null) continue;
      const g = groups.get(key) ?? { key, requests: 0, counted: 0 };
      g.requests++;
      g.counted += r.counted;
      groups.set(key, g);
    }
    return [...groups.values()];
  }

  async timeseries(q: TimeseriesQuery): Promise<TimeseriesPoint[]> {
    const counted = this.rows
      .filter((r) => r.ts >= q.since && r.ts < q.until)
      .filter(
        (r) =>
          (q.agent === undefined || r.agent === q.agent) && (q.model === undefined || r.model === q.model),
      )
      .reduce((a, r) => a + r.counted, 0);
    if (counted === 0) return [];
    return [
      {
        bucket: q.since,
        requests: 1,
        counted,
        inputTokens: 0,
        outputTokens: 0,
        cacheCreationTokens: 0,
        cacheReadTokens: 0,
        costUsd: 0,
        blocked: 0,
      },
    ];
  }

  async recordAlert(a: AlertRecord): Promise<boolean> {
    const dup = this.alerts.some(
      (x) => x.budget === a.budget && x.window === a.window && x.level === a.level && x.period === a.period,
    );
    if (dup) return false;
    this.alerts.push(a);
    return true;
  }

  async setEmergency(e: EmergencyState): Promise<void> {
    if (this.failSetEmergency > 0) {
      this.failSetEmergency--;
      throw new Error('database is locked');
    }
    this.setEmergencyCalls.push(e);
    this.emergencies.set(e.budget, e);
  }

  async listEmergencies(): Promise<EmergencyState[]> {
    return [...this.emergencies.values()];
  }
}

class RecordingChannel implements AlertChannel {
  readonly sent: AlertRecord[] = [];
  constructor(readonly name = 'rec') {}
  send(alert: AlertRecord): void {
    this.sent.push(alert);
  }
}

const budget = (name: string, limits: BudgetDef['limits'], extra: Partial<BudgetDef> = {}): BudgetDef => ({
  name,
  scope: {},
  limits,
  rolling: false,
  ...extra,
});

const NOV_16 = at('2026-11-16T12:00:00Z');
const NOV_START = at('2026-11-01T00:00:00Z');
const DEC_START = at('2026-12-01T00:00:00Z');

function setup(opts: Partial<Omit<AlertMonitorOptions, 'budgets'>> & { budgets?: BudgetDef[] } = {}) {
  const { budgets: given, ...rest } = opts;
  const store = new FakeStore();
  const channel = new RecordingChannel();
  const clock = { now: NOV_16 };
  const emergencies: EmergencyState[] = [];
  const budgets = given ?? [budget('global', { month: 140_000, day: 4_667, hour: 194 })];
  const monitor = new AlertMonitor({
    store,
    resolver: new WindowResolver({ timezone: 'UTC', cycleDay: 1 }),
    budgets: () => budgets,
    thresholds: () => DEFAULTS,
    channels: [channel],
    now: () => clock.now,
    logger: pino({ level: 'silent' }),
    onEmergency: (e) => emergencies.push(e),
    forecastEveryMs: 0,
    ...rest,
  });
  return { store, channel, clock, emergencies, monitor };
}

const levelsOf = (alerts: AlertRecord[]) => alerts.map((a) => `${a.budget}/${a.window}/${a.level}`);

describe('AlertMonitor: thresholds', () => {
  it('fires warning → critical → emergency once each as usage rises, never again in the same period', async () => {
    const { store, channel, monitor } = setup();
    const steps: Array<[number, string[]]> = [
      [100_000, []],
      [112_000, ['global/month/warning']],
      [120_000, []],
      [133_500, ['global/month/critical']],
      [135_000, []],
      [137_200, ['global/month/emergency']],
      [139_000, []],
    ];
    for (const [used, expected] of steps) {
      store.used.set('global|month', used);
      expect(levelsOf(await monitor.evaluate())).toEqual(expected);
      expect(levelsOf(await monitor.evaluate())).toEqual([]);
    }
    expect(levelsOf(channel.sent)).toEqual([
      'global/month/warning',
      'global/month/critical',
      'global/month/emergency',
    ]);
    const [warning] = channel.sent;
    expect(warning).toMatchObject({ period: NOV_START, percent: 80, at: NOV_16 });
    expect(warning?.id).toMatch(/^alert_[A-Za-z0-9_-]{8,}$/);
    expect(warning?.message).toBe(
      'Budget "global" month window at 80.0% (112,000 of 140,000 tokens) — warning threshold 80% crossed; ' +
        'resets 2026-12-01T00:00:00Z',
    );
  });

  it('sends every level crossed at once, in level order, to every channel', async () => {
    const first = new RecordingChannel('first');
    const second = new RecordingChannel('second');
    const { store, monitor } = setup({ channels: [first, second] });
    store.used.set('global|month', 139_999);
    await monitor.evaluate();
    expect(levelsOf(first.sent)).toEqual([
      'global/month/warning',
      'global/month/critical',
      'global/month/emergency',
    ]);
    expect(second.sent).toEqual(first.sent);
  });

  it('fires again in the next period', async () => {
    const { store, clock, channel, monitor } = setup();
    store.used.set('global|month', 113_000);
    await monitor.evaluate();
    clock.now = at('2026-12-02T00:00:00Z');
    store.used.set('global|month', 2_000);
    expect(await monitor.evaluate()).toEqual([]);
    store.used.set('global|month', 115_000);
    expect(levelsOf(await monitor.evaluate())).toEqual(['global/month/warning']);
    expect(channel.sent.map((a) => a.period)).toEqual([NOV_START, DEC_START]);
  });

  it('only alerts on the month window by default, and on the windows configured', async () => {
    const quiet = setup();
    quiet.store.used.set('global|day', 4_667);
    quiet.store.used.set('global|hour', 194);
    expect(await quiet.monitor.evaluate()).toEqual([]);

    const loud = setup({ windows: ['month', 'day', 'hour'] satisfies WindowKind[] });
    loud.store.used.set('global|hour', 190);
    expect(levelsOf(await loud.monitor.evaluate())).toEqual(['global/hour/warning', 'global/hour/critical']);
  });

  it('skips windows without a limit and budgets with a limit of 0', async () => {
    const { store, monitor } = setup({ budgets: [budget('a', { day: 100 }), budget('z', { month: 0 })] });
    store.used.set('a|month', 1_000_000);
    store.used.set('z|month', 1_000_000);
    expect(await monitor.evaluate()).toEqual([]);
  });

  it('dedupes a rolling window per calendar period, not per moving bucket', async () => {
    const { store, clock, monitor } = setup({ budgets: [budget('r', { month: 1_000 }, { rolling: true })] });
    store.used.set('r|rolling-month', 900);
    expect(levelsOf(await monitor.evaluate())).toEqual(['r/month/warning']);
    clock.now += 5 * HOUR; // the rolling window's start moved five buckets
    expect(await monitor.evaluate()).toEqual([]);
    expect(store.alerts[0]?.period).toBe(NOV_START);
  });
});

describe('AlertMonitor: emergency', () => {
  it('puts the budget into emergency until the month resets when the month crosses the threshold', async () => {
    const { store, emergencies, monitor } = setup();
    store.used.set('global|month', 137_300);
    await monitor.evaluate();
    const expected = { budget: 'global', since: NOV_16, until: DEC_START, manual: false };
    expect(store.setEmergencyCalls).toEqual([expect.objectContaining(expected)]);
    expect(store.setEmergencyCalls[0]?.reason).toMatch(/98\.07% of the month used/);
    expect(emergencies).toEqual(store.setEmergencyCalls);
    await monitor.evaluate();
    expect(store.setEmergencyCalls).toHaveLength(1);
  });

  it('never trips from a day or hour window, which stop at critical', async () => {
    const { store, channel, emergencies, monitor } = setup({ windows: ['month', 'day', 'hour'] });
    store.used.set('global|day', 4_667);
    store.used.set('global|hour', 194);
    await monitor.evaluate();
    expect(levelsOf(channel.sent)).toEqual([
      'global/day/warning',
      'global/day/critical',
      'global/hour/warning',
      'global/hour/critical',
    ]);
    expect(store.setEmergencyCalls).toEqual([]);
    expect(emergencies).toEqual([]);
  });

  it('leaves a budget already in emergency alone, but still sends the alert', async () => {
    const { store, channel, emergencies, monitor } = setup();
    const halt = { budget: 'global', since: 1, until: null, reason: 'halted by operator', manual: true };
    store.emergencies.set('global', halt);
    store.used.set('global|month', 138_000);
    await monitor.evaluate();
    expect(store.setEmergencyCalls).toEqual([]);
    expect(store.emergencies.get('global')).toBe(halt);
    expect(emergencies).toEqual([]);
    expect(levelsOf(channel.sent)).toContain('global/month/emergency');
  });

  it('an expired emergency of an earlier period does not count', async () => {
    const { store, monitor } = setup();
    store.emergencies.set('global', {
      budget: 'global',
      since: 1,
      until: NOV_START,
      reason: 'old',
      manual: false,
    });
    store.used.set('global|month', 138_000);
    await monitor.evaluate();
    expect(store.setEmergencyCalls).toHaveLength(1);
  });

  it('retries a failed emergency write on the next evaluation', async () => {
    const { store, emergencies, monitor } = setup();
    store.failSetEmergency = 1;
    store.used.set('global|month', 138_000);
    await monitor.evaluate();
    expect(store.emergencies.size).toBe(0);
    await monitor.evaluate();
    expect(store.emergencies.get('global')).toMatchObject({ until: DEC_START, manual: false });
    expect(emergencies).toHaveLength(1);
  });
});

describe('AlertMonitor: forecast', () => {
  /** `perHour` counted tokens in each of the last `hours` hours, spread per agent/model. */
  function burn(
    store: FakeStore,
    now: number,
    hours: number,
    perHour: number,
    agent = 'a1',
    model = 'claude-x',
  ) {
    for (let h = 0; h < hours; h++)
      store.rows.push({ ts: now - h * HOUR - 1_000, agent, model, counted: perHour });
  }

  // 14.5 days (348 h) left from NOV_16 to DEC_START.
  it('fires once per month period when both burn rates project past the limit', async () => {
    const { store, channel, monitor } = setup();
    store.used.set('global|month', 70_000);
    burn(store, NOV_16, 24, 400); // 400/h over the last hour and the last day: 70,000 + 139,200
    const fired = await monitor.evaluate();
    expect(levelsOf(fired)).toEqual(['global/month/forecast']);
    expect(fired[0]).toMatchObject({ period: NOV_START, percent: percentOf(70_000 + 400 * 348, 140_000) });
    expect(fired[0]?.message).toMatch(/^Budget "global" month forecast: at 400 tokens\/h \(last hour\)/);
    expect(await monitor.evaluate()).toEqual([]);
    expect(channel.sent).toHaveLength(1);
  });

  it('does not fire on one hot hour alone', async () => {
    const { store, monitor } = setup();
    store.used.set('global|month', 70_000);
    // Last hour 2,000/h projects 766,000; the day's average, 83/h, only 99,000.
    burn(store, NOV_16, 1, 2_000);
    expect(await monitor.evaluate()).toEqual([]);
  });

  it('does not fire once the limit is reached, or for a quiet budget', async () => {
    const full = setup();
    full.store.used.set('global|month', 140_000);
    burn(full.store, NOV_16, 24, 1_000);
    expect(levelsOf(await full.monitor.evaluate())).not.toContain('global/month/forecast');

    const quiet = setup();
    quiet.store.used.set('global|month', 70_000);
    burn(quiet.store, NOV_16, 24, 100);
    expect(await quiet.monitor.evaluate()).toEqual([]);
  });

  it('checks the forecast at most once per forecastEveryMs', async () => {
    const { store, clock, monitor } = setup({ forecastEveryMs: 30_000 });
    store.used.set('global|month', 70_000);
    burn(store, NOV_16, 24, 100);
    expect(await monitor.evaluate()).toEqual([]);
    burn(store, NOV_16, 24, 5_000);
    expect(await monitor.evaluate()).toEqual([]); // too soon to look again
    clock.now += 30_000;
    expect(levelsOf(await monitor.evaluate())).toEqual(['global/month/forecast']);
  });

  it('uses only the scoped agent or model traffic for scoped budgets', async () => {
    const budgets = [
      budget('researcher', { month: 50_000 }, { scope: { agent: 'researcher' } }),
      budget('opus', { month: 50_000 }, { scope: { model: 'claude-opus-*' } }),
    ];
    const { store, monitor } = setup({ budgets });
    store.used.set('researcher|month', 10_000);
    store.used.set('opus|month', 10_000);
    // Heavy traffic by another agent on another model: neither scoped budget should forecast.
    burn(store, NOV_16, 24, 5_000, 'writer', 'claude-haiku-4');
    expect(await monitor.evaluate()).toEqual([]);
    burn(store, NOV_16, 24, 200, 'researcher', 'claude-opus-4');
    expect(levelsOf(await monitor.evaluate())).toEqual(['researcher/month/forecast', 'opus/month/forecast']);
  });

  it('uses the time series for agent+model budgets, and skips them when the model is a glob', async () => {
    const budgets = [
      budget('exact', { month: 50_000 }, { scope: { agent: 'r', model: 'claude-opus-4' } }),
      budget('glob', { month: 50_000 }, { scope: { agent: 'r', model: 'claude-*' } }),
    ];
    const { store, monitor } = setup({ budgets });
    store.used.set('exact|month', 10_000);
    store.used.set('glob|month', 10_000);
    burn(store, NOV_16, 24, 200, 'r', 'claude-opus-4');
    expect(levelsOf(await monitor.evaluate())).toEqual(['exact/month/forecast']);
  });

  it('can be turned off', async () => {
    const { store, monitor } = setup({ forecast: false });
    store.used.set('global|month', 70_000);
    burn(store, NOV_16, 24, 400);
    expect(await monitor.evaluate()).toEqual([]);
  });
});

describe('AlertMonitor: poke', () => {
  it('coalesces a burst of pokes into one evaluation', async () => {
    const { store, channel, monitor } = setup();
    store.used.set('global|month', 113_000);
    for (let i = 0; i < 50; i++) monitor.poke();
    expect(store.usageCalls).toBe(0); // not synchronous
    await monitor.idle();
    expect(store.usageCalls).toBe(1);
    expect(levelsOf(channel.sent)).toEqual(['global/month/warning']);
  });

  it('queues at most one more evaluation while one runs, and never overlaps them', async () => {
    const { store, monitor } = setup();
    let open!: () => void;
    store.gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    monitor.poke();
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    expect(store.usageCalls).toBe(1); // running, held at the gate
    for (let i = 0; i < 20; i++) monitor.poke();
    open();
    store.gate = null;
    await monitor.idle();
    expect(store.usageCalls).toBe(2);
    expect(store.maxInFlight).toBe(1);
    monitor.poke();
    await monitor.idle();
    expect(store.usageCalls).toBe(3);
  });

  it('logs an evaluation failure instead of throwing, and keeps working', async () => {
    const { store, monitor } = setup();
    const lines: string[] = [];
    const m = setup({ logger: pino({ level: 'error' }, { write: (s: string) => lines.push(s) }) });
    m.store.usage = async () => {
      throw new Error('disk on fire');
    };
    m.monitor.poke();
    await m.monitor.idle();
    expect(lines.join('')).toMatch(/disk on fire.*alert evaluation failed/s);
    await expect(m.monitor.evaluate()).rejects.toThrow('disk on fire');
    store.used.set('global|month', 113_000);
    monitor.poke();
    await monitor.idle();
    expect(store.alerts).toHaveLength(1);
  });

  it('ignores pokes after close', async () => {
    const { store, monitor } = setup();
    await monitor.close();
    monitor.poke();
    await monitor.idle();
    expect(store.usageCalls).toBe(0);
  });

  it('a channel that throws does not stop the others', async () => {
    const after = new RecordingChannel('after');
    const bad: AlertChannel = {
      name: 'bad',
      send() {
        throw new Error('boom');
      },
    };
    const { store, monitor } = setup({ channels: [bad, after] });
    store.used.set('global|month', 113_000);
    await monitor.evaluate();
    expect(levelsOf(after.sent)).toEqual(['global/month/warning']);
  });
});

describe('AlertMonitor against the in-memory store', () => {
  it('reads real window counters and dedupes through ControlStore.recordAlert', async () => {
    const store = createMemoryStore();
    const resolver = new WindowResolver({ timezone: 'UTC', cycleDay: 1 });
    const global = budget('global', { month: 1_000 });
    const clock = { now: NOV_16 };
    const channel = new RecordingChannel();
    const monitor = new AlertMonitor({
      store,
      resolver,
      budgets: () => [global],
      thresholds: () => DEFAULTS,
      channels: [channel],
      now: () => clock.now,
      logger: pino({ level: 'silent' }),
      // The spending below is all in the last hour: a forecast would (rightly) fire too.
      forecast: false,
    });
    let n = 0;
    const spend = async (tokens: number) => {
      const id = `req_${++n}`;
      const entries = resolver
        .slots(global, clock.now)
        .map((s) => ({ series: s.series, bucket: s.bucket, from: s.from, limit: s.limit, amount: tokens }));
      const row: LedgerRow = {
        id,
        ts: clock.now,
        agent: 'a1',
        keyId: null,
        model: 'claude-x',
        stream: false,
        outcome: 'ok',
        status: 200,
        reserved: tokens,
        inputTokens: tokens,
        outputTokens: 0,
        cacheCreationTokens: 0,
        cacheReadTokens: 0,
        counted: tokens,
        costUsd: null,
        latencyMs: 1,
        upstreamRequestId: null,
        blockReason: null,
        usageSource: 'reported',
        metadata: {},
      };
      const r = await store.reserve({
        holdId: id,
        entries,
        owner: 'test',
        expiresAt: clock.now + HOUR,
        draft: row,
      });
      expect(r.ok).toBe(true);
      await store.settle(
        id,
        entries.map(() => tokens),
        row,
      );
    };
    await spend(500);
    expect(await monitor.evaluate()).toEqual([]);
    await spend(300);
    expect(levelsOf(await monitor.evaluate())).toEqual(['global/month/warning']);
    await spend(190);
    expect(levelsOf(await monitor.evaluate())).toEqual(['global/month/critical', 'global/month/emergency']);
    expect(await monitor.evaluate()).toEqual([]);
    expect((await store.listAlerts({ limit: 10 })).map((a) => a.level).sort()).toEqual([
      'critical',
      'emergency',
      'warning',
    ]);
    expect(await store.listEmergencies()).toEqual([
      expect.objectContaining({ budget: 'global', until: DEC_START, manual: false }),
    ]);
    await store.close();
  });
});
