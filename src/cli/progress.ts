import { bar, duration, num } from './output.js';

/** Where long operations report how far they are. */
export interface Progress {
  /** `done` of `total` units so far (total may grow or be unknown: 0). */
  update(done: number, total: number): void;
  /** Clear the bar (the caller prints its own result line). */
  done(): void;
}

/** A Progress that shows nothing. */
export const NO_PROGRESS: Progress = { update() {}, done() {} };

export interface ProgressOptions {
  /** What is being done, e.g. `exporting` or `backing up`. */
  label: string;
  /** The unit counted, e.g. `rows` or `pages`. */
  unit: string;
  /** Draw only once the operation has run this long (ms), so quick ones stay silent. Default 300. */
  delayMs?: number;
  /** Where to draw; default process.stderr. */
  stream?: NodeJS.WriteStream;
  now?: () => number;
}

/**
 * A one-line progress bar redrawn in place (`\r`) on a terminal, at most ten times a second, after
 * `delayMs`. On anything that is not a terminal it draws nothing: a bar in a log file is noise.
 */
export function progressBar(opts: ProgressOptions): Progress {
  const stream = opts.stream ?? process.stderr;
  if (!stream.isTTY) return NO_PROGRESS;
  const now = opts.now ?? Date.now;
  const started = now();
  const delay = opts.delayMs ?? 300;
  let lastDraw = 0;
  let drawn = false;
  return {
    update(done, total) {
      const t = now();
      if (t - started < delay || t - lastDraw < 100) return;
      lastDraw = t;
      drawn = true;
      const cols = stream.columns ?? 80;
      const percent = total > 0 ? Math.min(100, (done / total) * 100) : null;
      const elapsed = t - started;
      const eta =
        total > 0 && done > 0 && done < total ? `  ${duration((elapsed / done) * (total - done))} left` : '';
      const counts = total > 0 ? `${num(done)}/${num(total)} ${opts.unit}` : `${num(done)} ${opts.unit}`;
      const pct = percent === null ? '' : `${percent.toFixed(0).padStart(3)}% `;
      const text = `${pct}${counts}${eta}`;
      const width = Math.max(10, Math.min(40, cols - opts.label.length - text.length - 4));
      const line = `${opts.label} ${bar(percent, width)} ${text}`;
      stream.write(`\r${line.slice(0, cols - 1)}\x1b[K`);
    },
    done() {
      if (drawn) stream.write('\r\x1b[K');
      drawn = false;
    },
  };
}
