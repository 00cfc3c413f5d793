/**
 * One interface to a gateway's operator side, with two backends: the local database (the same
 * OperatorService the HTTP API runs, built over the SQLite file) or a running gateway over its HTTP
 * API (`--url`). The operator commands (status, monitor, reset, restore, halt, resume, export) only
 * talk to an OperatorClient, so each stays thin and works both ways.
 */
import type { Command } from 'commander';
import type { Config } from '../config/schema.js';
import { createLogger } from '../logger.js';
import { buildCore } from '../service/core.js';
import { InvalidInput, type ResetResult, type ResetScope } from '../service/operator.js';
import { attachRebuilder } from '../service/rebuild.js';
import type { SummaryDoc } from '../service/summary.js';
import type { AlertLevel, LedgerRow, Outcome, Store } from '../store/ports.js';
import type { RedisStore } from '../store/redis/redis-store.js';
import type { SqliteStore } from '../store/sqlite/sqlite-store.js';
import {
  applyRestore,
  type Backup,
  backupJsonl,
  backupSqlite,
  planRestore,
  type RestorePlan,
  type RestoreResult,
  resetWithJournal,
} from './backup.js';
import {
  databaseTarget,
  type LocalFlags,
  loadLocalConfig,
  localOptions,
  MissingDatabaseError,
  openConfiguredStore,
} from './local.js';
import { CliError, USAGE } from './output.js';
import type { Progress } from './progress.js';

/** An alert as `GET /api/token-usage/alerts` shows it. */
export interface AlertView {
  id: string;
  level: AlertLevel;
  budget: string;
  window: string;
  percent: number;
  /** ISO 8601. */
  at: string;
  message: string;
}

/** A ledger row as `GET /api/token-usage/requests` shows it: every LedgerRow field plus `at` (ISO). */
export type RequestView = LedgerRow & { at: string };

export interface RequestsQuery {
  agent?: string;
  model?: string;
  outcome?: Outcome;
  /** Inclusive, ms. */
  since?: number;
  /** Exclusive, ms. */
  until?: number;
  /** 1–1000 (the API's maximum page). */
  limit: number;
  offset?: number;
}

export interface RequestsPage {
  /** Newest first. */
  requests: RequestView[];
  /** Rows matching the filter, all pages together (absent when not asked for, locally). */
  total?: number;
}

export interface HaltResult {
  budget: string;
  /** Streams the gateway ended at once (always 0 locally: the CLI runs no streams). */
  ended: number;
}

/** What the operator commands need from a gateway, locally or over HTTP. */
export interface OperatorClient {
  /** `database /path/tokenwarden.db` or `gateway http://host:port`, for messages. */
  readonly target: string;
  readonly remote: boolean;
  summary(): Promise<SummaryDoc>;
  /** Newest first. */
  alerts(limit: number): Promise<AlertView[]>;
  /**
   * A page of the ledger. `total: false` lets the local backend skip counting the matching rows (a
   * scan of the range); the HTTP API always counts.
   */
  requests(q: RequestsQuery, opts?: { total?: boolean }): Promise<RequestsPage>;
  /**
   * Write a backup into `dir` before a reset: a SQLite copy of the database (local) or a JSONL
   * export of the summary, alerts and ledger (remote, not restorable).
   */
  backup(opts: { dir?: string; progress: Progress }): Promise<Backup>;
  /** Reset usage. Given the backup written just before, a local reset records in it how to undo it. */
  reset(scope: ResetScope, backup?: Backup): Promise<ResetResult>;
  /** What restoring `file` would bring back (local only). Throws a CliError when it cannot. */
  planRestore(file: string): Promise<RestorePlan>;
  restore(plan: RestorePlan): Promise<RestoreResult>;
  resume(budget?: string): Promise<number>;
  halt(budget?: string, reason?: string): Promise<HaltResult>;
  close(): Promise<void>;
}

/** Flags that choose the backend: `--url`/`--token` for a gateway, else `--config`/`--db`. */
export interface TargetFlags extends LocalFlags {
  url?: string;
  token?: string;
}

/** Add the target flags (`--config`, `--db`, `--url`, `--token`) to a command. */
export function targetOptions(cmd: Command): Command {
  return localOptions(cmd)
    .option('--url <url>', 'ask a running gateway (e.g. http://127.0.0.1:4000) instead of the database')
    .option('--token <token>', 'admin token for --url (default: env TOKENWARDEN_ADMIN_TOKEN)');
}

/**
 * The client the flags ask for. Local: loads the configuration (exits 2 when it is invalid) and opens
 * the database, which must exist. Throws a CliError when the flags conflict or the database cannot
 * be opened.
 */
export function openClient(flags: TargetFlags, opts: { timeoutMs?: number } = {}): Promise<OperatorClient> {
  return connector(flags, opts).connect();
}

/**
 * Check the flags (and load the configuration) now, connect later: `connect()` opens the database
 * (throwing a CliError while it cannot be opened) or returns the one HTTP client. For `monitor`,
 * which keeps retrying.
 */
export function connector(
  flags: TargetFlags,
  opts: { timeoutMs?: number } = {},
): { connect: () => Promise<OperatorClient>; target: string } {
  if (flags.url !== undefined) {
    if (flags.db !== undefined || flags.config !== undefined) {
      throw new CliError('--url asks a running gateway; it cannot be combined with --db or --config', USAGE);
    }
    const token = flags.token ?? nonEmpty(process.env.TOKENWARDEN_ADMIN_TOKEN);
    const client = new RemoteClient(flags.url, token, opts.timeoutMs ?? 15_000);
    return { connect: async () => client, target: client.target };
  }
  if (flags.token !== undefined) throw new CliError('--token goes with --url', USAGE);
  const config = loadLocalConfig(flags);
  return { connect: () => openLocalClient(config), target: databaseTarget(config) };
}

/** A local client on the configured database; throws a CliError when it cannot be opened. */
export async function openLocalClient(config: Config): Promise<OperatorClient> {
  try {
    const { store, sqlite, redis } = await openConfiguredStore(config, { mustExist: true });
    return new LocalClient(config, store, sqlite, redis);
  } catch (err) {
    if (err instanceof MissingDatabaseError) throw new CliError(err.message);
    throw new CliError(`cannot open ${databaseTarget(config)}: ${(err as Error).message}`);
  }
}

function nonEmpty(v: string | undefined): string | undefined {
  return v === undefined || v === '' ? undefined : v;
}

function alertView(a: {
  id: string;
  level: AlertLevel;
  budget: string;
  window: string;
  percent: number;
  at: number;
  message: string;
}): AlertView {
  return {
    id: a.id,
    level: a.level,
    budget: a.budget,
    window: a.window,
    percent: a.percent,
    at: new Date(a.at).toISOString(),
    message: a.message,
  };
}

const RESTORE_NEEDS_SQLITE =
  'restore brings back a SQLite backup; with PostgreSQL, reset writes a JSONL export (not restorable) ' +
  "and the database's own backups (pg_dump, point-in-time recovery) are the way back";

/** The database directly, through the same services the gateway builds (src/service/core.ts). */
class LocalClient implements OperatorClient {
  readonly remote = false;
  readonly target: string;
  private readonly logger = createLogger('silent');

  constructor(
    private readonly config: Config,
    private readonly store: Store,
    /** Set when the database is a SQLite file: backups are copies of it, and restorable. */
    private readonly sqlite: SqliteStore | null,
    /** Set when the counters live in Redis: this process may have to rebuild them from the ledger. */
    private readonly redis: RedisStore | null,
  ) {
    this.target = databaseTarget(config);
  }

  /**
   * Built afresh for every call, so that budgets changed through the API and emergencies set by a
   * gateway on the same file are always current (a long-running `monitor` sees them).
   */
  private async core() {
    const core = await buildCore({
      config: this.config,
      store: this.store,
      logger: this.logger,
      now: Date.now,
      owner: `cli:${process.pid}`,
    });
    if (this.redis) {
      attachRebuilder(this.redis, {
        store: this.store,
        resolver: core.resolver,
        budgets: () => core.gatekeeper.currentBudgets,
        now: Date.now,
        logger: this.logger,
      });
    }
    return core;
  }

  async summary() {
    return (await this.core()).operator.summary();
  }

  async alerts(limit: number) {
    return (await (await this.core()).operator.alerts({ limit })).map(alertView);
  }

  async requests(q: RequestsQuery, opts: { total?: boolean } = {}): Promise<RequestsPage> {
    const view = (rows: LedgerRow[]) => rows.map((r) => ({ ...r, at: new Date(r.ts).toISOString() }));
    if (opts.total === false) return { requests: view(await this.store.queryLedger(q)) };
    const { rows, total } = await (await this.core()).operator.requests(q);
    return { requests: view(rows), total };
  }

  backup(opts: { dir?: string; progress: Progress }) {
    // PostgreSQL: a JSONL export like a remote backup (the database's own backups restore it).
    if (!this.sqlite) return backupJsonl(this, opts);
    return backupSqlite(this.sqlite.db, this.config.database, opts);
  }

  async reset(scope: ResetScope, backup?: Backup) {
    const { operator } = await this.core();
    if (!backup || !this.sqlite) return operator.reset(scope);
    return resetWithJournal(this.sqlite, backup, scope, () => operator.reset(scope));
  }

  async planRestore(file: string) {
    if (!this.sqlite) throw new CliError(RESTORE_NEEDS_SQLITE, USAGE);
    return planRestore(this.sqlite, file);
  }

  async restore(plan: RestorePlan) {
    if (!this.sqlite) throw new CliError(RESTORE_NEEDS_SQLITE, USAGE);
    return applyRestore(this.sqlite, plan);
  }

  async resume(budget?: string) {
    return (await this.core()).operator.resume(budget);
  }

  async halt(budget?: string, reason?: string) {
    try {
      const { budget: b } = await (await this.core()).operator.halt(budget, reason);
      return { budget: b, ended: 0 };
    } catch (err) {
      if (err instanceof InvalidInput) throw new CliError(err.message, USAGE);
      throw err;
    }
  }

  async close() {
    await this.store.close();
  }
}

/** Why a fetch failed, from Node's `TypeError: fetch failed` and its cause. */
function networkReason(err: unknown): string {
  const e = err as Error & { cause?: { code?: string; message?: string; errors?: { code?: string }[] } };
  if (e.name === 'TimeoutError' || e.name === 'AbortError') return 'no answer in time';
  const cause = e.cause;
  return cause?.code ?? cause?.errors?.[0]?.code ?? cause?.message ?? e.message;
}

/** A running gateway, through the operator HTTP API (`/api/token-usage/*`). */
class RemoteClient implements OperatorClient {
  readonly remote = true;
  readonly target: string;
  private readonly base: URL;

  constructor(
    url: string,
    private readonly token: string | undefined,
    private readonly timeoutMs: number,
  ) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new CliError(`--url: not a URL: "${url}" (expected e.g. http://127.0.0.1:4000)`, USAGE);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new CliError(`--url: expected an http:// or https:// URL, got "${url}"`, USAGE);
    }
    // A trailing slash, so a gateway behind a path prefix (https://host/tokenwarden/) works too.
    if (!parsed.pathname.endsWith('/')) parsed.pathname += '/';
    parsed.search = '';
    parsed.hash = '';
    this.base = parsed;
    this.target = `gateway ${parsed.href.replace(/\/$/, '')}`;
  }

  private async call<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
    const url = new URL(`api/token-usage/${path}`, this.base);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      throw new CliError(`cannot reach the ${this.target}: ${networkReason(err)}`);
    }
    const text = await res.text();
    let doc: unknown = null;
    try {
      doc = text === '' ? null : JSON.parse(text);
    } catch {
      // not JSON: reported below with the status
    }
    if (res.ok && doc !== null) return doc as T;
    const message = (doc as { error?: { message?: string } } | null)?.error?.message;
    if (res.status === 401) {
      throw new CliError(
        this.token
          ? `the ${this.target} did not accept the admin token (401)`
          : `the ${this.target} needs its admin token (401): pass --token or set TOKENWARDEN_ADMIN_TOKEN`,
      );
    }
    if (res.status === 403) {
      throw new CliError(
        `the ${this.target} refused (403): ${message ?? 'forbidden'}. Without an admin token it answers ` +
          'operator requests from its own machine only',
      );
    }
    if (res.status === 400)
      throw new CliError(message ?? `the ${this.target} refused the request (400)`, USAGE);
    if (res.status === 404) {
      throw new CliError(`the ${this.target} has no ${url.pathname} (404): is this a tokenwarden gateway?`);
    }
    throw new CliError(
      `the ${this.target} answered ${res.status}${message ? `: ${message}` : ` to ${method} ${url.pathname}`}`,
    );
  }

  summary() {
    return this.call<SummaryDoc>('GET', 'summary');
  }

  async alerts(limit: number) {
    return (await this.call<{ alerts: AlertView[] }>('GET', `alerts?limit=${limit}`)).alerts;
  }

  async requests(q: RequestsQuery) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(q)) if (v !== undefined) params.set(k, String(v));
    const page = await this.call<{ requests: RequestView[]; total: number }>('GET', `requests?${params}`);
    return { requests: page.requests, total: page.total };
  }

  backup(opts: { dir?: string; progress: Progress }) {
    return backupJsonl(this, opts);
  }

  reset(scope: ResetScope) {
    return this.call<ResetResult>('POST', 'reset', scope);
  }

  async planRestore(): Promise<RestorePlan> {
    throw new CliError(
      'restore works on the database file, not through --url: run it on the gateway host with --db ' +
        '(or --config); a running gateway may stay up',
      USAGE,
    );
  }

  restore(): Promise<RestoreResult> {
    return this.planRestore() as never;
  }

  async resume(budget?: string) {
    return (await this.call<{ resumed: number }>('POST', 'resume', budget ? { budget } : {})).resumed;
  }

  halt(budget?: string, reason?: string) {
    return this.call<HaltResult>('POST', 'halt', {
      ...(budget !== undefined ? { budget } : {}),
      ...(reason !== undefined ? { reason } : {}),
    });
  }

  async close() {}
}
