import { describe, expect, it } from 'vitest';
import { createMemoryStore } from '../../src/store/index.js';
import { describeStoreContract, ledgerRow } from './store-contract.js';

describeStoreContract('memory', async () => {
  const store = createMemoryStore();
  return { store, cleanup: () => store.close() };
});

describe('memory store', () => {
  it('keeps at most maxLedgerRows rows, dropping the oldest inserted', async () => {
    const store = createMemoryStore({ maxLedgerRows: 3 });
    for (const [i, id] of ['a', 'b', 'c', 'd', 'e'].entries()) {
      await store.appendLedger(ledgerRow({ id, ts: 100 - i }));
    }
    // A duplicate of a kept row is still ignored and evicts nothing.
    await store.appendLedger(ledgerRow({ id: 'd', ts: 0 }));
    expect((await store.queryLedger({ limit: 10 })).map((r) => [r.id, r.ts])).toEqual([
      ['c', 98],
      ['d', 97],
      ['e', 96],
    ]);
    await store.appendLedger(ledgerRow({ id: 'f', ts: 1 }));
    expect((await store.queryLedger({ limit: 10 })).map((r) => r.id)).toEqual(['d', 'e', 'f']);
  });

  it('refuses a row cap that is not a positive integer', () => {
    expect(() => createMemoryStore({ maxLedgerRows: 0 })).toThrow(RangeError);
    expect(() => createMemoryStore({ maxLedgerRows: 2.5 })).toThrow(RangeError);
  });

  it('rejects every operation after close', async () => {
    const store = createMemoryStore();
    await store.close();
    await expect(store.holdCount()).rejects.toThrow(/closed/);
  });
});
