/**
 * The Lua scripts of the Redis store. Each runs atomically on the server, so admission across every
 * window of every matching budget is one step that no other replica can interleave with.
 *
 * Every key a script touches is passed in KEYS and carries the store's hash tag (`{prefix}`), so all
 * of them live in one slot and the scripts run unchanged on Redis Cluster. One slot is not a
 * limitation here: every request touches the global budget's counters anyway.
 *
 * Numbers cross the script boundary as strings: Redis formats a Lua number with 14 significant digits,
 * which would turn a millisecond timestamp or a large counter into exponent notation. Counter fields
 * are `<series>#<bucket>`, the bucket being the decimal string the caller sent.
 *
 * Layout (T = `{prefix}`):
 *   T:used, T:resv   hashes: field `<series>#<bucket>` -> used / reserved counted tokens
 *   T:b:<series>     sorted set of the series' buckets (score = member = bucket)
 *   T:series         set of every series name
 *   T:holds          sorted set: hold id -> lease expiry (ms)
 *   T:h:<id>         hash: o = owner, e = JSON [[series, bucket, amount], …], d = draft ledger row
 *   T:t:<id>         tombstone of a reclaimed hold, or of a lost one settled (expires after a day);
 *                    a settled hold leaves none (one key per request would fill the memory)
 *   T:pending        hash: id -> draft row of a reclaimed hold not yet written to the ledger
 *   T:ready          present once the counters hold everything the ledger says (absent after a
 *                    data loss: the counters are rebuilt from the ledger before the next admission)
 *   T:rebuild        lock of the replica rebuilding the counters
 */

/** Codes the scripts return instead of a result. */
export const NOT_READY = -2;
export const REFUSED = -1;

/**
 * KEYS: used, resv, series, holds, h:<id>, ready, then b:<series> per entry.
 * ARGV: id, owner, expiresAt, draft, entriesJson, n, then per entry: series, bucket, from, limit
 * ('' = none), amount.
 * Returns {1, after…} | {-1, entry (0-based), used, reserved} | {-2}.
 */
export const RESERVE = `
if redis.call('EXISTS', KEYS[6]) == 0 then return {${NOT_READY}} end
if redis.call('EXISTS', KEYS[5]) == 1 then
  return redis.error_reply('ERR hold ' .. ARGV[1] .. ' already exists')
end
local n = tonumber(ARGV[6])
local series, bucket, from, limit, amount = {}, {}, {}, {}, {}
for i = 1, n do
  local b = 6 + (i - 1) * 5
  series[i] = ARGV[b + 1]
  bucket[i] = ARGV[b + 2]
  from[i] = tonumber(ARGV[b + 3])
  limit[i] = ARGV[b + 4]
  amount[i] = ARGV[b + 5]
end
local out = {1}
for i = 1, n do
  local used, resv = 0, 0
  local buckets = redis.call('ZRANGEBYSCORE', KEYS[6 + i], ARGV[6 + (i - 1) * 5 + 3], '+inf')
  for _, bk in ipairs(buckets) do
    local f = series[i] .. '#' .. bk
    used = used + (tonumber(redis.call('HGET', KEYS[1], f)) or 0)
    resv = resv + (tonumber(redis.call('HGET', KEYS[2], f)) or 0)
  end
  local add = tonumber(amount[i])
  for j = 1, n do
    if j ~= i and series[j] == series[i] and tonumber(bucket[j]) >= from[i] then
      add = add + tonumber(amount[j])
    end
  end
  local total = used + resv + add
  if limit[i] ~= '' and total > tonumber(limit[i]) then return {${REFUSED}, i - 1, used, resv} end
  out[i + 1] = total
end
for i = 1, n do
  redis.call('HINCRBY', KEYS[2], series[i] .. '#' .. bucket[i], amount[i])
  redis.call('ZADD', KEYS[6 + i], bucket[i], bucket[i])
  redis.call('SADD', KEYS[3], series[i])
end
redis.call('HSET', KEYS[5], 'o', ARGV[2], 'e', ARGV[5], 'd', ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return out
`;

/**
 * KEYS: used, resv, series, holds, h:<id>, t:<id>, then b:<series> per known entry.
 * ARGV: id, n, charge…(n), knownJson ('' when the caller does not know the hold's entries).
 * Returns 1 settled | 0 nothing to do (reclaimed, or unknown) | 2 the hold was lost with Redis' data
 * and its charges were added to the counters (conservatively: a rebuild from the ledger may count
 * them too). The caller passes knownJson only for a hold it placed and has not settled yet, so a
 * hold is never charged twice by this path.
 */
export const SETTLE = `
local n = tonumber(ARGV[2])
local held = redis.call('HGET', KEYS[5], 'e')
if held then
  local entries = cjson.decode(held)
  if #entries ~= n then
    return redis.error_reply('ERR settle(' .. ARGV[1] .. '): ' .. n .. ' charges for a hold of ' .. #entries .. ' entries')
  end
  for i, e in ipairs(entries) do
    local f = e[1] .. '#' .. e[2]
    if e[3] ~= '0' then redis.call('HINCRBY', KEYS[2], f, '-' .. e[3]) end
    redis.call('HINCRBY', KEYS[1], f, ARGV[2 + i])
  end
  redis.call('DEL', KEYS[5])
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 1
end
if redis.call('EXISTS', KEYS[6]) == 1 then return 0 end
local known = ARGV[3 + n]
if known == '' then return 0 end
local entries = cjson.decode(known)
for i, e in ipairs(entries) do
  redis.call('HINCRBY', KEYS[1], e[1] .. '#' .. e[2], ARGV[2 + i])
  redis.call('ZADD', KEYS[6 + i], e[2], e[2])
  redis.call('SADD', KEYS[3], e[1])
end
redis.call('SET', KEYS[6], '1', 'EX', 86400)
return 2
`;

/**
 * KEYS: used, resv, holds, pending, then h:<id>, t:<id> per candidate.
 * ARGV: now, keepOwner ('' = none), candidate ids…
 * Charges in full each candidate whose lease ran out (or whose owner is not keepOwner), moves its
 * draft row to `pending` and returns the ids it reclaimed. Candidates are re-checked here: another
 * replica may have settled or reclaimed them since they were listed.
 */
export const RECLAIM = `
local now = tonumber(ARGV[1])
local taken = {}
for k = 3, #ARGV do
  local id = ARGV[k]
  local hk, tk = KEYS[5 + (k - 3) * 2], KEYS[6 + (k - 3) * 2]
  local exp = redis.call('ZSCORE', KEYS[3], id)
  if exp then
    local h = redis.call('HMGET', hk, 'o', 'e', 'd')
    if h[2] and (tonumber(exp) <= now or (ARGV[2] ~= '' and h[1] ~= ARGV[2])) then
      for _, e in ipairs(cjson.decode(h[2])) do
        local f = e[1] .. '#' .. e[2]
        if e[3] ~= '0' then
          redis.call('HINCRBY', KEYS[2], f, '-' .. e[3])
          redis.call('HINCRBY', KEYS[1], f, e[3])
        end
      end
      redis.call('HSET', KEYS[4], id, h[3])
      redis.call('DEL', hk)
      redis.call('ZREM', KEYS[3], id)
      redis.call('SET', tk, '1', 'EX', 86400)
      taken[#taken + 1] = id
    end
  end
end
return taken
`;

/**
 * KEYS: holds. ARGV: expiresAt, ids… Extends (never shortens) each existing hold's lease; returns
 * how many of the ids are held.
 */
export const RENEW = `
local count = 0
local exp = tonumber(ARGV[1])
for k = 2, #ARGV do
  local cur = redis.call('ZSCORE', KEYS[1], ARGV[k])
  if cur then
    count = count + 1
    if tonumber(cur) < exp then redis.call('ZADD', KEYS[1], ARGV[1], ARGV[k]) end
  end
end
return count
`;

/**
 * KEYS: used, resv, ready, then b:<series> per query. ARGV: series…, then from… (same order).
 * Returns {-2} when not ready, else {used1, resv1, used2, resv2, …}.
 */
export const USAGE = `
if redis.call('EXISTS', KEYS[3]) == 0 then return {${NOT_READY}} end
local n = #ARGV / 2
local out = {}
for i = 1, n do
  local used, resv = 0, 0
  local buckets = redis.call('ZRANGEBYSCORE', KEYS[3 + i], ARGV[n + i], '+inf')
  for _, bk in ipairs(buckets) do
    local f = ARGV[i] .. '#' .. bk
    used = used + (tonumber(redis.call('HGET', KEYS[1], f)) or 0)
    resv = resv + (tonumber(redis.call('HGET', KEYS[2], f)) or 0)
  end
  out[2 * i - 1] = used
  out[2 * i] = resv
end
return out
`;

/**
 * KEYS: used, then b:<series> per series. ARGV: series… Sets used to 0 in every bucket of each series
 * (reserved amounts stay, so in-flight holds still settle in balance); returns the total cleared.
 */
export const RESET = `
local total = 0
for i = 1, #ARGV do
  for _, bk in ipairs(redis.call('ZRANGE', KEYS[1 + i], 0, -1)) do
    local f = ARGV[i] .. '#' .. bk
    local v = tonumber(redis.call('HGET', KEYS[1], f)) or 0
    if v ~= 0 then
      total = total + v
      redis.call('HSET', KEYS[1], f, '0')
    end
  end
end
return total
`;

/**
 * KEYS: used, series, ready, rebuild lock, then b:<series> per seed.
 * ARGV: lock token, ready value, then per seed: series, bucket, used.
 * Adds the seeds to the counters (added, not set: a settle of a hold lost with the data may already
 * have charged a counter, and over-counting is the safe side), marks the counters ready and releases
 * the lock. Refuses (returns 0) if the lock is no longer this rebuild's.
 */
export const SEED = `
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return 0 end
local n = (#ARGV - 2) / 3
for i = 1, n do
  local b = 2 + (i - 1) * 3
  redis.call('HINCRBY', KEYS[1], ARGV[b + 1] .. '#' .. ARGV[b + 2], ARGV[b + 3])
  redis.call('ZADD', KEYS[4 + i], ARGV[b + 2], ARGV[b + 2])
  redis.call('SADD', KEYS[2], ARGV[b + 1])
end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[4])
return 1
`;

/**
 * KEYS: used, resv, then b:<series> per series. ARGV: cutoff, series…
 * Forgets the buckets older than the cutoff (no window in force counts them; the ledger keeps the
 * history) unless a hold still has tokens reserved in them. Returns how many buckets it removed.
 */
export const PRUNE = `
local removed = 0
for i = 2, #ARGV do
  local key = KEYS[1 + i]
  for _, bk in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. ARGV[1])) do
    local f = ARGV[i] .. '#' .. bk
    if (tonumber(redis.call('HGET', KEYS[2], f)) or 0) == 0 then
      redis.call('HDEL', KEYS[1], f)
      redis.call('HDEL', KEYS[2], f)
      redis.call('ZREM', key, bk)
      removed = removed + 1
    end
  end
end
return removed
`;
