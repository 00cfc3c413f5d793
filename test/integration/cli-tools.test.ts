import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type Anthropic from '@anthropic-ai/sdk';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { progressBar } from '../../src/cli/progress.js';
import type { SummaryDoc } from '../../src/service/summary.js';
import type { LedgerRow } from '../../src/store/ports.js';
import { openSqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { type Harness, startHarness, waitUntil } from '../support/harness.js';

// These tests run the real executable (bin/tokenwarden.js → dist/, built by `npm run build`).
const BIN = resolve(import.meta.dirname, '../../bin/tokenwarden.js');
const MODEL = 'claude-sonnet-4-5';
const BUDGETS = [
  { name: 'global', month: 100_000, day: 50_000, hour: 20_000, request: 10_000 },
  { name: 'researcher', agent: 'researcher', month: 20_000 },
];

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The environment without any tokenwarden setting or colour preference of the machine running the tests. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('TOKENWARDEN_') && !['ANTHROPIC_API_KEY', 'NO_COLOR', 'FORCE_COLOR'].includes(k))
      env[k] = v;
  }
  return { ...env, ...extra };
}

/**
 * Run `tokenwarden …` without blocking this process (the gateway under test runs in it). stdin is a
 * pipe, never a terminal.
 */
function tw(args: string[], opts: { cwd: string; env?: Record<string, string> }): Promise<Run> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: opts.cwd,
      env: cleanEnv(opts.env),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 25_000);
    child.on('error', rej);
    child.on('close', (code) => {
      clearTimeout(timer);
      res({ code, stdout, stderr });
    });
    child.stdin.end();
  });
}

/** The summary without what differs between two reads a moment apart. */
function stable(
  doc: SummaryDoc,
): Omit<SummaryDoc, 'generatedAt' | 'forecast'> & { forecastBudget: string | null } {
  const { generatedAt: _g, forecast, ...rest } = doc;
  return { ...rest, forecastBudget: forecast.budget };
}

function expectSameSummary(actual: SummaryDoc, expected: SummaryDoc): void {
  expect(stable(actual)).toEqual(stable(expected));
  // The month-end projection moves with the clock (a fraction of a token per second).
  expect(Math.abs((actual.forecast.monthEnd ?? 0) - (expected.forecast.monthEnd ?? 0))).toBeLessThanOrEqual(
    1,
  );
}

function spend(client: Anthropic, agent: string, out: number, model = MODEL) {
  return client.messages.create(
    { model, max_tokens: out, messages: [{ role: 'user', content: 'Hello, gateway!' }] },
    { headers: { 'x-fake-output-tokens': String(out), 'x-tokenwarden-agent': agent } },
  );
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

describe('tokenwarden status, halt, resume, reset, restore', () => {
  let h: Harness;
  let cfg: string;
  /** The backup of the first reset (restored already). */
  let firstBackup = '';
  /** Run a command on the harness's database (through its config file). */
  const local = (...args: string[]) => tw([...args, '--config', cfg], { cwd: h.dir });
  const localSummary = async (): Promise<SummaryDoc> => {
    const r = await local('status', '--json');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    return JSON.parse(r.stdout) as SummaryDoc;
  };

  beforeAll(async () => {
    h = await startHarness({ budgets: BUDGETS });
    cfg = join(h.dir, 'tokenwarden.config.json');
    writeFileSync(cfg, JSON.stringify({ database: h.config.database, budgets: BUDGETS }));
    const client = h.client({ maxRetries: 0 });
    await spend(client, 'researcher', 400);
    await spend(client, 'writer', 700, 'claude-opus-4-1');
    await spend(client, 'researcher', 100, 'claude-haiku-4-5');
  });
  afterAll(async () => {
    await h?.close();
  });

  it('status --json prints the GET /api/token-usage/summary document', async () => {
    const doc = await localSummary();
    expectSameSummary(doc, await h.summary());
    const global = doc.budgets.find((b) => b.name === 'global');
    expect(global?.windows.month.used).toBeGreaterThan(1200);
    expect(global?.windows.month.limit).toBe(100_000);
  });

  it('status shows a bar, used / limit, percent and reset time per window, the status, top agents and models', async () => {
    const doc = await localSummary();
    const r = await local('status');
    expect(r.code).toBe(0);
    const out = r.stdout;
    const month = doc.budgets[0]?.windows.month;
    const used = (month?.used ?? -1).toLocaleString('en-US');
    expect(out).toMatch(/Status: OK/);
    for (const kind of ['month', 'day', 'hour']) {
      const w = doc.budgets[0]?.windows[kind as 'month'];
      const line = out.split('\n').find((l) => l.trimStart().startsWith(kind));
      expect(line, kind).toBeDefined();
      expect(line).toMatch(/[█▏▎▍▌▋▊▉]*░+/);
      expect(line).toContain(
        `${(w?.used ?? -1).toLocaleString('en-US')} / ${(w?.limit ?? -1).toLocaleString('en-US')}`,
      );
      expect(line).toContain(`${(w?.percent ?? -1).toFixed(1)}%`);
      expect(line).toContain(`(${w?.resetsAt.slice(5, 10)} ${w?.resetsAt.slice(11, 16)}Z)`);
    }
    expect(out).toContain(`${used} / 100,000`);
    expect(out).toMatch(/researcher\s+OK\s+· agent researcher/);
    expect(out).toMatch(
      /Top agents this month\n\s+writer\s+[\d,]+ tokens\s+1 request\n\s+researcher\s+[\d,]+ tokens\s+2 requests\n/,
    );
    expect(out).toMatch(/Top models this month\n[\s\S]*claude-opus-4-1/);
    // Not a terminal: no colour.
    expect(out).not.toContain('\x1b[');
  });

  it('status colours the status with FORCE_COLOR, and never with NO_COLOR', async () => {
    const forced = await tw(['status', '--config', cfg], { cwd: h.dir, env: { FORCE_COLOR: '1' } });
    expect(forced.stdout).toContain('\x1b[32m\x1b[1mOK'); // green
    const none = await tw(['status', '--config', cfg], {
      cwd: h.dir,
      env: { FORCE_COLOR: '1', NO_COLOR: '1' },
    });
    expect(none.code).toBe(0);
    expect(none.stdout).not.toContain('\x1b[');
  });

  it('status --url asks a running gateway', async () => {
    const r = await tw(['status', '--json', '--url', h.gateway.url], { cwd: h.dir });
    expect(r.code).toBe(0);
    expectSameSummary(JSON.parse(r.stdout) as SummaryDoc, await localSummary());
    const human = await tw(['status', '--url', h.gateway.url], { cwd: h.dir });
    expect(human.stdout).toContain(`gateway ${h.gateway.url}`);
    expect(human.stdout).toContain('100,000');
  });

  it('refuses bad targets clearly: a missing database, no gateway, conflicting flags', async () => {
    const missing = join(h.dir, 'nowhere.db');
    const r1 = await tw(['status', '--db', missing], { cwd: h.dir });
    expect(r1.code).toBe(1);
    expect(r1.stderr).toContain(`no database at ${missing}`);
    expect(existsSync(missing)).toBe(false);

    const port = await freePort();
    const r2 = await tw(['status', '--url', `http://127.0.0.1:${port}`], { cwd: h.dir });
    expect(r2.code).toBe(1);
    expect(r2.stderr).toMatch(/cannot reach the gateway http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED/);

    const r3 = await tw(['status', '--url', h.gateway.url, '--db', missing], { cwd: h.dir });
    expect(r3.code).toBe(2);
    const r4 = await tw(['reset', '--window', 'week', '--yes', '--config', cfg], { cwd: h.dir });
    expect(r4.code).toBe(2);
  });

  it('halt refuses agents until resume, on the database a gateway is running on', async () => {
    const halted = await local('halt', '--budget', 'global', '--reason', 'cli test');
    expect(halted.code).toBe(0);
    expect(halted.stdout).toContain('halted budget global');
    const doc = await localSummary();
    expect(doc.status).toBe('emergency');
    expect(doc.budgets[0]?.emergencyState).toMatchObject({ reason: 'cli test', manual: true, until: null });
    const client = h.client({ maxRetries: 0 });
    // The gateway reads emergency states every second.
    await waitUntil(async () => {
      try {
        await spend(client, 'writer', 5);
        return false;
      } catch (err) {
        return (err as { status?: number }).status === 429;
      }
    }, 5000);

    expect((await local('halt', '--budget', 'nope')).code).toBe(2);

    const resumed = await local('resume', '--budget', 'global');
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toMatch(/lifted 1 emergency/);
    expect((await localSummary()).budgets[0]?.emergency).toBe(false);
    await waitUntil(async () => {
      try {
        await spend(client, 'writer', 5);
        return true;
      } catch {
        return false;
      }
    }, 5000);
    expect((await local('resume')).stdout).toMatch(/no emergency was in force/);
  });

  it('reset without a terminal and without --yes changes nothing, and writes no backup', async () => {
    const before = await localSummary();
    const r = await local('reset');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/refusing to reset without confirmation.*--yes/);
    expectSameSummary(await localSummary(), before);
    expect(existsSync(join(h.dir, 'tokenwarden-backups'))).toBe(false);
  });

  it('reset --yes writes a backup and zeroes usage; restore brings it back exactly, emergencies included', async () => {
    await local('halt', '--budget', 'researcher', '--reason', 'over plan');
    const before = await localSummary();
    expect(before.budgets.find((b) => b.name === 'researcher')?.emergency).toBe(true);
    const rows = (await h.ledger()).length;

    const r = await local('reset', '--yes');
    expect(r.code).toBe(0);
    const backup = /backup written: (\S+\.db) /.exec(r.stdout)?.[1] ?? '';
    expect(backup.startsWith(join(h.dir, 'tokenwarden-backups', 'tokenwarden-'))).toBe(true);
    expect(existsSync(backup)).toBe(true);
    firstBackup = backup;
    expect(r.stdout).toContain('reset global (month, day, hour), researcher (month, day, hour)');
    expect(r.stdout).toContain(`undo with: tokenwarden restore ${backup}`);

    const after = await localSummary();
    for (const b of after.budgets) {
      for (const w of Object.values(b.windows)) expect(w.used).toBe(0);
      expect(b.emergency).toBe(false);
    }
    expect(after.status).toBe('ok');
    // The ledger is history: a reset keeps it.
    expect((await h.ledger()).length).toBe(rows);

    const restored = await local('restore', backup, '--yes');
    expect(restored.stderr).toBe('');
    expect(restored.code).toBe(0);
    expect(restored.stdout).toContain('restore puts usage back into global (month +');
    expectSameSummary(await localSummary(), before);
    // The running gateway sees it too (emergency states within a second).
    await waitUntil(async () => {
      try {
        expectSameSummary(await h.summary(), before);
        return true;
      } catch {
        return false;
      }
    });

    // Once only: a second restore would count the usage twice.
    const again = await local('restore', backup, '--yes');
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already undone/);
    expectSameSummary(await localSummary(), before);
    await local('resume');
  });

  it('restore keeps the usage recorded since the reset', async () => {
    const before = await localSummary();
    const hourBefore = before.budgets[0]?.windows.hour.used ?? -1;
    const r = await local('reset', '--yes', '--json', '--budget', 'global', '--window', 'hour');
    expect(r.code).toBe(0);
    const { backup, reset } = JSON.parse(r.stdout) as {
      backup: { path: string; format: string; restorable: boolean };
      reset: { series: string[] };
    };
    expect(backup).toMatchObject({ format: 'sqlite', restorable: true });
    expect(reset.series).toEqual(['global|hour']);
    const mid = await localSummary();
    expect(mid.budgets[0]?.windows.hour.used).toBe(0);
    expect(mid.budgets[0]?.windows.month.used).toBe(before.budgets[0]?.windows.month.used);

    await spend(h.client({ maxRetries: 0 }), 'writer', 50);
    const spent = (await localSummary()).budgets[0]?.windows.hour.used ?? -1;
    expect(spent).toBeGreaterThan(50);

    const restored = await local('restore', backup.path, '--yes', '--json');
    expect(restored.code).toBe(0);
    expect(JSON.parse(restored.stdout)).toMatchObject({
      restored: { bySeries: { 'global|hour': hourBefore } },
    });
    const after = await localSummary();
    expect(after.budgets[0]?.windows.hour.used).toBe(hourBefore + spent);
    expect(after.budgets[0]?.windows.month.used).toBe((before.budgets[0]?.windows.month.used ?? 0) + spent);
  });

  it('restore refuses what it cannot apply', async () => {
    const notBackup = await local('restore', h.config.database, '--yes');
    expect(notBackup.code).toBe(1);
    expect(notBackup.stderr).toMatch(/not a backup written by tokenwarden reset/);
    const jsonl = join(h.dir, 'x.jsonl');
    writeFileSync(jsonl, '{"type":"backup"}\n');
    expect((await local('restore', jsonl, '--yes')).stderr).toMatch(/not a SQLite backup/);
    expect((await local('restore', join(h.dir, 'none.db'), '--yes')).stderr).toMatch(/no such backup/);
    // A backup restores only onto the database it was taken of.
    const other = join(h.dir, 'other.db');
    await openSqliteStore({ path: other }).close();
    const elsewhere = await tw(['restore', firstBackup, '--yes', '--db', other], { cwd: h.dir });
    expect(elsewhere.code).toBe(1);
    expect(elsewhere.stderr).toMatch(/was not made on this database/);
    const remote = await tw(['restore', jsonl, '--yes', '--url', h.gateway.url], { cwd: h.dir });
    expect(remote.code).toBe(2);
    expect(remote.stderr).toMatch(/restore works on the database file/);
  });

  it('reset --url writes a JSONL record first, and says it cannot be restored', async () => {
    const dir = join(h.dir, 'remote-backups');
    const rows = (await h.ledger()).length;
    const r = await tw(['reset', '--yes', '--url', h.gateway.url, '--window', 'day', '--backup-dir', dir], {
      cwd: h.dir,
    });
    expect(r.code).toBe(0);
    const file = /backup written: (\S+\.jsonl) /.exec(r.stdout)?.[1] ?? '';
    expect(file.startsWith(dir)).toBe(true);
    expect(r.stdout).toMatch(/cannot apply it/);
    const lines = readFileSync(file, 'utf8')
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string });
    expect(lines[0]).toMatchObject({ type: 'backup', restorable: false });
    expect(lines[1]?.type).toBe('summary');
    expect(lines.filter((l) => l.type === 'request')).toHaveLength(rows);
    expect((await localSummary()).budgets[0]?.windows.day.used).toBe(0);
  });
});

describe('tokenwarden status --url with an admin token', () => {
  let h: Harness;
  const TOKEN = 'test-admin-token-123';
  beforeAll(async () => {
    h = await startHarness({ budgets: BUDGETS, auth: { adminToken: TOKEN } });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('401 without the token is a clear error and exit code 1', async () => {
    const r = await tw(['status', '--url', h.gateway.url], { cwd: h.dir });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/needs its admin token \(401\): pass --token or set TOKENWARDEN_ADMIN_TOKEN/);
    const wrong = await tw(['status', '--url', h.gateway.url, '--token', 'not-the-token'], { cwd: h.dir });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/did not accept the admin token/);
  });

  it('works with --token or TOKENWARDEN_ADMIN_TOKEN', async () => {
    const flag = await tw(['status', '--json', '--url', h.gateway.url, '--token', TOKEN], { cwd: h.dir });
    expect(flag.code).toBe(0);
    expect((JSON.parse(flag.stdout) as SummaryDoc).budgets.map((b) => b.name)).toEqual([
      'global',
      'researcher',
    ]);
    const env = await tw(['status', '--url', h.gateway.url], {
      cwd: h.dir,
      env: { TOKENWARDEN_ADMIN_TOKEN: TOKEN },
    });
    expect(env.code).toBe(0);
    expect(env.stdout).toContain('100,000');
  });
});

describe('tokenwarden export', () => {
  let dir: string;
  let db: string;
  const T0 = Date.parse('2025-03-01T00:00:00Z');
  const N = 2345;
  let rows: LedgerRow[];

  /** Seven rows share each millisecond, so pages (1000 rows) end inside a millisecond. */
  function row(i: number): LedgerRow {
    return {
      id: `req_${String(i).padStart(5, '0')}`,
      ts: T0 + Math.floor(i / 7) * 1000,
      agent: i % 2 ? 'researcher' : 'writer',
      keyId: i % 3 ? null : 'key_abc',
      model: i % 5 ? MODEL : null,
      stream: i % 2 === 0,
      outcome: i % 4 ? 'ok' : 'blocked',
      status: i % 4 ? 200 : 429,
      reserved: 100 + i,
      inputTokens: i,
      outputTokens: 2 * i,
      cacheCreationTokens: 3,
      cacheReadTokens: 4,
      counted: 3 * i + 7,
      costUsd: i % 4 ? i / 1000 : null,
      latencyMs: i % 4 ? 12.5 : null,
      upstreamRequestId: i % 4 ? `req_up_${i}` : null,
      blockReason: i % 4 ? null : 'budget=global; window=hour, "over", \nlimit',
      usageSource: i % 4 ? 'reported' : 'none',
      metadata: { tags: { team: 'a,b' }, n: i },
    };
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tokenwarden-cli-export-'));
    db = join(dir, 'tw.db');
    const store = openSqliteStore({ path: db });
    rows = Array.from({ length: N }, (_, i) => row(i));
    for (const r of rows) await store.appendLedger(r);
    await store.close();
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  const inRange = (since: number, until: number) => rows.filter((r) => r.ts >= since && r.ts < until);

  it('jsonl: every row of the time range once, newest first, every field', async () => {
    const since = T0 + 100_000;
    const until = T0 + 250_000;
    const r = await tw(
      ['export', '--format', 'jsonl', '--db', db, '--since', String(since), '--until', String(until)],
      {
        cwd: dir,
      },
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const got = r.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as LedgerRow & { at: string });
    const expected = inRange(since, until);
    expect(expected).toHaveLength(1050);
    expect(got).toHaveLength(expected.length);
    const byId = new Map(expected.map((e) => [e.id, e]));
    for (const g of got) {
      const { at, ...rest } = g;
      expect(rest).toEqual(byId.get(g.id));
      expect(at).toBe(new Date(g.ts).toISOString());
    }
    expect(new Set(got.map((g) => g.id)).size).toBe(expected.length);
    const ts = got.map((g) => g.ts);
    expect(ts).toEqual([...ts].sort((a, b) => b - a));
  });

  it('jsonl: the whole ledger across several pages', async () => {
    const r = await tw(['export', '--format', 'jsonl', '--db', db], { cwd: dir });
    expect(r.code).toBe(0);
    const ids = r.stdout
      .trimEnd()
      .split('\n')
      .map((l) => (JSON.parse(l) as LedgerRow).id);
    expect(ids).toHaveLength(N);
    expect(new Set(ids).size).toBe(N);
  });

  it('csv: header, one line per row, quoting and metadata as JSON; to a file, with ISO times', async () => {
    const since = T0 + 7_000;
    const until = T0 + 20_000;
    const out = join(dir, 'ledger.csv');
    const r = await tw(
      [
        'export',
        '--format',
        'csv',
        '--db',
        db,
        '--since',
        new Date(since).toISOString(),
        '--until',
        new Date(until).toISOString(),
        '--out',
        out,
      ],
      { cwd: dir },
    );
    expect(r.code).toBe(0);
    const expected = inRange(since, until);
    expect(r.stdout).toBe(`exported ${expected.length} rows to ${out}\n`);
    const records = parseCsv(readFileSync(out, 'utf8'));
    const [header, ...data] = records;
    expect(header).toEqual([
      'id',
      'ts',
      'at',
      'agent',
      'keyId',
      'model',
      'stream',
      'outcome',
      'status',
      'reserved',
      'inputTokens',
      'outputTokens',
      'cacheCreationTokens',
      'cacheReadTokens',
      'counted',
      'costUsd',
      'latencyMs',
      'upstreamRequestId',
      'blockReason',
      'usageSource',
      'metadata',
    ]);
    expect(data).toHaveLength(expected.length);
    const byId = new Map(expected.map((e) => [e.id, e]));
    for (const d of data) {
      const rec = Object.fromEntries((header ?? []).map((h, i) => [h, d[i] ?? '']));
      const e = byId.get(rec.id ?? '');
      expect(e).toBeDefined();
      if (!e) continue;
      expect(rec).toEqual({
        id: e.id,
        ts: String(e.ts),
        at: new Date(e.ts).toISOString(),
        agent: e.agent,
        keyId: e.keyId ?? '',
        model: e.model ?? '',
        stream: String(e.stream),
        outcome: e.outcome,
        status: String(e.status),
        reserved: String(e.reserved),
        inputTokens: String(e.inputTokens),
        outputTokens: String(e.outputTokens),
        cacheCreationTokens: String(e.cacheCreationTokens),
        cacheReadTokens: String(e.cacheReadTokens),
        counted: String(e.counted),
        costUsd: e.costUsd === null ? '' : String(e.costUsd),
        latencyMs: e.latencyMs === null ? '' : String(e.latencyMs),
        upstreamRequestId: e.upstreamRequestId ?? '',
        blockReason: e.blockReason ?? '',
        usageSource: e.usageSource,
        metadata: JSON.stringify(e.metadata),
      });
    }
    expect(data.some((d) => d[18]?.includes('"over", \nlimit'))).toBe(true);
  });

  it('rejects a bad time range', async () => {
    const bad = await tw(['export', '--db', db, '--since', 'yesterday-ish'], { cwd: dir });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--since: expected ISO 8601 or epoch ms/);
    const empty = await tw(['export', '--db', db, '--since', String(T0), '--until', String(T0)], {
      cwd: dir,
    });
    expect(empty.code).toBe(2);
  });
});

describe('progress bar', () => {
  function fakeStream(isTTY: boolean) {
    const writes: string[] = [];
    const stream = { isTTY, columns: 80, write: (s: string) => writes.push(s) > 0 };
    return { writes, stream: stream as unknown as NodeJS.WriteStream };
  }

  it('draws on a terminal once the operation takes long, at most ten times a second, and clears itself', () => {
    let t = 0;
    const { writes, stream } = fakeStream(true);
    const p = progressBar({ label: 'exporting', unit: 'rows', stream, now: () => t, delayMs: 300 });
    p.update(100, 1000);
    t = 200;
    p.update(200, 1000);
    expect(writes).toEqual([]);
    t = 400;
    p.update(400, 1000);
    t = 450;
    p.update(450, 1000);
    expect(writes).toHaveLength(1);
    expect(writes[0]?.startsWith('\rexporting ')).toBe(true);
    expect(writes[0]?.endsWith('\x1b[K')).toBe(true);
    expect(writes[0]).toMatch(/ [█▏▎▍▌▋▊▉]+░+ {2}40% 400\/1,000 rows {2}\d+s left/);
    expect((writes[0] ?? '').length).toBeLessThan(80 + 8);
    p.done();
    expect(writes.at(-1)).toBe('\r\x1b[K');
  });

  it('draws nothing when stderr is not a terminal', () => {
    let t = 0;
    const { writes, stream } = fakeStream(false);
    const p = progressBar({ label: 'exporting', unit: 'rows', stream, now: () => t });
    t = 10_000;
    p.update(5, 10);
    p.done();
    expect(writes).toEqual([]);
  });
});

/** A small RFC 4180 reader for checking the export. */
function parseCsv(text: string): string[][] {
  const records: string[][] = [];
  let field = '';
  let record: string[] = [];
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      record.push(field);
      field = '';
    } else if (c === '\r' && text[i + 1] === '\n') {
      record.push(field);
      records.push(record);
      record = [];
      field = '';
      i++;
    } else field += c;
  }
  if (field !== '' || record.length > 0) {
    record.push(field);
    records.push(record);
  }
  return records;
}
