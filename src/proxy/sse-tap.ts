import { StringDecoder } from 'node:string_decoder';
import type { Usage } from '../budget/types.js';
import { mergeDeltaUsage, usageFromAnthropic } from '../budget/usage.js';

/** Events whose data the tap parses; every other event (content deltas, pings) is only skipped over. */
const WATCHED = new Set(['message_start', 'message_delta', 'message_stop', 'error']);

/**
 * Watches an Anthropic SSE stream on the side for usage (wire doc §2). It never alters or delays the
 * bytes: the proxy forwards each chunk and hands the same chunk to `push`.
 *
 * - `message_start.message.usage` gives the input side (and a placeholder output).
 * - each `message_delta.usage` carries cumulative totals: the last value of each field wins.
 * - `message_stop` marks a complete message; an `error` event marks a provider-side failure.
 */
export class SseUsageTap {
  /** Usage so far; null until `message_start` arrived. */
  usage: Usage | null = null;
  /** A `message_delta` with usage arrived (output figure is meaningful). */
  sawDelta = false;
  sawStop = false;
  errorType: string | null = null;
  model: string | null = null;

  private readonly decoder = new StringDecoder('utf8');
  private partial = '';
  private event = '';
  private data = '';

  /** Feed one chunk; returns true when this chunk completed the `message_stop` event. */
  push(chunk: Buffer): boolean {
    const before = this.sawStop;
    const text = this.partial + this.decoder.write(chunk);
    let start = 0;
    for (;;) {
      const nl = text.indexOf('\n', start);
      if (nl === -1) break;
      let line = text.slice(start, nl);
      start = nl + 1;
      if (line.endsWith('\r')) line = line.slice(0, -1);
      this.line(line);
    }
    this.partial = text.slice(start);
    return !before && this.sawStop;
  }

  private line(line: string): void {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line.startsWith('event:')) {
      this.event = line.slice(6).trim();
    } else if (line.startsWith('data:') && (this.event === '' || WATCHED.has(this.event))) {
      const value = line.charCodeAt(5) === 32 ? line.slice(6) : line.slice(5);
      this.data = this.data === '' ? value : `${this.data}\n${value}`;
    }
  }

  private dispatch(): void {
    const event = this.event;
    const data = this.data;
    this.event = '';
    this.data = '';
    if (data === '') return;
    // Unnamed events: only parse those that can be one of ours, so content deltas stay cheap.
    if (event === '' && !/"type"\s*:\s*"(message_start|message_delta|message_stop|error)"/.test(data)) return;
    let json: {
      type?: unknown;
      message?: { usage?: unknown; model?: unknown };
      usage?: unknown;
      error?: unknown;
    };
    try {
      json = JSON.parse(data);
    } catch {
      return; // a malformed frame is passed on untouched; usage falls back to the hold
    }
    const type = typeof json.type === 'string' ? json.type : event;
    if (type === 'message_start') {
      this.usage = usageFromAnthropic(json.message?.usage);
      if (typeof json.message?.model === 'string') this.model = json.message.model;
    } else if (type === 'message_delta') {
      if (json.usage !== undefined && json.usage !== null) {
        this.usage = mergeDeltaUsage(this.usage ?? usageFromAnthropic(undefined), json.usage);
        this.sawDelta = true;
      }
    } else if (type === 'message_stop') {
      this.sawStop = true;
    } else if (type === 'error') {
      const err = json.error as { type?: unknown } | undefined;
      this.errorType = typeof err?.type === 'string' ? err.type : 'api_error';
    }
  }
}
