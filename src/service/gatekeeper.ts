import { holdEntries, planAdmission, tightestRemaining } from '../budget/admission.js';
import type { BudgetDef, WindowKind, WindowSlot } from '../budget/types.js';
import type { WindowResolver } from '../budget/windows.js';
import type { BudgetStore, HoldEntry, LedgerRow } from '../store/ports.js';

export interface AdmissionRequest {
  id: string;
  now: number;
  agent: string;
  model: string | null;
  /** Worst case in counted tokens (input part + output part). */
  amount: number;
  /** Row written if the hold is reclaimed after a crash. */
  draft: LedgerRow;
}

/** A granted hold: what was reserved, where, and what remains after it. */
export interface Hold {
  id: string;
  amount: number;
  entries: HoldEntry[];
  slots: WindowSlot[];
  /** Tightest remaining per window kind after the hold (absent: no limit). */
  remaining: Partial<Record<WindowKind, number>>;
}

/** Admission verdicts are data; only the HTTP edge turns a refusal into a response. */
export type Admission =
  | { ok: true; hold: Hold }
  | {
      ok: false;
      reason: 'too_large';
      budget: string;
      window: WindowKind | 'request';
      limit: number;
      amount: number;
    }
  | {
      ok: false;
      reason: 'exhausted';
      budget: string;
      window: WindowKind;
      limit: number;
      used: number;
      reserved: number;
      amount: number;
      resetsAt: number;
    };

export interface GatekeeperDeps {
  store: BudgetStore;
  resolver: WindowResolver;
  budgets: BudgetDef[];
  /** This process's identity, written on every hold so a restart can reclaim them. */
  owner: string;
  /** Hold lease (ms). */
  holdTtlMs: number;
}

/**
 * Admission and settlement over a store: plans the windows a request must fit (pure engine), reserves
 * them atomically in the store, and later settles the hold to the actual charge.
 */
export class Gatekeeper {
  private budgets: BudgetDef[];

  constructor(private readonly deps: GatekeeperDeps) {
    this.budgets = deps.budgets;
  }

  get currentBudgets(): readonly BudgetDef[] {
    return this.budgets;
  }

  setBudgets(budgets: BudgetDef[]): void {
    this.budgets = budgets;
  }

  /** Reserve the request's worst case in every matching window, or refuse. Rejects on store failure. */
  async admit(req: AdmissionRequest): Promise<Admission> {
    const plan = planAdmission({
      budgets: this.budgets,
      resolver: this.deps.resolver,
      now: req.now,
      agent: req.agent,
      model: req.model,
      amount: req.amount,
    });
    if (plan.tooLarge) {
      return { ok: false, reason: 'too_large', ...plan.tooLarge, amount: req.amount };
    }
    const entries = holdEntries(plan.slots, req.amount);
    const result = await this.deps.store.reserve({
      holdId: req.id,
      entries,
      owner: this.deps.owner,
      expiresAt: req.now + this.deps.holdTtlMs,
      draft: req.draft,
    });
    if (!result.ok) {
      const slot = plan.slots[result.entry] as WindowSlot;
      return {
        ok: false,
        reason: 'exhausted',
        budget: slot.budget,
        window: slot.kind,
        limit: slot.limit ?? 0,
        used: result.used,
        reserved: result.reserved,
        amount: req.amount,
        resetsAt: slot.resetsAt,
      };
    }
    return {
      ok: true,
      hold: {
        id: req.id,
        amount: req.amount,
        entries,
        slots: plan.slots,
        remaining: tightestRemaining(plan.slots, result.after),
      },
    };
  }

  /** Replace the hold by `counted` tokens in every window (0 releases it) and write the ledger row. */
  settle(hold: Hold, counted: number, row: LedgerRow): Promise<void> {
    return this.deps.store.settle(
      hold.id,
      hold.entries.map(() => counted),
      row,
    );
  }
}
