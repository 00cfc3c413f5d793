// tokenwarden dashboard: polls the operator API (/api/token-usage/*) and draws what it answers.
// Plain browser JavaScript, no build step. Every value from the API reaches the page through
// textContent (agent names and messages come from clients); no inline script or style (the CSP).

const API = 'api/token-usage/';
const TOKEN_KEY = 'tokenwarden.adminToken';
const WINDOWS = ['month', 'day', 'hour'];
const RANGES = {
  minute: { label: 'per minute', ms: 60_000 },
  hour: { label: 'per hour', ms: 3_600_000 },
  day: { label: 'per day', ms: 86_400_000 },
};

const query = new URLSearchParams(location.search);
/** Seconds between refreshes: `?refresh=N` (1–300), default 3. */
const REFRESH_MS = Math.min(300, Math.max(1, Number(query.get('refresh')) || 3)) * 1000;

const nf = new Intl.NumberFormat();
const pf = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1, minimumFractionDigits: 1 });
const compact = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });
const timeFmt = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
  hourCycle: 'h23',
});
const dateTimeFmt = new Intl.DateTimeFormat(undefined, {
  month: 'short',
  day: 'numeric',
  hour: '2-digit',
  minute: '2-digit',
  hourCycle: 'h23',
});

const $ = (selector) => document.querySelector(selector);

/** Build an element. Children are nodes or text (never parsed as HTML). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'data') Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const fmt = (n) => (n === null || n === undefined ? '–' : nf.format(Math.round(n)));
const pct = (p) => (p === null || p === undefined ? '–' : `${pf.format(p)}%`);

/** "3 d 4 h", "12 min", "40 s". */
function duration(ms) {
  const s = Math.max(0, Math.round(Math.abs(ms) / 1000));
  const d = Math.floor(s / 86_400);
  const hr = Math.floor((s % 86_400) / 3600);
  const min = Math.floor((s % 3600) / 60);
  if (d > 0) return hr > 0 ? `${d} d ${hr} h` : `${d} d`;
  if (hr > 0) return min > 0 ? `${hr} h ${min} min` : `${hr} h`;
  if (min > 0) return `${min} min`;
  return `${s} s`;
}

function relative(iso) {
  const diff = Date.parse(iso) - Date.now();
  if (Math.abs(diff) < 5_000) return 'just now';
  return diff > 0 ? `in ${duration(diff)}` : `${duration(diff)} ago`;
}

/** The level of one window (only the month can be an emergency, as in the summary). */
function levelOf(percent, thresholds, kind) {
  if (percent === null || percent === undefined) return 'ok';
  if (percent >= thresholds.emergency) return kind === 'month' ? 'emergency' : 'critical';
  if (percent >= thresholds.critical) return 'critical';
  if (percent >= thresholds.warning) return 'warning';
  return 'ok';
}

// ---------------------------------------------------------------------------------------------
// API access and the admin token

class AuthRequired extends Error {}
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let token = sessionStorage.getItem(TOKEN_KEY);

async function api(path) {
  const headers = { accept: 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(API + path, { headers, cache: 'no-store' });
  if (res.status === 401) throw new AuthRequired();
  if (!res.ok) {
    let message = `HTTP ${res.status}`;
    try {
      message = (await res.json())?.error?.message ?? message;
    } catch {
      // not JSON: keep the status
    }
    throw new ApiError(res.status, message);
  }
  return res.json();
}

const dialog = $('#login');
const tokenInput = $('#login-token');

function askForToken() {
  const message = $('#login-message');
  if (token) {
    message.textContent = 'That token was not accepted. Enter the admin token configured on the gateway.';
    message.className = 'rejected';
  } else {
    message.textContent = 'This gateway protects its operator API with an admin token (auth.adminToken).';
    message.className = '';
  }
  document.body.dataset.state = 'login';
  if (!dialog.open) dialog.showModal();
  tokenInput.focus();
}

$('#login-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = tokenInput.value.trim();
  if (!value) return;
  token = value;
  sessionStorage.setItem(TOKEN_KEY, value);
  tokenInput.value = '';
  dialog.close();
  refreshNow();
});
// Without a token there is nothing to show: Escape does not dismiss the form.
dialog.addEventListener('cancel', (event) => event.preventDefault());

$('#signout').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  refreshNow();
});

// ---------------------------------------------------------------------------------------------
// Rendering

function renderHeader(summary) {
  const status = $('#status');
  status.dataset.status = summary.status;
  status.textContent = summary.status;
  document.title = summary.status === 'ok' ? 'tokenwarden' : `${summary.status.toUpperCase()} · tokenwarden`;
  const mode = $('#mode');
  mode.hidden = false;
  mode.textContent = summary.mode === 'observe' ? 'observe mode' : 'enforcing';
  mode.className = summary.mode === 'observe' ? 'chip observe' : 'chip';
  $('#signout').hidden = !token;
}

function banner(kind, title, text) {
  return h(
    'div',
    { class: `banner ${kind}`, role: kind === 'info' ? 'status' : 'alert' },
    h('strong', {}, title),
    text,
  );
}

let connectionProblem = null;

function renderBanners(summary) {
  const banners = [];
  if (connectionProblem) banners.push(banner('error', connectionProblem.title, connectionProblem.text));
  for (const b of summary?.budgets ?? []) {
    if (!b.emergency) continue;
    const e = b.emergencyState;
    const since = e ? ` since ${timeFmt.format(new Date(e.since))}` : '';
    const until = e?.until
      ? `until ${dateTimeFmt.format(new Date(e.until))}`
      : 'until an operator resumes it';
    banners.push(
      banner(
        'emergency',
        `Emergency — budget “${b.name}”.`,
        `${e?.reason ?? 'emergency shutdown'}. Agent traffic under this budget is blocked${since}, ${until} ` +
          '(tokenwarden resume lifts it).',
      ),
    );
  }
  if (summary?.mode === 'observe') {
    banners.push(
      banner('info', 'Observe mode.', 'Nothing is blocked: requests that would have been are only recorded.'),
    );
  }
  $('#banners').replaceChildren(...banners);
}

function renderStats(summary) {
  const primary =
    summary.budgets.find((b) => b.name === summary.forecast.budget) ??
    summary.budgets.find((b) => b.windows.month?.limit !== null) ??
    summary.budgets[0];
  const month = primary?.windows.month;
  $('#stat-month').textContent = fmt(month?.used ?? 0);
  $('#stat-month').dataset.status = month ? levelOf(month.percent, summary.thresholds, 'month') : 'ok';
  $('#stat-month-sub').textContent =
    month?.limit !== null && month?.limit !== undefined
      ? `of ${fmt(month.limit)} tokens (${pct(month.percent)}) · ${primary.name}`
      : 'no monthly limit';

  $('#stat-burn').textContent = `${fmt(summary.burnRate.lastHour)}/h`;
  $('#stat-burn-sub').textContent =
    `tokens in the last hour · ${fmt(summary.burnRate.lastDay)}/h over the day`;

  const { monthEnd, exhaustsAt } = summary.forecast;
  const forecast = $('#stat-forecast');
  forecast.textContent = fmt(monthEnd);
  forecast.className = `value${monthEnd !== null && month?.limit && monthEnd > month.limit ? ' warn' : ''}`;
  $('#stat-forecast-sub').textContent = primary?.emergency
    ? 'agent traffic halted: emergency'
    : exhaustsAt
      ? `limit reached ${relative(exhaustsAt)} (${dateTimeFmt.format(new Date(exhaustsAt))})`
      : monthEnd === null
        ? 'no monthly limit to forecast'
        : 'within the limit at the current rate';

  const requests = summary.byAgent.reduce((acc, a) => acc + a.requests, 0);
  $('#stat-requests').textContent = fmt(requests);
  $('#stat-requests-sub').textContent =
    `${summary.byAgent.length} agent${summary.byAgent.length === 1 ? '' : 's'} · ` +
    `${summary.byModel.length} model${summary.byModel.length === 1 ? '' : 's'}`;
}

function scopeText(scope) {
  switch (scope.type) {
    case 'agent':
      return `agent ${scope.agent}`;
    case 'model':
      return `model ${scope.model}`;
    case 'agent+model':
      return `agent ${scope.agent} · model ${scope.model}`;
    default:
      return 'every request';
  }
}

function windowRow(kind, w, thresholds) {
  const level = levelOf(w.percent, thresholds, kind);
  const bar = h('div', { class: w.limit === null ? 'bar nolimit' : 'bar' });
  if (w.limit !== null) {
    const usedPct = w.limit > 0 ? Math.min(100, (w.used / w.limit) * 100) : 100;
    const heldPct = w.limit > 0 ? Math.min(100 - usedPct, (w.reserved / w.limit) * 100) : 0;
    const fill = h('div', { class: 'fill' });
    fill.style.width = `${usedPct}%`;
    const held = h('div', { class: 'held' });
    held.style.left = `${usedPct}%`;
    held.style.width = `${heldPct}%`;
    bar.append(fill, held);
    for (const t of [thresholds.warning, thresholds.critical, thresholds.emergency]) {
      const tick = h('div', { class: 'tick', title: `${t}%` });
      tick.style.left = `${t}%`;
      bar.append(tick);
    }
  }
  const figures =
    w.limit === null
      ? [h('span', { class: 'used' }, fmt(w.used)), h('span', { class: 'limit' }, 'used · no limit')]
      : [
          h('span', { class: 'used' }, fmt(w.used)),
          h('span', { class: 'limit' }, `/ ${fmt(w.limit)}`),
          h('span', { class: 'pct' }, pct(w.percent)),
          w.reserved > 0 ? h('span', { class: 'held-t' }, `+${fmt(w.reserved)} held`) : null,
        ];
  const reset = h(
    'span',
    { class: 'reset', title: `resets ${dateTimeFmt.format(new Date(w.resetsAt))}` },
    `resets ${relative(w.resetsAt)}`,
  );
  return h(
    'div',
    { class: 'window', data: { window: kind, status: level } },
    h('div', { class: 'wname' }, kind),
    bar,
    h('div', { class: 'figures' }, figures, reset),
  );
}

function renderBudgets(summary) {
  const cards = summary.budgets.map((b) => {
    const kinds = WINDOWS.filter((k) => b.windows[k]);
    // Windows without a limit get one line of figures, not an empty bar each.
    const limited = kinds.filter((k) => b.windows[k].limit !== null);
    const unlimited = kinds.filter((k) => b.windows[k].limit === null);
    const foot = [];
    if (unlimited.length > 0) {
      const when = { month: 'this month', day: 'today', hour: 'this hour' };
      foot.push(`no limit: ${unlimited.map((k) => `${fmt(b.windows[k].used)} ${when[k]}`).join(', ')}`);
    }
    if (b.perRequestLimit !== null) foot.push(`at most ${fmt(b.perRequestLimit)} tokens per request`);
    if (b.rolling) foot.push('rolling windows');
    return h(
      'div',
      { class: 'budget', data: { budget: b.name, status: b.status } },
      h(
        'div',
        { class: 'budget-head' },
        h('span', { class: 'name' }, b.name),
        h('span', { class: 'chip' }, scopeText(b.scope)),
        h('span', { class: 'status', data: { status: b.status } }, b.emergency ? 'emergency' : b.status),
      ),
      (limited.length > 0 ? limited : kinds.slice(0, 1)).map((k) =>
        windowRow(k, b.windows[k], summary.thresholds),
      ),
      foot.length > 0 ? h('div', { class: 'budget-foot' }, foot.join(' · ')) : null,
    );
  });
  $('#budgets').replaceChildren(...(cards.length > 0 ? cards : [h('p', { class: 'empty' }, 'No budgets.')]));
}

function shareRows(items, key) {
  const total = items.reduce((acc, i) => acc + i.tokens, 0);
  if (items.length === 0)
    return [h('tr', {}, h('td', { class: 'empty', colspan: 4 }, 'No requests yet this month.'))];
  return [...items]
    .sort((a, b) => b.tokens - a.tokens)
    .map((i) => {
      const bar = h('div');
      bar.style.width = `${total > 0 ? (i.tokens / total) * 100 : 0}%`;
      return h(
        'tr',
        {},
        h('td', { title: i[key] }, i[key]),
        h('td', { class: 'num' }, fmt(i.requests)),
        h('td', { class: 'num' }, fmt(i.tokens)),
        h('td', { title: total > 0 ? pct((i.tokens / total) * 100) : '' }, h('div', { class: 'share' }, bar)),
      );
    });
}

function renderBreakdowns(summary) {
  $('#agents tbody').replaceChildren(...shareRows(summary.byAgent, 'agent'));
  $('#models tbody').replaceChildren(...shareRows(summary.byModel, 'model'));
}

function renderAlerts(doc) {
  const alerts = doc.alerts;
  $('#alerts-count').textContent = alerts.length > 0 ? `${alerts.length} latest` : '';
  if (alerts.length === 0) {
    $('#alerts').replaceChildren(
      h('li', { class: 'empty' }, 'No alerts. They appear here when a budget crosses a threshold.'),
    );
    return;
  }
  $('#alerts').replaceChildren(
    ...alerts.map((a) =>
      h(
        'li',
        { data: { level: a.level } },
        h('span', { class: 'level', data: { status: a.level === 'forecast' ? 'none' : a.level } }, a.level),
        h(
          'div',
          { class: 'what' },
          `${a.budget} · ${a.window} · ${pct(a.percent)}`,
          h('span', { class: 'when', title: dateTimeFmt.format(new Date(a.at)) }, relative(a.at)),
        ),
        h('div', { class: 'msg' }, a.message),
      ),
    ),
  );
}

function requestNote(r) {
  if (r.blockReason) return r.blockReason;
  if (r.usageSource === 'estimated') return 'usage estimated (stream ended early)';
  const tags = Object.entries(r.metadata ?? {})
    .filter(([k]) => k.startsWith('tag:') || k === 'tags')
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
  return tags.join(' ');
}

function renderRequests(doc) {
  $('#requests-total').textContent =
    doc.total > doc.requests.length
      ? `latest ${doc.requests.length} of ${fmt(doc.total)}`
      : `${fmt(doc.total)} in all`;
  const rows = doc.requests.map((r) => {
    const note = requestNote(r);
    return h(
      'tr',
      { data: { outcome: r.outcome } },
      h('td', { class: 'mono', title: r.at }, timeFmt.format(new Date(r.at))),
      h('td', {}, r.agent),
      h(
        'td',
        {},
        r.model ?? '–',
        r.stream ? h('span', { class: 'stream', title: 'streaming' }, 'stream') : null,
      ),
      h('td', {}, h('span', { class: `outcome ${r.outcome}` }, r.outcome.replace('_', ' '))),
      h('td', { class: 'num' }, r.status || '–'),
      h('td', { class: 'num' }, fmt(r.inputTokens)),
      h('td', { class: 'num' }, fmt(r.outputTokens)),
      h('td', { class: 'num' }, fmt(r.counted)),
      h('td', { class: 'num' }, fmt(r.reserved)),
      h('td', { class: 'num' }, r.latencyMs === null ? '–' : `${fmt(r.latencyMs)} ms`),
      h('td', { class: 'note', title: note }, note),
    );
  });
  $('#requests tbody').replaceChildren(
    ...(rows.length > 0
      ? rows
      : [
          h(
            'tr',
            {},
            h('td', { class: 'empty', colspan: 11 }, 'No requests yet. Point an agent at this gateway.'),
          ),
        ]),
  );
}

// ---------------------------------------------------------------------------------------------
// The chart (uPlot, served by the gateway from its npm package)

let range = 'minute';
let chart = null;
let chartRange = null;
const chartEl = $('#chart');

const MIN_BUCKETS = 15;

/** Every bucket of the span, empty ones as 0 (the API returns only buckets that have rows). */
function chartData(doc) {
  const bucketMs = RANGES[range].ms;
  const byBucket = new Map(doc.points.map((p) => [p.bucket, p]));
  const times = new Set(byBucket.keys());
  const until = Date.parse(doc.until);
  for (let t = Math.floor(Date.parse(doc.since) / bucketMs) * bucketMs; t <= until; t += bucketMs)
    times.add(t);
  let xs = [...times].sort((a, b) => a - b);
  // Fit the axis to the data: leading empty buckets are dropped, keeping at least MIN_BUCKETS.
  const first = xs.findIndex((t) => byBucket.has(t));
  const from = first < 0 ? 0 : Math.max(0, Math.min(first - 2, xs.length - MIN_BUCKETS));
  xs = xs.slice(from);
  const pick = (field) => xs.map((t) => byBucket.get(t)?.[field] ?? 0);
  return [xs.map((t) => t / 1000), pick('counted'), pick('requests'), pick('blocked')];
}

function chartOptions(width) {
  const bucketS = RANGES[range].ms / 1000;
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const grid = { stroke: 'rgba(139, 152, 167, 0.12)', width: 1 };
  const ticks = { stroke: 'rgba(139, 152, 167, 0.25)', width: 1, size: 4 };
  const axis = { stroke: color('--muted'), grid, ticks, font: '12px system-ui, sans-serif' };
  const countValue = (_u, v) => (v === null || v === undefined ? '–' : fmt(v));
  return {
    width,
    height: 280,
    padding: [12, 8, 0, 0],
    cursor: { drag: { x: false, y: false }, points: { size: 6 } },
    scales: {
      // Half a bucket of room at each end, so the first and last bars are drawn whole.
      x: { time: true, range: (_u, min, max) => [min - bucketS / 2, max + bucketS / 2] },
      tokens: { range: (_u, _min, max) => [0, Math.max(10, max * 1.15)] },
      requests: { range: (_u, _min, max) => [0, Math.max(4, Math.ceil(max * 1.25))] },
    },
    axes: [
      axis,
      {
        ...axis,
        scale: 'tokens',
        label: `tokens ${RANGES[range].label}`,
        labelFont: '12px system-ui, sans-serif',
        size: 64,
        values: (_u, vals) => vals.map((v) => compact.format(v)),
      },
      {
        ...axis,
        scale: 'requests',
        side: 1,
        label: 'requests',
        labelFont: '12px system-ui, sans-serif',
        grid: { show: false },
        size: 50,
        values: (_u, vals) => vals.map((v) => (Number.isInteger(v) ? compact.format(v) : '')),
      },
    ],
    series: [
      {
        value: (_u, ts) => (ts === null || ts === undefined ? '–' : dateTimeFmt.format(new Date(ts * 1000))),
      },
      {
        label: 'tokens counted',
        scale: 'tokens',
        stroke: color('--accent'),
        fill: 'rgba(47, 129, 247, 0.45)',
        width: 1,
        paths: uPlot.paths.bars({ size: [0.72, 28], gap: 1 }),
        points: { show: false },
        value: countValue,
      },
      {
        label: 'requests',
        scale: 'requests',
        stroke: '#a371f7',
        width: 2,
        points: { show: false },
        value: countValue,
      },
      {
        label: 'blocked',
        scale: 'requests',
        stroke: color('--emergency'),
        width: 2,
        dash: [5, 4],
        points: { show: false },
        value: countValue,
      },
    ],
  };
}

function renderChart(doc) {
  if (typeof uPlot === 'undefined') {
    chartEl.replaceChildren(h('p', { class: 'empty' }, 'The chart library did not load.'));
    return;
  }
  const data = chartData(doc);
  if (chart && chartRange === range) {
    chart.setData(data);
    return;
  }
  chart?.destroy();
  chartEl.replaceChildren();
  chart = new uPlot(chartOptions(chartEl.clientWidth), data, chartEl);
  chartRange = range;
  chartEl.dataset.range = range;
}

new ResizeObserver(() => {
  if (chart && chartEl.clientWidth > 0) chart.setSize({ width: chartEl.clientWidth, height: 280 });
}).observe(chartEl);

for (const button of document.querySelectorAll('[data-range]')) {
  button.addEventListener('click', () => {
    range = button.dataset.range;
    for (const b of document.querySelectorAll('[data-range]'))
      b.setAttribute('aria-pressed', String(b === button));
    refreshNow();
  });
}

// ---------------------------------------------------------------------------------------------
// The refresh loop

let timer = null;
let running = false;
let again = false;
let lastSummary = null;
let lastOk = null;

function setLive(ok) {
  const live = $('#live');
  live.className = ok ? 'live on' : 'live off';
  $('#updated').textContent = lastOk ? `updated ${timeFmt.format(lastOk)}` : 'not connected';
}

async function refresh() {
  const [summary, alerts, requests, series] = await Promise.all([
    api('summary'),
    api('alerts?limit=50'),
    api('requests?limit=30'),
    api(`timeseries?bucket=${range}`),
  ]);
  connectionProblem = null;
  lastSummary = summary;
  lastOk = new Date();
  renderHeader(summary);
  renderBanners(summary);
  renderStats(summary);
  renderBudgets(summary);
  renderBreakdowns(summary);
  renderAlerts(alerts);
  renderRequests(requests);
  renderChart(series);
  setLive(true);
  document.body.dataset.state = 'ready';
}

async function tick() {
  clearTimeout(timer);
  timer = null;
  if (document.hidden) return; // visibilitychange starts it again
  if (running) {
    again = true;
    return;
  }
  running = true;
  let schedule = true;
  try {
    await refresh();
  } catch (err) {
    if (err instanceof AuthRequired) {
      schedule = false; // until a token is entered
      askForToken();
    } else {
      if (err instanceof ApiError) {
        connectionProblem = { title: `The gateway answered ${err.status}.`, text: err.message };
      } else if (err instanceof TypeError) {
        connectionProblem = {
          title: 'Cannot reach the gateway.',
          text: `Retrying every ${REFRESH_MS / 1000} s${lastOk ? `; figures below are from ${timeFmt.format(lastOk)}` : ''}.`,
        };
      } else {
        console.error(err);
        connectionProblem = { title: 'The dashboard failed to draw the data.', text: String(err) };
      }
      renderBanners(lastSummary);
      setLive(false);
      if (lastSummary) document.body.dataset.state = 'stale';
    }
  } finally {
    running = false;
  }
  if (again) {
    again = false;
    tick();
  } else if (schedule) {
    timer = setTimeout(tick, REFRESH_MS);
  }
}

function refreshNow() {
  tick();
}

// A hidden tab stops polling; it catches up as soon as it is shown again.
document.addEventListener('visibilitychange', () => {
  if (document.hidden) {
    clearTimeout(timer);
    timer = null;
  } else if (!dialog.open) {
    refreshNow();
  }
});

refreshNow();
