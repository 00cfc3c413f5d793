import type { FastifyInstance } from 'fastify';
import type { OperatorService } from '../service/operator.js';

/** GET /api/token-usage/summary — SPEC §4 shape. */
export function registerSummaryRoute(api: FastifyInstance, operator: OperatorService): void {
  api.get('/summary', () => operator.summary());
}
