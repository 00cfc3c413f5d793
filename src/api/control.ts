import type { FastifyInstance } from 'fastify';
import { GatewayError } from '../errors/gateway-error.js';
import { InvalidInput, type OperatorService } from '../service/operator.js';
import { jsonBody } from './params.js';

function optionalString(body: Record<string, unknown>, name: string): string | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || v === '')
    throw new GatewayError('invalid_request', `${name}: expected a string`);
  return v;
}

/** POST /reset, /resume, /halt; GET and PUT /budgets — the operator's levers. */
export function registerControlRoutes(api: FastifyInstance, operator: OperatorService): void {
  api.post('/reset', async (req) => {
    const body = jsonBody(req.body);
    const window = optionalString(body, 'window');
    if (window !== undefined && !['month', 'day', 'hour'].includes(window)) {
      throw new GatewayError('invalid_request', 'window: expected month, day or hour');
    }
    const agent = optionalString(body, 'agent');
    const budget = optionalString(body, 'budget');
    return operator.reset({
      ...(window ? { window: window as 'month' | 'day' | 'hour' } : {}),
      ...(agent ? { agent } : {}),
      ...(budget ? { budget } : {}),
    });
  });

  api.post('/resume', async (req) => {
    const budget = optionalString(jsonBody(req.body), 'budget');
    return { resumed: await operator.resume(budget) };
  });

  api.post('/halt', async (req) => {
    const body = jsonBody(req.body);
    try {
      return await operator.halt(optionalString(body, 'budget'), optionalString(body, 'reason'));
    } catch (err) {
      if (err instanceof InvalidInput) throw new GatewayError('invalid_request', err.message);
      throw err;
    }
  });

  api.get('/budgets', async () => ({ budgets: operator.getBudgets() }));

  api.put('/budgets', async (req) => {
    try {
      return { budgets: await operator.putBudgets(jsonBody(req.body)) };
    } catch (err) {
      if (err instanceof InvalidInput) throw new GatewayError('invalid_request', err.message);
      throw err;
    }
  });
}
