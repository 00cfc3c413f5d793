import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openSqliteStore } from '../../src/store/index.js';
import { describeControlStoreContract } from './control-contract.js';

describeControlStoreContract('sqlite', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tokenwarden-sqlite-control-'));
  const store = openSqliteStore({ path: join(dir, 'control.db') });
  return {
    store,
    async cleanup() {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});
