/**
 * tokenwarden benchmark (SPEC §6): the gateway against a bare pass-through proxy (the floor) and a
 * direct call to the fake upstream, measured in the same run, alternating targets round by round.
 *
 *   npm run bench                       # build, then all targets, ~1.5 min
 *   node --import tsx bench/run.ts --quick --targets direct,bare
 *
 * Flags (all optional):
 *   --targets direct,bare,gateway   which targets to measure (alias --only); default all three.
 *                                   `gateway` is skipped with a message when dist/cli/index.js is missing.
 *   --scenarios light,stream,load   which scenarios to run; default all three.
 *   --quick                         ~20 s smoke run (2 short rounds).
 *   --rounds N                      rounds per scenario (default 3, quick 2).
 *   --light-seconds S               per target per round, scenario 1 (default 2, quick 0.5).
 *   --stream-seconds S              per target per round, scenario 2 (default 2, quick 0.5).
 *   --load-seconds S                per target per round, scenario 3 (default 4, quick 1.5).
 *   --connections N                 connections of the load scenario (default 32).
 *   --out FILE                      JSON report (default bench/results/latest.json).
 *   --no-store                      do not run bench/store-bench.ts even if it exists.
 *   --no-api                        do not run bench/api-bench.ts (operator API over a 100k-row ledger).
 *   --bare-pipeline                 run the bare proxy in its stream.pipeline() variant (slower floor).
 *
 * Processes: this one is the load generator; the fake upstream (bench/upstream-proc.ts), the bare
 * proxy (bench/bare-proxy.ts) and the gateway (bin/tokenwarden.js serve) each run in a child process,
 * which are always stopped on exit, error or Ctrl-C.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { Client } from 'undici';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

// ---------------------------------------------------------------------------------------------
// options

type TargetName = 'direct' | 'bare' | 'gateway';
type ScenarioName = 'light' | 'stream' | 'load';
const ALL_TARGETS: TargetName[] = ['direct', 'bare', 'gateway'];
const ALL_SCENARIOS: ScenarioName[] = ['light', 'stream', 'load'];

const { values: argv } = parseArgs({
  options: {
    targets: { type: 'string' },
    only: { type: 'string' },
    scenarios: { type: 'string' },
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    'light-seconds': { type: 'string' },
    'stream-seconds': { type: 'string' },
    'load-seconds': { type: 'string' },
    connections: { type: 'string', default: '32' },
    out: { type: 'string' },
    'no-store': { type: 'boolean', default: false },
    'no-api': { type: 'boolean', default: false },
    'bare-pipeline': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

if (argv.help) {
  const src = readFileSync(fileURLToPath(import.meta.url), 'utf8');
  process.stdout.write(`${src.slice(src.indexOf('/**') + 3, src.indexOf('*/')).replace(/^ \* ?/gm, '')}\n`);
  process.exit(0);
}

function list<T extends string>(raw: string | undefined, all: T[], what: string): T[] {
  if (raw === undefined || raw.trim() === '') return [...all];
  const items = raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const i of items) {
    if (!all.includes(i as T)) {
      process.stderr.write(`bench: unknown ${what} "${i}" (expected: ${all.join(', ')})\n`);
      process.exit(2);
    }
  }
  return all.filter((t) => items.includes(t));
}

function num(raw: string | undefined, dflt: number, name: string): number {
  if (raw === undefined) return dflt;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) {
    process.stderr.write(`bench: --${name} must be a positive number\n`);
    process.exit(2);
  }
  return n;
}

const quick = argv.quick ?? false;
const opts = {
  quick,
  targets: list(argv.targets ?? argv.only, ALL_TARGETS, 'target'),
  scenarios: list(argv.scenarios, ALL_SCENARIOS, 'scenario'),
  rounds: Math.round(num(argv.rounds, quick ? 2 : 3, 'rounds')),
  lightSeconds: num(argv['light-seconds'], quick ? 0.5 : 2, 'light-seconds'),
  streamSeconds: num(argv['stream-seconds'], quick ? 0.5 : 2, 'stream-seconds'),
  loadSeconds: num(argv['load-seconds'], quick ? 1.5 : 4, 'load-seconds'),
  connections: Math.round(num(argv.connections, 32, 'connections')),
  out: argv.out ?? join(ROOT, 'bench', 'results', 'latest.json'),
  store: !(argv['no-store'] ?? false),
  api: !(argv['no-api'] ?? false),
  barePipeline: argv['bare-pipeline'] ?? false,
};
const warmupSequential = quick ? 100 : 300;
const warmupLoadSeconds = quick ? 0.3 : 1;
const perRunWarmupRequests = quick ? 10 : 30;
const perRunLoadWarmupSeconds = quick ? 0.2 : 0.5;

// ---------------------------------------------------------------------------------------------
// requests

const HEADERS: Record<string, string> = {
  'x-api-key': 'sk-bench',
  'anthropic-version': '2023-06-01',
  'content-type': 'application/json',
};
const MESSAGE = {
  model: 'claude-sonnet-5-5',
  max_tokens: 64,
  system: 'You are a concise assistant. Answer in one sentence.',
  messages: [
    {
      role: 'user',
      content:
        'Summarise the following for a status report: the nightly batch finished at 03:12 UTC, ' +
        'two jobs were retried after transient network errors, and the backlog is down to 41 items.',
    },
  ],
  metadata: { user_id: 'bench-agent' },
};
const BODY = JSON.stringify(MESSAGE);
const STREAM_BODY = JSON.stringify({ ...MESSAGE, stream: true });
// streaming: 6 output tokens, 1 ms apart, so a proxy that buffers shows a large time to first byte
const STREAM_HEADERS: Record<string, string> = {
  ...HEADERS,
  'x-fake-output-tokens': '6',
  'x-fake-event-delay-ms': '1',
};

// ---------------------------------------------------------------------------------------------
// child processes

interface Proc {
  name: string;
  child: ChildProcess;
  output: string[]; // last lines of stdout+stderr, for error messages
}

const procs = new Set<Proc>();
let currentLoad: { stop(): void } | null = null;
let tmpDir: string | null = null;

function alive(c: ChildProcess): boolean {
  return c.exitCode === null && c.signalCode === null;
}

function tail(p: Proc): string {
  const lines = p.output.join('').split('\n').slice(-25).join('\n');
  return lines.trim() === '' ? '(no output)' : lines;
}

function startProc(name: string, cmd: string, args: string[]): Proc {
  const child = spawn(cmd, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], env: process.env });
  const p: Proc = { name, child, output: [] };
  const keep = (chunk: Buffer): void => {
    p.output.push(chunk.toString('utf8'));
    if (p.output.length > 200) p.output.splice(0, p.output.length - 200);
  };
  // always drain the pipes, or a chatty child blocks on a full pipe
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  child.stdin?.on('error', () => {});
  procs.add(p);
  return p;
}

function waitForListening(p: Proc, timeoutMs = 20_000): Promise<number> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (c: Buffer): void => {
      buf += c.toString('utf8');
      const m = /LISTENING (\d+)/.exec(buf);
      if (m?.[1]) {
        cleanup();
        resolve(Number(m[1]));
      }
    };
    const onExit = (code: number | null, sig: string | null): void => {
      cleanup();
      reject(new Error(`${p.name} exited (${sig ?? code}) before listening:\n${tail(p)}`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`${p.name} did not print LISTENING within ${timeoutMs} ms:\n${tail(p)}`));
    }, timeoutMs);
    const cleanup = (): void => {
      clearTimeout(timer);
      p.child.stdout?.off('data', onData);
      p.child.off('exit', onExit);
    };
    p.child.stdout?.on('data', onData);
    p.child.once('exit', onExit);
  });
}

async function waitForHealthy(p: Proc, url: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (!alive(p.child))
      throw new Error(`${p.name} exited (${p.child.exitCode}) during start-up:\n${tail(p)}`);
    try {
      const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1_000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
      last = `status ${res.status}`;
    } catch (e) {
      last = String(e);
    }
    await sleep(100);
  }
  throw new Error(`${p.name}: GET /healthz did not answer 200 within ${timeoutMs} ms (${last}):\n${tail(p)}`);
}

async function stopProc(p: Proc): Promise<void> {
  procs.delete(p);
  const c = p.child;
  if (!alive(c)) return;
  const exited = new Promise<void>((r) => c.once('exit', () => r()));
  c.kill('SIGTERM');
  const killer = setTimeout(() => {
    if (alive(c)) c.kill('SIGKILL');
  }, 2_000);
  await exited;
  clearTimeout(killer);
}

async function stopAll(): Promise<void> {
  currentLoad?.stop();
  await Promise.all([...procs].map((p) => stopProc(p)));
  if (tmpDir) {
    rmSync(tmpDir, { recursive: true, force: true });
    tmpDir = null;
  }
}

process.on('exit', () => {
  for (const p of procs) if (alive(p.child)) p.child.kill('SIGKILL');
  if (tmpDir) rmSync(tmpDir, { recursive: true, force: true });
});
let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    process.stderr.write(`\nbench: ${sig}, stopping child processes…\n`);
    void stopAll().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc (utime + stime of a process and its descendants, in clock ticks)

const CLK_TCK = (() => {
  try {
    const v = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isFinite(v) && v > 0 ? v : 100;
  } catch {
    return 100;
  }
})();

function readStat(pid: number): { ppid: number; ticks: number } | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // fields after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) };
  } catch {
    return null;
  }
}

/** CPU milliseconds used so far by `pid` and its descendants; null where /proc is unavailable. */
function cpuMs(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  const own = readStat(pid);
  if (!own) return null;
  let ticks = own.ticks;
  try {
    const children = new Map<number, number[]>();
    const stats = new Map<number, number>();
    for (const e of readdirSync('/proc')) {
      const p = Number(e);
      if (!Number.isInteger(p) || p === pid) continue;
      const st = readStat(p);
      if (!st) continue;
      stats.set(p, st.ticks);
      const arr = children.get(st.ppid);
      if (arr) arr.push(p);
      else children.set(st.ppid, [p]);
    }
    const stack = [...(children.get(pid) ?? [])];
    while (stack.length > 0) {
      const p = stack.pop() as number;
      ticks += stats.get(p) ?? 0;
      stack.push(...(children.get(p) ?? []));
    }
  } catch {
    // descendants are best effort
  }
  return (ticks * 1000) / CLK_TCK;
}

// ---------------------------------------------------------------------------------------------
// targets

interface Target {
  name: TargetName;
  url: string;
  /** The proxy process measured for CPU (none for direct). */
  proxy: Proc | null;
  client: Client;
}

async function verifyTarget(t: Target): Promise<void> {
  const res = await t.client.request({ method: 'POST', path: '/v1/messages', headers: HEADERS, body: BODY });
  const text = await res.body.text();
  let ok = res.statusCode === 200;
  if (ok) {
    try {
      const msg = JSON.parse(text) as { type?: string; usage?: { output_tokens?: number } };
      ok = msg.type === 'message' && typeof msg.usage?.output_tokens === 'number';
    } catch {
      ok = false;
    }
  }
  if (!ok) {
    throw new Error(
      `${t.name} (${t.url}) answered ${res.statusCode} to a plain request:\n${text.slice(0, 500)}`,
    );
  }
  const s = await t.client.request({
    method: 'POST',
    path: '/v1/messages',
    headers: STREAM_HEADERS,
    body: STREAM_BODY,
  });
  const sse = await s.body.text();
  if (s.statusCode !== 200 || !sse.includes('event: message_stop')) {
    throw new Error(`${t.name} answered ${s.statusCode} to a streaming request:\n${sse.slice(0, 500)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// measurements

interface Sample {
  totalMs: number;
  ttfbMs: number;
}

async function one(client: Client, stream: boolean): Promise<Sample> {
  const t0 = performance.now();
  const res = await client.request({
    method: 'POST',
    path: '/v1/messages',
    headers: stream ? STREAM_HEADERS : HEADERS,
    body: stream ? STREAM_BODY : BODY,
  });
  let first = -1;
  let text = '';
  for await (const chunk of res.body) {
    if (first < 0) first = performance.now();
    if (res.statusCode !== 200) text += String(chunk);
  }
  const t1 = performance.now();
  if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}: ${text.slice(0, 300)}`);
  return { totalMs: t1 - t0, ttfbMs: (first < 0 ? t1 : first) - t0 };
}

async function sequential(t: Target, stream: boolean, seconds: number, warmup: number): Promise<Sample[]> {
  for (let i = 0; i < warmup; i++) await one(t.client, stream);
  const out: Sample[] = [];
  const end = performance.now() + seconds * 1000;
  while (performance.now() < end) out.push(await one(t.client, stream));
  return out;
}

interface AcHistogram {
  average: number;
  p50: number;
  p99: number;
  total: number;
}
interface AcResult {
  requests: AcHistogram;
  latency: AcHistogram;
  duration: number;
  errors: number;
  timeouts: number;
  non2xx: number;
  '2xx': number;
}
type AcInstance = PromiseLike<AcResult> & { stop(): void };
const autocannon = createRequire(import.meta.url)('autocannon') as (o: Record<string, unknown>) => AcInstance;

async function load(t: Target, seconds: number): Promise<AcResult> {
  const inst = autocannon({
    url: `${t.url}/v1/messages`,
    method: 'POST',
    headers: HEADERS,
    body: BODY,
    connections: opts.connections,
    pipelining: 1,
    duration: seconds,
    timeout: 10,
    // autocannon only notices the end of the run at a sample tick: sample often, or a 1.2 s run lasts 2 s
    sampleInt: 100,
  });
  currentLoad = inst;
  try {
    return await inst;
  } finally {
    currentLoad = null;
  }
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[idx] ?? Number.NaN;
}

function stats(values: number[]): { n: number; p50: number; p99: number; mean: number } {
  const s = [...values].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / (s.length || 1);
  return { n: s.length, p50: quantile(s, 0.5), p99: quantile(s, 0.99), mean };
}

/** Round r measures the targets in a rotated order, so drift and noise hit all of them alike. */
function rotation(targets: Target[], r: number): Target[] {
  return targets.map((_, i) => targets[(i + r) % targets.length] as Target);
}

// ---------------------------------------------------------------------------------------------
// reporting

const r3 = (x: number | null | undefined): number | null =>
  x === null || x === undefined || !Number.isFinite(x) ? null : Math.round(x * 1000) / 1000;

function fmt(x: number | null | undefined, digits = 3): string {
  return x === null || x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(digits);
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

let measured: TargetName[] = [];

interface Ratio {
  name: string;
  value: number | null;
  limit: number;
  kind: 'max' | 'min';
  pass: boolean | null;
  note?: string;
}

function ratio(
  name: string,
  num: number | null,
  den: number | null,
  limit: number,
  kind: 'max' | 'min',
): Ratio {
  if (num === null || den === null || !Number.isFinite(num) || !Number.isFinite(den)) {
    const missing = ['gateway', 'bare', 'direct'].filter((t) => !measured.includes(t as TargetName));
    const note = missing.length > 0 ? `not measured: ${missing.join(', ')}` : 'no data';
    return { name, value: null, limit, kind, pass: null, note };
  }
  if (den <= 0) return { name, value: null, limit, kind, pass: null, note: 'bare figure ≤ 0 (noise); rerun' };
  const value = num / den;
  const pass = kind === 'max' ? value <= limit : value >= limit;
  return { name, value: r3(value), limit, kind, pass };
}

function ratioLine(r: Ratio): string {
  const cmp = r.kind === 'max' ? '≤' : '≥';
  const verdict = r.pass === null ? 'n/a' : r.pass ? 'PASS' : 'FAIL';
  const value = r.value === null ? `— (${r.note ?? ''})` : r.value.toFixed(2);
  return `  ${r.name}: ${value}   target ${cmp} ${r.limit}   ${verdict}`;
}

// ---------------------------------------------------------------------------------------------
// main

async function main(): Promise<void> {
  const started = Date.now();
  const loadAtStart = loadavg();
  const wanted = opts.targets;
  const gatewayCli = join(ROOT, 'dist', 'cli', 'index.js');
  const gatewayBin = join(ROOT, 'bin', 'tokenwarden.js');
  let names = wanted;
  const skipped: Record<string, string> = {};
  if (wanted.includes('gateway') && (!existsSync(gatewayCli) || !existsSync(gatewayBin))) {
    const missing = !existsSync(gatewayCli) ? 'dist/cli/index.js' : 'bin/tokenwarden.js';
    skipped.gateway = `${missing} not found (run \`npm run build\`)`;
    process.stderr.write(`bench: skipping the gateway target: ${skipped.gateway}\n`);
    names = wanted.filter((n) => n !== 'gateway');
  }
  if (names.length === 0) throw new Error('no target left to measure');
  measured = names;

  console.log(
    `tokenwarden bench — targets: ${names.join(', ')}; scenarios: ${opts.scenarios.join(', ')}; ` +
      `${opts.rounds} rounds${opts.quick ? ' (quick)' : ''}; node ${process.version}; ` +
      `${cpus().length} CPU(s); load average ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}`,
  );

  // children: the upstream, the bare proxy, the gateway
  const upstreamProc = startProc('fake upstream', process.execPath, [
    '--import',
    'tsx',
    join(ROOT, 'bench', 'upstream-proc.ts'),
    '--port',
    '0',
  ]);
  const upstreamUrl = `http://127.0.0.1:${await waitForListening(upstreamProc)}`;

  const targets: Target[] = [];
  const mkClient = (url: string): Client => new Client(url, { pipelining: 1, keepAliveTimeout: 60_000 });
  if (names.includes('direct')) {
    targets.push({ name: 'direct', url: upstreamUrl, proxy: null, client: mkClient(upstreamUrl) });
  }
  if (names.includes('bare')) {
    const bare = startProc('bare proxy', process.execPath, [
      '--import',
      'tsx',
      join(ROOT, 'bench', 'bare-proxy.ts'),
      '--port',
      '0',
      '--upstream',
      upstreamUrl,
      ...(opts.barePipeline ? ['--pipeline'] : []),
    ]);
    const url = `http://127.0.0.1:${await waitForListening(bare)}`;
    targets.push({ name: 'bare', url, proxy: bare, client: mkClient(url) });
  }
  if (names.includes('gateway')) {
    tmpDir = mkdtempSync(join(tmpdir(), 'tokenwarden-bench-'));
    const config = join(tmpDir, 'bench.config.json');
    writeFileSync(
      config,
      JSON.stringify({ budgets: [{ name: 'global', month: 1e12, day: 1e12, hour: 1e12, request: 1e9 }] }),
    );
    const port = await freePort();
    const gw = startProc('gateway', process.execPath, [
      gatewayBin,
      'serve',
      '--port',
      String(port),
      '--host',
      '127.0.0.1',
      '--upstream',
      upstreamUrl,
      '--db',
      join(tmpDir, 'bench.db'),
      '--config',
      config,
    ]);
    const url = `http://127.0.0.1:${port}`;
    await waitForHealthy(gw, url);
    targets.push({ name: 'gateway', url, proxy: gw, client: mkClient(url) });
  }
  const upstreamPid = upstreamProc.child.pid;

  for (const t of targets) await verifyTarget(t);

  // warm-up: JIT every path of every process before measuring
  process.stdout.write('warming up…');
  for (const t of targets) {
    for (let i = 0; i < warmupSequential; i++) await one(t.client, i % 4 === 0);
    await load(t, warmupLoadSeconds);
  }
  process.stdout.write(' done\n');

  const report: Record<string, unknown> = {};
  const ratios: Ratio[] = [];
  const byName = <T>(m: Map<TargetName, T>, n: TargetName): T | undefined => m.get(n);

  // scenario 1 and 2: one connection, sequential
  for (const scenario of ['light', 'stream'] as const) {
    if (!opts.scenarios.includes(scenario)) continue;
    const stream = scenario === 'stream';
    const seconds = stream ? opts.streamSeconds : opts.lightSeconds;
    const samples = new Map<TargetName, Sample[]>(targets.map((t) => [t.name, []]));
    const rounds = new Map<TargetName, { n: number; p50Ms: number | null; p99Ms: number | null }[]>(
      targets.map((t) => [t.name, []]),
    );
    for (let r = 0; r < opts.rounds; r++) {
      for (const t of rotation(targets, r)) {
        const s = await sequential(t, stream, seconds, perRunWarmupRequests);
        byName(samples, t.name)?.push(...s);
        const st = stats(s.map((x) => (stream ? x.ttfbMs : x.totalMs)));
        byName(rounds, t.name)?.push({ n: st.n, p50Ms: r3(st.p50), p99Ms: r3(st.p99) });
      }
    }
    const res: Record<string, Record<string, unknown>> = {};
    const p50 = new Map<TargetName, number>();
    for (const t of targets) {
      const s = byName(samples, t.name) ?? [];
      const main = stats(s.map((x) => (stream ? x.ttfbMs : x.totalMs)));
      p50.set(t.name, main.p50);
      const entry: Record<string, unknown> = {
        n: main.n,
        p50Ms: r3(main.p50),
        p99Ms: r3(main.p99),
        meanMs: r3(main.mean),
      };
      if (stream) entry.totalP50Ms = r3(stats(s.map((x) => x.totalMs)).p50);
      entry.rounds = byName(rounds, t.name);
      res[t.name] = entry;
    }
    const direct = p50.get('direct');
    const added = (n: TargetName): number | null => {
      const v = p50.get(n);
      return v === undefined || direct === undefined ? null : v - direct;
    };
    for (const t of targets) {
      const entry = res[t.name];
      if (entry && t.name !== 'direct') entry.addedP50Ms = r3(added(t.name));
    }
    const label = stream ? 'streaming TTFB' : 'light';
    const rt = ratio(
      `${label}: gateway added p50 / bare added p50`,
      added('gateway'),
      added('bare'),
      1.3,
      'max',
    );
    ratios.push(rt);
    report[scenario] = { seconds, rounds: opts.rounds, targets: res, ratio: rt };

    console.log(
      stream
        ? `\n2. light streaming — 1 connection, sequential, stream: true (6 events 1 ms apart); time to first byte`
        : `\n1. light — 1 connection, sequential non-streaming POST /v1/messages (max_tokens 64)`,
    );
    const head = stream
      ? ['target', 'n', 'TTFB p50 ms', 'TTFB p99 ms', 'added p50 ms', 'total p50 ms', 'round p50s']
      : ['target', 'n', 'p50 ms', 'p99 ms', 'mean ms', 'added p50 ms', 'round p50s'];
    const rows = targets.map((t) => {
      const e = res[t.name] ?? {};
      const rs = (byName(rounds, t.name) ?? []).map((x) => fmt(x.p50Ms)).join(' ');
      return stream
        ? [
            t.name,
            String(e.n),
            fmt(e.p50Ms as number),
            fmt(e.p99Ms as number),
            fmt(e.addedP50Ms as number),
            fmt(e.totalP50Ms as number),
            rs,
          ]
        : [
            t.name,
            String(e.n),
            fmt(e.p50Ms as number),
            fmt(e.p99Ms as number),
            fmt(e.meanMs as number),
            fmt(e.addedP50Ms as number),
            rs,
          ];
    });
    console.log(table(head, rows));
    console.log(ratioLine(rt));
  }

  // scenario 3: load
  if (opts.scenarios.includes('load')) {
    interface Acc {
      ok: number;
      non2xx: number;
      errors: number;
      seconds: number;
      proxyCpuMs: number | null;
      upstreamCpuMs: number | null;
      latP50: number[];
      latP99: number[];
      rounds: { rps: number; proxyCpuUsPerReq: number | null }[];
    }
    const acc = new Map<TargetName, Acc>(
      targets.map((t) => [
        t.name,
        {
          ok: 0,
          non2xx: 0,
          errors: 0,
          seconds: 0,
          proxyCpuMs: t.proxy ? 0 : null,
          upstreamCpuMs: 0,
          latP50: [],
          latP99: [],
          rounds: [],
        },
      ]),
    );
    for (let r = 0; r < opts.rounds; r++) {
      for (const t of rotation(targets, r)) {
        await load(t, perRunLoadWarmupSeconds);
        const proxyBefore = cpuMs(t.proxy?.child.pid);
        const upBefore = cpuMs(upstreamPid);
        const result = await load(t, opts.loadSeconds);
        const proxyAfter = cpuMs(t.proxy?.child.pid);
        const upAfter = cpuMs(upstreamPid);
        const a = acc.get(t.name);
        if (!a) continue;
        const ok = result['2xx'];
        a.ok += ok;
        a.non2xx += result.non2xx;
        a.errors += result.errors;
        a.seconds += result.duration;
        a.latP50.push(result.latency.p50);
        a.latP99.push(result.latency.p99);
        let proxyUs: number | null = null;
        if (a.proxyCpuMs !== null && proxyBefore !== null && proxyAfter !== null) {
          a.proxyCpuMs += proxyAfter - proxyBefore;
          proxyUs = ok > 0 ? ((proxyAfter - proxyBefore) * 1000) / ok : null;
        } else {
          a.proxyCpuMs = null;
        }
        if (a.upstreamCpuMs !== null && upBefore !== null && upAfter !== null) {
          a.upstreamCpuMs += upAfter - upBefore;
        } else {
          a.upstreamCpuMs = null;
        }
        a.rounds.push({ rps: Math.round(ok / result.duration), proxyCpuUsPerReq: r3(proxyUs) });
      }
    }
    const res: Record<string, Record<string, unknown>> = {};
    const rps = new Map<TargetName, number>();
    const cpu = new Map<TargetName, number | null>();
    const cpuRel = new Map<TargetName, number | null>();
    for (const t of targets) {
      const a = acc.get(t.name);
      if (!a) continue;
      const v = a.seconds > 0 ? a.ok / a.seconds : 0;
      rps.set(t.name, v);
      const proxyUs = a.proxyCpuMs !== null && a.ok > 0 ? (a.proxyCpuMs * 1000) / a.ok : null;
      cpu.set(t.name, proxyUs);
      // CPU time inflates when the cores are contended; the upstream does the same work per request
      // for every target, so proxy CPU / upstream CPU is a contention-robust second view
      const relative = a.proxyCpuMs !== null && a.upstreamCpuMs ? a.proxyCpuMs / a.upstreamCpuMs : null;
      cpuRel.set(t.name, relative);
      res[t.name] = {
        requestsPerSecond: Math.round(v),
        requests: a.ok,
        non2xx: a.non2xx,
        errors: a.errors,
        latencyP50Ms: stats(a.latP50).p50,
        latencyP99Ms: Math.max(...a.latP99),
        proxyCpuUsPerRequest: r3(proxyUs),
        upstreamCpuUsPerRequest:
          a.upstreamCpuMs !== null && a.ok > 0 ? r3((a.upstreamCpuMs * 1000) / a.ok) : null,
        proxyCpuOverUpstreamCpu: r3(relative),
        rounds: a.rounds,
      };
    }
    const tput = ratio(
      'load: throughput gateway / bare',
      rps.get('gateway') ?? null,
      rps.get('bare') ?? null,
      0.75,
      'min',
    );
    const cpuR = ratio(
      'load: CPU per request gateway / bare',
      cpu.get('gateway') ?? null,
      cpu.get('bare') ?? null,
      1.35,
      'max',
    );
    const cpuN = ratio(
      'load: CPU per request gateway / bare, each normalised by upstream CPU (info)',
      cpuRel.get('gateway') ?? null,
      cpuRel.get('bare') ?? null,
      1.35,
      'max',
    );
    ratios.push(tput, cpuR);
    report.load = {
      seconds: opts.loadSeconds,
      connections: opts.connections,
      rounds: opts.rounds,
      clockTicksPerSecond: CLK_TCK,
      targets: res,
      ratios: [tput, cpuR],
      normalisedCpuRatio: cpuN,
    };
    console.log(
      `\n3. load — ${opts.connections} connections, non-streaming, ${opts.rounds}×${opts.loadSeconds} s per target` +
        ` (CPU: /proc utime+stime of the proxy process, CLK_TCK ${CLK_TCK})`,
    );
    console.log(
      table(
        [
          'target',
          'req/s',
          'requests',
          'non-2xx',
          'errors',
          'p50 ms',
          'p99 ms',
          'proxy CPU µs/req',
          'upstream CPU µs/req',
          'proxy/upstream CPU',
          'round req/s',
        ],
        targets.map((t) => {
          const e = res[t.name] ?? {};
          const a = acc.get(t.name);
          return [
            t.name,
            String(e.requestsPerSecond),
            String(e.requests),
            String(e.non2xx),
            String(e.errors),
            fmt(e.latencyP50Ms as number, 0),
            fmt(e.latencyP99Ms as number, 0),
            fmt(e.proxyCpuUsPerRequest as number | null, 0),
            fmt(e.upstreamCpuUsPerRequest as number | null, 0),
            fmt(e.proxyCpuOverUpstreamCpu as number | null, 2),
            (a?.rounds ?? []).map((x) => String(x.rps)).join(' '),
          ];
        }),
      ),
    );
    console.log(ratioLine(tput));
    console.log(ratioLine(cpuR));
    console.log(ratioLine(cpuN));
    const bad = targets.filter((t) => {
      const a = acc.get(t.name);
      return a !== undefined && (a.non2xx > 0 || a.errors > 0);
    });
    if (bad.length > 0) {
      console.log(`  warning: non-2xx responses or errors from ${bad.map((t) => t.name).join(', ')}`);
    }
  }

  // stop the children before the in-process store benchmark
  for (const t of targets) await t.client.close();
  await stopAll();

  let store: unknown = null;
  const storeFile = join(ROOT, 'bench', 'store-bench.ts');
  if (opts.store && existsSync(storeFile)) {
    const mod = (await import(pathToFileURL(storeFile).href)) as Record<string, unknown>;
    if (typeof mod.runStoreBench === 'function') {
      console.log('\n4. store (bench/store-bench.ts)');
      try {
        // quick runs ask for fewer cycles (option names of bench/store-bench.ts; unknown keys are ignored)
        const storeOpts = opts.quick
          ? { quick: true, memoryCycles: 50_000, sqliteCycles: 5_000 }
          : { quick: false };
        const out: unknown = await (mod.runStoreBench as (o: object) => unknown)(storeOpts);
        store = out ?? null;
        if (typeof mod.formatStoreBench === 'function') {
          console.log((mod.formatStoreBench as (r: unknown) => string)(out));
        } else if (typeof out === 'string') console.log(out);
        else if (out && typeof out === 'object' && typeof (out as { table?: unknown }).table === 'string') {
          console.log((out as { table: string }).table);
        } else if (Array.isArray(out)) console.table(out);
        else if (out !== undefined) console.log(JSON.stringify(out, null, 2));
      } catch (e) {
        store = { error: String(e) };
        console.log(`  store benchmark failed: ${String(e)}`);
        process.exitCode = 1;
      }
    }
  }

  let api: unknown = null;
  if (opts.api) {
    const mod = await import('./api-bench.js');
    console.log(
      `\n5. operator API (bench/api-bench.ts): p95 under ${mod.API_TARGET_MS} ms over a 100k-row ledger`,
    );
    try {
      const out = await mod.runApiBench({ quick: opts.quick });
      api = out;
      // A missed target is reported, like a missed ratio; only a crash fails the run.
      console.log(mod.formatApiBench(out));
    } catch (e) {
      api = { error: String(e) };
      console.log(`  API benchmark failed: ${String(e)}`);
      process.exitCode = 1;
    }
  }

  console.log('\nSPEC §6 ratios');
  for (const r of ratios) console.log(ratioLine(r));

  let commit: string | null = null;
  try {
    commit = execFileSync('git', ['rev-parse', 'HEAD'], {
      cwd: ROOT,
      encoding: 'utf8',
      stdio: 'pipe',
    }).trim();
  } catch {
    commit = null;
  }
  const json = {
    meta: {
      at: new Date(started).toISOString(),
      durationSeconds: Math.round((Date.now() - started) / 100) / 10,
      node: process.version,
      platform: `${process.platform} ${process.arch}`,
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? null,
      loadAverageAtStart: loadAtStart,
      loadAverageAtEnd: loadavg(),
      commit,
      options: opts,
      skipped,
      request: MESSAGE,
    },
    scenarios: report,
    ratios,
    store,
    api,
  };
  mkdirSync(dirname(opts.out), { recursive: true });
  writeFileSync(opts.out, `${JSON.stringify(json, null, 2)}\n`);
  const shown = relative(process.cwd(), opts.out);
  console.log(`\nwrote ${shown.startsWith('..') ? opts.out : shown} (${json.meta.durationSeconds} s)`);
}

main()
  .catch(async (e: unknown) => {
    if (interrupted) return; // the signal handler reports and exits
    process.stderr.write(`\nbench failed: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  })
  .finally(async () => {
    await stopAll();
    // undici keep-alive sockets or timers must not keep us alive
    setTimeout(() => process.exit(), 100).unref();
  });
