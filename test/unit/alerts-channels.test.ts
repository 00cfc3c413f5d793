import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Logger, pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { commandChannel, logChannel, type WebhookBody, webhookChannel } from '../../src/alerts/channels.js';
import type { AlertRecord } from '../../src/store/ports.js';

const alert = (over: Partial<AlertRecord> = {}): AlertRecord => ({
  id: 'alert_test1',
  level: 'warning',
  budget: 'global',
  window: 'month',
  period: Date.parse('2026-11-01T00:00:00Z'),
  percent: 81.2,
  at: Date.parse('2026-11-16T12:00:00Z'),
  message:
    'Budget "global" month window at 81.2% (113,680 of 140,000 tokens) — warning threshold 80% crossed; resets 2026-12-01T00:00:00Z',
  ...over,
});

/** A pino logger whose JSON lines land in `lines`. */
function capture(): { logger: Logger; lines: Array<Record<string, unknown>>; text: () => string } {
  const raw: string[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => raw.push(s) });
  return {
    logger,
    get lines() {
      return raw.map((l) => JSON.parse(l) as Record<string, unknown>);
    },
    text: () => raw.join(''),
  };
}

describe('logChannel', () => {
  it('writes one structured line: warn for warning and forecast, error for critical and emergency', () => {
    const log = capture();
    const ch = logChannel(log.logger);
    for (const level of ['warning', 'forecast', 'critical', 'emergency'] as const) ch.send(alert({ level }));
    expect(log.lines.map((l) => l.level)).toEqual([40, 40, 50, 50]);
    expect(log.lines[0]).toMatchObject({
      msg: alert().message,
      event: 'alert',
      alert: {
        id: 'alert_test1',
        level: 'warning',
        budget: 'global',
        window: 'month',
        percent: 81.2,
        period: '2026-11-01T00:00:00Z',
        at: '2026-11-16T12:00:00Z',
      },
    });
  });

  it('never throws, even when the logger does', () => {
    const broken = {
      warn() {
        throw new Error('stream closed');
      },
    } as unknown as Logger;
    expect(() => logChannel(broken).send(alert())).not.toThrow();
  });
});

// ---------------------------------------------------------------------------------------------
// Webhook against a real local HTTP receiver

interface Received {
  path: string;
  headers: IncomingMessage['headers'];
  body: string;
}

interface Receiver {
  url: string;
  received: Received[];
  /** Decides each answer (default 200 "ok"); return 'hang' to never answer. */
  respond: (n: number, res: ServerResponse) => 'hang' | undefined;
  close(): Promise<void>;
}

async function startReceiver(): Promise<Receiver> {
  const received: Received[] = [];
  const r: Partial<Receiver> = { received, respond: (_n, res) => void res.end('ok') };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({
        path: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      });
      r.respond?.(received.length, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  r.url = `http://127.0.0.1:${port}/services/T000/B000/s3cr3tT0ken`;
  r.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return r as Receiver;
}

describe('webhookChannel', () => {
  let rx: Receiver;
  beforeEach(async () => {
    rx = await startReceiver();
  });
  afterEach(async () => {
    await rx.close();
  });

  it('POSTs a Slack-compatible JSON body with text and alert', async () => {
    const log = capture();
    const ch = webhookChannel({ url: rx.url, logger: log.logger, baseDelayMs: 5 });
    ch.send(alert({ level: 'critical', percent: 95.5 }));
    await ch.idle();
    expect(rx.received).toHaveLength(1);
    const got = rx.received[0];
    expect(got?.path).toBe('/services/T000/B000/s3cr3tT0ken');
    expect(got?.headers['content-type']).toBe('application/json');
    const body = JSON.parse(got?.body ?? '') as WebhookBody;
    expect(body).toEqual({
      text: `🔴 [CRITICAL] tokenwarden: ${alert().message}`,
      alert: {
        level: 'critical',
        budget: 'global',
        window: 'month',
        percent: 95.5,
        at: '2026-11-16T12:00:00Z',
        message: alert().message,
      },
    });
  });

  it('retries after two 500s and then succeeds, logging only the origin', async () => {
    rx.respond = (n, res) => {
      res.statusCode = n <= 2 ? 500 : 200;
      res.end(n <= 2 ? 'oops' : 'ok');
      return undefined;
    };
    const log = capture();
    const ch = webhookChannel({ url: rx.url, logger: log.logger, baseDelayMs: 10 });
    ch.send(alert());
    await ch.idle();
    expect(rx.received).toHaveLength(3);
    expect(new Set(rx.received.map((r) => r.body)).size).toBe(1);
    const warnings = log.lines.filter((l) => l.msg === 'alert webhook delivery failed; retrying');
    expect(warnings.map((l) => l.error)).toEqual(['HTTP 500', 'HTTP 500']);
    expect(log.lines.some((l) => l.msg === 'alert webhook delivery failed; giving up')).toBe(false);
    expect(log.text()).toContain(new URL(rx.url).origin);
    expect(log.text()).not.toContain('s3cr3tT0ken');
    expect(ch.name).toBe(`webhook:${new URL(rx.url).origin}`);
  });

  it('backs off exponentially between attempts', async () => {
    const times: number[] = [];
    rx.respond = (_n, res) => {
      times.push(Date.now());
      res.statusCode = 503;
      res.end();
      return undefined;
    };
    const ch = webhookChannel({ url: rx.url, logger: capture().logger, retries: 3, baseDelayMs: 40 });
    ch.send(alert());
    await ch.idle();
    const gaps = times.slice(1).map((t, i) => t - (times[i] ?? 0));
    // 40, 80, 160 ms ±25 %.
    expect(gaps).toHaveLength(3);
    expect(gaps[0]).toBeGreaterThanOrEqual(28);
    expect(gaps[1]).toBeGreaterThanOrEqual(58);
    expect(gaps[2]).toBeGreaterThanOrEqual(118);
    expect(gaps[2] ?? 0).toBeGreaterThan(gaps[0] ?? 0);
  });

  it('gives up after `retries` retries and logs it', async () => {
    rx.respond = (_n, res) => {
      res.statusCode = 500;
      res.end();
      return undefined;
    };
    const log = capture();
    const ch = webhookChannel({ url: rx.url, logger: log.logger, retries: 2, baseDelayMs: 5 });
    ch.send(alert());
    await ch.idle();
    expect(rx.received).toHaveLength(3);
    const gaveUp = log.lines.filter((l) => l.msg === 'alert webhook delivery failed; giving up');
    expect(gaveUp).toHaveLength(1);
    expect(gaveUp[0]).toMatchObject({
      level: 50,
      alertLevel: 'warning',
      attempts: 3,
      error: 'HTTP 500',
      alertId: 'alert_test1',
    });
  });

  it('does not retry a 404 (a deleted or mistyped hook)', async () => {
    rx.respond = (_n, res) => {
      res.statusCode = 404;
      res.end('no_service');
      return undefined;
    };
    const ch = webhookChannel({ url: rx.url, logger: capture().logger, baseDelayMs: 5 });
    ch.send(alert());
    await ch.idle();
    expect(rx.received).toHaveLength(1);
  });

  it('retries network errors', async () => {
    const dead = rx.url;
    await rx.close();
    const log = capture();
    const ch = webhookChannel({ url: dead, logger: log.logger, retries: 1, baseDelayMs: 5 });
    ch.send(alert());
    await ch.idle();
    const lines = log.lines.filter((l) => typeof l.error === 'string');
    expect(lines).toHaveLength(2);
    expect(String(lines[1]?.error)).toMatch(/ECONNREFUSED/);
    rx = await startReceiver(); // for afterEach
  });

  it('a hanging receiver does not block send; each attempt is bounded by timeoutMs', async () => {
    rx.respond = () => 'hang';
    const log = capture();
    const ch = webhookChannel({
      url: rx.url,
      logger: log.logger,
      retries: 1,
      baseDelayMs: 5,
      timeoutMs: 150,
    });
    const t0 = performance.now();
    for (let i = 0; i < 3; i++) ch.send(alert({ id: `alert_${i}` }));
    expect(performance.now() - t0).toBeLessThan(100);
    await ch.idle();
    // Three alerts, one at a time, two attempts each, ~150 ms per attempt.
    expect(performance.now() - t0).toBeLessThan(3_000);
    expect(rx.received).toHaveLength(6);
    const gaveUp = log.lines.filter((l) => l.msg === 'alert webhook delivery failed; giving up');
    expect(gaveUp.map((l) => l.error)).toEqual(Array(3).fill('timed out after 150 ms'));
  });

  it('delivers in order, one at a time', async () => {
    let open = 0;
    let maxOpen = 0;
    rx.respond = (_n, res) => {
      open++;
      maxOpen = Math.max(maxOpen, open);
      setTimeout(() => {
        open--;
        res.end('ok');
      }, 10);
      return undefined;
    };
    const ch = webhookChannel({ url: rx.url, logger: capture().logger });
    for (const level of ['warning', 'critical', 'emergency'] as const) ch.send(alert({ level }));
    await ch.flush();
    expect(rx.received.map((r) => (JSON.parse(r.body) as WebhookBody).alert.level)).toEqual([
      'warning',
      'critical',
      'emergency',
    ]);
    expect(maxOpen).toBe(1);
  });

  it('bounds its queue, dropping the oldest waiting alert and logging it', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const delivered: string[] = [];
    const fetchImpl = (async (_url: string | URL | Request, init?: RequestInit) => {
      await gate;
      delivered.push((JSON.parse(String(init?.body)) as WebhookBody).alert.message);
      return new Response('ok');
    }) as typeof fetch;
    const log = capture();
    const ch = webhookChannel({
      url: 'https://hooks.example.com/x/secret',
      logger: log.logger,
      fetchImpl,
      maxQueue: 2,
    });
    for (let i = 1; i <= 5; i++) ch.send(alert({ message: `m${i}` }));
    expect(ch.pending).toBe(2);
    release();
    await ch.idle();
    // m1 was already in flight; m2 and m3 were dropped for m4 and m5.
    expect(delivered).toEqual(['m1', 'm4', 'm5']);
    const drops = log.lines.filter((l) => l.msg === 'alert webhook queue full; dropped the oldest alert');
    expect(drops).toHaveLength(2);
    expect(log.text()).not.toContain('secret');
  });

  it('refuses a bad URL at construction without echoing it', () => {
    expect(() => webhookChannel({ url: 'not a url s3cr3t', logger: capture().logger })).toThrow(
      /^webhook URL is not a valid URL$/,
    );
    expect(() => webhookChannel({ url: 'ftp://example.com/x', logger: capture().logger })).toThrow(/http/);
  });
});

// ---------------------------------------------------------------------------------------------
// Command

describe('commandChannel', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tokenwarden-alerts-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('runs the command through sh with the alert JSON on stdin and in the environment', async () => {
    const out = join(dir, 'stdin.json');
    const env = join(dir, 'env.txt');
    const ch = commandChannel({
      command: `cat > '${out}'; env | grep '^TOKENWARDEN_ALERT_' | sort > '${env}'`,
      logger: capture().logger,
    });
    const a = alert({ level: 'emergency', percent: 98.07, message: 'it\'s "quoted" $HOME `x`' });
    ch.send(a);
    await ch.idle();
    expect(JSON.parse(readFileSync(out, 'utf8'))).toEqual({
      id: 'alert_test1',
      level: 'emergency',
      budget: 'global',
      window: 'month',
      percent: 98.07,
      period: '2026-11-01T00:00:00Z',
      at: '2026-11-16T12:00:00Z',
      message: a.message,
    });
    const vars = Object.fromEntries(
      readFileSync(env, 'utf8')
        .trim()
        .split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    expect(vars).toMatchObject({
      TOKENWARDEN_ALERT_LEVEL: 'emergency',
      TOKENWARDEN_ALERT_BUDGET: 'global',
      TOKENWARDEN_ALERT_WINDOW: 'month',
      TOKENWARDEN_ALERT_PERCENT: '98.07',
      TOKENWARDEN_ALERT_MESSAGE: a.message,
    });
  });

  it('kills a command that outlives its timeout, whole process group included', async () => {
    const log = capture();
    const marker = join(dir, 'late');
    const ch = commandChannel({
      command: `(sleep 1; touch '${marker}') & sleep 5`,
      logger: log.logger,
      timeoutMs: 150,
    });
    const t0 = performance.now();
    ch.send(alert());
    expect(performance.now() - t0).toBeLessThan(50);
    await ch.idle();
    expect(performance.now() - t0).toBeLessThan(2_000);
    expect(log.lines.some((l) => l.msg === 'alert command timed out and was killed')).toBe(true);
    await new Promise((r) => setTimeout(r, 1_300));
    expect(() => readFileSync(marker)).toThrow();
  });

  it('logs a failing command with its stderr, and never throws', async () => {
    const log = capture();
    const ch = commandChannel({ command: 'echo "no route to pager" >&2; exit 3', logger: log.logger });
    expect(() => ch.send(alert())).not.toThrow();
    await ch.idle();
    const failed = log.lines.find((l) => l.msg === 'alert command failed');
    expect(failed).toMatchObject({ exitCode: 3, stderr: 'no route to pager', alertId: 'alert_test1' });
  });

  it('does not mind a command that ignores stdin', async () => {
    const log = capture();
    const ch = commandChannel({ command: 'exit 0', logger: log.logger });
    for (let i = 0; i < 3; i++) ch.send(alert({ message: 'x'.repeat(1_000_000) }));
    await ch.idle();
    expect(log.lines.filter((l) => (l.level as number) >= 50)).toEqual([]);
    expect(log.lines.filter((l) => l.msg === 'alert command succeeded')).toHaveLength(3);
  });

  it('passes a huge message whole on stdin and truncated in the environment', async () => {
    const out = join(dir, 'stdin.json');
    const env = join(dir, 'len');
    const ch = commandChannel({
      command: `cat > '${out}'; printf %s "$TOKENWARDEN_ALERT_MESSAGE" | wc -c > '${env}'`,
      logger: capture().logger,
    });
    ch.send(alert({ message: 'y'.repeat(300_000) }));
    await ch.idle();
    expect((JSON.parse(readFileSync(out, 'utf8')) as { message: string }).message).toHaveLength(300_000);
    const envBytes = Number(readFileSync(env, 'utf8').trim());
    expect(envBytes).toBeGreaterThan(8_000);
    expect(envBytes).toBeLessThan(8_200);
  });
});
