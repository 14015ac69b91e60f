// The vocabulary size of a Hugging Face tokenizer, read while compiling: a data source with
// `tokenizer: "folder"` has that many token ids (`data.vocab`), which the program's embedding
// table and the batch fields' ranges need before anything runs. The runtime's
// runtime/tokenizer.ts reads the same file for the tokens themselves.
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";

/** tokenizer.json of `path` (a folder or the file itself), relative to the program file `from`. */
export function tokenizerFile(path: string, from: string): string {
  const full = resolve(dirname(from), path);
  try {
    if (statSync(full).isDirectory()) return join(full, "tokenizer.json");
  } catch {
    // Missing: reported by tokenizerVocab, naming the path looked at.
  }
  return full;
}

/**
 * One past the largest token id of GPT-2's original tokenizer files in `folder` (vocab.json,
 * and the ids of added_tokens.json and tokenizer_config.json's added_tokens_decoder), which a
 * folder without tokenizer.json holds; undefined when it has no vocab.json and merges.txt.
 */
function slowVocab(folder: string): number | undefined {
  const ids: number[] = [];
  const read = (name: string): unknown => JSON.parse(readFileSync(join(folder, name), "utf8"));
  try {
    statSync(join(folder, "merges.txt"));
    ids.push(...Object.values(read("vocab.json") as Record<string, unknown>).map(Number));
  } catch {
    return undefined;
  }
  try {
    ids.push(...Object.values(read("added_tokens.json") as Record<string, unknown>).map(Number));
  } catch {
    // optional
  }
  try {
    const config = read("tokenizer_config.json") as { added_tokens_decoder?: object };
    ids.push(...Object.keys(config.added_tokens_decoder ?? {}).map(Number));
  } catch {
    // optional
  }
  return Math.max(-1, ...ids.filter(Number.isInteger)) + 1;
}

/** One past the largest token id of the tokenizer at `path`, or what is wrong with it. */
export function tokenizerVocab(path: string, from: string): number | string {
  const file = tokenizerFile(path, from);
  const slow =
    file.endsWith("tokenizer.json") && !existsSync(file) ? slowVocab(dirname(file)) : undefined;
  if (slow !== undefined) return slow;
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR")
      return `cannot find the tokenizer "${path}" (looked for ${file})`;
    return `cannot read the tokenizer "${path}": ${(e as Error).message}`;
  }
  const model = (json as { model?: { vocab?: unknown } } | null)?.model;
  if (typeof model?.vocab !== "object" || model.vocab === null)
    return `"${path}" is not a Hugging Face tokenizer.json (it has no model.vocab)`;
  let max = -1;
  for (const id of Object.values(model.vocab as Record<string, unknown>))
    if (typeof id === "number") max = Math.max(max, id);
  const added = (json as { added_tokens?: unknown }).added_tokens;
  if (Array.isArray(added))
    for (const a of added as { id?: unknown }[])
      if (typeof a?.id === "number") max = Math.max(max, a.id);
  return max + 1;
}
