import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { estimateInputTokens } from '../budget/estimate.js';
import { costUsd, type Price, type PriceTable, toMicros, worstCostMicros } from '../budget/prices.js';
import type { Usage, Weights } from '../budget/types.js';
import { countedTokens, usageFromAnthropic, worstCase } from '../budget/usage.js';
import type { Config } from '../config/schema.js';
import { GatewayError, sseErrorFrame, toHttp } from '../errors/gateway-error.js';
import { keyBudgets } from '../keys/keys.js';
import type { Admission, AdmissionRequest, Gatekeeper, Hold, Refusal } from '../service/gatekeeper.js';
import type { InflightTracker } from '../service/inflight.js';
import type { Metrics } from '../service/metrics.js';
import type { BudgetStore, LedgerRow, VirtualKeyRecord } from '../store/ports.js';
import { clientResponseHeaders, headerValue, upstreamRequestHeaders } from './headers.js';
import { clientKey, keyId, requestTags, resolveAgent } from './identity.js';
import { ledgerRow, type RequestFacts } from './ledger-row.js';
import { SseUsageTap } from './sse-tap.js';
import { classifyUpstreamError, type UpstreamClient } from './upstream.js';
import { type MessagesBody, parseMessagesBody } from './validate.js';

/** Non-streaming provider bodies are read whole (to find `usage`); past this size the charge is estimated. */
const MAX_JSON_RESPONSE_BYTES = 64 * 1024 * 1024;

export interface ProxyDeps {
  config: Config;
  gatekeeper: Gatekeeper;
  upstream: UpstreamClient;
  store: BudgetStore;
  inflight: InflightTracker;
  prices: PriceTable;
  logger: Logger;
  now: () => number;
  /** Virtual keys (keys auth mode). */
  keys?: { verify(key: string): Promise<VirtualKeyRecord | null> };
  metrics?: Pick<Metrics, 'admission' | 'upstream' | 'settled' | 'recorded'>;
}

interface ForwardCharge {
  /** The body to send (the client's bytes, or with max_tokens lowered when clamped). */
  raw: Buffer;
  /** The usage to charge when the provider's report is missing: the whole hold. */
  estimatedUsage: Usage;
  fullCharge: number;
  price: Price;
  /** Credentials to send upstream instead of the client's (keys mode). */
  upstreamHeaders: Record<string, string> | undefined;
  /** Headers added to the response (clamped, would-block). */
  extraHeaders: Record<string, string>;
  /** Observe mode: what would have been blocked. */
  blockReason: string | null;
}

/** Fields of a create request that count_tokens accepts. */
const COUNT_FIELDS = [
  'model',
  'messages',
  'system',
  'tools',
  'tool_choice',
  'thinking',
  'output_config',
  'cache_control',
  'speed',
] as const;

/** Refusals that a smaller max_tokens could turn into an admission. */
function clampable(r: Refusal): boolean {
  return (
    (r.reason === 'too_large' && r.window === 'request' && r.unit === 'tokens') ||
    (r.reason === 'exhausted' && r.unit === 'tokens')
  );
}

/** `thinking.budget_tokens` (it must stay below max_tokens), or null. */
function thinkingBudget(body: MessagesBody): number | null {
  const t = (body as { thinking?: { type?: unknown; budget_tokens?: unknown } }).thinking;
  return t && t.type === 'enabled' && typeof t.budget_tokens === 'number' ? t.budget_tokens : null;
}

function fmt(n: number, unit: 'tokens' | 'usd'): string {
  return unit === 'usd' ? `$${n.toFixed(2)}` : `${n} tokens`;
}

/** The status, headers and message of a refusal (also what observe mode reports it would do). */
export function describeRefusal(
  verdict: Refusal,
  now = Date.now(),
  shortRetrySeconds = 20,
): { status: number; blockedBy: string; message: string; headers: Record<string, string> } {
  if (verdict.reason === 'emergency') {
    const s = verdict.state;
    const blockedBy = `budget=${s.budget}; emergency`;
    const scope = s.budget === '*' ? 'all agent traffic' : `budget "${s.budget}"`;
    const until = s.until ? ` It lifts by itself at ${new Date(s.until).toISOString()}.` : '';
    const message =
      `Emergency shutdown: ${scope} is halted (${s.reason}). ` +
      `An operator can resume with \`tokenwarden resume\` or POST /api/token-usage/resume.${until}`;
    const headers: Record<string, string> = {
      'x-should-retry': 'false',
      'x-tokenwarden-blocked-by': blockedBy,
    };
    headers['retry-after'] = String(s.until ? Math.max(1, Math.ceil((s.until - now) / 1000)) : 3600);
    return { status: 429, blockedBy, message, headers };
  }
  const blockedBy = `budget=${verdict.budget}; window=${verdict.window}${verdict.unit === 'usd' ? '; unit=usd' : ''}`;
  if (verdict.reason === 'too_large') {
    const what =
      verdict.window === 'request'
        ? `the per-request limit of ${fmt(verdict.limit, verdict.unit)}`
        : `the whole ${verdict.window} limit of ${fmt(verdict.limit, verdict.unit)}, so it can never fit`;
    const message =
      `This request needs up to ${fmt(verdict.amount, verdict.unit)} (input estimate + max_tokens), more than ${what} ` +
      `of budget "${verdict.budget}". Lower max_tokens or shorten the input, or ask the operator to raise the limit.`;
    return {
      status: 400,
      blockedBy,
      message,
      headers: { 'x-tokenwarden-blocked-by': blockedBy, 'x-should-retry': 'false' },
    };
  }
  const waitSeconds = Math.max(1, Math.ceil((verdict.resetsAt - now) / 1000));
  const resetsAt = new Date(verdict.resetsAt).toISOString();
  const message =
    `Token budget "${verdict.budget}" is exhausted for this ${verdict.window}: ` +
    `used ${fmt(verdict.used, verdict.unit)} + reserved ${fmt(verdict.reserved, verdict.unit)} of ${fmt(verdict.limit, verdict.unit)}, ` +
    `and this request needs up to ${fmt(verdict.amount, verdict.unit)}. The ${verdict.window} window resets at ${resetsAt}.`;
  return {
    status: 429,
    blockedBy,
    message,
    headers: {
      'retry-after': String(waitSeconds),
      'x-should-retry': waitSeconds <= shortRetrySeconds ? 'true' : 'false',
      'x-tokenwarden-blocked-by': blockedBy,
    },
  };
}

/** How a request that was forwarded ended, before it is written to the ledger. */
interface Ending {
  /** `blocked`: an operator halt or an emergency ended the stream mid-way. */
  outcome: 'ok' | 'upstream_error' | 'client_aborted' | 'blocked';
  status: number;
  usage: Usage | null;
  source: 'reported' | 'estimated' | 'none';
  upstreamRequestId: string | null;
  blockReason?: string;
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
    const row: LedgerRow = ledgerRow(facts, outcome);
    this.deps.metrics?.recorded(row);
    try {
      await this.deps.store.appendLedger(row);
    } catch (err) {
      this.deps.logger.error({ err, requestId: facts.id }, 'could not write ledger row');
    }
  }

  /** POST /v1/messages */
  async messages(req: FastifyRequest, reply: FastifyReply): Promise<void> {
    const now = this.deps.now();
    const cfg = this.deps.config;
    const parsed = parseMessagesBody(req.body as Buffer | undefined);
    const body = parsed.ok ? parsed.body : null;
    const { facts, agentError } = requestFacts(
      req,
      now,
      body?.model ?? null,
      body?.stream === true,
      body?.metadata?.user_id,
    );

    // Who is calling: the client's own provider key (passthrough), or a virtual key (keys mode).
    let virtualKey: VirtualKeyRecord | null = null;
    if (cfg.auth.mode === 'keys') {
      const key = clientKey(req.headers);
      virtualKey = key ? ((await this.deps.keys?.verify(key).catch(() => null)) ?? null) : null;
      if (!virtualKey) {
        const message = key
          ? 'unknown or revoked tokenwarden key'
          : 'missing credentials: send your tokenwarden key (tw_…) as x-api-key or Authorization: Bearer';
        await this.record(facts, { outcome: 'invalid', status: 401, blockReason: message });
        return this.sendError(reply, new GatewayError('authentication', message), facts.id);
      }
      facts.agent = virtualKey.agent;
      facts.keyId = virtualKey.id;
    } else if (facts.keyId === null) {
      // The provider would refuse it anyway; refusing here keeps anonymous callers off the budgets.
      const message = 'missing credentials: send your provider key as x-api-key or Authorization: Bearer';
      await this.record(facts, { outcome: 'invalid', status: 401, blockReason: message });
      return this.sendError(reply, new GatewayError('authentication', message), facts.id);
    }
    const invalidMessage = parsed.ok ? (virtualKey ? null : agentError) : parsed.message;
    if (invalidMessage !== null || body === null) {
      await this.record(facts, { outcome: 'invalid', status: 400, blockReason: invalidMessage });
      return this.sendError(
        reply,
        new GatewayError('invalid_request', invalidMessage ?? 'invalid request'),
        facts.id,
      );
    }
    const price = this.deps.prices.resolve(body.model, cfg.unknownModel);
    if (!price) {
      const message = `model "${body.model}" has no known price and this gateway refuses unpriced models (unknownModel: "reject"); ask the operator to add it to "prices"`;
      await this.record(facts, { outcome: 'invalid', status: 400, blockReason: message });
      return this.sendError(reply, new GatewayError('invalid_request', message), facts.id);
    }

    const upstreamHeaders = virtualKey ? this.providerAuth() : undefined;
    const inputEstimate = await this.estimateInput(req, body, upstreamHeaders);
    const extraBudgets = virtualKey ? keyBudgets(virtualKey) : undefined;
    let raw = req.body as Buffer;
    let maxTokens = body.max_tokens;
    let clamped: string | null = null;

    const admissionRequest = (): AdmissionRequest => {
      const worst = worstCase(inputEstimate, maxTokens, this.weights);
      const usdMicros = worstCostMicros(inputEstimate, maxTokens, price);
      const estimatedUsage: Usage = {
        inputTokens: inputEstimate,
        outputTokens: maxTokens,
        cacheCreationTokens: 0,
        cacheReadTokens: 0,
      };
      return {
        id: facts.id,
        now,
        agent: facts.agent,
        model: facts.model,
        amount: worst.amount,
        usdMicros,
        ...(extraBudgets ? { extraBudgets } : {}),
        force: cfg.mode === 'observe',
        draft: ledgerRow(facts, {
          outcome: 'interrupted',
          status: 0,
          reserved: worst.amount,
          usage: estimatedUsage,
          counted: worst.amount,
          costUsd: usdMicros / 1_000_000,
          usageSource: 'estimated',
        }),
      };
    };
    const attempt = async (): Promise<Admission> => {
      const started = performance.now();
      try {
        return await this.deps.gatekeeper.admit(admissionRequest());
      } finally {
        this.deps.metrics?.admission(performance.now() - started);
      }
    };

    let admission: Admission;
    try {
      admission = await attempt();
      // Clamp: lower max_tokens to what every window can still pay for, rather than refuse.
      if (!admission.ok && cfg.overLimit === 'clamp' && clampable(admission)) {
        const room = await this.deps.gatekeeper.headroom({
          now,
          agent: facts.agent,
          model: facts.model,
          ...(extraBudgets ? { extraBudgets } : {}),
        });
        const inputPart = worstCase(inputEstimate, 0, this.weights).inputPart;
        const affordable = Math.floor((room - inputPart) / Math.max(this.weights.output, 1e-9));
        const thinking = thinkingBudget(body);
        if (
          affordable >= cfg.minClampTokens &&
          affordable < maxTokens &&
          (thinking === null || thinking < affordable)
        ) {
          clamped = `${maxTokens}->${affordable}`;
          maxTokens = affordable;
          raw = Buffer.from(JSON.stringify({ ...(body as object), max_tokens: affordable }));
          const second = await attempt();
          if (second.ok) admission = second;
          else clamped = null;
        }
      }
    } catch (err) {
      if (cfg.onStoreError === 'allow') {
        // The operator chose availability over enforcement: let it through, and say so everywhere.
        this.deps.logger.warn(
          { err, requestId: facts.id },
          'budget store unavailable; letting the request through unmetered',
        );
        facts.metadata.unmetered = `budget store unreachable: ${(err as Error).message ?? String(err)}`;
        admission = { ok: true, observed: null, hold: this.deps.gatekeeper.unmetered(admissionRequest()) };
      } else {
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
    }

    if (!admission.ok) return this.refuse(reply, facts, admission, now);
    const extraHeaders: Record<string, string> = {};
    if (admission.hold.unmetered) {
      extraHeaders['x-tokenwarden-unmetered'] =
        'budget store unreachable; not enforced (onStoreError: allow)';
    }
    const rowExtras: { blockReason: string | null } = { blockReason: null };
    if (clamped) {
      extraHeaders['x-tokenwarden-clamped'] = clamped;
      facts.metadata.clamped = clamped;
    }
    if (admission.observed) {
      // Observe mode: nothing is blocked, but the row and a header say what would have been.
      const why = describeRefusal(admission.observed);
      extraHeaders['x-tokenwarden-would-block'] = why.blockedBy;
      rowExtras.blockReason = `observe: would ${why.status === 429 ? 'block' : 'refuse'} (${why.blockedBy})`;
      facts.metadata.wouldBlock = { status: why.status, blockedBy: why.blockedBy, message: why.message };
    }
    await this.forward(req, reply, facts, admission.hold, {
      raw,
      estimatedUsage: {
        inputTokens: inputEstimate,
        outputTokens: maxTokens,
        cacheCreationTokens: 0,
        cacheReadTokens: 0,
      },
      fullCharge: admission.hold.amount,
      price,
      upstreamHeaders,
      extraHeaders,
      blockReason: rowExtras.blockReason,
    });
  }

  /** `x-api-key` with the operator's provider key, replacing the client's credentials (keys mode). */
  private providerAuth(): Record<string, string> {
    return { 'x-api-key': this.deps.config.upstreamApiKey ?? '' };
  }

  /**
   * The input estimate: `count` asks the provider (one extra round trip) and falls back to the strict
   * bound if that fails; otherwise the configured local mode.
   */
  private async estimateInput(
    req: FastifyRequest,
    body: MessagesBody,
    auth: Record<string, string> | undefined,
  ): Promise<number> {
    const cfg = this.deps.config;
    if (cfg.estimation === 'count') {
      const counted = await this.countTokens(req, body, auth);
      if (counted !== null) return counted;
    }
    return estimateInputTokens(body, cfg.estimation === 'estimate' ? 'estimate' : 'strict', cfg.allowances);
  }

  private async countTokens(
    req: FastifyRequest,
    body: MessagesBody,
    auth: Record<string, string> | undefined,
  ): Promise<number | null> {
    // count_tokens takes a subset of the create parameters (no max_tokens, stream or metadata).
    const subset: Record<string, unknown> = {};
    for (const k of COUNT_FIELDS) if (body[k] !== undefined) subset[k] = body[k];
    const payload = Buffer.from(JSON.stringify(subset));
    try {
      const up = await this.deps.upstream.request({
        method: 'POST',
        path: '/v1/messages/count_tokens',
        headers: this.upstreamHeaders(req.headers, payload.length, auth),
        body: payload,
        signal: AbortSignal.timeout(10_000),
      });
      const text = await readAll(up.body as AsyncIterable<Buffer>, 1 << 20);
      if (up.statusCode !== 200) return null;
      const n = (JSON.parse(text.toString('utf8')) as { input_tokens?: unknown }).input_tokens;
      return typeof n === 'number' && Number.isFinite(n) && n >= 0 ? Math.ceil(n) : null;
    } catch (err) {
      this.deps.logger.warn({ err }, 'count_tokens failed; using the strict estimate');
      return null;
    }
  }

  private upstreamHeaders(
    incoming: IncomingHttpHeaders,
    length: number,
    auth: Record<string, string> | undefined,
  ): Record<string, string | string[]> {
    const headers = upstreamRequestHeaders(incoming, length, auth);
    if (auth) {
      // Keys mode: the virtual key never reaches the provider.
      if (!('authorization' in auth)) delete headers.authorization;
    }
    return headers;
  }

  private async refuse(
    reply: FastifyReply,
    facts: RequestFacts,
    verdict: Refusal,
    now: number,
  ): Promise<void> {
    const why = describeRefusal(verdict, now, this.deps.config.shortRetrySeconds);
    await this.record(facts, { outcome: 'blocked', status: why.status, blockReason: why.blockedBy });
    return this.sendError(
      reply,
      new GatewayError(why.status === 429 ? 'budget_exhausted' : 'invalid_request', why.message, why.headers),
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
    charge: ForwardCharge,
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
    /** Set when an operator halt ends this request: the stream gets an error frame saying so. */
    let haltedBy: string | null = null;
    const tracked = this.deps.inflight.add({
      budgets: hold.budgets,
      abort: (reason) => {
        haltedBy ??= reason ?? null;
        ac.abort();
      },
    });
    const ours = { ...remainingHeaders(facts.id, hold), ...charge.extraHeaders };
    /** A request ended by a halt before its response began: 429, like a request refused by one. */
    const sendHalted = (reason: string): void => {
      const http = toHttp(new GatewayError('budget_exhausted', reason, { 'x-should-retry': 'false' }));
      res.writeHead(http.status, { ...http.headers, ...ours });
      res.end(http.body);
    };

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
      const cost = usage && end.source !== 'none' ? costUsd(usage, charge.price) : 0;
      // Never charge less than the hold for an unknown outcome; the USD counter follows the tokens.
      const usdMicros =
        end.source === 'none'
          ? 0
          : end.source === 'estimated' && !end.usage
            ? hold.usdMicros
            : toMicros(cost);
      const row = ledgerRow(facts, {
        outcome: end.outcome,
        status: end.status,
        reserved: hold.amount,
        usage,
        counted,
        costUsd: end.source === 'none' ? 0 : Math.max(cost, usdMicros / 1_000_000),
        usageSource: end.source,
        upstreamRequestId: end.upstreamRequestId,
        blockReason: end.blockReason ?? charge.blockReason,
      });
      this.deps.metrics?.settled(row);
      try {
        await this.deps.gatekeeper.settle(hold, counted, usdMicros, row);
      } catch (err) {
        if (hold.unmetered) {
          // Let through unmetered and the ledger is down too: the log is the only record left.
          this.deps.logger.error({ err, requestId: facts.id, row }, 'could not write the ledger row');
        } else {
          // The hold stays in the store and is charged in full when reclaimed: conservative, not lost.
          this.deps.logger.error({ err, requestId: facts.id }, 'could not settle hold');
        }
      }
    };

    try {
      let up: Dispatcher.ResponseData;
      const upstreamStarted = performance.now();
      try {
        up = await this.deps.upstream.request({
          method: 'POST',
          path: req.url.replace(/^.*?(\/v1\/)/, '$1'),
          headers: this.upstreamHeaders(req.headers, charge.raw.length, charge.upstreamHeaders),
          body: charge.raw,
          signal: ac.signal,
        });
        this.deps.metrics?.upstream(performance.now() - upstreamStarted);
      } catch (err) {
        const kind = clientGone ? 'aborted' : classifyUpstreamError(err);
        if (kind === 'aborted') {
          // The provider may already be generating: charge the whole hold.
          const halt = clientGone ? null : haltedBy;
          await settle({
            outcome: halt !== null ? 'blocked' : 'client_aborted',
            status: halt !== null ? 429 : 0,
            usage: null,
            source: 'estimated',
            upstreamRequestId: null,
            ...(halt !== null ? { blockReason: halt } : {}),
          });
          if (halt !== null) sendHalted(halt);
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
        await this.streamSse(
          res,
          up,
          headers,
          ac,
          () => clientGone,
          () => haltedBy,
          settle,
          upstreamRequestId,
        );
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
        const halt = clientGone ? null : haltedBy;
        await settle({
          outcome: clientGone ? 'client_aborted' : halt !== null ? 'blocked' : 'upstream_error',
          status: clientGone ? 0 : halt !== null ? 429 : 502,
          usage: null,
          source: 'estimated',
          upstreamRequestId,
          ...(halt !== null ? { blockReason: halt } : {}),
        });
        if (halt !== null) {
          sendHalted(halt);
        } else if (!clientGone) {
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
    haltedBy: () => string | null,
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
    const halt = complete ? null : haltedBy();
    await settle({
      outcome: complete ? 'ok' : halt !== null ? 'blocked' : 'upstream_error',
      status: 200,
      usage: tap.usage,
      source: complete ? 'reported' : 'estimated',
      upstreamRequestId,
      ...(halt !== null ? { blockReason: halt } : {}),
    });
    if (held) res.write(held);
    if (halt !== null) {
      res.write(sseErrorFrame('rate_limit_error', halt));
    } else if (!complete && tap.errorType === null) {
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
    if (this.deps.config.auth.mode === 'keys') {
      const key = clientKey(req.headers);
      const record = key ? await this.deps.keys?.verify(key).catch(() => null) : null;
      if (!record) {
        const message = 'unknown, revoked or missing tokenwarden key';
        await this.record(facts, { outcome: 'invalid', status: 401, blockReason: message });
        return this.sendError(reply, new GatewayError('authentication', message), facts.id);
      }
      facts.agent = record.agent;
      facts.keyId = record.id;
    }
    const raw = Buffer.isBuffer(req.body) ? req.body : undefined;
    const upPath = req.url.replace(/^.*?(\/v1\/)/, '$1');
    reply.hijack();
    const res = reply.raw;
    const ac = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) ac.abort();
    });
    const tracked = this.deps.inflight.add({ budgets: [], abort: () => ac.abort() });
    try {
      const up = await this.deps.upstream.request({
        method: req.method as Dispatcher.HttpMethod,
        path: upPath,
        headers: this.upstreamHeaders(
          req.headers,
          raw?.length ?? 0,
          this.deps.config.auth.mode === 'keys' ? this.providerAuth() : undefined,
        ),
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
