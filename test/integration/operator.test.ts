import Anthropic from '@anthropic-ai/sdk';
import { afterEach, describe, expect, it } from 'vitest';
import { estimateInputTokens } from '../../src/budget/estimate.js';
import { KeyService } from '../../src/keys/keys.js';
import type { SummaryDoc } from '../../src/service/summary.js';
import {
  billTotal,
  type Harness,
  ROOMY,
  startHarness,
  startReceiver,
  waitUntil,
} from '../support/harness.js';

const MODEL = 'claude-sonnet-5-5';
const hello = [{ role: 'user' as const, content: 'Hello, gateway!' }];
const json = { 'content-type': 'application/json' };

let h: Harness | undefined;
let cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  await h?.close();
  h = undefined;
  for (const c of cleanups) await c();
  cleanups = [];
});

/** One create whose real output is `out` tokens. */
function spend(client: Anthropic, out: number, maxTokens = out) {
  return client.messages.create(
    { model: MODEL, max_tokens: maxTokens, messages: hello },
    { headers: { 'x-fake-output-tokens': String(out) } },
  );
}

describe('alerts and emergency', () => {
  it('fires warning, critical and emergency once each, in order, to a webhook; blocks at 98% until resumed, across a restart', async () => {
    const receiver = await startReceiver();
    cleanups.push(receiver.close);
    h = await startHarness({
      budgets: [{ name: 'global', month: 10_000 }],
      alerts: { webhooks: [receiver.url] },
    });
    const client = h.client({ maxRetries: 0 });
    const thresholdPosts = () =>
      receiver.bodies
        .map((b) => (b as { alert: { level: string } }).alert)
        .filter((a) => a.level !== 'forecast');

    await spend(client, 8000); // 80.0x %
    await waitUntil(() => thresholdPosts().length === 1);
    await spend(client, 1500); // 95.0x %
    await waitUntil(() => thresholdPosts().length === 2);
    await spend(client, 300); // 98.1x %
    await waitUntil(() => thresholdPosts().length === 3);
    expect(thresholdPosts().map((a) => a.level)).toEqual(['warning', 'critical', 'emergency']);
    const first = receiver.bodies[0] as { text: string; alert: { budget: string; window: string } };
    expect(first.text).toEqual(expect.any(String));
    expect(first.alert).toMatchObject({ budget: 'global', window: 'month' });

    // Tokens remain (about 180), but the budget is in emergency.
    const month = (await h.summary()).budgets[0]?.windows.month;
    expect(month?.remaining).toBeGreaterThan(100);
    const err = await spend(client, 10, 20).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.RateLimitError);
    const e = err as InstanceType<typeof Anthropic.RateLimitError>;
    expect(e.headers?.get('x-should-retry')).toBe('false');
    expect(JSON.stringify(e.error)).toMatch(/[Ee]mergency.*resume/);
    const summary = await h.summary();
    expect(summary.status).toBe('emergency');
    expect(summary.budgets[0]?.emergency).toBe(true);

    // No alert fires twice, even after more evaluations.
    await new Promise((r) => setTimeout(r, 300));
    expect(thresholdPosts()).toHaveLength(3);
    const alerts = (await (await h.api('/api/token-usage/alerts')).json()) as {
      alerts: Array<{ level: string }>;
    };
    expect(alerts.alerts.filter((a) => a.level !== 'forecast').map((a) => a.level)).toEqual([
      'emergency',
      'critical',
      'warning',
    ]);

    // The emergency survives a restart.
    await h.restart();
    const client2 = h.client({ maxRetries: 0 });
    await expect(spend(client2, 10, 20)).rejects.toBeInstanceOf(Anthropic.RateLimitError);

    const resumed = await h.api('/api/token-usage/resume', { method: 'POST', headers: json, body: '{}' });
    expect(resumed.status).toBe(200);
    const ok = await spend(client2, 10, 20);
    expect(ok.type).toBe('message');
    expect((await h.summary()).budgets[0]?.emergency).toBe(false);
  });

  it('after a reset, the thresholds alert again in the same month', async () => {
    const receiver = await startReceiver();
    cleanups.push(receiver.close);
    h = await startHarness({
      budgets: [{ name: 'global', month: 10_000 }],
      alerts: { webhooks: [receiver.url] },
    });
    const client = h.client({ maxRetries: 0 });
    const warnings = () =>
      receiver.bodies.filter((b) => (b as { alert: { level: string } }).alert.level === 'warning').length;
    await spend(client, 8000);
    await waitUntil(() => warnings() === 1);
    const reset = await h.api('/api/token-usage/reset', { method: 'POST', headers: json, body: '{}' });
    expect(reset.status).toBe(200);
    await spend(client, 100);
    await new Promise((r) => setTimeout(r, 300));
    expect(warnings()).toBe(1); // 1% used since the reset: nothing to say
    await spend(client, 8000);
    await waitUntil(() => warnings() === 2);
  });

  it('halt blocks everything and ends in-flight streams with an SSE error, settling their usage', async () => {
    h = await startHarness({ budgets: ROOMY });
    const client = h.client({ maxRetries: 0 });
    const stream = client.messages.stream(
      { model: MODEL, max_tokens: 400, messages: hello },
      { headers: { 'x-fake-output-tokens': '300', 'x-fake-event-delay-ms': '20' } },
    );
    const ended = stream.finalMessage().catch((e: unknown) => e);
    await new Promise<void>((r) => stream.once('text', () => r()));
    const halt = await h.api('/api/token-usage/halt', {
      method: 'POST',
      headers: json,
      body: JSON.stringify({ reason: 'cost review' }),
    });
    expect(halt.status).toBe(200);
    expect(await halt.json()).toMatchObject({ budget: '*', ended: 1 });
    const err = await ended;
    expect(err).toBeInstanceOf(Anthropic.APIError);
    expect(String(err)).toMatch(/halt/);
    await waitUntil(async () => (await h?.gateway.store.holdCount()) === 0);
    const row = (await h.ledger())[0];
    expect(row).toMatchObject({ outcome: 'blocked', usageSource: 'estimated', outputTokens: 400 });
    expect(row?.counted).toBeGreaterThanOrEqual(billTotal(h.upstream));

    await expect(spend(client, 5, 10)).rejects.toBeInstanceOf(Anthropic.RateLimitError);
    await h.api('/api/token-usage/resume', { method: 'POST' });
    expect((await spend(client, 5, 10)).type).toBe('message');
  });
});

describe('halting a request that has no response yet', () => {
  it('answers it 429 at once (never leaves it hanging) and charges its whole hold', async () => {
    h = await startHarness({ budgets: ROOMY });
    const client = h.client({ maxRetries: 0, timeout: 10_000 });
    const pending = client.messages
      .create({ model: MODEL, max_tokens: 300, messages: hello }, { headers: { 'x-fake-delay-ms': '5000' } })
      .catch((e: unknown) => e);
    await h.upstream.waitForRequests(1);
    const started = Date.now();
    const halt = await h.api('/api/token-usage/halt', {
      method: 'POST',
      headers: json,
      body: JSON.stringify({ reason: 'cost review' }),
    });
    expect(await halt.json()).toMatchObject({ budget: '*', ended: 1 });
    const err = await pending;
    expect(Date.now() - started).toBeLessThan(2000);
    expect(err).toBeInstanceOf(Anthropic.RateLimitError);
    expect(String(err)).toMatch(/cost review/);
    await waitUntil(async () => (await h?.gateway.store.holdCount()) === 0);
    const row = (await h.ledger())[0];
    expect(row).toMatchObject({
      outcome: 'blocked',
      status: 429,
      usageSource: 'estimated',
      outputTokens: 300,
    });
    await h.api('/api/token-usage/resume', { method: 'POST' });
  });
});

describe('operator authentication', () => {
  it('with an admin token, every operator endpoint answers 401 without it or with a wrong one', async () => {
    h = await startHarness({ budgets: ROOMY, auth: { adminToken: 'the-admin-token' } });
    const endpoints: Array<[string, string, string?]> = [
      ['GET', '/api/token-usage/summary'],
      ['GET', '/api/token-usage/alerts'],
      ['GET', '/api/token-usage/requests'],
      ['GET', '/api/token-usage/timeseries'],
      ['GET', '/api/token-usage/budgets'],
      ['PUT', '/api/token-usage/budgets', JSON.stringify({ budgets: [{ name: 'global', month: 1 }] })],
      ['POST', '/api/token-usage/reset', '{}'],
      ['POST', '/api/token-usage/resume', '{}'],
      ['POST', '/api/token-usage/halt', '{}'],
      ['GET', '/metrics'],
    ];
    for (const [method, path, body] of endpoints) {
      for (const auth of [
        undefined,
        'Bearer wrong-token',
        'Bearer the-admin-token-but-longer',
        'the-admin-token',
      ]) {
        const res = await h.api(path, {
          method,
          headers: { ...json, ...(auth ? { authorization: auth } : {}) },
          ...(body ? { body } : {}),
        });
        expect(res.status, `${method} ${path} with ${auth}`).toBe(401);
      }
    }
    // Nothing changed: the unauthorised PUT, halt and reset did not apply.
    const ok = await h.api('/api/token-usage/summary', {
      headers: { authorization: 'Bearer the-admin-token' },
    });
    expect(ok.status).toBe(200);
    const s = (await ok.json()) as SummaryDoc;
    expect(s.budgets[0]?.windows.month.limit).toBe(10_000_000);
    expect(s.status).toBe('ok');
    for (const [method, path, body] of endpoints.filter(([m]) => m === 'GET')) {
      const res = await h.api(path, { method, headers: { authorization: 'Bearer the-admin-token' }, body });
      expect(res.status, path).toBe(200);
    }
  });
});

describe('keys mode', () => {
  it('the provider gets the real key, never the virtual one; unknown keys get 401; usage goes to the key’s agent', async () => {
    h = await startHarness({
      budgets: ROOMY,
      auth: { mode: 'keys' },
      upstreamApiKey: 'sk-ant-real-provider-key',
    });
    const keys = new KeyService({ store: h.gateway.store, now: Date.now });
    const { key } = await keys.create({ agent: 'researcher' });
    expect(key).toMatch(/^tw_/);

    const client = h.client({ apiKey: key, maxRetries: 0 });
    const msg = await client.messages.create({ model: MODEL, max_tokens: 20, messages: hello });
    expect(msg.type).toBe('message');
    const seen = h.upstream.requests[0]?.headers;
    expect(seen?.['x-api-key']).toBe('sk-ant-real-provider-key');
    expect(seen?.authorization).toBeUndefined();
    expect(JSON.stringify(seen)).not.toContain(key);
    const rows = await h.ledger();
    expect(rows[0]?.agent).toBe('researcher');
    expect(JSON.stringify(rows)).not.toContain('sk-ant-real-provider-key');

    const stranger = h.client({ apiKey: 'tw_notarealkeyatallnotarealkeyatall12345', maxRetries: 0 });
    await expect(
      stranger.messages.create({ model: MODEL, max_tokens: 20, messages: hello }),
    ).rejects.toBeInstanceOf(Anthropic.AuthenticationError);
    const raw = h.client({ apiKey: 'sk-ant-someone-elses-key', maxRetries: 0 });
    await expect(
      raw.messages.create({ model: MODEL, max_tokens: 20, messages: hello }),
    ).rejects.toBeInstanceOf(Anthropic.AuthenticationError);
    expect(h.upstream.requestCount).toBe(1);
  });
});

describe('budgets', () => {
  it('a per-agent budget blocks that agent only, and the error names the budget', async () => {
    h = await startHarness({
      budgets: [
        { name: 'global', month: 1_000_000 },
        { name: 'researcher', agent: 'researcher', month: 500 },
      ],
    });
    const as = (agent: string) =>
      h?.client({ maxRetries: 0, defaultHeaders: { 'x-tokenwarden-agent': agent } });
    await spend(as('researcher') as Anthropic, 300, 300);
    const err = await spend(as('researcher') as Anthropic, 300, 300).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.RateLimitError);
    const e = err as InstanceType<typeof Anthropic.RateLimitError>;
    expect(e.headers?.get('x-tokenwarden-blocked-by')).toBe('budget=researcher; window=month');
    expect(JSON.stringify(e.error)).toContain('\\"researcher\\"');
    expect((await spend(as('writer') as Anthropic, 300, 300)).type).toBe('message');
  });

  it('budgets changed through PUT take effect at once and persist; an invalid one is a 400 naming the field', async () => {
    h = await startHarness({ budgets: ROOMY });
    const client = h.client({ maxRetries: 0 });
    expect((await spend(client, 10, 100)).type).toBe('message');

    const bad = await h.api('/api/token-usage/budgets', {
      method: 'PUT',
      headers: json,
      body: JSON.stringify({ budgets: [{ name: 'global', month: -5, hourly: 3 }] }),
    });
    expect(bad.status).toBe(400);
    const badBody = (await bad.json()) as { error: { type: string; message: string } };
    expect(badBody.error.type).toBe('invalid_request_error');
    expect(badBody.error.message).toMatch(/budgets\.0\.month/);
    expect(badBody.error.message).toMatch(/hourly/);

    const put = await h.api('/api/token-usage/budgets', {
      method: 'PUT',
      headers: json,
      body: JSON.stringify({ budgets: [{ name: 'tight', month: 100_000, request: 50 }] }),
    });
    expect(put.status).toBe(200);
    await expect(spend(client, 10, 100)).rejects.toBeInstanceOf(Anthropic.BadRequestError);

    await h.restart();
    const got = (await (await h.api('/api/token-usage/budgets')).json()) as {
      budgets: Array<{ name: string }>;
    };
    expect(got.budgets.map((b) => b.name)).toEqual(['tight']);
    await expect(spend(h.client({ maxRetries: 0 }), 10, 100)).rejects.toBeInstanceOf(
      Anthropic.BadRequestError,
    );
  });

  it('a USD budget refuses what the price table says it cannot pay for, and rows carry their cost', async () => {
    h = await startHarness({ budgets: [{ name: 'global', month: 10_000_000, usd: { month: 0.01 } }] });
    const client = h.client({ maxRetries: 0 });
    // claude-sonnet-5-5: $10 per million output tokens; 500 output tokens = $0.005.
    await spend(client, 500, 500);
    const row = (await h.ledger())[0];
    expect(row?.costUsd).toBeGreaterThanOrEqual(0.005);
    expect(row?.costUsd).toBeLessThan(0.0052);
    // The summary shows the USD window in dollars beside the token windows.
    const usd = (await h.summary()).budgets[0]?.usd?.windows.month;
    expect(usd?.limit).toBe(0.01);
    expect(usd?.used).toBeCloseTo(row?.costUsd ?? -1, 6);
    expect(usd?.reserved).toBe(0);
    const err = await spend(client, 600, 600).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.RateLimitError);
    expect(
      (err as InstanceType<typeof Anthropic.RateLimitError>).headers?.get('x-tokenwarden-blocked-by'),
    ).toBe('budget=global; window=month; unit=usd');
  });

  it('an unknown model is charged at the dearest price by default, or refused with unknownModel "reject"', async () => {
    h = await startHarness({ budgets: ROOMY });
    await h
      .client({ maxRetries: 0 })
      .messages.create({ model: 'claude-unreleased-9', max_tokens: 10, messages: hello });
    const row = (await h.ledger())[0];
    // The dearest known output price is $75 per million.
    expect(row?.costUsd).toBeCloseTo(((row?.inputTokens ?? 0) * 15 + (row?.outputTokens ?? 0) * 75) / 1e6, 9);
    await h.close();
    h = await startHarness({ budgets: ROOMY, unknownModel: 'reject' });
    const err = await h
      .client({ maxRetries: 0 })
      .messages.create({ model: 'claude-unreleased-9', max_tokens: 10, messages: hello })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.BadRequestError);
    expect(String(err)).toMatch(/no known price/);
    expect(h.upstream.requestCount).toBe(0);
  });
});

describe('policies', () => {
  it('clamp lowers max_tokens to what every window can pay for, and says so', async () => {
    h = await startHarness({ overLimit: 'clamp' }); // the SPEC §2 defaults: 1000 per request, 194 an hour
    const client = h.client({ maxRetries: 0 });
    const { data, response } = await client.messages
      .create(
        { model: MODEL, max_tokens: 1024, messages: hello },
        { headers: { 'x-fake-output-tokens': '5' } },
      )
      .withResponse();
    expect(data.type).toBe('message');
    const clamped = response.headers.get('x-tokenwarden-clamped');
    expect(clamped).toMatch(/^1024->\d+$/);
    const to = Number(clamped?.split('->')[1]);
    expect(to).toBeGreaterThanOrEqual(64);
    expect((h.upstream.requests[0]?.body as { max_tokens?: number } | undefined)?.max_tokens).toBe(to);
    // It fit the hour exactly: reserved = input estimate + clamped output <= 194.
    expect(Number(response.headers.get('x-tokenwarden-reserved'))).toBeLessThanOrEqual(194);

    // Once less than minClampTokens is left, requests are refused.
    await client.messages
      .create(
        { model: MODEL, max_tokens: 1024, messages: hello },
        { headers: { 'x-fake-output-tokens': '60' } },
      )
      .catch(() => undefined);
    await client.messages
      .create(
        { model: MODEL, max_tokens: 1024, messages: hello },
        { headers: { 'x-fake-output-tokens': '60' } },
      )
      .catch(() => undefined);
    const err = await client.messages
      .create({ model: MODEL, max_tokens: 1024, messages: hello })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.APIError);
    expect([400, 429]).toContain((err as InstanceType<typeof Anthropic.APIError>).status);
  });

  it('observe blocks nothing but records what would have been blocked, and why', async () => {
    h = await startHarness({ mode: 'observe', budgets: [{ name: 'global', month: 100, request: 50 }] });
    const client = h.client({ maxRetries: 0 });
    const { data, response } = await client.messages
      .create(
        { model: MODEL, max_tokens: 200, messages: hello },
        { headers: { 'x-fake-output-tokens': '150' } },
      )
      .withResponse();
    expect(data.type).toBe('message');
    expect(response.headers.get('x-tokenwarden-would-block')).toBe('budget=global; window=request');
    const row = (await h.ledger())[0];
    expect(row?.outcome).toBe('ok');
    expect(row?.blockReason).toMatch(/^observe: would refuse \(budget=global; window=request\)/);
    // Usage is still counted, even past the limit.
    const month = (await h.summary()).budgets[0]?.windows.month;
    expect(month?.used).toBe(billTotal(h.upstream));
    expect(month?.used).toBeGreaterThan(100);
  });

  it('count estimation asks the provider for the input size and holds exactly that plus max_tokens', async () => {
    h = await startHarness({ estimation: 'count', budgets: ROOMY });
    const { response } = await h
      .client({ maxRetries: 0 })
      .messages.create({ model: MODEL, max_tokens: 100, messages: hello })
      .withResponse();
    const counts = h.upstream.requests.filter((r) => r.path === '/v1/messages/count_tokens');
    expect(counts).toHaveLength(1);
    const billedInput = h.upstream.requests.find((r) => r.path === '/v1/messages')?.billed?.inputTokens ?? 0;
    expect(Number(response.headers.get('x-tokenwarden-reserved'))).toBe(billedInput + 100);

    // When count_tokens fails, the strict bound is used instead and the request still goes through.
    const body = { model: MODEL, max_tokens: 100, messages: hello };
    const fallback = await h
      .client({ maxRetries: 0 })
      .messages.create(body, { headers: { 'x-fake-count-status': '500' } })
      .withResponse();
    expect(fallback.data.type).toBe('message');
    expect(Number(fallback.response.headers.get('x-tokenwarden-reserved'))).toBe(
      estimateInputTokens(body, 'strict') + 100,
    );
  });
});

describe('operator API', () => {
  it('requests filter and page; timeseries buckets; metrics expose the windows; reset clears usage by scope', async () => {
    h = await startHarness({
      budgets: [
        { name: 'global', month: 1_000_000 },
        { name: 'writer', agent: 'writer', month: 100_000 },
      ],
    });
    const as = (agent: string) =>
      h?.client({ maxRetries: 0, defaultHeaders: { 'x-tokenwarden-agent': agent } }) as Anthropic;
    for (let i = 0; i < 3; i++) await spend(as('writer'), 10, 20);
    for (let i = 0; i < 2; i++) await spend(as('reader'), 10, 20);

    const page = (await (await h.api('/api/token-usage/requests?agent=writer&limit=2')).json()) as {
      requests: Array<{ agent: string }>;
      total: number;
    };
    expect(page.total).toBe(3);
    expect(page.requests).toHaveLength(2);
    expect(page.requests.every((r) => r.agent === 'writer')).toBe(true);
    const page2 = (await (await h.api('/api/token-usage/requests?agent=writer&limit=2&offset=2')).json()) as {
      requests: unknown[];
    };
    expect(page2.requests).toHaveLength(1);
    expect((await h.api('/api/token-usage/requests?outcome=nope')).status).toBe(400);

    const ts = (await (await h.api('/api/token-usage/timeseries?bucket=minute')).json()) as {
      points: Array<{ requests: number; counted: number }>;
    };
    expect(ts.points.reduce((a, p) => a + p.requests, 0)).toBe(5);
    expect(ts.points.reduce((a, p) => a + p.counted, 0)).toBe(billTotal(h.upstream));

    const metrics = await (await h.api('/metrics')).text();
    expect(metrics).toContain(
      `tokenwarden_window_used_tokens{budget="global",window="month"} ${billTotal(h.upstream)}`,
    );
    expect(metrics).toMatch(/tokenwarden_requests_total\{outcome="ok"\} 5/);
    expect(metrics).toContain('tokenwarden_admission_seconds_bucket');

    const reset = await h.api('/api/token-usage/reset', {
      method: 'POST',
      headers: json,
      body: JSON.stringify({ agent: 'writer' }),
    });
    expect(reset.status).toBe(200);
    const s = await h.summary();
    expect(s.budgets.find((b) => b.name === 'writer')?.windows.month.used).toBe(0);
    expect(s.budgets.find((b) => b.name === 'global')?.windows.month.used).toBe(billTotal(h.upstream));
    await h.api('/api/token-usage/reset', {
      method: 'POST',
      headers: json,
      body: JSON.stringify({ window: 'month' }),
    });
    expect((await h.summary()).budgets.find((b) => b.name === 'global')?.windows.month.used).toBe(0);
    expect((await h.summary()).budgets.find((b) => b.name === 'global')?.windows.day.used).toBe(
      billTotal(h.upstream),
    );
  });
});
