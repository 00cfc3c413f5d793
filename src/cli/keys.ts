import { type Command, type CommanderError, InvalidArgumentError } from 'commander';
import {
  type KeyInfo,
  KeyInputError,
  type KeyLimits,
  KeyService,
  LIMIT_NAMES,
  validateKeyInput,
} from '../keys/keys.js';
import { type Local, type LocalFlags, localOptions, openLocal } from './local.js';

interface CreateFlags {
  agent: string;
  month?: number;
  day?: number;
  hour?: number;
  request?: number;
  json?: boolean;
  config?: string;
  db?: string;
}

interface ListFlags {
  json?: boolean;
  config?: string;
  db?: string;
}

/** Exit codes: 0 ok, 1 the operation failed, 2 bad usage or configuration. */
const FAILED = 1;
const USAGE = 2;

/** `--month 5000` → 5000. Only checks it is a number; KeyService decides what a valid limit is. */
function tokens(value: string): number {
  if (!/^\s*[-+]?\d+(\.\d+)?\s*$/.test(value)) throw new InvalidArgumentError('expected a number of tokens.');
  return Number(value);
}

function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function formatLimits(limits: Record<string, number> | null): string {
  if (!limits) return '-';
  const parts = LIMIT_NAMES.filter((n) => limits[n] !== undefined).map((n) => `${n}=${limits[n]}`);
  return parts.length > 0 ? parts.join(' ') : '-';
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return `${[header, ...rows].map(line).join('\n')}\n`;
}

function listJson(keys: KeyInfo[]): string {
  const doc = keys.map((k) => ({
    id: k.id,
    prefix: k.prefix,
    agent: k.agent,
    limits: k.limits,
    createdAt: iso(k.createdAt),
    revokedAt: iso(k.revokedAt),
  }));
  return `${JSON.stringify(doc, null, 2)}\n`;
}

function listText(keys: KeyInfo[]): string {
  if (keys.length === 0)
    return 'no virtual keys yet (create one with: tokenwarden keys create --agent NAME)\n';
  return table(
    ['ID', 'PREFIX', 'AGENT', 'LIMITS', 'CREATED', 'REVOKED'],
    keys.map((k) => [
      k.id,
      k.prefix,
      k.agent,
      formatLimits(k.limits),
      iso(k.createdAt) ?? '',
      iso(k.revokedAt) ?? '-',
    ]),
  );
}

function fail(message: string, code: number): void {
  process.stderr.write(`tokenwarden: ${message}\n`);
  process.exitCode = code;
}

/**
 * Open the local database, run `fn` with a KeyService on it, close. Bad input (KeyInputError) exits
 * 2, any other error 1.
 */
async function withKeys(
  flags: LocalFlags,
  fn: (keys: KeyService, local: Local) => Promise<void>,
): Promise<void> {
  const local = await openLocal(flags);
  try {
    await fn(new KeyService({ store: local.store, now: Date.now }), local);
  } catch (err) {
    fail((err as Error).message, err instanceof KeyInputError ? USAGE : FAILED);
  } finally {
    await local.close();
  }
}

/** `tokenwarden keys create|list|revoke`: virtual keys for `keys` auth mode, in the local database. */
export function registerKeys(program: Command): void {
  const keys = program
    .command('keys')
    .description('manage virtual keys (auth mode "keys"): create, list, revoke');
  // Commander exits 1 on usage errors; this CLI reserves 1 for failed operations. Subcommands created
  // below inherit this.
  keys.exitOverride((err: CommanderError) => process.exit(err.exitCode === 0 ? 0 : USAGE));

  localOptions(
    keys
      .command('create')
      .description('create a key for an agent; the key is printed once and cannot be shown again')
      .requiredOption('--agent <name>', 'agent name (letters, digits and _ . : @ / + -)')
      .option('--month <tokens>', "this key's monthly limit", tokens)
      .option('--day <tokens>', "this key's daily limit", tokens)
      .option('--hour <tokens>', "this key's hourly limit", tokens)
      .option('--request <tokens>', "this key's per-request limit", tokens)
      .option('--json', 'print { key, id, prefix, agent, limits } as JSON'),
  ).action(async (flags: CreateFlags) => {
    const limits: KeyLimits = {
      month: flags.month,
      day: flags.day,
      hour: flags.hour,
      request: flags.request,
    };
    try {
      // Refuse bad usage before opening (perhaps creating) a database.
      validateKeyInput({ agent: flags.agent, limits });
    } catch (err) {
      fail((err as Error).message, USAGE);
      return;
    }
    await withKeys(flags, async (service, local) => {
      const { key, record } = await service.create({ agent: flags.agent, limits });
      if (local.config.auth.mode !== 'keys') {
        process.stderr.write(
          `tokenwarden: note: auth.mode is "${local.config.auth.mode}"; the gateway checks virtual keys ` +
            'only in "keys" mode\n',
        );
      }
      if (flags.json) {
        const doc = { key, id: record.id, prefix: record.prefix, agent: record.agent, limits: record.limits };
        process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
        return;
      }
      process.stdout.write(
        `Created a virtual key for agent "${record.agent}":\n\n` +
          `  ${key}\n\n` +
          'Copy it now: it is shown only this once and cannot be shown again (only its hash is stored).\n\n' +
          `  id:      ${record.id}\n` +
          `  prefix:  ${record.prefix}\n` +
          `  agent:   ${record.agent}\n` +
          `  limits:  ${record.limits ? formatLimits(record.limits) : 'none (the configured budgets apply)'}\n\n` +
          'The agent sends it as its API key (x-api-key, or ANTHROPIC_API_KEY for the SDKs) to the gateway.\n' +
          `Revoke it with: tokenwarden keys revoke ${record.id}\n`,
      );
    });
  });

  localOptions(
    keys
      .command('list')
      .description('list keys (id, prefix, agent, limits, created, revoked); never the keys themselves')
      .option('--json', 'print a JSON array'),
  ).action(async (flags: ListFlags) => {
    await withKeys(flags, async (service) => {
      const list = await service.list();
      process.stdout.write(flags.json ? listJson(list) : listText(list));
    });
  });

  localOptions(
    keys
      .command('revoke')
      .description('revoke a key; a running gateway refuses it within about a second')
      .argument('<id>', 'key id (key_…), or its prefix (tw_…) when that names one active key'),
  ).action(async (id: string, flags: LocalFlags) => {
    await withKeys(flags, async (service) => {
      if (await service.revoke(id)) {
        process.stdout.write(`revoked ${id}\n`);
      } else {
        fail(
          `no active key ${JSON.stringify(id)} (unknown or already revoked); see tokenwarden keys list`,
          FAILED,
        );
      }
    });
  });
}
