import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { z } from 'zod';
import { type Config, configSchema } from './schema.js';

/** Where a setting came from, for error messages. */
type Source = string;

export interface LoadOptions {
  /** `--config` path; else TOKENWARDEN_CONFIG; else ./tokenwarden.config.json when it exists. */
  configPath?: string | undefined;
  env?: NodeJS.ProcessEnv;
  /** Values from command-line flags, already named as config keys (e.g. `{ port: '4100' }`). */
  flags?: Record<string, unknown>;
  cwd?: string;
}

export type LoadResult = { ok: true; config: Config; file: string | null } | { ok: false; errors: string[] };

/** Environment variables and the config key each sets. Numeric-looking values become numbers. */
const ENV_KEYS: Record<string, string> = {
  TOKENWARDEN_PORT: 'port',
  TOKENWARDEN_HOST: 'host',
  TOKENWARDEN_DATABASE: 'database',
  TOKENWARDEN_DB: 'database',
  TOKENWARDEN_REDIS: 'redis',
  TOKENWARDEN_REDIS_PREFIX: 'redisPrefix',
  TOKENWARDEN_DATABASE_SCHEMA: 'databaseSchema',
  TOKENWARDEN_ON_STORE_ERROR: 'onStoreError',
  TOKENWARDEN_UPSTREAM: 'upstream',
  TOKENWARDEN_AUTH_MODE: 'auth.mode',
  TOKENWARDEN_ADMIN_TOKEN: 'auth.adminToken',
  TOKENWARDEN_TIMEZONE: 'timezone',
  TOKENWARDEN_CYCLE_DAY: 'cycleDay',
  TOKENWARDEN_ESTIMATION: 'estimation',
  TOKENWARDEN_OVER_LIMIT: 'overLimit',
  TOKENWARDEN_MODE: 'mode',
  TOKENWARDEN_UPSTREAM_TIMEOUT_MS: 'upstreamTimeoutMs',
  TOKENWARDEN_MAX_BODY_BYTES: 'maxBodyBytes',
  TOKENWARDEN_HEADERS_TIMEOUT_MS: 'headersTimeoutMs',
  TOKENWARDEN_REQUEST_TIMEOUT_MS: 'requestTimeoutMs',
  TOKENWARDEN_LOG_LEVEL: 'logLevel',
  TOKENWARDEN_BUDGETS: 'budgets',
};

function coerce(raw: string, key: string): unknown {
  if (key === 'budgets') {
    try {
      return JSON.parse(raw);
    } catch {
      return raw; // the schema then reports "expected array" against this variable
    }
  }
  return /^-?\d+(\.\d+)?$/.test(raw.trim()) ? Number(raw) : raw;
}

function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.');
  let node = target;
  for (const part of parts.slice(0, -1)) {
    const next = node[part];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[part] = {};
    node = node[part] as Record<string, unknown>;
  }
  node[parts[parts.length - 1] as string] = value;
}

/** Merge `layer` into `base`: plain objects one level deep (auth, thresholds…), everything else replaced. */
function mergeLayer(
  base: Record<string, unknown>,
  layer: Record<string, unknown>,
  source: Source,
  sources: Map<string, Source>,
): void {
  for (const [key, value] of Object.entries(layer)) {
    const prev = base[key];
    if (isPlainObject(value) && isPlainObject(prev)) {
      base[key] = { ...prev, ...value };
      for (const sub of Object.keys(value)) sources.set(`${key}.${sub}`, source);
    } else {
      base[key] = value;
      sources.set(key, source);
      if (isPlainObject(value)) for (const sub of Object.keys(value)) sources.set(`${key}.${sub}`, source);
    }
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describeIssue(issue: z.core.$ZodIssue, sources: Map<string, Source>): string {
  const path = issue.path.map(String);
  const dotted = path.join('.') || '(root)';
  let source: Source = 'defaults';
  for (let n = path.length; n > 0; n--) {
    const s = sources.get(path.slice(0, n).join('.'));
    if (s) {
      source = s;
      break;
    }
  }
  if (issue.code === 'unrecognized_keys') {
    return issue.keys
      .map((k) => {
        const full = [...path, k].join('.');
        return `${full}: unknown setting (from ${sources.get(full) ?? source})`;
      })
      .join('\n');
  }
  return `${dotted}: ${issue.message} (from ${source})`;
}

/**
 * Build the configuration from defaults → config file → environment → flags (later wins) and
 * validate it with the one schema. Never throws: every problem is returned, each naming the
 * setting and where its value came from.
 */
export function loadConfig(opts: LoadOptions = {}): LoadResult {
  const env = opts.env ?? process.env;
  const cwd = opts.cwd ?? process.cwd();
  const merged: Record<string, unknown> = {};
  const sources = new Map<string, Source>();
  const errors: string[] = [];

  const explicit = opts.configPath ?? env.TOKENWARDEN_CONFIG;
  const filePath = explicit ? resolve(cwd, explicit) : resolve(cwd, 'tokenwarden.config.json');
  let file: string | null = null;
  if (explicit || existsSync(filePath)) {
    try {
      const parsed: unknown = JSON.parse(readFileSync(filePath, 'utf8'));
      if (!isPlainObject(parsed)) {
        errors.push(`config file ${filePath}: expected a JSON object`);
      } else {
        mergeLayer(merged, parsed, `file ${filePath}`, sources);
        file = filePath;
      }
    } catch (err) {
      errors.push(`config file ${filePath}: ${(err as Error).message}`);
    }
  }

  for (const [name, key] of Object.entries(ENV_KEYS)) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    const layer: Record<string, unknown> = {};
    setPath(layer, key, coerce(raw, key));
    mergeLayer(merged, layer, `env ${name}`, sources);
  }
  if (env.ANTHROPIC_API_KEY) {
    mergeLayer(merged, { upstreamApiKey: env.ANTHROPIC_API_KEY }, 'env ANTHROPIC_API_KEY', sources);
  }

  const flagLayer: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(opts.flags ?? {})) {
    if (value === undefined) continue;
    flagLayer[key] = typeof value === 'string' ? coerce(value, key) : value;
  }
  for (const key of Object.keys(flagLayer)) {
    mergeLayer(merged, { [key]: flagLayer[key] }, `flag --${key === 'database' ? 'db' : key}`, sources);
  }

  if (errors.length > 0) return { ok: false, errors };
  const result = configSchema.safeParse(merged);
  if (!result.success) {
    return { ok: false, errors: result.error.issues.map((i) => describeIssue(i, sources)) };
  }
  return { ok: true, config: result.data, file };
}

/** Validate a config object (tests, the budgets API): the same schema, no file or env. Throws on error. */
export function parseConfig(input: Record<string, unknown> = {}): Config {
  const result = configSchema.safeParse(input);
  if (!result.success) {
    const sources = new Map<string, Source>();
    throw new Error(result.error.issues.map((i) => describeIssue(i, sources)).join('\n'));
  }
  return result.data;
}
