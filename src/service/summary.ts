import type { BudgetDef, WindowKind, WindowSlot } from '../budget/types.js';
import type { WindowResolver } from '../budget/windows.js';
import type { Config } from '../config/schema.js';
import type { BudgetStore, ControlStore, EmergencyState } from '../store/ports.js';
import { usdSlot } from './gatekeeper.js';

export type Status = 'ok' | 'warning' | 'critical' | 'emergency';

export interface WindowReport {
  used: number;
  reserved: number;
  limit: number | null;
  remaining: number | null;
  /** used / limit × 100, two decimals; null without a limit. */
  percent: number | null;
  /** ISO 8601. */
  resetsAt: string;
  /** ISO 8601 start of the window (first bucket counted, for rolling windows). */
  startsAt: string;
}

export interface BudgetReport {
  name: string;
  scope: { type: 'global' | 'agent' | 'model' | 'agent+model'; agent?: string; model?: string };
  rolling: boolean;
  windows: Record<WindowKind, WindowReport>;
  /** Present for budgets with USD limits: the same windows in dollars. */
  usd?: { windows: Record<WindowKind, WindowReport>; perRequestLimit: number | null };
  perRequestLimit: number | null;
  emergency: boolean;
  /** Present while in emergency: since/until (ISO; until null = until resumed), reason, manual. */
  emergencyState?: { since: string; until: string | null; reason: string; manual: boolean };
  status: Status;
}

export interface SummaryDoc {
  status: Status;
  generatedAt: string;
  mode: Config['mode'];
  thresholds: Config['thresholds'];
  budgets: BudgetReport[];
  byAgent: Array<{ agent: string; requests: number; tokens: number }>;
  byModel: Array<{ model: string; requests: number; tokens: number }>;
  /** Counted tokens per hour, averaged over the last hour and the last day. */
  burnRate: { lastHour: number; lastDay: number };
  forecast: {
    budget: string | null;
    /** Projected used tokens at the end of the month window, at the last day's burn rate. */
    monthEnd: number | null;
    /** When the month limit would be reached at that rate, if before the window resets. */
    exhaustsAt: string | null;
  };
}

const LEVELS: Status[] = ['ok', 'warning', 'critical', 'emergency'];

function level(percent: number | null, t: Config['thresholds']): Status {
  if (percent === null) return 'ok';
  if (percent >= t.emergency) return 'emergency';
  if (percent >= t.critical) return 'critical';
  if (percent >= t.warning) return 'warning';
  return 'ok';
}

function worst(a: Status, b: Status): Status {
  return LEVELS.indexOf(a) >= LEVELS.indexOf(b) ? a : b;
}

function scopeOf(b: BudgetDef): BudgetReport['scope'] {
  const { agent, model } = b.scope;
  const type = agent && model ? 'agent+model' : agent ? 'agent' : model ? 'model' : 'global';
  return { type, ...(agent ? { agent } : {}), ...(model ? { model } : {}) };
}

const HOUR = 3_600_000;

/** USD windows in dollars (the counters hold micro-dollars). */
function usdReport(
  slots: readonly WindowSlot[],
  next: () => { used: number; reserved: number } | undefined,
  perRequest: number | undefined,
): NonNullable<BudgetReport['usd']> {
  const windows = {} as Record<WindowKind, WindowReport>;
  for (const slot of slots) {
    const t = next() ?? { used: 0, reserved: 0 };
    const used = t.used / 1_000_000;
    const reserved = t.reserved / 1_000_000;
    const limit = slot.limit === null ? null : slot.limit / 1_000_000;
    windows[slot.kind] = {
      used,
      reserved,
      limit,
      remaining: limit === null ? null : Math.max(0, limit - used - reserved),
      percent: limit ? Math.round((used / limit) * 10_000) / 100 : limit === 0 ? 100 : null,
      resetsAt: new Date(slot.resetsAt).toISOString(),
      startsAt: new Date(slot.from).toISOString(),
    };
  }
  return { windows, perRequestLimit: perRequest ?? null };
}
const DAY = 24 * HOUR;

/** The usage summary (GET /api/token-usage/summary, `tokenwarden status --json`). Reads only. */
export async function buildSummary(deps: {
  store: BudgetStore & Pick<ControlStore, 'timeseries'>;
  resolver: WindowResolver;
  budgets: readonly BudgetDef[];
  config: Pick<Config, 'thresholds' | 'mode'>;
  /** Emergency states in force. */
  emergencies?: readonly EmergencyState[];
  now: number;
}): Promise<SummaryDoc> {
  const { store, resolver, budgets, config, now } = deps;
  const emergencies = deps.emergencies ?? [];
  const slotLists = budgets.map((b) => resolver.slots(b, now));
  const flat = slotLists.flat();
  // USD windows of budgets with USD limits, after the token windows in the same read.
  const usdLists = budgets.map((b, bi) =>
    b.usd ? (slotLists[bi] ?? []).map((sl) => usdSlot(sl, b.usd?.[sl.kind])) : [],
  );
  const usdFlat = usdLists.flat();
  const allTotals = await store.usage([...flat, ...usdFlat].map((s) => ({ series: s.series, from: s.from })));
  const totals = allTotals.slice(0, flat.length);
  let u = flat.length;

  let status: Status = 'ok';
  let i = 0;
  const reports: BudgetReport[] = budgets.map((b, bi) => {
    const windows = {} as Record<WindowKind, WindowReport>;
    let bStatus: Status = 'ok';
    for (const slot of slotLists[bi] ?? []) {
      const t = totals[i++] ?? { used: 0, reserved: 0 };
      const percent = slot.limit
        ? Math.round((t.used / slot.limit) * 10_000) / 100
        : slot.limit === 0
          ? 100
          : null;
      windows[slot.kind] = {
        used: t.used,
        reserved: t.reserved,
        limit: slot.limit,
        remaining: slot.limit === null ? null : Math.max(0, slot.limit - t.used - t.reserved),
        percent,
        resetsAt: new Date(slot.resetsAt).toISOString(),
        startsAt: new Date(slot.from).toISOString(),
      };
      // Only the month can put a budget in emergency; a full hour or day is critical and resets soon.
      let l = level(percent, config.thresholds);
      if (slot.kind !== 'month' && l === 'emergency') l = 'critical';
      bStatus = worst(bStatus, l);
    }
    const emergency = emergencies.find((e) => e.budget === b.name || e.budget === '*') ?? null;
    if (emergency) bStatus = 'emergency';
    status = worst(status, bStatus);
    return {
      name: b.name,
      scope: scopeOf(b),
      rolling: b.rolling,
      windows,
      ...(b.usd ? { usd: usdReport(usdLists[bi] ?? [], () => allTotals[u++], b.usd.request) } : {}),
      perRequestLimit: b.request ?? null,
      emergency: emergency !== null,
      ...(emergency
        ? {
            emergencyState: {
              since: new Date(emergency.since).toISOString(),
              until: emergency.until === null ? null : new Date(emergency.until).toISOString(),
              reason: emergency.reason,
              manual: emergency.manual,
            },
          }
        : {}),
      status: bStatus,
    };
  });

  const monthStart = resolver.window('month', now).start;
  // Burn rates total the ledger's time series (one or two buckets each), not its groups: a total over a
  // time range reads that range of an index, where grouping by agent may visit every agent's entries.
  const [agents, models, lastHour, lastDay] = await Promise.all([
    store.groupLedger('agent', monthStart, now + 1),
    store.groupLedger('model', monthStart, now + 1),
    store.timeseries({ bucketMs: DAY, since: now - HOUR, until: now + 1 }),
    store.timeseries({ bucketMs: DAY, since: now - DAY, until: now + 1 }),
  ]);
  const sum = (g: { counted: number }[]) => g.reduce((acc, r) => acc + r.counted, 0);
  const burnRate = { lastHour: sum(lastHour), lastDay: Math.round((sum(lastDay) / 24) * 100) / 100 };

  const forecastBudget = reports.find(
    (r) => r.windows.month?.limit !== null && r.windows.month !== undefined,
  );
  let forecast: SummaryDoc['forecast'] = { budget: null, monthEnd: null, exhaustsAt: null };
  if (forecastBudget) {
    const m = forecastBudget.windows.month;
    const resets = Date.parse(m.resetsAt);
    const hoursLeft = Math.max(0, (resets - now) / HOUR);
    const rate = burnRate.lastDay;
    const monthEnd = Math.round(m.used + rate * hoursLeft);
    let exhaustsAt: string | null = null;
    if (m.limit !== null && rate > 0) {
      const at = now + ((m.limit - m.used) / rate) * HOUR;
      if (at < resets) exhaustsAt = new Date(Math.max(now, at)).toISOString();
    }
    forecast = { budget: forecastBudget.name, monthEnd, exhaustsAt };
  }

  return {
    status,
    generatedAt: new Date(now).toISOString(),
    mode: config.mode,
    thresholds: config.thresholds,
    budgets: reports,
    byAgent: agents.map((g) => ({ agent: g.key, requests: g.requests, tokens: g.counted })),
    byModel: models.map((g) => ({ model: g.key, requests: g.requests, tokens: g.counted })),
    burnRate,
    forecast,
  };
}
