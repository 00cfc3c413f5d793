import { type Logger, pino } from 'pino';

/** Paths that may hold secrets; pino replaces them before anything is written. */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  'headers.authorization',
  'headers["x-api-key"]',
  'config.upstreamApiKey',
  'config.auth.adminToken',
  'upstreamApiKey',
  'adminToken',
];

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino(
    { level, redact: { paths: REDACT_PATHS, censor: '[redacted]' }, base: { service: 'tokenwarden' } },
    destination ?? pino.destination(2),
  );
}
