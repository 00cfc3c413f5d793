import { describe, expect, it } from 'vitest';
import { costUsd, PriceTable, toMicros, worstCostMicros } from '../../src/budget/prices.js';

const table = new PriceTable();

describe('price table', () => {
  it('matches the most specific model first, dated ids included', () => {
    expect(table.lookup('claude-opus-4-5-20251101')?.output).toBe(25);
    expect(table.lookup('claude-opus-4-1-20250805')?.output).toBe(75);
    expect(table.lookup('claude-opus-5-5')?.input).toBe(4);
    expect(table.lookup('claude-opus-5')?.input).toBe(5);
    expect(table.lookup('claude-sonnet-5-5')?.cacheRead).toBe(0.1);
    expect(table.lookup('claude-sonnet-5')?.cacheRead).toBe(0.2);
    expect(table.lookup('claude-fable-5-1')?.cacheRead).toBe(0.25);
    expect(table.lookup('claude-fable-5')?.cacheRead).toBe(1);
    expect(table.lookup('gpt-9')).toBeNull();
  });

  it('charges unknown models the dearest known price, or nothing when the policy rejects', () => {
    expect(table.resolve('claude-unreleased', 'max')).toEqual(table.max);
    expect(table.max.output).toBe(75);
    expect(table.max.input).toBe(15);
    expect(table.resolve('claude-unreleased', 'reject')).toBeNull();
  });

  it('lets the operator override a model or add one', () => {
    const t = new PriceTable({
      'claude-opus-4-5*': { input: 1, output: 2, cacheWrite5m: 1, cacheWrite1h: 1, cacheRead: 0.1 },
      'my-model': { input: 100, output: 200, cacheWrite5m: 0, cacheWrite1h: 0, cacheRead: 0 },
    });
    expect(t.lookup('claude-opus-4-5-20251101')?.output).toBe(2);
    expect(t.lookup('my-model')?.input).toBe(100);
    expect(t.max.output).toBe(200);
  });
});

describe('cost', () => {
  it('prices each part of the usage split, 1-hour cache writes dearer than 5-minute ones', () => {
    const opus = table.lookup('claude-opus-4-5') as NonNullable<ReturnType<PriceTable['lookup']>>;
    const cost = costUsd(
      {
        inputTokens: 1_000_000,
        outputTokens: 1_000_000,
        cacheCreationTokens: 3_000_000,
        cacheCreation1hTokens: 1_000_000,
        cacheReadTokens: 1_000_000,
      },
      opus,
    );
    // 5 input + 25 output + 2M × 6.25 (5m) + 1M × 10 (1h) + 0.5 read
    expect(cost).toBeCloseTo(5 + 25 + 12.5 + 10 + 0.5, 9);
  });

  it('prices every token of a long Haiku 5.5 prompt at the higher tier', () => {
    const haiku = table.lookup('claude-haiku-5-5') as NonNullable<ReturnType<PriceTable['lookup']>>;
    const short = costUsd(
      { inputTokens: 100_000, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0 },
      haiku,
    );
    const long = costUsd(
      { inputTokens: 100_001, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0 },
      haiku,
    );
    expect(short).toBeCloseTo(0.01, 9);
    expect(long).toBeCloseTo(0.0500005, 9);
  });

  it('the worst case covers any split of the input and the dearest tier', () => {
    const haiku = table.lookup('claude-haiku-5-5') as NonNullable<ReturnType<PriceTable['lookup']>>;
    const worst = worstCostMicros(200_000, 1000, haiku);
    const actual = toMicros(
      costUsd(
        {
          inputTokens: 0,
          outputTokens: 1000,
          cacheCreationTokens: 200_000,
          cacheCreation1hTokens: 200_000,
          cacheReadTokens: 0,
        },
        haiku,
      ),
    );
    expect(worst).toBeGreaterThanOrEqual(actual);
    expect(toMicros(0.0000011)).toBe(2);
    expect(toMicros(0.000001)).toBe(1);
    expect(toMicros(0)).toBe(0);
  });
});
