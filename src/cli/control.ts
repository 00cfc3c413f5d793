import type { Command } from 'commander';
import { openClient, type TargetFlags, targetOptions } from './client.js';
import { run, usageExit } from './output.js';

interface HaltFlags extends TargetFlags {
  budget?: string;
  reason?: string;
  json?: boolean;
}

interface ResumeFlags extends TargetFlags {
  budget?: string;
  json?: boolean;
}

/** `tokenwarden halt` and `tokenwarden resume`: enter and leave emergency state by hand. */
export function registerControl(program: Command): void {
  usageExit(
    targetOptions(
      program
        .command('halt')
        .description('emergency stop: refuse agent requests (of one budget, or all) until resumed')
        .option('--budget <name>', 'budget to halt (default: every budget)')
        .option('--reason <text>', 'why, shown to agents and in status', 'halted by an operator')
        .option('--json', 'print { budget, ended } as JSON'),
    ),
  ).action((flags: HaltFlags) =>
    run(async () => {
      const client = await openClient(flags);
      try {
        const result = await client.halt(flags.budget, flags.reason);
        if (flags.json) {
          process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
          return;
        }
        const what = result.budget === '*' ? 'every budget' : `budget ${result.budget}`;
        const resume = `tokenwarden resume${result.budget === '*' ? '' : ` --budget ${result.budget}`}`;
        process.stdout.write(`halted ${what}: agent requests are refused (429) until \`${resume}\`\n`);
        process.stdout.write(
          client.remote
            ? `${result.ended} stream(s) in flight were ended\n`
            : 'every gateway on this database applies it within a second and ends the streams it covers\n',
        );
      } finally {
        await client.close();
      }
    }),
  );

  usageExit(
    targetOptions(
      program
        .command('resume')
        .description('lift the emergency state (of one budget, or all)')
        .option('--budget <name>', 'budget to resume (default: every budget)')
        .option('--json', 'print { resumed } as JSON'),
    ),
  ).action((flags: ResumeFlags) =>
    run(async () => {
      const client = await openClient(flags);
      try {
        const resumed = await client.resume(flags.budget);
        if (flags.json) {
          process.stdout.write(`${JSON.stringify({ resumed }, null, 2)}\n`);
          return;
        }
        const what = flags.budget === undefined ? '' : ` for budget ${flags.budget}`;
        process.stdout.write(
          resumed === 0
            ? `no emergency was in force${what}; nothing to resume\n`
            : `resumed: lifted ${resumed} emergency state(s)${what}; agents are admitted again\n`,
        );
      } finally {
        await client.close();
      }
    }),
  );
}
