import type { Logger } from 'pino';
import type { ControlStore, EmergencyState } from '../store/ports.js';

/**
 * The emergency states in force, read on every admission from memory and refreshed from the store
 * every `refreshMs` (a quarter second when replicas share the store), so a halt made by another
 * process or replica takes effect here within a second. Changes made through this guard apply at
 * once. `onAdded` is told of every state it sees appear, wherever it was set (to end the streams in
 * flight here that it covers).
 */
export class EmergencyGuard {
  private states: EmergencyState[] = [];
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly store: Pick<ControlStore, 'setEmergency' | 'clearEmergency' | 'listEmergencies'>,
    private readonly logger: Logger,
    private readonly refreshMs = 1000,
    private readonly onAdded?: (added: EmergencyState[]) => void,
  ) {}

  async start(): Promise<void> {
    await this.refresh();
    // While the store is unreachable, say so once (not four times a second), and say when it is back.
    let failing = false;
    this.timer = setInterval(() => {
      this.refresh().then(
        () => {
          if (failing) this.logger.info('emergency state readable again');
          failing = false;
        },
        (err: unknown) => {
          if (!failing)
            this.logger.error({ err }, 'could not refresh emergency state (keeping the last one read)');
          failing = true;
        },
      );
    }, this.refreshMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  async refresh(): Promise<void> {
    const before = new Set(this.states.map(stateKey));
    this.states = await this.store.listEmergencies();
    if (!this.onAdded) return;
    const added = this.states.filter((s) => !before.has(stateKey(s)));
    if (added.length > 0) this.onAdded(added);
  }

  /** States in force at `now` (those whose period has ended lift by themselves). */
  list(now: number): EmergencyState[] {
    return this.states.filter((s) => s.until === null || s.until > now);
  }

  /** The state blocking a request covered by `budgets`, if any: a global halt first. */
  active(budgets: readonly string[], now: number): EmergencyState | null {
    for (const s of this.states) {
      if (s.until !== null && s.until <= now) continue;
      if (s.budget === '*' || budgets.includes(s.budget)) return s;
    }
    return null;
  }

  async trip(state: EmergencyState): Promise<void> {
    await this.store.setEmergency(state);
    await this.refresh();
  }

  /** Lift the emergency of one budget, or every emergency when `budget` is undefined. */
  async resume(budget?: string): Promise<number> {
    const n = await this.store.clearEmergency(budget);
    await this.refresh();
    return n;
  }
}

function stateKey(s: EmergencyState): string {
  return `${s.budget}\n${s.since}`;
}
