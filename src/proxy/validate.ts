import { z } from 'zod';

/** Only the fields the gateway depends on; everything else passes through unchecked to the provider. */
const messagesBody = z.looseObject({
  model: z.string().min(1, 'must not be empty').max(256),
  max_tokens: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  messages: z.array(z.unknown()),
  stream: z.boolean().optional(),
  metadata: z.looseObject({ user_id: z.string().nullish() }).nullish(),
});

export type MessagesBody = z.infer<typeof messagesBody>;

export type Parsed<T> = { ok: true; body: T } | { ok: false; message: string };

/** Parse and check a `/v1/messages` body. Never throws; the message names each bad field. */
export function parseMessagesBody(raw: Buffer | undefined): Parsed<MessagesBody> {
  if (!raw || raw.length === 0) return { ok: false, message: 'request body is empty; expected JSON' };
  let json: unknown;
  try {
    json = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    return { ok: false, message: `request body is not valid JSON: ${(err as Error).message}` };
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    return { ok: false, message: 'request body must be a JSON object' };
  }
  const result = messagesBody.safeParse(json);
  if (!result.success) {
    const issues = result.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`);
    return { ok: false, message: issues.join('; ') };
  }
  return { ok: true, body: result.data };
}
