import { describeRedis, openTestRedisStore } from '../support/redis.js';
import { describeControlStoreContract } from './control-contract.js';
import { describeStoreContract } from './store-contract.js';

await describeRedis('redis store', () => {
  describeStoreContract('redis', () => openTestRedisStore());
  describeControlStoreContract('redis', () => openTestRedisStore());
});
