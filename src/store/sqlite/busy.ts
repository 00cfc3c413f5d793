/**
 * Waiting out another process's lock where SQLite's busy handler does not.
 *
 * A connection's busy timeout only covers the locks SQLite may wait for without risking a deadlock.
 * Some steps answer SQLITE_BUSY at once instead, whatever the timeout: upgrading a read transaction to
 * a write one (another connection may be waiting for our read lock to go), which is what switching a
 * new file to WAL does (it reads the header, then writes it), and a read snapshot gone stale in WAL
 * mode (SQLITE_BUSY_SNAPSHOT). Several processes opening the same new file at once (a gateway and a CLI
 * command, two units, a container restart) hit exactly that. Such a step is safe to run again from the
 * start once the other holder is done, so it is retried here with a bounded backoff, and after the
 * bound it fails with a message that names the file and, where the system tells, who holds it.
 */
import { readFileSync, statSync } from 'node:fs';

/** SQLITE_BUSY and its extended codes (SQLITE_BUSY_SNAPSHOT, SQLITE_BUSY_RECOVERY, SQLITE_BUSY_TIMEOUT). */
export function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('SQLITE_BUSY');
}

/** The file stayed locked by someone else for longer than the bound. */
export class SqliteLockedError extends Error {
  readonly code = 'SQLITE_BUSY';
  constructor(
    readonly path: string,
    readonly step: string,
    readonly waitedMs: number,
    readonly holders: string[],
  ) {
    super(
      `the SQLite database ${path} stayed locked by another connection while ${step} ` +
        `(waited ${Math.round(waitedMs)} ms)` +
        (holders.length > 0 ? `; held by ${holders.join(', ')}` : '') +
        '. Another process has a write transaction open on it for too long; let it finish or stop it, ' +
        'then start again',
    );
    this.name = 'SqliteLockedError';
  }
}

export interface RetryOptions {
  /** The database file, for the message. */
  path: string;
  /** What was being done, for the message ("switching it to WAL"). */
  step: string;
  /** Give up once this much time has passed since the first try, ms. */
  boundMs: number;
  /** Blocks for `ms` (tests replace it). Default: a synchronous sleep. */
  sleep?: (ms: number) => void;
  /** Clock, ms. */
  now?: () => number;
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Blocks the thread for `ms`. Only used while a store is opening, which is synchronous already (the
 * busy timeout blocks the same way), never on a request path.
 */
function sleepSync(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

/**
 * Runs `fn`, and runs it again while it throws SQLITE_BUSY, waiting 2, 4, 8 … up to 100 ms (with
 * jitter, so processes that collided do not collide again in step) until `boundMs` have passed since
 * the first try; then throws {@link SqliteLockedError}. `fn` must be safe to repeat after a BUSY: a
 * single statement or a whole transaction that SQLite rolled back. Any other error is thrown at once.
 */
export function retryBusy<T>(fn: () => T, opts: RetryOptions): T {
  const now = opts.now ?? performance.now.bind(performance);
  const sleep = opts.sleep ?? sleepSync;
  const start = now();
  for (let delay = 2; ; delay = Math.min(delay * 2, 100)) {
    try {
      return fn();
    } catch (err) {
      if (!isBusy(err)) throw err;
      const waited = now() - start;
      if (waited >= opts.boundMs) {
        throw new SqliteLockedError(opts.path, opts.step, waited, lockHolders(opts.path));
      }
      sleep(Math.min(delay * (0.5 + Math.random()), opts.boundMs - waited));
    }
  }
}

/**
 * Who holds POSIX locks on the database file or its `-shm` index, as "pid 123 (node bin/…)", read from
 * /proc/locks (Linux). Empty where that is not available. Never throws.
 */
export function lockHolders(path: string): string[] {
  try {
    const files = new Set<string>();
    for (const file of [path, `${path}-shm`]) {
      try {
        const st = statSync(file);
        // /proc/locks names a file as MAJOR:MINOR:INODE, the device numbers in hex.
        const major = Number((BigInt(st.dev) >> 8n) & 0xfffn) | Number((BigInt(st.dev) >> 32n) & ~0xfffn);
        const minor = Number(BigInt(st.dev) & 0xffn) | Number((BigInt(st.dev) >> 12n) & ~0xffn);
        files.add(`${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${st.ino}`);
      } catch {
        // No -shm file (not in WAL mode yet): nothing to look for.
      }
    }
    const pids = new Set<number>();
    for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
      // "1: POSIX  ADVISORY  WRITE 4242 fd:01:1234 1073741824 1073741825"; "1: -> …" lines are waiters.
      const f = line.trim().split(/\s+/);
      if (f[1] === '->' || f[1] !== 'POSIX') continue;
      const [, , , , pid, file] = f;
      if (pid !== undefined && file !== undefined && files.has(file)) pids.add(Number(pid));
    }
    return [...pids].map((pid) => {
      const who = pid === process.pid ? 'this process' : commandOf(pid);
      return who ? `pid ${pid} (${who})` : `pid ${pid}`;
    });
  } catch {
    return [];
  }
}

function commandOf(pid: number): string | null {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
    return cmd.length > 120 ? `${cmd.slice(0, 117)}…` : cmd || null;
  } catch {
    return null;
  }
}
