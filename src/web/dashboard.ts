import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { GatewayError } from '../errors/gateway-error.js';
import { type Asset, type AssetMap, loadAssets } from './assets.js';

/**
 * Only our own origin: no inline script or style (the page builds its DOM with textContent and
 * sets styles through the CSSOM, which CSP allows), no plugins, no framing, no form posts.
 */
export const DASHBOARD_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
  "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const SECURITY_HEADERS = {
  'content-security-policy': DASHBOARD_CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  // Revalidate every time (cheap: a 304 on the ETag) so an upgrade never serves a stale script.
  'cache-control': 'no-cache',
} as const;

function send(req: FastifyRequest, reply: FastifyReply, file: Asset) {
  reply.headers(SECURITY_HEADERS).header('etag', file.etag);
  if (req.headers['if-none-match'] === file.etag) return reply.code(304).send();
  return reply.type(file.contentType).send(file.body);
}

/**
 * GET /dashboard and /dashboard/assets/:name — the web dashboard. The page is public: it holds no
 * data, and its API calls carry the admin token (asked for when the API answers 401).
 * Never throws: missing files (a broken installation) are logged once and answered with a 500.
 */
export function registerDashboard(
  app: FastifyInstance,
  opts: { logger: Logger; assets?: () => AssetMap },
): void {
  let assets: AssetMap | null = null;
  let problem: string | null = null;
  try {
    assets = (opts.assets ?? loadAssets)();
  } catch (err) {
    problem = (err as Error).message;
    opts.logger.error({ err }, 'the web dashboard is unavailable: its files are missing');
  }

  const serve = (name: string) => (req: FastifyRequest, reply: FastifyReply) => {
    if (!assets) {
      return reply
        .code(500)
        .type('text/plain; charset=utf-8')
        .send(`tokenwarden: the dashboard is unavailable (${problem}); reinstall the package\n`);
    }
    const file = assets.get(name);
    if (!file) throw new GatewayError('not_found', `GET /dashboard/assets/${name} not found`);
    return send(req, reply, file);
  };

  app.get('/dashboard', serve(''));
  // The page links its assets relative to itself, so keep it at one address.
  app.get('/dashboard/', (_req, reply) => reply.redirect('../dashboard', 301));
  app.get<{ Params: { name: string } }>('/dashboard/assets/:name', (req, reply) =>
    serve(req.params.name)(req, reply),
  );
}
