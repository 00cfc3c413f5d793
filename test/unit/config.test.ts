import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';

const dir = mkdtempSync(join(tmpdir(), 'tw-config-'));
function file(name: string, content: unknown): string {
  const p = join(dir, name);
  writeFileSync(p, typeof content === 'string' ? content : JSON.stringify(content));
  return p;
}

/** The example of SPEC §4, verbatim. */
const SPEC_EXAMPLE = `{
  "port": 4000,
  "host": "127.0.0.1",
  "database": "./tokenwarden.db",
  "redis": "redis://127.0.0.1:6379",
  "upstream": "https://api.anthropic.com",
  "auth": { "mode": "passthrough", "adminToken": "change-me" },
  "budgets": [
    { "name": "global", "month": 140000, "day": 4667, "hour": 194, "request": 1000 },
    { "name": "researcher", "agent": "researcher", "month": 50000 },
    { "name": "opus", "model": "claude-opus-*", "day": 2000, "usd": { "month": 25 } }
  ],
  "thresholds": { "warning": 80, "critical": 95, "emergency": 98 },
  "timezone": "UTC",
  "cycleDay": 1,
  "estimation": "strict",
  "overLimit": "reject",
  "mode": "enforce",
  "alerts": { "webhooks": ["https://hooks.example.com/T000/B000"] },
  "upstreamTimeoutMs": 600000,
  "maxBodyBytes": 33554432,
  "headersTimeoutMs": 10000,
  "requestTimeoutMs": 60000
}`;

describe('configuration', () => {
  it('defaults are exactly those of SPEC §2', () => {
    const r = loadConfig({ env: {}, cwd: dir });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.budgets).toEqual([
      { name: 'global', month: 140_000, day: 4_667, hour: 194, request: 1_000, rolling: false },
    ]);
    expect(r.config.thresholds).toEqual({ warning: 80, critical: 95, emergency: 98 });
    expect(r.config).toMatchObject({
      port: 4000,
      host: '127.0.0.1',
      database: './tokenwarden.db',
      upstream: 'https://api.anthropic.com',
      auth: { mode: 'passthrough' },
      timezone: 'UTC',
      cycleDay: 1,
      estimation: 'strict',
      overLimit: 'reject',
      mode: 'enforce',
      minClampTokens: 64,
    });
  });

  it('loads the SPEC §4 example as is', () => {
    const r = loadConfig({ configPath: file('spec.json', SPEC_EXAMPLE), env: {}, cwd: dir });
    expect(r.ok ? null : r.errors).toBeNull();
    if (!r.ok) return;
    expect(r.config.budgets.map((b) => b.name)).toEqual(['global', 'researcher', 'opus']);
    expect(r.config.budgets[2]).toMatchObject({ model: 'claude-opus-*', day: 2000, usd: { month: 25 } });
    expect(r.config.auth.adminToken).toBe('change-me');
  });

  it('picks up ./tokenwarden.config.json from the working directory', () => {
    const cwd = mkdtempSync(join(tmpdir(), 'tw-cwd-'));
    writeFileSync(join(cwd, 'tokenwarden.config.json'), JSON.stringify({ port: 4321 }));
    const r = loadConfig({ env: {}, cwd });
    expect(r.ok && r.config.port).toBe(4321);
  });

  it('later sources win: file → env → flags', () => {
    const cfg = file('layers.json', {
      port: 1111,
      host: '127.0.0.2',
      auth: { adminToken: 'from-file-token' },
    });
    const r = loadConfig({
      configPath: cfg,
      env: { TOKENWARDEN_PORT: '2222', TOKENWARDEN_HOST: '127.0.0.3', TOKENWARDEN_AUTH_MODE: 'passthrough' },
      flags: { port: '3333' },
      cwd: dir,
    });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.port).toBe(3333);
    expect(r.config.host).toBe('127.0.0.3');
    // Nested objects merge: the env's auth.mode keeps the file's token.
    expect(r.config.auth).toEqual({ mode: 'passthrough', adminToken: 'from-file-token' });
  });

  it('reports every bad field at once, each with where it came from', () => {
    const cfg = file('bad.json', {
      budgets: [{ name: 'global', mnth: 5000 }, { name: 'x', hour: -3 }, { name: 'global' }],
      thresholds: { warning: 99, critical: 95, emergency: 98 },
      timezone: 'Mars/Olympus',
      cycleDay: 32,
    });
    const r = loadConfig({ configPath: cfg, env: { TOKENWARDEN_PORT: 'eighty' }, cwd: dir });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    const text = r.errors.join('\n');
    expect(text).toMatch(/port: .*\(from env TOKENWARDEN_PORT\)/);
    expect(text).toMatch(/budgets\.0\.mnth: unknown setting \(from file .*bad\.json\)/);
    expect(text).toMatch(/budgets\.1\.hour: .*>=0/);
    expect(text).toMatch(/budgets\.2\.name: duplicate budget name "global"/);
    expect(text).toMatch(/thresholds: .*warning <= critical <= emergency/);
    expect(text).toMatch(/timezone: not an IANA time zone/);
    expect(text).toMatch(/cycleDay: .*\(from file/);
    expect(r.errors.length).toBeGreaterThanOrEqual(7);
  });

  it('names a missing or unparsable config file', () => {
    const missing = loadConfig({ configPath: join(dir, 'nope.json'), env: {}, cwd: dir });
    expect(missing.ok).toBe(false);
    expect(!missing.ok && missing.errors[0]).toMatch(/nope\.json/);
    const broken = loadConfig({ configPath: file('broken.json', '{ "port": '), env: {}, cwd: dir });
    expect(!broken.ok && broken.errors[0]).toMatch(/broken\.json: .*JSON/);
  });

  it('reads budgets from TOKENWARDEN_BUDGETS as JSON', () => {
    const r = loadConfig({ env: { TOKENWARDEN_BUDGETS: '[{"name":"g","month":10}]' }, cwd: dir });
    expect(r.ok && r.config.budgets).toEqual([{ name: 'g', month: 10, rolling: false }]);
  });
});
