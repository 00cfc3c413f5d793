/**
 * Input-token estimation of a `/v1/messages` body before it is sent, for the admission hold.
 * Pure and total: the body is whatever JSON the client sent, so odd shapes are counted, not rejected
 * (validation is the proxy's job).
 */
import { Buffer } from 'node:buffer';

export type EstimationMode = 'strict' | 'estimate';

/** Token allowances for prompt parts whose size the body's text does not bound. */
export interface Allowances {
  /** Per request: the prompt framing around everything (start, turn and end markers). */
  base: number;
  /** Per entry of `messages`: role/turn markers. */
  perMessage: number;
  /** Per typed object (`{type: …}`: content blocks, sources, citations, tools): rendering markup. */
  perBlock: number;
  /** Per object key inside a `tool_use` `input`: each parameter is rendered with its own markup. */
  perInputKey: number;
  /** Once when `tools` is non-empty: the tool-use system prompt the provider adds. */
  tools: number;
  /** Per provider-defined tool (`type` other than `custom`): definitions not present in the body. */
  builtinTool: number;
  /** Per image block, whatever its source (base64, url, file). */
  image: number;
  /** Per document block with a base64/url/file source (PDF pages cost text plus an image each). */
  document: number;
}

/**
 * Allowances of the `strict` mode. BPE tokens cover at least one UTF-8 byte each, so the text part
 * is bounded by its bytes; these cover what the body's bytes do not:
 * - base 64: a one-word prompt counts ~8 tokens; 8× headroom for framing and model-specific extras.
 * - perMessage 16: turn markers are 3–5 tokens.
 * - perBlock 32: block markup; the largest is tool use (`<function_calls><invoke name=…>` wrapping
 *   and the tool_result wrapper, ~15–20 tokens), leaving headroom.
 * - perInputKey 8: each tool_use parameter renders as `<parameter name="k">v</parameter>`, ~2–3
 *   tokens more than its JSON text `"k":"v",`.
 * - tools 640: the documented tool-use system prompts are 159–530 tokens (530: Claude 3 Opus,
 *   `auto`; current models 313–346); ~20 % over the largest.
 * - builtinTool 1500: documented definitions of provider tools are 245 (bash), 700 (text editor),
 *   735 + ~500 system prompt (computer use).
 * - image 4800: high-resolution images cost up to ~4,800 tokens (width × height / 750 after the
 *   provider's resize); older models cap at ~1,600.
 * - document 100,000: a PDF is bounded only by the provider's page limit; 100 k covers a 100-page
 *   PDF at ~1,000 tokens a page of text plus its page image at lower resolutions. Operators who send
 *   larger PDFs raise it.
 */
export const DEFAULT_ALLOWANCES: Readonly<Allowances> = Object.freeze({
  base: 64,
  perMessage: 16,
  perBlock: 32,
  perInputKey: 8,
  tools: 640,
  builtinTool: 1500,
  image: 4800,
  document: 100_000,
});

/** Allowances of the `estimate` mode: typical rather than worst-case sizes. */
export const ESTIMATE_ALLOWANCES: Readonly<Allowances> = Object.freeze({
  base: 4,
  perMessage: 3,
  perBlock: 2,
  perInputKey: 2,
  tools: 346,
  builtinTool: 500,
  image: 1600,
  document: 3000,
});

/** Claude's tokenizer averages ~3.5 bytes a token on English prose and code (less on CJK). */
export const ESTIMATE_BYTES_PER_TOKEN = 3.5;

/** Top-level fields that never reach the prompt (sampling and routing controls). */
const NOT_PROMPT = new Set([
  'model',
  'max_tokens',
  'stream',
  'metadata',
  'stop_sequences',
  'temperature',
  'top_p',
  'top_k',
  'thinking',
  'service_tier',
  'speed',
  'inference_geo',
  'cache_control',
  'diagnostics',
]);

interface Acc {
  /** UTF-8 bytes of prompt text. */
  bytes: number;
  /** Tokens from allowances. */
  fixed: number;
  /** Containers entered so far, against {@link NODE_LIMIT}. */
  nodes: number;
  /** Containers open on the current path, against {@link DEPTH_LIMIT}. */
  depth: number;
}

/**
 * More containers than a body within any sane size limit holds (JSON needs two bytes for each),
 * and deeper nesting than such a body can have. Only non-JSON objects (cycles, exponentially
 * shared parts) reach them; those cannot be bounded and are charged {@link UNBOUNDED}. A depth
 * counter rather than a set of ancestors keeps the common case cheap; detecting a cycle takes a
 * fraction of a second, which only a caller passing a non-JSON object ever pays.
 */
const NODE_LIMIT = 1 << 24;
const DEPTH_LIMIT = 1 << 20;
const UNBOUNDED = Number.MAX_SAFE_INTEGER;

class Unbounded extends Error {}

/** Stack marker: the container opened before it has been fully walked. */
const EXIT = Symbol('exit');

function enter(acc: Acc, stack: unknown[]): void {
  if (++acc.depth > DEPTH_LIMIT || ++acc.nodes > NODE_LIMIT) throw new Unbounded();
  stack.push(EXIT);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * UTF-8 length, as `Buffer.byteLength` counts it (a lone surrogate is 3 bytes). Short strings are
 * counted in JS: most strings in a body are short, and the native call costs more than the loop.
 */
function utf8(s: string): number {
  const n = s.length;
  if (n > 32) return Buffer.byteLength(s, 'utf8');
  let bytes = n;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) {
      bytes += 1;
    } else {
      bytes += 2;
      // A surrogate pair is 2 UTF-16 units and 4 bytes.
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < n) {
        const d = s.charCodeAt(i + 1);
        if (d >= 0xdc00 && d <= 0xdfff) i++;
      }
    }
  }
  return bytes;
}

function resolveAllowances(overrides: Partial<Allowances> | undefined): Allowances {
  const a: Allowances = { ...DEFAULT_ALLOWANCES };
  if (overrides === undefined) return a;
  for (const k of Object.keys(a) as (keyof Allowances)[]) {
    const v = overrides[k];
    // A bad override must not turn the bound into NaN or a negative number.
    if (typeof v === 'number' && Number.isFinite(v) && v >= 0) a[k] = v;
  }
  return a;
}

/**
 * Upper bound on the bytes of `JSON.stringify(v)` (and its key count) without recursion, for
 * values too deep to stringify: a string byte escapes to at most 6 bytes, and punctuation plus any
 * number or literal fits in 32 bytes per value.
 */
function jsonSizeBound(v: unknown, acc: Acc): { bytes: number; keys: number } {
  let bytes = 0;
  let keys = 0;
  const stack: unknown[] = [v];
  while (stack.length > 0) {
    const x = stack.pop();
    if (x === EXIT) {
      acc.depth--;
      continue;
    }
    bytes += 32;
    if (typeof x === 'string') bytes += 6 * utf8(x);
    else if (typeof x === 'object' && x !== null) {
      enter(acc, stack);
      if (Array.isArray(x)) for (const y of x) stack.push(y);
      else {
        const o = x as Record<string, unknown>;
        for (const k in o) {
          keys++;
          bytes += 6 * utf8(k) + 32;
          stack.push(o[k]);
        }
      }
    }
  }
  return { bytes, keys };
}

/** Bytes of the JSON text of `v`, and the number of object keys in it. */
function jsonSize(v: object, acc: Acc): { bytes: number; keys: number } {
  let text: string | undefined;
  try {
    text = JSON.stringify(v);
  } catch {
    // Too deep for the native recursion, or cyclic (which the bound detects).
    return jsonSizeBound(v, acc);
  }
  // JSON.stringify succeeded, so `v` is a finite tree: counting its keys terminates.
  let keys = 0;
  const stack: unknown[] = [v];
  while (stack.length > 0) {
    const x = stack.pop();
    if (typeof x !== 'object' || x === null) continue;
    if (Array.isArray(x)) {
      for (const y of x) stack.push(y);
    } else {
      const o = x as Record<string, unknown>;
      for (const k in o) {
        keys++;
        stack.push(o[k]);
      }
    }
  }
  return { bytes: text === undefined ? 0 : utf8(text), keys };
}

function jsonBytes(v: unknown, acc: Acc): number {
  if (typeof v !== 'object' || v === null) {
    const text = JSON.stringify(v);
    return text === undefined ? 0 : utf8(text);
  }
  return jsonSize(v, acc).bytes;
}

/**
 * Counts every string (and number/boolean) reachable from `root`, without recursion so that a
 * deeply nested body cannot overflow the stack. Block types are recognised wherever they appear
 * (tool_result content, search results, document content), and unknown types still count all
 * their strings.
 */
function walk(root: unknown, a: Allowances, acc: Acc): void {
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const v = stack.pop();
    if (v === EXIT) {
      acc.depth--;
      continue;
    }
    switch (typeof v) {
      case 'string':
        acc.bytes += utf8(v);
        break;
      case 'number':
      case 'boolean':
      case 'bigint':
        acc.bytes += String(v).length;
        break;
      case 'object': {
        if (v === null) break;
        enter(acc, stack);
        if (Array.isArray(v)) {
          for (const x of v) stack.push(x);
          break;
        }
        const o = v as Record<string, unknown>;
        const type = o.type;
        if (typeof type === 'string') {
          acc.fixed += a.perBlock;
          if (type === 'image') {
            // Base64 bytes say nothing about an image's token cost (that is its pixel count).
            acc.fixed += a.image;
            break;
          }
          if (type === 'document') {
            const src = o.source;
            for (const k in o) if (k !== 'source') stack.push(o[k]);
            if (isRecord(src) && (src.type === 'text' || src.type === 'content')) stack.push(src);
            else acc.fixed += a.document;
            break;
          }
        }
        for (const k in o) {
          const x = o[k];
          if (k === 'input' && typeof x === 'object' && x !== null) {
            // tool_use input: the model sees JSON-ish text plus markup per parameter.
            const size = jsonSize(x, acc);
            acc.bytes += size.bytes;
            acc.fixed += a.perInputKey * size.keys;
          } else {
            stack.push(x);
          }
        }
        break;
      }
      default:
        break;
    }
  }
}

function isBuiltinTool(t: unknown): boolean {
  return isRecord(t) && typeof t.type === 'string' && t.type !== 'custom';
}

function measure(body: unknown, a: Allowances, acc: Acc): void {
  if (!isRecord(body)) {
    walk(body, a, acc);
    return;
  }
  for (const key of Object.keys(body)) {
    if (NOT_PROMPT.has(key)) continue;
    const v = body[key];
    switch (key) {
      case 'messages':
        if (Array.isArray(v)) {
          acc.fixed += a.perMessage * v.length;
          for (const m of v) walk(m, a, acc);
        } else {
          walk(v, a, acc);
        }
        break;
      case 'tools':
        if (Array.isArray(v)) {
          if (v.length > 0) acc.fixed += a.tools;
          for (const t of v) {
            acc.bytes += jsonBytes(t, acc);
            acc.fixed += a.perBlock + (isBuiltinTool(t) ? a.builtinTool : 0);
          }
        } else if (v !== null && v !== undefined) {
          acc.fixed += a.tools;
          acc.bytes += jsonBytes(v, acc);
        }
        break;
      case 'tool_choice':
      case 'output_config':
        // Rendered as instructions or a schema: its JSON text, keys included, bounds the tokens.
        acc.bytes += jsonBytes(v, acc);
        acc.fixed += a.perBlock;
        break;
      default:
        // `system`, and any field this version does not know (it may well reach the prompt).
        walk(v, a, acc);
        break;
    }
  }
}

/**
 * Input tokens of an Anthropic `/v1/messages` body (already JSON-parsed; any shape), a
 * non-negative integer.
 * - `strict`: a provable upper bound on the text (a token covers at least one UTF-8 byte, so every
 *   string of `system`, `messages` (all blocks, recursively; tool_use `input` as JSON text),
 *   `tools` (JSON text of each), `tool_choice`, `output_config` and unknown top-level fields counts
 *   its bytes) plus the allowances of {@link DEFAULT_ALLOWANCES} (overridable by `allowances`) for
 *   framing, images and base64/url/file documents. It cannot bound what the provider adds
 *   server-side (MCP tool definitions, server-tool loops, fallbacks).
 * - `estimate`: the same walk with ~3.5 bytes a token and typical allowances
 *   ({@link ESTIMATE_ALLOWANCES}; `allowances` is ignored). Never above `strict` with default
 *   allowances; may be below the real count.
 * Linear in the body size (a 100 KB body takes well under 1 ms). Never throws.
 */
export function estimateInputTokens(
  body: unknown,
  mode: EstimationMode,
  allowances?: Partial<Allowances>,
): number {
  const estimate = mode === 'estimate';
  const a = estimate ? ESTIMATE_ALLOWANCES : resolveAllowances(allowances);
  const acc: Acc = { bytes: 0, fixed: a.base, nodes: 0, depth: 0 };
  try {
    measure(body, a, acc);
  } catch {
    // Unbounded, or a non-JSON object whose traversal throws (JSON.parse output has no getters
    // or cycles): what cannot be counted must not fit any limit.
    return UNBOUNDED;
  }
  const text = estimate ? acc.bytes / ESTIMATE_BYTES_PER_TOKEN : acc.bytes;
  return Math.ceil(text) + Math.ceil(acc.fixed);
}
