import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { estimateInputTokens } from '../budget/estimate.js';
import type { Usage, Weights } from '../budget/types.js';
import { countedTokens, usageFromAnthropic, worstCase } from '../budget/usage.js';
import type { Config } from '../config/schema.js';
import { GatewayError, sseErrorFrame, toHttp } from '../errors/gateway-error.js';
import type { Admission, Gatekeeper, Hold } from '../service/gatekeeper.js';
import type { InflightTracker } from '../service/inflight.js';
import type { BudgetStore } from '../store/ports.js';
import { clientResponseHeaders, headerValue, upstreamRequestHeaders } from './headers.js';
import { clientKey, keyId, requestTags, resolveAgent } from './identity.js';
import { ledgerRow, type RequestFacts } from './ledger-row.js';
import { SseUsageTap } from './sse-tap.js';
import { classifyUpstreamError, type UpstreamClient } from './upstream.js';
import { parseMessagesBody } from './validate.js';

/** Non-streaming provider bodies are read whole (to find `usage`); past this size the charge is estimated. */
const MAX_JSON_RESPONSE_BYTES = 64 * 1024 * 1024;

export interface ProxyDeps {
  config: Config;
  gatekeeper: Gatekeeper;
  upstream: UpstreamClient;
  store: BudgetStore;
  inflight: InflightTracker;
  logger: Logger;
  now: () => number;
}

/** How a request that was forwarded ended, before it is written to the ledger. */
interface Ending {
  outcome: 'ok' | 'upstream_error' | 'client_aborted';
  status: number;
  usage: Usage | null;
  source: 'reported' | 'estimated' | 'none';
  upstreamRequestId: string | null;
}

export function newRequestId(): string {
  return `twreq_${randomUUID().replaceAll('-', '')}`;
}

/** Facts common to every route: id, time, who is calling (or why that is invalid). */
function requestFacts(
  req: FastifyRequest,
  now: number,
  model: string | null,
  stream: boolean,
  userId: unknown,
  route?: string,
): { facts: RequestFacts; agentError: string | null } {
  const key = clientKey(req.headers);
  const kid = key ? keyId(key) : null;
  const agent = resolveAgent(req.headers, userId, kid);
  const metadata: Record<string, unknown> = {};
  const tags = requestTags(req.headers);
  if (tags) metadata.tags = tags;
  const ua = headerValue(req.headers['user-agent']);
  if (ua) metadata.userAgent = ua.slice(0, 256);
  if (route) metadata.route = route;
  return {
    facts: {
      id: newRequestId(),
      ts: now,
      startedAt: performance.now(),
      agent: agent.ok ? agent.agent : 'anonymous',
      keyId: kid,
      model,
      stream,
      metadata,
    },
    agentError: agent.ok ? null : agent.message,
  };
}

function remainingHeaders(id: string, hold: Hold): Record<string, string> {
  const h: Record<string, string> = {
    'x-tokenwarden-request-id': id,
    'x-tokenwarden-reserved': String(hold.amount),
  };
  for (const [kind, remaining] of Object.entries(hold.remaining)) {
    h[`x-tokenwarden-${kind}-remaining`] = String(remaining);
  }
  return h;
}

function waitDrain(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

/**
 * The agent-facing routes (`/v1/messages`, `count_tokens`, operator-listed passthrough routes). This
 * layer moves bytes and taps usage; budgets are decided by the Gatekeeper, errors mapped in one place.
 */
export class MessagesProxy {
  private readonly weights: Weights;

  constructor(private readonly deps: ProxyDeps) {
    this.weights = deps.config.weights;
  }

  /** Send a gateway error as an Anthropic-format response (before anything else was sent). */
  private sendError(reply: FastifyReply, err: GatewayError, id?: string): void {
    const http = toHttp(err);
    const headers: Record<string, string> = { ...http.headers };
    if (id) headers['x-tokenwarden-request-id'] = id;
    reply.code(http.status).headers(headers).send(http.body);
  }

  private async record(facts: RequestFacts, outcome: Parameters<typeof ledgerRow>[1]): Promise<void> {
    try {
      await this.deps.store.appendLedger(ledgerRow(facts, outcome));
    } catch (err) {
      this.deps.logger.error({ err, requestId: facts.id }, 'could not write ledger row');
    }
  }

  /** POST /v1/messages */
  async messages(req: FastifyRequest, reply: FastifyReply): Promise<void> {
    const now = this.deps.now();
    const parsed = parseMessagesBody(req.body as Buffer | undefined);
    const body = parsed.ok ? parsed.body : null;
    const { facts, agentError } = requestFacts(
      req,
      now,
      body?.model ?? null,
      body?.stream === true,
      body?.metadata?.user_id,
    );
    if (facts.keyId === null) {
      // The provider would refuse it anyway; refusing here keeps anonymous callers off the budgets.
      const message = 'missing credentials: send your provider key as x-api-key or Authorization: Bearer';
      await this.record(facts, { outcome: 'invalid', status: 401, blockReason: message });
      return this.sendError(reply, new GatewayError('authentication', message), facts.id);
    }
    const invalidMessage = parsed.ok ? agentError : parsed.message;
    if (invalidMessage !== null || body === null) {
      await this.record(facts, { outcome: 'invalid', status: 400, blockReason: invalidMessage });
      return this.sendError(
        reply,
        new GatewayError('invalid_request', invalidMessage ?? 'invalid request'),
        facts.id,
      );
    }

    const cfg = this.deps.config;
    const inputEstimate = estimateInputTokens(
      body,
      cfg.estimation === 'estimate' ? 'estimate' : 'strict',
      cfg.allowances,
    );
    const worst = worstCase(inputEstimate, body.max_tokens, this.weights);
    const estimatedUsage: Usage = {
      inputTokens: inputEstimate,
      outputTokens: body.max_tokens,
      cacheCreationTokens: 0,
      cacheReadTokens: 0,
    };

    let admission: Admission;
    try {
      admission = await this.deps.gatekeeper.admit({
        id: facts.id,
        now,
        agent: facts.agent,
        model: facts.model,
        amount: worst.amount,
        draft: ledgerRow(facts, {
          outcome: 'interrupted',
          status: 0,
          reserved: worst.amount,
          usage: estimatedUsage,
          counted: worst.amount,
          usageSource: 'estimated',
        }),
      });
    } catch (err) {
      this.deps.logger.error({ err, requestId: facts.id }, 'budget store unavailable; failing closed');
      return this.sendError(
        reply,
        new GatewayError(
          'store_unavailable',
          'tokenwarden cannot reach its budget store; try again shortly',
          {
            'retry-after': '5',
          },
        ),
        facts.id,
      );
    }

    if (!admission.ok) return this.refuse(reply, facts, admission, now);
    await this.forward(req, reply, facts, admission.hold, {
      raw: req.body as Buffer,
      estimatedUsage,
      fullCharge: worst.amount,
    });
  }

  private async refuse(
    reply: FastifyReply,
    facts: RequestFacts,
    verdict: Exclude<Admission, { ok: true }>,
    now: number,
  ): Promise<void> {
    const blockedBy = `budget=${verdict.budget}; window=${verdict.window}`;
    if (verdict.reason === 'too_large') {
      const what =
        verdict.window === 'request'
          ? `the per-request limit of ${verdict.limit} tokens`
          : `the whole ${verdict.window} limit of ${verdict.limit} tokens, so it can never fit`;
      const message =
        `This request needs up to ${verdict.amount} tokens (input estimate + max_tokens), more than ${what} ` +
        `of budget "${verdict.budget}". Lower max_tokens or shorten the input, or ask the operator to raise the limit.`;
      await this.record(facts, { outcome: 'blocked', status: 400, blockReason: blockedBy });
      return this.sendError(
        reply,
        new GatewayError('invalid_request', message, {
          'x-tokenwarden-blocked-by': blockedBy,
          'x-should-retry': 'false',
        }),
        facts.id,
      );
    }
    const waitSeconds = Math.max(1, Math.ceil((verdict.resetsAt - now) / 1000));
    const resetsAt = new Date(verdict.resetsAt).toISOString();
    const message =
      `Token budget "${verdict.budget}" is exhausted for this ${verdict.window}: ` +
      `used ${verdict.used} + reserved ${verdict.reserved} of ${verdict.limit} tokens, ` +
      `and this request needs up to ${verdict.amount}. The ${verdict.window} window resets at ${resetsAt}.`;
    await this.record(facts, { outcome: 'blocked', status: 429, blockReason: blockedBy });
    return this.sendError(
      reply,
      new GatewayError('budget_exhausted', message, {
        'retry-after': String(waitSeconds),
        'x-should-retry': waitSeconds <= this.deps.config.shortRetrySeconds ? 'true' : 'false',
        'x-tokenwarden-blocked-by': blockedBy,
      }),
      facts.id,
    );
  }

  /**
   * Forward an admitted request and settle its hold. The ledger row is committed before the last
   * byte of the response is written; every path through here settles the hold exactly once.
   */
  private async forward(
    req: FastifyRequest,
    reply: FastifyReply,
    facts: RequestFacts,
    hold: Hold,
    charge: { raw: Buffer; estimatedUsage: Usage; fullCharge: number },
  ): Promise<void> {
    reply.hijack();
    const res = reply.raw;
    const ac = new AbortController();
    let clientGone = false;
    res.on('close', () => {
      if (!res.writableFinished) {
        clientGone = true;
        ac.abort();
      }
    });
    const tracked = this.deps.inflight.add(() => ac.abort());
    const ours = remainingHeaders(facts.id, hold);

    const settle = async (end: Ending): Promise<void> => {
      let counted: number;
      let usage = end.usage;
      if (end.source === 'reported' && usage) {
        counted = countedTokens(usage, this.weights);
      } else if (end.source === 'estimated') {
        // Never under-count: whatever input was reported, plus the whole output part of the hold.
        if (usage) {
          usage = {
            ...usage,
            outputTokens: Math.max(usage.outputTokens, charge.estimatedUsage.outputTokens),
          };
          counted = countedTokens(usage, this.weights);
        } else {
          usage = charge.estimatedUsage;
          counted = charge.fullCharge;
        }
      } else {
        counted = 0;
      }
      const row = ledgerRow(facts, {
        outcome: end.outcome,
        status: end.status,
        reserved: hold.amount,
        usage,
        counted,
        usageSource: end.source,
        upstreamRequestId: end.upstreamRequestId,
      });
      try {
        await this.deps.gatekeeper.settle(hold, counted, row);
      } catch (err) {
        // The hold stays in the store and is charged in full when reclaimed: conservative, not lost.
        this.deps.logger.error({ err, requestId: facts.id }, 'could not settle hold');
      }
    };

    try {
      let up: Dispatcher.ResponseData;
      try {
        up = await this.deps.upstream.request({
          method: 'POST',
          path: req.url.replace(/^.*?(\/v1\/)/, '$1'),
          headers: upstreamRequestHeaders(req.headers, charge.raw.length),
          body: charge.raw,
          signal: ac.signal,
        });
      } catch (err) {
        const kind = clientGone ? 'aborted' : classifyUpstreamError(err);
        if (kind === 'aborted') {
          // The provider may already be generating: charge the whole hold.
          await settle({
            outcome: 'client_aborted',
            status: 0,
            usage: null,
            source: 'estimated',
            upstreamRequestId: null,
          });
          return;
        }
        const status = kind === 'timeout' ? 504 : 502;
        await settle({
          outcome: 'upstream_error',
          status,
          usage: null,
          source: 'none',
          upstreamRequestId: null,
        });
        const http = toHttp(
          new GatewayError(
            kind === 'timeout' ? 'upstream_timeout' : 'upstream_unreachable',
            kind === 'timeout'
              ? 'The provider did not answer in time; nothing was charged.'
              : `The provider could not be reached (${(err as Error).message}); nothing was charged.`,
          ),
        );
        res.writeHead(http.status, { ...http.headers, ...ours });
        res.end(http.body);
        return;
      }

      const upstreamRequestId = headerValue(up.headers['request-id']) ?? null;
      const contentType = headerValue(up.headers['content-type']) ?? '';
      const headers = clientResponseHeaders(up.headers, ours);

      if (up.statusCode < 200 || up.statusCode >= 300) {
        // Provider errors pass through unchanged and are not charged.
        const body = await readAll(up.body, MAX_JSON_RESPONSE_BYTES).catch(() => null);
        await settle({
          outcome: clientGone ? 'client_aborted' : 'upstream_error',
          status: up.statusCode,
          usage: null,
          source: 'none',
          upstreamRequestId,
        });
        if (body) {
          headers['content-length'] = String(body.length);
          res.writeHead(up.statusCode, headers);
          res.end(body);
        } else {
          res.destroy();
        }
        return;
      }

      if (contentType.startsWith('text/event-stream')) {
        await this.streamSse(res, up, headers, ac, () => clientGone, settle, upstreamRequestId);
        return;
      }

      // Non-streaming: read the (bounded) JSON to find usage, commit, then send it unchanged.
      let body: Buffer | null;
      try {
        body = await readAll(up.body, MAX_JSON_RESPONSE_BYTES);
      } catch {
        body = null;
      }
      if (body === null) {
        await settle({
          outcome: clientGone ? 'client_aborted' : 'upstream_error',
          status: clientGone ? 0 : 502,
          usage: null,
          source: 'estimated',
          upstreamRequestId,
        });
        if (!clientGone) {
          const http = toHttp(
            new GatewayError('upstream_unreachable', 'The provider response was cut short.'),
          );
          res.writeHead(http.status, { ...http.headers, ...ours });
          res.end(http.body);
        }
        return;
      }
      let usage: Usage | null = null;
      try {
        const json = JSON.parse(body.toString('utf8')) as { usage?: unknown };
        if (json.usage && typeof json.usage === 'object') usage = usageFromAnthropic(json.usage);
      } catch {
        usage = null;
      }
      await settle({
        outcome: clientGone ? 'client_aborted' : 'ok',
        status: up.statusCode,
        usage,
        source: usage ? 'reported' : 'estimated',
        upstreamRequestId,
      });
      headers['content-length'] = String(body.length);
      res.writeHead(up.statusCode, headers);
      res.end(body);
    } catch (err) {
      // Last resort: nothing above should throw, but a hold must never leak.
      this.deps.logger.error({ err, requestId: facts.id }, 'proxy failure');
      await settle({
        outcome: 'upstream_error',
        status: 500,
        usage: null,
        source: 'estimated',
        upstreamRequestId: null,
      });
      if (!res.headersSent) {
        const http = toHttp(new GatewayError('internal', 'tokenwarden failed while proxying this request'));
        res.writeHead(http.status, http.headers);
        res.end(http.body);
      } else {
        res.destroy();
      }
    } finally {
      tracked.done();
    }
  }

  private async streamSse(
    res: ServerResponse,
    up: Dispatcher.ResponseData,
    headers: ReturnType<typeof clientResponseHeaders>,
    ac: AbortController,
    clientGone: () => boolean,
    settle: (end: Ending) => Promise<void>,
    upstreamRequestId: string | null,
  ): Promise<void> {
    const tap = new SseUsageTap();
    res.writeHead(up.statusCode, headers);
    // Send the headers now: the agent's time to first byte should not wait for the first event.
    res.flushHeaders();
    // The chunk that completes `message_stop` is held back until the ledger row is committed.
    let held: Buffer | null = null;
    let broken = false;
    try {
      for await (const chunk of up.body as AsyncIterable<Buffer>) {
        if (held) {
          held = Buffer.concat([held, chunk]);
          continue;
        }
        if (tap.push(chunk)) {
          held = chunk;
          continue;
        }
        if (!res.write(chunk)) await waitDrain(res);
        if (clientGone()) break;
      }
    } catch {
      broken = true;
    }
    if (clientGone()) {
      ac.abort();
      await settle({
        outcome: 'client_aborted',
        status: 200,
        usage: tap.usage,
        source: tap.sawStop && tap.sawDelta && !tap.errorType ? 'reported' : 'estimated',
        upstreamRequestId,
      });
      return;
    }
    const complete = !broken && tap.sawStop && tap.sawDelta && tap.errorType === null && tap.usage !== null;
    await settle({
      outcome: complete ? 'ok' : 'upstream_error',
      status: 200,
      usage: tap.usage,
      source: complete ? 'reported' : 'estimated',
      upstreamRequestId,
    });
    if (held) res.write(held);
    if (!complete && tap.errorType === null) {
      // The provider's stream broke without saying why: tell the client in the stream's own format.
      res.write(
        sseErrorFrame('api_error', 'The provider stream ended unexpectedly; the request was not completed.'),
      );
    }
    res.end();
  }

  /** POST /v1/messages/count_tokens and operator-listed passthrough routes: forwarded, never charged. */
  async passthrough(req: FastifyRequest, reply: FastifyReply, route: string): Promise<void> {
    const { facts, agentError } = requestFacts(req, this.deps.now(), null, false, undefined, route);
    if (agentError) {
      await this.record(facts, { outcome: 'invalid', status: 400, blockReason: agentError });
      return this.sendError(reply, new GatewayError('invalid_request', agentError), facts.id);
    }
    const raw = Buffer.isBuffer(req.body) ? req.body : undefined;
    const upPath = req.url.replace(/^.*?(\/v1\/)/, '$1');
    reply.hijack();
    const res = reply.raw;
    const ac = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) ac.abort();
    });
    const tracked = this.deps.inflight.add(() => ac.abort());
    try {
      const up = await this.deps.upstream.request({
        method: req.method as Dispatcher.HttpMethod,
        path: upPath,
        headers: upstreamRequestHeaders(req.headers as IncomingHttpHeaders, raw?.length ?? 0),
        ...(raw ? { body: raw } : {}),
        signal: ac.signal,
      });
      const headers = clientResponseHeaders(up.headers, { 'x-tokenwarden-request-id': facts.id });
      const ok = up.statusCode >= 200 && up.statusCode < 300;
      await this.record(facts, {
        outcome: ok ? 'ok' : 'upstream_error',
        status: up.statusCode,
        upstreamRequestId: headerValue(up.headers['request-id']) ?? null,
      });
      res.writeHead(up.statusCode, headers);
      for await (const chunk of up.body as AsyncIterable<Buffer>) {
        if (!res.write(chunk)) await waitDrain(res);
      }
      res.end();
    } catch (err) {
      const kind = classifyUpstreamError(err);
      if (res.headersSent) {
        res.destroy();
      } else if (kind !== 'aborted') {
        await this.record(facts, { outcome: 'upstream_error', status: kind === 'timeout' ? 504 : 502 });
        const http = toHttp(
          new GatewayError(
            kind === 'timeout' ? 'upstream_timeout' : 'upstream_unreachable',
            'The provider could not be reached.',
          ),
        );
        res.writeHead(http.status, { ...http.headers, 'x-tokenwarden-request-id': facts.id });
        res.end(http.body);
      }
    } finally {
      tracked.done();
    }
  }

  /** Any other path under /v1/: refused, so nothing reaches the provider unmetered by accident. */
  async notFound(req: FastifyRequest, reply: FastifyReply): Promise<void> {
    const { facts } = requestFacts(req, this.deps.now(), null, false, undefined, `${req.method} ${req.url}`);
    const message = `${req.method} ${req.url.split('?')[0]} is not served by tokenwarden. Only /v1/messages and /v1/messages/count_tokens are, plus the routes the operator lists in "passthrough".`;
    await this.record(facts, { outcome: 'invalid', status: 404, blockReason: 'route not allowed' });
    return this.sendError(reply, new GatewayError('not_found', message), facts.id);
  }
}

async function readAll(body: AsyncIterable<Buffer>, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > max) throw new Error('response too large');
    chunks.push(chunk);
  }
  return chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size);
}
