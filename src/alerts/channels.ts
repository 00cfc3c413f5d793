/**
 * Alert channels: where a recorded alert is sent (SPEC §3 Alert). Every channel's `send` returns at
 * once and never throws; delivery happens in the background and failures are logged, so a slow or
 * broken receiver can never hold up a request or the alert monitor.
 */
import { spawn } from 'node:child_process';
import type { Logger } from 'pino';
import type { AlertLevel, AlertRecord } from '../store/ports.js';
import { formatInstant } from './thresholds.js';

export interface AlertChannel {
  /** For logs, e.g. `log`, `webhook:https://hooks.slack.com`. Never contains a secret. */
  readonly name: string;
  /** Hands the alert over for delivery. Returns immediately; never throws. */
  send(alert: AlertRecord): void;
  /** Resolves once everything handed over so far is delivered or given up (tests, shutdown). */
  idle?(): Promise<void>;
  /** Stops delivering: queued alerts are dropped, new ones ignored. In-flight work finishes. */
  close?(): void;
}

/** A channel with a delivery queue. */
export interface QueuedAlertChannel extends AlertChannel {
  idle(): Promise<void>;
  /** Same as {@link idle}. */
  flush(): Promise<void>;
  close(): void;
  /** Alerts waiting (not counting the one being delivered). */
  readonly pending: number;
}

/** The alert as channels present it to the outside world (webhook `alert`, command stdin). */
export interface AlertPayload {
  id: string;
  level: AlertLevel;
  budget: string;
  window: string;
  percent: number;
  /** ISO 8601. */
  period: string;
  /** ISO 8601. */
  at: string;
  message: string;
}

export function alertPayload(a: AlertRecord): AlertPayload {
  return {
    id: a.id,
    level: a.level,
    budget: a.budget,
    window: a.window,
    percent: a.percent,
    period: safeIso(a.period),
    at: safeIso(a.at),
    message: a.message,
  };
}

function safeIso(ms: number): string {
  return Number.isFinite(ms) ? formatInstant(ms) : String(ms);
}

const MARKERS: Readonly<Record<AlertLevel, string>> = {
  warning: '⚠️ [WARNING]',
  critical: '🔴 [CRITICAL]',
  emergency: '🚨 [EMERGENCY]',
  forecast: '📈 [FORECAST]',
};

/** The one-line text of an alert with its level marker, for chat tools. */
export function alertText(a: AlertRecord): string {
  return `${MARKERS[a.level]} tokenwarden: ${a.message}`;
}

function errorText(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    const code = (cause as { code?: unknown } | undefined)?.code ?? (err as { code?: unknown }).code;
    return typeof code === 'string' ? `${err.message} (${code})` : err.message;
  }
  return String(err);
}

// ---------------------------------------------------------------------------------------------
// Log channel

/**
 * Writes each alert as one structured pino line: `warn` for warning and forecast, `error` for
 * critical and emergency. The alert fields are nested under `alert` (pino owns the top-level
 * `level`). Never throws.
 */
export function logChannel(logger: Logger): AlertChannel {
  return {
    name: 'log',
    send(alert) {
      try {
        const severe = alert.level === 'critical' || alert.level === 'emergency';
        const fields = { event: 'alert', alert: alertPayload(alert) };
        if (severe) logger.error(fields, alert.message);
        else logger.warn(fields, alert.message);
      } catch {
        // A logger that throws (closed destination) must not take the caller down.
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Delivery queue shared by the webhook and command channels

const DEFAULT_MAX_QUEUE = 1000;

/**
 * Delivers one item at a time, in order, so a receiver sees warning before critical before emergency.
 * Beyond `max` waiting items the oldest waiting one is dropped (and `onDrop` told), so a dead receiver
 * costs bounded memory. `deliver` must not throw; if it does, the error is passed to `onError`.
 */
class DeliveryQueue<T> {
  readonly #items: T[] = [];
  readonly #max: number;
  readonly #deliver: (item: T) => Promise<void>;
  readonly #onDrop: (item: T) => void;
  readonly #onError: (err: unknown) => void;
  #running = false;
  #closed = false;
  #waiters: Array<() => void> = [];

  constructor(
    max: number,
    deliver: (item: T) => Promise<void>,
    onDrop: (item: T) => void,
    onError: (err: unknown) => void,
  ) {
    this.#max = max;
    this.#deliver = deliver;
    this.#onDrop = onDrop;
    this.#onError = onError;
  }

  get pending(): number {
    return this.#items.length;
  }

  get closed(): boolean {
    return this.#closed;
  }

  push(item: T): void {
    if (this.#closed) return;
    this.#items.push(item);
    if (this.#items.length > this.#max) {
      const dropped = this.#items.shift();
      if (dropped !== undefined) this.#onDrop(dropped);
    }
    if (!this.#running) {
      this.#running = true;
      void this.#drain();
    }
  }

  idle(): Promise<void> {
    if (!this.#running) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  close(): void {
    this.#closed = true;
    this.#items.length = 0;
  }

  async #drain(): Promise<void> {
    try {
      for (let item = this.#items.shift(); item !== undefined; item = this.#items.shift()) {
        try {
          await this.#deliver(item);
        } catch (err) {
          this.#onError(err);
        }
      }
    } finally {
      this.#running = false;
      const waiters = this.#waiters;
      this.#waiters = [];
      for (const w of waiters) w();
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => {
    // Unref'd: a backoff wait alone must not keep a finished process alive.
    setTimeout(resolve, ms).unref();
  });
}

// ---------------------------------------------------------------------------------------------
// Webhook channel

export interface WebhookChannelOptions {
  /** The webhook URL. It usually embeds a secret: only its origin is ever logged. */
  url: string;
  logger: Logger;
  /** Retries after the first attempt (default 5), so at most `retries + 1` requests per alert. */
  retries?: number;
  /** Backoff before retry n (0-based) is `baseDelayMs × 2^n`, ±25 % jitter (default 500). */
  baseDelayMs?: number;
  /** Bound on each attempt, connect to end of response (default 5000). */
  timeoutMs?: number;
  /** Alerts waiting beyond this are dropped, oldest first (default 1000). */
  maxQueue?: number;
  /** Injected for tests; defaults to the global fetch. */
  fetchImpl?: typeof fetch;
}

/** The in-order delivery queue of a channel, logging what it drops or what crashes. */
function alertQueue(
  kind: string,
  maxQueue: number | undefined,
  run: (alert: AlertRecord) => Promise<void>,
  logger: Logger,
): DeliveryQueue<AlertRecord> {
  return new DeliveryQueue<AlertRecord>(
    Math.max(1, maxQueue ?? DEFAULT_MAX_QUEUE),
    run,
    (dropped) =>
      logger.error(
        { alertId: dropped.id, alertLevel: dropped.level, budget: dropped.budget },
        `alert ${kind} queue full; dropped the oldest alert`,
      ),
    (err) => logger.error({ err }, `alert ${kind} delivery crashed`),
  );
}

/** The JSON body POSTed to a webhook: Slack's `text`, plus the alert as data for other receivers. */
export interface WebhookBody {
  text: string;
  alert: {
    level: AlertLevel;
    budget: string;
    window: string;
    percent: number;
    /** ISO 8601. */
    at: string;
    message: string;
  };
}

export function webhookBody(a: AlertRecord): WebhookBody {
  return {
    text: alertText(a),
    alert: {
      level: a.level,
      budget: a.budget,
      window: a.window,
      percent: a.percent,
      at: safeIso(a.at),
      message: a.message,
    },
  };
}

/** Statuses worth retrying; any other 4xx (bad URL, revoked hook, rejected body) will not improve. */
function retryable(status: number): boolean {
  return status >= 500 || status === 408 || status === 425 || status === 429;
}

/** `Retry-After` in ms (seconds or an HTTP date), capped at a minute; null when absent or invalid. */
function retryAfterMs(header: string | null, now: number): number | null {
  if (header === null) return null;
  const secs = Number(header);
  const ms = Number.isFinite(secs) ? secs * 1000 : Date.parse(header) - now;
  return Number.isFinite(ms) && ms >= 0 ? Math.min(ms, 60_000) : null;
}

/**
 * POSTs each alert as JSON (see {@link WebhookBody}) to `url`, one at a time in order. Network
 * errors, timeouts, 5xx, 408, 425 and 429 are retried with exponential backoff (`Retry-After` is
 * honoured when longer); other 4xx are given up at once. Throws (TypeError) only at construction,
 * for a URL that is not http(s); `send` never throws.
 */
export function webhookChannel(opts: WebhookChannelOptions): QueuedAlertChannel {
  let parsed: URL;
  try {
    parsed = new URL(opts.url);
  } catch {
    // Do not echo the URL: it carries the webhook's secret.
    throw new TypeError('webhook URL is not a valid URL');
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new TypeError(`webhook URL must be http(s), got ${parsed.protocol}`);
  }
  const url = opts.url;
  const origin = parsed.origin;
  const logger = opts.logger.child({ channel: 'webhook', webhook: origin });
  const retries = Math.max(0, Math.floor(opts.retries ?? 5));
  const baseDelayMs = Math.max(0, opts.baseDelayMs ?? 500);
  const timeoutMs = Math.max(1, opts.timeoutMs ?? 5000);
  const fetchImpl = opts.fetchImpl ?? fetch;

  async function attempt(
    body: string,
  ): Promise<{ ok: true } | { ok: false; retry: boolean; why: string; waitMs: number | null }> {
    try {
      const res = await fetchImpl(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'user-agent': 'tokenwarden' },
        body,
        redirect: 'error',
        signal: AbortSignal.timeout(timeoutMs),
      });
      // The body is not needed; cancelling frees the connection without waiting for it.
      await res.body?.cancel().catch(() => {});
      if (res.ok) return { ok: true };
      return {
        ok: false,
        retry: retryable(res.status),
        why: `HTTP ${res.status}`,
        waitMs: retryAfterMs(res.headers.get('retry-after'), Date.now()),
      };
    } catch (err) {
      const timedOut = err instanceof Error && err.name === 'TimeoutError';
      return {
        ok: false,
        retry: true,
        why: timedOut ? `timed out after ${timeoutMs} ms` : errorText(err),
        waitMs: null,
      };
    }
  }

  async function deliver(alert: AlertRecord): Promise<void> {
    const body = JSON.stringify(webhookBody(alert));
    for (let n = 0; ; n++) {
      const r = await attempt(body);
      if (r.ok) {
        logger.debug({ alertId: alert.id, attempts: n + 1 }, 'alert delivered to webhook');
        return;
      }
      if (!r.retry || n >= retries || queue.closed) {
        logger.error(
          { alertId: alert.id, alertLevel: alert.level, budget: alert.budget, attempts: n + 1, error: r.why },
          'alert webhook delivery failed; giving up',
        );
        return;
      }
      const backoff = baseDelayMs * 2 ** n * (0.75 + Math.random() * 0.5);
      const wait = Math.max(backoff, r.waitMs ?? 0);
      logger.warn(
        { alertId: alert.id, attempt: n + 1, error: r.why, retryInMs: Math.round(wait) },
        'alert webhook delivery failed; retrying',
      );
      await sleep(wait);
    }
  }

  const queue = alertQueue('webhook', opts.maxQueue, deliver, logger);

  return {
    name: `webhook:${origin}`,
    send(alert) {
      try {
        queue.push(alert);
      } catch {
        // push only throws if onDrop's logger does; the contract is never to throw.
      }
    },
    idle: () => queue.idle(),
    flush: () => queue.idle(),
    close: () => queue.close(),
    get pending() {
      return queue.pending;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Command channel

export interface CommandChannelOptions {
  /** Run through `/bin/sh -c`, with the alert JSON ({@link AlertPayload}) on stdin. */
  command: string;
  logger: Logger;
  /** The command's whole process group is killed (SIGKILL) after this long (default 10000). */
  timeoutMs?: number;
  /** Alerts waiting beyond this are dropped, oldest first (default 1000). */
  maxQueue?: number;
}

/**
 * Longest message passed in the environment: Linux refuses to exec with a single variable over
 * 128 KiB (E2BIG). stdin always carries the whole message.
 */
const MAX_ENV_MESSAGE = 8192;

function truncate(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

/** stderr kept for the failure log line. */
const STDERR_TAIL = 2048;

/**
 * Runs `command` once per alert, one at a time in order, via `/bin/sh -c`, with the alert as JSON on
 * stdin and in the environment: `TOKENWARDEN_ALERT_LEVEL`, `_BUDGET`, `_WINDOW`, `_PERCENT`,
 * `_MESSAGE` (plus `_ID`, `_AT`). A non-zero exit, a signal or a timeout is logged with the tail of
 * stderr; stdout is discarded. `send` never throws.
 */
export function commandChannel(opts: CommandChannelOptions): QueuedAlertChannel {
  const logger = opts.logger.child({ channel: 'command' });
  const timeoutMs = Math.max(1, opts.timeoutMs ?? 10_000);

  function run(alert: AlertRecord): Promise<void> {
    return new Promise((resolve) => {
      const payload = alertPayload(alert);
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        TOKENWARDEN_ALERT_ID: payload.id,
        TOKENWARDEN_ALERT_LEVEL: payload.level,
        TOKENWARDEN_ALERT_BUDGET: payload.budget,
        TOKENWARDEN_ALERT_WINDOW: payload.window,
        TOKENWARDEN_ALERT_PERCENT: String(payload.percent),
        TOKENWARDEN_ALERT_AT: payload.at,
        TOKENWARDEN_ALERT_MESSAGE: truncate(payload.message, MAX_ENV_MESSAGE),
      };
      let stderr = '';
      let timedOut = false;
      let done = false;
      let timer: NodeJS.Timeout | undefined;
      const finish = (fields: Record<string, unknown>, msg: string | null): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (msg !== null) {
          logger.error({ alertId: alert.id, ...fields, stderr: stderr.trim() || undefined }, msg);
        } else {
          logger.debug({ alertId: alert.id }, 'alert command succeeded');
        }
        resolve();
      };
      let child: ReturnType<typeof spawn>;
      try {
        // detached: the command gets its own process group, so a timeout also kills what it started.
        child = spawn('/bin/sh', ['-c', opts.command], {
          env,
          stdio: ['pipe', 'ignore', 'pipe'],
          detached: true,
        });
      } catch (err) {
        done = true;
        logger.error({ alertId: alert.id, error: errorText(err) }, 'alert command could not start');
        resolve();
        return;
      }
      timer = setTimeout(() => {
        timedOut = true;
        killGroup(child);
      }, timeoutMs);
      child.on('error', (err) => finish({ error: errorText(err) }, 'alert command could not start'));
      child.stderr?.setEncoding('utf8');
      child.stderr?.on('data', (chunk: string) => {
        stderr = (stderr + chunk).slice(-STDERR_TAIL);
      });
      child.on('close', (code, signal) => {
        if (timedOut) finish({ timeoutMs }, 'alert command timed out and was killed');
        else if (code !== 0) finish({ exitCode: code, signal }, 'alert command failed');
        else finish({}, null);
      });
      // A command that does not read stdin closes the pipe: EPIPE is expected, not a failure.
      child.stdin?.on('error', () => {});
      child.stdin?.end(`${JSON.stringify(payload)}\n`);
    });
  }

  const queue = alertQueue('command', opts.maxQueue, run, logger);

  return {
    name: 'command',
    send(alert) {
      try {
        queue.push(alert);
      } catch {
        // See webhookChannel.send.
      }
    },
    idle: () => queue.idle(),
    flush: () => queue.idle(),
    close: () => queue.close(),
    get pending() {
      return queue.pending;
    },
  };
}

function killGroup(child: ReturnType<typeof spawn>): void {
  const pid = child.pid;
  try {
    if (pid !== undefined) process.kill(-pid, 'SIGKILL');
    else child.kill('SIGKILL');
  } catch {
    try {
      child.kill('SIGKILL');
    } catch {
      // Already gone.
    }
  }
}
