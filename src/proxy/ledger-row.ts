import type { Usage } from '../budget/types.js';
import type { LedgerRow, Outcome, UsageSource } from '../store/ports.js';

/** What the proxy knows of a request before it is answered. */
export interface RequestFacts {
  id: string;
  ts: number;
  /** performance.now() at arrival, for latency. */
  startedAt: number;
  agent: string;
  keyId: string | null;
  model: string | null;
  stream: boolean;
  metadata: Record<string, unknown>;
}

export interface Outcome_ {
  outcome: Outcome;
  status: number;
  reserved?: number;
  usage?: Usage | null;
  counted?: number;
  costUsd?: number | null;
  usageSource?: UsageSource;
  upstreamRequestId?: string | null;
  blockReason?: string | null;
}

const NO_USAGE: Usage = { inputTokens: 0, outputTokens: 0, cacheCreationTokens: 0, cacheReadTokens: 0 };

/** The ledger row for a request, with latency measured now. */
export function ledgerRow(f: RequestFacts, o: Outcome_): LedgerRow {
  const u = o.usage ?? NO_USAGE;
  return {
    id: f.id,
    ts: f.ts,
    agent: f.agent,
    keyId: f.keyId,
    model: f.model,
    stream: f.stream,
    outcome: o.outcome,
    status: o.status,
    reserved: o.reserved ?? 0,
    inputTokens: u.inputTokens,
    outputTokens: u.outputTokens,
    cacheCreationTokens: u.cacheCreationTokens,
    cacheReadTokens: u.cacheReadTokens,
    counted: o.counted ?? 0,
    costUsd: o.costUsd ?? null,
    latencyMs: Math.round((performance.now() - f.startedAt) * 100) / 100,
    upstreamRequestId: o.upstreamRequestId ?? null,
    blockReason: o.blockReason ?? null,
    usageSource: o.usageSource ?? 'none',
    metadata: f.metadata,
  };
}
