/**
 * Opening a SQLite store while another process holds a lock on the same new file. SQLite answers
 * some of the open's steps with SQLITE_BUSY at once, whatever the busy timeout (busy.ts): these tests
 * hold that lock from a real second process, so they fail if the store stops waiting it out.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LATEST_VERSION, openSqliteStore, type SqliteStore } from '../../src/store/index.js';
import { isBusy, retryBusy, SqliteLockedError } from '../../src/store/sqlite/busy.js';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

/**
 * A process that opens `path` (a new file, so still in rollback-journal mode), takes the write lock
 * with BEGIN IMMEDIATE, says "held", keeps it `holdMs`, then commits and exits.
 */
async function holdWriteLock(path: string, holdMs: number): Promise<ChildProcess> {
  const script = `
    import Database from 'better-sqlite3';
    const db = new Database(process.argv[1]);
    db.exec('BEGIN IMMEDIATE');
    db.exec('CREATE TABLE held_by_other (x)');
    console.log('held');
    setTimeout(() => { db.exec('COMMIT'); db.close(); }, Number(process.argv[2]));
  `;
  const child = spawn(process.execPath, ['--input-type=module', '--eval', script, path, String(holdMs)], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => {
      if (d.toString().includes('held')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`lock holder exited early (${code})`)));
  });
  return child;
}

describe('opening a SQLite store against a lock held by another process', () => {
  let dir: string;
  let path: string;
  const children: ChildProcess[] = [];
  const stores: SqliteStore[] = [];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tokenwarden-open-'));
    path = join(dir, 'new.db');
  });
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close();
    for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('SQLite itself answers the WAL switch BUSY at once, busy timeout or not (why the retry exists)', async () => {
    children.push(await holdWriteLock(path, 3000));
    const db = new Database(path, { timeout: 2000 });
    const started = performance.now();
    let error: unknown;
    try {
      db.pragma('journal_mode = WAL');
    } catch (err) {
      error = err;
    }
    const took = performance.now() - started;
    db.close();
    expect(isBusy(error)).toBe(true);
    // Far less than the 2 s timeout: the busy handler was never called.
    expect(took).toBeLessThan(1000);
  });

  it('waits for the other process and then opens, switches to WAL and migrates', async () => {
    const holder = await holdWriteLock(path, 600);
    children.push(holder);
    const started = performance.now();
    const store = openSqliteStore({ path, busyTimeoutMs: 5000 });
    stores.push(store);
    expect(performance.now() - started).toBeGreaterThan(200);
    expect(store.db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(store.db.pragma('user_version', { simple: true })).toBe(LATEST_VERSION);
    // The other process's committed work is still there, next to the schema.
    expect(
      store.db
        .prepare("SELECT COUNT(*) FROM sqlite_master WHERE name IN ('held_by_other', 'ledger')")
        .pluck()
        .get(),
    ).toBe(2);
    await once(holder, 'exit');
  });

  it('gives up after the bound with a message naming the file and the process holding it', async () => {
    const holder = await holdWriteLock(path, 20_000);
    children.push(holder);
    const started = performance.now();
    let error: unknown;
    try {
      stores.push(openSqliteStore({ path, busyTimeoutMs: 700 }));
    } catch (err) {
      error = err;
    }
    const took = performance.now() - started;
    expect(error).toBeInstanceOf(SqliteLockedError);
    const message = (error as Error).message;
    expect(message).toContain(path);
    expect(message).toContain('switching it to WAL');
    expect(message).toContain(`pid ${holder.pid}`);
    expect(took).toBeGreaterThanOrEqual(650);
    expect(took).toBeLessThan(5000);
    // The file is left as the holder has it: nothing half-done by us.
    holder.kill('SIGKILL');
    await once(holder, 'exit');
    const s = openSqliteStore({ path });
    stores.push(s);
    expect(s.db.pragma('user_version', { simple: true })).toBe(LATEST_VERSION);
  });
});

describe('retryBusy', () => {
  const busy = () => Object.assign(new Error('database is locked'), { code: 'SQLITE_BUSY' });

  it('repeats a BUSY step with a growing, bounded wait and returns its result', () => {
    let clock = 0;
    const waits: number[] = [];
    let calls = 0;
    const result = retryBusy(
      () => {
        calls++;
        if (calls < 6) throw busy();
        return 'done';
      },
      {
        path: 'x.db',
        step: 'testing',
        boundMs: 10_000,
        now: () => clock,
        sleep: (ms) => {
          waits.push(ms);
          clock += ms;
        },
      },
    );
    expect(result).toBe('done');
    expect(calls).toBe(6);
    expect(waits).toHaveLength(5);
    for (const w of waits) expect(w).toBeLessThanOrEqual(150);
    // Doubling (with jitter of 0.5-1.5x): the last wait is longer than the first.
    expect(waits[4] ?? 0).toBeGreaterThan(waits[0] ?? 0);
  });

  it('throws any other error at once, and SqliteLockedError once the bound has passed', () => {
    let calls = 0;
    const other = new Error('no such table');
    expect(() =>
      retryBusy(
        () => {
          calls++;
          throw other;
        },
        { path: 'x.db', step: 'testing', boundMs: 1000 },
      ),
    ).toThrow(other);
    expect(calls).toBe(1);

    let clock = 0;
    expect(() =>
      retryBusy(
        () => {
          throw Object.assign(new Error('snapshot'), { code: 'SQLITE_BUSY_SNAPSHOT' });
        },
        {
          path: 'x.db',
          step: 'testing',
          boundMs: 1000,
          now: () => clock,
          sleep: (ms) => {
            clock += ms;
          },
        },
      ),
    ).toThrow(SqliteLockedError);
    expect(clock).toBeLessThanOrEqual(1000);
  });
});
