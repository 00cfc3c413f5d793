export interface InflightEntry {
  /** Budgets the request counts against (an operator halt of one of them ends it). */
  budgets: readonly string[];
  /** Cancel the request; `reason` is told to the client when it is an operator's halt. */
  abort(reason?: string): void;
}

/**
 * Requests being proxied right now, so a graceful shutdown can wait for them and, past its grace
 * period, cancel them, and a halt can end the streams it covers. A cancelled request still settles.
 */
export class InflightTracker {
  private readonly entries = new Set<InflightEntry>();
  private waiters: Array<() => void> = [];

  get size(): number {
    return this.entries.size;
  }

  /** Register a request; call `done()` once it has settled. */
  add(entry: InflightEntry): { done(): void } {
    this.entries.add(entry);
    return {
      done: () => {
        this.entries.delete(entry);
        if (this.entries.size === 0) {
          for (const w of this.waiters) w();
          this.waiters = [];
        }
      },
    };
  }

  /** Resolves once nothing is in flight, or after `timeoutMs`; returns whether it drained. */
  drain(timeoutMs: number): Promise<boolean> {
    if (this.entries.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  abortAll(): void {
    for (const e of this.entries) e.abort();
  }

  /** End the requests covered by `budget` (`*`: all that count against any budget). Returns how many. */
  halt(budget: string, reason: string): number {
    let n = 0;
    for (const e of this.entries) {
      if (e.budgets.length > 0 && (budget === '*' || e.budgets.includes(budget))) {
        e.abort(reason);
        n++;
      }
    }
    return n;
  }
}
