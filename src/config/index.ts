export { type LoadOptions, type LoadResult, loadConfig, parseConfig } from './load.js';
export { type BudgetConfig, type Config, type ConfigInput, configSchema, DEFAULT_BUDGETS } from './schema.js';
