/**
 * Admission planning: which budgets and windows a request must fit, and what can be decided before
 * touching the store. The atomic check-and-hold itself is the store's (`BudgetStore.reserve`).
 */
import type { HoldEntry } from '../store/ports.js';
import { matchesScope } from './scope.js';
import type { BudgetDef, WindowKind, WindowSlot } from './types.js';
import { WINDOW_KINDS } from './types.js';
import type { WindowResolver } from './windows.js';

export interface TooLarge {
  budget: string;
  /** `request`: the budget's per-request limit; a window kind: larger than that whole window. */
  window: WindowKind | 'request';
  limit: number;
}

export interface Plan {
  /** Budgets whose scope covers the request, in config order. */
  matched: BudgetDef[];
  /** Every slot of every matched budget: budgets in config order, each month, day, hour. */
  slots: WindowSlot[];
  /** Set when the request can never be admitted, whatever the usage; null otherwise. */
  tooLarge: TooLarge | null;
}

export interface PlanInput {
  /** All configured budgets, in config order. */
  budgets: readonly BudgetDef[];
  resolver: WindowResolver;
  /** ms since epoch. */
  now: number;
  agent: string;
  model: string | null;
  /** Worst-case counted tokens of the request (see `worstCase`). */
  amount: number;
}

/**
 * Plans the admission of a request needing `amount` counted tokens. `tooLarge` is the first
 * violation found: per-request limits of all matched budgets are checked first (in config order),
 * then each window limit (budgets in order, then month, day, hour) that `amount` alone exceeds.
 * A request within every limit gets `tooLarge: null`; whether it fits the current usage is for the
 * store to decide atomically. Never throws.
 */
export function planAdmission(input: PlanInput): Plan {
  const { budgets, resolver, now, agent, model, amount } = input;
  const matched: BudgetDef[] = [];
  const slots: WindowSlot[] = [];
  for (const b of budgets) {
    if (!matchesScope(b.scope, agent, model)) continue;
    matched.push(b);
    for (const s of resolver.slots(b, now)) slots.push(s);
  }
  return { matched, slots, tooLarge: findTooLarge(matched, amount) };
}

function findTooLarge(matched: readonly BudgetDef[], amount: number): TooLarge | null {
  // A per-request violation is the client's to fix (lower max_tokens), so it takes precedence
  // over a window that is merely small.
  for (const b of matched) {
    if (b.request !== undefined && amount > b.request) {
      return { budget: b.name, window: 'request', limit: b.request };
    }
  }
  for (const b of matched) {
    for (const kind of WINDOW_KINDS) {
      const limit = b.limits[kind];
      if (limit !== undefined && amount > limit) return { budget: b.name, window: kind, limit };
    }
  }
  return null;
}

/** The store entries holding `amount` in every slot, index-aligned with `slots`. Never throws. */
export function holdEntries(slots: readonly WindowSlot[], amount: number): HoldEntry[] {
  return slots.map((s) => ({ series: s.series, bucket: s.bucket, from: s.from, limit: s.limit, amount }));
}

/**
 * For each window kind, the least `limit - after[i]` (floored at 0) over the slots of that kind that
 * have a limit: what is left in the tightest matching budget after the hold, for the
 * `x-tokenwarden-*-remaining` headers. `after` is index-aligned with `slots` (the store's
 * `ReserveResult.after`); a missing entry counts as no usage. Kinds without any limited slot are
 * absent. Never throws.
 */
export function tightestRemaining(
  slots: readonly WindowSlot[],
  after: readonly number[],
): Partial<Record<WindowKind, number>> {
  const out: Partial<Record<WindowKind, number>> = {};
  slots.forEach((s, i) => {
    if (s.limit === null) return;
    const left = Math.max(0, s.limit - (after[i] ?? 0));
    const prev = out[s.kind];
    if (prev === undefined || left < prev) out[s.kind] = left;
  });
  return out;
}
