import Anthropic from '@anthropic-ai/sdk';
import { afterEach, describe, expect, it } from 'vitest';
import { billTotal, type Harness, ROOMY, rowTotal, startHarness } from '../support/harness.js';

const MODEL = 'claude-sonnet-5-5';
const hello = [{ role: 'user' as const, content: 'Hello, gateway!' }];

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('create and stream through the gateway', () => {
  it('passes a non-streaming create through unchanged and ledgers exactly what the provider reported', async () => {
    h = await startHarness({ budgets: ROOMY });
    const client = h.client({ maxRetries: 0 });
    const { data: msg, response } = await client.messages
      .create(
        { model: MODEL, max_tokens: 64, messages: hello },
        { headers: { 'x-fake-cache-read': '40', 'x-fake-cache-creation': '7', 'x-fake-output-tokens': '9' } },
      )
      .withResponse();

    expect(msg.type).toBe('message');
    expect(msg.content[0]).toMatchObject({ type: 'text', text: 'tok '.repeat(9) });
    const rec = h.upstream.requests[0];
    expect(rec?.billed).not.toBeNull();
    // The provider's own headers reach the client untouched, and ours are added.
    expect(response.headers.get('request-id')).toBe(rec?.requestId);
    expect(response.headers.get('anthropic-ratelimit-tokens-limit')).not.toBeNull();
    const id = response.headers.get('x-tokenwarden-request-id');
    expect(id).toMatch(/^twreq_/);
    const reserved = Number(response.headers.get('x-tokenwarden-reserved'));
    expect(reserved).toBeGreaterThanOrEqual(64);
    expect(Number(response.headers.get('x-tokenwarden-hour-remaining'))).toBe(1_000_000 - reserved);
    expect(Number(response.headers.get('x-tokenwarden-month-remaining'))).toBe(10_000_000 - reserved);

    const rows = await h.ledger();
    expect(rows).toHaveLength(1);
    const row = rows[0];
    expect(row).toMatchObject({
      id,
      outcome: 'ok',
      status: 200,
      model: MODEL,
      stream: false,
      usageSource: 'reported',
      upstreamRequestId: rec?.requestId,
      reserved,
      inputTokens: rec?.billed?.inputTokens,
      outputTokens: 9,
      cacheCreationTokens: 7,
      cacheReadTokens: 40,
    });
    expect(row?.counted).toBe(billTotal(h.upstream));
    const summary = await h.summary();
    expect(summary.budgets[0]?.windows.month).toMatchObject({ used: billTotal(h.upstream), reserved: 0 });
  });

  it('streams events as they arrive and ledgers the last cumulative message_delta usage', async () => {
    h = await startHarness({ budgets: ROOMY });
    const client = h.client({ maxRetries: 0 });
    const stream = client.messages.stream(
      { model: MODEL, max_tokens: 100, messages: hello },
      {
        headers: {
          'x-fake-output-tokens': '30',
          'x-fake-message-deltas': '3',
          'x-fake-cache-read': '11',
          'x-fake-event-delay-ms': '2',
        },
      },
    );
    let deltas = 0;
    stream.on('text', () => {
      deltas++;
    });
    const final = await stream.finalMessage();
    expect(deltas).toBe(30);
    expect(final.usage.output_tokens).toBe(30);
    const rows = await h.ledger();
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ outcome: 'ok', stream: true, usageSource: 'reported', outputTokens: 30 });
    expect(rows[0]?.cacheReadTokens).toBe(11);
    expect(rows[0]?.counted).toBe(billTotal(h.upstream));
    expect(await h.gateway.store.holdCount()).toBe(0);
  });

  it('forwards the first event before the provider has finished the stream', async () => {
    h = await startHarness({ budgets: ROOMY });
    const res = await fetch(`${h.gateway.url}/v1/messages`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'x-api-key': 'sk-test',
        'anthropic-version': '2023-06-01',
        'x-fake-output-tokens': '20',
        'x-fake-event-delay-ms': '100',
      },
      body: JSON.stringify({ model: MODEL, max_tokens: 50, stream: true, messages: hello }),
    });
    expect(res.status).toBe(200);
    const reader = res.body?.getReader();
    const first = await reader?.read();
    expect(new TextDecoder().decode(first?.value)).toContain('event: message_start');
    // 20 deltas 100 ms apart are still being generated upstream.
    expect(h.upstream.requests[0]?.completed).toBe(false);
    await reader?.cancel();
  });

  it('accepts x-api-key and Authorization: Bearer, passes anthropic-* and unknown headers, drops ours and hop-by-hop', async () => {
    h = await startHarness({ budgets: ROOMY });
    const body = JSON.stringify({ model: MODEL, max_tokens: 16, messages: hello });
    const common = {
      'content-type': 'application/json',
      'anthropic-version': '2026-10-21',
      'anthropic-beta': 'fast-mode-2026-02-01,oauth-2025-04-20',
      'x-custom-thing': 'kept',
      'x-tokenwarden-agent': 'researcher',
      'x-tokenwarden-tag-team': 'search',
      'proxy-authorization': 'Basic c2VjcmV0',
    };
    const a = await fetch(`${h.gateway.url}/v1/messages`, {
      method: 'POST',
      headers: { ...common, 'x-api-key': 'sk-one' },
      body,
    });
    const b = await fetch(`${h.gateway.url}/v1/messages`, {
      method: 'POST',
      headers: { ...common, authorization: 'Bearer sk-two' },
      body,
    });
    expect([a.status, b.status]).toEqual([200, 200]);
    const [ra, rb] = h.upstream.requests;
    expect(ra?.headers['x-api-key']).toBe('sk-one');
    expect(rb?.headers.authorization).toBe('Bearer sk-two');
    for (const r of [ra, rb]) {
      expect(r?.headers['anthropic-version']).toBe('2026-10-21');
      expect(r?.headers['anthropic-beta']).toBe('fast-mode-2026-02-01,oauth-2025-04-20');
      expect(r?.headers['x-custom-thing']).toBe('kept');
      expect(r?.headers['x-tokenwarden-agent']).toBeUndefined();
      expect(r?.headers['x-tokenwarden-tag-team']).toBeUndefined();
      expect(r?.headers['proxy-authorization']).toBeUndefined();
      // The body reaches the provider byte for byte.
      expect(JSON.stringify(r?.body)).toBe(body);
    }
    const rows = await h.ledger();
    expect(rows.map((r) => r.agent)).toEqual(['researcher', 'researcher']);
    expect(rows[0]?.metadata).toMatchObject({ tags: { team: 'search' } });
    expect(new Set(rows.map((r) => r.keyId)).size).toBe(2);
    expect(JSON.stringify(rows)).not.toContain('sk-one');
  });

  it('names the agent from metadata.user_id, else from a hash of the key', async () => {
    h = await startHarness({ budgets: ROOMY });
    const client = h.client({ maxRetries: 0 });
    await client.messages.create({
      model: MODEL,
      max_tokens: 8,
      messages: hello,
      metadata: { user_id: 'agent-7' },
    });
    await client.messages.create({ model: MODEL, max_tokens: 8, messages: hello });
    const rows = (await h.ledger()).reverse();
    expect(rows[0]?.agent).toBe('agent-7');
    expect(rows[1]?.agent).toMatch(/^key-[0-9a-f]{8}$/);
    expect(rows[1]?.agent).not.toContain('sk-test');
  });

  it('passes count_tokens through without charging it', async () => {
    h = await startHarness({ budgets: ROOMY });
    const client = h.client({ maxRetries: 0 });
    const count = await client.messages.countTokens({ model: MODEL, messages: hello });
    expect(count.input_tokens).toBeGreaterThan(0);
    const summary = await h.summary();
    expect(summary.budgets[0]?.windows.month.used).toBe(0);
    const rows = await h.ledger();
    expect(rows[0]).toMatchObject({ counted: 0, outcome: 'ok', metadata: { route: 'count_tokens' } });
  });

  it('refuses any other /v1/ route with 404 not_found_error, without reaching the provider', async () => {
    h = await startHarness({ budgets: ROOMY });
    const client = h.client({ maxRetries: 0 });
    await expect(client.models.list()).rejects.toBeInstanceOf(Anthropic.NotFoundError);
    const res = await fetch(`${h.gateway.url}/v1/messages/batches`, {
      method: 'POST',
      headers: { 'x-api-key': 'k', 'content-type': 'application/json' },
      body: '{}',
    });
    expect(res.status).toBe(404);
    expect(await res.json()).toMatchObject({ type: 'error', error: { type: 'not_found_error' } });
    expect(h.upstream.requestCount).toBe(0);
  });

  it('forwards a route the operator lists in passthrough, uncharged but recorded', async () => {
    h = await startHarness({ budgets: ROOMY, passthrough: ['GET /v1/models'] });
    const client = h.client({ maxRetries: 0 });
    const page = await client.models.list();
    expect(page.data.length).toBeGreaterThan(0);
    const rows = await h.ledger();
    expect(rows[0]).toMatchObject({ counted: 0, outcome: 'ok', metadata: { route: 'GET /v1/models' } });
  });
});

describe('budgets hold under concurrency', () => {
  it('a burst of 300 concurrent requests never bills past the limit, and the ledger equals the bill', async () => {
    const limit = 6_000;
    h = await startHarness({ budgets: [{ name: 'global', month: limit }] });
    const client = h.client({ maxRetries: 0 });
    // Each request really uses its whole max_tokens, so only ~70 of the 300 can be paid for.
    const opts = { headers: { 'x-fake-output-tokens': '80' } };
    const results = await Promise.allSettled(
      Array.from({ length: 300 }, (_, i) =>
        i % 2 === 0
          ? client.messages.create({ model: MODEL, max_tokens: 80, messages: hello }, opts)
          : client.messages.stream({ model: MODEL, max_tokens: 80, messages: hello }, opts).finalMessage(),
      ),
    );
    const ok = results.filter((r) => r.status === 'fulfilled').length;
    const limited = results.filter(
      (r) => r.status === 'rejected' && r.reason instanceof Anthropic.RateLimitError,
    );
    const other = results.filter(
      (r) => r.status === 'rejected' && !(r.reason instanceof Anthropic.RateLimitError),
    );
    expect(other.map((r) => String((r as PromiseRejectedResult).reason))).toEqual([]);
    expect(ok).toBeGreaterThan(0);
    expect(limited.length).toBeGreaterThan(0);
    expect(ok + limited.length).toBe(300);

    const billed = billTotal(h.upstream);
    expect(billed).toBeLessThanOrEqual(limit);
    expect(h.upstream.bill.requests).toBe(ok);
    const rows = await h.ledger();
    expect(rows).toHaveLength(300);
    expect(rows.reduce((a, r) => a + r.counted, 0)).toBe(billed);
    expect(rows.filter((r) => r.outcome === 'ok').reduce((a, r) => a + rowTotal(r), 0)).toBe(billed);
    expect(await h.gateway.store.holdCount()).toBe(0);
    const month = (await h.summary()).budgets[0]?.windows.month;
    expect(month).toMatchObject({ used: billed, reserved: 0, limit });
  });
});

describe('refusals', () => {
  it('an exhausted window answers 429 that the SDK does not retry, and the provider never sees it', async () => {
    h = await startHarness({ budgets: [{ name: 'global', month: 1000 }] });
    const client = h.client(); // default retries (2)
    await client.messages.create(
      { model: MODEL, max_tokens: 700, messages: hello },
      { headers: { 'x-fake-output-tokens': '700' } },
    );
    expect(h.upstream.requestCount).toBe(1);

    const err = await client.messages
      .create({ model: MODEL, max_tokens: 300, messages: hello })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.RateLimitError);
    const e = err as InstanceType<typeof Anthropic.RateLimitError>;
    expect(e.status).toBe(429);
    expect(e.headers?.get('x-should-retry')).toBe('false');
    expect(Number(e.headers?.get('retry-after'))).toBeGreaterThan(60);
    expect(e.headers?.get('x-tokenwarden-blocked-by')).toBe('budget=global; window=month');
    expect(e.message).toContain('rate_limit_error');
    const body = e.error as { error?: { message?: string } };
    expect(body.error?.message).toMatch(
      /budget "global".*month.*used \d+ tokens \+ reserved 0 tokens of 1000 tokens.*resets at \d{4}-/s,
    );
    expect(h.upstream.requestCount).toBe(1);
    const blocked = (await h.ledger()).filter((r) => r.outcome === 'blocked');
    expect(blocked).toHaveLength(1); // not retried
    expect(blocked[0]).toMatchObject({ status: 429, blockReason: 'budget=global; window=month', counted: 0 });
  });

  it('a request over the per-request limit gets 400 before the provider (the SPEC §2 defaults)', async () => {
    h = await startHarness(); // no budgets: the defaults
    const client = h.client();
    const err = await client.messages
      .create({ model: MODEL, max_tokens: 1024, messages: hello })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.BadRequestError);
    expect((err as Error).message).toMatch(/per-request limit of 1000 tokens/);
    expect(h.upstream.requestCount).toBe(0);
  });

  it('a request without credentials gets 401 authentication_error before the provider', async () => {
    h = await startHarness({ budgets: ROOMY });
    const res = await fetch(`${h.gateway.url}/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
      body: JSON.stringify({ model: MODEL, max_tokens: 8, messages: hello }),
    });
    expect(res.status).toBe(401);
    expect(await res.json()).toMatchObject({ type: 'error', error: { type: 'authentication_error' } });
    expect(h.upstream.requestCount).toBe(0);
  });

  it('with no config the defaults are exactly those of SPEC §2', async () => {
    h = await startHarness();
    const s = await h.summary();
    expect(s.budgets).toHaveLength(1);
    const g = s.budgets[0];
    expect(g?.name).toBe('global');
    expect(g?.perRequestLimit).toBe(1000);
    expect(g?.windows.month.limit).toBe(140_000);
    expect(g?.windows.day.limit).toBe(4_667);
    expect(g?.windows.hour.limit).toBe(194);
    expect(s.thresholds).toEqual({ warning: 80, critical: 95, emergency: 98 });
    expect(s.status).toBe('ok');
  });

  it('malformed bodies get 400 invalid_request_error and the gateway keeps serving', async () => {
    h = await startHarness({ budgets: ROOMY, maxBodyBytes: 4096 });
    const post = (body: string | Buffer, headers: Record<string, string> = {}) =>
      fetch(`${h?.gateway.url}/v1/messages`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-api-key': 'k', ...headers },
        body,
      });
    const cases: Array<[string | Buffer, number, RegExp, Record<string, string>?]> = [
      ['{"model":', 400, /not valid JSON/],
      ['', 400, /empty/],
      ['[1,2]', 400, /JSON object/],
      ['null', 400, /JSON object/],
      [JSON.stringify({ max_tokens: 5, messages: [] }), 400, /model/],
      [JSON.stringify({ model: MODEL, messages: [] }), 400, /max_tokens/],
      [JSON.stringify({ model: MODEL, max_tokens: '5', messages: [] }), 400, /max_tokens/],
      [JSON.stringify({ model: MODEL, max_tokens: -1, messages: [] }), 400, /max_tokens/],
      [JSON.stringify({ model: MODEL, max_tokens: 1.5, messages: [] }), 400, /max_tokens/],
      [JSON.stringify({ model: MODEL, max_tokens: 5, messages: 'hi' }), 400, /messages/],
      [JSON.stringify({ model: 7, max_tokens: 5, messages: [] }), 400, /model/],
      [Buffer.from([0xff, 0xfe, 0x00, 0x7b]), 400, /JSON/],
      [
        JSON.stringify({ model: MODEL, max_tokens: 5, messages: [] }),
        400,
        /x-tokenwarden-agent/,
        {
          'x-tokenwarden-agent': 'bad agent name with spaces',
        },
      ],
      [
        JSON.stringify({
          model: MODEL,
          max_tokens: 5,
          messages: [{ role: 'user', content: 'x'.repeat(5000) }],
        }),
        413,
        /larger/,
      ],
    ];
    for (const [body, status, message, headers] of cases) {
      const res = await post(body, headers);
      expect(res.status, String(body).slice(0, 60)).toBe(status);
      const json = (await res.json()) as { type: string; error: { type: string; message: string } };
      expect(json.type).toBe('error');
      expect(json.error.type).toBe(status === 413 ? 'request_too_large' : 'invalid_request_error');
      expect(json.error.message).toMatch(message);
    }
    expect(h.upstream.requestCount).toBe(0);
    // Still serving, and every refusal is in the ledger.
    const ok = await h
      .client({ maxRetries: 0 })
      .messages.create({ model: MODEL, max_tokens: 8, messages: hello });
    expect(ok.type).toBe('message');
    const rows = await h.ledger();
    expect(rows.filter((r) => r.outcome === 'invalid')).toHaveLength(cases.length);
    expect(await h.gateway.store.holdCount()).toBe(0);
  });
});

describe('faults', () => {
  it('a stream the provider cuts is charged the reported input plus the output part of the hold', async () => {
    h = await startHarness({ budgets: ROOMY });
    const client = h.client({ maxRetries: 0 });
    const stream = client.messages.stream(
      { model: MODEL, max_tokens: 200, messages: hello },
      { headers: { 'x-fake-cut-after': '3', 'x-fake-output-tokens': '50' } },
    );
    await expect(stream.finalMessage()).rejects.toThrow();
    const rec = h.upstream.requests[0];
    expect(rec?.cut).toBe(true);
    const rows = await h.ledger();
    expect(rows[0]).toMatchObject({
      outcome: 'upstream_error',
      usageSource: 'estimated',
      inputTokens: rec?.billed?.inputTokens,
      outputTokens: 200,
    });
    expect(rows[0]?.counted).toBeGreaterThanOrEqual(billTotal(h.upstream));
    expect(await h.gateway.store.holdCount()).toBe(0);
    expect((await h.summary()).budgets[0]?.windows.month.reserved).toBe(0);
  });

  it('a provider error event mid-stream reaches the client and is charged conservatively', async () => {
    h = await startHarness({ budgets: ROOMY });
    const client = h.client({ maxRetries: 0 });
    const stream = client.messages.stream(
      { model: MODEL, max_tokens: 100, messages: hello },
      { headers: { 'x-fake-stream-error-after': '2' } },
    );
    await expect(stream.finalMessage()).rejects.toThrow(/overloaded/i);
    const rows = await h.ledger();
    expect(rows[0]).toMatchObject({ outcome: 'upstream_error', usageSource: 'estimated', outputTokens: 100 });
    expect(rows[0]?.counted).toBeGreaterThanOrEqual(billTotal(h.upstream));
    expect(await h.gateway.store.holdCount()).toBe(0);
  });

  it('an upstream 529 passes through unchanged and uncharged', async () => {
    h = await startHarness({ budgets: ROOMY });
    const client = h.client({ maxRetries: 0 });
    const err = await client.messages
      .create({ model: MODEL, max_tokens: 50, messages: hello }, { headers: { 'x-fake-status': '529' } })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.APIError);
    expect((err as InstanceType<typeof Anthropic.APIError>).status).toBe(529);
    expect((err as Error).message).toContain('overloaded_error');
    const rows = await h.ledger();
    expect(rows[0]).toMatchObject({ outcome: 'upstream_error', status: 529, counted: 0 });
    expect((await h.summary()).budgets[0]?.windows.month).toMatchObject({ used: 0, reserved: 0 });
  });

  it('an unreachable provider gives 502 api_error and releases the hold', async () => {
    const { startFakeUpstream } = await import('../../src/sim/upstream.js');
    const dead = await startFakeUpstream();
    await dead.close(); // its port now refuses connections
    h = await startHarness({ budgets: ROOMY, upstream: dead.url });
    const res = await fetch(`${h.gateway.url}/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': 'k' },
      body: JSON.stringify({ model: MODEL, max_tokens: 50, messages: hello }),
    });
    expect(res.status).toBe(502);
    expect(await res.json()).toMatchObject({ type: 'error', error: { type: 'api_error' } });
    expect(await h.gateway.store.holdCount()).toBe(0);
    expect((await h.summary()).budgets[0]?.windows.month).toMatchObject({ used: 0, reserved: 0 });
  });

  it('a provider that does not answer in time gives 504 and releases the hold', async () => {
    h = await startHarness({ budgets: ROOMY, upstreamTimeoutMs: 300 });
    const res = await fetch(`${h.gateway.url}/v1/messages`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'anthropic-version': '2023-06-01',
        'x-api-key': 'k',
        'x-fake-hang': '1',
      },
      body: JSON.stringify({ model: MODEL, max_tokens: 50, messages: hello }),
    });
    expect(res.status).toBe(504);
    expect(await res.json()).toMatchObject({ type: 'error', error: { type: 'api_error' } });
    expect(await h.gateway.store.holdCount()).toBe(0);
  });

  it('a client that aborts mid-stream cancels the upstream call and is charged at least the bill', async () => {
    h = await startHarness({ budgets: ROOMY });
    const client = h.client({ maxRetries: 0 });
    const ac = new AbortController();
    const stream = client.messages.stream(
      { model: MODEL, max_tokens: 300, messages: hello },
      { headers: { 'x-fake-output-tokens': '200', 'x-fake-event-delay-ms': '10' }, signal: ac.signal },
    );
    let seen = 0;
    stream.on('text', () => {
      if (++seen === 5) ac.abort();
    });
    await expect(stream.finalMessage()).rejects.toThrow();
    await h.upstream.waitFor(() => h?.upstream.requests[0]?.clientAborted === true, 5000);
    const rec = h.upstream.requests[0];
    expect(rec?.outputTokensSent).toBeLessThan(200);
    await waitUntil(async () => (await h?.ledger())?.length === 1);
    const rows = await h.ledger();
    expect(rows[0]).toMatchObject({ outcome: 'client_aborted', usageSource: 'estimated', outputTokens: 300 });
    expect(rows[0]?.counted).toBeGreaterThanOrEqual(billTotal(h.upstream));
    expect(await h.gateway.store.holdCount()).toBe(0);
  });
});

describe('operator endpoints', () => {
  it('the summary answers loopback clients without a token', async () => {
    h = await startHarness({ budgets: ROOMY });
    const s = await h.summary();
    expect(s.budgets[0]?.windows.hour).toMatchObject({ used: 0, reserved: 0, limit: 1_000_000, percent: 0 });
    expect(typeof s.budgets[0]?.windows.hour.resetsAt).toBe('string');
  });

  it('with an admin token the summary needs it', async () => {
    h = await startHarness({ budgets: ROOMY, auth: { adminToken: 'operator-secret' } });
    const url = `${h.gateway.url}/api/token-usage/summary`;
    expect((await fetch(url)).status).toBe(401);
    expect((await fetch(url, { headers: { authorization: 'Bearer wrong-token' } })).status).toBe(401);
    const ok = await fetch(url, { headers: { authorization: 'Bearer operator-secret' } });
    expect(ok.status).toBe(200);
    // Liveness and readiness stay open to the load balancer.
    expect((await fetch(`${h.gateway.url}/healthz`)).status).toBe(200);
    const ready = await fetch(`${h.gateway.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: 'ready' });
  });
});

async function waitUntil(check: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('condition not met in time');
}
