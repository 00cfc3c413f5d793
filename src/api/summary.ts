import type { FastifyInstance } from 'fastify';
import type { AppDeps } from '../app.js';
import { buildSummary } from '../service/summary.js';

/** GET /api/token-usage/summary — SPEC §4 shape. */
export function registerSummaryRoute(api: FastifyInstance, deps: AppDeps): void {
  api.get('/summary', async () =>
    buildSummary({
      store: deps.store,
      resolver: deps.resolver,
      budgets: deps.gatekeeper.currentBudgets,
      config: deps.config,
      now: deps.now(),
    }),
  );
}
