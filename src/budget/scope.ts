/** Which budgets apply to a request: agent names match exactly, models by glob. Pure. */
import type { BudgetScope } from './types.js';

const REGEX_SYNTAX = /[\\^$.*+?()[\]{}|/]/g;

/**
 * Compiles a glob to an anchored RegExp: `*` matches any run of characters (including none), `?`
 * exactly one character (code point), everything else itself. Never throws.
 */
export function globToRegExp(glob: string): RegExp {
  let src = '^';
  for (const ch of glob) {
    if (ch === '*') src += '.*';
    else if (ch === '?') src += '.';
    else src += ch.replace(REGEX_SYNTAX, '\\$&');
  }
  // `s`: a model name containing a newline is still matched literally by `*`/`?`.
  return new RegExp(`${src}$`, 'su');
}

type Matcher = (model: string) => boolean;

const matchers = new Map<string, Matcher>();
/** Globs come from config, so this stays tiny; the cap only bounds run-time budget churn. */
const MAX_MATCHERS = 1024;

function matcherFor(glob: string): Matcher {
  let m = matchers.get(glob);
  if (m === undefined) {
    if (!glob.includes('*') && !glob.includes('?')) {
      m = (model) => model === glob;
    } else if (glob === '*') {
      m = () => true;
    } else {
      const re = globToRegExp(glob);
      m = (model) => re.test(model);
    }
    if (matchers.size >= MAX_MATCHERS) matchers.clear();
    matchers.set(glob, m);
  }
  return m;
}

/**
 * True if a request by `agent` for `model` is covered by `scope`. An absent `scope.agent` or
 * `scope.model` matches anything; `scope.agent` must equal `agent`; `scope.model` is a glob (see
 * {@link globToRegExp}) and never matches a request without a model (`null`). Never throws.
 */
export function matchesScope(scope: BudgetScope, agent: string, model: string | null): boolean {
  if (scope.agent !== undefined && scope.agent !== agent) return false;
  if (scope.model !== undefined) {
    if (model === null) return false;
    return matcherFor(scope.model)(model);
  }
  return true;
}
