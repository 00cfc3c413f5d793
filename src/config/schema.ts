import { z } from 'zod';
import { isValidTimezone } from '../budget/windows.js';

/** SPEC §2: the defaults every fresh install runs with. Exactly these numbers. */
export const DEFAULT_BUDGETS = [{ name: 'global', month: 140_000, day: 4_667, hour: 194, request: 1_000 }];

const limit = z.number().int().min(0);
const usdLimit = z.number().min(0);

export const budgetSchema = z.strictObject({
  // Budget names become parts of counter keys and header values: keep them to a safe alphabet.
  name: z
    .string()
    .min(1)
    .max(64)
    .regex(/^[A-Za-z0-9_.:@-]+$/, 'use letters, digits and _ . : @ - only'),
  agent: z.string().min(1).max(128).optional(),
  model: z.string().min(1).max(256).optional(),
  month: limit.optional(),
  day: limit.optional(),
  hour: limit.optional(),
  request: limit.optional(),
  rolling: z.boolean().default(false),
  usd: z
    .strictObject({
      month: usdLimit.optional(),
      day: usdLimit.optional(),
      hour: usdLimit.optional(),
      request: usdLimit.optional(),
    })
    .optional(),
});

const rate = z.number().min(0);
const rates = {
  input: rate,
  output: rate,
  cacheWrite5m: rate,
  cacheWrite1h: rate,
  cacheRead: rate,
};
const priceSchema = z.strictObject({
  ...rates,
  longContext: z.strictObject({ threshold: z.number().int().positive(), ...rates }).optional(),
});

/** A list of budgets with unique names: the config file's and the budgets API's. */
export const budgetListSchema = z.array(budgetSchema).superRefine((budgets, ctx) => {
  const seen = new Set<string>();
  budgets.forEach((b, i) => {
    if (seen.has(b.name))
      ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `duplicate budget name "${b.name}"` });
    seen.add(b.name);
  });
});

const passthroughRoute = z
  .string()
  .regex(/^(GET|POST|PUT|PATCH|DELETE|HEAD) \/v1\/\S*$/, 'expected "METHOD /v1/path", e.g. "GET /v1/models"');

/**
 * The one configuration schema (SPEC §4). Every key is optional; unknown keys are errors so that a
 * typo (say `"mnth": 5000`) never silently removes a limit.
 */
export const configSchema = z.strictObject({
  $schema: z.string().optional(),
  port: z.number().int().min(0).max(65535).default(4000),
  host: z.string().min(1).default('127.0.0.1'),
  /** A SQLite file path, or a `postgres://` URL (several replicas share one budget). */
  database: z.string().min(1).default('./tokenwarden.db'),
  /** PostgreSQL schema holding tokenwarden's tables (created if missing). */
  databaseSchema: z
    .string()
    .regex(/^[a-z_][a-z0-9_]{0,62}$/, 'expected a lower-case SQL identifier, e.g. "tokenwarden"')
    .default('public'),
  /** Shared window counters and holds in Redis (the ledger stays in `database`). */
  redis: z
    .string()
    .url()
    .refine((u) => /^rediss?:\/\//.test(u), 'expected a redis:// or rediss:// URL')
    .optional(),
  /** Prefix (and Redis Cluster hash tag) of every key; replicas sharing a budget share it. */
  redisPrefix: z
    .string()
    .regex(/^[A-Za-z0-9_.:-]{1,100}$/, 'expected 1-100 of A-Z a-z 0-9 _ . : -')
    .default('tokenwarden'),
  /**
   * While the budget store (PostgreSQL or Redis) is unreachable: `deny` answers 503 overloaded_error
   * (fail closed); `allow` lets requests through unmetered, saying so in a header and the ledger.
   */
  onStoreError: z.enum(['deny', 'allow']).default('deny'),
  /**
   * Lease of a hold, ms: the gateway renews the holds of its requests in flight; when a replica dies,
   * any other charges its holds in full once their lease has run out.
   */
  holdLeaseMs: z.number().int().min(1000).default(30_000),
  upstream: z.string().url().default('https://api.anthropic.com'),
  /** Provider key used upstream in `keys` auth mode (from ANTHROPIC_API_KEY). Never logged. */
  upstreamApiKey: z.string().min(1).optional(),
  auth: z
    .strictObject({
      mode: z.enum(['passthrough', 'keys']).default('passthrough'),
      adminToken: z.string().min(8, 'must be at least 8 characters').optional(),
    })
    .default({ mode: 'passthrough' }),
  budgets: budgetListSchema.default(() => DEFAULT_BUDGETS.map((b) => ({ ...b, rolling: false }))),
  thresholds: z
    .strictObject({
      warning: z.number().gt(0).max(100).default(80),
      critical: z.number().gt(0).max(100).default(95),
      emergency: z.number().gt(0).max(100).default(98),
    })
    .default({ warning: 80, critical: 95, emergency: 98 })
    .refine((t) => t.warning <= t.critical && t.critical <= t.emergency, {
      message: 'thresholds must satisfy warning <= critical <= emergency',
    }),
  timezone: z.string().default('UTC').refine(isValidTimezone, 'not an IANA time zone (e.g. "Europe/Berlin")'),
  cycleDay: z.number().int().min(1).max(31).default(1),
  estimation: z.enum(['strict', 'estimate', 'count']).default('strict'),
  allowances: z
    .strictObject({
      image: z.number().int().min(0).optional(),
      document: z.number().int().min(0).optional(),
    })
    .default({}),
  weights: z
    .strictObject({
      input: z.number().min(0).default(1),
      output: z.number().min(0).default(1),
      cacheCreation: z.number().min(0).default(1),
      cacheRead: z.number().min(0).default(1),
    })
    .default({ input: 1, output: 1, cacheCreation: 1, cacheRead: 1 }),
  /** Price overrides, model glob → USD per million tokens; tried before the built-in table. */
  prices: z.record(z.string().min(1), priceSchema).default({}),
  /** A model without a known price: charged at the dearest known price, or refused with a 400. */
  unknownModel: z.enum(['max', 'reject']).default('max'),
  overLimit: z.enum(['reject', 'clamp']).default('reject'),
  minClampTokens: z.number().int().min(1).default(64),
  mode: z.enum(['enforce', 'observe']).default('enforce'),
  alerts: z
    .strictObject({
      webhooks: z.array(z.string().url()).default([]),
      command: z.string().min(1).optional(),
      /** Windows that raise threshold alerts; hourly alerts on a small budget would be noise. */
      windows: z.array(z.enum(['month', 'day', 'hour'])).default(['month']),
    })
    .default({ webhooks: [], windows: ['month'] }),
  passthrough: z.array(passthroughRoute).default([]),
  upstreamTimeoutMs: z.number().int().positive().default(600_000),
  maxBodyBytes: z.number().int().positive().default(33_554_432),
  headersTimeoutMs: z.number().int().positive().default(10_000),
  requestTimeoutMs: z.number().int().positive().default(60_000),
  /** Seconds after which a 429's wait counts as short enough for the SDK to retry it. */
  shortRetrySeconds: z.number().int().min(0).default(20),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
export type BudgetConfig = z.output<typeof budgetSchema>;
