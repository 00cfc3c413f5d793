import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { errorBody } from '../errors/gateway-error.js';

/** Loopback addresses, including IPv4-mapped IPv6. */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  if (address === '::1' || address === 'localhost') return true;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return v4.startsWith('127.');
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/**
 * Guard for operator endpoints (SPEC §4): with an admin token, require `Authorization: Bearer <token>`
 * compared in constant time; without one, serve loopback clients only.
 */
export function adminGuard(adminToken: string | undefined) {
  const expected = adminToken ? digest(adminToken) : null;
  return async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (expected) {
      const auth = req.headers.authorization ?? '';
      const given = /^bearer\s+/i.test(auth) ? auth.replace(/^bearer\s+/i, '') : '';
      // Hash both sides so the comparison is constant-time whatever the lengths.
      if (!given || !timingSafeEqual(digest(given), expected)) {
        reply
          .code(401)
          .header('content-type', 'application/json')
          .header('www-authenticate', 'Bearer')
          .send(
            errorBody('authentication_error', 'operator endpoints need Authorization: Bearer <admin token>'),
          );
      }
      return;
    }
    if (!isLoopback(req.socket.remoteAddress)) {
      reply
        .code(403)
        .header('content-type', 'application/json')
        .send(
          errorBody(
            'permission_error',
            'operator endpoints answer loopback clients only unless an admin token is configured',
          ),
        );
    }
  };
}
