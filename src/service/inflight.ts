/**
 * Requests being proxied right now, so a graceful shutdown can wait for them and, past its grace
 * period, cancel them (each cancelled request still settles its hold).
 */
export class InflightTracker {
  private readonly aborts = new Set<() => void>();
  private waiters: Array<() => void> = [];

  get size(): number {
    return this.aborts.size;
  }

  /** Register a request; call `done()` once it has settled. */
  add(abort: () => void): { done(): void } {
    const entry = () => abort();
    this.aborts.add(entry);
    return {
      done: () => {
        this.aborts.delete(entry);
        if (this.aborts.size === 0) {
          for (const w of this.waiters) w();
          this.waiters = [];
        }
      },
    };
  }

  /** Resolves once nothing is in flight, or after `timeoutMs`; returns whether it drained. */
  drain(timeoutMs: number): Promise<boolean> {
    if (this.aborts.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  abortAll(): void {
    for (const abort of this.aborts) abort();
  }
}
