/**
 * Three gateway processes behind one budget, as a load balancer would spread agents over them: on
 * PostgreSQL alone, and on PostgreSQL with Redis holding the counters. The agents are the official SDK;
 * the provider is the fake upstream, whose bill is the truth.
 */
import { execFile } from 'node:child_process';
import { tmpdir } from 'node:os';
import { promisify } from 'node:util';
import Anthropic from '@anthropic-ai/sdk';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { SummaryDoc } from '../../src/service/summary.js';
import { type FakeUpstream, startFakeUpstream } from '../../src/sim/upstream.js';
import { billTotal, startReceiver } from '../support/harness.js';
import { describePostgres } from '../support/postgres.js';
import { describeRedis, REDIS_URL, startPrivateRedis } from '../support/redis.js';
import { type ReplicaSet, startReplicas } from '../support/replicas.js';
import { BIN } from '../support/serve.js';

const MODEL = 'claude-sonnet-5-5';
const execFileAsync = promisify(execFile);
const hello = [{ role: 'user' as const, content: 'Hello from replica land' }];

let upstream: FakeUpstream;
beforeAll(async () => {
  upstream = await startFakeUpstream();
});
afterAll(async () => {
  await upstream.close();
});

function client(url: string): Anthropic {
  return new Anthropic({ baseURL: url, apiKey: 'sk-ant-test', maxRetries: 0, timeout: 15_000 });
}

/** Sends requests to replica `i` every 20 ms until one is refused with 429 (or `timeoutMs`); ms taken. */
async function msUntil(c: Anthropic, want: 'refused' | 'admitted', timeoutMs = 3000): Promise<number> {
  const started = performance.now();
  while (performance.now() - started < timeoutMs) {
    const outcome = await c.messages.create({ model: MODEL, max_tokens: 10, messages: hello }).then(
      () => 'admitted',
      (err: unknown) => (err instanceof Anthropic.RateLimitError ? 'refused' : `error ${String(err)}`),
    );
    if (outcome === want) return performance.now() - started;
    if (outcome.startsWith('error')) throw new Error(outcome);
    await new Promise((r) => setTimeout(r, 20));
  }
  return Number.POSITIVE_INFINITY;
}

function sharedSuite(label: string, redis: () => string | undefined): void {
  describe(`three replicas on ${label}`, () => {
    let set: ReplicaSet;
    let hooks: Awaited<ReturnType<typeof startReceiver>>;
    const limit = 12_000;

    beforeAll(async () => {
      upstream.reset();
      hooks = await startReceiver();
      // All three start at once on an empty schema: the migrations' advisory lock orders them.
      set = await startReplicas(3, {
        upstream: upstream.url,
        ...(redis() ? { redis: redis() as string } : {}),
        config: {
          budgets: [{ name: 'global', month: limit }],
          holdLeaseMs: 3000,
          alerts: { webhooks: [hooks.url] },
          // Low enough that the burst below crosses both, however many of its requests get in
          // (worst-case holds leave part of the budget unspent when a burst is refused).
          thresholds: { warning: 25, critical: 30, emergency: 99 },
        },
      });
    }, 60_000);
    afterAll(async () => {
      await set?.close();
      await hooks?.close();
    });

    it('all three come up on an empty database at once and answer ready', async () => {
      expect(set.replicas).toHaveLength(3);
      for (const r of set.replicas) {
        expect((await fetch(`${r.url}/readyz`)).status).toBe(200);
      }
    });

    it('a burst of 450 concurrent requests across them bills no more than the limit; every summary equals the bill; no hold remains', async () => {
      upstream.reset();
      const clients = set.replicas.map((r) => client(r.url));
      // Each request really uses its whole max_tokens: only about 12000/(input+80) of 450 fit.
      const opts = { headers: { 'x-fake-output-tokens': '80' } };
      const results = await Promise.allSettled(
        Array.from({ length: 450 }, (_, i) => {
          const c = clients[i % 3] as Anthropic;
          return i % 2 === 0
            ? c.messages.create({ model: MODEL, max_tokens: 80, messages: hello }, opts)
            : c.messages.stream({ model: MODEL, max_tokens: 80, messages: hello }, opts).finalMessage();
        }),
      );
      const ok = results.filter((r) => r.status === 'fulfilled').length;
      const other = results.filter(
        (r) => r.status === 'rejected' && !(r.reason instanceof Anthropic.RateLimitError),
      );
      expect(other.map((r) => String((r as PromiseRejectedResult).reason))).toEqual([]);
      expect(ok).toBeGreaterThan(50);
      expect(ok).toBeLessThan(450);

      const billed = billTotal(upstream);
      expect(billed).toBeLessThanOrEqual(limit);
      expect(upstream.bill.requests).toBe(ok);
      for (let i = 0; i < 3; i++) {
        const month = (await set.summary(i)).budgets[0]?.windows.month;
        expect(month, `replica ${i}`).toMatchObject({ used: billed, reserved: 0, limit });
      }
      expect(await set.holdCount()).toBe(0);
      expect(await set.ledgerCount()).toBe(450);

      // Every replica watches the thresholds, but each alert goes out once, not once per replica.
      await hooks.waitFor(2, 10_000);
      await new Promise((r) => setTimeout(r, 1500));
      const levels = (hooks.bodies as Array<{ alert: { level: string } }>).map((b) => b.alert.level);
      expect(levels.filter((l) => l === 'warning')).toHaveLength(1);
      expect(levels.filter((l) => l === 'critical')).toHaveLength(1);
      expect(levels.filter((l) => l === 'emergency').length).toBeLessThanOrEqual(1);
      // Leave no emergency behind for the next tests.
      expect((await set.post(0, '/api/token-usage/resume')).status).toBe(200);
    }, 120_000);

    it('a halt on one replica blocks the others within a second; a resume on another restores them', async () => {
      const clients = set.replicas.map((r) => client(r.url));
      // Room for the probes: raise the limit through the API of replica 2 (persisted, shared).
      const put = await fetch(`${set.replicas[2]?.url}/api/token-usage/budgets`, {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ budgets: [{ name: 'global', month: 10_000_000 }] }),
      });
      expect(put.status).toBe(200);
      // Budgets changed on replica 2 reach the others within their refresh; wait until 0 admits.
      expect(await msUntil(clients[0] as Anthropic, 'admitted', 5000)).toBeLessThan(5000);

      const halt = await set.post(0, '/api/token-usage/halt', { reason: 'replica test' });
      expect(halt.status).toBe(200);
      const [b, c] = await Promise.all([
        msUntil(clients[1] as Anthropic, 'refused'),
        msUntil(clients[2] as Anthropic, 'refused'),
      ]);
      expect(b).toBeLessThan(1000);
      expect(c).toBeLessThan(1000);
      // And it is refused on the replica that halted at once.
      expect(await msUntil(clients[0] as Anthropic, 'refused', 100)).toBeLessThan(100);

      const resume = await set.post(2, '/api/token-usage/resume');
      expect(resume.status).toBe(200);
      const [a2, b2] = await Promise.all([
        msUntil(clients[0] as Anthropic, 'admitted'),
        msUntil(clients[1] as Anthropic, 'admitted'),
      ]);
      expect(a2).toBeLessThan(1000);
      expect(b2).toBeLessThan(1000);
    }, 60_000);

    it("the CLI works on the shared database directly: status shows the replicas' usage, halt stops them all", async () => {
      const cli = (...args: string[]) =>
        execFileAsync(process.execPath, [BIN, ...args, '--config', set.configPath], { timeout: 30_000 });
      const status = JSON.parse((await cli('status', '--json')).stdout) as SummaryDoc;
      const viaApi = await set.summary(1);
      expect(status.budgets[0]?.windows.month?.used).toBe(viaApi.budgets[0]?.windows.month?.used);
      await cli('halt', '--reason', 'from the CLI');
      const clients = set.replicas.map((r) => client(r.url));
      const waits = await Promise.all(clients.map((c) => msUntil(c, 'refused')));
      for (const w of waits) expect(w).toBeLessThan(1000);
      await cli('resume');
      const back = await Promise.all(clients.map((c) => msUntil(c, 'admitted')));
      for (const w of back) expect(w).toBeLessThan(1000);

      // Told the database but not where the replicas keep their counters, the CLI and a new
      // replica refuse rather than read (or enforce) other counters.
      const env = {
        ...process.env,
        TOKENWARDEN_DATABASE: String(set.config.database),
        TOKENWARDEN_DATABASE_SCHEMA: set.schema,
        TOKENWARDEN_REDIS: redis() ? '' : REDIS_URL,
      };
      const wrong = await execFileAsync(process.execPath, [BIN, 'status'], { env, cwd: tmpdir() }).then(
        () => null,
        (err: { code?: number; stderr?: string }) => err,
      );
      expect(wrong?.code).toBe(1);
      expect(wrong?.stderr).toMatch(redis() ? /counters in Redis/ : /not in Redis/);
      if (redis()) {
        const refused = await execFileAsync(process.execPath, [BIN, 'serve', '--port', '0'], {
          env,
          cwd: tmpdir(),
        }).then(
          () => null,
          (err: { code?: number; stderr?: string }) => err,
        );
        expect(refused?.code).toBe(1);
        expect(refused?.stderr).toMatch(/keep their counters in Redis/);
      }
    }, 60_000);

    it('the holds of a replica killed mid-stream are charged in full by the others once its lease runs out', async () => {
      upstream.reset();
      const victim = await set.add();
      const before = (await set.summary(0)).budgets[0]?.windows.month?.used ?? 0;
      const stream = client(victim.url).messages.stream(
        { model: MODEL, max_tokens: 500, messages: hello },
        { headers: { 'x-fake-hang': '1' } },
      );
      stream.on('error', () => {});
      await upstream.waitForRequests(1, 10_000);
      await new Promise((r) => setTimeout(r, 200));
      expect(await set.holdCount()).toBe(1);
      victim.proc.kill('SIGKILL');
      await victim.exited;
      // The lease is 3 s; the others check every second.
      const started = Date.now();
      while ((await set.holdCount()) > 0 && Date.now() - started < 15_000) {
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(await set.holdCount()).toBe(0);
      const month = (await set.summary(0)).budgets[0]?.windows.month;
      // Charged in full: the whole hold (input estimate + 500 output), never less than was used.
      expect((month?.used ?? 0) - before).toBeGreaterThanOrEqual(500);
      expect(month?.reserved).toBe(0);
    }, 60_000);
  });
}

await describePostgres('replicas on PostgreSQL', () => {
  sharedSuite('PostgreSQL', () => undefined);
});

await describePostgres('replicas on PostgreSQL and Redis', async () => {
  await describeRedis('(Redis)', () => {
    sharedSuite('PostgreSQL and Redis', () => REDIS_URL);
  });
});

await describePostgres('a Redis outage', async () => {
  await describeRedis('(Redis)', () => {
    const cleanups: Array<() => Promise<unknown>> = [];
    afterEach(async () => {
      for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
    });

    it('with onStoreError "allow", lets requests through while Redis is down and says so in a header and the ledger', async () => {
      upstream.reset();
      const server = await startPrivateRedis();
      cleanups.push(server.cleanup);
      const set = await startReplicas(1, {
        upstream: upstream.url,
        redis: server.url,
        config: { budgets: [{ name: 'global', month: 100_000 }], onStoreError: 'allow' },
      });
      cleanups.push(() => set.close());
      const c = client(set.replicas[0]?.url as string);
      const first = await c.messages.create({ model: MODEL, max_tokens: 20, messages: hello }).withResponse();
      expect(first.response.headers.get('x-tokenwarden-unmetered')).toBeNull();

      await server.stop();
      const during = await c.messages
        .create({ model: MODEL, max_tokens: 20, messages: hello })
        .withResponse();
      expect(during.response.headers.get('x-tokenwarden-unmetered')).toMatch(/unreachable/);
      const id = during.response.headers.get('x-tokenwarden-request-id');
      const page = (await (
        await fetch(`${set.replicas[0]?.url}/api/token-usage/requests?limit=10`)
      ).json()) as { requests: Array<{ id: string; outcome: string; metadata: Record<string, unknown> }> };
      const row = page.requests.find((r) => r.id === id);
      expect(row?.outcome).toBe('ok');
      expect(String(row?.metadata.unmetered)).toMatch(/budget store unreachable/);
      expect(upstream.bill.requests).toBe(2);

      await server.start();
      // Back (and rebuilt from the ledger, the unmetered request included): metered again.
      let after: Awaited<ReturnType<ReturnType<typeof c.messages.create>['withResponse']>> | null = null;
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline) {
        after = await c.messages.create({ model: MODEL, max_tokens: 20, messages: hello }).withResponse();
        if (after.response.headers.get('x-tokenwarden-unmetered') === null) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(after?.response.headers.get('x-tokenwarden-unmetered')).toBeNull();
      const month = (await set.summary(0)).budgets[0]?.windows.month;
      expect(month?.used).toBeGreaterThanOrEqual(billTotal(upstream));
    }, 60_000);

    it('fails closed with 503 while Redis is down, overspends nothing, and resumes without a restart', async () => {
      upstream.reset();
      const server = await startPrivateRedis();
      cleanups.push(server.cleanup);
      const limit = 8_000;
      const set = await startReplicas(3, {
        upstream: upstream.url,
        redis: server.url,
        config: { budgets: [{ name: 'global', month: limit }] },
      });
      cleanups.push(() => set.close());
      const clients = set.replicas.map((r) => client(r.url));
      const tally = { ok: 0, limited: 0, unavailable: 0, other: [] as string[] };
      let stop = false;
      let phase: 'before' | 'down' | 'after' = 'before';
      const byPhase = { before: 0, down: 0, after: 0 };
      const downStatuses = new Set<number>();
      const worker = async (w: number) => {
        while (!stop) {
          const c = clients[w % 3] as Anthropic;
          const at = phase;
          try {
            await c.messages.create(
              { model: MODEL, max_tokens: 40, messages: hello },
              { headers: { 'x-fake-output-tokens': '40' } },
            );
            tally.ok++;
            byPhase[at]++;
          } catch (err) {
            if (err instanceof Anthropic.RateLimitError) tally.limited++;
            else if (err instanceof Anthropic.APIError && err.status === 503) {
              tally.unavailable++;
              expect((err.error as { error?: { type?: string } }).error?.type).toBe('overloaded_error');
              expect(err.headers?.get('retry-after')).toMatch(/^\d+$/);
            } else tally.other.push(String(err));
            if (at === 'down' && err instanceof Anthropic.APIError && err.status !== undefined) {
              downStatuses.add(err.status);
            }
            await new Promise((r) => setTimeout(r, 10));
          }
        }
      };
      const workers = Array.from({ length: 9 }, (_, w) => worker(w));
      await upstream.waitFor(() => upstream.bill.requests >= 20, 20_000);

      await server.stop();
      phase = 'down';
      await new Promise((r) => setTimeout(r, 1500));
      const billedWhileDown = upstream.bill.requests;
      await new Promise((r) => setTimeout(r, 1000));
      // Nothing reached the provider while Redis was down (a request admitted just before may finish).
      expect(upstream.bill.requests).toBe(billedWhileDown);

      await server.start();
      phase = 'after';
      // Traffic resumes by itself (the counters are rebuilt from the ledger first) until the budget
      // is spent.
      await new Promise((r) => setTimeout(r, 4000));
      stop = true;
      await Promise.all(workers);

      expect(tally.other).toEqual([]);
      expect(tally.unavailable).toBeGreaterThan(0);
      expect([...downStatuses]).toEqual([503]);
      expect(byPhase.after).toBeGreaterThan(0);
      expect(tally.limited).toBeGreaterThan(0);
      const billed = billTotal(upstream);
      expect(billed).toBeLessThanOrEqual(limit);
      const month = (await set.summary(0)).budgets[0]?.windows.month;
      // The counters never show less than the provider billed (a hold lost with Redis' data may
      // be counted twice: over, never under).
      expect(month?.used).toBeGreaterThanOrEqual(billed);
      expect(month?.reserved).toBe(0);
      expect(await set.holdCount()).toBe(0);
    }, 120_000);
  });
});
