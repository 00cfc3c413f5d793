/**
 * The fake upstream as its own process, for the benchmark:
 *   node --import tsx bench/upstream-proc.ts [--port 0] [--host 127.0.0.1] [--record]
 * Prints `LISTENING <port>` on stdout when ready; exits on SIGTERM/SIGINT, or when its stdin is a pipe that closes.
 */
import { fstatSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { startFakeUpstream } from '../src/sim/upstream.js';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    record: { type: 'boolean', default: false },
  },
});

const upstream = await startFakeUpstream({
  port: Number(values.port),
  host: values.host,
  record: values.record,
});
process.stdout.write(`LISTENING ${upstream.port}\n`);

let closing = false;
const shutdown = (): void => {
  if (closing) return;
  closing = true;
  void upstream.close().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 1_000).unref();
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
// the harness keeps a pipe to our stdin open; if it dies, the pipe ends and we leave too
if (stdinIsPipe()) {
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}

function stdinIsPipe(): boolean {
  try {
    const st = fstatSync(0);
    return st.isFIFO() || st.isSocket(); // node's 'pipe' stdio is a socketpair
  } catch {
    return false;
  }
}
