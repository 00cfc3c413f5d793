/**
 * The window counters as the ledger says they are, for a Redis that lost its data: every ledger row of
 * the windows in force is charged again to the buckets its budgets' windows had when it was admitted
 * (with today's budgets and keys), in tokens and in micro-dollars. A budget window reset by an operator
 * counts only the rows after its reset, so a rebuild never brings back usage that was reset on purpose.
 */

import type { Logger } from 'pino';
import { RESETS_SETTING } from '../alerts/monitor.js';
import { toMicros } from '../budget/prices.js';
import { matchesScope } from '../budget/scope.js';
import type { BudgetDef } from '../budget/types.js';
import type { WindowResolver } from '../budget/windows.js';
import { keyBudgets } from '../keys/keys.js';
import type { ControlStore, LedgerRow, Store } from '../store/ports.js';
import type { CounterSeed, RedisStore } from '../store/redis/redis-store.js';
import { usdSlot } from './gatekeeper.js';

const PAGE = 5000;

export async function countersFromLedger(deps: {
  store: Pick<Store, 'queryLedger'> & Pick<ControlStore, 'getSetting' | 'listKeys'>;
  resolver: WindowResolver;
  budgets: readonly BudgetDef[];
  now: number;
  /** Ledger rows read per query (default 5000). */
  pageSize?: number;
}): Promise<CounterSeed[]> {
  const { store, resolver, now } = deps;
  const keyDefs = new Map<string, BudgetDef[]>();
  for (const k of await store.listKeys()) {
    if (k.revokedAt === null || k.revokedAt > now - 40 * 86_400_000) keyDefs.set(k.id, keyBudgets(k));
  }
  const all = [...deps.budgets, ...[...keyDefs.values()].flat()];
  // The oldest bucket any window in force still counts: rows before it matter to no limit.
  const from = new Map<string, number>();
  let since = now;
  for (const b of all) {
    for (const s of resolver.slots(b, now)) {
      from.set(s.series, s.from);
      from.set(usdSlot(s, undefined).series, s.from);
      since = Math.min(since, s.from);
    }
  }
  let resets: Record<string, number> = {};
  try {
    resets = JSON.parse((await store.getSetting(RESETS_SETTING)) ?? '{}') as Record<string, number>;
  } catch {
    resets = {};
  }

  const totals = new Map<string, CounterSeed>();
  const add = (series: string, bucket: number, amount: number) => {
    if (amount <= 0 || bucket < (from.get(series) ?? Number.POSITIVE_INFINITY)) return;
    const key = `${series}#${bucket}`;
    const t = totals.get(key);
    if (t) t.used += amount;
    else totals.set(key, { series, bucket, used: amount });
  };
  const charge = (row: LedgerRow) => {
    const budgets = [
      ...deps.budgets.filter((b) => matchesScope(b.scope, row.agent, row.model)),
      ...((row.keyId !== null ? keyDefs.get(row.keyId) : undefined) ?? []),
    ];
    const micros = row.costUsd === null ? 0 : toMicros(row.costUsd);
    for (const b of budgets) {
      for (const s of resolver.slots(b, row.ts)) {
        const resetAt = resets[`${b.name}|${s.kind}`];
        if (resetAt !== undefined && row.ts < resetAt) continue;
        add(s.series, s.bucket, row.counted);
        if (b.usd) add(usdSlot(s, undefined).series, s.bucket, micros);
      }
    }
  };
  const take = (rows: readonly LedgerRow[]) => {
    for (const row of rows) if (row.counted > 0 || (row.costUsd ?? 0) > 0) charge(row);
  };
  // Newest first, a page at a time, each page below the last one's oldest time (not by offset: an
  // offset makes the database walk every earlier row again, page after page, over a month's ledger).
  // The rows at a page's oldest time may go on past the page: they are read together, apart.
  const page = deps.pageSize ?? PAGE;
  let until = now + 1;
  for (;;) {
    const rows = await store.queryLedger({ since, until, limit: page });
    if (rows.length < page) {
      take(rows);
      break;
    }
    const oldest = (rows[rows.length - 1] as LedgerRow).ts;
    take(rows.filter((r) => r.ts > oldest));
    take(await store.queryLedger({ since: oldest, until: oldest + 1, limit: Number.MAX_SAFE_INTEGER }));
    until = oldest;
  }
  return [...totals.values()];
}

/**
 * Let `redis` rebuild its counters from the ledger of `store` with the budgets in force, whenever it
 * finds them missing. The gateway and the local CLI both attach it, so whichever process meets a
 * Redis that lost its data first rebuilds it correctly.
 */
export function attachRebuilder(
  redis: RedisStore,
  deps: {
    store: Parameters<typeof countersFromLedger>[0]['store'];
    resolver: WindowResolver;
    budgets: () => readonly BudgetDef[];
    now: () => number;
    logger: Logger;
  },
): void {
  redis.setRebuilder(async () => {
    deps.logger.warn(
      'the budget counters are not in Redis; rebuilding them from the ledger before admitting',
    );
    const seeds = await countersFromLedger({
      store: deps.store,
      resolver: deps.resolver,
      budgets: deps.budgets(),
      now: deps.now(),
    });
    deps.logger.info({ counters: seeds.length }, 'budget counters rebuilt from the ledger');
    return seeds;
  });
}
