import { Command } from 'commander';
import { registerControl } from './control.js';
import { registerDemo } from './demo.js';
import { registerExport } from './export.js';
import { registerKeys } from './keys.js';
import { registerMonitor } from './monitor.js';
import { registerReset } from './reset.js';
import { registerServe } from './serve.js';
import { registerStatus } from './status.js';

/** The `tokenwarden` command line. Each command is thin: parse flags, call a service, print. */
export async function main(argv: string[] = process.argv): Promise<void> {
  const program = new Command();
  program.name('tokenwarden').description('keeps AI agents inside their token budget').version('0.1.0');
  registerServe(program);
  registerKeys(program);
  registerStatus(program);
  registerMonitor(program);
  registerReset(program);
  registerControl(program);
  registerExport(program);
  registerDemo(program);
  await program.parseAsync(argv);
}
