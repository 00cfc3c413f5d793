import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';

/** Hop-by-hop headers (RFC 9110 §7.6.1) plus those the gateway recomputes. Never forwarded. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'trailers',
  'transfer-encoding',
  'upgrade',
  'host',
  'content-length',
]);

function connectionListed(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>) {
  const conn = headers.connection;
  if (!conn) return null;
  const list = Array.isArray(conn) ? conn.join(',') : conn;
  return new Set(list.split(',').map((s) => s.trim().toLowerCase()));
}

/**
 * Headers to send upstream: the client's own (anthropic-version, anthropic-beta, auth, SDK telemetry,
 * unknown ones) minus hop-by-hop and the gateway's `x-tokenwarden-*` controls. `accept-encoding` is
 * forced to identity so the usage tap can read the stream it passes on byte for byte.
 */
export function upstreamRequestHeaders(
  incoming: IncomingHttpHeaders,
  bodyLength: number,
  overrides?: Record<string, string>,
): Record<string, string | string[]> {
  const listed = connectionListed(incoming);
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(incoming)) {
    if (value === undefined || HOP_BY_HOP.has(name) || name.startsWith('x-tokenwarden-')) continue;
    if (listed?.has(name)) continue;
    out[name] = value;
  }
  out['accept-encoding'] = 'identity';
  out['content-length'] = String(bodyLength);
  if (overrides) Object.assign(out, overrides);
  return out;
}

/** The provider's response headers as the client should get them (request-id, rate limits…). */
export function clientResponseHeaders(
  upstream: Record<string, string | string[] | undefined>,
  extra: Record<string, string>,
): OutgoingHttpHeaders {
  const listed = connectionListed(upstream);
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(upstream)) {
    if (value === undefined || HOP_BY_HOP.has(name) || listed?.has(name)) continue;
    out[name] = value;
  }
  return Object.assign(out, extra);
}

/** First value of a header that may be repeated. */
export function headerValue(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}
