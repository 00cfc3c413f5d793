import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { isLoopback } from './api/auth.js';
import { buildApp } from './app.js';
import type { BudgetDef } from './budget/types.js';
import { WindowResolver } from './budget/windows.js';
import type { BudgetConfig, Config } from './config/schema.js';
import { createLogger } from './logger.js';
import { MessagesProxy } from './proxy/messages.js';
import { UpstreamClient } from './proxy/upstream.js';
import { Gatekeeper } from './service/gatekeeper.js';
import { InflightTracker } from './service/inflight.js';
import type { BudgetStore } from './store/ports.js';
import { openSqliteStore } from './store/sqlite/sqlite-store.js';

export class StartupError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'StartupError';
  }
}

export interface Gateway {
  app: FastifyInstance;
  store: BudgetStore;
  /** e.g. http://127.0.0.1:4000 */
  url: string;
  port: number;
  /** How many holds of an earlier process were charged and cleared at start-up. */
  reclaimed: number;
  /** Stop accepting, let in-flight requests finish (up to `graceMs`), settle the rest, close the store. */
  close(opts?: { graceMs?: number }): Promise<void>;
}

export interface GatewayOptions {
  logger?: Logger;
  /** Clock (ms since epoch); tests may pass their own. */
  now?: () => number;
}

export function toBudgetDefs(budgets: BudgetConfig[]): BudgetDef[] {
  return budgets.map((b) => ({
    name: b.name,
    scope: { ...(b.agent ? { agent: b.agent } : {}), ...(b.model ? { model: b.model } : {}) },
    limits: {
      ...(b.month !== undefined ? { month: b.month } : {}),
      ...(b.day !== undefined ? { day: b.day } : {}),
      ...(b.hour !== undefined ? { hour: b.hour } : {}),
    },
    ...(b.request !== undefined ? { request: b.request } : {}),
    rolling: b.rolling,
  }));
}

/**
 * Settings this build accepts in the schema but cannot honour yet. Each would change what gets
 * enforced, so starting anyway would mislead the operator: refuse, and say why.
 */
function unsupported(config: Config): string[] {
  const problems: string[] = [];
  if (config.redis) problems.push('redis: the Redis store is not available in this version; remove "redis"');
  if (/^postgres(ql)?:\/\//.test(config.database)) {
    problems.push('database: PostgreSQL is not available in this version; use a SQLite file path');
  }
  if (config.auth.mode === 'keys') problems.push('auth.mode: "keys" is not available in this version');
  if (config.mode === 'observe') problems.push('mode: "observe" is not available in this version');
  if (config.overLimit === 'clamp') problems.push('overLimit: "clamp" is not available in this version');
  if (config.estimation === 'count') problems.push('estimation: "count" is not available in this version');
  config.budgets.forEach((b, i) => {
    if (b.usd) problems.push(`budgets.${i}.usd: USD limits are not available in this version`);
  });
  if (!config.auth.adminToken && !isLoopback(config.host) && config.host !== 'localhost') {
    problems.push(
      `host: refusing to listen on non-loopback address ${config.host} without auth.adminToken ` +
        '(operator endpoints would be open to the network)',
    );
  }
  return problems;
}

/** The composition root: build every service once, wire them, listen. */
export async function startGateway(config: Config, opts: GatewayOptions = {}): Promise<Gateway> {
  const problems = unsupported(config);
  if (problems.length > 0) throw new StartupError(problems);
  const logger = opts.logger ?? createLogger(config.logLevel);
  const now = opts.now ?? Date.now;
  if (config.alerts.webhooks.length > 0 || config.alerts.command) {
    logger.warn(
      'alert channels are configured but not sent by this version (alerts come in a later release)',
    );
  }

  const store = openSqliteStore({ path: config.database });
  const owner = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  // Holds left by an earlier process (crash, kill -9) are charged in full: never under-count.
  const reclaimed = await store.reclaim({ now: now(), keepOwner: owner });
  if (reclaimed > 0) logger.warn({ reclaimed }, 'charged holds left by an earlier process in full');

  const resolver = new WindowResolver({ timezone: config.timezone, cycleDay: config.cycleDay });
  const gatekeeper = new Gatekeeper({
    store,
    resolver,
    budgets: toBudgetDefs(config.budgets),
    owner,
    holdTtlMs: config.upstreamTimeoutMs * 2 + 60_000,
  });
  const upstream = new UpstreamClient({ baseUrl: config.upstream, timeoutMs: config.upstreamTimeoutMs });
  const inflight = new InflightTracker();
  const proxy = new MessagesProxy({ config, gatekeeper, upstream, store, inflight, logger, now });
  const app = buildApp({ config, logger, proxy, store, gatekeeper, resolver, now });

  try {
    await app.listen({ port: config.port, host: config.host });
  } catch (err) {
    await store.close();
    throw err;
  }
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  const hostForUrl = config.host.includes(':') ? `[${config.host}]` : config.host;

  let closed: Promise<void> | null = null;
  return {
    app,
    store,
    url: `http://${hostForUrl}:${port}`,
    port,
    reclaimed,
    close(closeOpts = {}) {
      closed ??= (async () => {
        const closing = app.close();
        if (!(await inflight.drain(closeOpts.graceMs ?? 10_000))) {
          logger.warn({ inflight: inflight.size }, 'cancelling requests still in flight');
          inflight.abortAll();
          await inflight.drain(5_000);
        }
        // Keep-alive sockets that went idle after the last response would hold close() open.
        app.server.closeAllConnections();
        await closing;
        await upstream.close();
        await store.close();
      })();
      return closed;
    },
  };
}
