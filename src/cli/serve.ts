import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';

interface ServeFlags {
  port?: string;
  host?: string;
  db?: string;
  redis?: string;
  upstream?: string;
  config?: string;
}

/** `tokenwarden serve`: load and validate config, start the gateway, shut down cleanly on SIGTERM/SIGINT. */
export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('start the gateway')
    .option('--port <port>', 'port to listen on (default 4000; 0 picks a free port)')
    .option('--host <host>', 'address to listen on (default 127.0.0.1)')
    .option('--db <path>', 'SQLite database file (default ./tokenwarden.db) or postgres:// URL')
    .option('--redis <url>', 'Redis URL for shared counters')
    .option('--upstream <url>', 'provider base URL (default https://api.anthropic.com)')
    .option('--config <file>', 'config file (default ./tokenwarden.config.json if present)')
    .action(async (flags: ServeFlags) => {
      const loaded = loadConfig({
        configPath: flags.config,
        flags: {
          port: flags.port,
          host: flags.host,
          database: flags.db,
          redis: flags.redis,
          upstream: flags.upstream,
        },
      });
      if (!loaded.ok) {
        process.stderr.write(
          `tokenwarden: invalid configuration:\n${loaded.errors.map((e) => `  - ${e}`).join('\n')}\n`,
        );
        process.exitCode = 2;
        return;
      }
      // Loaded here so that the other commands start without the HTTP stack.
      const { StartupError, startGateway } = await import('../main.js');
      let gateway: Awaited<ReturnType<typeof startGateway>>;
      try {
        gateway = await startGateway(loaded.config);
      } catch (err) {
        if (err instanceof StartupError) {
          process.stderr.write(
            `tokenwarden: cannot start:\n${err.problems.map((p) => `  - ${p}`).join('\n')}\n`,
          );
        } else {
          process.stderr.write(`tokenwarden: cannot start: ${(err as Error).message}\n`);
        }
        process.exitCode = 1;
        return;
      }
      process.stdout.write(`tokenwarden listening on ${gateway.url} (${gateway.storeDescription})\n`);
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) return;
        stopping = true;
        process.stdout.write(`tokenwarden: ${signal} received, finishing in-flight requests\n`);
        gateway.close().then(
          () => process.exit(0),
          (err: unknown) => {
            process.stderr.write(`tokenwarden: error while stopping: ${(err as Error).message}\n`);
            process.exit(1);
          },
        );
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
    });
}
