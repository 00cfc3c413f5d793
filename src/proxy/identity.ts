import { createHash } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { AGENT_RE } from '../keys/keys.js';
import { headerValue } from './headers.js';

const TAG_PREFIX = 'x-tokenwarden-tag-';
const MAX_TAGS = 32;

/** The client's provider credential, from `x-api-key` or `Authorization: Bearer` (SDK 1.x). */
export function clientKey(headers: IncomingHttpHeaders): string | null {
  const apiKey = headerValue(headers['x-api-key']);
  if (apiKey) return apiKey;
  const auth = headers.authorization;
  if (auth && /^bearer\s+/i.test(auth)) return auth.replace(/^bearer\s+/i, '').trim() || null;
  return null;
}

const keyIds = new Map<string, string>();

/** A stable, non-reversible id for a key (first 12 hex of its SHA-256). Never the key itself. */
export function keyId(key: string): string {
  let id = keyIds.get(key);
  if (id === undefined) {
    id = `k_${createHash('sha256').update(key).digest('hex').slice(0, 12)}`;
    // Bounded memo: a gateway sees few distinct keys, but never let a stream of bogus keys grow it.
    if (keyIds.size >= 1024) keyIds.clear();
    keyIds.set(key, id);
  }
  return id;
}

export type AgentResult = { ok: true; agent: string } | { ok: false; message: string };

/**
 * Who is calling (SPEC §3 Agent): `x-tokenwarden-agent`, else `metadata.user_id`, else a short hash
 * of the key, else `anonymous`.
 */
export function resolveAgent(headers: IncomingHttpHeaders, userId: unknown, kid: string | null): AgentResult {
  const header = headerValue(headers['x-tokenwarden-agent']);
  if (header !== undefined) {
    const agent = header.trim();
    if (!AGENT_RE.test(agent)) {
      return {
        ok: false,
        message: 'x-tokenwarden-agent: expected 1-128 characters of letters, digits and _ . : @ / + -',
      };
    }
    return { ok: true, agent };
  }
  if (typeof userId === 'string' && userId.length > 0) return { ok: true, agent: userId.slice(0, 128) };
  if (kid) return { ok: true, agent: `key-${kid.slice(2, 10)}` };
  return { ok: true, agent: 'anonymous' };
}

/** Tags from `x-tokenwarden-tag-<name>: <value>` headers (at most 32, values cut to 256 chars). */
export function requestTags(headers: IncomingHttpHeaders): Record<string, string> | null {
  let tags: Record<string, string> | null = null;
  let n = 0;
  for (const name in headers) {
    if (!name.startsWith(TAG_PREFIX)) continue;
    const value = headerValue(headers[name]);
    if (value === undefined) continue;
    tags ??= {};
    tags[name.slice(TAG_PREFIX.length)] = value.slice(0, 256);
    if (++n >= MAX_TAGS) break;
  }
  return tags;
}
