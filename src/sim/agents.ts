/**
 * Simulated AI agents for the `demo` command: each sends Messages requests to a gateway in a loop,
 * with its own model, sizes and pace, and reports every answer. They speak plain HTTP (fetch), the
 * way any client would, and steer the fake upstream (src/sim/upstream.ts) with its `x-fake-*`
 * headers so that the usage is known in advance.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { FAKE_HEADERS } from './upstream.js';

/** [min, max], inclusive; a value is drawn uniformly. */
export type Span = readonly [number, number];

export interface SimAgent {
  /** Sent as `x-tokenwarden-agent`. */
  name: string;
  model: string;
  /** Pause before each request, ms. */
  pauseMs: Span;
  maxTokens: Span;
  /** Output tokens the fake upstream generates (it never exceeds `max_tokens`). */
  outputTokens: Span;
  /** Words of prompt text (about 1.7 input tokens each for the fake upstream). */
  promptWords: Span;
  /** Share of requests sent with `stream: true`, 0–1. */
  streamShare: number;
  /** Delay between streamed tokens, ms (default 5): streams stay in flight a little while. */
  tokenDelayMs?: number;
  /** Share of requests that ask for `oversizedMaxTokens` instead: a runaway job for the per-request limit. */
  oversizedShare?: number;
  oversizedMaxTokens?: number;
}

/** What one request got back. */
export interface AgentResult {
  agent: string;
  model: string;
  stream: boolean;
  maxTokens: number;
  /** HTTP status; 0 when the gateway could not be reached. */
  status: number;
  /** `x-tokenwarden-blocked-by` of a refused request (e.g. `budget=global; window=month`). */
  blockedBy: string | null;
  /** The error message of a non-200 answer. */
  message: string | null;
  /** `retry-after` of a 429, seconds. */
  retryAfter: number | null;
}

export interface AgentsOptions {
  /** The gateway, e.g. `http://127.0.0.1:4000`. */
  baseUrl: string;
  agents: readonly SimAgent[];
  /** Called after each answer. Exceptions thrown here stop nothing (they are ignored). */
  onResult: (r: AgentResult) => void;
  /** Source of randomness in [0, 1) (default Math.random); tests pass a seeded one. */
  random?: () => number;
  fetch?: typeof globalThis.fetch;
}

export interface RunningAgents {
  /** Stop every loop and abort the requests in flight. Resolves when all loops have ended. */
  stop(): Promise<void>;
}

const WORDS = (
  'the budget report agent token model window month request limit plan summary draft review code ' +
  'function test deploy server latency cache stream answer question context document search result ' +
  'please explain compare list write refactor analyse translate'
).split(' ');

function draw(span: Span, random: () => number): number {
  const [min, max] = span;
  return Math.floor(min + random() * (max - min + 1));
}

function prompt(words: number, random: () => number): string {
  const out: string[] = [];
  for (let i = 0; i < words; i++) out.push(WORDS[Math.floor(random() * WORDS.length)] ?? 'token');
  return out.join(' ');
}

/** Start one request loop per agent. Never throws; network errors are reported as status 0. */
export function startAgents(opts: AgentsOptions): RunningAgents {
  const random = opts.random ?? Math.random;
  const doFetch = opts.fetch ?? globalThis.fetch;
  const controller = new AbortController();
  const { signal } = controller;

  async function once(agent: SimAgent): Promise<AgentResult> {
    const oversized = agent.oversizedMaxTokens !== undefined && random() < (agent.oversizedShare ?? 0);
    const maxTokens = oversized ? (agent.oversizedMaxTokens ?? 0) : draw(agent.maxTokens, random);
    const stream = random() < agent.streamShare;
    const base = { agent: agent.name, model: agent.model, stream, maxTokens };
    try {
      const res = await doFetch(`${opts.baseUrl}/v1/messages`, {
        method: 'POST',
        signal,
        headers: {
          'content-type': 'application/json',
          'anthropic-version': '2023-06-01',
          // The fake upstream takes any key: the demo needs no provider key.
          'x-api-key': 'sk-ant-demo-not-a-real-key',
          'x-tokenwarden-agent': agent.name,
          [FAKE_HEADERS.outputTokens]: String(draw(agent.outputTokens, random)),
          [FAKE_HEADERS.eventDelayMs]: String(agent.tokenDelayMs ?? 5),
        },
        body: JSON.stringify({
          model: agent.model,
          max_tokens: maxTokens,
          stream,
          messages: [{ role: 'user', content: prompt(draw(agent.promptWords, random), random) }],
        }),
      });
      // Read the whole answer (a stream to its end), as a real client does.
      const text = await res.text();
      let message: string | null = null;
      if (res.status !== 200) {
        try {
          message = (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? null;
        } catch {
          message = text.slice(0, 200);
        }
      }
      const retry = res.headers.get('retry-after');
      return {
        ...base,
        status: res.status,
        blockedBy: res.headers.get('x-tokenwarden-blocked-by'),
        message,
        retryAfter: retry === null ? null : Number(retry),
      };
    } catch (err) {
      return { ...base, status: 0, blockedBy: null, message: (err as Error).message, retryAfter: null };
    }
  }

  async function loop(agent: SimAgent): Promise<void> {
    while (!signal.aborted) {
      try {
        await sleep(draw(agent.pauseMs, random), undefined, { signal });
      } catch {
        return; // stopped while pausing
      }
      const result = await once(agent);
      if (signal.aborted) return;
      try {
        opts.onResult(result);
      } catch {
        // a reporting problem must not stop the traffic
      }
    }
  }

  const loops = opts.agents.map((a) => loop(a));
  return {
    async stop() {
      controller.abort();
      await Promise.all(loops);
    },
  };
}
