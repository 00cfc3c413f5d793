import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import {
  type AlertChannel,
  commandChannel,
  logChannel,
  type QueuedAlertChannel,
  webhookChannel,
} from './alerts/channels.js';
import { AlertMonitor } from './alerts/monitor.js';
import { isLoopback } from './api/auth.js';
import { buildApp } from './app.js';
import { PriceTable } from './budget/prices.js';
import type { Config } from './config/schema.js';
import { KeyService } from './keys/keys.js';
import { createLogger } from './logger.js';
import { MessagesProxy } from './proxy/messages.js';
import { UpstreamClient } from './proxy/upstream.js';
import { buildCore } from './service/core.js';
import { InflightTracker } from './service/inflight.js';
import { Metrics } from './service/metrics.js';
import type { OperatorService } from './service/operator.js';
import type { Store } from './store/ports.js';
import { openSqliteStore } from './store/sqlite/sqlite-store.js';

export class StartupError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'StartupError';
  }
}

export interface Gateway {
  app: FastifyInstance;
  store: Store;
  operator: OperatorService;
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

/** Settings that would expose or mislead the operator: refuse to start, and say why. */
function unsupported(config: Config): string[] {
  const problems: string[] = [];
  if (config.redis) problems.push('redis: the Redis store is not available in this version; remove "redis"');
  if (/^postgres(ql)?:\/\//.test(config.database)) {
    problems.push('database: PostgreSQL is not available in this version; use a SQLite file path');
  }
  if (config.auth.mode === 'keys' && !config.upstreamApiKey) {
    problems.push('auth.mode: "keys" needs the provider key in ANTHROPIC_API_KEY');
  }
  if (!config.auth.adminToken && !isLoopback(config.host) && config.host !== 'localhost') {
    problems.push(
      `host: refusing to listen on non-loopback address ${config.host} without auth.adminToken ` +
        '(operator endpoints would be open to the network)',
    );
  }
  return problems;
}

function alertChannels(config: Config, logger: Logger): Array<AlertChannel & Partial<QueuedAlertChannel>> {
  const channels: Array<AlertChannel & Partial<QueuedAlertChannel>> = [logChannel(logger)];
  for (const url of config.alerts.webhooks) channels.push(webhookChannel({ url, logger }));
  if (config.alerts.command) channels.push(commandChannel({ command: config.alerts.command, logger }));
  return channels;
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

  const inflight = new InflightTracker();
  // Alert evaluation is poked after each settle, at most a few times a second (set below).
  let pokeAlerts = () => {};
  const { resolver, emergency, gatekeeper, operator, budgetsFromStore } = await buildCore({
    config,
    store,
    logger,
    now,
    owner,
    inflight,
    onBudgetsChanged: () => pokeAlerts(),
  });
  if (budgetsFromStore) {
    logger.warn('using the budgets set through the API (stored in the database), not the config file');
  }
  await emergency.start();
  const channels = alertChannels(config, logger);
  const monitor = new AlertMonitor({
    store,
    resolver,
    budgets: () => gatekeeper.currentBudgets,
    thresholds: () => config.thresholds,
    windows: config.alerts.windows,
    channels,
    now,
    logger,
    onEmergency: (e) => {
      emergency.refresh().catch(() => undefined);
      // An emergency stops what is streaming under it too.
      inflight.halt(e.budget, `tokenwarden: emergency shutdown of budget "${e.budget}" (${e.reason})`);
    },
  });
  // Evaluate thresholds at most a few times a second, however busy the gateway is.
  let alertTimer: NodeJS.Timeout | null = null;
  pokeAlerts = () => {
    if (alertTimer) return;
    alertTimer = setTimeout(() => {
      alertTimer = null;
      monitor.poke();
    }, 100);
    alertTimer.unref();
  };
  const metrics = new Metrics(async () => {
    const at = now();
    const slots = gatekeeper.currentBudgets.flatMap((b) => resolver.slots(b, at));
    const totals = await store.usage(slots.map((sl) => ({ series: sl.series, from: sl.from })));
    return slots.map((sl, i) => ({
      budget: sl.budget,
      window: sl.kind,
      used: totals[i]?.used ?? 0,
      reserved: totals[i]?.reserved ?? 0,
      limit: sl.limit,
    }));
  });
  const keys = new KeyService({ store, now });
  const upstream = new UpstreamClient({ baseUrl: config.upstream, timeoutMs: config.upstreamTimeoutMs });
  const proxy = new MessagesProxy({
    config,
    gatekeeper,
    upstream,
    store,
    inflight,
    prices: new PriceTable(config.prices),
    logger,
    now,
    keys,
    metrics: {
      admission: (ms) => metrics.admission(ms),
      upstream: (ms) => metrics.upstream(ms),
      recorded: (row) => metrics.recorded(row),
      settled: (row) => {
        metrics.settled(row);
        pokeAlerts();
      },
    },
  });
  const app = buildApp({ config, logger, proxy, store, operator, metrics, now });
  // Alerts that crossed while the gateway was down are raised at start.
  monitor.poke();

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
    operator,
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
        emergency.stop();
        if (alertTimer) clearTimeout(alertTimer);
        await monitor.idle();
        monitor.close();
        // Give queued webhooks a moment to go out; they never hold the shutdown for long.
        await Promise.all(channels.map((c) => (c.idle ? Promise.race([c.idle(), sleep(2000)]) : undefined)));
        for (const c of channels) c.close?.();
        await store.close();
      })();
      return closed;
    },
  };
}
