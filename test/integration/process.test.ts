import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Anthropic from '@anthropic-ai/sdk';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SummaryDoc } from '../../src/service/summary.js';
import { type FakeUpstream, startFakeUpstream } from '../../src/sim/upstream.js';
import { openSqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { billTotal } from '../support/harness.js';
import { BIN, serve } from '../support/serve.js';

// These tests run the real executable (bin/tokenwarden.js → dist/), as an operator would.
const MODEL = 'claude-sonnet-5-5';
const hello = [{ role: 'user' as const, content: 'Hello from a child process' }];

let upstream: FakeUpstream;
let dir: string;
let cfg: string;

beforeAll(async () => {
  upstream = await startFakeUpstream();
  dir = mkdtempSync(join(tmpdir(), 'tokenwarden-proc-'));
  cfg = join(dir, 'config.json');
  writeFileSync(cfg, JSON.stringify({ budgets: [{ name: 'global', month: 1_000_000 }], logLevel: 'warn' }));
});
afterAll(async () => {
  await upstream.close();
  rmSync(dir, { recursive: true, force: true });
});

async function summary(url: string): Promise<SummaryDoc> {
  return (await (await fetch(`${url}/api/token-usage/summary`)).json()) as SummaryDoc;
}

describe('the tokenwarden process', () => {
  it('refuses a bad config with exit code 2, naming every bad field and its source', async () => {
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ port: 'x', budgets: [{ name: 'g', hourly: 5 }] }));
    const proc = spawn(process.execPath, [BIN, 'serve', '--config', bad], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TOKENWARDEN_CYCLE_DAY: '40' },
    });
    let err = '';
    proc.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const [code] = await once(proc, 'exit');
    expect(code).toBe(2);
    expect(err).toContain('port: ');
    expect(err).toContain('budgets.0.hourly: unknown setting');
    expect(err).toContain('cycleDay: ');
    expect(err).toContain('(from env TOKENWARDEN_CYCLE_DAY)');
    expect(err).toContain(`(from file ${bad})`);
  });

  it('keeps all usage across SIGTERM: in-flight streams finish and are ledgered before exit', async () => {
    upstream.reset();
    const db = join(dir, 'sigterm.db');
    const gw = await serve(['--port', '0', '--db', db, '--upstream', upstream.url, '--config', cfg]);
    const client = new Anthropic({ baseURL: gw.url, apiKey: 'sk-proc', maxRetries: 0 });
    for (let i = 0; i < 3; i++)
      await client.messages.create({ model: MODEL, max_tokens: 20, messages: hello });
    const stream = client.messages.stream(
      { model: MODEL, max_tokens: 50, messages: hello },
      { headers: { 'x-fake-output-tokens': '30', 'x-fake-event-delay-ms': '20' } },
    );
    const firstText = new Promise<void>((r) => stream.once('text', () => r()));
    await firstText;
    gw.proc.kill('SIGTERM');
    const final = await stream.finalMessage();
    expect(final.usage.output_tokens).toBe(30);
    expect(await gw.exited).toBe(0);

    const again = await serve(['--port', '0', '--db', db, '--upstream', upstream.url, '--config', cfg]);
    const month = (await summary(again.url)).budgets[0]?.windows.month;
    expect(month?.used).toBe(billTotal(upstream));
    expect(month?.reserved).toBe(0);
    again.proc.kill('SIGTERM');
    await again.exited;
  });

  it('after kill -9 every answered request has its row, and the in-flight hold is charged in full', async () => {
    upstream.reset();
    const db = join(dir, 'kill9.db');
    const gw = await serve(['--port', '0', '--db', db, '--upstream', upstream.url, '--config', cfg]);
    const client = new Anthropic({ baseURL: gw.url, apiKey: 'sk-proc', maxRetries: 0 });
    const answered: string[] = [];
    for (let i = 0; i < 5; i++) {
      const { response } = await client.messages
        .create({ model: MODEL, max_tokens: 20, messages: hello })
        .withResponse();
      answered.push(response.headers.get('x-tokenwarden-request-id') ?? '');
    }
    // One stream still in flight when the process dies.
    const inflight = client.messages.stream(
      { model: MODEL, max_tokens: 400, messages: hello },
      { headers: { 'x-fake-output-tokens': '300', 'x-fake-event-delay-ms': '50' } },
    );
    const inflightEnded = inflight.finalMessage().catch((e: unknown) => e);
    await new Promise<void>((r) => inflight.once('text', () => r()));
    const reserved = Number((await summary(gw.url)).budgets[0]?.windows.month.reserved);
    expect(reserved).toBeGreaterThanOrEqual(400);
    gw.proc.kill('SIGKILL');
    await gw.exited;
    expect(await inflightEnded).toBeInstanceOf(Error);

    const again = await serve(['--port', '0', '--db', db, '--upstream', upstream.url, '--config', cfg]);
    const month = (await summary(again.url)).budgets[0]?.windows.month;
    expect(month?.reserved).toBe(0);
    // Never under-counted: the interrupted request is charged its whole hold.
    expect(month?.used).toBeGreaterThanOrEqual(billTotal(upstream));
    again.proc.kill('SIGTERM');
    expect(await again.exited).toBe(0);

    const store = openSqliteStore({ path: db });
    try {
      const rows = await store.queryLedger({ limit: 100 });
      for (const id of answered) expect(rows.find((r) => r.id === id)?.outcome).toBe('ok');
      const interrupted = rows.filter((r) => r.outcome === 'interrupted');
      expect(interrupted).toHaveLength(1);
      expect(interrupted[0]).toMatchObject({
        usageSource: 'estimated',
        counted: reserved,
        outputTokens: 400,
      });
      expect(await store.holdCount()).toBe(0);
    } finally {
      await store.close();
    }
  });
});
