import { planAdmission, tightestRemaining } from '../budget/admission.js';
import { matchesScope } from '../budget/scope.js';
import type { BudgetDef, WindowKind, WindowSlot } from '../budget/types.js';
import type { WindowResolver } from '../budget/windows.js';
import type { BudgetStore, EmergencyState, HoldEntry, LedgerRow } from '../store/ports.js';

export type Unit = 'tokens' | 'usd';

export interface AdmissionRequest {
  id: string;
  now: number;
  agent: string;
  model: string | null;
  /** Worst case in counted tokens (input part + output part). */
  amount: number;
  /** Worst-case cost in micro-dollars, or null when it has no price (then USD limits cannot apply). */
  usdMicros: number | null;
  /** Row written if the hold is reclaimed after a crash. */
  draft: LedgerRow;
  /** Budgets that apply to this request only (a virtual key's own limits). */
  extraBudgets?: readonly BudgetDef[];
  /** Observe mode: record the hold without checking limits (the verdict is reported, not enforced). */
  force?: boolean;
}

/** A granted hold: what was reserved, where, and what remains after it. */
export interface Hold {
  id: string;
  amount: number;
  usdMicros: number;
  entries: HoldEntry[];
  units: Unit[];
  slots: WindowSlot[];
  /** Tightest remaining tokens per window kind after the hold (absent: no limit). */
  remaining: Partial<Record<WindowKind, number>>;
  /** Names of the budgets the request counts against. */
  budgets: string[];
  /**
   * Set on a request let through without a hold while the store was unreachable (`onStoreError:
   * allow`): its admission, to charge the windows at settlement if the store is back by then.
   */
  unmetered?: AdmissionRequest;
}

export type Refusal =
  | {
      ok: false;
      reason: 'too_large';
      budget: string;
      window: WindowKind | 'request';
      unit: Unit;
      limit: number;
      amount: number;
    }
  | {
      ok: false;
      reason: 'exhausted';
      budget: string;
      window: WindowKind;
      unit: Unit;
      limit: number;
      used: number;
      reserved: number;
      amount: number;
      resetsAt: number;
    }
  | { ok: false; reason: 'emergency'; budget: string; state: EmergencyState };

/** Admission verdicts are data; only the HTTP edge turns a refusal into a response. */
export type Admission = { ok: true; hold: Hold; observed: Refusal | null } | Refusal;

export interface GatekeeperDeps {
  store: BudgetStore;
  resolver: WindowResolver;
  budgets: BudgetDef[];
  /** This process's identity, written on every hold so a restart can reclaim them. */
  owner: string;
  /** Hold lease (ms). */
  holdTtlMs: number;
  /** Emergency state in force for a budget name (or `*`), if any. */
  emergency: (budgets: readonly string[], now: number) => EmergencyState | null;
}

/** USD counters share the token windows but live in their own series (micro-dollars). */
export function usdSlot(slot: WindowSlot, limitUsd: number | undefined): WindowSlot {
  return {
    ...slot,
    series: slot.series.replace(/\|(rolling-)?(month|day|hour)$/, '|usd-$1$2'),
    limit: limitUsd === undefined ? null : Math.floor(limitUsd * 1_000_000),
  };
}

/**
 * Admission and settlement over a store: plans the windows a request must fit (pure engine), checks
 * emergencies, reserves every token and USD window atomically in the store, and later settles the
 * hold to the actual charge.
 */
export class Gatekeeper {
  private budgets: BudgetDef[];
  /** Holds admitted and not settled yet: their leases are renewed while they are in flight. */
  private readonly live = new Set<string>();

  constructor(private readonly deps: GatekeeperDeps) {
    this.budgets = deps.budgets;
  }

  get currentBudgets(): readonly BudgetDef[] {
    return this.budgets;
  }

  setBudgets(budgets: BudgetDef[]): void {
    this.budgets = budgets;
  }

  /** Budgets that cover a request from `agent` for `model`. */
  matching(agent: string, model: string | null, extra: readonly BudgetDef[] = []): BudgetDef[] {
    return [...this.budgets, ...extra].filter((b) => matchesScope(b.scope, agent, model));
  }

  /**
   * The slots of a plan with USD windows appended for budgets that carry USD limits, and the
   * matching entries and units. Exposed for clamping, which re-plans with a smaller amount.
   */
  private plan(req: AdmissionRequest) {
    const budgets = req.extraBudgets?.length ? [...this.budgets, ...req.extraBudgets] : this.budgets;
    const plan = planAdmission({
      budgets,
      resolver: this.deps.resolver,
      now: req.now,
      agent: req.agent,
      model: req.model,
      amount: req.amount,
    });
    const slots = [...plan.slots];
    const units: Unit[] = slots.map(() => 'tokens');
    let usdTooLarge: Refusal | null = null;
    if (req.usdMicros !== null) {
      for (const b of plan.matched) {
        if (!b.usd) continue;
        const perRequest = b.usd.request;
        if (perRequest !== undefined && req.usdMicros > perRequest * 1_000_000 && !usdTooLarge) {
          usdTooLarge = {
            ok: false,
            reason: 'too_large',
            budget: b.name,
            window: 'request',
            unit: 'usd',
            limit: perRequest,
            amount: req.usdMicros / 1_000_000,
          };
        }
        for (const s of this.deps.resolver.slots(b, req.now)) {
          slots.push(usdSlot(s, b.usd[s.kind]));
          units.push('usd');
        }
      }
    }
    return { plan, slots, units, usdTooLarge };
  }

  /** Reserve the request's worst case in every matching window, or refuse. Rejects on store failure. */
  async admit(req: AdmissionRequest): Promise<Admission> {
    const { plan, slots, units, usdTooLarge } = this.plan(req);
    const names = plan.matched.map((b) => b.name);
    let observed: Refusal | null = null;
    const refuse = (r: Refusal): Refusal | null => {
      if (!req.force) return r;
      observed ??= r;
      return null;
    };

    const emergency = this.deps.emergency(names, req.now);
    if (emergency) {
      const r = refuse({ ok: false, reason: 'emergency', budget: emergency.budget, state: emergency });
      if (r) return r;
    }
    if (plan.tooLarge) {
      const r = refuse({
        ok: false,
        reason: 'too_large',
        unit: 'tokens',
        ...plan.tooLarge,
        amount: req.amount,
      });
      if (r) return r;
    }
    if (usdTooLarge) {
      const r = refuse(usdTooLarge);
      if (r) return r;
    }
    for (let i = plan.slots.length; i < slots.length; i++) {
      const s = slots[i] as WindowSlot;
      if (s.limit !== null && (req.usdMicros ?? 0) > s.limit) {
        const r = refuse({
          ok: false,
          reason: 'too_large',
          budget: s.budget,
          window: s.kind,
          unit: 'usd',
          limit: s.limit / 1_000_000,
          amount: (req.usdMicros ?? 0) / 1_000_000,
        });
        if (r) return r;
        break;
      }
    }

    const amounts = units.map((u) => (u === 'usd' ? (req.usdMicros ?? 0) : req.amount));
    const entries = (limited: boolean): HoldEntry[] =>
      slots.map((s, i) => ({
        series: s.series,
        bucket: s.bucket,
        from: s.from,
        limit: limited ? s.limit : null,
        amount: amounts[i] as number,
      }));
    const reserve = (limited: boolean) =>
      this.deps.store.reserve({
        holdId: req.id,
        entries: entries(limited),
        owner: this.deps.owner,
        expiresAt: req.now + this.deps.holdTtlMs,
        draft: req.draft,
      });

    let result = await reserve(true);
    if (!result.ok) {
      const slot = slots[result.entry] as WindowSlot;
      const unit = units[result.entry] as Unit;
      const scale = unit === 'usd' ? 1_000_000 : 1;
      const refusal: Refusal = {
        ok: false,
        reason: 'exhausted',
        budget: slot.budget,
        window: slot.kind,
        unit,
        limit: (slot.limit ?? 0) / scale,
        used: result.used / scale,
        reserved: result.reserved / scale,
        amount: (amounts[result.entry] as number) / scale,
        resetsAt: slot.resetsAt,
      };
      const r = refuse(refusal);
      if (r) return r;
      // Observe mode: the request goes through and its usage is still counted, limits or not.
      result = await reserve(false);
      if (!result.ok) throw new Error('unlimited reserve refused');
    }
    const tokenSlots = slots.slice(0, plan.slots.length);
    this.live.add(req.id);
    return {
      ok: true,
      observed,
      hold: {
        id: req.id,
        amount: req.amount,
        usdMicros: req.usdMicros ?? 0,
        entries: entries(false),
        units,
        slots,
        remaining: tightestRemaining(tokenSlots, result.after.slice(0, plan.slots.length)),
        budgets: names,
      },
    };
  }

  /**
   * What every limited token window of a request can still pay for right now (min over windows of
   * limit − used − reserved, and the per-request limits), for clamping `max_tokens`. Reads only.
   */
  async headroom(req: Pick<AdmissionRequest, 'now' | 'agent' | 'model' | 'extraBudgets'>): Promise<number> {
    const budgets = req.extraBudgets?.length ? [...this.budgets, ...req.extraBudgets] : this.budgets;
    const plan = planAdmission({ ...req, budgets, resolver: this.deps.resolver, amount: 0 });
    let room = Number.POSITIVE_INFINITY;
    for (const b of plan.matched) if (b.request !== undefined) room = Math.min(room, b.request);
    const limited = plan.slots.filter((s) => s.limit !== null);
    const totals = await this.deps.store.usage(limited.map((s) => ({ series: s.series, from: s.from })));
    limited.forEach((s, i) => {
      const t = totals[i] ?? { used: 0, reserved: 0 };
      room = Math.min(room, (s.limit as number) - t.used - t.reserved);
    });
    return Math.max(0, room);
  }

  /**
   * Replace the hold by the actual charge in every window — `counted` tokens, `usdMicros` cost
   * (0 and 0 release it) — and write the ledger row, atomically.
   */
  /**
   * A hold that holds nothing, for a request let through while the store is unreachable
   * (`onStoreError: allow`). Its settlement charges the windows if the store is back by then.
   */
  unmetered(req: AdmissionRequest): Hold {
    return {
      id: req.id,
      amount: req.amount,
      usdMicros: req.usdMicros ?? 0,
      entries: [],
      units: [],
      slots: [],
      remaining: {},
      budgets: this.matching(req.agent, req.model, req.extraBudgets).map((b) => b.name),
      unmetered: req,
    };
  }

  async settle(hold: Hold, counted: number, usdMicros: number, row: LedgerRow): Promise<void> {
    if (hold.unmetered) return this.settleUnmetered(hold.unmetered, counted, usdMicros, row);
    try {
      await this.deps.store.settle(
        hold.id,
        hold.units.map((u) => (u === 'usd' ? usdMicros : counted)),
        row,
      );
    } finally {
      // Settled, or the store failed: either way its lease is no longer renewed, so a hold the store
      // still has is reclaimed (charged in full) once the lease runs out, never leaked.
      this.live.delete(hold.id);
    }
  }

  private async settleUnmetered(req: AdmissionRequest, counted: number, usd: number, row: LedgerRow) {
    let admitted: Admission | null = null;
    try {
      // Without limits: the request has run; its usage only has to be counted.
      admitted = await this.admit({ ...req, force: true, draft: row });
    } catch {
      admitted = null;
    }
    if (admitted?.ok) return this.settle(admitted.hold, counted, usd, row);
    // Still unreachable: the ledger (if it is up) keeps the row; the counters catch up when rebuilt.
    await this.deps.store.appendLedger(row);
  }

  /** Ids of the holds admitted here and not settled yet. */
  liveHolds(): string[] {
    return [...this.live];
  }

  /**
   * Extend the lease of every hold in flight to `now + leaseMs`. Called periodically (every third
   * of the lease), so a long stream keeps its hold while a dead process's holds lapse.
   */
  async renewLeases(now: number): Promise<number> {
    if (this.live.size === 0) return 0;
    return this.deps.store.renew(this.liveHolds(), now + this.deps.holdTtlMs);
  }
}
