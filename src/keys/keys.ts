/**
 * Virtual keys (SPEC §3 Agent, `keys` auth mode): each agent authenticates with its own `tw_…` key,
 * which carries its name and optional limits. Only the key's SHA-256 is stored; the key itself is
 * shown once, when it is created, and never again.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { BudgetDef } from '../budget/types.js';
import type { VirtualKeyRecord } from '../store/ports.js';

const BASE62 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
/** Bytes >= this are rejected so that `byte % 62` is uniform (248 = 4 × 62). */
const UNBIASED_LIMIT = 248;

/** Random characters after `tw_`: 40 × log2(62) ≈ 238 bits of entropy. */
export const KEY_RANDOM_CHARS = 40;
const ID_RANDOM_CHARS = 12;
const PREFIX_CHARS = 6;
const KEY_RE = /^tw_[A-Za-z0-9]{40}$/;
/** The display prefix typed back by an operator (`tw_ab12cd…`, or without the ellipsis). */
const DISPLAY_PREFIX_RE = /^tw_[A-Za-z0-9]{6}(?:…|\.\.\.)?$/;

/** The same alphabet as the `x-tokenwarden-agent` header, so a key's agent is a valid agent name. */
export const AGENT_RE = /^[A-Za-z0-9_.:@/+-]{1,128}$/;
export const LIMIT_NAMES = ['month', 'day', 'hour', 'request'] as const;
export type LimitName = (typeof LIMIT_NAMES)[number];
export type KeyLimits = Partial<Record<LimitName, number>>;

/** Uniformly random base62 string of `length` characters from the OS CSPRNG (rejection sampling). */
function randomBase62(length: number): string {
  let out = '';
  while (out.length < length) {
    for (const byte of randomBytes(length + 8)) {
      if (byte >= UNBIASED_LIMIT) continue;
      out += BASE62[byte % 62];
      if (out.length === length) break;
    }
  }
  return out;
}

export interface GeneratedKey {
  /** The secret: `tw_` + 40 base62 characters. Show it once; never store or log it. */
  key: string;
  /** SHA-256 hex of `key`: what the store keeps and looks keys up by. */
  hash: string;
  /** `tw_` + the first 6 random characters + `…`: enough to recognise a key in a list. */
  prefix: string;
  /** Public id, `key_` + 12 base62 characters; safe to show and log. */
  id: string;
}

/** A fresh virtual key with its hash, display prefix and public id. */
export function generateKey(): GeneratedKey {
  const random = randomBase62(KEY_RANDOM_CHARS);
  const key = `tw_${random}`;
  return {
    key,
    hash: hashKey(key),
    prefix: `tw_${random.slice(0, PREFIX_CHARS)}…`,
    id: `key_${randomBase62(ID_RANDOM_CHARS)}`,
  };
}

/** SHA-256 hex of a key. A plain hash is enough: keys carry ~238 random bits, nothing to brute-force. */
export function hashKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** True when `s` has the exact shape of a virtual key (`tw_` + 40 base62). Says nothing about validity. */
export function looksLikeVirtualKey(s: string): boolean {
  return KEY_RE.test(s);
}

/** What KeyService needs from a store (a subset of ControlStore). */
export interface KeyStore {
  createKey(k: VirtualKeyRecord): Promise<void>;
  findKeyByHash(hash: string): Promise<VirtualKeyRecord | null>;
  listKeys(): Promise<VirtualKeyRecord[]>;
  revokeKey(id: string, at: number): Promise<boolean>;
}

/** A key as listed: everything but the hash. */
export type KeyInfo = Omit<VirtualKeyRecord, 'hash'>;

/** Bad input to `KeyService.create` (an operator mistake, not a failure). */
export class KeyInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeyInputError';
  }
}

export interface KeyServiceOptions {
  store: KeyStore;
  /** Clock, ms since epoch. */
  now: () => number;
  /**
   * How long a successful `verify` may be answered from memory, ms (default 1000). This bounds how
   * long a key revoked by another process (the CLI) keeps working. 0 disables the cache.
   */
  cacheMs?: number;
  /** Most keys kept in the cache (default 10,000); the oldest entry is dropped beyond that. */
  cacheMaxEntries?: number;
}

interface CacheEntry {
  record: VirtualKeyRecord;
  expiresAt: number;
}

function validateAgent(agent: unknown): string {
  if (typeof agent !== 'string' || !AGENT_RE.test(agent)) {
    throw new KeyInputError(
      `agent: expected 1-128 characters of letters, digits and _ . : @ / + - (got ${JSON.stringify(agent)})`,
    );
  }
  return agent;
}

function validateLimits(limits: unknown): KeyLimits | null {
  if (limits === undefined || limits === null) return null;
  if (typeof limits !== 'object' || Array.isArray(limits)) {
    throw new KeyInputError('limits: expected an object like { month, day, hour, request }');
  }
  const out: KeyLimits = {};
  for (const [name, value] of Object.entries(limits)) {
    if (!(LIMIT_NAMES as readonly string[]).includes(name)) {
      throw new KeyInputError(`limits.${name}: unknown limit (expected ${LIMIT_NAMES.join(', ')})`);
    }
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
      throw new KeyInputError(
        `limits.${name}: expected a non-negative whole number of tokens (got ${String(value)})`,
      );
    }
    out[name as LimitName] = value;
  }
  return Object.keys(out).length > 0 ? out : null;
}

export interface KeyInput {
  agent: string;
  limits?: KeyLimits | null;
}

/**
 * Check and normalise the input of `KeyService.create` without touching a store (so a command line
 * can refuse bad usage before opening a database). Throws KeyInputError naming the bad field.
 */
export function validateKeyInput(input: KeyInput): { agent: string; limits: KeyLimits | null } {
  return { agent: validateAgent(input.agent), limits: validateLimits(input.limits) };
}

function info(r: VirtualKeyRecord): KeyInfo {
  return {
    id: r.id,
    prefix: r.prefix,
    agent: r.agent,
    limits: r.limits,
    createdAt: r.createdAt,
    revokedAt: r.revokedAt,
  };
}

function frozen(r: VirtualKeyRecord): VirtualKeyRecord {
  return Object.freeze({ ...r, limits: r.limits ? Object.freeze({ ...r.limits }) : null });
}

/**
 * Creates, lists, revokes and verifies virtual keys. The gateway calls `verify` on every request in
 * `keys` mode; the CLI uses the rest. Both go through the same store, so a key created or revoked by
 * the CLI is seen by a running gateway (a revocation within `cacheMs`).
 */
export class KeyService {
  private readonly store: KeyStore;
  private readonly now: () => number;
  private readonly cacheMs: number;
  private readonly cacheMax: number;
  /** Positive lookups by key hash (never by the key itself), oldest first. */
  private readonly cache = new Map<string, CacheEntry>();
  /** Store lookups in progress by key hash, so a burst of requests with one key costs one query. */
  private readonly pending = new Map<string, Promise<VirtualKeyRecord | null>>();

  constructor(opts: KeyServiceOptions) {
    this.store = opts.store;
    this.now = opts.now;
    this.cacheMs = Math.max(0, opts.cacheMs ?? 1000);
    this.cacheMax = Math.max(1, opts.cacheMaxEntries ?? 10_000);
  }

  /**
   * Create a key for `agent` with optional per-key limits (non-negative integers of tokens; absent or
   * empty limits are stored as null). Returns the key in clear text — the only time it exists
   * outside the caller — and the stored record. Throws KeyInputError on bad input.
   */
  async create(input: KeyInput): Promise<{ key: string; record: VirtualKeyRecord }> {
    const { agent, limits } = validateKeyInput(input);
    const g = generateKey();
    const record: VirtualKeyRecord = {
      id: g.id,
      hash: g.hash,
      prefix: g.prefix,
      agent,
      limits,
      createdAt: this.now(),
      revokedAt: null,
    };
    await this.store.createKey(record);
    return { key: g.key, record };
  }

  /** Every key, revoked ones included, oldest first. Never includes a key or its hash. */
  async list(): Promise<KeyInfo[]> {
    const records = await this.store.listKeys();
    return records
      .map(info)
      .sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /**
   * Revoke a key given by its id (`key_…`), its display prefix (`tw_ab12cd…`, when it names exactly
   * one active key) or the full key. False when no such active key exists (unknown or already
   * revoked). Throws KeyInputError when a prefix matches several active keys.
   */
  async revoke(idOrPrefix: string): Promise<boolean> {
    const ref = idOrPrefix.trim();
    let id: string | null = ref;
    if (looksLikeVirtualKey(ref)) {
      const found = await this.store.findKeyByHash(hashKey(ref));
      id = found && found.revokedAt === null ? found.id : null;
    } else if (DISPLAY_PREFIX_RE.test(ref)) {
      const prefix = `${ref.slice(0, 3 + PREFIX_CHARS)}…`;
      const matches = (await this.store.listKeys()).filter(
        (k) => k.prefix === prefix && k.revokedAt === null,
      );
      if (matches.length > 1) {
        throw new KeyInputError(`${ref} matches ${matches.length} active keys; revoke by id instead`);
      }
      id = matches[0]?.id ?? null;
    }
    if (id === null || id === '') return false;
    const revoked = await this.store.revokeKey(id, this.now());
    if (revoked) {
      for (const [hash, entry] of this.cache) if (entry.record.id === id) this.cache.delete(hash);
    }
    return revoked;
  }

  /**
   * The record of an active key, or null for anything else (malformed, unknown, revoked). A positive
   * answer may come from memory for up to `cacheMs`; negative answers are never cached, so a new key
   * works at once. Rejects only when the store fails.
   */
  async verify(key: string): Promise<VirtualKeyRecord | null> {
    if (!looksLikeVirtualKey(key)) return null;
    const hash = hashKey(key);
    const hit = this.cache.get(hash);
    if (hit !== undefined) {
      if (hit.expiresAt > this.now()) return hit.record;
      this.cache.delete(hash);
    }
    let lookup = this.pending.get(hash);
    if (lookup === undefined) {
      lookup = this.lookup(hash).finally(() => this.pending.delete(hash));
      this.pending.set(hash, lookup);
    }
    return lookup;
  }

  private async lookup(hash: string): Promise<VirtualKeyRecord | null> {
    const found = await this.store.findKeyByHash(hash);
    if (found === null || found.revokedAt !== null || found.hash !== hash) return null;
    const record = frozen(found);
    if (this.cacheMs > 0) {
      if (this.cache.size >= this.cacheMax) this.evict();
      this.cache.set(hash, { record, expiresAt: this.now() + this.cacheMs });
    }
    return record;
  }

  /**
   * Make room. Entries are inserted with the same lifetime, so the Map (insertion-ordered) is also
   * ordered by expiry: drop expired entries from the front, else the oldest one.
   */
  private evict(): void {
    const now = this.now();
    for (const [hash, entry] of this.cache) {
      if (entry.expiresAt > now && this.cache.size < this.cacheMax) break;
      this.cache.delete(hash);
      if (entry.expiresAt > now) break;
    }
  }

  /** Number of cached keys (for tests and metrics). */
  get cacheSize(): number {
    return this.cache.size;
  }
}

/** A virtual key's own limits, as a budget over its agent. */
export function keyBudgets(key: VirtualKeyRecord): BudgetDef[] {
  if (!key.limits || Object.keys(key.limits).length === 0) return [];
  const { month, day, hour, request } = key.limits;
  return [
    {
      name: `key:${key.id}`,
      scope: { agent: key.agent },
      limits: {
        ...(month !== undefined ? { month } : {}),
        ...(day !== undefined ? { day } : {}),
        ...(hour !== undefined ? { hour } : {}),
      },
      ...(request !== undefined ? { request } : {}),
      rolling: false,
    },
  ];
}
