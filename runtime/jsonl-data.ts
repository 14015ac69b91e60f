// `std.data.jsonl(path, tokenizer: "folder", context: N)`: instruction data, one JSON object a
// line, either `{"prompt": …, "completion": …}` or `{"messages": [{"role", "content"}, …]}`
// (rendered with the tokenizer's chat template). Only what the model should learn to write is a
// target: completion tokens, or the assistant turns of a conversation; every other position's
// target is -1, which cross_entropy skips (it averages over the targets ≥ 0 only).
//
// An example is the ids of prompt + completion (with the tokenizer's special tokens, Llama's
// `<s>`) and the end-of-sequence token (so the model learns to stop), cut into input =
// ids[0..L-1] and target = ids[1..L], right-padded to `context` (input: eos or 0, target: -1).
// The last 10% of the examples (at least 1) are the valid split.
import { resolve } from "node:path";
import {
  checkBatchArgs,
  checkInteger,
  DataError,
  EpochOrder,
  inOrder,
  openTokenizer,
  readBytes,
  type Batch,
  type DataSource,
} from "./data.js";
import { renderChat, TemplateError } from "./chat-template.js";
import type { Tokenizer } from "./tokenizer.js";

export interface JsonlSource extends DataSource {
  readonly kind: "jsonl";
  readonly context: number;
  readonly path: string;
  readonly tokenizer: Tokenizer;
  /** Example `i` of a split: its input and target rows (each `context` long). */
  example(split: "train" | "valid", i: number): { input: Int32Array; target: Int32Array };
}

export interface JsonlParams {
  path: string;
  tokenizer: string;
  context: number;
  seed: number;
  baseDir: string;
}

const HELP = 'for example: std.data.jsonl("train.jsonl", tokenizer: "models/gpt2", context: 256)';

/** One example's token ids and where its targets start (ids before `trainFrom` are masked). */
interface Tokens {
  /** Ids, and for each whether it is a target (predicted from the ids before it). */
  ids: number[];
  learn: boolean[];
}

/** A line's example: prompt/completion or a conversation; a string is what is wrong with it. */
function tokensOf(record: unknown, tokenizer: Tokenizer): Tokens | string {
  if (typeof record !== "object" || record === null || Array.isArray(record))
    return "a line must be a JSON object";
  const r = record as Record<string, unknown>;
  if ("messages" in r) return conversation(r["messages"], tokenizer);
  if (typeof r["prompt"] !== "string" || typeof r["completion"] !== "string")
    return 'an example needs "prompt" and "completion" strings, or "messages"';
  // The text is tokenized whole, as the model will read it (tokenizing the completion alone
  // would add SentencePiece's word-start mark to it); the targets start where the ids stop
  // agreeing with the prompt's own ids (at a token spanning the boundary, that token).
  const prompt = tokenizer.encode(r["prompt"]);
  const ids = tokenizer.encode(r["prompt"] + r["completion"]);
  let start = 0;
  while (start < prompt.length && start < ids.length && prompt[start] === ids[start]) start++;
  if (tokenizer.eosId !== undefined && ids[ids.length - 1] !== tokenizer.eosId)
    ids.push(tokenizer.eosId);
  return { ids, learn: ids.map((_, i) => i >= start) };
}

/**
 * A conversation rendered with the chat template: the text of messages [0, k] extends that of
 * [0, k-1], so each message's tokens are where the two differ; an assistant's are targets.
 */
function conversation(messages: unknown, tokenizer: Tokenizer): Tokens | string {
  if (!Array.isArray(messages) || messages.length === 0)
    return '"messages" must be a non-empty list of {"role", "content"} objects';
  for (const m of messages)
    if (
      typeof m !== "object" ||
      m === null ||
      typeof (m as Record<string, unknown>)["role"] !== "string" ||
      typeof (m as Record<string, unknown>)["content"] !== "string"
    )
      return 'each message must be {"role": "…", "content": "…"} with string values';
  if (tokenizer.chatTemplate === undefined)
    return 'the tokenizer has no chat template (tokenizer_config.json\'s chat_template) for "messages"';
  // Each rendering is tokenized whole, as for prompt/completion: message k's tokens are those
  // from the first id that differs from the rendering of messages [0, k-1].
  let ids: number[] = [];
  const learn: boolean[] = [];
  let before = "";
  for (let k = 0; k < messages.length; k++) {
    const text = renderChat(
      tokenizer,
      messages.slice(0, k + 1) as { role: string; content: string }[],
    );
    if (!text.startsWith(before))
      return `the chat template renders message ${k + 1} by changing the text before it, so its tokens cannot be told apart`;
    const all = tokenizer.encode(text, { special: false });
    let start = 0;
    while (start < ids.length && start < all.length && ids[start] === all[start]) start++;
    const role = (messages[k] as { role: string }).role;
    learn.length = start;
    learn.push(...all.slice(start).map(() => role === "assistant"));
    ids = all;
    before = text;
  }
  return { ids, learn };
}

export function jsonl(params: JsonlParams): JsonlSource {
  const { path, context } = params;
  if (path === "") throw new DataError("`path` is empty", HELP);
  checkInteger("context", context, 1, 2 ** 31 - 1, HELP);
  const tokenizer = openTokenizer(params.tokenizer, params.baseDir);
  const full = resolve(params.baseDir, path);
  const lines = new TextDecoder()
    .decode(readBytes(path, full))
    .replace(/^\uFEFF/, "")
    .split("\n");

  const rows: { input: Int32Array; target: Int32Array }[] = [];
  let truncated = 0;
  let empty = 0;
  const pad = tokenizer.eosId ?? 0;
  lines.forEach((line, i) => {
    if (line.trim() === "") return;
    const where = `${path}:${i + 1}`;
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch (e) {
      throw new DataError(`${where}: not valid JSON: ${(e as Error).message}`, HELP);
    }
    let tokens: Tokens | string;
    try {
      tokens = tokensOf(record, tokenizer);
    } catch (e) {
      if (e instanceof TemplateError || (e as Error).name === "TokenizerError")
        throw new DataError(`${where}: ${(e as Error).message}`, (e as { help?: string }).help);
      throw e;
    }
    if (typeof tokens === "string") throw new DataError(`${where}: ${tokens}`, HELP);
    const input = new Int32Array(context).fill(pad);
    const target = new Int32Array(context).fill(-1);
    const length = Math.min(context, tokens.ids.length - 1);
    if (tokens.ids.length - 1 > context) truncated++;
    let targets = 0;
    for (let t = 0; t < length; t++) {
      input[t] = tokens.ids[t]!;
      if (tokens.learn[t + 1]) {
        target[t] = tokens.ids[t + 1]!;
        targets++;
      }
    }
    // An example with nothing to predict in the context would only add a zero to the loss.
    if (targets === 0) empty++;
    else rows.push({ input, target });
  });
  if (rows.length === 0)
    throw new DataError(
      `"${path}" has no example with a completion token within the context of ${context}`,
      empty > 0 ? "use a longer context, or shorter prompts" : HELP,
    );

  const validSize = rows.length >= 2 ? Math.max(1, Math.floor(rows.length / 10)) : 1;
  const trainSize = rows.length >= 2 ? rows.length - validSize : 1;
  const notes: string[] = [];
  if (rows.length < 2) notes.push(`"${path}" has 1 example: valid is the train example`);
  if (truncated > 0)
    notes.push(
      `${truncated} example${truncated === 1 ? " is" : "s are"} longer than the context of ${context} and cut`,
    );
  if (empty > 0)
    notes.push(
      `${empty} example${empty === 1 ? " has" : "s have"} no completion token within the context and ${empty === 1 ? "is" : "are"} left out`,
    );
  const rowOf = (split: "train" | "valid", i: number) =>
    rows[split === "train" || rows.length < 2 ? i : trainSize + i]!;
  const order = new EpochOrder(trainSize, params.seed);

  const batchOf = (indices: ArrayLike<number>, split: "train" | "valid"): Batch => {
    const m = indices.length;
    const input = new Int32Array(m * context);
    const target = new Int32Array(m * context);
    for (let r = 0; r < m; r++) {
      const row = rowOf(split, indices[r]!);
      input.set(row.input, r * context);
      target.set(row.target, r * context);
    }
    return {
      fields: {
        input: { shape: [m, context], dtype: "i32", data: input },
        target: { shape: [m, context], dtype: "i32", data: target },
      },
      examples: m,
    };
  };

  return {
    kind: "jsonl",
    vocab: tokenizer.vocabSize,
    trainSize,
    validSize,
    ...(notes.length ? { note: notes.join("; ") } : {}),
    context,
    path: full,
    tokenizer,
    example: rowOf,
    fieldShapes: (batch) => ({
      input: { shape: [batch, context], dtype: "i32" },
      target: { shape: [batch, context], dtype: "i32" },
    }),
    batch(split, index, batchSize) {
      if (split === "train") return batchOf(order.indices(index, batchSize), "train");
      const { start, count } = inOrder(split, validSize, index, batchSize);
      return batchOf(
        Array.from({ length: count }, (_, r) => start + r),
        "valid",
      );
    },
    batchCount: (split, batchSize) =>
      Math.ceil((split === "train" ? trainSize : validSize) / batchSize),
    trainPosition(index, batchSize) {
      checkBatchArgs(index, batchSize);
      return order.position(index, batchSize);
    },
  };
}
