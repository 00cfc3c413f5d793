import type { Dispatcher } from 'undici';
import { Pool } from 'undici';

export interface UpstreamOptions {
  /** Base URL, e.g. https://api.anthropic.com (a path prefix is kept). */
  baseUrl: string;
  /** Max wait for response headers, and max idle time between body chunks (ms). */
  timeoutMs: number;
}

export interface UpstreamRequest {
  method: Dispatcher.HttpMethod;
  /** Path and query, starting with `/`. */
  path: string;
  headers: Record<string, string | string[]>;
  body?: Buffer;
  signal?: AbortSignal;
}

/** Why an upstream call failed before a response arrived. */
export type UpstreamFailure = 'timeout' | 'unreachable' | 'aborted';

/** Classify an undici error: the proxy answers 504 for timeouts, 502 otherwise. */
export function classifyUpstreamError(err: unknown): UpstreamFailure {
  const code = (err as { code?: string }).code ?? '';
  const name = (err as { name?: string }).name ?? '';
  if (name === 'AbortError' || code === 'UND_ERR_ABORTED') return 'aborted';
  if (
    code === 'UND_ERR_HEADERS_TIMEOUT' ||
    code === 'UND_ERR_CONNECT_TIMEOUT' ||
    code === 'UND_ERR_BODY_TIMEOUT'
  ) {
    return 'timeout';
  }
  return 'unreachable';
}

/** The provider, behind one keep-alive connection pool. Bodies stream; nothing is buffered here. */
export class UpstreamClient {
  private readonly pool: Pool;
  private readonly prefix: string;

  constructor(opts: UpstreamOptions) {
    const url = new URL(opts.baseUrl);
    this.prefix = url.pathname.replace(/\/$/, '');
    this.pool = new Pool(url.origin, {
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.timeoutMs,
      connectTimeout: Math.min(opts.timeoutMs, 10_000),
      keepAliveTimeout: 30_000,
    });
  }

  request(req: UpstreamRequest): Promise<Dispatcher.ResponseData> {
    return this.pool.request({
      method: req.method,
      path: this.prefix + req.path,
      headers: req.headers,
      body: req.body ?? null,
      signal: req.signal ?? null,
    });
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
