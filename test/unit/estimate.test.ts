import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DEFAULT_ALLOWANCES, ESTIMATE_ALLOWANCES, estimateInputTokens } from '../../src/budget/estimate.js';

const A = DEFAULT_ALLOWANCES;
const utf8 = (s: string): number => new TextEncoder().encode(s).length;
const strict = (body: unknown): number => estimateInputTokens(body, 'strict');
const heuristic = (body: unknown): number => estimateInputTokens(body, 'estimate');
const req = (messages: unknown[], extra: Record<string, unknown> = {}) => ({
  model: 'claude-sonnet-5-5',
  max_tokens: 1024,
  messages,
  ...extra,
});
const user = (content: unknown) => ({ role: 'user', content });
/** What adding `block` to a one-message request's content adds to the strict count. */
const blockCost = (block: unknown): number =>
  strict(req([user([{ type: 'text', text: 'x' }, block])])) -
  strict(req([user([{ type: 'text', text: 'x' }])]));

/** Oracle: UTF-8 bytes of every string value, except inside blocks that are charged an allowance. */
function stringBytes(v: unknown): number {
  if (typeof v === 'string') return utf8(v);
  if (Array.isArray(v)) return v.reduce((n: number, x) => n + stringBytes(x), 0);
  if (typeof v === 'object' && v !== null) {
    const o = v as Record<string, unknown>;
    if (o.type === 'image' || o.type === 'document') return 0;
    return Object.values(o).reduce((n: number, x) => n + stringBytes(x), 0);
  }
  return 0;
}

describe('estimateInputTokens strict', () => {
  it('counts UTF-8 bytes of text plus base and per-message allowances', () => {
    const text = 'héllo wörld — 日本語 🙂';
    const body = req([user(text)]);
    // 'user' is counted too: roles are prompt text.
    expect(strict(body)).toBe(A.base + A.perMessage + utf8('user') + utf8(text));
    expect(strict(body)).toBeGreaterThanOrEqual(utf8(text));
  });

  it('counts system prompts, text blocks and every message', () => {
    const body = req([user([{ type: 'text', text: 'aaaa' }]), { role: 'assistant', content: 'bbbbbb' }], {
      system: [{ type: 'text', text: 'ssssssss', cache_control: { type: 'ephemeral' } }],
    });
    const n = strict(body);
    expect(n).toBeGreaterThanOrEqual(A.base + 2 * A.perMessage + 4 + 6 + 8);
    expect(n).toBeLessThan(A.base + 2 * A.perMessage + 18 + 4 * A.perBlock + 64);
  });

  it('ignores sampling and routing fields', () => {
    const base = strict(req([user('hi')]));
    expect(
      strict(
        req([user('hi')], { stream: true, metadata: { user_id: 'x'.repeat(500) }, stop_sequences: ['y'] }),
      ),
    ).toBe(base);
  });

  it('charges images a flat allowance whatever the source, not their base64 bytes', () => {
    const data = 'A'.repeat(1_000_000);
    const sources = [
      { type: 'base64', media_type: 'image/png', data },
      { type: 'url', url: 'https://example.com/cat.png' },
      { type: 'file', file_id: 'file_123' },
    ];
    for (const source of sources) {
      expect(blockCost({ type: 'image', source })).toBe(A.perBlock + A.image);
    }
    expect(
      estimateInputTokens(req([user([{ type: 'image', source: sources[0] }])]), 'strict', { image: 9000 }) -
        strict(req([user([{ type: 'image', source: sources[0] }])])),
    ).toBe(9000 - A.image);
  });

  it('charges base64/url/file documents the document allowance, text documents their bytes', () => {
    const pdf = { type: 'base64', media_type: 'application/pdf', data: 'J'.repeat(500_000) };
    // The block's own strings (its type, title, context) count as text.
    const flat = A.perBlock + A.document + utf8('document');
    expect(blockCost({ type: 'document', source: pdf })).toBe(flat);
    expect(blockCost({ type: 'document', source: { type: 'url', url: 'https://x/y.pdf' } })).toBe(flat);
    expect(blockCost({ type: 'document', source: { type: 'file', file_id: 'f' } })).toBe(flat);
    const data = 'plain text document '.repeat(10_000);
    const textDoc = blockCost({ type: 'document', source: { type: 'text', media_type: 'text/plain', data } });
    expect(textDoc).toBeGreaterThanOrEqual(utf8(data));
    expect(textDoc).toBeLessThan(utf8(data) + 3 * A.perBlock + 100);
    // Title and context are prompt text as well.
    expect(blockCost({ type: 'document', source: pdf, title: 'T'.repeat(1000) })).toBe(flat + 1000);
  });

  it('recurses into content-source documents and tool results (images inside get the allowance)', () => {
    const content = [
      { type: 'text', text: 'z'.repeat(2000) },
      { type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'Q'.repeat(100_000) } },
    ];
    const doc = blockCost({ type: 'document', source: { type: 'content', content } });
    expect(doc).toBeGreaterThanOrEqual(2000 + A.image);
    expect(doc).toBeLessThan(2000 + A.image + 5 * A.perBlock + 64);
    const result = blockCost({ type: 'tool_result', tool_use_id: 'toolu_1', content });
    expect(result).toBeGreaterThanOrEqual(2000 + A.image);
    expect(result).toBeLessThan(2000 + A.image + 4 * A.perBlock + 64);
  });

  it('counts tool_use input as JSON text plus per-parameter markup', () => {
    const input = { city: 'Berlin', days: 3, nested: { units: 'metric', list: [1, 2, 3] } };
    const cost = blockCost({ type: 'tool_use', id: 'toolu_01', name: 'get_weather', input });
    const json = utf8(JSON.stringify(input));
    expect(cost).toBe(
      A.perBlock + utf8('tool_use') + utf8('toolu_01') + utf8('get_weather') + json + 5 * A.perInputKey,
    );
  });

  it('counts thinking text, signatures, redacted thinking and unknown block types', () => {
    expect(blockCost({ type: 'thinking', thinking: 'T'.repeat(300), signature: 'S'.repeat(700) })).toBe(
      A.perBlock + utf8('thinking') + 1000,
    );
    expect(blockCost({ type: 'redacted_thinking', data: 'R'.repeat(400) })).toBe(
      A.perBlock + utf8('redacted_thinking') + 400,
    );
    expect(blockCost({ type: 'future_block', deep: { a: ['x'.repeat(50), { b: 'y'.repeat(50) }] } })).toBe(
      A.perBlock + utf8('future_block') + 100,
    );
  });

  it('adds the tool-use system prompt allowance and JSON text of tool definitions', () => {
    const tool = {
      name: 'get_weather',
      description: 'Get the weather',
      input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
    };
    const without = strict(req([user('hi')]));
    expect(strict(req([user('hi')], { tools: [tool] })) - without).toBe(
      A.tools + A.perBlock + utf8(JSON.stringify(tool)),
    );
    const builtin = { type: 'text_editor_20250728', name: 'str_replace_based_edit_tool' };
    expect(strict(req([user('hi')], { tools: [tool, builtin] })) - without).toBe(
      A.tools + 2 * A.perBlock + utf8(JSON.stringify(tool)) + utf8(JSON.stringify(builtin)) + A.builtinTool,
    );
    expect(strict(req([user('hi')], { tools: [] }))).toBe(without);
  });

  it('counts tool_choice and output_config', () => {
    const without = strict(req([user('hi')]));
    const schema = { type: 'json_schema', schema: { type: 'object', properties: { a: { type: 'string' } } } };
    expect(strict(req([user('hi')], { output_config: { format: schema } }))).toBeGreaterThanOrEqual(
      without + utf8(JSON.stringify({ format: schema })),
    );
    expect(strict(req([user('hi')], { tool_choice: { type: 'tool', name: 'get_weather' } }))).toBeGreaterThan(
      without + utf8('get_weather'),
    );
  });

  it('ignores invalid allowance overrides', () => {
    const body = req([user([{ type: 'image', source: { type: 'url', url: 'u' } }])]);
    expect(estimateInputTokens(body, 'strict', { image: Number.NaN, base: -5 })).toBe(strict(body));
    expect(estimateInputTokens(body, 'strict', { image: undefined })).toBe(strict(body));
  });
});

describe('estimateInputTokens on malformed bodies', () => {
  const deep = (): unknown => {
    let v: unknown = 'leaf';
    for (let i = 0; i < 200_000; i++) v = [v];
    return v;
  };
  const cyclic = (): unknown => {
    const o: Record<string, unknown> = { type: 'tool_use', name: 'x' };
    o.input = o;
    return o;
  };
  const throwing = new Proxy(
    {},
    {
      ownKeys() {
        throw new Error('boom');
      },
    },
  );
  const bodies: [string, unknown][] = [
    ['null', null],
    ['undefined', undefined],
    ['number', 42],
    ['string', 'hello'],
    ['array', [1, 'two', { three: 3 }]],
    ['messages not an array', { messages: 'hi there' }],
    ['odd messages', { messages: [null, 7, 'x', [], { content: { weird: true } }, { role: 5 }] }],
    ['odd blocks', req([user([null, 1, { type: 5 }, { type: 'image' }, { type: 'document', source: 'x' }])])],
    ['odd tools', { messages: [], tools: { name: 'x' }, tool_choice: 'auto', system: 12 }],
    ['tools with nulls', { messages: [], tools: [null, 1, 'x'] }],
    ['deeply nested', { messages: [user(deep())] }],
    ['deeply nested tool input', { messages: [user([{ type: 'tool_use', input: { a: deep() } }])] }],
    ['cyclic tool input', { messages: [user([cyclic()])] }],
    ['throwing proxy', { messages: [throwing] }],
  ];

  it.each(bodies)('%s: returns a non-negative integer in both modes', (_name, body) => {
    for (const mode of ['strict', 'estimate'] as const) {
      const n = estimateInputTokens(body, mode);
      expect(Number.isSafeInteger(n)).toBe(true);
      expect(n).toBeGreaterThanOrEqual(0);
    }
  });

  it('charges what it cannot bound (cycles, throwing objects) as unbounded', () => {
    expect(strict({ messages: [user([cyclic()])] })).toBe(Number.MAX_SAFE_INTEGER);
    expect(strict({ messages: [throwing] })).toBe(Number.MAX_SAFE_INTEGER);
    const loop: unknown[] = [];
    loop.push(loop, loop);
    expect(strict({ messages: loop })).toBe(Number.MAX_SAFE_INTEGER);
  });

  it('counts strings it finds in odd shapes (conservative, not zero)', () => {
    expect(strict({ messages: 'x'.repeat(1000) })).toBeGreaterThanOrEqual(1000);
    expect(strict('x'.repeat(1000))).toBeGreaterThanOrEqual(1000);
    expect(strict({ messages: [user(deep())] })).toBeGreaterThanOrEqual(4);
    expect(strict({ messages: [user([{ type: 'tool_use', input: { a: deep() } }])] })).toBeGreaterThan(
      200_000,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Properties

const text = fc.oneof(
  fc.string({ unit: 'grapheme', maxLength: 40 }),
  fc.string({ unit: 'binary', maxLength: 40 }),
);
const json = fc.jsonValue({ maxDepth: 3 });
const block = fc.oneof(
  fc.record({ type: fc.constant('text'), text }),
  fc.record({ type: fc.constant('thinking'), thinking: text, signature: text }),
  fc.record({ type: fc.constant('tool_use'), id: text, name: text, input: fc.dictionary(text, json) }),
  fc.record({
    type: fc.constant('tool_result'),
    tool_use_id: text,
    content: fc.oneof(text, fc.array(fc.record({ type: fc.constant('text'), text }), { maxLength: 3 })),
  }),
  fc.record({
    type: fc.constant('image'),
    source: fc.record({ type: fc.constant('base64'), media_type: fc.constant('image/png'), data: text }),
  }),
  fc.record({ type: fc.constant('document'), source: fc.record({ type: fc.constant('text'), data: text }) }),
  fc.record({ type: text, payload: json }),
  json,
);
const message = fc.record({
  role: fc.constantFrom('user', 'assistant', 'system'),
  content: fc.oneof(text, fc.array(block, { maxLength: 5 })),
});
const body = fc.record(
  {
    model: fc.constant('claude-opus-5'),
    max_tokens: fc.nat(),
    system: fc.oneof(text, fc.array(fc.record({ type: fc.constant('text'), text }), { maxLength: 3 })),
    messages: fc.array(message, { maxLength: 6 }),
    tools: fc.array(fc.record({ name: text, description: text, input_schema: json }), { maxLength: 3 }),
    unknown_field: json,
  },
  { requiredKeys: ['messages'] },
);

describe('estimateInputTokens: properties', () => {
  it('strict >= UTF-8 bytes of every string in the prompt parts', () => {
    fc.assert(
      fc.property(body, (b) => {
        const { model: _m, max_tokens: _t, ...prompt } = b;
        expect(strict(b)).toBeGreaterThanOrEqual(stringBytes(prompt));
      }),
      { numRuns: 500 },
    );
  });

  it('estimate <= strict, and both are non-negative integers', () => {
    fc.assert(
      fc.property(fc.oneof(body, json), (b) => {
        const s = strict(b);
        const e = heuristic(b);
        expect(Number.isSafeInteger(s) && Number.isSafeInteger(e)).toBe(true);
        expect(e).toBeGreaterThanOrEqual(0);
        expect(e).toBeLessThanOrEqual(s);
      }),
      { numRuns: 500 },
    );
  });

  it('strict grows by at least the bytes of an appended message', () => {
    fc.assert(
      fc.property(body, text, (b, t) => {
        const more = { ...b, messages: [...b.messages, { role: 'user', content: t }] };
        expect(strict(more) - strict(b)).toBeGreaterThanOrEqual(utf8(t) + A.perMessage);
      }),
      { numRuns: 200 },
    );
  });
});

describe('estimateInputTokens estimate mode', () => {
  it('is close to ~3.5 bytes a token for prose', () => {
    const prose = 'The quick brown fox jumps over the lazy dog. '.repeat(100);
    const n = heuristic(req([user(prose)]));
    expect(n).toBeGreaterThanOrEqual(Math.ceil(prose.length / 3.5));
    expect(n).toBeLessThan(Math.ceil(prose.length / 3.5) + 20);
  });

  it('uses typical image and document sizes', () => {
    const img = { type: 'image', source: { type: 'url', url: 'https://x/y.png' } };
    const doc = { type: 'document', source: { type: 'file', file_id: 'f' } };
    const without = heuristic(req([user([])]));
    expect(heuristic(req([user([img])])) - without).toBe(
      ESTIMATE_ALLOWANCES.image + ESTIMATE_ALLOWANCES.perBlock,
    );
    // Plus the block's type string at 3.5 bytes a token.
    const docCost = heuristic(req([user([doc])])) - without;
    expect(docCost).toBeGreaterThanOrEqual(ESTIMATE_ALLOWANCES.document + ESTIMATE_ALLOWANCES.perBlock);
    expect(docCost).toBeLessThanOrEqual(ESTIMATE_ALLOWANCES.document + ESTIMATE_ALLOWANCES.perBlock + 3);
    expect(ESTIMATE_ALLOWANCES.image).toBe(1600);
  });

  it('a 100 KB body is estimated in well under 1 ms', () => {
    const messages = [];
    for (let i = 0; i < 100; i++) {
      messages.push(
        user([{ type: 'text', text: `message ${i}: ${'lorem ipsum dolor sit amet, ü日本 '.repeat(25)}` }]),
      );
      messages.push({
        role: 'assistant',
        content: [
          { type: 'tool_use', id: `toolu_${i}`, name: 'search', input: { query: 'q'.repeat(40), n: i } },
        ],
      });
    }
    const b = req(messages, { system: 'You are helpful. '.repeat(20) });
    expect(JSON.stringify(b).length).toBeGreaterThan(100_000);
    // Best of several batches: a shared CI host's load only ever makes a batch slower.
    let best = Number.POSITIVE_INFINITY;
    for (let batch = 0; batch < 8; batch++) {
      const t0 = performance.now();
      for (let i = 0; i < 20; i++) {
        strict(b);
        heuristic(b);
      }
      best = Math.min(best, (performance.now() - t0) / 40);
    }
    expect(best).toBeLessThan(1);
  });
});
