import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Anthropic from '@anthropic-ai/sdk';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { createLogger } from '../../src/logger.js';
import { type Gateway, startGateway } from '../../src/main.js';
import type { SummaryDoc } from '../../src/service/summary.js';
import { type FakeUpstream, startFakeUpstream } from '../../src/sim/upstream.js';
import type { LedgerRow } from '../../src/store/ports.js';

/** Budgets large enough that nothing is blocked unless a test means it. */
export const ROOMY = [
  { name: 'global', month: 10_000_000, day: 1_000_000, hour: 1_000_000, request: 100_000 },
];

export interface Harness {
  upstream: FakeUpstream;
  gateway: Gateway;
  config: Config;
  dir: string;
  /** The official SDK pointed at the gateway. */
  client(opts?: ConstructorParameters<typeof Anthropic>[0]): Anthropic;
  summary(): Promise<SummaryDoc>;
  ledger(): Promise<LedgerRow[]>;
  /** Stop the gateway and start a new one on the same database (a restart). */
  restart(): Promise<void>;
  /** fetch an operator or agent path on the gateway. */
  api(path: string, init?: RequestInit): Promise<Response>;
  close(): Promise<void>;
}

/** Start a fake upstream and the real gateway (temp SQLite, random port) wired to it. */
export async function startHarness(
  configInput: Record<string, unknown> = {},
  opts: { upstream?: FakeUpstream } = {},
): Promise<Harness> {
  const upstream = opts.upstream ?? (await startFakeUpstream());
  const dir = mkdtempSync(join(tmpdir(), 'tokenwarden-test-'));
  const config = parseConfig({
    port: 0,
    database: join(dir, 'tokenwarden.db'),
    upstream: upstream.url,
    logLevel: 'silent',
    ...configInput,
  });
  let gateway = await startGateway(config, { logger: createLogger('silent') });
  return {
    upstream,
    get gateway() {
      return gateway;
    },
    config,
    dir,
    client: (o = {}) => new Anthropic({ baseURL: gateway.url, apiKey: 'sk-test-key', ...o }),
    async summary() {
      const res = await fetch(`${gateway.url}/api/token-usage/summary`);
      if (res.status !== 200) throw new Error(`summary answered ${res.status}`);
      return (await res.json()) as SummaryDoc;
    },
    ledger: () => gateway.store.queryLedger({ limit: 100_000 }),
    async restart() {
      await gateway.close({ graceMs: 1000 });
      gateway = await startGateway({ ...config, port: 0 }, { logger: createLogger('silent') });
    },
    api: (path, init) => fetch(`${gateway.url}${path}`, init),
    async close() {
      await gateway.close({ graceMs: 1000 });
      if (!opts.upstream) await upstream.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Total tokens the fake provider billed (what the budgets must never exceed). */
export function billTotal(u: FakeUpstream): number {
  const b = u.bill;
  return b.inputTokens + b.outputTokens + b.cacheCreationTokens + b.cacheReadTokens;
}

export function rowTotal(r: LedgerRow): number {
  return r.inputTokens + r.outputTokens + r.cacheCreationTokens + r.cacheReadTokens;
}

/** A local HTTP server that records JSON POSTs (a webhook receiver). */
export async function startReceiver(): Promise<{
  url: string;
  bodies: unknown[];
  waitFor(n: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}> {
  const { createServer } = await import('node:http');
  const bodies: unknown[] = [];
  const server = createServer((req, res) => {
    let data = '';
    req.on('data', (c: Buffer) => {
      data += c.toString();
    });
    req.on('end', () => {
      bodies.push(JSON.parse(data));
      res.writeHead(200).end('ok');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}/hooks/T000/B000`,
    bodies,
    async waitFor(n, timeoutMs = 5000) {
      const end = Date.now() + timeoutMs;
      while (bodies.length < n) {
        if (Date.now() > end) throw new Error(`receiver got ${bodies.length} of ${n} posts`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** Poll until `check` holds. */
export async function waitUntil(check: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('condition not met in time');
}
