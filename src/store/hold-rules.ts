/**
 * Rules every JavaScript-side store applies the same way (the memory and SQLite stores); stores that
 * decide elsewhere (a Redis Lua script, a PostgreSQL statement) implement the same arithmetic there.
 */
import type { HoldEntry } from './ports.js';

/**
 * What the hold adds to entry `i`'s window: its own amount plus the amounts of the other entries that
 * land in the same series at a bucket the window counts (`bucket >= from`). Normally entries are on
 * different series and this is just `entries[i].amount`; summing the rest keeps `used + reserved <=
 * limit` true even if two windows of one request share a series.
 */
export function windowAfter(entries: readonly HoldEntry[], i: number): number {
  const e = entries[i] as HoldEntry;
  let sum = e.amount;
  for (let j = 0; j < entries.length; j++) {
    if (j === i) continue;
    const o = entries[j] as HoldEntry;
    if (o.series === e.series && o.bucket >= e.from) sum += o.amount;
  }
  return sum;
}

/**
 * Throws (before anything changes) unless `charges` has one finite, non-negative number per entry of
 * the hold: a missing or negative charge would silently under-count usage.
 */
export function checkCharges(holdId: string, entries: number, charges: readonly number[]): void {
  if (charges.length !== entries) {
    throw new TypeError(`settle(${holdId}): ${charges.length} charges for a hold of ${entries} entries`);
  }
  for (const c of charges) {
    if (!Number.isFinite(c) || c < 0) {
      throw new TypeError(`settle(${holdId}): charge ${c} is not a finite non-negative number`);
    }
  }
}

/** Throws unless `bucketMs` is a positive safe integer (a timeseries bucket width). */
export function checkBucketMs(bucketMs: number): void {
  if (!Number.isSafeInteger(bucketMs) || bucketMs <= 0) {
    throw new RangeError(`bucketMs must be a positive integer, got ${bucketMs}`);
  }
}

/**
 * Start of the timeseries bucket holding `ts`: the largest multiple of `bucketMs` that is <= ts
 * (floored, so a negative ts lands in the bucket before 0 rather than in bucket 0).
 */
export function bucketOf(ts: number, bucketMs: number): number {
  return ts - (((ts % bucketMs) + bucketMs) % bucketMs);
}
