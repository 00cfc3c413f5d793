/**
 * Backups before a reset, and `restore`.
 *
 * Local (SQLite): the backup is a consistent copy of the whole database (the SQLite online backup
 * API), written next to the database in `tokenwarden-backups/`. The reset then runs in one write
 * transaction that also records, in the backup file, exactly what it cleared: the `used` of every
 * counter bucket it zeroed and the emergency states it lifted (the "undo journal"), and marks the
 * reset as done in the live database (setting `cli.reset.<id>`). Restore adds those amounts back to
 * the live counters and puts the lifted emergencies back, in one write transaction, and marks the
 * reset undone. So:
 * - usage comes back exactly (counters, emergencies; the ledger and alerts are never touched by a
 *   reset, so they are still there);
 * - it is safe while a gateway runs on the same file: both sides take SQLite's write lock for a few
 *   milliseconds, in-flight holds are left alone, and usage recorded between the reset and the
 *   restore is kept (never under-counted);
 * - a backup restores only onto the database it came from, and only once.
 *
 * Remote (`--url`): the backup is a JSONL record (summary, alerts, ledger) for inspection; the HTTP
 * API has no way to restore counters, so it is not restorable.
 */
import { randomUUID } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  openSync,
  readSync,
  rmSync,
  statSync,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import type { ResetResult, ResetScope } from '../service/operator.js';
import type { EmergencyState } from '../store/ports.js';
import type { SqliteStore } from '../store/sqlite/sqlite-store.js';
import type { OperatorClient } from './client.js';
import { jsonLine, ledgerPages, writeTo } from './ledger.js';
import { CliError } from './output.js';
import type { Progress } from './progress.js';

/** Default backup directory: next to the database (local), or in the working directory (remote). */
export const BACKUP_DIR = 'tokenwarden-backups';
const FORMAT = '1';
const META = 'tokenwarden_backup';
const CLEARED = 'tokenwarden_reset_cleared';
const LIFTED = 'tokenwarden_reset_lifted';
/** Live-database setting that marks a reset done (and later undone): `cli.reset.<id>`. */
const MARK = 'cli.reset.';

export interface Backup {
  path: string;
  format: 'sqlite' | 'jsonl';
  /** Whether `tokenwarden restore` can undo a reset made after it. */
  restorable: boolean;
  bytes: number;
}

/** One counter bucket a reset zeroed, and its `used` just before. */
export interface ClearedBucket {
  series: string;
  bucket: number;
  used: number;
}

export interface RestorePlan {
  file: string;
  resetId: string;
  /** ISO: when the reset ran, and when the backup was taken. */
  resetAt: string;
  backupAt: string;
  /** The database the backup was taken of (absolute path). */
  database: string;
  scope: ResetScope;
  cleared: ClearedBucket[];
  lifted: EmergencyState[];
  /**
   * What is added back per series (`global|month`, `opus|usd-day`…): counted tokens, or USD
   * micro-dollars for `usd-` series.
   */
  bySeries: Record<string, number>;
}

export interface RestoreResult {
  /** Added back per series, as in {@link RestorePlan.bySeries}. */
  bySeries: Record<string, number>;
  /** Counter buckets changed. */
  buckets: number;
  /** Emergency states put back (those not already in force again). */
  emergencies: number;
}

function timestamp(at: number): string {
  return new Date(at)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}Z$/, 'Z');
}

/** `dir/tokenwarden-20250101T120000Z.ext`, or `…-2.ext` if that exists. Creates `dir` (0700). */
function newBackupPath(dir: string, ext: string): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const base = `tokenwarden-${timestamp(Date.now())}`;
  for (let n = 1; ; n++) {
    const path = join(dir, `${base}${n > 1 ? `-${n}` : ''}${ext}`);
    if (!existsSync(path)) return path;
  }
}

/**
 * Copy the database to a new file in `dir` (default: `tokenwarden-backups/` beside the database) with
 * SQLite's online backup API, reporting pages copied to `progress`. A gateway writing meanwhile makes
 * SQLite restart the copy; after two restarts the rest is copied in one step (one read transaction),
 * so it always finishes with a consistent snapshot. The file is readable by its owner only.
 */
export async function backupSqlite(
  db: Database.Database,
  databasePath: string,
  opts: { dir?: string; progress: Progress },
): Promise<Backup> {
  const dir = resolve(opts.dir ?? join(dirname(resolve(databasePath)), BACKUP_DIR));
  const path = newBackupPath(dir, '.db');
  let lastRemaining = Number.POSITIVE_INFINITY;
  let restarts = 0;
  try {
    await db.backup(path, {
      progress({ totalPages, remainingPages }) {
        if (remainingPages > lastRemaining) restarts++;
        lastRemaining = remainingPages;
        opts.progress.update(totalPages - remainingPages, totalPages);
        return restarts >= 2 ? 0x7fffffff : Math.max(100, Math.ceil(totalPages / 100));
      },
    });
    opts.progress.done();
    chmodSync(path, 0o600);
    const copy = new Database(path);
    try {
      // One self-contained file (the copy inherits WAL mode from the live database).
      copy.pragma('journal_mode = DELETE');
      copy.exec(`CREATE TABLE ${META} (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL)`);
      const put = copy.prepare(`INSERT INTO ${META} (key, value) VALUES (?, ?)`);
      put.run('format', FORMAT);
      put.run('backupAt', new Date().toISOString());
      put.run('database', resolve(databasePath));
    } finally {
      copy.close();
    }
  } catch (err) {
    opts.progress.done();
    rmSync(path, { force: true });
    throw new CliError(`could not write the backup ${path}: ${(err as Error).message}`);
  }
  return { path, format: 'sqlite', restorable: true, bytes: statSync(path).size };
}

/**
 * Run `reset` (the OperatorService reset, on `store`) inside one IMMEDIATE transaction of the live
 * database, and record in `backup` what it cleared before committing. The OperatorService runs its
 * statements on this same connection, synchronously (control-state writes are not queued for group
 * commit), so they join the transaction (better-sqlite3 nests them as savepoints): nothing a gateway
 * writes can fall between the snapshot and the reset. The journal is committed to the backup file
 * before the live transaction commits, so a crash leaves either no reset (the journal is then
 * ignored: the live database has no mark) or a reset that can be undone.
 */
export async function resetWithJournal(
  store: SqliteStore,
  backup: Backup,
  scope: ResetScope,
  reset: () => Promise<ResetResult>,
): Promise<ResetResult> {
  if (backup.format !== 'sqlite') return reset();
  const { db } = store;
  const id = randomUUID();
  const at = new Date().toISOString();
  db.exec('BEGIN IMMEDIATE');
  try {
    db.exec(
      'CREATE TEMP TABLE tw_counters_before AS SELECT series, bucket, used FROM main.counters WHERE used <> 0',
    );
    const before = await store.listEmergencies();
    const result = await reset();
    const still = new Set((await store.listEmergencies()).map((e) => e.budget));
    const lifted = before.filter((e) => !still.has(e.budget));
    const cleared = db
      .prepare<[string], ClearedBucket>(
        'SELECT series, bucket, used FROM temp.tw_counters_before ' +
          'WHERE series IN (SELECT value FROM json_each(?)) ORDER BY series, bucket',
      )
      .all(JSON.stringify(result.series));
    writeJournal(backup.path, { id, at, scope, cleared, lifted });
    await store.setSetting(`${MARK}${id}`, JSON.stringify({ at, backup: backup.path, restoredAt: null }));
    db.exec('COMMIT');
    return result;
  } catch (err) {
    if (db.inTransaction) db.exec('ROLLBACK');
    throw err;
  } finally {
    db.exec('DROP TABLE IF EXISTS temp.tw_counters_before');
  }
}

function writeJournal(
  path: string,
  j: { id: string; at: string; scope: ResetScope; cleared: ClearedBucket[]; lifted: EmergencyState[] },
): void {
  const copy = new Database(path);
  try {
    copy
      .transaction(() => {
        copy.exec(`
          CREATE TABLE ${CLEARED} (
            series TEXT NOT NULL, bucket INTEGER NOT NULL, used INTEGER NOT NULL, PRIMARY KEY (series, bucket)
          );
          CREATE TABLE ${LIFTED} (
            budget TEXT NOT NULL PRIMARY KEY, since INTEGER NOT NULL, until INTEGER, reason TEXT NOT NULL,
            manual INTEGER NOT NULL
          );
        `);
        const put = copy.prepare(`INSERT INTO ${META} (key, value) VALUES (?, ?)`);
        put.run('resetId', j.id);
        put.run('resetAt', j.at);
        put.run('scope', JSON.stringify(j.scope));
        const c = copy.prepare(`INSERT INTO ${CLEARED} (series, bucket, used) VALUES (?, ?, ?)`);
        for (const b of j.cleared) c.run(b.series, b.bucket, b.used);
        const l = copy.prepare(
          `INSERT INTO ${LIFTED} (budget, since, until, reason, manual) VALUES (?, ?, ?, ?, ?)`,
        );
        for (const e of j.lifted) l.run(e.budget, e.since, e.until, e.reason, e.manual ? 1 : 0);
      })
      .immediate();
  } finally {
    copy.close();
  }
}

function isSqliteFile(file: string): boolean {
  const fd = openSync(file, 'r');
  try {
    const head = Buffer.alloc(16);
    return readSync(fd, head, 0, 16, 0) === 16 && head.toString('latin1') === 'SQLite format 3\0';
  } finally {
    closeSync(fd);
  }
}

/**
 * Read the undo journal of a backup and check it applies to `store`: the reset it records was made
 * on this database and not undone yet. Throws a CliError saying why not otherwise. Changes nothing.
 */
export async function planRestore(store: SqliteStore, file: string): Promise<RestorePlan> {
  const path = resolve(file);
  if (!existsSync(path) || !statSync(path).isFile()) throw new CliError(`no such backup file: ${path}`);
  if (!isSqliteFile(path)) {
    throw new CliError(
      `${path} is not a SQLite backup. A .jsonl backup (from a reset through --url) is a record to ` +
        'inspect, not something restore can apply',
    );
  }
  const copy = new Database(path, { readonly: true, fileMustExist: true });
  let meta: Record<string, string>;
  let cleared: ClearedBucket[] = [];
  let lifted: EmergencyState[] = [];
  try {
    const hasMeta = copy
      .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")
      .pluck()
      .get(META);
    if (!hasMeta)
      throw new CliError(`${path} is a SQLite database, but not a backup written by tokenwarden reset`);
    meta = Object.fromEntries(
      copy
        .prepare<[], { key: string; value: string }>(`SELECT key, value FROM ${META}`)
        .all()
        .map((r) => [r.key, r.value]),
    );
    if (meta.format !== FORMAT)
      throw new CliError(`${path}: unknown backup format ${meta.format ?? '(none)'}`);
    if (meta.resetId !== undefined) {
      cleared = copy.prepare<[], ClearedBucket>(`SELECT series, bucket, used FROM ${CLEARED}`).all();
      lifted = copy
        .prepare<[], Omit<EmergencyState, 'manual'> & { manual: number }>(
          `SELECT budget, since, until, reason, manual FROM ${LIFTED}`,
        )
        .all()
        .map((e) => ({ ...e, manual: e.manual === 1 }));
    }
  } finally {
    copy.close();
  }
  const { resetId, resetAt } = meta;
  if (resetId === undefined || resetAt === undefined) {
    throw new CliError(
      `nothing to restore: ${path} was taken at ${meta.backupAt} for a reset that did not happen ` +
        '(interrupted), so the database still holds everything the backup does',
    );
  }
  const here = resolve(store.db.name);
  const mark = await store.getSetting(`${MARK}${resetId}`);
  if (mark === null) {
    throw new CliError(
      `the reset in this backup (at ${resetAt}, of ${meta.database}) was not made on this database ` +
        `(${here}), or never completed; pass the database it came from with --db or --config`,
    );
  }
  const restoredAt = (JSON.parse(mark) as { restoredAt?: string | null }).restoredAt;
  if (restoredAt) {
    throw new CliError(
      `the reset in this backup was already undone at ${restoredAt}; restoring it again would count its ` +
        'usage twice',
    );
  }
  const bySeries: Record<string, number> = {};
  for (const c of cleared) bySeries[c.series] = (bySeries[c.series] ?? 0) + c.used;
  return {
    file: path,
    resetId,
    resetAt,
    backupAt: meta.backupAt ?? resetAt,
    database: meta.database ?? here,
    scope: JSON.parse(meta.scope ?? '{}') as ResetScope,
    cleared,
    lifted,
    bySeries,
  };
}

/**
 * Undo the reset of `plan` in one IMMEDIATE transaction: add every cleared amount back to its counter
 * bucket (on top of whatever was recorded since), put back each lifted emergency that is not in
 * force again, and mark the reset undone. Throws a CliError (changing nothing) if another restore
 * undid it meanwhile.
 */
export async function applyRestore(store: SqliteStore, plan: RestorePlan): Promise<RestoreResult> {
  const { db } = store;
  const key = `${MARK}${plan.resetId}`;
  db.exec('BEGIN IMMEDIATE');
  try {
    const mark = await store.getSetting(key);
    const state = mark === null ? null : (JSON.parse(mark) as { restoredAt?: string | null });
    if (!state || state.restoredAt) throw new CliError('the reset in this backup was undone meanwhile');
    const add = db.prepare<[string, number, number]>(
      'INSERT INTO counters (series, bucket, used, reserved) VALUES (?, ?, ?, 0) ' +
        'ON CONFLICT (series, bucket) DO UPDATE SET used = used + excluded.used',
    );
    for (const c of plan.cleared) add.run(c.series, c.bucket, c.used);
    const inForce = new Set((await store.listEmergencies()).map((e) => e.budget));
    let emergencies = 0;
    for (const e of plan.lifted) {
      if (inForce.has(e.budget)) continue;
      await store.setEmergency(e);
      emergencies++;
    }
    await store.setSetting(key, JSON.stringify({ ...state, restoredAt: new Date().toISOString() }));
    db.exec('COMMIT');
    return { bySeries: plan.bySeries, buckets: plan.cleared.length, emergencies };
  } catch (err) {
    if (db.inTransaction) db.exec('ROLLBACK');
    throw err;
  }
}

/**
 * The backup before a reset through `--url`: a JSONL file in `dir` (default ./tokenwarden-backups)
 * with a header line, the summary, the alerts, and every ledger row (`{"type":"request",…}`), read a
 * page at a time. For inspection only; `restore` cannot apply it.
 */
export async function backupJsonl(
  client: OperatorClient,
  opts: { dir?: string; progress: Progress },
): Promise<Backup> {
  const path = newBackupPath(resolve(opts.dir ?? BACKUP_DIR), '.jsonl');
  const out = createWriteStream(path, { flags: 'wx', mode: 0o600 });
  try {
    await writeTo(
      out,
      jsonLine({
        type: 'backup',
        format: 1,
        source: client.target,
        backupAt: new Date().toISOString(),
        restorable: false,
        note: 'a record of the state before a reset through the HTTP API; tokenwarden restore cannot apply it',
      }),
    );
    await writeTo(out, jsonLine({ type: 'summary', summary: await client.summary() }));
    for (const a of await client.alerts(1000)) await writeTo(out, jsonLine({ type: 'alert', ...a }));
    let total = 0;
    let done = 0;
    for await (const page of ledgerPages(client, {}, (t) => {
      total = t;
    })) {
      for (const r of page) await writeTo(out, jsonLine({ type: 'request', ...r }));
      done += page.length;
      opts.progress.update(done, total);
    }
    opts.progress.done();
    await new Promise<void>((res, rej) => out.end((err?: Error | null) => (err ? rej(err) : res())));
  } catch (err) {
    opts.progress.done();
    out.destroy();
    rmSync(path, { force: true });
    if (err instanceof CliError) throw err;
    throw new CliError(`could not write the backup ${path}: ${(err as Error).message}`);
  }
  return { path, format: 'jsonl', restorable: false, bytes: statSync(path).size };
}

/** Remove a backup that turned out not to be needed (the reset was declined). */
export function discardBackup(backup: Backup): void {
  rmSync(backup.path, { force: true });
}
