/**
 * Group commit for one better-sqlite3 connection. Write operations queued during one event-loop turn
 * run together, in arrival order, in one IMMEDIATE transaction: one lock, one commit and one WAL write
 * of each touched page for the whole batch, instead of one of each per operation. An operation that
 * throws is rolled back alone; the others still commit.
 *
 * An operation's promise settles only after its batch has committed (or failed): a caller that saw
 * it resolve knows the write is durable (in WAL mode with synchronous NORMAL, against a process
 * crash) and visible to every later read on any connection.
 */
import type Database from 'better-sqlite3';

export interface GroupCommitOptions {
  /**
   * Run the queue at once, without waiting for the end of the turn, when it holds this many
   * operations (default 256): bounds the size of one transaction and the time it holds the lock.
   */
  maxBatch?: number;
}

export interface GroupCommit {
  /**
   * Queues `op`, a synchronous function that reads and writes through the connection, to run inside
   * a batch's transaction. `op` may run more than once (see runBatch), so it must have no effect
   * outside the database. Resolves with its result after the batch has committed. Rejects with the
   * operation's own error (its changes rolled back, the rest of the batch unaffected), or with the
   * batch's error when the batch as a whole could not begin or commit (SQLITE_BUSY past the busy
   * timeout, disk full, closed database): then no operation of the batch changed anything.
   * Never throws synchronously.
   */
  run<T>(op: () => T): Promise<T>;
  /**
   * Runs everything queued so far, synchronously, before returning (the promises settle right after,
   * as microtasks). Lets a write that does not go through the queue keep arrival order, and lets
   * close() finish the queue. Does nothing while a transaction is open on the connection (the queue
   * then waits for it to end). Never throws.
   */
  flush(): void;
  /** Operations queued and not yet run. */
  readonly pending: number;
}

interface QueuedOp {
  fn: () => unknown;
  resolve: (value: unknown) => void;
  reject: (reason: unknown) => void;
}

/** An operation threw while the batch ran without savepoints: the batch must be run again with them. */
const RETRY_ISOLATED = Symbol('retry with savepoints');

/** The group committer of `db`. Uses its own savepoint name, so `op` may nest db.transaction(). */
export function createGroupCommit(db: Database.Database, opts: GroupCommitOptions = {}): GroupCommit {
  const maxBatch = Math.max(1, opts.maxBatch ?? 256);
  const begin = db.prepare('BEGIN IMMEDIATE');
  const commit = db.prepare('COMMIT');
  const rollback = db.prepare('ROLLBACK');
  const savepoint = db.prepare('SAVEPOINT tw_op');
  const release = db.prepare('RELEASE tw_op');
  const rollbackTo = db.prepare('ROLLBACK TO tw_op');

  let queue: QueuedOp[] = [];
  let scheduled = false;
  let running = false;

  /**
   * Runs `ops` in one transaction, putting each result in `values`; throws (after rolling back) the
   * error that stopped the whole batch. With `isolated` each op runs in its own savepoint, and one
   * that throws is rolled back alone: `failed[i]` set, its error in `values[i]`. Without it (the usual
   * case) an op that throws aborts the attempt with RETRY_ISOLATED.
   */
  function attempt(ops: QueuedOp[], isolated: boolean, values: unknown[], failed: boolean[]): void {
    begin.run();
    try {
      for (let i = 0; i < ops.length; i++) {
        const op = ops[i] as QueuedOp;
        if (!isolated) {
          try {
            values[i] = op.fn();
          } catch (err) {
            // A batch of one needs no second run: rolling the transaction back isolates the op.
            if (ops.length === 1 || !db.inTransaction) throw err;
            throw RETRY_ISOLATED;
          }
          continue;
        }
        savepoint.run();
        try {
          values[i] = op.fn();
          release.run();
        } catch (err) {
          // Some errors (SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM, …) make SQLite roll back the whole
          // transaction: the earlier ops are gone too, and going on would run the rest in autocommit.
          if (!db.inTransaction) throw err;
          rollbackTo.run();
          release.run();
          failed[i] = true;
          values[i] = err;
        }
      }
      commit.run();
    } catch (err) {
      if (db.inTransaction) {
        try {
          rollback.run();
        } catch {
          // Report the error that stopped the batch; a broken connection fails the next one too.
        }
      }
      throw err;
    }
  }

  /**
   * Savepoints add about a third to the cost of a small op (each copies the pages the op touches to
   * the statement journal), so a batch first runs without them. Ops throw only on bad input (a
   * settle with bad charges, a duplicate hold id), which the caller treats as a bug, or on a storage
   * error; then, and only then, the batch is rolled back and run again, each op in its own savepoint. That run starts from
   * the state before the first (plus whatever another process committed in between), and nothing was
   * resolved from the first, so it is as if the first had never happened.
   */
  function runBatch(ops: QueuedOp[]): void {
    const values = new Array<unknown>(ops.length);
    const failed = new Array<boolean>(ops.length).fill(false);
    try {
      try {
        attempt(ops, false, values, failed);
      } catch (err) {
        if (err !== RETRY_ISOLATED) throw err;
        attempt(ops, true, values, failed);
      }
    } catch (err) {
      for (const op of ops) op.reject(err);
      return;
    }
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i] as QueuedOp;
      if (failed[i]) op.reject(values[i]);
      else op.resolve(values[i]);
    }
  }

  function schedule(wait: boolean): void {
    if (scheduled) return;
    scheduled = true;
    if (wait) setTimeout(onTurn, 1);
    // setImmediate, not a microtask: the batch then takes in every operation queued by the I/O
    // callbacks of this poll phase (many requests under load), at the cost of one hop.
    else setImmediate(onTurn);
  }

  function onTurn(): void {
    scheduled = false;
    flush();
  }

  function flush(): void {
    // Re-entered from inside a batch (an op that flushes): the loop below takes the queue next.
    if (running || queue.length === 0) return;
    // Someone holds a transaction open on this connection across an await (the CLI's reset does). A
    // batch can neither begin inside it nor join it (it may yet roll back), so it waits for its end.
    if (db.inTransaction) {
      schedule(true);
      return;
    }
    running = true;
    try {
      while (queue.length > 0) {
        const ops = queue;
        queue = [];
        runBatch(ops);
      }
    } finally {
      running = false;
    }
  }

  return {
    run<T>(fn: () => T): Promise<T> {
      return new Promise<T>((resolve, reject) => {
        queue.push({ fn, resolve: resolve as (value: unknown) => void, reject });
        if (queue.length >= maxBatch) flush();
        else schedule(false);
      });
    },
    flush,
    get pending() {
      return queue.length;
    },
  };
}
