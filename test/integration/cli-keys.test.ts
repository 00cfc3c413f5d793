import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashKey, KeyService } from '../../src/keys/keys.js';
import { openSqliteStore } from '../../src/store/sqlite/sqlite-store.js';

// These tests run the real executable (bin/tokenwarden.js → dist/, built by `npm run build`).
const BIN = resolve(import.meta.dirname, '../../bin/tokenwarden.js');

let dir: string;
let db: string;

/** The environment without any tokenwarden setting of the machine running the tests. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('TOKENWARDEN_') && k !== 'ANTHROPIC_API_KEY') env[k] = v;
  }
  return env;
}

function tw(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, 'keys', ...args], {
    cwd: dir,
    env: cleanEnv(),
    encoding: 'utf8',
    timeout: 20_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface CreatedJson {
  key: string;
  id: string;
  prefix: string;
  agent: string;
  limits: Record<string, number> | null;
}

interface ListedJson {
  id: string;
  prefix: string;
  agent: string;
  limits: Record<string, number> | null;
  createdAt: string;
  revokedAt: string | null;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'tokenwarden-cli-keys-'));
  db = join(dir, 'data', 'tw.db');
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('tokenwarden keys', () => {
  let human: { key: string; id: string };
  let json: CreatedJson;

  it('create prints the key once, with a warning, its id and agent', () => {
    const r = tw('create', '--agent', 'researcher', '--month', '5000', '--db', db);
    expect(r.stderr).not.toMatch(/error/i);
    expect(r.code).toBe(0);
    const key = /\b(tw_[A-Za-z0-9]{40})\b/.exec(r.stdout)?.[1];
    const id = /\b(key_[A-Za-z0-9]{12})\b/.exec(r.stdout)?.[1];
    expect(key).toBeDefined();
    expect(id).toBeDefined();
    expect(r.stdout.split(key ?? '').length - 1).toBe(1);
    expect(r.stdout).toMatch(/cannot be shown again/);
    expect(r.stdout).toMatch(/agent:\s+researcher/);
    expect(r.stdout).toMatch(/month=5000/);
    human = { key: key ?? '', id: id ?? '' };
  });

  it('create --json prints { key, id, prefix, agent, limits } and nothing else', () => {
    const r = tw('create', '--agent', 'team/bot@1', '--day', '200', '--request', '0', '--json', '--db', db);
    expect(r.code).toBe(0);
    json = JSON.parse(r.stdout) as CreatedJson;
    expect(Object.keys(json).sort()).toEqual(['agent', 'id', 'key', 'limits', 'prefix']);
    expect(json.key).toMatch(/^tw_[A-Za-z0-9]{40}$/);
    expect(json.id).toMatch(/^key_[A-Za-z0-9]{12}$/);
    expect(json.prefix).toBe(`${json.key.slice(0, 9)}…`);
    expect(json.agent).toBe('team/bot@1');
    expect(json.limits).toEqual({ day: 200, request: 0 });
  });

  it('the database holds the hash, and a gateway on the same file accepts the keys', async () => {
    const store = openSqliteStore({ path: db });
    try {
      const service = new KeyService({ store, now: Date.now });
      expect(await service.verify(human.key)).toMatchObject({ id: human.id, agent: 'researcher' });
      expect(await service.verify(json.key)).toMatchObject({ id: json.id, hash: hashKey(json.key) });
      const raw = JSON.stringify(store.db.prepare('SELECT * FROM virtual_keys').all());
      expect(raw).not.toContain(human.key.slice(3));
      expect(raw).not.toContain(json.key.slice(3));
    } finally {
      await store.close();
    }
  });

  it('list shows ids, prefixes and agents, never a key or hash', () => {
    const r = tw('list', '--db', db);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^ID\s+PREFIX\s+AGENT\s+LIMITS\s+CREATED\s+REVOKED$/);
    expect(lines).toHaveLength(3);
    const row = lines.find((l) => l.startsWith(human.id)) ?? '';
    expect(row).toContain(`${human.key.slice(0, 9)}…`);
    expect(row).toMatch(/researcher\s+month=5000\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+-$/);
    expect(r.stdout).toContain(json.prefix);
    for (const key of [human.key, json.key]) {
      expect(r.stdout).not.toContain(key);
      expect(r.stdout).not.toContain(key.slice(9));
      expect(r.stdout).not.toContain(hashKey(key));
    }
  });

  it('list --json parses and has no key or hash', () => {
    const r = tw('list', '--json', '--db', db);
    expect(r.code).toBe(0);
    const list = JSON.parse(r.stdout) as ListedJson[];
    expect(list.map((k) => k.id)).toEqual([human.id, json.id]);
    for (const k of list) {
      expect(Object.keys(k).sort()).toEqual(['agent', 'createdAt', 'id', 'limits', 'prefix', 'revokedAt']);
      expect(Number.isNaN(Date.parse(k.createdAt))).toBe(false);
      expect(k.revokedAt).toBeNull();
    }
    expect(r.stdout).not.toContain(hashKey(json.key));
  });

  it('revoke marks the key revoked; list shows it; the gateway refuses it', async () => {
    const r = tw('revoke', human.id, '--db', db);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(human.id);

    const text = tw('list', '--db', db).stdout;
    const row = text.split('\n').find((l) => l.startsWith(human.id)) ?? '';
    expect(row).toMatch(/\d\dZ\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    const other = text.split('\n').find((l) => l.startsWith(json.id)) ?? '';
    expect(other).toMatch(/\s-$/);

    const list = JSON.parse(tw('list', '--json', '--db', db).stdout) as ListedJson[];
    expect(list.find((k) => k.id === human.id)?.revokedAt).toMatch(/^\d{4}-/);
    expect(list.find((k) => k.id === json.id)?.revokedAt).toBeNull();

    const store = openSqliteStore({ path: db });
    try {
      const service = new KeyService({ store, now: Date.now });
      expect(await service.verify(human.key)).toBeNull();
      expect(await service.verify(json.key)).not.toBeNull();
    } finally {
      await store.close();
    }
  });

  it('revoke of an unknown or already revoked key exits 1 with a message', () => {
    for (const id of [human.id, 'key_doesnotexist']) {
      const r = tw('revoke', id, '--db', db);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/no active key/);
      expect(r.stdout).toBe('');
    }
  });

  it('bad usage exits 2 without creating a key or a database', () => {
    const fresh = join(dir, 'fresh.db');
    const bad: [string[], RegExp][] = [
      [['--agent', 'x', '--month', '-3'], /month/],
      [['--agent', 'x', '--hour', '1.5'], /hour/],
      [['--agent', 'x', '--day', 'lots'], /day/],
      [['--agent', 'not ok'], /agent/],
      [[], /--agent/],
    ];
    for (const [args, message] of bad) {
      const r = tw('create', ...args, '--db', fresh);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stdout).not.toMatch(/tw_/);
    }
    expect(existsSync(fresh)).toBe(false);
    expect(tw('bogus').code).toBe(2);
    expect((JSON.parse(tw('list', '--json', '--db', db).stdout) as unknown[]).length).toBe(2);
  });

  it('a bad configuration exits 2 and names the setting', () => {
    const cfg = join(dir, 'bad.json');
    writeFileSync(cfg, JSON.stringify({ database: db, budgets: [{ name: 'g', mnth: 5 }] }));
    const r = tw('list', '--config', cfg);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/invalid configuration/);
    expect(r.stderr).toMatch(/budgets\.0\.mnth/);
  });

  it('reads the database from the config file like serve does', () => {
    const cfg = join(dir, 'good.json');
    writeFileSync(cfg, JSON.stringify({ database: db }));
    const r = tw('list', '--json', '--config', cfg);
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as ListedJson[]).map((k) => k.id)).toEqual([human.id, json.id]);
  });
});
