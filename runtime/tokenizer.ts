// Hugging Face tokenizers (`tokenizer.json`), implemented here rather than through a library:
// `@huggingface/transformers` brings onnxruntime and downloads by default, and
// `@huggingface/tokenizers` is a native binding; lrk only needs the BPE models the decoder LLMs it
// loads use, and an exact, dependency-free implementation runs the same on every machine.
//
// What is read: added (special) tokens, matched before anything else (with their `lstrip` and
// `rstrip`; `single_word` is refused); the normalizers Prepend,
// Replace, NFC/NFKC and Sequence; the pre-tokenizers ByteLevel (GPT-2's regex or none), Split
// (a regex, as Llama 3 uses before ByteLevel), Metaspace and Sequence; the BPE model (vocab,
// merges as "a b" or ["a", "b"], byte_fallback, unk_token, fuse_unk, ignore_merges); the post-
// processors TemplateProcessing (single), ByteLevel and none; the decoders ByteLevel, Metaspace,
// Replace, ByteFallback, Fuse, Strip and Sequence. Anything else is refused by name (a
// TokenizerError), never encoded differently in silence.
import { readFileSync, statSync } from "node:fs";
import { basename, join } from "node:path";

/** A user-facing problem with a tokenizer file. */
export class TokenizerError extends Error {
  constructor(
    message: string,
    readonly help?: string,
  ) {
    super(message);
    this.name = "TokenizerError";
  }
}

export interface Tokenizer {
  /** One past the largest id (model vocabulary and added tokens). */
  readonly vocabSize: number;
  /** From tokenizer_config.json (or the added tokens): undefined when the folder names none. */
  readonly bosId?: number;
  readonly eosId?: number;
  readonly bosToken?: string;
  readonly eosToken?: string;
  /**
   * Ids that end a generation besides `eosId`: generation_config.json's `eos_token_id` (one id or
   * a list, as Llama 3's and Qwen2's instruct models end a turn), when the folder has one.
   */
  readonly stopIds?: readonly number[];
  /** tokenizer_config.json's `chat_template`, when it has one (a string). */
  readonly chatTemplate?: string;
  /** Ids of `text`; `special` adds the post-processor's tokens (Llama's `<s>`). */
  encode(text: string, options?: { special?: boolean }): number[];
  /** Text of ids; `skipSpecial` leaves out added special tokens. */
  decode(ids: readonly number[], options?: { skipSpecial?: boolean }): string;
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Obj = { [key: string]: Json };

const isObj = (v: Json | undefined): v is Obj =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/** GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest from U+0100 up. */
function byteTable(): { toChar: string[]; toByte: Map<string, number> } {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++)
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  const toChar: string[] = new Array<string>(256);
  const toByte = new Map<string, number>();
  bs.forEach((b, i) => {
    toChar[b] = String.fromCodePoint(cs[i]!);
    toByte.set(toChar[b], b);
  });
  return { toChar, toByte };
}
const BYTES = byteTable();

/** GPT-2's pre-tokenizing regex (HF's ByteLevel with use_regex). */
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** A pre-tokenizer: pieces of one piece, in order. */
/** `atStart`: the piece begins the text (Metaspace's prepend_scheme "first" needs to know). */
type PreTokenizer = (piece: string, atStart: boolean) => string[];
type Normalizer = (text: string) => string;
type Decoder = (tokens: string[]) => string[];

function unsupported(what: string, value: Json | undefined): never {
  const type = isObj(value) ? String(value["type"]) : JSON.stringify(value);
  throw new TokenizerError(
    `tokenizer.json's ${what} \`${type}\` is not supported`,
    "lrk reads BPE tokenizers (GPT-2 and Llama families); see spec/language.md §18",
  );
}

/** A JSON regex pattern of HF's: {"String": "…"} (literal) or {"Regex": "…"}. */
function pattern(p: Json | undefined, flags: string): RegExp {
  if (isObj(p) && typeof p["String"] === "string")
    return new RegExp(p["String"].replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), flags);
  if (isObj(p) && typeof p["Regex"] === "string") {
    // Oniguruma's possessive/inline-case forms used by Llama 3: (?i:…) has no JS form.
    const source = p["Regex"].replace(
      /\(\?i:'s\|'t\|'re\|'ve\|'m\|'ll\|'d\)/g,
      "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])",
    );
    try {
      return new RegExp(source, flags + "u");
    } catch (e) {
      throw new TokenizerError(
        `tokenizer.json has a pattern JavaScript cannot read: ${(e as Error).message}`,
      );
    }
  }
  return unsupported("pattern", p);
}

function normalizer(n: Json | undefined): Normalizer {
  if (n === null || n === undefined) return (t) => t;
  if (!isObj(n)) return unsupported("normalizer", n);
  switch (n["type"]) {
    case "Sequence": {
      const parts = (n["normalizers"] as Json[]).map(normalizer);
      return (t) => parts.reduce((acc, f) => f(acc), t);
    }
    case "Prepend":
      // HF prepends only to non-empty text.
      return (t) => (t === "" ? t : String(n["prepend"]) + t);
    case "Replace": {
      const re = pattern(n["pattern"], "g");
      const content = String(n["content"]);
      return (t) => t.replace(re, () => content);
    }
    case "NFC":
    case "NFKC":
    case "NFD":
    case "NFKD": {
      const form = n["type"];
      return (t) => t.normalize(form);
    }
    default:
      return unsupported("normalizer", n);
  }
}

/** Bytes of a string as GPT-2's byte characters. */
const byteLevel = (s: string) =>
  Array.from(new TextEncoder().encode(s), (b) => BYTES.toChar[b]!).join("");

/** Splits `s` at the matches of `re`, keeping matches and gaps (HF's Split, "Isolated"). */
function isolate(s: string, re: RegExp): string[] {
  const out: string[] = [];
  let last = 0;
  for (const m of s.matchAll(re)) {
    if (m.index > last) out.push(s.slice(last, m.index));
    if (m[0] !== "") out.push(m[0]);
    last = m.index + m[0].length;
  }
  if (last < s.length) out.push(s.slice(last));
  return out;
}

function preTokenizer(p: Json | undefined): PreTokenizer {
  if (p === null || p === undefined) return (s) => [s];
  if (!isObj(p)) return unsupported("pre_tokenizer", p);
  switch (p["type"]) {
    case "Sequence": {
      const parts = (p["pretokenizers"] as Json[]).map(preTokenizer);
      return (s, atStart) =>
        parts.reduce<string[]>(
          (pieces, f) => pieces.flatMap((piece, i) => f(piece, atStart && i === 0)),
          [s],
        );
    }
    case "ByteLevel": {
      const prefix = p["add_prefix_space"] === true;
      const regex = p["use_regex"] !== false;
      return (s) => {
        const text = prefix && !s.startsWith(" ") ? " " + s : s;
        return (regex ? (text.match(GPT2_SPLIT) ?? []) : [text]).map(byteLevel);
      };
    }
    case "Split": {
      if (p["behavior"] !== "Isolated" || p["invert"] === true)
        return unsupported("Split behavior", String(p["behavior"]));
      const re = pattern(p["pattern"], "g");
      return (s) => isolate(s, re);
    }
    case "Metaspace": {
      const replacement = String(p["replacement"] ?? "▁");
      const scheme = String(
        p["prepend_scheme"] ?? (p["add_prefix_space"] === false ? "never" : "always"),
      );
      const split = p["split"] !== false;
      return (s, atStart) => {
        let t = s.replaceAll(" ", replacement);
        const prepend = scheme === "always" || (scheme === "first" && atStart);
        if (prepend && !t.startsWith(replacement)) t = replacement + t;
        return split ? isolateBefore(t, replacement) : [t];
      };
    }
    default:
      return unsupported("pre_tokenizer", p);
  }
}

/** `s` split before each `mark` (Metaspace's split). */
function isolateBefore(s: string, mark: string): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = s.indexOf(mark, 1); i >= 0; i = s.indexOf(mark, i + mark.length)) {
    out.push(s.slice(start, i));
    start = i;
  }
  out.push(s.slice(start));
  return out.filter((x) => x !== "");
}

function decoder(d: Json | undefined): Decoder {
  if (d === null || d === undefined) return (tokens) => tokens;
  if (!isObj(d)) return unsupported("decoder", d);
  switch (d["type"]) {
    case "Sequence": {
      const parts = (d["decoders"] as Json[]).map(decoder);
      return (tokens) => parts.reduce((acc, f) => f(acc), tokens);
    }
    case "ByteLevel":
      return (tokens) => {
        const bytes = [...tokens.join("")].map((c) => BYTES.toByte.get(c) ?? 0x3f);
        return [new TextDecoder().decode(new Uint8Array(bytes))];
      };
    case "Replace": {
      const re = pattern(d["pattern"], "g");
      const content = String(d["content"]);
      return (tokens) => tokens.map((t) => t.replace(re, () => content));
    }
    case "ByteFallback":
      return (tokens) => {
        const out: string[] = [];
        let pending: number[] = [];
        const flush = () => {
          if (pending.length) out.push(new TextDecoder().decode(new Uint8Array(pending)));
          pending = [];
        };
        for (const t of tokens) {
          const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(t);
          if (m) pending.push(parseInt(m[1]!, 16));
          else {
            flush();
            out.push(t);
          }
        }
        flush();
        return out;
      };
    case "Fuse":
      return (tokens) => [tokens.join("")];
    case "Strip": {
      const content = String(d["content"]);
      const start = Number(d["start"] ?? 0);
      const stop = Number(d["stop"] ?? 0);
      return (tokens) =>
        tokens.map((t) => {
          let s = t;
          for (let i = 0; i < start && s.startsWith(content); i++) s = s.slice(content.length);
          for (let i = 0; i < stop && s.endsWith(content); i++) s = s.slice(0, -content.length);
          return s;
        });
    }
    case "Metaspace": {
      const replacement = String(d["replacement"] ?? "▁");
      return (tokens) => {
        const s = tokens.join("").replaceAll(replacement, " ");
        return [s.startsWith(" ") ? s.slice(1) : s];
      };
    }
    default:
      return unsupported("decoder", d);
  }
}

/** The BPE model: a word (one pre-tokenized piece) to ids. */
function bpeModel(m: Json | undefined): {
  encode: (word: string) => number[];
  vocab: Map<string, number>;
} {
  if (!isObj(m) || m["type"] !== "BPE") return unsupported("model", m);
  if (!isObj(m["vocab"])) throw new TokenizerError("tokenizer.json's model has no `vocab`");
  if (m["continuing_subword_prefix"] || m["end_of_word_suffix"])
    return unsupported("BPE continuing_subword_prefix/end_of_word_suffix", "set");
  const vocab = new Map<string, number>();
  for (const [token, id] of Object.entries(m["vocab"])) vocab.set(token, Number(id));
  const ranks = new Map<string, number>();
  (Array.isArray(m["merges"]) ? m["merges"] : []).forEach((merge, rank) => {
    const [a, b] = Array.isArray(merge) ? merge.map(String) : String(merge).split(" ");
    ranks.set(`${a}\u0000${b}`, rank);
  });
  const byteFallback = m["byte_fallback"] === true;
  const unk = typeof m["unk_token"] === "string" ? m["unk_token"] : undefined;
  const fuseUnk = m["fuse_unk"] === true;
  const ignoreMerges = m["ignore_merges"] === true;

  const encode = (word: string): number[] => {
    if (ignoreMerges && vocab.has(word)) return [vocab.get(word)!];
    // Initial symbols: characters, with byte fallback or unk for those the vocabulary lacks.
    const symbols: string[] = [];
    for (const c of word) {
      if (vocab.has(c)) symbols.push(c);
      else {
        const bytes = [...new TextEncoder().encode(c)].map(
          (b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`,
        );
        if (byteFallback && bytes.every((t) => vocab.has(t))) symbols.push(...bytes);
        else if (unk !== undefined && vocab.has(unk)) {
          if (!(fuseUnk && symbols[symbols.length - 1] === unk)) symbols.push(unk);
        } else
          throw new TokenizerError(
            `the tokenizer has no token for ${JSON.stringify(c)} and no unknown token`,
            "use text the tokenizer's vocabulary covers",
          );
      }
    }
    // Merge the adjacent pair of lowest rank, leftmost first, until none is in the merges.
    for (;;) {
      let best = Infinity;
      let at = -1;
      for (let i = 0; i + 1 < symbols.length; i++) {
        const r = ranks.get(`${symbols[i]}\u0000${symbols[i + 1]}`);
        if (r !== undefined && r < best) {
          best = r;
          at = i;
        }
      }
      if (at < 0) break;
      symbols.splice(at, 2, symbols[at]! + symbols[at + 1]!);
    }
    return symbols.map((s) => {
      const id = vocab.get(s);
      if (id === undefined)
        throw new TokenizerError(`tokenizer.json merges into "${s}", which its vocab lacks`);
      return id;
    });
  };
  return { encode, vocab };
}

/** The tokens TemplateProcessing's `single` template adds around a sequence. */
function template(
  p: Json | undefined,
  vocab: Map<string, number>,
): { before: number[]; after: number[] } {
  const none = { before: [], after: [] };
  if (p === null || p === undefined) return none;
  if (!isObj(p)) return unsupported("post_processor", p);
  switch (p["type"]) {
    case "ByteLevel":
      return none;
    case "Sequence": {
      const parts = (p["processors"] as Json[]).map((x) => template(x, vocab));
      return {
        before: parts.flatMap((x) => x.before),
        after: parts.flatMap((x) => x.after),
      };
    }
    case "TemplateProcessing": {
      const out = { before: [] as number[], after: [] as number[] };
      let seen = false;
      const specials = isObj(p["special_tokens"]) ? p["special_tokens"] : {};
      for (const item of (p["single"] as Json[]) ?? []) {
        if (isObj(item) && isObj(item["Sequence"])) seen = true;
        else if (isObj(item) && isObj(item["SpecialToken"])) {
          const name = String(item["SpecialToken"]["id"]);
          const entry = specials[name];
          const ids =
            isObj(entry) && Array.isArray(entry["ids"])
              ? entry["ids"].map(Number)
              : vocab.has(name)
                ? [vocab.get(name)!]
                : [];
          (seen ? out.after : out.before).push(...ids);
        }
      }
      return out;
    }
    default:
      return unsupported("post_processor", p);
  }
}

/** A tokenizer from the parsed tokenizer.json (and tokenizer_config.json, if any). */
export function parseTokenizer(json: unknown, config: unknown = {}): Tokenizer {
  if (!isObj(json as Json)) throw new TokenizerError("tokenizer.json is not a JSON object");
  const t = json as Obj;
  const model = bpeModel(t["model"]);
  const normalize = normalizer(t["normalizer"]);
  const preTokenize = preTokenizer(t["pre_tokenizer"]);
  const decode = decoder(t["decoder"]);
  const idToToken = new Map<number, string>();
  for (const [token, id] of model.vocab) idToToken.set(id, token);
  const added: {
    content: string;
    id: number;
    special: boolean;
    normalized: boolean;
    lstrip: boolean;
    rstrip: boolean;
  }[] = [];
  for (const a of Array.isArray(t["added_tokens"]) ? t["added_tokens"] : []) {
    if (!isObj(a)) continue;
    const entry = {
      content: String(a["content"]),
      id: Number(a["id"]),
      special: a["special"] === true,
      normalized: a["normalized"] === true,
      lstrip: a["lstrip"] === true,
      rstrip: a["rstrip"] === true,
    };
    if (a["single_word"] === true)
      throw new TokenizerError(
        `tokenizer.json's added token ${JSON.stringify(entry.content)} is \`single_word\`, which lrk does not implement`,
        "lrk reads BPE tokenizers (GPT-2 and Llama families); see spec/language.md §18",
      );
    added.push(entry);
    idToToken.set(entry.id, entry.content);
    model.vocab.set(entry.content, entry.id);
  }
  const wrap = template(t["post_processor"], model.vocab);
  // Longest first, so that `<|end|>` never shadows `<|endoftext|>`.
  const byLength = [...added].sort((a, b) => b.content.length - a.content.length);
  // One group per token, so that a match names its token; `lstrip` and `rstrip` tokens take the
  // whitespace beside them into the match, as HF's added-token splitting strips it.
  const addedPattern = byLength.length
    ? new RegExp(
        byLength
          .map((a) => {
            const literal = a.content.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
            return `(${a.lstrip ? "\\s*" : ""}${literal}${a.rstrip ? "\\s*" : ""})`;
          })
          .join("|"),
        "gu",
      )
    : undefined;
  /** Text and added tokens' ids, in order: the added tokens are matched first, anywhere. */
  const splitAdded = (text: string): (string | number)[] => {
    if (!addedPattern) return [text];
    const out: (string | number)[] = [];
    let last = 0;
    for (const m of text.matchAll(addedPattern)) {
      if (m[0] === "") continue;
      if (m.index > last) out.push(text.slice(last, m.index));
      out.push(byLength[m.slice(1).findIndex((g) => g !== undefined)]!.id);
      last = m.index + m[0].length;
    }
    if (last < text.length) out.push(text.slice(last));
    return out;
  };
  const specialIds = new Set(added.filter((a) => a.special).map((a) => a.id));

  const cfg = (isObj(config as Json) ? config : {}) as Obj;
  const tokenName = (v: Json | undefined) =>
    typeof v === "string"
      ? v
      : isObj(v) && typeof v["content"] === "string"
        ? v["content"]
        : undefined;
  const bosToken = tokenName(cfg["bos_token"]);
  const eosToken = tokenName(cfg["eos_token"]);

  const encodeText = (text: string, atStart: boolean): number[] => {
    const ids: number[] = [];
    for (const piece of preTokenize(normalize(text), atStart)) ids.push(...model.encode(piece));
    return ids;
  };

  let maxId = -1;
  for (const id of idToToken.keys()) maxId = Math.max(maxId, id);
  return {
    vocabSize: maxId + 1,
    ...(bosToken !== undefined && model.vocab.has(bosToken)
      ? { bosToken, bosId: model.vocab.get(bosToken)! }
      : {}),
    ...(eosToken !== undefined && model.vocab.has(eosToken)
      ? { eosToken, eosId: model.vocab.get(eosToken)! }
      : {}),
    ...(typeof cfg["chat_template"] === "string" ? { chatTemplate: cfg["chat_template"] } : {}),
    encode(text, options = {}) {
      // Added tokens are matched first, anywhere; the text between them is encoded normally.
      const ids: number[] = [];
      splitAdded(text).forEach((piece, i) => {
        if (typeof piece === "number") ids.push(piece);
        else ids.push(...encodeText(piece, i === 0));
      });
      return options.special === false ? ids : [...wrap.before, ...ids, ...wrap.after];
    },
    decode(ids, options = {}) {
      const tokens: string[] = [];
      for (const id of ids) {
        if (options.skipSpecial && specialIds.has(id)) continue;
        const token = idToToken.get(id);
        if (token === undefined)
          throw new TokenizerError(`token id ${id} is outside the tokenizer's vocabulary`);
        tokens.push(token);
      }
      // Added tokens are decoded as themselves, between decoded runs of model tokens.
      let out = "";
      let run: string[] = [];
      const flush = () => {
        if (run.length) out += decode(run).join("");
        run = [];
      };
      for (const token of tokens) {
        if (added.some((a) => a.content === token)) {
          flush();
          out += token;
        } else run.push(token);
      }
      flush();
      return out;
    },
  };
}

function readJson(path: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new TokenizerError(
      code === "ENOENT"
        ? `cannot find ${what} (looked for ${path})`
        : `cannot read ${path}: ${(e as Error).message}`,
      "give the folder of a Hugging Face model that has a tokenizer.json",
    );
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new TokenizerError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
}

/** The files of GPT-2's original (slow) tokenizer, which older folders hold instead. */
const VOCAB_FILE = "vocab.json";
const MERGES_FILE = "merges.txt";

const isFile = (path: string) => {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
};

/** The folder has a tokenizer lrk reads: tokenizer.json, or vocab.json with merges.txt. */
export function hasTokenizer(folder: string): boolean {
  return (
    isFile(join(folder, "tokenizer.json")) ||
    (isFile(join(folder, VOCAB_FILE)) && isFile(join(folder, MERGES_FILE)))
  );
}

/**
 * The tokenizer of a Hugging Face folder (its tokenizer.json, with tokenizer_config.json when
 * present; without tokenizer.json, GPT-2's vocab.json and merges.txt), or of a tokenizer.json
 * file given directly.
 */
export function readTokenizer(path: string): Tokenizer {
  let folder = path;
  let file = join(path, "tokenizer.json");
  try {
    if (statSync(path).isFile()) {
      file = path;
      folder = join(path, "..");
    }
  } catch {
    // A missing path is reported by readJson, naming the file looked for.
  }
  let config: unknown = {};
  try {
    config = JSON.parse(readFileSync(join(folder, "tokenizer_config.json"), "utf8"));
  } catch {
    // tokenizer_config.json is optional: without it there is no chat template or bos/eos name.
  }
  const tokenizer =
    !isFile(file) && isFile(join(folder, VOCAB_FILE)) && isFile(join(folder, MERGES_FILE))
      ? parseTokenizer(slowGpt2Tokenizer(folder, config), withSpecialTokensMap(folder, config))
      : parseTokenizer(
          readJson(file, `tokenizer.json in "${basename(path)}"`),
          withSpecialTokensMap(folder, config),
        );
  const stopIds = generationStopIds(folder);
  return stopIds.length > 0 ? { ...tokenizer, stopIds } : tokenizer;
}

/** generation_config.json's `eos_token_id`s (none where the folder has no such file). */
function generationStopIds(folder: string): number[] {
  const path = join(folder, "generation_config.json");
  if (!isFile(path)) return [];
  const json = readJson(path, "generation_config.json");
  const eos = isObj(json as Json) ? (json as Obj)["eos_token_id"] : undefined;
  const ids = Array.isArray(eos) ? eos : eos === undefined || eos === null ? [] : [eos];
  if (!ids.every((id) => Number.isInteger(id) && (id as number) >= 0))
    throw new TokenizerError(
      `${path} has an \`eos_token_id\` of ${JSON.stringify(eos)}, not a token id or a list of them`,
    );
  return ids as number[];
}

/**
 * tokenizer_config.json with the bos and eos names of special_tokens_map.json where it names none
 * (older folders keep them only there), as transformers merges the two.
 */
function withSpecialTokensMap(folder: string, config: unknown): unknown {
  const path = join(folder, "special_tokens_map.json");
  if (!isFile(path)) return config;
  const map = readJson(path, "special_tokens_map.json");
  if (!isObj(map as Json)) return config;
  const merged: Obj = { ...(isObj(config as Json) ? (config as Obj) : {}) };
  for (const key of ["bos_token", "eos_token", "unk_token", "pad_token"])
    if (merged[key] === undefined || merged[key] === null)
      if ((map as Obj)[key] !== undefined) merged[key] = (map as Obj)[key]!;
  return merged;
}

/**
 * The tokenizer.json that GPT-2's fast tokenizer is converted to from vocab.json and merges.txt
 * (transformers' GPT2Converter): byte-level BPE with GPT-2's regex, no bos, ByteLevel decoding.
 * Special tokens (tokenizer_config.json's bos/eos/unk/pad and added_tokens_decoder, and
 * added_tokens.json) are matched before BPE, as the slow tokenizer splits on them.
 */
function slowGpt2Tokenizer(folder: string, config: unknown): Obj {
  const vocabPath = join(folder, VOCAB_FILE);
  const vocab = readJson(vocabPath, VOCAB_FILE);
  if (!isObj(vocab as Json) || !Object.values(vocab as Obj).every((v) => Number.isInteger(v)))
    throw new TokenizerError(`${vocabPath} is not an object of tokens and their ids`);
  const merges = readFileSync(join(folder, MERGES_FILE), "utf8")
    .split("\n")
    .map((line) => line.replace(/\r$/, ""))
    // the first line is `#version: 0.2`; HF skips it and blank lines
    .filter((line, i) => line !== "" && !(i === 0 && line.startsWith("#version")));
  for (const line of merges)
    if (line.split(" ").length !== 2)
      throw new TokenizerError(
        `${join(folder, MERGES_FILE)} has a line that is not two tokens: ${JSON.stringify(line)}`,
      );
  const cfg = (isObj(config as Json) ? config : {}) as Obj;
  const added = new Map<string, { id: number; special: boolean }>();
  const decoderEntries = isObj(cfg["added_tokens_decoder"]) ? cfg["added_tokens_decoder"] : {};
  for (const [id, entry] of Object.entries(decoderEntries))
    if (isObj(entry) && typeof entry["content"] === "string")
      added.set(entry["content"], { id: Number(id), special: entry["special"] === true });
  const addedFile = join(folder, "added_tokens.json");
  const extra = isFile(addedFile) ? readJson(addedFile, "added_tokens.json") : {};
  for (const [content, id] of Object.entries(isObj(extra as Json) ? (extra as Obj) : {}))
    if (Number.isInteger(id) && !added.has(content))
      added.set(content, { id: Number(id), special: false });
  for (const key of ["bos_token", "eos_token", "unk_token", "pad_token"]) {
    const v = cfg[key];
    const name = typeof v === "string" ? v : isObj(v) ? v["content"] : undefined;
    const id = typeof name === "string" ? (vocab as Obj)[name] : undefined;
    if (typeof name === "string" && typeof id === "number" && !added.has(name))
      added.set(name, { id, special: true });
  }
  const prefixSpace = cfg["add_prefix_space"] === true;
  return {
    added_tokens: [...added].map(([content, { id, special }]) => ({ id, content, special })),
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: prefixSpace, use_regex: true },
    post_processor: { type: "ByteLevel" },
    decoder: { type: "ByteLevel" },
    model: { type: "BPE", vocab: vocab as Obj, merges },
  };
}
