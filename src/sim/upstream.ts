/**
 * A fake Anthropic Messages API, deterministic and cheap (node:http only).
 *
 * Used by the `demo` command, the test-suite and the benchmark. It speaks the provider side of the
 * wire format in docs/anthropic-wire.md §1–§5 and keeps a running `bill`: what the real provider
 * would invoice for the traffic it saw.
 *
 * Usage model (deterministic):
 * - `input_tokens` = ceil(UTF-8 bytes of all text in `system` + `messages` / 4), at least 1
 *   (see {@link fakeInputTokens}); header `x-fake-input-tokens: N` overrides it.
 * - cache tokens come from `x-fake-cache-creation: N` / `x-fake-cache-read: N` (default 0); all
 *   cache writes are reported as 5-minute writes in the `cache_creation` split.
 * - output tokens = min(`max_tokens`, `x-fake-output-tokens` ?? 12); each is one `"tok "` text delta.
 *
 * Fault injection (request headers, see {@link FAKE_HEADERS}):
 * - `x-fake-status: 529` (or 500, 429, 400, …): that status with the matching Anthropic error type; not billed.
 * - `x-fake-delay-ms: N`: wait N ms before the response headers (the request sits in the provider's
 *   queue: a client that leaves during the delay is not billed).
 * - `x-fake-hang: 1`: never answer, until the client goes away (not billed).
 * - `x-fake-cut-after: N`: streaming: after N content deltas the connection is closed mid-body
 *   (no `message_delta` / `message_stop`); billed input + N output tokens. Non-streaming: the JSON
 *   body is cut in half; billed in full (the provider generated it).
 * - `x-fake-stream-error-after: N`: streaming: after N content deltas an `event: error` frame
 *   (`x-fake-stream-error-type`, default `overloaded_error`) ends the stream; billed input + N.
 * - `x-fake-message-deltas: K`: K `message_delta` events with cumulative `output_tokens`; only the
 *   last one carries the stop reason and the final value.
 * - `x-fake-event-delay-ms: N`: wait N ms before each content delta.
 *
 * A client that disconnects before the response is complete stops generation; the request is marked
 * `clientAborted` and billed its input plus the output tokens generated so far.
 */
import { randomBytes } from 'node:crypto';
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeUpstreamOptions {
  /** Port to listen on; 0 (default) picks a free one. */
  port?: number;
  /** Interface to bind; default `127.0.0.1`. */
  host?: string;
  /** Keep every request in `requests` (default true). The benchmark turns this off. */
  record?: boolean;
  /** Largest accepted request body (default 32 MiB, like the real API); larger gets 413. */
  maxBodyBytes?: number;
  /** Default output tokens when `x-fake-output-tokens` is absent (default 12). */
  defaultOutputTokens?: number;
}

/** Token amounts billed for one request (or in total). */
export interface FakeUsage {
  inputTokens: number;
  outputTokens: number;
  cacheCreationTokens: number;
  cacheReadTokens: number;
}

/** Running totals of what the provider would invoice. */
export interface FakeBill extends FakeUsage {
  /** Number of requests that were billed (including partially generated ones). */
  requests: number;
}

export interface RecordedRequest {
  /** The `request-id` sent back (`req_…`). */
  requestId: string;
  method: string;
  /** Path without the query string. */
  path: string;
  headers: IncomingHttpHeaders;
  /** Parsed JSON body; `undefined` when there was none or it did not parse. */
  body: unknown;
  receivedAt: number;
  /** `stream: true` was asked for. */
  stream: boolean;
  /** HTTP status sent, or null while no response headers were sent. */
  status: number | null;
  /** The client went away before the response was complete. */
  clientAborted: boolean;
  /** The whole response was handed to the OS (set when the exchange ends). */
  completed: boolean;
  /** The fake cut the connection on purpose (`x-fake-cut-after`). */
  cut: boolean;
  /** Content deltas (output tokens) written so far. */
  outputTokensSent: number;
  /** What was billed for this request; null when nothing was (errors, aborts before generation). */
  billed: FakeUsage | null;
}

export interface FakeUpstream {
  /** Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash). */
  readonly url: string;
  readonly port: number;
  readonly host: string;
  /** Recorded requests, oldest first (empty when `record: false`). */
  readonly requests: RecordedRequest[];
  /** Running totals; the same object for the life of the server (reset() zeroes it in place). */
  readonly bill: FakeBill;
  /** Requests received since start or the last reset(), recorded or not. */
  readonly requestCount: number;
  /** Requests whose response is neither complete nor aborted yet. */
  readonly inFlight: number;
  /** Clear `requests`, zero `bill` and `requestCount`. */
  reset(): void;
  /** Resolve once `requestCount >= n`. */
  waitForRequests(n: number, timeoutMs?: number): Promise<void>;
  /** Resolve once no request is in flight (every response completed, cut or aborted). */
  waitForIdle(timeoutMs?: number): Promise<void>;
  /** Resolve once `predicate()` holds; re-checked on every request start and end. */
  waitFor(predicate: () => boolean, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

/** Request headers the fake understands. */
export const FAKE_HEADERS = {
  inputTokens: 'x-fake-input-tokens',
  outputTokens: 'x-fake-output-tokens',
  cacheCreation: 'x-fake-cache-creation',
  cacheRead: 'x-fake-cache-read',
  status: 'x-fake-status',
  delayMs: 'x-fake-delay-ms',
  hang: 'x-fake-hang',
  cutAfter: 'x-fake-cut-after',
  streamErrorAfter: 'x-fake-stream-error-after',
  streamErrorType: 'x-fake-stream-error-type',
  messageDeltas: 'x-fake-message-deltas',
  eventDelayMs: 'x-fake-event-delay-ms',
  /** Fail only `count_tokens` with this status (the create call still succeeds). */
  countStatus: 'x-fake-count-status',
} as const;

export const FAKE_DEFAULT_OUTPUT_TOKENS = 12;
/** The text of one output token. */
export const FAKE_TOKEN_TEXT = 'tok ';

export const FAKE_MODELS: readonly { id: string; display_name: string; created_at: string }[] = [
  { id: 'claude-opus-4-5-20251101', display_name: 'Claude Opus 4.5', created_at: '2025-11-01T00:00:00Z' },
  { id: 'claude-sonnet-4-5-20250929', display_name: 'Claude Sonnet 4.5', created_at: '2025-09-29T00:00:00Z' },
  { id: 'claude-haiku-4-5-20251001', display_name: 'Claude Haiku 4.5', created_at: '2025-10-01T00:00:00Z' },
];

const ERROR_TYPES: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  402: 'billing_error',
  403: 'permission_error',
  404: 'not_found_error',
  409: 'conflict_error',
  413: 'request_too_large',
  429: 'rate_limit_error',
  500: 'api_error',
  504: 'timeout_error',
  529: 'overloaded_error',
};

const ERROR_MESSAGES: Record<string, string> = {
  invalid_request_error: 'Invalid request (injected by x-fake-status)',
  authentication_error: 'invalid x-api-key',
  billing_error: 'Your credit balance is too low to access the Anthropic API.',
  permission_error: 'Your API key does not have permission to use the specified resource.',
  not_found_error: 'The requested resource could not be found.',
  conflict_error: 'Conflict',
  request_too_large: 'Request exceeds the maximum allowed number of bytes.',
  rate_limit_error: 'Number of request tokens has exceeded your per-minute rate limit',
  api_error: 'Internal server error',
  timeout_error: 'Request timed out',
  overloaded_error: 'Overloaded',
};

/** The Anthropic error type for an HTTP status (other 4xx: invalid_request_error, other 5xx: api_error). */
export function errorTypeForStatus(status: number): string {
  return ERROR_TYPES[status] ?? (status >= 500 ? 'api_error' : 'invalid_request_error');
}

/**
 * The fake's input token count of a Messages body: ceil(UTF-8 bytes of all text in `system` and
 * `messages` / 4), at least 1. Text is: string contents, `text` and `thinking` of blocks, the JSON
 * of `tool_use.input`, and `tool_result` contents (recursively). Images and other binary blocks add 0.
 */
export function fakeInputTokens(body: { system?: unknown; messages?: unknown }): number {
  let bytes = 0;
  const addText = (s: unknown): void => {
    if (typeof s === 'string') bytes += Buffer.byteLength(s, 'utf8');
  };
  const addContent = (content: unknown): void => {
    if (typeof content === 'string') {
      addText(content);
      return;
    }
    if (!Array.isArray(content)) return;
    for (const block of content) {
      if (block === null || typeof block !== 'object') continue;
      const b = block as Record<string, unknown>;
      addText(b.text);
      addText(b.thinking);
      if (b.type === 'tool_use' && b.input !== undefined) addText(JSON.stringify(b.input));
      if (b.type === 'tool_result') addContent(b.content);
    }
  };
  addContent(body.system);
  if (Array.isArray(body.messages)) {
    for (const m of body.messages) {
      if (m !== null && typeof m === 'object') addContent((m as Record<string, unknown>).content);
    }
  }
  return Math.max(1, Math.ceil(bytes / 4));
}

function header(h: IncomingHttpHeaders, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

function intHeader(h: IncomingHttpHeaders, name: string): number | undefined {
  const v = header(h, name);
  if (v === undefined || v.trim() === '') return undefined;
  const n = Number(v);
  return Number.isFinite(n) && n >= 0 ? Math.floor(n) : undefined;
}

function flagHeader(h: IncomingHttpHeaders, name: string): boolean {
  const v = header(h, name);
  return v !== undefined && v !== '' && v !== '0' && v.toLowerCase() !== 'false';
}

// ids: a random per-process prefix plus a counter (randomBytes per request costs more than all the rest)
const ID_PREFIX = randomBytes(9).toString('base64url');
let idCounter = 0;
function randomId(prefix: string): string {
  idCounter = (idCounter + 1) % 0x7fffffff;
  return `${prefix}011${ID_PREFIX}${idCounter.toString(36).padStart(7, '0')}`;
}

function sse(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

const PING_FRAME = sse('ping', { type: 'ping' });
const DELTA_FRAME = sse('content_block_delta', {
  type: 'content_block_delta',
  index: 0,
  delta: { type: 'text_delta', text: FAKE_TOKEN_TEXT },
});
const BLOCK_START_FRAME = sse('content_block_start', {
  type: 'content_block_start',
  index: 0,
  content_block: { type: 'text', text: '' },
});
const BLOCK_STOP_FRAME = sse('content_block_stop', { type: 'content_block_stop', index: 0 });
const MESSAGE_STOP_FRAME = sse('message_stop', { type: 'message_stop' });

const RATE_TOKENS_LIMIT = 2_000_000;
const RATE_REQUESTS_LIMIT = 4_000;

/** Per-request state shared by the handler and the connection's close listener. */
class Exchange {
  aborted = false;
  billed = false;
  private wake: (() => void) | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    readonly rec: RecordedRequest,
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
  ) {}

  /** Sleep `ms`, or less if the client goes away. */
  sleep(ms: number): Promise<void> {
    if (this.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      this.wake = resolve;
      this.timer = setTimeout(() => {
        this.timer = null;
        this.wake = null;
        resolve();
      }, ms);
    });
  }

  /** Resolve when the client goes away (or the socket drains, when `drain` is true). */
  waitAbort(drain = false): Promise<void> {
    if (this.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      this.wake = resolve;
      if (drain) {
        this.res.once('drain', () => {
          if (this.wake === resolve) this.wake = null;
          resolve();
        });
      }
    });
  }

  abort(): void {
    this.aborted = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}

interface Waiter {
  predicate: () => boolean;
  resolve: () => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

interface MessageBody {
  model: string;
  messages: unknown[];
  max_tokens: number;
  system?: unknown;
  stream?: unknown;
}

class FakeUpstreamServer implements FakeUpstream {
  url = '';
  port = 0;
  readonly host: string;
  readonly requests: RecordedRequest[] = [];
  readonly bill: FakeBill = {
    inputTokens: 0,
    outputTokens: 0,
    cacheCreationTokens: 0,
    cacheReadTokens: 0,
    requests: 0,
  };
  requestCount = 0;
  inFlight = 0;

  private readonly record: boolean;
  private readonly maxBodyBytes: number;
  private readonly defaultOutput: number;
  private readonly server: Server;
  private readonly exchanges = new Set<Exchange>();
  private waiters: Waiter[] = [];
  private closed = false;
  // rate-limit bookkeeping: tokens billed in the current minute
  private minuteStart = 0;
  private minuteTokens = 0;
  private minuteRequests = 0;
  private resetIso = '';

  constructor(opts: FakeUpstreamOptions) {
    this.host = opts.host ?? '127.0.0.1';
    this.record = opts.record ?? true;
    this.maxBodyBytes = opts.maxBodyBytes ?? 32 * 1024 * 1024;
    this.defaultOutput = opts.defaultOutputTokens ?? FAKE_DEFAULT_OUTPUT_TOKENS;
    this.server = createServer((req, res) => this.handle(req, res));
    this.server.keepAliveTimeout = 30_000;
  }

  listen(port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, this.host, () => {
        this.server.off('error', reject);
        const addr = this.server.address() as AddressInfo;
        this.port = addr.port;
        const h = this.host.includes(':') ? `[${this.host}]` : this.host;
        this.url = `http://${h}:${addr.port}`;
        resolve();
      });
    });
  }

  reset(): void {
    this.requests.length = 0;
    this.bill.inputTokens = 0;
    this.bill.outputTokens = 0;
    this.bill.cacheCreationTokens = 0;
    this.bill.cacheReadTokens = 0;
    this.bill.requests = 0;
    this.requestCount = 0;
    this.notify();
  }

  waitForRequests(n: number, timeoutMs = 5_000): Promise<void> {
    return this.waitFor(() => this.requestCount >= n, timeoutMs, `${n} requests (have ${this.requestCount})`);
  }

  waitForIdle(timeoutMs = 5_000): Promise<void> {
    return this.waitFor(() => this.inFlight === 0, timeoutMs, 'no request in flight');
  }

  waitFor(predicate: () => boolean, timeoutMs = 5_000, what = 'condition'): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        predicate,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          reject(new Error(`fake upstream: timed out after ${timeoutMs} ms waiting for ${what}`));
        }, timeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
      for (const ex of this.exchanges) ex.abort();
      for (const w of this.waiters) {
        clearTimeout(w.timer);
        w.reject(new Error('fake upstream closed'));
      }
      this.waiters = [];
    });
  }

  private notify(): void {
    if (this.waiters.length === 0) return;
    const done = this.waiters.filter((w) => w.predicate());
    if (done.length === 0) return;
    this.waiters = this.waiters.filter((w) => !done.includes(w));
    for (const w of done) {
      clearTimeout(w.timer);
      w.resolve();
    }
  }

  // ---------------------------------------------------------------------------------------------

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const rec: RecordedRequest = {
      requestId: randomId('req_'),
      method: req.method ?? 'GET',
      path: q === -1 ? url : url.slice(0, q),
      headers: req.headers,
      body: undefined,
      receivedAt: Date.now(),
      stream: false,
      status: null,
      clientAborted: false,
      completed: false,
      cut: false,
      outputTokensSent: 0,
      billed: null,
    };
    this.requestCount++;
    this.inFlight++;
    if (this.record) this.requests.push(rec);
    const ex = new Exchange(rec, req, res);
    this.exchanges.add(ex);
    res.once('close', () => {
      rec.completed = res.writableFinished;
      if (!res.writableFinished && !rec.cut) {
        rec.clientAborted = true;
        ex.abort();
      }
      this.exchanges.delete(ex);
      this.inFlight--;
      this.notify();
    });
    this.notify();
    this.route(ex).catch((err: unknown) => {
      if (!res.headersSent && !ex.aborted) {
        this.sendError(ex, 500, 'api_error', `fake upstream failure: ${String(err)}`);
      } else {
        res.destroy();
      }
    });
  }

  private async route(ex: Exchange): Promise<void> {
    const { rec } = ex;
    const isMessages = rec.path === '/v1/messages';
    const isCount = rec.path === '/v1/messages/count_tokens';
    const isModels = rec.path === '/v1/models';
    const known = ((isMessages || isCount) && rec.method === 'POST') || (isModels && rec.method === 'GET');
    if (!known) {
      ex.req.resume();
      this.sendError(ex, 404, 'not_found_error', `Not found: ${rec.method} ${rec.path}`);
      return;
    }
    const h = ex.req.headers;
    const apiKey = header(h, 'x-api-key');
    const authz = header(h, 'authorization');
    if (!apiKey && !(authz && /^Bearer\s+\S/i.test(authz))) {
      ex.req.resume();
      this.sendError(ex, 401, 'authentication_error', 'x-api-key header is required');
      return;
    }
    if (!header(h, 'anthropic-version')) {
      ex.req.resume();
      this.sendError(ex, 400, 'invalid_request_error', 'anthropic-version: header is required');
      return;
    }
    if (isModels) {
      this.sendModels(ex);
      return;
    }

    const raw = await this.readBody(ex);
    if (raw === null) return; // client went away, or 413 already sent
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch {
      this.sendError(
        ex,
        400,
        'invalid_request_error',
        'There was an issue with the request body: invalid JSON',
      );
      return;
    }
    rec.body = parsed;
    const problem = validate(parsed, isMessages);
    if (problem !== null) {
      this.sendError(ex, 400, 'invalid_request_error', problem);
      return;
    }
    const body = parsed as MessageBody;

    // faults that happen before the response headers
    const delay = intHeader(h, FAKE_HEADERS.delayMs);
    if (delay !== undefined && delay > 0) {
      await ex.sleep(delay);
      if (ex.aborted) return;
    }
    if (flagHeader(h, FAKE_HEADERS.hang)) {
      await ex.waitAbort();
      return;
    }
    const status = intHeader(h, FAKE_HEADERS.status);
    if (status !== undefined && status >= 400 && status <= 599) {
      const type = errorTypeForStatus(status);
      const extra: OutgoingHttpHeaders = status === 429 ? { 'retry-after': '1' } : {};
      this.sendError(ex, status, type, ERROR_MESSAGES[type] ?? 'Error', extra);
      return;
    }

    const input = intHeader(h, FAKE_HEADERS.inputTokens) ?? fakeInputTokens(body);
    const cacheCreation = intHeader(h, FAKE_HEADERS.cacheCreation) ?? 0;
    const cacheRead = intHeader(h, FAKE_HEADERS.cacheRead) ?? 0;
    if (isCount) {
      const countStatus = intHeader(h, FAKE_HEADERS.countStatus);
      if (countStatus !== undefined && countStatus >= 400 && countStatus <= 599) {
        const type = errorTypeForStatus(countStatus);
        this.sendError(ex, countStatus, type, ERROR_MESSAGES[type] ?? 'Error');
        return;
      }
      this.sendJson(ex, 200, { input_tokens: input + cacheCreation + cacheRead });
      return;
    }
    const wanted = intHeader(h, FAKE_HEADERS.outputTokens) ?? this.defaultOutput;
    const output = Math.min(body.max_tokens, wanted);
    const usage: FakeUsage = {
      inputTokens: input,
      outputTokens: output,
      cacheCreationTokens: cacheCreation,
      cacheReadTokens: cacheRead,
    };
    const stopReason = wanted > body.max_tokens ? 'max_tokens' : 'end_turn';
    rec.stream = body.stream === true;
    if (rec.stream) await this.streamMessage(ex, body.model, usage, stopReason);
    else this.sendMessage(ex, body.model, usage, stopReason);
  }

  /** Resolves with the body, or null when the client left or the body was too large (answered 413). */
  private readBody(ex: Exchange): Promise<Buffer | null> {
    return new Promise((resolve) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let tooLarge = false;
      const req = ex.req;
      req.on('data', (c: Buffer) => {
        size += c.length;
        if (size > this.maxBodyBytes) tooLarge = true;
        else chunks.push(c);
      });
      req.once('end', () => {
        if (ex.aborted) return resolve(null);
        if (tooLarge) {
          this.sendError(ex, 413, 'request_too_large', ERROR_MESSAGES.request_too_large ?? 'too large');
          return resolve(null);
        }
        resolve(chunks.length === 1 && chunks[0] ? chunks[0] : Buffer.concat(chunks));
      });
      req.once('error', () => resolve(null));
      req.once('close', () => {
        if (!req.complete) resolve(null);
      });
    });
  }

  private chargeUsage(ex: Exchange, u: FakeUsage): void {
    if (ex.billed) return;
    ex.billed = true;
    ex.rec.billed = u;
    const b = this.bill;
    b.inputTokens += u.inputTokens;
    b.outputTokens += u.outputTokens;
    b.cacheCreationTokens += u.cacheCreationTokens;
    b.cacheReadTokens += u.cacheReadTokens;
    b.requests++;
    this.minuteTokens += u.inputTokens + u.outputTokens + u.cacheCreationTokens;
    this.notify();
  }

  private baseHeaders(ex: Exchange, contentType: string): OutgoingHttpHeaders {
    const now = Date.now();
    if (now - this.minuteStart >= 60_000) {
      this.minuteStart = now - (now % 60_000);
      this.minuteTokens = 0;
      this.minuteRequests = 0;
      this.resetIso = new Date(this.minuteStart + 60_000).toISOString().replace(/\.\d{3}Z$/, 'Z');
    }
    this.minuteRequests++;
    const tokensRemaining = Math.max(0, Math.round((RATE_TOKENS_LIMIT - this.minuteTokens) / 1000) * 1000);
    const requestsRemaining = Math.max(0, RATE_REQUESTS_LIMIT - this.minuteRequests);
    return {
      'content-type': contentType,
      'request-id': ex.rec.requestId,
      'anthropic-organization-id': '00000000-0000-4000-8000-0000000fa4e0',
      'anthropic-ratelimit-requests-limit': RATE_REQUESTS_LIMIT,
      'anthropic-ratelimit-requests-remaining': requestsRemaining,
      'anthropic-ratelimit-requests-reset': this.resetIso,
      'anthropic-ratelimit-tokens-limit': RATE_TOKENS_LIMIT,
      'anthropic-ratelimit-tokens-remaining': tokensRemaining,
      'anthropic-ratelimit-tokens-reset': this.resetIso,
    };
  }

  private sendJson(ex: Exchange, status: number, data: unknown, extra?: OutgoingHttpHeaders): void {
    const payload = JSON.stringify(data);
    const headers = this.baseHeaders(ex, 'application/json');
    headers['content-length'] = Buffer.byteLength(payload);
    if (extra) Object.assign(headers, extra);
    ex.rec.status = status;
    ex.res.writeHead(status, headers);
    ex.res.end(payload);
  }

  private sendError(
    ex: Exchange,
    status: number,
    type: string,
    message: string,
    extra?: OutgoingHttpHeaders,
  ): void {
    if (ex.res.headersSent || ex.aborted) return;
    this.sendJson(
      ex,
      status,
      { type: 'error', error: { type, message }, request_id: ex.rec.requestId },
      extra,
    );
  }

  private sendModels(ex: Exchange): void {
    const data = FAKE_MODELS.map((m) => ({ type: 'model', ...m }));
    this.sendJson(ex, 200, {
      data,
      has_more: false,
      first_id: data[0]?.id ?? null,
      last_id: data[data.length - 1]?.id ?? null,
    });
  }

  private sendMessage(ex: Exchange, model: string, u: FakeUsage, stopReason: string): void {
    const msg = {
      id: randomId('msg_'),
      type: 'message',
      role: 'assistant',
      model,
      content: [{ type: 'text', text: FAKE_TOKEN_TEXT.repeat(u.outputTokens) }],
      stop_reason: stopReason,
      stop_sequence: null,
      usage: usageJson(u, u.outputTokens),
    };
    // the provider generated the whole message before answering: bill it all
    this.chargeUsage(ex, u);
    ex.rec.outputTokensSent = u.outputTokens;
    if (intHeader(ex.req.headers, FAKE_HEADERS.cutAfter) !== undefined) {
      const payload = JSON.stringify(msg);
      const headers = this.baseHeaders(ex, 'application/json');
      headers['content-length'] = Buffer.byteLength(payload);
      ex.rec.status = 200;
      ex.rec.cut = true;
      ex.res.writeHead(200, headers);
      ex.res.write(payload.slice(0, Math.floor(payload.length / 2)));
      this.cutConnection(ex);
      return;
    }
    this.sendJson(ex, 200, msg);
  }

  private async streamMessage(ex: Exchange, model: string, u: FakeUsage, stopReason: string): Promise<void> {
    const { res, rec } = ex;
    const h = ex.req.headers;
    const cutAfter = intHeader(h, FAKE_HEADERS.cutAfter);
    const errorAfter = intHeader(h, FAKE_HEADERS.streamErrorAfter);
    const eventDelay = intHeader(h, FAKE_HEADERS.eventDelayMs) ?? 0;
    const deltas = Math.max(1, intHeader(h, FAKE_HEADERS.messageDeltas) ?? 1);
    const partial = (n: number): FakeUsage => ({ ...u, outputTokens: n });

    const headers = this.baseHeaders(ex, 'text/event-stream; charset=utf-8');
    headers['cache-control'] = 'no-cache';
    rec.status = 200;
    res.writeHead(200, headers);
    res.write(
      sse('message_start', {
        type: 'message_start',
        message: {
          id: randomId('msg_'),
          type: 'message',
          role: 'assistant',
          model,
          content: [],
          stop_reason: null,
          stop_sequence: null,
          usage: usageJson(u, 1),
        },
      }),
    );
    res.write(BLOCK_START_FRAME);
    res.write(PING_FRAME);

    for (let i = 0; i < u.outputTokens; i++) {
      if (cutAfter === i) {
        this.chargeUsage(ex, partial(i));
        rec.cut = true;
        this.cutConnection(ex);
        return;
      }
      if (errorAfter === i) {
        this.chargeUsage(ex, partial(i));
        const type = header(h, FAKE_HEADERS.streamErrorType) ?? 'overloaded_error';
        res.end(sse('error', { type: 'error', error: { type, message: ERROR_MESSAGES[type] ?? 'Error' } }));
        return;
      }
      if (eventDelay > 0) await ex.sleep(eventDelay);
      if (ex.aborted) {
        this.chargeUsage(ex, partial(i));
        return;
      }
      const ok = res.write(DELTA_FRAME);
      rec.outputTokensSent = i + 1;
      if (!ok) {
        await ex.waitAbort(true);
        if (ex.aborted) {
          this.chargeUsage(ex, partial(i + 1));
          return;
        }
      }
    }
    if (cutAfter !== undefined) {
      // asked to cut at or after the last delta: cut before the stream is finished
      this.chargeUsage(ex, u);
      rec.cut = true;
      this.cutConnection(ex);
      return;
    }
    if (errorAfter !== undefined) {
      this.chargeUsage(ex, u);
      const type = header(h, FAKE_HEADERS.streamErrorType) ?? 'overloaded_error';
      res.end(sse('error', { type: 'error', error: { type, message: ERROR_MESSAGES[type] ?? 'Error' } }));
      return;
    }
    let tail = BLOCK_STOP_FRAME;
    for (let k = 1; k <= deltas; k++) {
      const last = k === deltas;
      const cumulative = last ? u.outputTokens : Math.ceil((u.outputTokens * k) / deltas);
      tail += sse('message_delta', {
        type: 'message_delta',
        delta: { stop_reason: last ? stopReason : null, stop_sequence: null },
        usage: {
          input_tokens: u.inputTokens,
          cache_creation_input_tokens: u.cacheCreationTokens,
          cache_read_input_tokens: u.cacheReadTokens,
          output_tokens: cumulative,
        },
      });
    }
    tail += MESSAGE_STOP_FRAME;
    this.chargeUsage(ex, u);
    res.end(tail);
  }

  /** Close the connection mid-body: what is written is flushed, then FIN, no chunked terminator. */
  private cutConnection(ex: Exchange): void {
    const socket = ex.res.socket;
    if (!socket) {
      ex.res.destroy();
      return;
    }
    socket.end();
    setTimeout(() => socket.destroy(), 1_000).unref();
  }
}

function usageJson(u: FakeUsage, outputTokens: number): Record<string, unknown> {
  return {
    input_tokens: u.inputTokens,
    cache_creation_input_tokens: u.cacheCreationTokens,
    cache_read_input_tokens: u.cacheReadTokens,
    cache_creation: { ephemeral_5m_input_tokens: u.cacheCreationTokens, ephemeral_1h_input_tokens: 0 },
    output_tokens: outputTokens,
    service_tier: 'standard',
  };
}

/** Returns an error message, or null when the body is acceptable. */
function validate(body: unknown, isMessages: boolean): string | null {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    return 'The request body must be a JSON object';
  }
  const b = body as Record<string, unknown>;
  if (typeof b.model !== 'string' || b.model === '') return 'model: Field required';
  if (!Array.isArray(b.messages)) return 'messages: Field required';
  if (!isMessages) return null;
  if (b.max_tokens === undefined) return 'max_tokens: Field required';
  if (typeof b.max_tokens !== 'number' || !Number.isInteger(b.max_tokens) || b.max_tokens < 0) {
    return 'max_tokens: Input should be a valid non-negative integer';
  }
  return null;
}

/** Start a fake Anthropic API. Close it with `close()`. */
export async function startFakeUpstream(opts: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const server = new FakeUpstreamServer(opts);
  await server.listen(opts.port ?? 0);
  return server;
}
