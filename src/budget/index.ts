/** The pure budget engine: windows, scopes, estimation, usage accounting and admission planning. */
export type { Plan, PlanInput, TooLarge } from './admission.js';
export { holdEntries, planAdmission, tightestRemaining } from './admission.js';
export type { Allowances, EstimationMode } from './estimate.js';
export {
  DEFAULT_ALLOWANCES,
  ESTIMATE_ALLOWANCES,
  ESTIMATE_BYTES_PER_TOKEN,
  estimateInputTokens,
} from './estimate.js';
export { globToRegExp, matchesScope } from './scope.js';
export type {
  BudgetDef,
  BudgetScope,
  CalendarSettings,
  Usage,
  Weights,
  WindowKind,
  WindowSlot,
} from './types.js';
export { WINDOW_KINDS } from './types.js';
export type { WorstCase } from './usage.js';
export {
  countedTokens,
  DEFAULT_WEIGHTS,
  mergeDeltaUsage,
  usageFromAnthropic,
  worstCase,
  ZERO_USAGE,
} from './usage.js';
export type { RollingSpec, RollingWindow, Span, WindowBounds } from './windows.js';
export {
  calendarWindow,
  isValidTimezone,
  ROLLING,
  resolveSlots,
  rollingWindow,
  WindowResolver,
  windowBounds,
} from './windows.js';
