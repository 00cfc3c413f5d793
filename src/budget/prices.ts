/**
 * Model prices (USD per million tokens) and request cost. Pure. Defaults from the wire doc §8
 * (late 2026); the operator overrides or extends them with the `prices` config key.
 */
import { globToRegExp } from './scope.js';
import type { Usage } from './types.js';

export interface Price {
  input: number;
  /** 5-minute cache write. */
  cacheWrite5m: number;
  /** 1-hour cache write. */
  cacheWrite1h: number;
  cacheRead: number;
  output: number;
  /**
   * A higher tier for long prompts: when input + cache reads + cache writes exceed `threshold`
   * tokens, every token of the request is priced at these rates.
   */
  longContext?: { threshold: number } & Omit<Price, 'longContext'>;
}

const p = (
  input: number,
  cacheWrite5m: number,
  cacheWrite1h: number,
  cacheRead: number,
  output: number,
): Price => ({
  input,
  cacheWrite5m,
  cacheWrite1h,
  cacheRead,
  output,
});

/** First match wins, so more specific patterns come first. */
export const DEFAULT_PRICES: ReadonlyArray<readonly [string, Price]> = [
  ['claude-fable-5-2*', p(8, 10, 16, 0.2, 40)],
  // No published price for Mythos 5.2; it is priced like its sibling Fable 5.2.
  ['claude-mythos-5-2*', p(8, 10, 16, 0.2, 40)],
  ['claude-fable-5-1*', p(10, 12.5, 20, 0.25, 50)],
  ['claude-mythos-5-1*', p(10, 12.5, 20, 0.25, 50)],
  ['claude-fable-5*', p(10, 12.5, 20, 1, 50)],
  ['claude-mythos-5*', p(10, 12.5, 20, 1, 50)],
  ['claude-opus-5-5*', p(4, 5, 8, 0.2, 20)],
  ['claude-opus-5*', p(5, 6.25, 10, 0.5, 25)],
  ['claude-opus-4-8*', p(5, 6.25, 10, 0.5, 25)],
  ['claude-opus-4-7*', p(5, 6.25, 10, 0.5, 25)],
  ['claude-opus-4-6*', p(5, 6.25, 10, 0.5, 25)],
  ['claude-opus-4-5*', p(5, 6.25, 10, 0.5, 25)],
  ['claude-opus-4-1*', p(15, 18.75, 30, 1.5, 75)],
  ['claude-opus-4-2*', p(15, 18.75, 30, 1.5, 75)],
  ['claude-sonnet-5-5*', p(2, 2.5, 4, 0.1, 10)],
  ['claude-sonnet-5*', p(2, 2.5, 4, 0.2, 10)],
  ['claude-sonnet-4-6*', p(3, 3.75, 6, 0.3, 15)],
  ['claude-sonnet-4-5*', p(3, 3.75, 6, 0.3, 15)],
  [
    'claude-haiku-5-5*',
    { ...p(0.1, 0.125, 0.2, 0.01, 0.5), longContext: { threshold: 100_000, ...p(0.5, 0.625, 1, 0.05, 2.5) } },
  ],
  ['claude-haiku-4-5*', p(1, 1.25, 2, 0.1, 5)],
];

export type UnknownModelPolicy = 'max' | 'reject';

export class PriceTable {
  private readonly entries: ReadonlyArray<readonly [RegExp, Price]>;
  private readonly cache = new Map<string, Price | null>();
  /** The most expensive known price, field by field: what an unknown model is charged by default. */
  readonly max: Price;

  /** `overrides` (config `prices`, glob → price) are tried before the defaults. */
  constructor(overrides: Record<string, Price> = {}) {
    const all: Array<readonly [string, Price]> = [...Object.entries(overrides), ...DEFAULT_PRICES];
    this.entries = all.map(([glob, price]) => [globToRegExp(glob), price] as const);
    const top = (f: keyof Omit<Price, 'longContext'>) =>
      Math.max(...all.flatMap(([, pr]) => [pr[f], pr.longContext?.[f] ?? 0]));
    this.max = p(top('input'), top('cacheWrite5m'), top('cacheWrite1h'), top('cacheRead'), top('output'));
  }

  /** The price of `model`, or null when no pattern matches. */
  lookup(model: string): Price | null {
    let price = this.cache.get(model);
    if (price === undefined) {
      price = this.entries.find(([re]) => re.test(model))?.[1] ?? null;
      if (this.cache.size > 1000) this.cache.clear();
      this.cache.set(model, price);
    }
    return price;
  }

  /** The price to charge: known, or the maximum for unknown models (null when the policy rejects). */
  resolve(model: string, policy: UnknownModelPolicy): Price | null {
    return this.lookup(model) ?? (policy === 'max' ? this.max : null);
  }
}

function tier(price: Price, promptTokens: number): Omit<Price, 'longContext'> {
  return price.longContext && promptTokens > price.longContext.threshold ? price.longContext : price;
}

/**
 * Cost in USD of a usage: in·p_in + c5m·p_5m + c1h·p_1h + cr·p_read + out·p_out (per million).
 * Cache writes without a TTL split are all priced as 5-minute writes. Never throws.
 */
export function costUsd(u: Usage, price: Price): number {
  const writes1h = Math.min(u.cacheCreation1hTokens ?? 0, u.cacheCreationTokens);
  const writes5m = u.cacheCreationTokens - writes1h;
  const rates = tier(price, u.inputTokens + u.cacheCreationTokens + u.cacheReadTokens);
  return (
    (u.inputTokens * rates.input +
      writes5m * rates.cacheWrite5m +
      writes1h * rates.cacheWrite1h +
      u.cacheReadTokens * rates.cacheRead +
      u.outputTokens * rates.output) /
    1_000_000
  );
}

/** Whole micro-dollars, rounded up: USD counters are integers like token counters. */
export function toMicros(usd: number): number {
  return usd <= 0 ? 0 : Math.ceil(usd * 1_000_000 - 1e-6);
}

/**
 * Worst-case cost of a request in micro-dollars: every input token at the dearest input-side rate
 * (it may come back as uncached input, a 1-hour cache write or a cache read), every `max_tokens` at the
 * output rate, in the dearest tier.
 */
export function worstCostMicros(inputEstimate: number, maxTokens: number, price: Price): number {
  const rates = tier(price, Number.POSITIVE_INFINITY);
  const inRate = Math.max(rates.input, rates.cacheWrite5m, rates.cacheWrite1h, rates.cacheRead, price.input);
  const outRate = Math.max(rates.output, price.output);
  return toMicros((inputEstimate * inRate + maxTokens * outRate) / 1_000_000);
}
