import type { Command } from 'commander';
import { openClient, type TargetFlags, targetOptions } from './client.js';
import { colorFor, painter, run, usageExit } from './output.js';
import { renderStatus } from './view.js';

interface StatusFlags extends TargetFlags {
  json?: boolean;
}

/** `tokenwarden status [--json]`: the usage summary, from the database or a running gateway. */
export function registerStatus(program: Command): void {
  usageExit(
    targetOptions(
      program
        .command('status')
        .description('usage per budget and window, status, burn rate, top agents and models')
        .option('--json', 'print the GET /api/token-usage/summary document'),
    ),
  ).action((flags: StatusFlags) =>
    run(async () => {
      const client = await openClient(flags);
      try {
        const doc = await client.summary();
        if (flags.json) {
          process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
          return;
        }
        const color = colorFor(process.stdout);
        process.stdout.write(
          renderStatus(doc, client.target, {
            paint: painter(color),
            width: process.stdout.isTTY ? (process.stdout.columns ?? 80) : 80,
            now: Date.now(),
          }),
        );
      } finally {
        await client.close();
      }
    }),
  );
}
