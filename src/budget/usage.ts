/** Reading provider usage and turning it into counted tokens. Pure. */
import type { Usage, Weights } from './types.js';

/** Every component counts once (SPEC §3 "Counted tokens"). */
export const DEFAULT_WEIGHTS: Readonly<Weights> = Object.freeze({
  input: 1,
  output: 1,
  cacheCreation: 1,
  cacheRead: 1,
});

export const ZERO_USAGE: Readonly<Usage> = Object.freeze({
  inputTokens: 0,
  outputTokens: 0,
  cacheCreationTokens: 0,
  cacheReadTokens: 0,
});

/** Provider usage fields, by our field name. */
const FIELDS = [
  ['inputTokens', 'input_tokens'],
  ['outputTokens', 'output_tokens'],
  ['cacheCreationTokens', 'cache_creation_input_tokens'],
  ['cacheReadTokens', 'cache_read_input_tokens'],
] as const satisfies readonly (readonly [keyof Usage, string])[];

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A token count, or null when absent/null/not a count. Fractions round up: never under-count. */
function count(v: unknown): number | null {
  if (typeof v !== 'number' || !Number.isFinite(v)) return null;
  return v > 0 ? Math.ceil(v) : 0;
}

/**
 * Tokens of `compaction` entries in a beta `usage.iterations` array, which the provider leaves out
 * of the top-level totals (the SDK's `BetaIterationsUsage` doc comment). Other entry types
 * (`message`, `advisor_message`, `fallback_message`) are already in the totals. Null when
 * `iterations` is not an array.
 */
function compactionUsage(iterations: unknown): Usage | null {
  if (!Array.isArray(iterations)) return null;
  const sum = { ...ZERO_USAGE };
  for (const it of iterations) {
    if (!isRecord(it) || it.type !== 'compaction') continue;
    for (const [ours, theirs] of FIELDS) sum[ours] += count(it[theirs]) ?? 0;
  }
  return sum;
}

/**
 * Reads an Anthropic `usage` object (non-streaming response or `message_start.message.usage`):
 * `input_tokens`, `output_tokens`, `cache_creation_input_tokens`, `cache_read_input_tokens`
 * (missing, null or malformed → 0), plus the tokens of `compaction` entries in `iterations`, which
 * the top-level fields exclude. Raw provider tokens (unweighted). Never throws.
 */
export function usageFromAnthropic(u: unknown): Usage {
  const out = { ...ZERO_USAGE };
  if (!isRecord(u)) return out;
  for (const [ours, theirs] of FIELDS) out[ours] = count(u[theirs]) ?? 0;
  const compaction = compactionUsage(u.iterations);
  if (compaction !== null) for (const [ours] of FIELDS) out[ours] += compaction[ours];
  // The TTL split of cache writes matters for cost only (1-hour writes are dearer).
  const split = u.cache_creation;
  if (isRecord(split)) {
    const oneHour = count(split.ephemeral_1h_input_tokens);
    if (oneHour) out.cacheCreation1hTokens = Math.min(oneHour, out.cacheCreationTokens);
  }
  return out;
}

/**
 * Applies a streaming `message_delta.usage` to the usage known so far. Each non-null field is a
 * cumulative total for the whole message and replaces the previous value (never adds: 1 then 6 is
 * 6). When the delta carries `iterations`, its `compaction` tokens are added to the fields the
 * delta replaces. Fields the delta omits or sets to null keep `prev`. Returns a new object; never
 * throws.
 */
export function mergeDeltaUsage(prev: Usage, delta: unknown): Usage {
  const out: Usage = { ...prev };
  if (!isRecord(delta)) return out;
  const compaction = compactionUsage(delta.iterations);
  for (const [ours, theirs] of FIELDS) {
    const v = count(delta[theirs]);
    if (v !== null) out[ours] = v + (compaction?.[ours] ?? 0);
  }
  return out;
}

/**
 * ceil(x), except that a value within float noise of an integer is that integer: 100 × 0.07 gives
 * 7.000000000000001 in binary floating point, and charging 8 for it would look like a bug.
 */
function ceilTokens(x: number): number {
  if (!Number.isFinite(x) || x <= 0) return 0;
  const r = Math.round(x);
  // 1e-12 relative is thousands of ulps (covers the rounding of four products and a sum) yet far
  // below one token for any count a request can reach.
  if (Math.abs(x - r) <= x * 1e-12) return r;
  return Math.ceil(x);
}

/**
 * Counted tokens of `u`: ceil(w.input·input + w.output·output + w.cacheCreation·cacheCreation +
 * w.cacheRead·cacheRead), an integer ≥ 0, so store counters never accumulate float drift. Never
 * throws.
 */
export function countedTokens(u: Usage, w: Weights): number {
  return ceilTokens(
    w.input * u.inputTokens +
      w.output * u.outputTokens +
      w.cacheCreation * u.cacheCreationTokens +
      w.cacheRead * u.cacheReadTokens,
  );
}

export interface WorstCase {
  /** `inputPart + outputPart`: counted tokens to hold at admission. */
  amount: number;
  inputPart: number;
  outputPart: number;
}

/**
 * Worst-case counted tokens of a request (integers ≥ 0). The provider may report the input as any
 * mix of uncached, cache-write and cache-read tokens, so `inputPart = ceil(inputEstimate × the
 * largest of those three weights)`; `outputPart = ceil(maxTokens × w.output)`. Never throws.
 */
export function worstCase(inputEstimate: number, maxTokens: number, w: Weights): WorstCase {
  const inputPart = ceilTokens(inputEstimate * Math.max(w.input, w.cacheCreation, w.cacheRead));
  const outputPart = ceilTokens(maxTokens * w.output);
  return { amount: inputPart + outputPart, inputPart, outputPart };
}
