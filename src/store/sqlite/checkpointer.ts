/**
 * WAL checkpoints off the event loop. By default SQLite checkpoints inside a commit once the WAL
 * passes 1,000 pages: the committing call (on the gateway's only thread) then copies pages into the
 * database file and syncs it, while every request waits. Instead, a worker thread with a connection
 * of its own runs a PASSIVE checkpoint (it never blocks readers or writers) a few times a second, and
 * the gateway's connection checkpoints only if the worker is gone.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type Database from 'better-sqlite3';

/** SQLite's default: what the connection goes back to if the worker stops unexpectedly. */
const DEFAULT_AUTOCHECKPOINT = 1000;

// Plain CommonJS, evaluated in the worker: it works the same from src/ (tests) and dist/.
const WORKER = `
const { workerData, parentPort } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.path, { timeout: 1000 });
const timer = setInterval(() => {
  try {
    db.pragma('wal_checkpoint(PASSIVE)');
  } catch {
    // Busy or briefly unavailable: the next tick tries again.
  }
}, workerData.intervalMs);
parentPort.on('message', () => {
  clearInterval(timer);
  db.close();
  parentPort.close();
});
`;

export interface Checkpointer {
  /** Stops the worker and closes its connection (before the main connection closes). */
  stop(): Promise<void>;
}

export function startCheckpointer(db: Database.Database, path: string, intervalMs = 250): Checkpointer {
  const driver = createRequire(import.meta.url).resolve('better-sqlite3');
  const worker = new Worker(WORKER, { eval: true, workerData: { driver, path, intervalMs } });
  worker.unref();
  let stopping = false;
  const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
  // Never left without checkpoints: if the worker fails, the connection checkpoints again itself.
  const fallBack = () => {
    if (!stopping && db.open) db.pragma(`wal_autocheckpoint = ${DEFAULT_AUTOCHECKPOINT}`);
  };
  worker.on('error', fallBack);
  worker.on('exit', fallBack);
  db.pragma('wal_autocheckpoint = 0');
  return {
    async stop() {
      if (stopping) return exited;
      stopping = true;
      worker.postMessage('stop');
      const timeout = setTimeout(() => void worker.terminate(), 2000);
      await exited;
      clearTimeout(timeout);
    },
  };
}
