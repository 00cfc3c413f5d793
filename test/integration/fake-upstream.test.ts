import Anthropic from '@anthropic-ai/sdk';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type FakeUpstream, fakeInputTokens, startFakeUpstream } from '../../src/sim/upstream.js';

let upstream: FakeUpstream;
let client: Anthropic;

beforeAll(async () => {
  upstream = await startFakeUpstream();
  client = new Anthropic({ baseURL: upstream.url, apiKey: 'sk-test', maxRetries: 0 });
});

afterAll(async () => {
  await upstream.close();
});

beforeEach(() => {
  upstream.reset();
});

const messages: Anthropic.MessageParam[] = [{ role: 'user', content: 'Hello there, how are you today?' }];
const expectedInput = Math.ceil(Buffer.byteLength('Be brief.Hello there, how are you today?') / 4);

async function raw(path: string, init: { method?: string; headers?: Record<string, string>; body?: string }) {
  const res = await fetch(`${upstream.url}${path}`, { method: init.method ?? 'POST', ...init });
  return { status: res.status, headers: res.headers, json: (await res.json()) as Record<string, unknown> };
}

const okBody = JSON.stringify({ model: 'claude-sonnet-5-5', max_tokens: 16, messages });

describe('fake upstream with the official SDK', () => {
  it('creates a message and bills it', async () => {
    const msg = await client.messages.create({
      model: 'claude-sonnet-5-5',
      max_tokens: 64,
      system: 'Be brief.',
      messages,
    });
    expect(msg.type).toBe('message');
    expect(msg.role).toBe('assistant');
    expect(msg.stop_reason).toBe('end_turn');
    expect(msg.stop_sequence).toBeNull();
    expect(msg.content).toEqual([{ type: 'text', text: 'tok '.repeat(12) }]);
    expect(msg.usage.input_tokens).toBe(expectedInput);
    expect(msg.usage.output_tokens).toBe(12);
    expect(upstream.bill).toMatchObject({ inputTokens: expectedInput, outputTokens: 12, requests: 1 });
    const rec = upstream.requests[0];
    expect(rec?.headers.authorization).toBe('Bearer sk-test');
    expect(rec?.body).toMatchObject({ model: 'claude-sonnet-5-5', max_tokens: 64 });
    await upstream.waitForIdle();
    expect(rec?.completed).toBe(true);
    expect(rec?.clientAborted).toBe(false);
  });

  it('caps output at max_tokens and honours the usage headers', async () => {
    const { data: msg, response } = await client.messages
      .create(
        { model: 'claude-haiku-5-5', max_tokens: 5, messages },
        {
          headers: {
            'x-fake-output-tokens': '40',
            'x-fake-input-tokens': '1000',
            'x-fake-cache-creation': '200',
            'x-fake-cache-read': '300',
          },
        },
      )
      .withResponse();
    expect(msg.stop_reason).toBe('max_tokens');
    expect(msg.usage).toMatchObject({
      input_tokens: 1000,
      output_tokens: 5,
      cache_creation_input_tokens: 200,
      cache_read_input_tokens: 300,
      cache_creation: { ephemeral_5m_input_tokens: 200, ephemeral_1h_input_tokens: 0 },
    });
    expect(response.headers.get('request-id')).toMatch(/^req_/);
    expect(response.headers.get('anthropic-ratelimit-tokens-limit')).toMatch(/^\d+$/);
    expect(response.headers.get('anthropic-ratelimit-tokens-remaining')).toMatch(/^\d+$/);
    expect(response.headers.get('anthropic-ratelimit-tokens-reset')).toMatch(/^\d{4}-\d\d-\d\dT.*Z$/);
    expect(response.headers.get('content-type')).toContain('application/json');
    expect(upstream.bill).toEqual({
      inputTokens: 1000,
      outputTokens: 5,
      cacheCreationTokens: 200,
      cacheReadTokens: 300,
      requests: 1,
    });
  });

  it('streams events and the final usage matches the bill', async () => {
    const stream = client.messages.stream({
      model: 'claude-sonnet-5-5',
      max_tokens: 64,
      system: 'Be brief.',
      messages,
    });
    const types: string[] = [];
    stream.on('streamEvent', (e) => types.push(e.type));
    const msg = await stream.finalMessage();
    expect(msg.usage.input_tokens).toBe(expectedInput);
    expect(msg.usage.output_tokens).toBe(12);
    expect(msg.content).toHaveLength(1);
    expect(msg.content[0]).toMatchObject({ type: 'text', text: 'tok '.repeat(12) });
    expect(msg.stop_reason).toBe('end_turn');
    expect(types[0]).toBe('message_start');
    expect(types.filter((t) => t === 'content_block_delta')).toHaveLength(12);
    expect(types.slice(-2)).toEqual(['message_delta', 'message_stop']);
    expect(stream.request_id).toMatch(/^req_/);
    await upstream.waitForIdle();
    expect(upstream.bill).toMatchObject({
      inputTokens: msg.usage.input_tokens,
      outputTokens: 12,
      requests: 1,
    });
    expect(upstream.requests[0]?.stream).toBe(true);
    expect(upstream.requests[0]?.completed).toBe(true);
  });

  it('with several message_delta events the last cumulative value wins', async () => {
    const stream = client.messages.stream(
      { model: 'claude-sonnet-5-5', max_tokens: 64, messages },
      { headers: { 'x-fake-output-tokens': '6', 'x-fake-message-deltas': '2' } },
    );
    const deltas: number[] = [];
    stream.on('streamEvent', (e) => {
      if (e.type === 'message_delta') deltas.push(e.usage.output_tokens);
    });
    const msg = await stream.finalMessage();
    expect(deltas).toEqual([3, 6]);
    expect(msg.usage.output_tokens).toBe(6);
    expect(upstream.bill.outputTokens).toBe(6);
  });

  it('529 surfaces as an overloaded error and is not billed', async () => {
    const err = await client.messages
      .create(
        { model: 'claude-sonnet-5-5', max_tokens: 64, messages },
        { headers: { 'x-fake-status': '529' } },
      )
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.InternalServerError);
    expect(err).toBeInstanceOf(Anthropic.OverloadedError);
    const apiErr = err as InstanceType<typeof Anthropic.APIError>;
    expect(apiErr.status).toBe(529);
    expect(apiErr.type).toBe('overloaded_error');
    expect(apiErr.requestID).toMatch(/^req_/);
    expect(upstream.bill.requests).toBe(0);
    expect(upstream.bill.inputTokens).toBe(0);
  });

  it('maps other injected statuses to their error classes', async () => {
    const rate = await client.messages
      .create({ model: 'm', max_tokens: 8, messages }, { headers: { 'x-fake-status': '429' } })
      .catch((e: unknown) => e);
    expect(rate).toBeInstanceOf(Anthropic.RateLimitError);
    expect((rate as InstanceType<typeof Anthropic.APIError>).headers?.get('retry-after')).toBe('1');
    const bad = await client.messages
      .create({ model: 'm', max_tokens: 8, messages }, { headers: { 'x-fake-status': '400' } })
      .catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(Anthropic.BadRequestError);
    const ise = await client.messages
      .create({ model: 'm', max_tokens: 8, messages }, { headers: { 'x-fake-status': '500' } })
      .catch((e: unknown) => e);
    expect(ise).toBeInstanceOf(Anthropic.InternalServerError);
    expect((ise as InstanceType<typeof Anthropic.APIError>).type).toBe('api_error');
    expect(upstream.bill.requests).toBe(0);
  });

  it('counts tokens without billing', async () => {
    const res = await client.messages.countTokens({
      model: 'claude-sonnet-5-5',
      system: 'Be brief.',
      messages,
    });
    expect(res.input_tokens).toBe(expectedInput);
    expect(upstream.bill.requests).toBe(0);
    expect(upstream.requests[0]?.path).toBe('/v1/messages/count_tokens');
  });

  it('lists models', async () => {
    const page = await client.models.list();
    expect(page.data.length).toBeGreaterThan(0);
    expect(page.data[0]?.id).toMatch(/^claude-/);
  });

  it('a cut stream makes the SDK throw and bills input plus the generated deltas', async () => {
    const stream = client.messages.stream(
      { model: 'claude-sonnet-5-5', max_tokens: 64, system: 'Be brief.', messages },
      { headers: { 'x-fake-cut-after': '3' } },
    );
    let deltas = 0;
    stream.on('streamEvent', (e) => {
      if (e.type === 'content_block_delta') deltas++;
    });
    await expect(stream.finalMessage()).rejects.toThrow();
    await upstream.waitForIdle();
    expect(deltas).toBe(3);
    const rec = upstream.requests[0];
    expect(rec?.cut).toBe(true);
    expect(rec?.clientAborted).toBe(false);
    expect(rec?.completed).toBe(false);
    expect(upstream.bill).toMatchObject({ inputTokens: expectedInput, outputTokens: 3, requests: 1 });
  });

  it('a mid-stream error event ends the stream with an APIError', async () => {
    const stream = client.messages.stream(
      { model: 'claude-sonnet-5-5', max_tokens: 64, messages },
      { headers: { 'x-fake-stream-error-after': '2' } },
    );
    const err = await stream.finalMessage().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Anthropic.APIError);
    expect((err as InstanceType<typeof Anthropic.APIError>).type).toBe('overloaded_error');
    await upstream.waitForIdle();
    expect(upstream.bill.outputTokens).toBe(2);
  });

  it('a client abort is recorded and billed for what was generated', async () => {
    const controller = new AbortController();
    const stream = client.messages.stream(
      { model: 'claude-sonnet-5-5', max_tokens: 1000, system: 'Be brief.', messages },
      {
        signal: controller.signal,
        headers: { 'x-fake-output-tokens': '200', 'x-fake-event-delay-ms': '10' },
      },
    );
    let deltas = 0;
    stream.on('streamEvent', (e) => {
      if (e.type === 'content_block_delta' && ++deltas === 3) controller.abort();
    });
    await expect(stream.finalMessage()).rejects.toThrow();
    await upstream.waitFor(() => upstream.requests[0]?.clientAborted === true);
    await upstream.waitForIdle();
    const rec = upstream.requests[0];
    expect(rec?.completed).toBe(false);
    expect(rec?.billed).not.toBeNull();
    const out = upstream.bill.outputTokens;
    expect(out).toBeGreaterThanOrEqual(3);
    expect(out).toBeLessThan(200);
    expect(out).toBe(rec?.outputTokensSent);
    expect(upstream.bill).toMatchObject({ inputTokens: expectedInput, requests: 1 });
  });

  it('a client that leaves while the request hangs is recorded and not billed', async () => {
    const controller = new AbortController();
    const p = client.messages.create(
      { model: 'claude-sonnet-5-5', max_tokens: 64, messages },
      { signal: controller.signal, headers: { 'x-fake-hang': '1' } },
    );
    await upstream.waitForRequests(1);
    await new Promise((r) => setTimeout(r, 30));
    expect(upstream.inFlight).toBe(1);
    controller.abort();
    await expect(p).rejects.toThrow();
    await upstream.waitForIdle();
    expect(upstream.requests[0]?.clientAborted).toBe(true);
    expect(upstream.bill.requests).toBe(0);
  });

  it('delays the response headers', async () => {
    const t0 = performance.now();
    await client.messages.create(
      { model: 'claude-sonnet-5-5', max_tokens: 8, messages },
      { headers: { 'x-fake-delay-ms': '80' } },
    );
    expect(performance.now() - t0).toBeGreaterThanOrEqual(75);
  });
});

describe('fake upstream over raw HTTP', () => {
  it('accepts x-api-key as well as Authorization: Bearer', async () => {
    const base = { 'anthropic-version': '2023-06-01', 'content-type': 'application/json' };
    const a = await raw('/v1/messages', { headers: { ...base, 'x-api-key': 'sk-a' }, body: okBody });
    expect(a.status).toBe(200);
    const b = await raw('/v1/messages', { headers: { ...base, authorization: 'Bearer sk-b' }, body: okBody });
    expect(b.status).toBe(200);
    const none = await raw('/v1/messages', { headers: base, body: okBody });
    expect(none.status).toBe(401);
    expect(none.json).toMatchObject({ type: 'error', error: { type: 'authentication_error' } });
    expect(none.json.request_id).toMatch(/^req_/);
    expect(none.headers.get('request-id')).toBe(none.json.request_id);
    expect(upstream.bill.requests).toBe(2);
  });

  it('rejects a missing anthropic-version, bad JSON and missing fields with 400', async () => {
    const auth = { 'x-api-key': 'sk', 'content-type': 'application/json' };
    const noVersion = await raw('/v1/messages', { headers: auth, body: okBody });
    expect(noVersion.status).toBe(400);
    const h = { ...auth, 'anthropic-version': '2026-10-21' };
    const badJson = await raw('/v1/messages', { headers: h, body: '{"model":' });
    expect(badJson.status).toBe(400);
    expect(badJson.json).toMatchObject({ type: 'error', error: { type: 'invalid_request_error' } });
    for (const body of [
      { max_tokens: 5, messages },
      { model: 'x', max_tokens: 5 },
      { model: 'x', messages },
      { model: 'x', messages, max_tokens: -1 },
      [1, 2],
    ]) {
      const r = await raw('/v1/messages', { headers: h, body: JSON.stringify(body) });
      expect(r.status).toBe(400);
      expect(r.json).toMatchObject({ error: { type: 'invalid_request_error' } });
    }
    expect(upstream.bill.requests).toBe(0);
  });

  it('answers 404 not_found_error to anything else', async () => {
    const r = await raw('/v1/batches', { method: 'GET' });
    expect(r.status).toBe(404);
    expect(r.json).toMatchObject({ type: 'error', error: { type: 'not_found_error' } });
  });

  it('streams the exact wire format', async () => {
    const res = await fetch(`${upstream.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': 'sk', 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'claude-sonnet-5-5', max_tokens: 2, messages, stream: true }),
    });
    expect(res.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    const text = await res.text();
    const frames = text.trim().split('\n\n');
    const events = frames.map((f) => {
      const [ev, data] = f.split('\n');
      const name = ev?.replace('event: ', '') ?? '';
      const json = JSON.parse(data?.replace('data: ', '') ?? '') as { type: string };
      expect(json.type).toBe(name);
      return name;
    });
    expect(events).toEqual([
      'message_start',
      'content_block_start',
      'ping',
      'content_block_delta',
      'content_block_delta',
      'content_block_stop',
      'message_delta',
      'message_stop',
    ]);
    expect(text).toContain('"stop_reason":"max_tokens"');
    expect(text).not.toContain('[DONE]');
  });

  it('does not record when record is false, but still counts and bills', async () => {
    const quiet = await startFakeUpstream({ record: false });
    try {
      const c = new Anthropic({ baseURL: quiet.url, apiKey: 'k', maxRetries: 0 });
      await c.messages.create({ model: 'm', max_tokens: 4, messages });
      await quiet.waitForRequests(1);
      expect(quiet.requests).toHaveLength(0);
      expect(quiet.requestCount).toBe(1);
      expect(quiet.bill.outputTokens).toBe(4);
    } finally {
      await quiet.close();
    }
  });

  it('computes input tokens from all text', () => {
    expect(fakeInputTokens({ messages: [] })).toBe(1);
    expect(
      fakeInputTokens({
        system: [{ type: 'text', text: 'abcd' }],
        messages: [
          { role: 'user', content: 'é' }, // 2 bytes
          { role: 'assistant', content: [{ type: 'tool_use', id: 't', name: 'n', input: { a: 1 } }] }, // {"a":1} = 7
          { role: 'user', content: [{ type: 'tool_result', tool_use_id: 't', content: 'xyz' }] },
        ],
      }),
    ).toBe(Math.ceil((4 + 2 + 7 + 3) / 4));
  });
});
