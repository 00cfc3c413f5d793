/**
 * WAL checkpoints from a worker thread (the gateway's setting): the database file takes in the WAL's
 * pages without the store's own connection ever checkpointing inside a commit.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openSqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { waitUntil } from '../support/harness.js';
import { ledgerRow } from './store-contract.js';

describe('SQLite background checkpoints', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  async function filled(backgroundCheckpoints: boolean) {
    const dir = mkdtempSync(join(tmpdir(), 'tokenwarden-ckpt-'));
    dirs.push(dir);
    const path = join(dir, 'db.sqlite');
    const store = openSqliteStore({ path, backgroundCheckpoints });
    const before = statSync(path).size;
    // Well under SQLite's own 1,000-page autocheckpoint.
    await Promise.all(
      Array.from({ length: 400 }, (_, i) => store.appendLedger(ledgerRow({ id: `r${i}`, ts: i }))),
    );
    return { store, path, before };
  }

  it('copies the WAL into the database file from the worker, never inside a commit', async () => {
    const { store, path, before } = await filled(true);
    expect(store.db.pragma('wal_autocheckpoint', { simple: true })).toBe(0);
    await waitUntil(() => statSync(path).size > before, 5000);
    expect(await store.queryLedger({ limit: 1000 })).toHaveLength(400);
    await store.close();
    // Reopened (the worker's connection closed too): everything is there.
    const again = openSqliteStore({ path });
    expect(await again.countLedger({})).toBe(400);
    await again.close();
  });

  it('without it, the same writes stay in the WAL until SQLite checkpoints at 1,000 pages', async () => {
    const { store, path, before } = await filled(false);
    await new Promise((r) => setTimeout(r, 600));
    expect(statSync(path).size).toBe(before);
    await store.close();
  });
});
