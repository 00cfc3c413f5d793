/**
 * Rendering the usage summary as text, for `status` and `monitor`. Pure: the document, the time and
 * the width come in, lines go out.
 */
import type { WindowKind } from '../budget/types.js';
import type { BudgetReport, SummaryDoc, WindowReport } from '../service/summary.js';
import {
  bar,
  cell,
  clean,
  clip,
  duration,
  levelStyle,
  num,
  type Paint,
  percentLevel,
  utc,
  visibleWidth,
} from './output.js';

const KINDS: readonly WindowKind[] = ['month', 'day', 'hour'];

export interface ViewOptions {
  paint: Paint;
  /** Terminal width: no line is longer. */
  width: number;
  now: number;
}

/** `global` budget scope in words. */
export function scopeText(b: BudgetReport): string {
  const { type, agent, model } = b.scope;
  const base =
    type === 'global'
      ? 'all requests'
      : type === 'agent'
        ? `agent ${agent}`
        : type === 'model'
          ? `model ${model}`
          : `agent ${agent}, model ${model}`;
  return clean(b.rolling ? `${base}, rolling windows` : base);
}

/** The windows worth a line: those with a limit or some usage; the month at least. */
export function shownWindows(b: BudgetReport): WindowKind[] {
  const kinds = KINDS.filter((k) => {
    const w = b.windows[k];
    return w !== undefined && (w.limit !== null || w.used > 0 || w.reserved > 0);
  });
  return kinds.length > 0 ? kinds : ['month'];
}

/** Column widths shared by every window line of a screen, so bars and numbers line up. */
export interface WindowLayout {
  amountWidth: number;
  /** Width of the relative reset time (`2d 4h`). */
  relWidth: number;
  barWidth: number;
  /** Whether the absolute reset time fits too. */
  absolute: boolean;
}

const ABSOLUTE_WIDTH = ' (12-01 00:00Z)'.length;

/**
 * The layout of the window lines of `budgets` at `o.width`: the bar takes the room left (10–40
 * cells); the absolute reset time is shown only when the bar keeps at least 12 cells with it.
 */
export function windowLayout(budgets: readonly BudgetReport[], o: ViewOptions): WindowLayout {
  let amountWidth = 9;
  let relWidth = 2;
  for (const b of budgets) {
    for (const k of shownWindows(b)) {
      const w = b.windows[k];
      if (!w) continue;
      amountWidth = Math.max(amountWidth, amountText(w).length);
      relWidth = Math.max(relWidth, duration(Date.parse(w.resetsAt) - o.now).length);
    }
  }
  // indent, kind, gap, bar, gap, amount, gap, percent, gap, "resets in " + relative.
  const fixed = 2 + 5 + 1 + 2 + amountWidth + 2 + 6 + 2 + 10 + relWidth;
  let barWidth = o.width - fixed - ABSOLUTE_WIDTH;
  let absolute = true;
  if (barWidth < 12) {
    absolute = false;
    barWidth = o.width - fixed;
  }
  return { amountWidth, relWidth, barWidth: Math.max(10, Math.min(40, barWidth)), absolute };
}

function amountText(w: WindowReport): string {
  return w.limit === null ? `${num(w.used)} / no limit` : `${num(w.used)} / ${num(w.limit)}`;
}

/**
 * One window as `  month ████░░░░  112,000 / 140,000   80.0%  resets in 16d 12h (02-01 00:00Z)`,
 * the bar and percent coloured by the window's threshold level, `+N held` after when tokens are
 * reserved by requests in flight. Cut to the width.
 */
export function windowLine(
  kind: WindowKind,
  w: WindowReport,
  thresholds: SummaryDoc['thresholds'],
  o: ViewOptions & { layout: WindowLayout },
): string {
  const { paint, layout } = o;
  const level = percentLevel(w.percent, thresholds);
  const style = levelStyle(level);
  const drawn =
    w.limit === null
      ? paint('gray', bar(null, layout.barWidth))
      : paint(style, bar(w.percent, layout.barWidth));
  const pct = (w.percent === null ? '-' : `${w.percent.toFixed(1)}%`).padStart(6);
  const rel = duration(Date.parse(w.resetsAt) - o.now);
  const reset = layout.absolute
    ? `resets in ${rel.padEnd(layout.relWidth)} (${utc(w.resetsAt, true)}Z)`
    : `resets in ${rel}`;
  const held = w.reserved > 0 ? paint('gray', `  +${num(w.reserved)} held`) : '';
  return clip(
    `  ${kind.padEnd(5)} ${drawn}  ${amountText(w).padStart(layout.amountWidth)}  ` +
      `${level === 'ok' ? pct : paint(style, pct)}  ${reset}${held}`,
    o.width,
  );
}

/** `global  OK  · all requests · max 1,000 tokens per request` */
export function budgetHeader(b: BudgetReport, o: ViewOptions): string {
  const { paint } = o;
  const status = paint([levelStyle(b.status), 'bold'], b.status.toUpperCase());
  const perRequest = b.perRequestLimit === null ? '' : ` · max ${num(b.perRequestLimit)} tokens per request`;
  return clip(`${paint('bold', clean(b.name))}  ${status}  · ${scopeText(b)}${perRequest}`, o.width);
}

/** The emergency line of a budget in emergency, or null. */
export function emergencyLine(b: BudgetReport, o: ViewOptions): string | null {
  const e = b.emergencyState;
  if (!b.emergency || !e) return null;
  const until = e.until === null ? 'until resumed' : `until ${utc(e.until)}`;
  const how = e.manual ? 'halted by hand' : 'threshold reached';
  return clip(
    o.paint(
      ['red', 'bold'],
      `  EMERGENCY since ${utc(e.since)} (${how}, ${until}): ${clean(e.reason)} — agents are refused; ` +
        'tokenwarden resume lifts it',
    ),
    o.width,
  );
}

export function burnLine(doc: SummaryDoc, o: ViewOptions): string {
  return clip(
    `${o.paint('bold', 'Burn rate')}  ${num(doc.burnRate.lastHour)} tokens/h over the last hour · ` +
      `${num(doc.burnRate.lastDay)} tokens/h over the last day`,
    o.width,
  );
}

export function forecastLine(doc: SummaryDoc, o: ViewOptions): string {
  const f = doc.forecast;
  const label = o.paint('bold', 'Forecast');
  if (f.budget === null || f.monthEnd === null)
    return clip(`${label}   no monthly limit to forecast`, o.width);
  const limit = doc.budgets.find((b) => b.name === f.budget)?.windows.month?.limit ?? null;
  const share = limit ? ` (${((f.monthEnd / limit) * 100).toFixed(0)}% of ${clean(f.budget)})` : '';
  const eta =
    f.exhaustsAt === null
      ? o.paint('green', 'within the limit')
      : o.paint(
          'red',
          `limit reached in ${duration(Date.parse(f.exhaustsAt) - o.now)} (${utc(f.exhaustsAt, true)}Z)`,
        );
  return clip(`${label}   ${num(f.monthEnd)} tokens at month end${share} · ${eta}`, o.width);
}

type TopRow = { name: string; requests: number; tokens: number };

/** The `Top agents` and `Top models` tables (five rows each), their columns aligned together. */
function topTables(tables: Array<{ title: string; rows: TopRow[] }>, o: ViewOptions, max = 5): string[] {
  const names = tables.flatMap((t) => t.rows.slice(0, max).map((r) => visibleWidth(clean(r.name))));
  const nameWidth = Math.min(40, Math.max(10, ...names));
  const lines: string[] = [];
  for (const { title, rows } of tables) {
    lines.push(o.paint('bold', title));
    if (rows.length === 0) lines.push(o.paint('gray', '  none this month'));
    for (const r of rows.slice(0, max)) {
      lines.push(
        clip(
          `  ${cell(clean(r.name), nameWidth)}  ${num(r.tokens).padStart(12)} tokens  ` +
            `${num(r.requests).padStart(8)} request${r.requests === 1 ? '' : 's'}`,
          o.width,
        ),
      );
    }
    if (rows.length > max) lines.push(o.paint('gray', `  … and ${rows.length - max} more`));
  }
  return lines;
}

/** The whole `tokenwarden status` text. */
export function renderStatus(doc: SummaryDoc, target: string, o: ViewOptions): string {
  const { paint } = o;
  const t = doc.thresholds;
  const lines = [
    clip(`${paint('bold', 'tokenwarden status')} — ${target}`, o.width),
    clip(
      `Status: ${paint([levelStyle(doc.status), 'bold'], doc.status.toUpperCase())}   ` +
        `mode ${doc.mode} · alerts at ${t.warning}/${t.critical}/${t.emergency}% · as of ${utc(doc.generatedAt)}`,
      o.width,
    ),
  ];
  const layout = windowLayout(doc.budgets, o);
  if (doc.budgets.length === 0) lines.push('', 'no budgets configured');
  for (const b of doc.budgets) {
    lines.push('', budgetHeader(b, o));
    for (const k of shownWindows(b)) {
      const w = b.windows[k];
      if (w) lines.push(windowLine(k, w, t, { ...o, layout }));
    }
    const e = emergencyLine(b, o);
    if (e) lines.push(e);
  }
  lines.push('', burnLine(doc, o), forecastLine(doc, o), '');
  lines.push(
    ...topTables(
      [
        {
          title: 'Top agents this month',
          rows: doc.byAgent.map((a) => ({ name: a.agent, requests: a.requests, tokens: a.tokens })),
        },
        {
          title: 'Top models this month',
          rows: doc.byModel.map((m) => ({ name: m.model, requests: m.requests, tokens: m.tokens })),
        },
      ],
      o,
    ),
  );
  return `${lines.join('\n')}\n`;
}
