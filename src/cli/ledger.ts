/**
 * Reading the whole ledger (or a time range of it) through an OperatorClient a page at a time, and
 * writing it as CSV or JSONL, for `export` and for the backup before a remote reset.
 */
import type { OperatorClient, RequestView } from './client.js';

/** Rows per request: the operator API's largest page. */
export const PAGE_SIZE = 1000;

export interface LedgerRange {
  /** Inclusive, ms. */
  since?: number;
  /** Exclusive, ms. */
  until?: number;
}

/**
 * The ledger rows in `range`, newest first, a page at a time, never holding more than one page.
 * Pages are keyed on the timestamp (each next page ends where the last one stopped, skipping the rows
 * of that last millisecond already given) so every page is an index range, not an ever-growing
 * OFFSET. `onTotal` gets the number of matching rows once, from the first page.
 */
export async function* ledgerPages(
  client: OperatorClient,
  range: LedgerRange,
  onTotal?: (total: number) => void,
  pageSize = PAGE_SIZE,
): AsyncGenerator<RequestView[]> {
  let until = range.until;
  // The millisecond the last page ended in, and the ids of it already given.
  let tieTs: number | null = null;
  let tieIds = new Set<string>();
  let first = true;
  for (;;) {
    const page = await client.requests(
      {
        ...(range.since !== undefined ? { since: range.since } : {}),
        ...(until !== undefined ? { until } : {}),
        limit: pageSize,
        offset: tieIds.size,
      },
      // Counted once: a count per page would scan the rest of the range again and again.
      { total: first },
    );
    if (first) onTotal?.(page.total ?? 0);
    first = false;
    const rows = page.requests;
    const fresh = rows.filter((r) => !(r.ts === tieTs && tieIds.has(r.id)));
    if (fresh.length > 0) yield fresh;
    const last = rows[rows.length - 1];
    if (rows.length < pageSize || last === undefined) return;
    if (last.ts !== tieTs) {
      tieTs = last.ts;
      tieIds = new Set();
      until = last.ts + 1;
    }
    for (const r of rows) if (r.ts === tieTs) tieIds.add(r.id);
  }
}

/** Every LedgerRow field, in this order, plus `at` (ISO) after `ts`. */
export const CSV_COLUMNS = [
  'id',
  'ts',
  'at',
  'agent',
  'keyId',
  'model',
  'stream',
  'outcome',
  'status',
  'reserved',
  'inputTokens',
  'outputTokens',
  'cacheCreationTokens',
  'cacheReadTokens',
  'counted',
  'costUsd',
  'latencyMs',
  'upstreamRequestId',
  'blockReason',
  'usageSource',
  'metadata',
] as const satisfies readonly (keyof RequestView)[];

/** One RFC 4180 field: quoted when it holds a comma, quote or line break; null is empty. */
function csvField(value: unknown): string {
  if (value === null || value === undefined) return '';
  const s = typeof value === 'object' ? JSON.stringify(value) : String(value);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function csvHeader(): string {
  return `${CSV_COLUMNS.join(',')}\r\n`;
}

/** A row as a CSV line (CRLF, as RFC 4180 has it); metadata as JSON. */
export function csvRow(r: RequestView): string {
  return `${CSV_COLUMNS.map((c) => csvField(r[c])).join(',')}\r\n`;
}

export function jsonLine(value: unknown): string {
  return `${JSON.stringify(value)}\n`;
}

/** Write to a stream, waiting for it to drain when its buffer is full (a slow pipe, a slow disk). */
export function writeTo(stream: NodeJS.WritableStream, text: string): Promise<void> {
  if (stream.write(text)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const done = (err?: Error) => {
      stream.off('drain', onDrain);
      stream.off('error', done);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    stream.once('drain', onDrain);
    stream.once('error', done);
  });
}
