/**
 * Small terminal helpers shared by the operator commands: exit codes, errors, colour, bars, numbers,
 * durations and width-safe truncation. No I/O except where a function says so.
 */
import { createInterface } from 'node:readline/promises';
import type { Command, CommanderError } from 'commander';

/** Exit codes: 0 ok, 1 the operation failed (or was refused), 2 bad usage or configuration. */
export const OK = 0;
export const FAILED = 1;
export const USAGE = 2;

/** An error meant for the operator: its message is printed as is, and the process exits with `code`. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly code: number = FAILED,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** Print `tokenwarden: <message>` on stderr and set the exit code (the process ends on its own). */
export function fail(message: string, code: number): void {
  process.stderr.write(`tokenwarden: ${message}\n`);
  process.exitCode = code;
}

/**
 * Run a command's action: a CliError becomes its message and exit code, anything else a message and
 * exit code 1. Never throws.
 */
export async function run(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    if (err instanceof CliError) fail(err.message, err.code);
    else fail((err as Error).message ?? String(err), FAILED);
  }
}

/** Commander exits 1 on usage errors; this CLI reserves 1 for failed operations. */
export function usageExit(cmd: Command): Command {
  return cmd.exitOverride((err: CommanderError) => process.exit(err.exitCode === 0 ? OK : USAGE));
}

// --- colour ---------------------------------------------------------------------------------------

/**
 * Whether to colour what goes to `stream`: never with NO_COLOR (https://no-color.org), always with
 * FORCE_COLOR (other than 0), else only on a terminal that is not `dumb`.
 */
export function colorFor(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false;
  if (env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== '' && env.FORCE_COLOR !== '0') return true;
  return stream.isTTY === true && env.TERM !== 'dumb';
}

const CODES = {
  bold: [1, 22],
  dim: [2, 22],
  inverse: [7, 27],
  red: [31, 39],
  green: [32, 39],
  yellow: [33, 39],
  cyan: [36, 39],
  gray: [90, 39],
} as const;

export type Style = keyof typeof CODES;

/** A painter: `paint('red', text)` colours text when colour is on, and returns it unchanged otherwise. */
export type Paint = (style: Style | Style[] | null, text: string) => string;

export function painter(enabled: boolean): Paint {
  return (style, text) => {
    if (!enabled || style === null || text === '') return text;
    const styles = Array.isArray(style) ? style : [style];
    return styles.reduceRight((t, s) => `\x1b[${CODES[s][0]}m${t}\x1b[${CODES[s][1]}m`, text);
  };
}

/** The colour of a status or alert level: ok green, warning yellow, critical and emergency red. */
export function levelStyle(level: string): Style {
  if (level === 'ok') return 'green';
  if (level === 'warning' || level === 'forecast') return 'yellow';
  return 'red';
}

/** Level of a window's percent against the thresholds (the summary reports levels per budget only). */
export function percentLevel(
  percent: number | null,
  t: { warning: number; critical: number; emergency: number },
): 'ok' | 'warning' | 'critical' | 'emergency' {
  if (percent === null) return 'ok';
  if (percent >= t.emergency) return 'emergency';
  if (percent >= t.critical) return 'critical';
  if (percent >= t.warning) return 'warning';
  return 'ok';
}

// --- text -----------------------------------------------------------------------------------------

// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/g;

/**
 * Text from the ledger or the gateway (agent names, models, messages) made safe for a terminal:
 * control characters, escape sequences included, become `?`. Never throws.
 */
export function clean(text: string | null | undefined): string {
  return (text ?? '').replace(CONTROL, '?');
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: ANSI escape sequences start with ESC.
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/y;

/** Visible width of `text`: code points, ANSI sequences not counted (wide characters count as 1). */
export function visibleWidth(text: string): number {
  let width = 0;
  for (let i = 0; i < text.length; ) {
    ANSI.lastIndex = i;
    const m = ANSI.exec(text);
    if (m) {
      i += m[0].length;
      continue;
    }
    const cp = text.codePointAt(i) ?? 0;
    i += cp > 0xffff ? 2 : 1;
    width++;
  }
  return width;
}

/**
 * `text` cut to at most `width` visible characters, ending in `…` when something was cut; ANSI
 * sequences are kept (and styles reset after a cut) so colours never bleed. Never wraps.
 */
export function clip(text: string, width: number): string {
  if (width <= 0) return '';
  if (visibleWidth(text) <= width) return text;
  let out = '';
  let seen = 0;
  let styled = false;
  for (let i = 0; i < text.length; ) {
    ANSI.lastIndex = i;
    const m = ANSI.exec(text);
    if (m) {
      out += m[0];
      styled = true;
      i += m[0].length;
      continue;
    }
    if (seen === width - 1) break;
    const cp = text.codePointAt(i) ?? 0;
    const ch = String.fromCodePoint(cp);
    out += ch;
    i += ch.length;
    seen++;
  }
  return `${out}…${styled ? '\x1b[0m' : ''}`;
}

/** Plain `text` (no ANSI) cut from the left to at most `width` characters: `…/dir/file.db`. */
export function clipStart(text: string, width: number): string {
  const chars = [...text];
  if (chars.length <= width) return text;
  return width <= 0 ? '' : `…${chars.slice(chars.length - width + 1).join('')}`;
}

/** Pad (or cut) to exactly `width` visible characters. */
export function cell(text: string, width: number, align: 'left' | 'right' = 'left'): string {
  const t = clip(text, width);
  const pad = ' '.repeat(Math.max(0, width - visibleWidth(t)));
  return align === 'left' ? t + pad : pad + t;
}

// --- numbers and time -----------------------------------------------------------------------------

const INT = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

/** 112000 → `112,000`. */
export function num(n: number): string {
  return INT.format(n);
}

/** Bytes as `12.3 MB`. */
export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(1)} ${units[u]}`;
}

/** A span in ms as `2d 4h`, `3h 12m`, `4m 10s`, `12s` (two units at most). Negative spans are `0s`. */
export function duration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  const d = Math.floor(s / 86_400);
  const h = Math.floor((s % 86_400) / 3_600);
  const m = Math.floor((s % 3_600) / 60);
  const sec = s % 60;
  if (d > 0) return h > 0 ? `${d}d ${h}h` : `${d}d`;
  if (h > 0) return m > 0 ? `${h}h ${m}m` : `${h}h`;
  if (m > 0) return sec > 0 ? `${m}m ${sec}s` : `${m}m`;
  return `${sec}s`;
}

/** ISO time (or ms) as `2025-02-01 00:00Z`; `short` drops the year: `02-01 00:00`. */
export function utc(at: string | number, short = false): string {
  const iso = new Date(at).toISOString();
  return short ? `${iso.slice(5, 10)} ${iso.slice(11, 16)}` : `${iso.slice(0, 10)} ${iso.slice(11, 16)}Z`;
}

/** `HH:MM:SS` in UTC. */
export function clock(at: string | number): string {
  return new Date(at).toISOString().slice(11, 19);
}

/**
 * A time given as epoch ms or ISO 8601 (as the HTTP API accepts); throws a usage CliError naming
 * `flag` otherwise.
 */
export function parseTime(value: string, flag: string): number {
  const n = /^\d+$/.test(value.trim()) ? Number(value) : Date.parse(value);
  if (!Number.isFinite(n))
    throw new CliError(`${flag}: expected ISO 8601 or epoch ms, got "${value}"`, USAGE);
  return n;
}

// --- bars -----------------------------------------------------------------------------------------

/**
 * A bar `width` cells wide filled to `percent` (0–100, clamped), with eighth-blocks for the fraction.
 * `null` (no limit) draws an empty track.
 */
export function bar(percent: number | null, width: number): string {
  if (width <= 0) return '';
  const p = percent === null ? 0 : Math.min(100, Math.max(0, percent));
  const eighths = Math.round((p / 100) * width * 8);
  const full = Math.floor(eighths / 8);
  const part = eighths % 8;
  const partial = part > 0 ? (['', '▏', '▎', '▍', '▌', '▋', '▊', '▉'][part] ?? '') : '';
  const used = '█'.repeat(full) + partial;
  return used + '░'.repeat(Math.max(0, width - full - (partial ? 1 : 0)));
}

// --- confirmation ---------------------------------------------------------------------------------

/**
 * Ask `question` on the terminal (prompt on stderr, answer from stdin) and resolve true only for
 * y/yes; anything else, end of input (Ctrl-D) or Ctrl-C is a no. Callers check that stdin is a
 * terminal first. Never rejects.
 */
export function confirm(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  return new Promise((resolve) => {
    let answer: string | null = null;
    rl.on('SIGINT', () => rl.close());
    rl.on('close', () => {
      if (answer === null) process.stderr.write('\n');
      resolve(answer !== null && /^\s*y(es)?\s*$/i.test(answer));
    });
    rl.question(`${question} [y/N] `).then(
      (a) => {
        answer = a;
        rl.close();
      },
      () => rl.close(),
    );
  });
}
