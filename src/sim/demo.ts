/**
 * The `demo` command's world: the fake Anthropic upstream, the real gateway on a temporary SQLite
 * database with small budgets, and simulated agents sending it traffic. No provider key, no network.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../config/load.js';
import { createLogger } from '../logger.js';
import { type Gateway, startGateway } from '../main.js';
import { type AgentResult, type SimAgent, startAgents } from './agents.js';
import { startFakeUpstream } from './upstream.js';

/**
 * Small budgets, so that a newcomer sees a warning, blocked agents, the alerts and an emergency
 * shutdown within about a minute of traffic.
 */
export const DEMO_BUDGETS = [
  { name: 'global', month: 25_000, request: 2_000 },
  { name: 'researcher', agent: 'researcher', hour: 5_000 },
  { name: 'opus', model: 'claude-opus-*', day: 6_000 },
];

/**
 * Prompts stay short: the gateway holds a strict upper bound of the input (its UTF-8 bytes), so a
 * long prompt would be refused by the per-request limit before any token is spent.
 */
export const DEMO_AGENTS: SimAgent[] = [
  {
    name: 'researcher',
    model: 'claude-sonnet-4-5',
    pauseMs: [900, 1800],
    maxTokens: [500, 900],
    outputTokens: [200, 500],
    promptWords: [30, 100],
    streamShare: 0.7,
    tokenDelayMs: 6,
  },
  {
    name: 'coder',
    model: 'claude-opus-4-5',
    pauseMs: [800, 1600],
    maxTokens: [300, 700],
    outputTokens: [100, 400],
    promptWords: [20, 80],
    streamShare: 0.5,
    tokenDelayMs: 4,
  },
  {
    name: 'summarizer',
    model: 'claude-haiku-4-5',
    pauseMs: [600, 1200],
    maxTokens: [100, 250],
    outputTokens: [20, 150],
    promptWords: [40, 120],
    streamShare: 0,
  },
  {
    // Small requests: they still fit when the big ones no longer do, and carry the month to 98%.
    name: 'triage',
    model: 'claude-haiku-4-5',
    pauseMs: [700, 1400],
    maxTokens: [32, 96],
    outputTokens: [10, 60],
    promptWords: [5, 15],
    streamShare: 0.2,
  },
  {
    // Now and then a runaway job asks for far more than the per-request limit allows.
    name: 'nightly-batch',
    model: 'claude-sonnet-4-5',
    pauseMs: [4000, 8000],
    maxTokens: [1100, 1500],
    outputTokens: [800, 1400],
    promptWords: [15, 40],
    streamShare: 0.3,
    oversizedShare: 0.4,
    oversizedMaxTokens: 8192,
  },
];

/** The port the demo tries first when none is given; taken, it falls back to a free one. */
export const DEMO_DEFAULT_PORT = 4000;

export interface Demo {
  gateway: Gateway;
  /** The temporary SQLite file; its folder is deleted by stop(). */
  database: string;
  /** Stop the agents, the gateway and the upstream, and delete the temporary database. Never throws. */
  stop(): Promise<void>;
}

/**
 * Start the demonstration. `port` 0 picks a free port; without one, {@link DEMO_DEFAULT_PORT} is
 * tried first. Each agent answer goes to `onResult`. Cleans up after itself when it cannot start.
 */
export async function startDemo(opts: { port?: number; onResult: (r: AgentResult) => void }): Promise<Demo> {
  const dir = mkdtempSync(join(tmpdir(), 'tokenwarden-demo-'));
  const database = join(dir, 'demo.db');
  const upstream = await startFakeUpstream({ record: false });
  const configFor = (port: number) =>
    parseConfig({
      port,
      host: '127.0.0.1',
      database,
      upstream: upstream.url,
      budgets: DEMO_BUDGETS,
      alerts: { windows: ['month', 'day', 'hour'] },
      // The demo tells its own story (the alerts included, which the gateway would also log);
      // the agents see and report any failure.
      logLevel: 'fatal',
    });
  const logger = createLogger('fatal');

  let gateway: Gateway;
  try {
    try {
      gateway = await startGateway(configFor(opts.port ?? DEMO_DEFAULT_PORT), { logger });
    } catch (err) {
      if (opts.port !== undefined || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
      gateway = await startGateway(configFor(0), { logger });
    }
  } catch (err) {
    await upstream.close();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  const agents = startAgents({ baseUrl: gateway.url, agents: DEMO_AGENTS, onResult: opts.onResult });
  let stopped: Promise<void> | null = null;
  return {
    gateway,
    database,
    stop() {
      stopped ??= (async () => {
        await agents.stop();
        await gateway.close({ graceMs: 2000 }).catch(() => undefined);
        await upstream.close().catch(() => undefined);
        rmSync(dir, { recursive: true, force: true });
      })();
      return stopped;
    },
  };
}
