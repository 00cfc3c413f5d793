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
import { attachRebuilder } from './service/rebuild.js';
import {
  COUNTERS_SETTING,
  counterPlace,
  counterPlaceMismatch,
  isPostgresUrl,
  type OpenedStore,
  openStore,
} from './store/open.js';
import type { Store } from './store/ports.js';

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
  /** Which store it runs on, passwords hidden (`sqlite ./tokenwarden.db`, `postgres … + redis …`). */
  storeDescription: string;
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

/**
 * Logs errors of the store connections at most once per source every 10 s (an unreachable Redis
 * reports every reconnection attempt), saying how many were not logged in between.
 */
function throttledErrors(logger: Logger): { report(source: string, err: Error): void } {
  const last = new Map<string, { at: number; suppressed: number }>();
  return {
    report(source, err) {
      const at = Date.now();
      const seen = last.get(source);
      if (seen && at - seen.at < 10_000) {
        seen.suppressed++;
        return;
      }
      last.set(source, { at, suppressed: 0 });
      logger.error({ err, source, suppressed: seen?.suppressed ?? 0 }, `budget store error (${source})`);
    },
  };
}

/** The composition root: build every service once, wire them, listen. */
export async function startGateway(config: Config, opts: GatewayOptions = {}): Promise<Gateway> {
  const problems = unsupported(config);
  if (problems.length > 0) throw new StartupError(problems);
  const logger = opts.logger ?? createLogger(config.logLevel);
  const now = opts.now ?? Date.now;
  const storeErrors = throttledErrors(logger);

  let opened: OpenedStore;
  try {
    opened = await openStore(config, {
      backgroundCheckpoints: true,
      onError: (source, err) => storeErrors.report(source, err),
      onRedisConnection: (up) =>
        up
          ? logger.info('Redis connection is back; admission resumes')
          : logger.error(
              `Redis connection lost; ${config.onStoreError === 'allow' ? 'letting requests through unmetered' : 'refusing requests (503)'} until it is back`,
            ),
    });
  } catch (err) {
    throw new StartupError([`database: cannot open the budget store: ${(err as Error).message}`]);
  }
  const { store } = opened;
  try {
    return await startOnStore(config, opened, logger, now, storeErrors);
  } catch (err) {
    await store.close().catch(() => undefined);
    throw err;
  }
}

async function startOnStore(
  config: Config,
  opened: OpenedStore,
  logger: Logger,
  now: () => number,
  storeErrors: ReturnType<typeof throttledErrors>,
): Promise<Gateway> {
  const { store, shared } = opened;
  if (config.redis && !isPostgresUrl(config.database)) {
    logger.warn(
      'redis is used with a SQLite ledger: fine for one instance; replicas sharing a budget need database: "postgres://…"',
    );
  }
  const owner = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  // Holds whose lease ran out (a crashed process) are charged in full: never under-count. On a store
  // of its own (SQLite), every hold left by an earlier process is such a hold; on a shared store,
  // other replicas' holds are alive as long as their leases are renewed.
  // Where the counters live, so that every replica and the CLI on this database use the same ones.
  // A replica that would keep them elsewhere than the others refuses to start: it would enforce a
  // budget of its own. Moving them into Redis is fine (Redis rebuilds them from the ledger).
  if (isPostgresUrl(config.database)) {
    const mismatch = await counterPlaceMismatch(store, config);
    if (mismatch && !mismatch.intoRedis) throw new StartupError([`redis: ${mismatch.message}`]);
    if (mismatch) {
      logger.warn(
        'moving the budget counters from the database into Redis; restart every replica with "redis"',
      );
    }
    await store.setSetting(COUNTERS_SETTING, counterPlace(config));
  }
  const reclaimed = await store.reclaim(shared ? { now: now() } : { now: now(), keepOwner: owner });
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
    // Replicas see a halt made on another within a second.
    emergencyRefreshMs: shared ? 250 : 1000,
  });
  if (opened.redis) {
    const redis = opened.redis;
    attachRebuilder(redis, {
      store,
      resolver,
      budgets: () => gatekeeper.currentBudgets,
      now,
      logger,
    });
    await redis.ensureReady();
  }
  if (budgetsFromStore) {
    logger.warn('using the budgets set through the API (stored in the database), not the config file');
  }
  await emergency.start();
  // Keep the holds of requests in flight alive; reclaim (charge in full) those whose owner stopped
  // renewing them: a crashed replica, or a settlement the store failed.
  const leaseTimer = setInterval(
    () => {
      gatekeeper
        .renewLeases(now())
        .then(() => store.reclaim({ now: now() }))
        .then((n) => {
          if (n > 0) logger.warn({ reclaimed: n }, 'charged holds whose lease ran out in full');
        })
        .catch((err: unknown) => storeErrors.report('lease', err as Error));
    },
    Math.max(250, Math.floor(config.holdLeaseMs / 3)),
  );
  leaseTimer.unref();
  // Budgets changed through the API of another replica apply here within a second.
  await operator.syncBudgets();
  const budgetTimer = shared
    ? setInterval(() => {
        operator
          .syncBudgets()
          .then((changed) => {
            if (changed) logger.info('applied budgets changed through another replica');
          })
          .catch((err: unknown) => storeErrors.report('budgets', err as Error));
      }, 1000)
    : null;
  budgetTimer?.unref();
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
    emergency.stop();
    clearInterval(leaseTimer);
    if (budgetTimer) clearInterval(budgetTimer);
    await monitor.close().catch(() => undefined);
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
    storeDescription: opened.description,
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
        clearInterval(leaseTimer);
        if (budgetTimer) clearInterval(budgetTimer);
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
