import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Usage, Weights } from '../../src/budget/types.js';
import {
  countedTokens,
  DEFAULT_WEIGHTS,
  mergeDeltaUsage,
  usageFromAnthropic,
  worstCase,
  ZERO_USAGE,
} from '../../src/budget/usage.js';

const usage = (
  inputTokens: number,
  outputTokens: number,
  cacheCreationTokens = 0,
  cacheReadTokens = 0,
): Usage => ({
  inputTokens,
  outputTokens,
  cacheCreationTokens,
  cacheReadTokens,
});

describe('usageFromAnthropic', () => {
  it('reads the four token fields', () => {
    expect(
      usageFromAnthropic({
        input_tokens: 25,
        output_tokens: 6,
        cache_creation_input_tokens: 100,
        cache_read_input_tokens: 2000,
        cache_creation: { ephemeral_5m_input_tokens: 100, ephemeral_1h_input_tokens: 0 },
        service_tier: 'standard',
      }),
    ).toEqual(usage(25, 6, 100, 2000));
  });

  it('treats missing, null and malformed fields as 0', () => {
    expect(usageFromAnthropic({ input_tokens: 25, output_tokens: 1 })).toEqual(usage(25, 1));
    expect(
      usageFromAnthropic({
        input_tokens: null,
        output_tokens: '7',
        cache_creation_input_tokens: Number.NaN,
        cache_read_input_tokens: -3,
      }),
    ).toEqual(ZERO_USAGE);
    for (const bad of [null, undefined, 42, 'usage', [], [1, 2]])
      expect(usageFromAnthropic(bad)).toEqual(ZERO_USAGE);
  });

  it('rounds fractional counts up (never under-counts)', () => {
    expect(usageFromAnthropic({ input_tokens: 2.2, output_tokens: 0.5 })).toEqual(usage(3, 1));
  });

  it('adds compaction iterations, which the top-level totals exclude', () => {
    const u = usageFromAnthropic({
      input_tokens: 1000,
      output_tokens: 200,
      cache_creation_input_tokens: 10,
      cache_read_input_tokens: 20,
      iterations: [
        {
          type: 'compaction',
          input_tokens: 180_000,
          output_tokens: 3000,
          cache_creation_input_tokens: 5,
          cache_read_input_tokens: 7,
          cache_creation: null,
        },
        { type: 'message', input_tokens: 1000, output_tokens: 200, model: 'claude-opus-5' },
        { type: 'advisor_message', input_tokens: 1, output_tokens: 1 },
        { type: 'compaction', input_tokens: 50, output_tokens: null },
        null,
        'junk',
      ],
    });
    expect(u).toEqual(usage(181_050, 3200, 15, 27));
  });

  it('ignores a malformed iterations field', () => {
    expect(
      usageFromAnthropic({ input_tokens: 5, output_tokens: 5, iterations: { type: 'compaction' } }),
    ).toEqual(usage(5, 5));
  });
});

describe('mergeDeltaUsage', () => {
  const start = usageFromAnthropic({
    input_tokens: 25,
    cache_creation_input_tokens: 0,
    cache_read_input_tokens: 0,
    output_tokens: 1,
  });

  it('overwrites with cumulative totals: output 1 then 6 is 6, not 7', () => {
    const end = mergeDeltaUsage(start, {
      input_tokens: 25,
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 0,
      output_tokens: 6,
    });
    expect(end).toEqual(usage(25, 6));
  });

  it('the last of several message_delta events wins', () => {
    let u = start;
    for (const out of [10, 40, 73]) u = mergeDeltaUsage(u, { output_tokens: out });
    expect(u.outputTokens).toBe(73);
    u = mergeDeltaUsage(u, { output_tokens: 80, input_tokens: 900, cache_read_input_tokens: 12 });
    expect(u).toEqual(usage(900, 80, 0, 12));
  });

  it('null or absent fields keep the previous value', () => {
    const prev = usage(25, 3, 4, 5);
    expect(
      mergeDeltaUsage(prev, {
        output_tokens: 9,
        input_tokens: null,
        cache_creation_input_tokens: null,
        server_tool_use: null,
      }),
    ).toEqual(usage(25, 9, 4, 5));
  });

  it('a malformed delta changes nothing and never throws', () => {
    const prev = usage(1, 2, 3, 4);
    for (const bad of [null, undefined, 7, 'x', [], { output_tokens: 'many' }]) {
      expect(mergeDeltaUsage(prev, bad)).toEqual(prev);
    }
  });

  it('returns a new object', () => {
    const prev = usage(1, 2);
    const next = mergeDeltaUsage(prev, { output_tokens: 5 });
    expect(prev).toEqual(usage(1, 2));
    expect(next).not.toBe(prev);
  });

  it('adds compaction iterations to the totals it replaces', () => {
    const u = mergeDeltaUsage(start, {
      input_tokens: 30,
      output_tokens: 50,
      iterations: [
        { type: 'compaction', input_tokens: 160_000, output_tokens: 2500 },
        { type: 'message', input_tokens: 30, output_tokens: 50 },
      ],
    });
    expect(u).toEqual(usage(160_030, 2550));
  });

  it('is idempotent: replaying the same cumulative delta changes nothing', () => {
    fc.assert(
      fc.property(
        fc.record({
          input_tokens: fc.option(fc.nat(1e6)),
          output_tokens: fc.nat(1e6),
          cache_creation_input_tokens: fc.option(fc.nat(1e6)),
          cache_read_input_tokens: fc.option(fc.nat(1e6)),
        }),
        (delta) => {
          const once = mergeDeltaUsage(start, delta);
          expect(mergeDeltaUsage(once, delta)).toEqual(once);
          expect(once.outputTokens).toBe(delta.output_tokens);
        },
      ),
    );
  });
});

describe('countedTokens', () => {
  it('sums the four components with weight 1 by default', () => {
    expect(countedTokens(usage(25, 6, 100, 2000), DEFAULT_WEIGHTS)).toBe(2131);
    expect(DEFAULT_WEIGHTS).toEqual({ input: 1, output: 1, cacheCreation: 1, cacheRead: 1 });
  });

  it('applies weights and rounds up to an integer', () => {
    const w: Weights = { input: 1, output: 1, cacheCreation: 1.25, cacheRead: 0.1 };
    expect(countedTokens(usage(10, 10, 0, 15), w)).toBe(22); // 20 + 1.5
    expect(countedTokens(usage(0, 0, 3, 0), w)).toBe(4); // 3.75
    expect(countedTokens(usage(0, 0, 0, 1), w)).toBe(1); // 0.1
  });

  it('does not turn float noise into an extra token', () => {
    // 0.07 × 100 is 7.000000000000001 and 1.12 × 25 is 28.000000000000004 in binary floating point.
    expect(countedTokens(usage(100, 0), { ...DEFAULT_WEIGHTS, input: 0.07 })).toBe(7);
    expect(countedTokens(usage(0, 25), { ...DEFAULT_WEIGHTS, output: 1.12 })).toBe(28);
    expect(
      worstCase(100, 25, { input: 0.07, output: 1.12, cacheCreation: 0.07, cacheRead: 0.07 }).amount,
    ).toBe(35);
    expect(countedTokens(usage(0, 0, 0, 3), { ...DEFAULT_WEIGHTS, cacheRead: 0.1 })).toBe(1);
    expect(countedTokens(usage(0, 0, 0, 30), { ...DEFAULT_WEIGHTS, cacheRead: 0.1 })).toBe(3);
  });

  it('is an integer never below the exact weighted sum', () => {
    fc.assert(
      fc.property(
        fc.nat(1e7),
        fc.nat(1e7),
        fc.nat(1e7),
        fc.nat(1e7),
        fc.integer({ min: 0, max: 400 }),
        fc.integer({ min: 0, max: 400 }),
        (i, o, cc, cr, wi, wcr) => {
          // Weights in hundredths keep the exact sum computable in integers.
          const w: Weights = { input: wi / 100, output: 1, cacheCreation: 1.25, cacheRead: wcr / 100 };
          const n = countedTokens(usage(i, o, cc, cr), w);
          const exactTimes100 = wi * i + 100 * o + 125 * cc + wcr * cr;
          expect(Number.isSafeInteger(n)).toBe(true);
          expect(n).toBe(Math.ceil(exactTimes100 / 100));
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('worstCase', () => {
  it('input at the largest input weight plus max_tokens at the output weight', () => {
    expect(worstCase(500, 1024, DEFAULT_WEIGHTS)).toEqual({ amount: 1524, inputPart: 500, outputPart: 1024 });
    const w: Weights = { input: 1, output: 5, cacheCreation: 1.25, cacheRead: 0.1 };
    expect(worstCase(101, 3, w)).toEqual({ amount: 127 + 15, inputPart: 127, outputPart: 15 });
    expect(worstCase(100, 0, { ...w, input: 0.5, cacheCreation: 0.2, cacheRead: 2 })).toEqual({
      amount: 200,
      inputPart: 200,
      outputPart: 0,
    });
  });

  it('covers any split of the input into uncached, cache-write and cache-read tokens', () => {
    fc.assert(
      fc.property(
        fc.nat(1e6),
        fc.nat(1e5),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.constantFrom(
          DEFAULT_WEIGHTS,
          { input: 1, output: 5, cacheCreation: 1.25, cacheRead: 0.1 },
          { input: 0.3, output: 1.5, cacheCreation: 0.375, cacheRead: 0.03 },
        ),
        (input, maxTokens, f1, f2, w) => {
          const cc = Math.floor(input * f1);
          const cr = Math.floor((input - cc) * f2);
          const actual = usage(input - cc - cr, maxTokens, cc, cr);
          expect(countedTokens(actual, w)).toBeLessThanOrEqual(worstCase(input, maxTokens, w).amount);
        },
      ),
      { numRuns: 500 },
    );
  });
});
