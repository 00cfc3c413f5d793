import { createMemoryStore } from '../../src/store/index.js';
import { describeControlStoreContract } from './control-contract.js';

describeControlStoreContract('memory', async () => {
  const store = createMemoryStore();
  return { store, cleanup: () => store.close() };
});
