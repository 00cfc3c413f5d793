import { createServer } from 'node:http';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  LogController,
} from 'fastify';
import type { Logger } from 'pino';
import { adminGuard } from './api/auth.js';
import { registerControlRoutes } from './api/control.js';
import { registerLedgerRoutes } from './api/ledger.js';
import { registerSummaryRoute } from './api/summary.js';
import type { Config } from './config/schema.js';
import { GatewayError, toHttp } from './errors/gateway-error.js';
import { ledgerRow } from './proxy/ledger-row.js';
import { type MessagesProxy, newRequestId } from './proxy/messages.js';
import type { Metrics } from './service/metrics.js';
import type { OperatorService } from './service/operator.js';
import type { BudgetStore, ControlStore } from './store/ports.js';
import { registerDashboard } from './web/dashboard.js';

export interface AppDeps {
  config: Config;
  logger: Logger;
  proxy: MessagesProxy;
  store: BudgetStore & Pick<ControlStore, 'getSetting'>;
  operator: OperatorService;
  metrics: Metrics;
  now: () => number;
}

/** Map Fastify's own errors (body too large, bad content length…) to Anthropic-format errors. */
function fastifyErrorToGateway(err: FastifyError): GatewayError {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new GatewayError('request_too_large', 'request body is larger than this gateway accepts');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new GatewayError('invalid_request', err.message);
    default:
      if (err.statusCode === 408)
        return new GatewayError('request_timeout', 'request body took too long to arrive');
      if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
        return new GatewayError('invalid_request', err.message);
      }
      return new GatewayError('internal', 'tokenwarden failed to handle this request');
  }
}

/** The HTTP surface: agent routes (/v1/…) and operator routes (/api/…, /healthz). */
export function buildApp(deps: AppDeps): FastifyInstance {
  const { config, logger, proxy, store } = deps;
  // Node rejects a headers timeout longer than the whole-request timeout.
  const headersTimeout = Math.min(config.headersTimeoutMs, config.requestTimeoutMs);
  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    // One log line per request is the ledger's job; Fastify's own request lines would double the cost.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.maxBodyBytes,
    requestTimeout: config.requestTimeoutMs,
    return503OnClosing: true,
    serverFactory: (handler) =>
      createServer(
        {
          headersTimeout,
          requestTimeout: config.requestTimeoutMs,
          // Check stalled clients every second, not the default 30 s.
          connectionsCheckingInterval: 1000,
          keepAliveTimeout: 65_000,
        },
        handler,
      ),
  });

  // The proxy needs the exact bytes the client sent (it forwards them unchanged); it parses JSON itself.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  app.setErrorHandler(async (err: FastifyError | GatewayError, req, reply) => {
    const gwErr = err instanceof GatewayError ? err : fastifyErrorToGateway(err);
    if (gwErr.code === 'internal') logger.error({ err, url: req.url }, 'unhandled error');
    const http = toHttp(gwErr);
    const id = newRequestId();
    if (req.url.startsWith('/v1/') && !(err instanceof GatewayError)) {
      // Refused input is still recorded: nothing an agent sends goes unaccounted.
      const row = ledgerRow(
        {
          id,
          ts: deps.now(),
          startedAt: performance.now(),
          agent: 'anonymous',
          keyId: null,
          model: null,
          stream: false,
          metadata: { route: `${req.method} ${req.url.split('?')[0]}` },
        },
        { outcome: 'invalid', status: http.status, blockReason: gwErr.message },
      );
      await store
        .appendLedger(row)
        .catch((e: unknown) => logger.error({ err: e }, 'could not write ledger row'));
    }
    return reply
      .code(http.status)
      .headers({ ...http.headers, 'x-tokenwarden-request-id': id })
      .send(http.body);
  });

  app.setNotFoundHandler((req, reply) => {
    if (req.url.startsWith('/v1/')) return proxy.notFound(req, reply);
    const http = toHttp(new GatewayError('not_found', `${req.method} ${req.url.split('?')[0]} not found`));
    return reply.code(http.status).headers(http.headers).send(http.body);
  });

  app.post('/v1/messages', (req, reply) => proxy.messages(req, reply));
  app.post('/v1/messages/count_tokens', (req, reply) => proxy.passthrough(req, reply, 'count_tokens'));
  for (const route of config.passthrough) {
    const [method, path] = route.split(' ') as [string, string];
    app.route({
      method: method as 'GET',
      url: path,
      handler: (req, reply) => proxy.passthrough(req, reply, route),
    });
  }

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    try {
      // The counters and holds (Redis, when configured) and the ledger's database both answer.
      await Promise.all([store.holdCount(), store.getSetting('budgets')]);
      return { status: 'ready' };
    } catch {
      return reply.code(503).send({ status: 'unavailable', reason: 'budget store unreachable' });
    }
  });

  const guard = adminGuard(config.auth.adminToken);
  app.register(
    async (api) => {
      api.addHook('onRequest', guard);
      registerSummaryRoute(api, deps.operator);
      registerLedgerRoutes(api, deps.operator, deps.now);
      registerControlRoutes(api, deps.operator);
    },
    { prefix: '/api/token-usage' },
  );
  app.get('/metrics', { onRequest: guard }, async (_req, reply) => {
    const { contentType, body } = await deps.metrics.render();
    return reply.header('content-type', contentType).send(body);
  });
  // The page is public (it holds no data); the API calls it makes carry the admin token.
  registerDashboard(app, { logger });

  return app;
}
