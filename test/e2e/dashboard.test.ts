import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import Fastify from 'fastify';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/logger.js';
import { registerDashboard } from '../../src/web/dashboard.js';
import { type Harness, startHarness } from '../support/harness.js';
import { type Browser, CHROMIUM, haveChromium, launchChromium, mustRunBrowser } from './browser.js';

const ARTIFACTS = resolve(import.meta.dirname, '../../test-artifacts');

const BUDGETS = [
  { name: 'global', month: 50_000, day: 20_000, request: 4_000 },
  { name: 'researcher', agent: 'researcher', hour: 1_500 },
  { name: 'opus', model: 'claude-opus-*', month: 1_000 },
];

/** One agent request through the gateway (plain fetch: the agent header and the fake's knobs). */
async function send(
  h: Harness,
  o: { agent: string; model: string; maxTokens: number; output: number; stream?: boolean },
): Promise<number> {
  const res = await h.api('/v1/messages', {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'x-api-key': 'sk-e2e',
      'anthropic-version': '2023-06-01',
      'x-tokenwarden-agent': o.agent,
      'x-fake-output-tokens': String(o.output),
    },
    body: JSON.stringify({
      model: o.model,
      max_tokens: o.maxTokens,
      stream: o.stream ?? false,
      messages: [{ role: 'user', content: `Summarise the quarterly report for ${o.agent}, please.` }],
    }),
  });
  await res.arrayBuffer();
  return res.status;
}

/** Some traffic: three agents, three models, a stream, a block and an alert (opus passes 80%). */
async function someUsage(h: Harness): Promise<void> {
  for (let i = 0; i < 3; i++) {
    await send(h, { agent: 'coder', model: 'claude-sonnet-4-5', maxTokens: 800, output: 300 + i * 50 });
  }
  expect(
    await send(h, {
      agent: 'researcher',
      model: 'claude-haiku-4-5',
      maxTokens: 600,
      output: 450,
      stream: true,
    }),
  ).toBe(200);
  await send(h, { agent: 'researcher', model: 'claude-haiku-4-5', maxTokens: 600, output: 450 });
  // Over the researcher's hourly budget: refused with a 429 and recorded as blocked.
  expect(await send(h, { agent: 'researcher', model: 'claude-haiku-4-5', maxTokens: 600, output: 450 })).toBe(
    429,
  );
  // About 83% of the opus budget's 1,000 (each request also holds its input's strict upper bound).
  expect(await send(h, { agent: 'reviewer', model: 'claude-opus-4-5', maxTokens: 600, output: 600 })).toBe(
    200,
  );
  expect(await send(h, { agent: 'reviewer', model: 'claude-opus-4-5', maxTokens: 200, output: 200 })).toBe(
    200,
  );
}

/** Page errors and console errors, each as text. */
function collectErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()}`);
  });
  return errors;
}

async function waitForData(page: Page): Promise<void> {
  await page.waitForSelector('body[data-state="ready"]', { timeout: 15_000 });
}

const monthLimit = (page: Page) =>
  page.locator('[data-budget="global"] [data-window="month"] .limit').textContent();

describe('the dashboard route', () => {
  it('answers 500 naming the problem when its files are missing, and the gateway keeps running', async () => {
    const app = Fastify();
    registerDashboard(app, {
      logger: createLogger('silent'),
      assets: () => {
        throw new Error('dashboard file /opt/tokenwarden/src/web/static/dashboard.html is missing');
      },
    });
    const res = await app.inject({ method: 'GET', url: '/dashboard' });
    expect(res.statusCode).toBe(500);
    expect(res.body).toContain('dashboard.html is missing');
    await app.close();
  });
});

// In CI the browser tests must run: a missing Chromium is a failed test, never a silent skip.
it.runIf(mustRunBrowser)('finds Chromium for the browser tests (CI)', () => {
  expect(haveChromium, `no Chromium at ${CHROMIUM}: apt-get install -y chromium`).toBe(true);
});

describe.skipIf(!haveChromium && !mustRunBrowser)('the web dashboard in Chromium', () => {
  let browser: Browser;

  beforeAll(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    // In CI a missing Chromium throws here, so the tests fail instead of skipping.
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
  });

  describe('without an admin token', () => {
    let h: Harness;
    beforeAll(async () => {
      h = await startHarness({ budgets: BUDGETS });
      await someUsage(h);
    });
    afterAll(async () => {
      await h?.close();
    });

    it('serves the page and its assets with their content types and a self-only CSP', async () => {
      const page = await h.api('/dashboard');
      expect(page.status).toBe(200);
      expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8');
      const csp = page.headers.get('content-security-policy') ?? '';
      expect(csp).toContain("default-src 'self'");
      expect(csp).toContain("script-src 'self'");
      expect(csp).not.toContain('unsafe');
      expect(page.headers.get('x-content-type-options')).toBe('nosniff');
      expect(await page.text()).toContain('dashboard/assets/uPlot.iife.min.js');

      const types: Record<string, string> = {
        'dashboard.js': 'text/javascript; charset=utf-8',
        'dashboard.css': 'text/css; charset=utf-8',
        'uPlot.iife.min.js': 'text/javascript; charset=utf-8',
        'uPlot.min.css': 'text/css; charset=utf-8',
        'favicon.svg': 'image/svg+xml',
      };
      for (const [name, type] of Object.entries(types)) {
        const res = await h.api(`/dashboard/assets/${name}`);
        expect(res.status, name).toBe(200);
        expect(res.headers.get('content-type'), name).toBe(type);
        expect(res.headers.get('content-security-policy'), name).toContain("default-src 'self'");
        const etag = res.headers.get('etag') ?? '';
        expect((await res.arrayBuffer()).byteLength, name).toBeGreaterThan(100);
        const again = await h.api(`/dashboard/assets/${name}`, { headers: { 'if-none-match': etag } });
        expect(again.status, name).toBe(304);
      }
      expect((await h.api('/dashboard/assets/nope.js')).status).toBe(404);
      expect((await h.api('/dashboard/assets/..%2F..%2Fpackage.json')).status).toBe(404);
      const slash = await h.api('/dashboard/', { redirect: 'manual' });
      expect(slash.status).toBe(301);
    });

    it('shows the budgets, a chart, the breakdowns, alerts and requests, and refreshes itself', async () => {
      const page = await browser.context.newPage();
      const errors = collectErrors(page);
      const response = await page.goto(`${h.gateway.url}/dashboard?refresh=1`);
      expect(response?.status()).toBe(200);
      await waitForData(page);

      expect(await monthLimit(page)).toContain('50,000');
      expect(
        await page.locator('[data-budget="researcher"] [data-window="hour"] .limit').textContent(),
      ).toContain('1,500');
      expect(['ok', 'warning', 'critical', 'emergency']).toContain(
        await page.locator('#status').getAttribute('data-status'),
      );

      // The chart: a canvas of a sensible size with something drawn on it.
      const canvas = page.locator('#chart canvas').first();
      await canvas.waitFor();
      const box = await canvas.boundingBox();
      expect(box?.width).toBeGreaterThan(300);
      expect(box?.height).toBeGreaterThan(100);
      const painted = await canvas.evaluate((el) => {
        const c = el as unknown as {
          width: number;
          height: number;
          getContext(t: '2d'): {
            getImageData(x: number, y: number, w: number, h: number): { data: Uint8Array };
          };
        };
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < data.length; i += 4) if ((data[i] ?? 0) > 0) n++;
        return n;
      });
      expect(painted).toBeGreaterThan(500);

      const agents = await page.locator('#agents tbody').textContent();
      for (const agent of ['coder', 'researcher', 'reviewer']) expect(agents).toContain(agent);
      expect(await page.locator('#models tbody').textContent()).toContain('claude-opus-4-5');
      expect(await page.locator('#requests tbody tr[data-outcome="blocked"]').count()).toBeGreaterThan(0);
      expect(await page.locator('#requests tbody').textContent()).toContain('budget=researcher; window=hour');
      // The opus budget went past 80% of its month: a warning alert (raised just after the settle).
      await page.waitForSelector('#alerts li[data-level="warning"]', { timeout: 10_000 });

      // It refreshes itself: a new agent shows up without a reload.
      await send(h, { agent: 'latecomer', model: 'claude-sonnet-4-5', maxTokens: 100, output: 40 });
      await page.locator('#agents tbody', { hasText: 'latecomer' }).waitFor({ timeout: 10_000 });

      // The other chart ranges draw too.
      await page.click('[data-range="hour"]');
      await page.waitForSelector('#chart[data-range="hour"] canvas');
      await page.click('[data-range="day"]');
      await page.waitForSelector('#chart[data-range="day"] canvas');
      await page.click('[data-range="minute"]');
      await page.waitForSelector('#chart[data-range="minute"] canvas');

      await page.screenshot({ path: resolve(ARTIFACTS, 'dashboard.png'), fullPage: true });
      expect(errors).toEqual([]);
      await page.close();
    });
  });

  describe('with an admin token', () => {
    const ADMIN = 'e2e-admin-token-0123456789';
    let h: Harness;
    beforeAll(async () => {
      h = await startHarness({ budgets: BUDGETS, auth: { adminToken: ADMIN } });
      await send(h, { agent: 'coder', model: 'claude-sonnet-4-5', maxTokens: 800, output: 300 });
    });
    afterAll(async () => {
      await h?.close();
    });

    it('serves the page without the token, then asks for it, keeps it for the tab and shows the data', async () => {
      expect((await h.api('/api/token-usage/summary')).status).toBe(401);
      const page = await browser.context.newPage();
      const errors = collectErrors(page);
      const response = await page.goto(`${h.gateway.url}/dashboard`);
      expect(response?.status()).toBe(200);

      await page.waitForSelector('dialog#login[open]');
      await page.fill('#login-token', 'not-the-token');
      await page.click('#login-form button[type="submit"]');
      await page.locator('#login-message', { hasText: 'not accepted' }).waitFor();
      expect(await page.locator('dialog#login').getAttribute('open')).not.toBeNull();
      await page.screenshot({ path: resolve(ARTIFACTS, 'dashboard-login.png') });

      await page.fill('#login-token', ADMIN);
      await page.click('#login-form button[type="submit"]');
      await waitForData(page);
      expect(await page.locator('dialog#login').getAttribute('open')).toBeNull();
      expect(await monthLimit(page)).toContain('50,000');
      expect(await page.locator('#agents tbody').textContent()).toContain('coder');
      expect(await page.evaluate("sessionStorage.getItem('tokenwarden.adminToken')")).toBe(ADMIN);

      // A reload in the same tab keeps the token: no second prompt.
      await page.reload();
      await waitForData(page);
      expect(await page.locator('dialog#login').getAttribute('open')).toBeNull();

      // Chromium logs each refused API call as a failed resource load; nothing else may go wrong.
      const unexpected = errors.filter((e) => !/status of 401/.test(e));
      expect(unexpected).toEqual([]);
      await page.close();
    });
  });
});
