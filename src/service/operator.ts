import { RESETS_SETTING } from '../alerts/monitor.js';
import type { BudgetDef } from '../budget/types.js';
import type { WindowResolver } from '../budget/windows.js';
import { type BudgetConfig, budgetListSchema, type Config } from '../config/schema.js';
import type { AlertRecord, LedgerQuery, LedgerRow, Outcome, Store, TimeseriesPoint } from '../store/ports.js';
import type { EmergencyGuard } from './emergency.js';
import type { Gatekeeper } from './gatekeeper.js';
import type { InflightTracker } from './inflight.js';
import { buildSummary, type SummaryDoc } from './summary.js';

export const BUDGETS_SETTING = 'budgets';

export function toBudgetDefs(budgets: readonly BudgetConfig[]): BudgetDef[] {
  return budgets.map((b) => ({
    name: b.name,
    scope: { ...(b.agent ? { agent: b.agent } : {}), ...(b.model ? { model: b.model } : {}) },
    limits: {
      ...(b.month !== undefined ? { month: b.month } : {}),
      ...(b.day !== undefined ? { day: b.day } : {}),
      ...(b.hour !== undefined ? { hour: b.hour } : {}),
    },
    ...(b.request !== undefined ? { request: b.request } : {}),
    rolling: b.rolling,
    ...(b.usd ? { usd: { ...b.usd } } : {}),
  }));
}

export class InvalidInput extends Error {}

export interface ResetScope {
  window?: 'month' | 'day' | 'hour';
  agent?: string;
  budget?: string;
}

export interface ResetResult {
  series: string[];
  /** Counted tokens (and USD micro-dollars for USD series) that were cleared. */
  cleared: number;
  /** Emergencies lifted along with the usage that caused them. */
  resumed: number;
}

const KIND_OF_SERIES = /\|(?:usd-)?(?:rolling-)?(month|day|hour)$/;

/**
 * Everything an operator can ask of a gateway — the HTTP API and the CLI call these same methods.
 * Holds no state of its own.
 */
export class OperatorService {
  private budgetConfigs: BudgetConfig[];
  /** The stored budgets setting last applied here (undefined: not read yet). */
  private budgetsRaw: string | null | undefined;

  constructor(
    private readonly deps: {
      store: Store;
      resolver: WindowResolver;
      gatekeeper: Gatekeeper;
      emergency: EmergencyGuard;
      inflight?: InflightTracker;
      config: Config;
      now: () => number;
      /** Called after budgets change (so alerting sees them at once). */
      onBudgetsChanged?: () => void;
    },
    budgets: BudgetConfig[],
  ) {
    this.budgetConfigs = budgets;
  }

  /**
   * Apply budgets that another replica (or process) stored through the API since this one last
   * looked. Returns whether they changed. Invalid stored budgets are ignored (kept as they were).
   */
  async syncBudgets(): Promise<boolean> {
    const raw = await this.deps.store.getSetting(BUDGETS_SETTING);
    if (raw === this.budgetsRaw) return false;
    const first = this.budgetsRaw === undefined;
    this.budgetsRaw = raw;
    if (raw === null || first) return false;
    let parsed: ReturnType<typeof budgetListSchema.safeParse>;
    try {
      parsed = budgetListSchema.safeParse(JSON.parse(raw));
    } catch {
      return false;
    }
    if (!parsed.success) return false;
    this.budgetConfigs = parsed.data;
    this.deps.gatekeeper.setBudgets(toBudgetDefs(parsed.data));
    this.deps.onBudgetsChanged?.();
    return true;
  }

  async summary(): Promise<SummaryDoc> {
    const now = this.deps.now();
    return buildSummary({
      store: this.deps.store,
      resolver: this.deps.resolver,
      budgets: this.deps.gatekeeper.currentBudgets,
      config: this.deps.config,
      emergencies: this.deps.emergency.list(now),
      now,
    });
  }

  alerts(q: { limit: number; since?: number }): Promise<AlertRecord[]> {
    return this.deps.store.listAlerts(q);
  }

  async requests(q: LedgerQuery): Promise<{ rows: LedgerRow[]; total: number }> {
    const { limit: _l, offset: _o, ...filter } = q;
    const [rows, total] = await Promise.all([
      this.deps.store.queryLedger(q),
      this.deps.store.countLedger(filter),
    ]);
    return { rows, total };
  }

  timeseries(q: {
    bucketMs: number;
    since: number;
    until: number;
    agent?: string;
    model?: string;
  }): Promise<TimeseriesPoint[]> {
    return this.deps.store.timeseries(q);
  }

  /** Clear usage of the matching series (all when the scope is empty) and lift their emergencies. */
  async reset(scope: ResetScope): Promise<ResetResult> {
    const all = await this.deps.store.listSeries();
    let budgets: Set<string> | null = null;
    if (scope.budget !== undefined) budgets = new Set([scope.budget]);
    if (scope.agent !== undefined) {
      const agent = scope.agent;
      const keys = await this.deps.store.listKeys();
      const names = [
        ...this.deps.gatekeeper.currentBudgets.filter((b) => b.scope.agent === agent).map((b) => b.name),
        ...keys.filter((k) => k.agent === agent).map((k) => `key:${k.id}`),
      ];
      budgets = budgets ? new Set(names.filter((n) => budgets?.has(n))) : new Set(names);
    }
    const series = all.filter((s) => {
      const budget = s.slice(0, s.lastIndexOf('|'));
      if (budgets && !budgets.has(budget)) return false;
      if (scope.window !== undefined && KIND_OF_SERIES.exec(s)?.[1] !== scope.window) return false;
      return true;
    });
    const cleared = series.length > 0 ? await this.deps.store.resetUsage(series) : 0;
    await this.markReset(series);
    let resumed = 0;
    if (!budgets && scope.window === undefined) resumed = await this.deps.emergency.resume();
    else if (budgets) for (const b of budgets) resumed += await this.deps.emergency.resume(b);
    return { series, cleared, resumed };
  }

  /** Record when each reset budget window was cleared, so its alerts can fire again (RESETS_SETTING). */
  private async markReset(series: readonly string[]): Promise<void> {
    if (series.length === 0) return;
    const raw = await this.deps.store.getSetting(RESETS_SETTING);
    let marks: Record<string, number> = {};
    try {
      marks = raw ? (JSON.parse(raw) as Record<string, number>) : {};
    } catch {
      marks = {};
    }
    const at = this.deps.now();
    for (const s of series) {
      const kind = KIND_OF_SERIES.exec(s)?.[1];
      if (kind) marks[`${s.slice(0, s.lastIndexOf('|'))}|${kind}`] = at;
    }
    await this.deps.store.setSetting(RESETS_SETTING, JSON.stringify(marks));
  }

  /** Lift the emergency of one budget, or all of them. */
  resume(budget?: string): Promise<number> {
    return this.deps.emergency.resume(budget);
  }

  /**
   * Trip the emergency by hand (`*` = every budget) until resumed, and end the in-flight streams it
   * covers (they get an SSE error event and settle their usage).
   */
  async halt(budget = '*', reason = 'halted by an operator'): Promise<{ budget: string; ended: number }> {
    if (budget !== '*' && !this.deps.gatekeeper.currentBudgets.some((b) => b.name === budget)) {
      throw new InvalidInput(`no budget named "${budget}"`);
    }
    await this.deps.emergency.trip({ budget, since: this.deps.now(), until: null, reason, manual: true });
    const ended =
      this.deps.inflight?.halt(budget, `tokenwarden: ${reason}; the operator halted agent traffic`) ?? 0;
    return { budget, ended };
  }

  getBudgets(): BudgetConfig[] {
    return this.budgetConfigs;
  }

  /** Validate, persist and apply a new budgets list. Throws InvalidInput naming the bad fields. */
  async putBudgets(input: unknown): Promise<BudgetConfig[]> {
    const list = Array.isArray(input) ? input : (input as { budgets?: unknown } | null)?.budgets;
    const parsed = budgetListSchema.safeParse(list);
    if (!parsed.success) {
      throw new InvalidInput(
        parsed.error.issues
          .map((i) => `budgets${i.path.map((p) => `.${String(p)}`).join('')}: ${i.message}`)
          .join('; '),
      );
    }
    const raw = JSON.stringify(parsed.data);
    await this.deps.store.setSetting(BUDGETS_SETTING, raw);
    this.budgetsRaw = raw;
    this.budgetConfigs = parsed.data;
    this.deps.gatekeeper.setBudgets(toBudgetDefs(parsed.data));
    this.deps.onBudgetsChanged?.();
    return parsed.data;
  }
}

/** Budgets persisted through the API, if any (they win over the config file's). */
export async function persistedBudgets(store: Store): Promise<BudgetConfig[] | null> {
  const raw = await store.getSetting(BUDGETS_SETTING);
  if (raw === null) return null;
  const parsed = budgetListSchema.safeParse(JSON.parse(raw));
  return parsed.success ? parsed.data : null;
}

export const OUTCOMES: readonly Outcome[] = [
  'ok',
  'blocked',
  'upstream_error',
  'client_aborted',
  'invalid',
  'interrupted',
];
