import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { holdEntries, planAdmission, tightestRemaining } from '../../src/budget/admission.js';
import { globToRegExp, matchesScope } from '../../src/budget/scope.js';
import type { BudgetDef, WindowSlot } from '../../src/budget/types.js';
import { WindowResolver } from '../../src/budget/windows.js';

const NOW = Date.parse('2026-05-01T10:15:00Z');
const resolver = new WindowResolver({ timezone: 'UTC', cycleDay: 1 });

const global: BudgetDef = {
  name: 'global',
  scope: {},
  limits: { month: 140_000, day: 4667, hour: 194 },
  request: 1000,
  rolling: false,
};
const researcher: BudgetDef = {
  name: 'researcher',
  scope: { agent: 'researcher' },
  limits: { month: 50_000 },
  rolling: false,
};
const opus: BudgetDef = {
  name: 'opus',
  scope: { model: 'claude-opus-*' },
  limits: { day: 2000 },
  rolling: true,
};
const researcherOpus: BudgetDef = {
  name: 'researcher-opus',
  scope: { agent: 'researcher', model: 'claude-opus-*' },
  limits: { hour: 100 },
  request: 300,
  rolling: false,
};
const BUDGETS = [global, researcher, opus, researcherOpus];

const plan = (agent: string, model: string | null, amount = 50, budgets: BudgetDef[] = BUDGETS) =>
  planAdmission({ budgets, resolver, now: NOW, agent, model, amount });
const names = (bs: BudgetDef[]) => bs.map((b) => b.name);

describe('globToRegExp / matchesScope', () => {
  it('* is any run, ? one character, everything else literal, anchored', () => {
    const re = globToRegExp('claude-opus-*');
    expect(re.test('claude-opus-5')).toBe(true);
    expect(re.test('claude-opus-')).toBe(true);
    expect(re.test('claude-sonnet-5')).toBe(false);
    expect(re.test('xclaude-opus-5')).toBe(false);
    expect(globToRegExp('claude-?-haiku').test('claude-3-haiku')).toBe(true);
    expect(globToRegExp('claude-?-haiku').test('claude-35-haiku')).toBe(false);
    expect(globToRegExp('claude-3.5*').test('claude-3x5-sonnet')).toBe(false);
    expect(globToRegExp('a+b(c)[d]{2}|^$\\/').test('a+b(c)[d]{2}|^$\\/')).toBe(true);
    expect(globToRegExp('*').test('')).toBe(true);
    expect(globToRegExp('?').test('🙂')).toBe(true);
  });

  it('matches a literal glob (no wildcards) only exactly', () => {
    expect(matchesScope({ model: 'claude-opus-5' }, 'a', 'claude-opus-5')).toBe(true);
    expect(matchesScope({ model: 'claude-opus-5' }, 'a', 'claude-opus-50')).toBe(false);
  });

  it('agent matches exactly; a model scope never matches a request without a model', () => {
    expect(matchesScope({}, 'anyone', null)).toBe(true);
    expect(matchesScope({ agent: 'researcher' }, 'researcher', null)).toBe(true);
    expect(matchesScope({ agent: 'researcher' }, 'Researcher', 'm')).toBe(false);
    expect(matchesScope({ model: '*' }, 'a', null)).toBe(false);
    expect(matchesScope({ model: '*' }, 'a', 'anything')).toBe(true);
  });

  it('agrees with a direct glob interpretation on random strings', () => {
    const chars = fc.constantFrom('a', 'b', '.', '-', '*', '?');
    const str = fc.array(chars, { maxLength: 8 }).map((a) => a.join(''));
    // Reference: classic recursive wildcard matcher.
    const ref = (g: string, s: string): boolean => {
      if (g === '') return s === '';
      const [c, rest] = [g[0], g.slice(1)];
      if (c === '*') return ref(rest, s) || (s !== '' && ref(g, s.slice(1)));
      if (s === '') return false;
      return (c === '?' || c === s[0]) && ref(rest, s.slice(1));
    };
    fc.assert(
      fc.property(str, str, (g, s) => {
        expect(matchesScope({ model: g }, 'a', s)).toBe(ref(g, s));
      }),
      { numRuns: 1000 },
    );
  });
});

describe('planAdmission: matching', () => {
  it('a request by another agent for a non-opus model matches only the global budget', () => {
    const p = plan('writer', 'claude-sonnet-5-5');
    expect(names(p.matched)).toEqual(['global']);
    expect(p.slots.map((s) => s.series)).toEqual(['global|month', 'global|day', 'global|hour']);
  });

  it('agent budgets match their agent', () => {
    expect(names(plan('researcher', 'claude-sonnet-5-5').matched)).toEqual(['global', 'researcher']);
  });

  it('model globs match the model, agent+model needs both', () => {
    expect(names(plan('writer', 'claude-opus-5').matched)).toEqual(['global', 'opus']);
    expect(names(plan('researcher', 'claude-opus-5').matched)).toEqual([
      'global',
      'researcher',
      'opus',
      'researcher-opus',
    ]);
  });

  it('a request without a model matches no model-scoped budget', () => {
    expect(names(plan('researcher', null).matched)).toEqual(['global', 'researcher']);
  });

  it('slots: budgets in config order, each month, day, hour, with limits and series', () => {
    const p = plan('researcher', 'claude-opus-5');
    expect(p.slots.map((s) => [s.series, s.kind, s.limit])).toEqual([
      ['global|month', 'month', 140_000],
      ['global|day', 'day', 4667],
      ['global|hour', 'hour', 194],
      ['researcher|month', 'month', 50_000],
      ['researcher|day', 'day', null],
      ['researcher|hour', 'hour', null],
      ['opus|rolling-month', 'month', null],
      ['opus|rolling-day', 'day', 2000],
      ['opus|rolling-hour', 'hour', null],
      ['researcher-opus|month', 'month', null],
      ['researcher-opus|day', 'day', null],
      ['researcher-opus|hour', 'hour', 100],
    ]);
    expect(p.slots[2]).toMatchObject({
      bucket: Date.parse('2026-05-01T10:00:00Z'),
      from: Date.parse('2026-05-01T10:00:00Z'),
      resetsAt: Date.parse('2026-05-01T11:00:00Z'),
    });
  });

  it('no budgets: nothing matched, nothing too large', () => {
    expect(plan('a', 'm', 1e9, [])).toEqual({ matched: [], slots: [], tooLarge: null });
  });
});

describe('planAdmission: tooLarge', () => {
  it('null when the amount fits every limit', () => {
    expect(plan('researcher', 'claude-opus-5', 100).tooLarge).toBeNull();
    expect(plan('writer', 'm', 194).tooLarge).toBeNull();
  });

  it('over a per-request limit', () => {
    expect(plan('writer', 'm', 1001).tooLarge).toEqual({ budget: 'global', window: 'request', limit: 1000 });
    expect(plan('researcher', 'claude-opus-5', 301).tooLarge).toEqual({
      budget: 'researcher-opus',
      window: 'request',
      limit: 300,
    });
  });

  it('over a whole window limit, when no request limit is exceeded', () => {
    expect(plan('writer', 'm', 195).tooLarge).toEqual({ budget: 'global', window: 'hour', limit: 194 });
    expect(plan('researcher', 'claude-opus-5', 150).tooLarge).toEqual({
      budget: 'researcher-opus',
      window: 'hour',
      limit: 100,
    });
    const big: BudgetDef[] = [
      { ...global, limits: { month: 10_000 }, request: undefined },
      { ...researcherOpus, request: undefined },
    ];
    expect(plan('researcher', 'claude-opus-5', 150, big).tooLarge).toEqual({
      budget: 'researcher-opus',
      window: 'hour',
      limit: 100,
    });
    expect(plan('researcher', 'claude-opus-5', 20_000, big).tooLarge).toEqual({
      budget: 'global',
      window: 'month',
      limit: 10_000,
    });
  });

  it('per-request limits are checked before window limits, across all matched budgets', () => {
    // global's hour (194) is exceeded first in config order, but researcher-opus's request limit wins.
    expect(plan('researcher', 'claude-opus-5', 400).tooLarge).toEqual({
      budget: 'researcher-opus',
      window: 'request',
      limit: 300,
    });
  });

  it('only matched budgets count', () => {
    expect(plan('writer', 'claude-sonnet-5-5', 150).tooLarge).toBeNull();
  });
});

describe('holdEntries', () => {
  it('one entry per slot, index-aligned, all holding the amount', () => {
    const p = plan('writer', 'claude-opus-5', 77);
    const entries = holdEntries(p.slots, 77);
    expect(entries).toHaveLength(6);
    entries.forEach((e, i) => {
      const s = p.slots[i] as WindowSlot;
      expect(e).toEqual({ series: s.series, bucket: s.bucket, from: s.from, limit: s.limit, amount: 77 });
    });
  });
});

describe('tightestRemaining', () => {
  const slot = (budget: string, kind: WindowSlot['kind'], limit: number | null): WindowSlot => ({
    budget,
    kind,
    series: `${budget}|${kind}`,
    bucket: 0,
    from: 0,
    limit,
    resetsAt: 1,
  });

  it('per kind, the least limit - after over limited slots', () => {
    const slots = [
      slot('g', 'month', 140_000),
      slot('g', 'day', 4667),
      slot('g', 'hour', 194),
      slot('r', 'month', 50_000),
      slot('r', 'day', null),
      slot('r', 'hour', 1000),
    ];
    const after = [100_000, 1000, 150, 20_000, 999_999, 900];
    expect(tightestRemaining(slots, after)).toEqual({ month: 30_000, day: 3667, hour: 44 });
  });

  it('never negative, absent when no slot of a kind has a limit', () => {
    const slots = [slot('g', 'month', 100), slot('g', 'day', null), slot('g', 'hour', null)];
    expect(tightestRemaining(slots, [250, 5, 5])).toEqual({ month: 0 });
    expect(tightestRemaining([], [])).toEqual({});
  });

  it('treats a missing after entry as no usage', () => {
    expect(tightestRemaining([slot('g', 'hour', 194)], [])).toEqual({ hour: 194 });
  });
});
