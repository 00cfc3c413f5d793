/**
 * Eight processes of the real executable, gateways and CLI commands mixed, started at once on one
 * SQLite file that does not exist yet (a gateway starting while a CLI command, a second unit or a
 * container restart opens the same file): every one comes up and does its work, none crashes.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { LATEST_VERSION } from '../../src/store/index.js';
import { BIN, type Served, serve } from '../support/serve.js';

const run = promisify(execFile);

describe('eight processes opening one new SQLite file at once', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tokenwarden-open8-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  for (const round of [1, 2, 3]) {
    it(`all come up and none crashes (round ${round})`, async () => {
      const db = join(dir, `round-${round}.db`);
      const cli = (args: string[]) =>
        run(process.execPath, [BIN, ...args, '--db', db], { timeout: 30_000 }).then(
          (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
          (e: { code?: number; stdout?: string; stderr?: string }) => ({
            code: e.code ?? -1,
            stdout: e.stdout ?? '',
            stderr: e.stderr ?? '',
          }),
        );
      const gateway = () => serve(['--db', db, '--port', '0', '--upstream', 'http://127.0.0.1:9']);
      // All eight spawned in the same tick.
      const gateways = [gateway(), gateway(), gateway(), gateway()];
      // Commands that open (creating if need be) the file; `status` and `export` refuse a file that
      // does not exist yet, so they run once everything is up.
      const commands = [
        cli(['keys', 'create', '--agent', `a-${round}`, '--json']),
        cli(['keys', 'create', '--agent', `b-${round}`, '--json']),
        cli(['keys', 'create', '--agent', `c-${round}`, '--json']),
        cli(['keys', 'list']),
      ];
      const started = await Promise.allSettled(gateways);
      const up = started
        .filter((s): s is PromiseFulfilledResult<Served> => s.status === 'fulfilled')
        .map((s) => s.value);
      try {
        const results = await Promise.all(commands);
        expect(
          started
            .filter((s) => s.status === 'rejected')
            .map((s) => String((s as PromiseRejectedResult).reason)),
        ).toEqual([]);
        for (const r of results) {
          expect(r.stderr).not.toMatch(/locked|SQLITE_BUSY/);
          expect(r.code, r.stderr).toBe(0);
        }
        for (const [i, who] of ['a', 'b', 'c'].entries()) {
          expect((JSON.parse(results[i]?.stdout ?? '{}') as { agent?: string }).agent).toBe(
            `${who}-${round}`,
          );
        }
        for (const g of up) {
          const ready = await fetch(`${g.url}/readyz`);
          expect(ready.status).toBe(200);
        }
      } finally {
        for (const g of up) g.proc.kill('SIGTERM');
      }
      for (const g of up) {
        expect(await g.exited).toBe(0);
        expect(g.stderr()).not.toMatch(/locked|SQLITE_BUSY/);
      }
      const listed = await cli(['keys', 'list']);
      for (const who of ['a', 'b', 'c']) expect(listed.stdout).toContain(`${who}-${round}`);
      const status = await cli(['status', '--json']);
      expect(status.code, status.stderr).toBe(0);
      expect((JSON.parse(status.stdout) as { status?: string }).status).toBe('ok');
      const check = new Database(db, { readonly: true });
      try {
        expect(check.pragma('journal_mode', { simple: true })).toBe('wal');
        expect(check.pragma('user_version', { simple: true })).toBe(LATEST_VERSION);
      } finally {
        check.close();
      }
    }, 60_000);
  }
});
