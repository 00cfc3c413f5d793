import { emitKeypressEvents } from 'node:readline';
import { type Command, InvalidArgumentError } from 'commander';
import type { OperatorService } from '../service/operator.js';
import type { AgentResult } from '../sim/agents.js';

interface DemoFlags {
  port?: number;
}

const nf = new Intl.NumberFormat('en-US');
const n = (v: number) => nf.format(Math.round(v));

function portArg(value: string): number {
  const p = Number(value);
  if (!Number.isInteger(p) || p < 0 || p > 65535) throw new InvalidArgumentError('expected a port, 0–65535.');
  return p;
}

/** 90 → "1 min", 181568 → "2 d 2 h". */
function wait(seconds: number): string {
  const d = Math.floor(seconds / 86_400);
  const h = Math.floor((seconds % 86_400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  if (d > 0) return h > 0 ? `${d} d ${h} h` : `${d} d`;
  if (h > 0) return m > 0 ? `${h} h ${m} min` : `${h} h`;
  return m > 0 ? `${m} min` : `${Math.max(0, Math.round(seconds))} s`;
}

type Paint = (s: string) => string;

/** ANSI colours, only on a terminal that wants them. */
function palette(on: boolean) {
  const c =
    (code: string): Paint =>
    (s) =>
      on ? `\u001b[${code}m${s}\u001b[0m` : s;
  return { dim: c('2'), bold: c('1'), green: c('32'), yellow: c('33'), red: c('31'), cyan: c('36') };
}
type Palette = ReturnType<typeof palette>;

function describeBudget(b: { name: string; agent?: string; model?: string } & Record<string, unknown>) {
  const limits = ['month', 'day', 'hour']
    .filter((k) => typeof b[k] === 'number')
    .map((k) => `${n(b[k] as number)} tokens/${k}`);
  if (typeof b.request === 'number') limits.push(`at most ${n(b.request)} per request`);
  const scope = b.agent ? ` (agent "${b.agent}")` : b.model ? ` (models ${b.model})` : ' (every request)';
  return `${b.name}: ${limits.join(', ')}${scope}`;
}

/**
 * Tells what happens, one line per event: the first refusal each agent meets, every alert, each
 * emergency, and a status line every 5 s. Reads the gateway through the same OperatorService as
 * the API.
 */
class Narrator {
  private readonly counts = { requests: 0, ok: 0, blocked: 0, refused: 0, failed: 0 };
  private readonly refusals = new Set<string>();
  private readonly alerts = new Set<string>();
  private readonly emergencies = new Set<string>();
  private readonly startedAt = Date.now();
  private lastStatus = 0;
  private busy = false;

  constructor(
    private readonly out: NodeJS.WritableStream,
    private readonly color: Palette,
  ) {}

  say(text: string): void {
    const s = Math.floor((Date.now() - this.startedAt) / 1000);
    const mmss = `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
    this.out.write(`${this.color.dim(`[${mmss}]`)} ${text}\n`);
  }

  /** One agent's answer. */
  result(r: AgentResult): void {
    const { color } = this;
    this.counts.requests++;
    if (r.status === 200) {
      this.counts.ok++;
      return;
    }
    if (r.status === 429) this.counts.blocked++;
    else if (r.status === 400) this.counts.refused++;
    else this.counts.failed++;
    const key = `${r.agent}|${r.status}|${r.blockedBy ?? ''}`;
    if (this.refusals.has(key)) return; // the status line counts the rest
    this.refusals.add(key);
    if (r.status === 429) {
      const retry = r.retryAfter === null ? '' : `, retry after ${wait(r.retryAfter)}`;
      this.say(`${color.red('BLOCKED')} ${r.agent} → 429 (${r.blockedBy ?? 'budget'}${retry})`);
    } else if (r.status === 400) {
      this.say(`${color.yellow('REFUSED')} ${r.agent} → 400: ${r.message ?? 'invalid request'}`);
    } else {
      this.say(`${color.yellow('FAILED')} ${r.agent} → ${r.status || 'no answer'}: ${r.message ?? ''}`);
    }
  }

  /** After a reset, the next refusals are news again. */
  forgetRefusals(): void {
    this.refusals.clear();
  }

  /** Read the gateway's alerts and status; print what is new. Never throws. */
  async watch(operator: OperatorService): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    const { color } = this;
    try {
      const [summary, alerts] = await Promise.all([
        operator.summary(),
        operator.alerts({ limit: 100, since: this.startedAt }),
      ]);
      for (const a of alerts.reverse()) {
        if (this.alerts.has(a.id)) continue;
        this.alerts.add(a.id);
        const label = a.level.toUpperCase();
        this.say(
          `${a.level === 'warning' || a.level === 'forecast' ? color.yellow(label) : color.red(label)} ${a.message}`,
        );
      }
      for (const b of summary.budgets) {
        if (b.emergency && !this.emergencies.has(b.name)) {
          this.emergencies.add(b.name);
          this.say(
            `${color.red(color.bold('HALTED'))} every request under budget "${b.name}" is now refused, ` +
              'until `tokenwarden resume`, a reset or the end of the month',
          );
        } else if (!b.emergency) {
          this.emergencies.delete(b.name);
        }
      }
      if (Date.now() - this.lastStatus >= 5000) {
        this.lastStatus = Date.now();
        const m = summary.budgets.find((b) => b.windows.month.limit !== null)?.windows.month;
        const month = m ? `month ${n(m.used)} / ${n(m.limit ?? 0)} (${m.percent}%) · ` : '';
        const paint =
          summary.status === 'ok' ? color.green : summary.status === 'warning' ? color.yellow : color.red;
        const c = this.counts;
        this.say(
          `${month}${n(c.requests)} request${c.requests === 1 ? '' : 's'}: ${n(c.ok)} ok, ` +
            `${n(c.blocked)} blocked, ${n(c.refused)} refused${c.failed ? `, ${n(c.failed)} failed` : ''} · ` +
            `status ${paint(summary.status)}`,
        );
      }
    } catch (err) {
      this.say(`${color.red('error')} reading the gateway: ${(err as Error).message}`);
    } finally {
      this.busy = false;
    }
  }
}

/**
 * `tokenwarden demo [--port N]`: the simulated upstream, the gateway on a temporary database with
 * small budgets, and simulated agents (src/sim/demo.ts); prints the dashboard address and what
 * happens. Ctrl-C (or q) stops everything and deletes the temporary database.
 */
export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description(
      'run a self-contained demonstration: simulated upstream, gateway and agents (no provider key)',
    )
    .option(
      '--port <port>',
      'port for the gateway (default 4000, or a free one if taken; 0 picks a free port)',
      portArg,
    )
    .action(async (flags: DemoFlags) => {
      const out = process.stdout;
      const color = palette(Boolean(out.isTTY) && !process.env.NO_COLOR);
      const narrator = new Narrator(out, color);
      // Loaded here so that the other commands start without the HTTP stack.
      const { DEMO_AGENTS, DEMO_BUDGETS, startDemo } = await import('../sim/demo.js');
      const { StartupError } = await import('../main.js');

      let demo: Awaited<ReturnType<typeof startDemo>>;
      try {
        demo = await startDemo({
          ...(flags.port !== undefined ? { port: flags.port } : {}),
          onResult: (r) => narrator.result(r),
        });
      } catch (err) {
        const detail = err instanceof StartupError ? err.problems.join('; ') : (err as Error).message;
        process.stderr.write(`tokenwarden demo: cannot start: ${detail}\n`);
        process.exitCode = 1;
        return;
      }
      const { gateway } = demo;
      const interactive = Boolean(process.stdin.isTTY);
      out.write(
        [
          `${color.bold('tokenwarden demo')}: a simulated Anthropic API, the gateway and ` +
            `${DEMO_AGENTS.length} simulated agents (no provider key needed)`,
          '',
          `  dashboard  ${color.cyan(`${gateway.url}/dashboard`)}`,
          `  gateway    ${gateway.url}   (an agent uses it with ANTHROPIC_BASE_URL=${gateway.url})`,
          `  budgets    ${DEMO_BUDGETS.map(describeBudget).join('\n             ')}`,
          `  agents     ${DEMO_AGENTS.map((a) => `${a.name} (${a.model})`).join(', ')}`,
          `  database   ${demo.database} (deleted when the demo stops)`,
          '',
          'Alerts, blocked agents and an emergency shutdown follow within a minute.',
          interactive
            ? 'Press r to reset the usage and start over, q or Ctrl-C to stop.'
            : 'Ctrl-C stops the demo.',
          '',
        ].join('\n'),
      );

      const watcher = setInterval(() => void narrator.watch(gateway.operator), 500);

      let stopping = false;
      const stop = async (why: string) => {
        if (stopping) process.exit(130); // a second Ctrl-C: leave at once
        stopping = true;
        out.write('\n');
        narrator.say(`${why}: stopping the agents, the gateway and the simulated upstream`);
        clearInterval(watcher);
        if (interactive) process.stdin.setRawMode(false);
        process.stdin.pause();
        await demo.stop();
        out.write(`demo stopped; deleted ${demo.database}\n`);
        process.exit(0);
      };
      process.on('SIGINT', () => void stop('SIGINT'));
      process.on('SIGTERM', () => void stop('SIGTERM'));

      if (interactive) {
        // Raw mode: keys arrive one by one, and Ctrl-C as a key rather than a signal.
        emitKeypressEvents(process.stdin);
        process.stdin.setRawMode(true);
        process.stdin.on('keypress', (_s: string | undefined, key: { name?: string; ctrl?: boolean }) => {
          if (key.name === 'q' || (key.ctrl && key.name === 'c')) {
            void stop('quit');
          } else if (key.name === 'r') {
            gateway.operator.reset({}).then(
              (r) => {
                narrator.forgetRefusals();
                narrator.say(
                  `${color.cyan('RESET')} every budget's usage is back to zero` +
                    `${r.resumed ? ' and the emergency is lifted' : ''} (as \`tokenwarden reset --yes\` does)`,
                );
              },
              (err: unknown) => narrator.say(`${color.red('error')} resetting: ${(err as Error).message}`),
            );
          }
        });
        process.stdin.resume();
      }
    });
}
