import { GatewayError } from '../errors/gateway-error.js';

type Query = Record<string, string | string[] | undefined>;

function one(q: Query, name: string): string | undefined {
  const v = q[name];
  return Array.isArray(v) ? v[0] : v;
}

/** A time given as ms since the epoch or an ISO 8601 string; 400 when it is neither. */
export function timeParam(q: Query, name: string): number | undefined {
  const v = one(q, name);
  if (v === undefined || v === '') return undefined;
  const n = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  if (!Number.isFinite(n))
    throw new GatewayError('invalid_request', `${name}: expected ISO 8601 or epoch ms, got "${v}"`);
  return n;
}

export function intParam(q: Query, name: string, dflt: number, min: number, max: number): number {
  const v = one(q, name);
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new GatewayError(
      'invalid_request',
      `${name}: expected an integer from ${min} to ${max}, got "${v}"`,
    );
  }
  return n;
}

export function stringParam(q: Query, name: string): string | undefined {
  const v = one(q, name);
  return v === undefined || v === '' ? undefined : v;
}

export function enumParam<T extends string>(q: Query, name: string, allowed: readonly T[]): T | undefined {
  const v = one(q, name);
  if (v === undefined || v === '') return undefined;
  if (!allowed.includes(v as T)) {
    throw new GatewayError('invalid_request', `${name}: expected one of ${allowed.join(', ')}, got "${v}"`);
  }
  return v as T;
}

/** A JSON body (the operator routes receive raw bytes like every route); {} when empty. */
export function jsonBody(body: unknown): Record<string, unknown> {
  if (!Buffer.isBuffer(body) || body.length === 0) return {};
  try {
    const v: unknown = JSON.parse(body.toString('utf8'));
    if (typeof v === 'object' && v !== null) return v as Record<string, unknown>;
  } catch {
    // fall through
  }
  throw new GatewayError('invalid_request', 'request body must be a JSON object');
}
