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
  const gateway = await startGateway(config, { logger: createLogger('silent') });
  return {
    upstream,
    gateway,
    config,
    dir,
    client: (o = {}) => new Anthropic({ baseURL: gateway.url, apiKey: 'sk-test-key', ...o }),
    async summary() {
      const res = await fetch(`${gateway.url}/api/token-usage/summary`);
      if (res.status !== 200) throw new Error(`summary answered ${res.status}`);
      return (await res.json()) as SummaryDoc;
    },
    ledger: () => gateway.store.queryLedger({ limit: 100_000 }),
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
