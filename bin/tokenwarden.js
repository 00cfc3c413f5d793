#!/usr/bin/env node
// The executable (package.json "bin"). The TypeScript sources are compiled to dist/ by `npm install`
// (the "prepare" script) or `npm run build`.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const entry = new URL('../dist/cli/index.js', import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write('tokenwarden: dist/ is missing; run `npm install` (or `npm run build`) first\n');
  process.exit(1);
}
const { main } = await import(entry.href);
await main(process.argv);
