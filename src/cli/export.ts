import { createWriteStream, renameSync, rmSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { type Command, Option } from 'commander';
import { openClient, type TargetFlags, targetOptions } from './client.js';
import { csvHeader, csvRow, jsonLine, ledgerPages, writeTo } from './ledger.js';
import { CliError, num, parseTime, run, USAGE, usageExit } from './output.js';
import { progressBar } from './progress.js';

interface ExportFlags extends TargetFlags {
  format: 'csv' | 'jsonl';
  since?: string;
  until?: string;
  out?: string;
}

/** Resolve when `stream` has flushed and closed. */
function finish(stream: NodeJS.WritableStream & { end(cb: (err?: Error | null) => void): unknown }) {
  return new Promise<void>((res, rej) => {
    stream.end((err?: Error | null) => (err ? rej(err) : res()));
  });
}

/** `tokenwarden export`: the ledger as CSV or JSONL, a page at a time. */
export function registerExport(program: Command): void {
  usageExit(
    targetOptions(
      program
        .command('export')
        .description('the ledger (one row per request) as CSV or JSONL, newest first')
        .addOption(new Option('--format <format>', 'output format').choices(['csv', 'jsonl']).default('csv'))
        .option('--since <time>', 'from this time, inclusive (ISO 8601 or epoch ms)')
        .option('--until <time>', 'up to this time, exclusive (ISO 8601 or epoch ms)')
        .option('--out <file>', 'write to this file (default: standard output)'),
    ),
  ).action((flags: ExportFlags) =>
    run(async () => {
      const since = flags.since === undefined ? undefined : parseTime(flags.since, '--since');
      const until = flags.until === undefined ? undefined : parseTime(flags.until, '--until');
      if (since !== undefined && until !== undefined && since >= until) {
        throw new CliError('--since must be before --until', USAGE);
      }
      const client = await openClient(flags, { timeoutMs: 60_000 });
      // A file is written under a temporary name and renamed when complete, so an interrupted export
      // never looks like a finished one.
      const target = flags.out === undefined ? null : resolve(flags.out);
      const partial = target ? join(dirname(target), `.${basename(target)}.${process.pid}.partial`) : null;
      const out = partial ? createWriteStream(partial, { flags: 'wx' }) : process.stdout;
      if (!partial) {
        // A reader that went away (`| head`) ends the export quietly.
        process.stdout.on('error', (err: NodeJS.ErrnoException) => {
          if (err.code === 'EPIPE') process.exit(0);
        });
      }
      // The bar goes to stderr, only when that is a terminal (progressBar checks).
      const progress = progressBar({ label: 'exporting', unit: 'rows' });
      let rows = 0;
      try {
        if (flags.format === 'csv') await writeTo(out, csvHeader());
        let total = 0;
        const range = {
          ...(since !== undefined ? { since } : {}),
          ...(until !== undefined ? { until } : {}),
        };
        for await (const page of ledgerPages(client, range, (t) => {
          total = t;
        })) {
          let chunk = '';
          for (const r of page) chunk += flags.format === 'csv' ? csvRow(r) : jsonLine(r);
          await writeTo(out, chunk);
          rows += page.length;
          progress.update(rows, total);
        }
        progress.done();
        if (partial && target) {
          await finish(out as NodeJS.WritableStream & { end(cb: (err?: Error | null) => void): unknown });
          renameSync(partial, target);
          process.stdout.write(`exported ${num(rows)} rows to ${target}\n`);
        } else if (process.stderr.isTTY) {
          process.stderr.write(`exported ${num(rows)} rows\n`);
        }
      } catch (err) {
        progress.done();
        if (partial) {
          (out as NodeJS.WritableStream & { destroy(): void }).destroy();
          rmSync(partial, { force: true });
        }
        if ((err as NodeJS.ErrnoException).code === 'EPIPE') return;
        throw err;
      } finally {
        await client.close();
      }
    }),
  );
}
