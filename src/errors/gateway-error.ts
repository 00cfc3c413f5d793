/**
 * The closed set of errors the gateway answers with, and the one mapping to Anthropic-format HTTP
 * responses (`{"type":"error","error":{"type","message"}}`). Only the HTTP edge calls `toHttp`.
 */

export type ErrorCode =
  | 'invalid_request'
  | 'authentication'
  | 'not_found'
  | 'request_timeout'
  | 'request_too_large'
  | 'budget_exhausted'
  | 'upstream_unreachable'
  | 'upstream_timeout'
  | 'store_unavailable'
  | 'internal';

export class GatewayError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** Extra response headers (retry-after, x-tokenwarden-blocked-by…). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'GatewayError';
  }
}

export interface HttpError {
  status: number;
  type: string;
  body: string;
  headers: Record<string, string>;
}

function statusAndType(code: ErrorCode): [number, string] {
  switch (code) {
    case 'invalid_request':
      return [400, 'invalid_request_error'];
    case 'authentication':
      return [401, 'authentication_error'];
    case 'not_found':
      return [404, 'not_found_error'];
    case 'request_timeout':
      return [408, 'timeout_error'];
    case 'request_too_large':
      return [413, 'request_too_large'];
    case 'budget_exhausted':
      return [429, 'rate_limit_error'];
    case 'upstream_unreachable':
      return [502, 'api_error'];
    case 'store_unavailable':
      return [503, 'overloaded_error'];
    case 'upstream_timeout':
      return [504, 'api_error'];
    case 'internal':
      return [500, 'api_error'];
  }
}

/** Anthropic-format error body for a type and message. */
export function errorBody(type: string, message: string): string {
  return JSON.stringify({ type: 'error', error: { type, message } });
}

/** Map a gateway error to its HTTP status, headers and Anthropic-format body. Total; never throws. */
export function toHttp(err: GatewayError): HttpError {
  const [status, type] = statusAndType(err.code);
  return {
    status,
    type,
    body: errorBody(type, err.message),
    headers: { 'content-type': 'application/json', ...err.headers },
  };
}

/** An SSE `error` frame, for errors after a 200 stream has started. */
export function sseErrorFrame(type: string, message: string): string {
  return `event: error\ndata: ${errorBody(type, message)}\n\n`;
}
