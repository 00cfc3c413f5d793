import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { LedgerRow } from '../store/ports.js';

export interface WindowGaugeSample {
  budget: string;
  window: string;
  used: number;
  reserved: number;
  limit: number | null;
}

/**
 * Prometheus metrics (GET /metrics). Counters are bumped as requests end; the per-window gauges are
 * read from the store when scraped, so every replica reports the shared truth.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'outcome'>;
  private readonly tokens: Counter<'kind'>;
  private readonly cost: Counter;
  private readonly admissionSeconds: Histogram;
  private readonly upstreamSeconds: Histogram;

  constructor(windows: () => Promise<WindowGaugeSample[]>) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'tokenwarden_process_' });
    this.requests = new Counter({
      name: 'tokenwarden_requests_total',
      help: 'Agent requests by outcome (ok, blocked, upstream_error, client_aborted, invalid)',
      labelNames: ['outcome'],
      registers,
    });
    this.tokens = new Counter({
      name: 'tokenwarden_tokens_total',
      help: 'Provider tokens recorded in the ledger, by kind',
      labelNames: ['kind'],
      registers,
    });
    this.cost = new Counter({
      name: 'tokenwarden_cost_usd_total',
      help: 'Cost recorded in the ledger',
      registers,
    });
    this.admissionSeconds = new Histogram({
      name: 'tokenwarden_admission_seconds',
      help: 'Time to admit or refuse a request (budget check and hold)',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05],
      registers,
    });
    this.upstreamSeconds = new Histogram({
      name: 'tokenwarden_upstream_seconds',
      help: 'Time from forwarding to the provider until its response headers',
      buckets: [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    const labels = ['budget', 'window'] as const;
    const sample = async () => windows();
    let cache: Promise<WindowGaugeSample[]> | null = null;
    // One store read per scrape serves all three gauges.
    const read = () => {
      cache ??= sample().finally(() => {
        setImmediate(() => {
          cache = null;
        });
      });
      return cache;
    };
    const gauge = (name: string, help: string, pick: (s: WindowGaugeSample) => number | null) =>
      new Gauge({
        name,
        help,
        labelNames: labels,
        registers,
        async collect() {
          this.reset();
          for (const s of await read()) {
            const v = pick(s);
            if (v !== null) this.set({ budget: s.budget, window: s.window }, v);
          }
        },
      });
    gauge('tokenwarden_window_used_tokens', 'Counted tokens used in the current window', (s) => s.used);
    gauge(
      'tokenwarden_window_reserved_tokens',
      'Counted tokens held by in-flight requests',
      (s) => s.reserved,
    );
    gauge('tokenwarden_window_limit_tokens', 'Window limit in counted tokens', (s) => s.limit);
  }

  admission(ms: number): void {
    this.admissionSeconds.observe(ms / 1000);
  }

  upstream(ms: number): void {
    this.upstreamSeconds.observe(ms / 1000);
  }

  /** A ledger row of a forwarded request was written. */
  settled(row: LedgerRow): void {
    this.recorded(row);
    this.tokens.inc({ kind: 'input' }, row.inputTokens);
    this.tokens.inc({ kind: 'output' }, row.outputTokens);
    this.tokens.inc({ kind: 'cache_creation' }, row.cacheCreationTokens);
    this.tokens.inc({ kind: 'cache_read' }, row.cacheReadTokens);
    if (row.costUsd) this.cost.inc(row.costUsd);
  }

  /** Any ledger row was written. */
  recorded(row: LedgerRow): void {
    this.requests.inc({ outcome: row.outcome });
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
