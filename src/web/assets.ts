import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** One file the dashboard serves, read into memory once. */
export interface Asset {
  body: Buffer;
  contentType: string;
  /** Strong validator (content hash) for If-None-Match. */
  etag: string;
}

/** The page and its assets, keyed by the name served under `/dashboard/assets/` (`''` = the page). */
export type AssetMap = ReadonlyMap<string, Asset>;

const TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
  svg: 'image/svg+xml',
};

/**
 * Where the dashboard's own files live: `src/web/static/` under the package root. tsc compiles only
 * .ts into dist/, so the plain files stay in src/; this module sits at `src/web/` (tests, tsx) or
 * `dist/web/` (the built package), both two levels below the root, so one relative path finds them.
 */
export function staticDir(): string {
  return fileURLToPath(new URL('../../src/web/static/', import.meta.url));
}

/** Our files, served as they are. */
const OWN = ['dashboard.html', 'dashboard.css', 'dashboard.js', 'favicon.svg'] as const;

/** The chart library (uPlot), served from the installed npm package: no CDN, same version as the lock file. */
const VENDOR: Record<string, string> = {
  'uPlot.iife.min.js': 'uplot/dist/uPlot.iife.min.js',
  'uPlot.min.css': 'uplot/dist/uPlot.min.css',
};

function asset(path: string): Asset {
  const body = readFileSync(path);
  const ext = path.slice(path.lastIndexOf('.') + 1);
  return {
    body,
    contentType: TYPES[ext] ?? 'application/octet-stream',
    etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`,
  };
}

let cached: AssetMap | null = null;

/**
 * Read the dashboard files (about 60 KB) once per process. Throws, naming the path, when a file is
 * missing (a broken installation); the caller decides how to report it.
 */
export function loadAssets(): AssetMap {
  if (cached) return cached;
  const dir = staticDir();
  const require = createRequire(import.meta.url);
  const map = new Map<string, Asset>();
  for (const name of OWN) {
    const path = `${dir}${name}`;
    if (!existsSync(path)) throw new Error(`dashboard file ${path} is missing`);
    map.set(name === 'dashboard.html' ? '' : name, asset(path));
  }
  for (const [name, spec] of Object.entries(VENDOR)) map.set(name, asset(require.resolve(spec)));
  cached = map;
  return map;
}
