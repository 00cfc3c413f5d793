import type { FastifyInstance } from 'fastify';
import { type OperatorService, OUTCOMES } from '../service/operator.js';
import { enumParam, intParam, stringParam, timeParam } from './params.js';

type Query = Record<string, string | undefined>;

const BUCKETS = { minute: 60_000, hour: 3_600_000, day: 86_400_000 } as const;

/** GET /alerts, /requests, /timeseries — read-only views of the ledger and alerts. */
export function registerLedgerRoutes(
  api: FastifyInstance,
  operator: OperatorService,
  now: () => number,
): void {
  api.get('/alerts', async (req) => {
    const q = req.query as Query;
    const since = timeParam(q, 'since');
    const alerts = await operator.alerts({
      limit: intParam(q, 'limit', 100, 1, 1000),
      ...(since ? { since } : {}),
    });
    return {
      alerts: alerts.map((a) => ({
        id: a.id,
        level: a.level,
        budget: a.budget,
        window: a.window,
        percent: a.percent,
        at: new Date(a.at).toISOString(),
        message: a.message,
      })),
    };
  });

  api.get('/requests', async (req) => {
    const q = req.query as Query;
    const limit = intParam(q, 'limit', 100, 1, 1000);
    const offset = intParam(q, 'offset', 0, 0, Number.MAX_SAFE_INTEGER);
    const filter = {
      agent: stringParam(q, 'agent'),
      model: stringParam(q, 'model'),
      outcome: enumParam(q, 'outcome', OUTCOMES),
      since: timeParam(q, 'since'),
      until: timeParam(q, 'until'),
    };
    const clean = Object.fromEntries(Object.entries(filter).filter(([, v]) => v !== undefined));
    const { rows, total } = await operator.requests({ ...clean, limit, offset });
    return {
      requests: rows.map((r) => ({ ...r, at: new Date(r.ts).toISOString() })),
      total,
      limit,
      offset,
    };
  });

  api.get('/timeseries', async (req) => {
    const q = req.query as Query;
    const bucket = enumParam(q, 'bucket', ['minute', 'hour', 'day'] as const) ?? 'hour';
    const bucketMs = BUCKETS[bucket];
    const until = timeParam(q, 'until') ?? now();
    const span = bucket === 'minute' ? 3_600_000 : bucket === 'hour' ? 86_400_000 : 30 * 86_400_000;
    const since = timeParam(q, 'since') ?? until - span;
    const agent = stringParam(q, 'agent');
    const model = stringParam(q, 'model');
    const points = await operator.timeseries({
      bucketMs,
      since,
      until,
      ...(agent ? { agent } : {}),
      ...(model ? { model } : {}),
    });
    return {
      bucket,
      since: new Date(since).toISOString(),
      until: new Date(until).toISOString(),
      points: points.map((p) => ({ ...p, at: new Date(p.bucket).toISOString() })),
    };
  });
}
