/**
 * The real executable (bin/tokenwarden.js → dist/) started as an operator would: `serve` with the
 * given flags, resolved once it prints its address.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { resolve } from 'node:path';

export const BIN = resolve(import.meta.dirname, '../../bin/tokenwarden.js');

export interface Served {
  proc: ChildProcess;
  url: string;
  exited: Promise<number | null>;
  stderr: () => string;
}

export function serve(args: string[], opts: { timeoutMs?: number } = {}): Promise<Served> {
  const proc = spawn(process.execPath, [BIN, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const exited = once(proc, 'exit').then(([code]) => code as number | null);
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`gateway did not start: ${err}`)),
      opts.timeoutMs ?? 15_000,
    );
    proc.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m?.[1]) {
        clearTimeout(timer);
        resolvePromise({ proc, url: m[1], exited, stderr: () => err });
      }
    });
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`gateway exited with ${code}: ${err}`));
    });
  });
}
