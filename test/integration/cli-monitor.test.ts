import { spawnSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SummaryDoc } from '../../src/service/summary.js';
import { type Harness, startHarness, waitUntil } from '../support/harness.js';

// `monitor` is driven in a real pseudo-terminal: a detached tmux session, 80 columns by 24 rows.
// CI must have tmux (apt-get install -y tmux); there a missing tmux fails these tests instead of
// skipping them.
const BIN = resolve(import.meta.dirname, '../../bin/tokenwarden.js');
const SOCKET = `tokenwarden-test-${process.pid}`;
const COLS = 80;
const ROWS = 24;
const BUDGETS = [
  { name: 'global', month: 100_000, day: 50_000, hour: 20_000, request: 10_000 },
  { name: 'researcher', agent: 'researcher', month: 20_000 },
];

const tmuxVersion = spawnSync('tmux', ['-V'], { encoding: 'utf8' });
const hasTmux = tmuxVersion.status === 0;
const inCi = Boolean(process.env.CI) && process.env.CI !== 'false';

function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('TOKENWARDEN_') && !k.startsWith('TMUX') && !['NO_COLOR', 'FORCE_COLOR'].includes(k)) {
      env[k] = v;
    }
  }
  return { ...env, TERM: 'xterm-256color', LANG: 'C.UTF-8' };
}

/** Run a tmux command on this test's own server (never the user's). */
function tmux(...args: string[]): string {
  const r = spawnSync('tmux', ['-u', '-L', SOCKET, ...args], { encoding: 'utf8', env: cleanEnv() });
  if (r.status !== 0) throw new Error(`tmux ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/**
 * Start `tokenwarden <args>` in a new 80×24 session. A shell runs it and then prints its exit status
 * and waits, so the terminal state it leaves behind can be checked.
 */
function startInTmux(session: string, cwd: string, args: string[]): void {
  const quote = (a: string) => `'${a.replace(/'/g, "'\\''")}'`;
  const command = [process.execPath, BIN, ...args].map(quote).join(' ');
  tmux(
    'new-session',
    '-d',
    '-s',
    session,
    '-x',
    String(COLS),
    '-y',
    String(ROWS),
    '-c',
    cwd,
    `${command}; echo "exit=$?"; sleep 600`,
  );
}

function screen(session: string): string[] {
  // -J joins lines the terminal wrapped, so a line too long for 80 columns shows as one.
  return tmux('capture-pane', '-p', '-J', '-t', session).replace(/\n$/, '').split('\n');
}

function pane(session: string, format: string): string {
  return tmux('display-message', '-p', '-t', session, format).trim();
}

async function waitForScreen(
  session: string,
  check: (text: string) => boolean,
  timeoutMs = 10_000,
): Promise<string[]> {
  let last: string[] = [];
  try {
    await waitUntil(() => {
      last = screen(session);
      return check(last.join('\n'));
    }, timeoutMs);
  } catch {
    throw new Error(`screen never matched; it showed:\n${last.join('\n')}`);
  }
  return last;
}

/** Send `keys` (if any), wait for the command to exit and return its exit status. */
async function quitWith(session: string, ...keys: string[]): Promise<number> {
  if (keys.length > 0) tmux('send-keys', '-t', session, ...keys);
  const lines = await waitForScreen(session, (t) => /^exit=\d+$/m.test(t), 5000);
  return Number(/^exit=(\d+)$/m.exec(lines.join('\n'))?.[1]);
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

function spend(h: Harness, agent: string, out: number) {
  return h
    .client({ maxRetries: 0 })
    .messages.create(
      { model: 'claude-opus-4-1', max_tokens: out, messages: [{ role: 'user', content: 'Hi' }] },
      { headers: { 'x-fake-output-tokens': String(out), 'x-tokenwarden-agent': agent } },
    );
}

/** Checks every monitor screen must pass: the layout fits 80×24 without wrapping or scrolling. */
function expectLayout(lines: string[]): void {
  expect(lines.length).toBeLessThanOrEqual(ROWS);
  for (const l of lines) expect(l.length).toBeLessThanOrEqual(COLS);
  expect(lines[0]).toMatch(/^tokenwarden monitor · /);
  expect(lines[ROWS - 1]).toMatch(/^ q {2}quit {3}r {2}/);
}

describe.runIf(hasTmux || inCi)('tokenwarden monitor, reset and restore on a terminal (in tmux)', () => {
  let h: Harness;
  let cfg: string;
  const extra: Harness[] = [];

  beforeAll(async () => {
    if (!hasTmux) {
      throw new Error('tmux is required for the monitor tests (apt-get install -y tmux)');
    }
    h = await startHarness({ budgets: BUDGETS });
    cfg = join(h.dir, 'tokenwarden.config.json');
    writeFileSync(cfg, JSON.stringify({ database: h.config.database, budgets: BUDGETS }));
    await spend(h, 'researcher', 400);
    await spend(h, 'writer', 700);
  });
  afterAll(async () => {
    if (hasTmux) {
      spawnSync('tmux', ['-L', SOCKET, 'kill-server']);
      // kill-server leaves the socket file behind.
      rmSync(join(process.env.TMUX_TMPDIR ?? '/tmp', `tmux-${process.getuid?.() ?? 0}`, SOCKET), {
        force: true,
      });
    }
    for (const x of extra) await x.close();
    await h?.close();
  });

  it('shows bars, limits, requests and alerts of a running gateway in 80 columns, refreshes, q quits', async () => {
    startInTmux('remote', h.dir, ['monitor', '--url', h.gateway.url]);
    const lines = await waitForScreen('remote', (t) => t.includes('100,000') && t.includes('researcher'));
    expectLayout(lines);
    const text = lines.join('\n');
    expect(text).toContain(`gateway ${h.gateway.url}`);
    expect(text).toMatch(/^ {2}month [█▏▎▍▌▋▊▉]*░+ +1,\d{3} \/ 100,000 +1\.\d% {2}resets in /m);
    expect(text).toMatch(/^ {2}day +[█▏▎▍▌▋▊▉]*░+ +1,\d{3} \/ 50,000 /m);
    expect(text).toMatch(/^ {2}hour +[█▏▎▍▌▋▊▉]*░+ +1,\d{3} \/ 20,000 /m);
    expect(text).toMatch(/^Burn rate +1,\d{3} tokens\/h/m);
    expect(text).toMatch(/^Forecast /m);
    expect(text).toMatch(/^ {2}\d\d:\d\d:\d\d writer +claude-opus-4-1 +70\d ok +[\d.]+m?s$/m);
    expect(text).toMatch(/^Alerts$/m);
    // Full screen: the alternate screen, cursor hidden.
    expect(pane('remote', '#{alternate_on} #{cursor_flag}')).toBe('1 0');

    // It refreshes by itself every second.
    await spend(h, 'latecomer', 50);
    await waitForScreen('remote', (t) => t.includes('latecomer'), 3000);

    expect(await quitWith('remote', 'q')).toBe(0);
    // The terminal is given back: the main screen (without the dashboard), the cursor shown.
    expect(pane('remote', '#{alternate_on} #{cursor_flag}')).toBe('0 1');
    expect(screen('remote').join('\n')).not.toContain('Recent requests');
  });

  it('shows the error while the gateway is unreachable, keeps retrying, and recovers; Ctrl-C quits', async () => {
    const port = await freePort();
    startInTmux('later', h.dir, ['monitor', '--url', `http://127.0.0.1:${port}`]);
    const down = await waitForScreen(
      'later',
      (t) => t.includes('ECONNREFUSED') && /retrying every second \([2-9]\d* failed\)/.test(t),
    );
    expectLayout(down);
    expect(down.join('\n')).toContain(`cannot reach the gateway http://127.0.0.1:${port}`);

    const late = await startHarness({ budgets: BUDGETS, port });
    extra.push(late);
    const up = await waitForScreen('later', (t) => t.includes('100,000') && !t.includes('ECONNREFUSED'));
    expectLayout(up);
    expect(await quitWith('later', 'C-c')).toBe(0);
  });

  it('r refreshes at once', async () => {
    startInTmux('keys', h.dir, ['monitor', '--url', h.gateway.url, '--interval', '3600']);
    await waitForScreen('keys', (t) => t.includes('100,000'));
    await spend(h, 'impatient', 30);
    await new Promise((r) => setTimeout(r, 1500));
    expect(screen('keys').join('\n')).not.toContain('impatient');
    tmux('send-keys', '-t', 'keys', 'r');
    await waitForScreen('keys', (t) => t.includes('impatient'), 3000);
    expect(await quitWith('keys', 'q')).toBe(0);
  });

  it('works on the local database too', async () => {
    startInTmux('local', h.dir, ['monitor', '--config', cfg]);
    const lines = await waitForScreen('local', (t) => t.includes('100,000') && t.includes('writer'));
    expectLayout(lines);
    // A long path is cut at its start: the file name stays.
    expect(lines[0]).toMatch(
      /^tokenwarden monitor · database .*\/tokenwarden\.db +OK {2}\d\d:\d\d:\d\d UTC$/,
    );
    expect(await quitWith('local', 'q')).toBe(0);
  });

  it('reset and restore ask y/N on a terminal', async () => {
    const researcherMonth = () => {
      const r = spawnSync(process.execPath, [BIN, 'status', '--json', '--config', cfg], {
        cwd: h.dir,
        encoding: 'utf8',
        env: cleanEnv(),
      });
      const doc = JSON.parse(r.stdout) as SummaryDoc;
      return doc.budgets.find((b) => b.name === 'researcher')?.windows.month.used;
    };
    const used = researcherMonth();
    expect(used).toBeGreaterThan(400);

    startInTmux('no', h.dir, ['reset', '--budget', 'researcher', '--config', cfg]);
    const asked = await waitForScreen('no', (t) => t.includes('[y/N]'));
    const declined = /backup written: (\S+\.db) /.exec(asked.join('\n'))?.[1] ?? '';
    expect(existsSync(declined)).toBe(true);
    expect(asked.join('\n')).toContain(
      'Reset the usage of every window of budget researcher on the database',
    );
    tmux('send-keys', '-t', 'no', 'n', 'Enter');
    expect(await quitWith('no')).toBe(1);
    expect(screen('no').join('\n')).toContain('cancelled: nothing was reset (the backup was removed)');
    expect(existsSync(declined)).toBe(false);
    expect(researcherMonth()).toBe(used);

    startInTmux('yes', h.dir, ['reset', '--budget', 'researcher', '--config', cfg]);
    const shown = await waitForScreen('yes', (t) => t.includes('[y/N]'));
    const backup = /backup written: (\S+\.db) /.exec(shown.join('\n'))?.[1] ?? '';
    tmux('send-keys', '-t', 'yes', 'y', 'Enter');
    expect(await quitWith('yes')).toBe(0);
    expect(researcherMonth()).toBe(0);

    startInTmux('interrupted', h.dir, ['restore', backup, '--config', cfg]);
    await waitForScreen(
      'interrupted',
      (t) => t.includes('[y/N]') && t.includes(`researcher (month +${used}`),
    );
    expect(await quitWith('interrupted', 'C-c')).toBe(1);
    expect(screen('interrupted').join('\n')).toContain('cancelled: nothing was restored');
    expect(researcherMonth()).toBe(0);

    startInTmux('restore', h.dir, ['restore', backup, '--config', cfg]);
    await waitForScreen('restore', (t) => t.includes('[y/N]'));
    tmux('send-keys', '-t', 'restore', 'y', 'Enter');
    expect(await quitWith('restore')).toBe(0);
    expect(researcherMonth()).toBe(used);
  });

  it('refuses to run without a terminal', () => {
    const r = spawnSync(process.execPath, [BIN, 'monitor', '--config', cfg], {
      cwd: h.dir,
      encoding: 'utf8',
      env: cleanEnv(),
      timeout: 20_000,
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/monitor needs a terminal/);
  });
});
