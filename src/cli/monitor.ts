import { writeSync } from 'node:fs';
import { type Command, InvalidArgumentError } from 'commander';
import { connector, type OperatorClient, type TargetFlags, targetOptions } from './client.js';
import { type MonitorState, renderMonitor } from './monitor-view.js';
import { CliError, colorFor, painter, run, USAGE, usageExit } from './output.js';

interface MonitorFlags extends TargetFlags {
  interval: number;
}

/** `--interval 2.5` → 2500 ms; at least 0.2 s. */
function seconds(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0.2) throw new InvalidArgumentError('expected seconds, at least 0.2.');
  return Math.round(n * 1000);
}

// Alternate screen, cursor hidden, no auto-wrap (a miscounted wide character must not wrap a line).
const ENTER = '\x1b[?1049h\x1b[?25l\x1b[?7l\x1b[H\x1b[2J';
const LEAVE = '\x1b[?7h\x1b[?25h\x1b[?1049l';

/**
 * Run the dashboard until the operator quits: redraw after every refresh (every `intervalMs`, or at once on
 * `r`) and on resize; keep the last data and show the error while the source is unreachable.
 * Exits the process when done (a request still in flight must not hold it open).
 */
async function runMonitor(
  connect: () => Promise<OperatorClient>,
  target: string,
  intervalMs: number,
): Promise<never> {
  const out = process.stdout;
  const paint = painter(colorFor(out));
  const state: MonitorState = {
    target,
    summary: null,
    requests: [],
    alerts: [],
    updatedAt: null,
    error: null,
    failures: 0,
    intervalMs,
  };
  let client: OperatorClient | null = null;
  let timer: NodeJS.Timeout | null = null;
  let busy = false;
  let again = false;
  let closed = false;

  const draw = () => {
    if (closed) return;
    const rows = out.rows ?? 24;
    const lines = renderMonitor(state, { rows, width: out.columns ?? 80 }, paint, Date.now());
    // Each row is placed and erased whole before it is written: no scrolling, no leftovers.
    out.write(lines.map((l, i) => `\x1b[${i + 1};1H\x1b[2K${l}`).join(''));
  };

  const schedule = (ms: number) => {
    if (timer) clearTimeout(timer);
    timer = closed ? null : setTimeout(() => void refresh(), ms);
  };

  async function refresh(): Promise<void> {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      client ??= await connect();
      const rows = Math.max(10, Math.min(200, out.rows ?? 24));
      const [summary, requests, alerts] = await Promise.all([
        client.summary(),
        client.requests({ limit: rows }, { total: false }),
        client.alerts(5),
      ]);
      Object.assign(state, {
        summary,
        requests: requests.requests,
        alerts,
        updatedAt: Date.now(),
        error: null,
        failures: 0,
      });
    } catch (err) {
      state.error = (err as Error).message;
      state.failures++;
      // A database that failed is opened afresh on the next try.
      if (client && !client.remote) {
        await client.close().catch(() => undefined);
        client = null;
      }
    } finally {
      busy = false;
    }
    draw();
    if (again) {
      again = false;
      schedule(0);
    } else {
      schedule(intervalMs);
    }
  }

  const restore = () => {
    if (closed) return;
    closed = true;
    if (timer) clearTimeout(timer);
    if (process.stdin.isTTY) process.stdin.setRawMode(false);
    // Synchronous: this also runs from 'exit' and signal handlers.
    writeSync(1, LEAVE);
  };
  const quit = (code: number) => {
    restore();
    const closing = client?.close() ?? Promise.resolve();
    closing.finally(() => process.exit(code));
  };

  process.on('exit', restore);
  process.on('SIGINT', () => quit(0));
  process.on('SIGTERM', () => quit(143));
  process.on('SIGHUP', () => quit(129));
  process.on('uncaughtException', (err) => {
    restore();
    process.stderr.write(`tokenwarden: monitor failed: ${err.stack ?? err.message}\n`);
    process.exit(1);
  });

  out.write(ENTER);
  out.on('resize', () => {
    // The terminal may have reflowed the old frame: start from a clean screen.
    if (!closed) out.write('\x1b[2J');
    draw();
  });
  if (process.stdin.isTTY) {
    process.stdin.setRawMode(true);
    process.stdin.resume();
    process.stdin.on('data', (data: Buffer) => {
      for (const ch of data.toString('utf8')) {
        // q, Q, Ctrl-C, Ctrl-D quit (raw mode delivers Ctrl-C as a byte, not SIGINT).
        if (ch === 'q' || ch === 'Q' || ch === '\u0003' || ch === '\u0004') {
          quit(0);
          return;
        }
        if (ch === 'r' || ch === 'R') {
          if (timer) clearTimeout(timer);
          void refresh();
        }
      }
    });
  }
  draw();
  void refresh();
  return new Promise<never>(() => {});
}

/** `tokenwarden monitor`: a live full-screen dashboard, refreshed every second. */
export function registerMonitor(program: Command): void {
  usageExit(
    targetOptions(
      program
        .command('monitor')
        .description('live terminal dashboard (q quits, r refreshes), from the database or a running gateway')
        .option('--interval <seconds>', 'seconds between refreshes', seconds, 1000),
    ),
  ).action((flags: MonitorFlags) =>
    run(async () => {
      if (!process.stdout.isTTY) {
        throw new CliError('monitor needs a terminal; for scripts use tokenwarden status --json', USAGE);
      }
      // Bad flags and configuration are reported before the screen is taken over; an unreachable
      // gateway or database is shown on it, and retried.
      const { connect, target } = connector(flags, { timeoutMs: 5000 });
      await runMonitor(connect, target, flags.interval);
    }),
  );
}
