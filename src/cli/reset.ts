import { type Command, Option } from 'commander';
import type { ResetScope } from '../service/operator.js';
import { discardBackup, type RestorePlan } from './backup.js';
import { openClient, type TargetFlags, targetOptions } from './client.js';
import { bytes, CliError, confirm, FAILED, num, run, usageExit, utc } from './output.js';
import { progressBar } from './progress.js';

interface ResetFlags extends TargetFlags {
  window?: 'month' | 'day' | 'hour';
  agent?: string;
  budget?: string;
  yes?: boolean;
  backupDir?: string;
  json?: boolean;
}

interface RestoreFlags extends TargetFlags {
  yes?: boolean;
  json?: boolean;
}

/** A reset scope in words: `the day window of budget global`. */
function scopeWords(s: ResetScope): string {
  const windows = s.window ? `the ${s.window} window` : 'every window';
  if (s.agent !== undefined) {
    const whose = `the budgets and virtual keys of agent ${s.agent}`;
    return s.budget !== undefined
      ? `${windows} of budget ${s.budget}, if it is one of ${whose}`
      : `${windows} of ${whose}`;
  }
  return s.budget !== undefined ? `${windows} of budget ${s.budget}` : `${windows} of every budget`;
}

/** Refuse before touching anything when nobody can be asked. */
function needConfirmation(yes: boolean | undefined, what: string): void {
  if (!yes && !process.stdin.isTTY) {
    throw new CliError(
      `refusing to ${what} without confirmation: no terminal to ask on. Pass --yes to ${what} ` +
        'non-interactively; nothing was changed',
    );
  }
}

/** Shell-quote a path for a command line shown to the operator. */
function q(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

/**
 * Series names grouped by budget: `global (month, day, hour), opus (usd-day)`, with the amounts when
 * given (tokens, or dollars for `usd-` series, kept in micro-dollars).
 */
function seriesWords(series: string[] | Record<string, number>): string {
  const amounts = Array.isArray(series) ? null : series;
  const byBudget = new Map<string, string[]>();
  const budgetOf = (s: string) => s.slice(0, s.lastIndexOf('|'));
  const rank = (s: string) => ['month', 'day', 'hour'].findIndex((k) => s.endsWith(k));
  const names = [...(Array.isArray(series) ? series : Object.keys(series))].sort(
    (a, b) => budgetOf(a).localeCompare(budgetOf(b)) || rank(a) - rank(b) || a.localeCompare(b),
  );
  for (const s of names) {
    const cut = s.lastIndexOf('|');
    const budget = s.slice(0, cut);
    const window = s.slice(cut + 1);
    const amount = amounts?.[s];
    const text =
      amount === undefined
        ? window
        : `${window} +${window.startsWith('usd-') ? `$${(amount / 1e6).toFixed(2)}` : num(amount)}`;
    byBudget.set(budget, [...(byBudget.get(budget) ?? []), text]);
  }
  return [...byBudget].map(([b, ws]) => `${b} (${ws.join(', ')})`).join(', ');
}

function describePlan(plan: RestorePlan): string {
  const usage = Object.keys(plan.bySeries).length
    ? `usage back into ${seriesWords(plan.bySeries)}`
    : 'no usage (the reset cleared none)';
  const lifted = plan.lifted.length
    ? ` and ${plan.lifted.length} emergency state(s) (${plan.lifted.map((e) => e.budget).join(', ')})`
    : '';
  return (
    `backup ${plan.file}\n` +
    `  taken ${utc(plan.backupAt)} of ${plan.database}\n` +
    `  before the reset of ${scopeWords(plan.scope)} at ${utc(plan.resetAt)}\n` +
    `restore puts ${usage}${lifted}.\n` +
    'Usage recorded since the reset is kept; the ledger and alerts were never cleared.\n'
  );
}

/** `tokenwarden reset` and `tokenwarden restore <backup>`. */
export function registerReset(program: Command): void {
  usageExit(
    targetOptions(
      program
        .command('reset')
        .description('reset usage (all, or by window, agent or budget), after writing a backup')
        .addOption(new Option('--window <window>', 'only this window').choices(['month', 'day', 'hour']))
        .option('--agent <name>', 'only the budgets that cover this agent (its agent budgets and keys)')
        .option('--budget <name>', 'only this budget')
        .option('--yes', 'do not ask for confirmation (needed without a terminal)')
        .option(
          '--backup-dir <dir>',
          'where to write the backup (default: tokenwarden-backups/ beside the database; with --url, ' +
            './tokenwarden-backups)',
        )
        .option('--json', 'print { backup, reset } as JSON'),
    ),
  ).action((flags: ResetFlags) =>
    run(async () => {
      needConfirmation(flags.yes, 'reset');
      const scope: ResetScope = {
        ...(flags.window ? { window: flags.window } : {}),
        ...(flags.agent !== undefined ? { agent: flags.agent } : {}),
        ...(flags.budget !== undefined ? { budget: flags.budget } : {}),
      };
      const out = flags.json ? process.stderr : process.stdout;
      const client = await openClient(flags, { timeoutMs: 120_000 });
      try {
        const backup = await client.backup({
          ...(flags.backupDir !== undefined ? { dir: flags.backupDir } : {}),
          progress: progressBar({ label: 'backing up', unit: client.remote ? 'rows' : 'pages' }),
        });
        out.write(`backup written: ${backup.path} (${bytes(backup.bytes)})\n`);
        if (!backup.restorable) {
          out.write(
            'note: this is a JSONL record of the gateway state (summary, alerts, ledger) to inspect; ' +
              '`tokenwarden restore` cannot apply it. To be able to undo a reset, run it on the gateway ' +
              'host with --db.\n',
          );
        }
        if (!flags.yes) {
          const ok = await confirm(`Reset the usage of ${scopeWords(scope)} on the ${client.target}?`);
          if (!ok) {
            discardBackup(backup);
            out.write('cancelled: nothing was reset (the backup was removed)\n');
            process.exitCode = FAILED;
            return;
          }
        }
        const result = await client.reset(scope, backup);
        if (flags.json) {
          process.stdout.write(`${JSON.stringify({ backup, reset: result }, null, 2)}\n`);
          return;
        }
        out.write(
          `${result.series.length === 0 ? 'no usage recorded for that scope' : `reset ${seriesWords(result.series)}`}` +
            `${result.resumed ? `; lifted ${result.resumed} emergency state(s)` : ''}\n`,
        );
        if (backup.restorable) {
          const where = [
            flags.db !== undefined ? ` --db ${q(flags.db)}` : '',
            flags.config !== undefined ? ` --config ${q(flags.config)}` : '',
          ].join('');
          out.write(`undo with: tokenwarden restore ${q(backup.path)}${where}\n`);
        }
      } finally {
        await client.close();
      }
    }),
  );

  usageExit(
    targetOptions(
      program
        .command('restore')
        .description('undo a reset from the backup it wrote (on the database; a gateway may keep running)')
        .argument('<backup>', 'the .db backup file that reset printed')
        .option('--yes', 'do not ask for confirmation (needed without a terminal)')
        .option('--json', 'print the result as JSON'),
    ),
  ).action((file: string, flags: RestoreFlags) =>
    run(async () => {
      needConfirmation(flags.yes, 'restore');
      const out = flags.json ? process.stderr : process.stdout;
      const client = await openClient(flags);
      try {
        const plan = await client.planRestore(file);
        out.write(describePlan(plan));
        if (!flags.yes && !(await confirm(`Restore into the ${client.target}?`))) {
          out.write('cancelled: nothing was restored\n');
          process.exitCode = FAILED;
          return;
        }
        const result = await client.restore(plan);
        if (flags.json) {
          process.stdout.write(`${JSON.stringify({ backup: plan.file, restored: result }, null, 2)}\n`);
          return;
        }
        out.write(
          `restored ${seriesWords(result.bySeries) || 'no usage'}` +
            `${result.emergencies ? `; ${result.emergencies} emergency state(s) back in force` : ''}\n`,
        );
      } finally {
        await client.close();
      }
    }),
  );
}
