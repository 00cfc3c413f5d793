import { describePostgres, openTestStore } from '../support/postgres.js';
import { describeControlStoreContract } from './control-contract.js';

await describePostgres('postgres control store', () => {
  describeControlStoreContract('postgres', () => openTestStore());
});
