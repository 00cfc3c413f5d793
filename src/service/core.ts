import type { Logger } from 'pino';
import { WindowResolver } from '../budget/windows.js';
import type { BudgetConfig, Config } from '../config/schema.js';
import type { Store } from '../store/ports.js';
import { EmergencyGuard } from './emergency.js';
import { Gatekeeper } from './gatekeeper.js';
import type { InflightTracker } from './inflight.js';
import { OperatorService, persistedBudgets, toBudgetDefs } from './operator.js';

export interface Core {
  resolver: WindowResolver;
  emergency: EmergencyGuard;
  gatekeeper: Gatekeeper;
  operator: OperatorService;
  /** The budgets in force: set through the API (stored), else the config's. */
  budgets: BudgetConfig[];
  budgetsFromStore: boolean;
}

/**
 * The budget services over a store, built the same way for the gateway and for the local CLI
 * commands (status, reset, halt…), so both see the same budgets, windows and emergencies.
 */
export async function buildCore(opts: {
  config: Config;
  store: Store;
  logger: Logger;
  now: () => number;
  owner: string;
  inflight?: InflightTracker;
  onBudgetsChanged?: () => void;
  /** How often emergency state is re-read from the store, ms (default 1000). */
  emergencyRefreshMs?: number;
}): Promise<Core> {
  const { config, store, logger, now } = opts;
  const stored = await persistedBudgets(store);
  const budgets = stored ?? config.budgets;
  const resolver = new WindowResolver({ timezone: config.timezone, cycleDay: config.cycleDay });
  const { inflight } = opts;
  const emergency = new EmergencyGuard(
    store,
    logger,
    opts.emergencyRefreshMs ?? 1000,
    inflight
      ? (added) => {
          // Set here or on another replica: it ends the streams in flight here that it covers.
          for (const s of added) {
            if (s.until !== null && s.until <= now()) continue;
            inflight.halt(
              s.budget,
              `tokenwarden: ${s.manual ? 'halted by an operator' : 'emergency shutdown'} (${s.reason})`,
            );
          }
        }
      : undefined,
  );
  await emergency.refresh();
  const gatekeeper = new Gatekeeper({
    store,
    resolver,
    budgets: toBudgetDefs(budgets),
    owner: opts.owner,
    holdTtlMs: config.holdLeaseMs,
    emergency: (names, at) => emergency.active(names, at),
  });
  const operator = new OperatorService(
    {
      store,
      resolver,
      gatekeeper,
      emergency,
      config,
      now,
      ...(opts.inflight ? { inflight: opts.inflight } : {}),
      ...(opts.onBudgetsChanged ? { onBudgetsChanged: opts.onBudgetsChanged } : {}),
    },
    budgets,
  );
  return { resolver, emergency, gatekeeper, operator, budgets, budgetsFromStore: stored !== null };
}
