/**
 * The `tokenwarden monitor` screen as lines: pure, so it can be rendered at any size and tested
 * without a terminal. Every line is cut to the width (never wrapped) and there are never more lines
 * than rows.
 */
import type { SummaryDoc } from '../service/summary.js';
import type { AlertView, RequestView } from './client.js';
import {
  cell,
  clean,
  clip,
  clipStart,
  clock,
  duration,
  levelStyle,
  num,
  type Paint,
  visibleWidth,
} from './output.js';
import {
  budgetHeader,
  burnLine,
  emergencyLine,
  forecastLine,
  shownWindows,
  type ViewOptions,
  type WindowLayout,
  windowLayout,
  windowLine,
} from './view.js';

export interface MonitorState {
  /** `database …` or `gateway …`. */
  target: string;
  /** The last data read successfully (kept, marked stale, while the source is unreachable). */
  summary: SummaryDoc | null;
  requests: RequestView[];
  alerts: AlertView[];
  /** When the data was read (ms), or null before the first success. */
  updatedAt: number | null;
  /** Why the last refresh failed, or null when it worked. */
  error: string | null;
  /** Refreshes failed in a row. */
  failures: number;
  /** Time between refreshes, ms. */
  intervalMs: number;
}

const OUTCOME_STYLE: Record<string, 'green' | 'yellow' | 'red' | 'gray'> = {
  ok: 'green',
  blocked: 'yellow',
  invalid: 'yellow',
  client_aborted: 'gray',
  upstream_error: 'red',
  interrupted: 'red',
};

function latency(ms: number | null): string {
  if (ms === null) return '-';
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)}s` : `${Math.round(ms)}ms`;
}

/** Lines of one budget: header, windows, emergency. */
function budgetBlock(
  b: SummaryDoc['budgets'][number],
  doc: SummaryDoc,
  o: ViewOptions & { layout: WindowLayout },
): string[] {
  const lines = [budgetHeader(b, o)];
  for (const k of shownWindows(b)) {
    const w = b.windows[k];
    if (w) lines.push(windowLine(k, w, doc.thresholds, o));
  }
  const e = emergencyLine(b, o);
  if (e) lines.push(e);
  return lines;
}

function requestLines(requests: RequestView[], n: number, o: ViewOptions): string[] {
  const { paint } = o;
  // time 8, tokens 8, outcome 14, latency 7, five gaps and the indent; agent and model share the rest.
  const rest = Math.max(16, o.width - (2 + 8 + 8 + 14 + 7 + 5));
  const agentW = Math.max(8, Math.floor(rest * 0.42));
  const modelW = Math.max(8, rest - agentW);
  const head = `  ${cell('TIME', 8)} ${cell('AGENT', agentW)} ${cell('MODEL', modelW)} ${cell('TOKENS', 8, 'right')} ${cell('OUTCOME', 14)} ${cell('LATENCY', 7, 'right')}`;
  const lines = [clip(paint('gray', head), o.width)];
  if (requests.length === 0) return [...lines, paint('gray', '  no requests yet')];
  for (const r of requests.slice(0, Math.max(0, n))) {
    const outcome = paint(OUTCOME_STYLE[r.outcome] ?? null, cell(r.outcome, 14));
    lines.push(
      clip(
        `  ${cell(clock(r.ts), 8)} ${cell(clean(r.agent), agentW)} ${cell(clean(r.model ?? '-'), modelW)} ` +
          `${cell(num(r.counted), 8, 'right')} ${outcome} ${cell(latency(r.latencyMs), 7, 'right')}`,
        o.width,
      ),
    );
  }
  return lines;
}

function alertLines(alerts: AlertView[], n: number, o: ViewOptions): string[] {
  if (alerts.length === 0) return [o.paint('gray', '  none')];
  return alerts
    .slice(0, n)
    .map((a) =>
      clip(
        `  ${clock(a.at)} ${o.paint(levelStyle(a.level), cell(a.level.toUpperCase(), 9))}` +
          `${cell(`${clean(a.budget)}/${clean(a.window)}`, 16)} ${a.percent.toFixed(1).padStart(5)}%  ${clean(a.message)}`,
        o.width,
      ),
    );
}

/**
 * The monitor screen for `rows` × `width`. Layout, top to bottom: title with the overall status; an
 * error line while the source is unreachable; the budgets (as many as fit, the rest counted);
 * burn rate and forecast; the last requests (all rows left over); the latest alerts; a key help
 * line at the bottom.
 */
export function renderMonitor(
  s: MonitorState,
  size: { rows: number; width: number },
  paint: Paint,
  now: number,
): string[] {
  const width = Math.max(20, size.width);
  const rows = Math.max(1, size.rows);
  const o: ViewOptions = { paint, width, now };
  const doc = s.summary;

  const status = doc
    ? paint([levelStyle(doc.status), 'bold', 'inverse'], ` ${doc.status.toUpperCase()} `)
    : '';
  const right = `${status} ${clock(now)} UTC`;
  const leftWidth = Math.max(1, width - visibleWidth(right) - 1);
  // The end of a long path or URL says more than its start.
  const cut = s.target.indexOf(' ');
  const kind = clean(s.target.slice(0, cut + 1));
  const where = clipStart(clean(s.target.slice(cut + 1)), leftWidth - 22 - kind.length);
  const title = `${paint('bold', 'tokenwarden monitor')} · ${kind}${where}`;
  const top = [clip(`${title}${' '.repeat(leftWidth - visibleWidth(title) + 1)}${right}`, width)];
  top.push(s.error === null ? '' : clip(paint(['red', 'bold'], `✖ ${clean(s.error)}`), width));
  const keys = `${paint('inverse', ' q ')} quit  ${paint('inverse', ' r ')} ${s.error === null ? 'refresh' : 'retry now'}   `;
  const when =
    s.error !== null
      ? paint(
          'yellow',
          `retrying every ${s.intervalMs === 1000 ? 'second' : duration(s.intervalMs)} (${s.failures} failed)` +
            (s.updatedAt === null ? '' : ` · showing data from ${clock(s.updatedAt)}`),
        )
      : s.updatedAt === null
        ? 'waiting for data…'
        : `updated ${clock(s.updatedAt)}`;
  const footer = clip(keys + when, width);

  if (!doc) {
    // Nothing to show yet: the whole error, wrapped to the width, instead of one cut line.
    const body =
      s.error === null
        ? [paint('gray', 'loading…')]
        : ['', ...wrap(`✖ ${clean(s.error)}`, width - 2).map((l) => paint('red', l))];
    return frame([top[0] ?? '', ...body.map((l) => (l ? `  ${l}` : l))], footer, rows);
  }

  const layout = windowLayout(doc.budgets, o);
  const blocks = doc.budgets.map((b) => budgetBlock(b, doc, { ...o, layout }));
  const alertsShown = Math.min(3, Math.max(1, s.alerts.length));
  const minRequests = 3;
  // Rows that are not budgets: top, footer, burn + forecast, blank, requests title + header + rows,
  // blank, alerts title + rows.
  const fixed = top.length + 1 + 2 + 1 + 2 + minRequests + 1 + 1 + alertsShown;
  let room = rows - fixed;
  const budgetLines: string[] = [];
  let hidden = 0;
  for (const [i, block] of blocks.entries()) {
    // Unless this is the last budget, keep a line for "… N more budgets" in case the next does not fit.
    const reserve = i === blocks.length - 1 ? 0 : 1;
    if (i > 0 && block.length + reserve > room) {
      hidden = blocks.length - i;
      break;
    }
    budgetLines.push(...block);
    room -= block.length;
  }
  if (hidden > 0) {
    budgetLines.push(
      paint('gray', `… ${hidden} more budget${hidden === 1 ? '' : 's'} (see tokenwarden status)`),
    );
    room -= 1;
  }
  const requestRows = minRequests + Math.max(0, room);

  const body = [
    ...budgetLines,
    burnLine(doc, o),
    forecastLine(doc, o),
    '',
    paint('bold', 'Recent requests'),
    ...requestLines(s.requests, requestRows, o),
    '',
    paint('bold', 'Alerts'),
    ...alertLines(s.alerts, alertsShown, o),
  ];
  return frame([...top, ...body], footer, rows);
}

/** `text` broken at spaces into lines of at most `width` characters (longer words are cut). */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line === '') line = word;
    else if (line.length + 1 + word.length <= width) line += ` ${word}`;
    else {
      lines.push(line);
      line = word;
    }
  }
  if (line) lines.push(line);
  return lines.map((l) => clip(l, width));
}

/** `lines` cut to `rows - 1`, padded, then the footer on the last row. */
function frame(lines: string[], footer: string, rows: number): string[] {
  if (rows === 1) return [footer];
  const body = lines.slice(0, rows - 1);
  while (body.length < rows - 1) body.push('');
  return [...body, footer];
}
