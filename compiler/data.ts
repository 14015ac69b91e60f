// `std.data`: the data sources that ship with lrk (no downloads). This file knows their
// parameters, vocabularies and batch shapes, which programs need while compiling (`arith.vocab`,
// the step's input shapes); the runtime generates or reads the actual examples, never earlier
// than `lrkc check` or `lrkc train` opens them.
import type { DataSpec, FieldShape } from "./program.js";
import { ARITHMETIC_ALPHABET, arithmeticSequenceLength } from "./program.js";
import { tokenizerVocab } from "./tokenizer-vocab.js";
import type { DataSet, Value } from "./values.js";

export const arithmeticAlphabet = ARITHMETIC_ALPHABET;

type PlainArgs = DataSpec["args"];

interface SourceSpec {
  /** `tokenizer`: a name (`bytes`) or a string (a Hugging Face tokenizer folder). */
  params: {
    name: string;
    kind: "number" | "string" | "bool" | "name" | "tokenizer";
    default?: Value;
  }[];
  /** The token count; `from` is the program file (paths are relative to it). */
  vocab: (args: Map<string, Value>, from: string) => number | string;
  /** The batch fields at a batch size; a string is what is wrong with the arguments. */
  fields: (args: PlainArgs, batch: number, from: string) => Record<string, FieldShape> | string;
  help: string;
}

/** A whole number in [min, max], or what is wrong with it. */
function wholeNumber(name: string, v: unknown, min: number, max: number): number | string {
  if (typeof v === "number" && Number.isInteger(v) && v >= min && v <= max) return v;
  const range = max === Infinity ? `at least ${min}` : `from ${min} to ${max}`;
  return `\`${name}\` must be a whole number ${range}, not ${String(v)}`;
}

/**
 * Both splits' tokens: an example's last token is predicted, never read. Their ranges let the
 * compiler check an embedding table against the vocabulary; a target is -1 where there is nothing
 * to predict.
 */
function tokenFields(batch: number, length: number, vocab: number): Record<string, FieldShape> {
  const what = `the data's vocabulary is ${vocab}`;
  return {
    input: { shape: [batch, length], dtype: "i32", range: { min: 0, max: vocab - 1, what } },
    target: { shape: [batch, length], dtype: "i32", range: { min: -1, max: vocab - 1, what } },
  };
}

export const dataSources: Record<string, SourceSpec> = {
  arithmetic: {
    params: [
      { name: "ops", kind: "string", default: { kind: "string", value: "+" } },
      { name: "digits", kind: "number", default: { kind: "number", value: 3, integer: true } },
      { name: "seed", kind: "number", default: { kind: "number", value: 0, integer: true } },
      // false: `-` problems only with a ≥ b, so no result is negative
      { name: "negative", kind: "bool", default: { kind: "bool", value: true } },
      {
        name: "train_size",
        kind: "number",
        default: { kind: "number", value: 20000, integer: true },
      },
      {
        name: "valid_size",
        kind: "number",
        default: { kind: "number", value: 1000, integer: true },
      },
    ],
    vocab: () => arithmeticAlphabet.length,
    fields: (args, batch) => {
      const digits = wholeNumber("digits", args["digits"], 1, 6);
      if (typeof digits === "string") return digits;
      const ops = String(args["ops"]);
      if (ops.length === 0 || [...ops].some((op) => !"+-*".includes(op)))
        return `\`ops\` must be made of \`+\`, \`-\` and \`*\`, not "${ops}"`;
      const length = arithmeticSequenceLength(ops, digits) - 1;
      return tokenFields(batch, length, arithmeticAlphabet.length);
    },
    help: 'std.data.arithmetic(ops: "+-", digits: 3, seed: 7)',
  },
  /** Two interleaved half-circles in the plane: 2 features, 2 classes (`vocab` is the class count). */
  two_moons: {
    params: [
      { name: "n", kind: "number", default: { kind: "number", value: 1000, integer: true } },
      { name: "noise", kind: "number", default: { kind: "number", value: 0.1, integer: false } },
      { name: "seed", kind: "number", default: { kind: "number", value: 0, integer: true } },
    ],
    vocab: () => 2,
    fields: (_, batch) => ({
      x: { shape: [batch, 2], dtype: "f32" },
      y: {
        shape: [batch],
        dtype: "i32",
        range: { min: 0, max: 1, what: "the data has 2 classes" },
      },
    }),
    help: "std.data.two_moons(n: 1000, seed: 1)",
  },
  text: {
    params: [
      { name: "path", kind: "string" },
      { name: "context", kind: "number" },
      { name: "tokenizer", kind: "tokenizer", default: { kind: "builtin", name: "bytes" } },
    ],
    vocab: (args, from) => textVocab(args.get("tokenizer"), from),
    fields: (args, batch, from) => {
      const context = wholeNumber("context", args["context"], 1, 1 << 20);
      if (typeof context === "string") return context;
      // `bytes` (the default) arrives as its name, as the runtime reads it (runtime/data.ts)
      const tokenizer = args["tokenizer"];
      const folder = typeof tokenizer === "string" && tokenizer !== "bytes";
      const vocab = folder ? tokenizerVocab(tokenizer, from) : 256;
      return typeof vocab === "string" ? vocab : tokenFields(batch, context, vocab);
    },
    help: 'std.data.text("corpus.txt", context: 128, tokenizer: bytes)',
  },
  /**
   * Instruction data, one JSON object a line: `{"prompt", "completion"}` or `{"messages": […]}`,
   * tokenized with a Hugging Face tokenizer; only completion (assistant) tokens are targets.
   */
  jsonl: {
    params: [
      { name: "path", kind: "string" },
      { name: "tokenizer", kind: "string" },
      { name: "context", kind: "number" },
      { name: "seed", kind: "number", default: { kind: "number", value: 0, integer: true } },
    ],
    vocab: (args, from) => textVocab(args.get("tokenizer"), from),
    fields: (args, batch, from) => {
      const context = wholeNumber("context", args["context"], 1, 1 << 20);
      if (typeof context === "string") return context;
      const vocab = tokenizerVocab(String(args["tokenizer"]), from);
      return typeof vocab === "string" ? vocab : tokenFields(batch, context, vocab);
    },
    help: 'std.data.jsonl("train.jsonl", tokenizer: "models/gpt2", context: 256)',
  },
  tensors: tensorsSource(),
};

/** Token count of `tokenizer: bytes` (256) or of a tokenizer folder; a string is a problem. */
function textVocab(tokenizer: Value | undefined, from: string): number | string {
  if (tokenizer?.kind === "string") return tokenizerVocab(tokenizer.value, from);
  if (tokenizer?.kind === "builtin" && tokenizer.name !== "bytes")
    return `\`text\` has no tokenizer \`${tokenizer.name}\`: use \`bytes\` or the folder of a Hugging Face tokenizer (a string)`;
  return 256;
}

/**
 * Rows of tensors in safetensors files as examples: `input` and `target` name the tensors (a `*`
 * matches any part of a name, and pairs an input with its target). The program states the rows'
 * widths: the files are often a run's output not written yet when it is compiled or checked.
 */
function tensorsSource(): SourceSpec {
  return {
    params: [
      { name: "path", kind: "string" },
      { name: "input", kind: "string" },
      { name: "target", kind: "string" },
      { name: "input_width", kind: "number" },
      { name: "target_width", kind: "number" },
      { name: "valid", kind: "number", default: { kind: "number", value: 0, integer: true } },
      { name: "skip_empty", kind: "bool", default: { kind: "bool", value: false } },
      { name: "seed", kind: "number", default: { kind: "number", value: 0, integer: true } },
    ],
    vocab: () => 0,
    fields: (args, batch) => {
      const widths = ["input_width", "target_width", "valid"].map((name) =>
        wholeNumber(name, args[name], name === "valid" ? 0 : 1, 2 ** 31 - 1),
      );
      const problem = widths.find((w) => typeof w === "string");
      if (problem !== undefined) return problem;
      return {
        input: { shape: [batch, widths[0] as number], dtype: "f32" },
        target: { shape: [batch, widths[1] as number], dtype: "f32" },
      };
    },
    help: 'std.data.tensors("../runs/next/final.safetensors", input: "state:*:pairs_input", target: "state:*:pairs_target", input_width: 514, target_width: 257)',
  };
}

/** The `std.data` namespace value. */
export function dataModule(name: string): Value {
  return {
    kind: "namespace",
    name,
    members: (member) =>
      member in dataSources ? { kind: "builtin", name: `std.data.${member}` } : undefined,
    names: () => Object.keys(dataSources),
  };
}

/** The plain form of a resolved argument (a tokenizer name for `tokenizer: bytes`). */
function plain(v: Value): string | number | boolean {
  switch (v.kind) {
    case "number":
    case "bool":
    case "string":
      return v.value;
    case "builtin":
      return v.name;
    default:
      return String(v.kind);
  }
}

/**
 * A data declaration as the runtime receives it: arguments in plain form and the batch fields at
 * `batch`. A string is what is wrong with the arguments (reported at the declaration).
 */
export function dataSpec(
  dataset: DataSet,
  batch: number,
): DataSpec | { problem: string; help: string } {
  const name = dataset.source.replace(/^std\.data\./, "");
  const source = dataSources[name]!;
  const args: PlainArgs = {};
  for (const [key, value] of dataset.args) args[key] = plain(value);
  const fields = source.fields(args, batch, dataset.at.file.path);
  if (typeof fields === "string") return { problem: fields, help: `for example: ${source.help}` };
  return {
    source: name,
    args,
    vocab: dataset.vocab,
    ...(dataset.split ? { split: dataset.split } : {}),
    fields,
    help: `for example: ${source.help}`,
    at: dataset.at,
  };
}
