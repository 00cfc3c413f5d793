import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { SummaryDoc } from '../../src/service/summary.js';

// The real executable (bin/tokenwarden.js → dist/, built by `npm run build`), as a newcomer runs it.
const BIN = resolve(import.meta.dirname, '../../bin/tokenwarden.js');

describe('tokenwarden demo', () => {
  it('serves a summary with spent tokens within 15 seconds, and stops cleanly on SIGINT', async () => {
    const proc = spawn(process.execPath, [BIN, 'demo', '--port', '0'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      // No provider key is needed: the demo brings its own simulated upstream.
      env: { ...process.env, ANTHROPIC_API_KEY: '', NO_COLOR: '1' },
    });
    let out = '';
    let err = '';
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    proc.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const exited = once(proc, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;

    try {
      const started = Date.now();
      let url: string | undefined;
      while (!url) {
        if (Date.now() - started > 10_000 || proc.exitCode !== null) {
          throw new Error(`the demo printed no dashboard address:\n${out}\n${err}`);
        }
        url = /dashboard\s+(http:\/\/\S+)\/dashboard/.exec(out)?.[1];
        await new Promise((r) => setTimeout(r, 50));
      }
      const database = /database\s+(\S+\.db)/.exec(out)?.[1];
      expect(database).toBeDefined();
      expect(existsSync(database ?? '')).toBe(true);

      const page = await fetch(`${url}/dashboard`);
      expect(page.status).toBe(200);
      expect(page.headers.get('content-type')).toContain('text/html');

      let used = 0;
      while (used === 0 && Date.now() - started < 15_000) {
        const res = await fetch(`${url}/api/token-usage/summary`);
        expect(res.status).toBe(200);
        const summary = (await res.json()) as SummaryDoc;
        used = summary.budgets.find((b) => b.name === 'global')?.windows.month.used ?? 0;
        if (used === 0) await new Promise((r) => setTimeout(r, 250));
      }
      expect(used).toBeGreaterThan(0);

      proc.kill('SIGINT');
      const [code] = await exited;
      expect(code, err).toBe(0);
      expect(out).toMatch(/demo stopped/);
      expect(err).toBe('');
      // The temporary database is gone with its folder.
      expect(existsSync(dirname(database ?? ''))).toBe(false);
    } finally {
      if (proc.exitCode === null) proc.kill('SIGKILL');
    }
  });
});
