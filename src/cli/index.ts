import { Command } from 'commander';
import { registerKeys } from './keys.js';
import { registerServe } from './serve.js';

/** The `tokenwarden` command line. Each command is thin: parse flags, call a service, print. */
export async function main(argv: string[] = process.argv): Promise<void> {
  const program = new Command();
  program.name('tokenwarden').description('keeps AI agents inside their token budget').version('0.1.0');
  registerServe(program);
  registerKeys(program);
  await program.parseAsync(argv);
}
