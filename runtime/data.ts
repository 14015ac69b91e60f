// The runtime side of `std.data`: generates or reads the examples of the shipped data sources and
// cuts them into batches. Everything is deterministic (seeded, no network, no dependencies).
//
// Batches are a pure function of (split, batch index, batch size): resuming from a checkpoint only
// needs the step number. Train batches walk a per-epoch shuffled order: position p = index * B + r
// is example perm(epoch)[p mod N] with epoch = floor(p / N), and perm(epoch) is a Fisher–Yates
// shuffle seeded by (seed, epoch). So every train example appears exactly once per epoch and a
// batch may straddle two epochs (train batches are always full). Valid batches are in order and
// the last one may be short (`examples` < batch size, and the shapes have the real size).
import { readFileSync, statSync } from "node:fs";
import type { Location } from "../language/diagnostics.js";
import { dirname, resolve } from "node:path";
import {
  ARITHMETIC_ALPHABET as arithmeticAlphabet,
  arithmeticSequenceLength,
  type DataSpec,
} from "../compiler/program.js";

export { arithmeticSequenceLength };
import { mixSeed, Rng } from "./rng.js";
import { openTensors, type TensorsSource } from "./tensor-data.js";
import { jsonl, type JsonlSource } from "./jsonl-data.js";
import { readTokenizer, TokenizerError, type Tokenizer } from "./tokenizer.js";

/** A user-facing problem with a data set; reported at `at`, the declaration, once known. */
export class DataError extends Error {
  at?: Location;

  constructor(
    message: string,
    readonly help?: string,
  ) {
    super(message);
    this.name = "DataError";
  }
}

export type Split = "train" | "valid";

export type { FieldShape } from "../compiler/program.js";
import type { FieldShape } from "../compiler/program.js";

export interface Field extends FieldShape {
  data: Float32Array | Int32Array;
}

export interface Batch {
  fields: Record<string, Field>;
  /** Real examples in this batch: the batch size, or fewer for the last valid batch. */
  examples: number;
}

export interface DataSource {
  readonly kind: "arithmetic" | "two_moons" | "text" | "tensors" | "jsonl";
  /** Token count (arithmetic 16, text 256) or class count (two_moons 2). */
  readonly vocab: number;
  /** Examples in the train split (for `text`: possible window start offsets). */
  readonly trainSize: number;
  /** Examples in the valid split (for `text`: windows the in-order valid pass uses). */
  readonly validSize: number;
  /** Something the user should know: a split was shrunk, or valid overlaps train. */
  readonly note?: string;
  /** The field shapes of a full batch of `batch` examples. */
  fieldShapes(batch: number): Record<string, FieldShape>;
  /**
   * Train: batch `index` of the endless per-epoch shuffled stream (always `batchSize` examples).
   * Valid: examples [index * batchSize, …) in order; the last batch may be short, and an index
   * past the end throws a RangeError.
   */
  batch(split: Split, index: number, batchSize: number): Batch;
  /** Batches that cover a split once in order: ceil(size / batchSize). */
  batchCount(split: Split, batchSize: number): number;
  /** Where train batch `index` starts in the shuffled stream. */
  trainPosition(index: number, batchSize: number): { epoch: number; offset: number };
}

export interface ArithmeticSource extends DataSource {
  readonly kind: "arithmetic";
  /** The operators in use, deduplicated, in the order given: `+-`. */
  readonly ops: string;
  readonly digits: number;
  /** L: tokens per example (the longest possible example, right-padded with ` `). */
  readonly sequenceLength: number;
  /** Example `i` of a split (in generation order), unpadded: `123+456=579.` */
  example(split: Split, i: number): string;
  /**
   * For exact-match evaluation, in order (both splits; the last batch may be short): the prompt
   * tokens up to and including `=`, and the expected answers without the final `.` (`579`, `-333`).
   */
  answers(
    split: Split,
    index: number,
    batchSize: number,
  ): { prompts: number[][]; answers: string[] };
  /** Token ids of arithmetic text; throws a RangeError on a character outside the alphabet. */
  encode(text: string): number[];
  /** Text of token ids; ids outside the alphabet (such as -1) become `?`. */
  decode(ids: ArrayLike<number>): string;
}

export interface TwoMoonsSource extends DataSource {
  readonly kind: "two_moons";
}

export interface TextSource extends DataSource {
  readonly kind: "text";
  readonly context: number;
  /** The absolute path that was read. */
  readonly path: string;
  /** Bytes [0, trainEnd) are train; valid is bytes [validStart, end of file). */
  readonly trainEnd: number;
  readonly validStart: number;
  /** The Hugging Face tokenizer of `tokenizer: "folder"`; absent for bytes. */
  readonly tokenizer?: Tokenizer;
}

export type OpenedSource =
  ArithmeticSource | TwoMoonsSource | TextSource | TensorsSource | JsonlSource;

export interface OpenOptions {
  /** Directory that `text` paths are relative to; default: the directory of `dataset.at.file`. */
  baseDir?: string;
  /** Seed of the train windows of `text` (which has no seed parameter); default 0. */
  seed?: number;
}

/** Opens a data set; throws a DataError for user-facing problems (report them at `spec.at`). */
export function openDataSet(spec: DataSpec, options: OpenOptions = {}): OpenedSource {
  const args = new Args(spec);
  switch (spec.source) {
    case "arithmetic":
      return arithmetic({
        ops: args.string("ops"),
        digits: args.integer("digits"),
        seed: args.integer("seed"),
        negative: args.bool("negative"),
        trainSize: args.integer("train_size"),
        validSize: args.integer("valid_size"),
      });
    case "two_moons":
      return twoMoons({
        n: args.integer("n"),
        noise: args.number("noise"),
        seed: args.integer("seed"),
      });
    case "text":
      return text({
        path: args.string("path"),
        context: args.integer("context"),
        tokenizer: args.string("tokenizer"),
        baseDir: options.baseDir ?? dirname(spec.at.file.path),
        seed: options.seed ?? 0,
      });
    case "tensors":
      return openTensors(spec, {
        valid: args.integer("valid"),
        skipEmpty: args.bool("skip_empty"),
        seed: args.integer("seed"),
      });
    case "jsonl":
      return jsonl({
        path: args.string("path"),
        tokenizer: args.string("tokenizer"),
        context: args.integer("context"),
        seed: args.integer("seed"),
        baseDir: options.baseDir ?? dirname(spec.at.file.path),
      });
    default:
      throw new DataError(
        `\`std.data\` has no data source \`${spec.source}\``,
        "the data sources are arithmetic, two_moons, text, tensors, jsonl",
      );
  }
}

// ---------------------------------------------------------------------------------------------
// Arguments

/** Typed reads of a declaration's (already resolved, defaults applied) arguments. */
class Args {
  constructor(private readonly spec: DataSpec) {}

  private fail(what: string, name: string): never {
    throw new DataError(`\`${this.spec.source}\` needs ${what} for \`${name}\``, this.spec.help);
  }

  number(name: string): number {
    const v = this.spec.args[name];
    if (typeof v !== "number" || !Number.isFinite(v)) this.fail("a number", name);
    return v;
  }

  integer(name: string): number {
    const n = this.number(name);
    if (!Number.isInteger(n))
      throw new DataError(`\`${name}\` must be a whole number, not ${n}`, this.spec.help);
    return n;
  }

  bool(name: string): boolean {
    const v = this.spec.args[name];
    if (typeof v !== "boolean") this.fail("true or false", name);
    return v;
  }

  string(name: string): string {
    const v = this.spec.args[name];
    if (typeof v !== "string") this.fail("a string", name);
    return v;
  }
}

export function checkInteger(name: string, value: number, min: number, max: number, help?: string) {
  if (!Number.isInteger(value) || value < min || value > max) {
    const range =
      max === Infinity ? `at least ${min}` : `from ${min} to ${max.toLocaleString("en-US")}`;
    throw new DataError(`\`${name}\` must be a whole number ${range}, not ${value}`, help);
  }
}

export function checkBatchArgs(index: number, batchSize: number): void {
  if (!Number.isInteger(index) || index < 0)
    throw new RangeError(`batch index must be a non-negative integer, not ${index}`);
  if (!Number.isInteger(batchSize) || batchSize < 1)
    throw new RangeError(`batch size must be a positive integer, not ${batchSize}`);
}

/** The in-order range of valid (or in-order train) batch `index`: [start, start + count). */
export function inOrder(split: Split, size: number, index: number, batchSize: number) {
  checkBatchArgs(index, batchSize);
  const start = index * batchSize;
  if (start >= size)
    throw new RangeError(
      `${split} batch ${index} (batch size ${batchSize}) is past the end: the split has ${size} examples`,
    );
  return { start, count: Math.min(batchSize, size - start) };
}

// Streams: each purpose draws from its own seed so they never interfere.
const STREAM_ARITH = 1;
const STREAM_SHUFFLE = 2;
const STREAM_MOONS = 3;
const STREAM_TEXT = 4;

/** The endless train stream: every example once per epoch, in an order seeded by (seed, epoch). */
export class EpochOrder {
  private cache = new Map<number, Int32Array>();

  constructor(
    readonly size: number,
    readonly seed: number,
  ) {}

  permutation(epoch: number): Int32Array {
    let p = this.cache.get(epoch);
    if (!p) {
      p = new Rng(mixSeed(this.seed, STREAM_SHUFFLE, epoch)).permutation(this.size);
      if (this.cache.size >= 2) this.cache.delete(this.cache.keys().next().value!);
      this.cache.set(epoch, p);
    }
    return p;
  }

  position(index: number, batchSize: number): { epoch: number; offset: number } {
    checkBatchArgs(index, batchSize);
    const p = index * batchSize;
    return { epoch: Math.floor(p / this.size), offset: p % this.size };
  }

  /** The example ids of train batch `index`. */
  indices(index: number, batchSize: number): Int32Array {
    const out = new Int32Array(batchSize);
    let { epoch, offset } = this.position(index, batchSize);
    let perm = this.permutation(epoch);
    for (let r = 0; r < batchSize; r++) {
      out[r] = perm[offset++]!;
      if (offset === this.size) {
        offset = 0;
        perm = this.permutation(++epoch);
      }
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// arithmetic

const EQUALS = arithmeticAlphabet.indexOf("=");
const DOT = arithmeticAlphabet.indexOf(".");
const PAD = arithmeticAlphabet.indexOf(" ");
const ALLOWED_OPS = "+-*";
/** A cap on train_size + valid_size, so that a typo fails clearly instead of exhausting memory. */
export const MAX_ARITHMETIC_EXAMPLES = 5_000_000;

export interface ArithmeticParams {
  ops: string;
  digits: number;
  seed: number;
  /** false: `-` problems only with a ≥ b (no negative results). Default true. */
  negative?: boolean;
  trainSize: number;
  validSize: number;
}

const ARITH_HELP = 'for example: std.data.arithmetic(ops: "+-", digits: 3, seed: 7)';

export function arithmetic(params: ArithmeticParams): ArithmeticSource {
  const { digits, seed } = params;
  if (params.ops.length === 0)
    throw new DataError("`ops` is empty: give at least one of `+`, `-`, `*`", ARITH_HELP);
  for (const c of params.ops) {
    if (!ALLOWED_OPS.includes(c))
      throw new DataError(
        `\`ops\` has ${JSON.stringify(c)}, which is not an operator arithmetic knows`,
        'the operators are `+`, `-` and `*`, for example ops: "+-"',
      );
  }
  const ops = [...new Set(params.ops)].join("");
  checkInteger("digits", digits, 1, 6, ARITH_HELP);
  checkInteger("seed", seed, -(2 ** 53), 2 ** 53, ARITH_HELP);
  checkInteger("train_size", params.trainSize, 1, MAX_ARITHMETIC_EXAMPLES, ARITH_HELP);
  checkInteger("valid_size", params.validSize, 1, MAX_ARITHMETIC_EXAMPLES, ARITH_HELP);
  if (params.trainSize + params.validSize > MAX_ARITHMETIC_EXAMPLES)
    throw new DataError(
      `train_size + valid_size is ${params.trainSize + params.validSize}, more than the ${MAX_ARITHMETIC_EXAMPLES.toLocaleString("en-US")} arithmetic generates`,
      ARITH_HELP,
    );

  // The problem space: (operator, a, b) with 0 ≤ a, b < 10^digits, keyed op·base² + a·base + b;
  // without negative results, `-` keeps only a ≥ b.
  const base = 10 ** digits;
  const nonNegative = params.negative === false;
  const allowed = (op: number, a: number, b: number) => !(nonNegative && ops[op] === "-" && a < b);
  const subtractions = nonNegative && ops.includes("-") ? (base * (base - 1)) / 2 : 0;
  const space = ops.length * base * base - subtractions;
  let validN = params.validSize;
  let trainN = params.trainSize;
  let note: string | undefined;
  if (validN + trainN > space) {
    validN = Math.min(validN, Math.floor(space / 2));
    trainN = Math.min(trainN, space - validN);
    note =
      `only ${space} distinct problems exist for ops "${ops}" with ${digits} digit${digits > 1 ? "s" : ""}: ` +
      `the valid split has ${validN} (asked for ${params.validSize}) and train ${trainN} ` +
      `(asked for ${params.trainSize})`;
  }
  const total = validN + trainN;
  const rng = new Rng(mixSeed(seed, STREAM_ARITH));
  const keys = new Float64Array(total);
  if (2 * total >= space) {
    // Dense: a partial Fisher–Yates over the whole space (space ≤ 2·total, so this is small).
    const all = new Int32Array(space);
    for (let key = 0, i = 0; i < space; key++) {
      const b = key % base;
      const a = Math.floor(key / base) % base;
      if (allowed(Math.floor(key / (base * base)), a, b)) all[i++] = key;
    }
    for (let i = 0; i < total; i++) {
      const j = i + rng.int(space - i);
      const t = all[i]!;
      all[i] = all[j]!;
      all[j] = t;
      keys[i] = all[i]!;
    }
  } else {
    // Sparse: draw and skip repeats and disallowed problems (each draw is kept with probability
    // > 1/4).
    const seen = new Set<number>();
    for (let i = 0; i < total;) {
      const op = ops.length === 1 ? 0 : rng.int(ops.length);
      const a = rng.int(base);
      const b = rng.int(base);
      const key = (op * base + a) * base + b;
      if (seen.has(key) || !allowed(op, a, b)) continue;
      seen.add(key);
      keys[i++] = key;
    }
  }

  const L = arithmeticSequenceLength(ops, digits);
  const encodeSplit = (from: number, count: number) => {
    const tokens = new Uint8Array(count * L).fill(PAD);
    const eq = new Uint8Array(count);
    const dot = new Uint8Array(count);
    for (let i = 0; i < count; i++) {
      const key = keys[from + i]!;
      const b = key % base;
      const a = ((key - b) / base) % base;
      const op = ops[Math.floor(key / (base * base))]!;
      const result = op === "+" ? a + b : op === "-" ? a - b : a * b;
      const lhs = `${a}${op}${b}=`;
      const s = `${lhs}${result}.`;
      for (let j = 0; j < s.length; j++) tokens[i * L + j] = arithmeticAlphabet.indexOf(s[j]!);
      eq[i] = lhs.length - 1;
      dot[i] = s.length - 1;
    }
    return { tokens, eq, dot, size: count };
  };
  const splits = { valid: encodeSplit(0, validN), train: encodeSplit(validN, trainN) };
  const order = new EpochOrder(trainN, seed);
  const T = L - 1;

  const encode = (s: string): number[] =>
    [...s].map((c) => {
      const id = arithmeticAlphabet.indexOf(c);
      if (id < 0) throw new RangeError(`${JSON.stringify(c)} is not in the arithmetic alphabet`);
      return id;
    });
  const decode = (ids: ArrayLike<number>): string => {
    let s = "";
    for (let i = 0; i < ids.length; i++) s += arithmeticAlphabet[ids[i]!] ?? "?";
    return s;
  };
  const rowText = (split: Split, i: number): string => {
    const d = splits[split];
    if (!Number.isInteger(i) || i < 0 || i >= d.size)
      throw new RangeError(`${split} has no example ${i} (it has ${d.size})`);
    return decode(d.tokens.subarray(i * L, i * L + d.dot[i]! + 1));
  };

  return {
    kind: "arithmetic",
    vocab: arithmeticAlphabet.length,
    trainSize: trainN,
    validSize: validN,
    ...(note !== undefined ? { note } : {}),
    ops,
    digits,
    sequenceLength: L,
    fieldShapes: (batch) => ({
      input: { shape: [batch, T], dtype: "i32" },
      target: { shape: [batch, T], dtype: "i32" },
    }),
    batch(split, index, batchSize) {
      const d = splits[split];
      let ids: ArrayLike<number>;
      if (split === "train") ids = order.indices(index, batchSize);
      else {
        const { start, count } = inOrder(split, d.size, index, batchSize);
        ids = Array.from({ length: count }, (_, r) => start + r);
      }
      const n = ids.length;
      const input = new Int32Array(n * T);
      const target = new Int32Array(n * T);
      for (let r = 0; r < n; r++) {
        const e = ids[r]!;
        const row = e * L;
        const eq = d.eq[e]!;
        const dot = d.dot[e]!;
        for (let i = 0; i < T; i++) {
          input[r * T + i] = d.tokens[row + i]!;
          // target i predicts token i + 1: only the answer digits and the final `.` count
          target[r * T + i] = i + 1 > eq && i + 1 <= dot ? d.tokens[row + i + 1]! : -1;
        }
      }
      return {
        fields: {
          input: { shape: [n, T], dtype: "i32", data: input },
          target: { shape: [n, T], dtype: "i32", data: target },
        },
        examples: n,
      };
    },
    batchCount: (split, batchSize) => Math.ceil(splits[split].size / batchSize),
    trainPosition: (index, batchSize) => order.position(index, batchSize),
    example: rowText,
    answers(split, index, batchSize) {
      const d = splits[split];
      const { start, count } = inOrder(split, d.size, index, batchSize);
      const prompts: number[][] = [];
      const answers: string[] = [];
      for (let r = 0; r < count; r++) {
        const e = start + r;
        const row = d.tokens.subarray(e * L, e * L + d.dot[e]!);
        prompts.push(Array.from(row.subarray(0, d.eq[e]! + 1)));
        answers.push(decode(row.subarray(d.eq[e]! + 1)));
      }
      return { prompts, answers };
    },
    encode,
    decode,
  };
}

/**
 * Next-token logits of a causal LM: given `input` i32[batch, length] (row-major), returns
 * f32[batch, length, vocab] (row-major), where position t holds the logits for token t + 1.
 */
export type LogitsFn = (
  input: Int32Array,
  batch: number,
  length: number,
) => ArrayLike<number> | Promise<ArrayLike<number>>;

/**
 * Greedy completion of arithmetic prompts. Every call feeds the model the training shape
 * i32[prompts, L - 1], right-padded with ` ` (a causal model does not look ahead, so the padding
 * does not change the logits it reads), and appends the argmax at each prompt's end. Returns each
 * answer before its `.`, or null when the model did not end it with `.` within L tokens.
 */
export async function greedyAnswers(
  source: ArithmeticSource,
  prompts: number[][],
  logits: LogitsFn,
): Promise<(string | null)[]> {
  const B = prompts.length;
  const T = source.sequenceLength - 1;
  const input = new Int32Array(B * T).fill(PAD);
  const len = new Int32Array(B);
  const out: (string | null)[] = new Array<string | null>(B).fill(null);
  const text: string[] = new Array<string>(B).fill("");
  let open = 0;
  prompts.forEach((p, r) => {
    if (p.length < 1 || p.length > T)
      throw new RangeError(`prompt ${r} has ${p.length} tokens; the model takes 1 to ${T}`);
    input.set(p, r * T);
    len[r] = p.length;
    open++;
  });
  const done = new Uint8Array(B);
  while (open > 0) {
    const y = await logits(input, B, T);
    // a model's vocabulary may be larger than the alphabet's (a pretrained model on arithmetic)
    const V = y.length / (B * T);
    if (!Number.isInteger(V) || V < source.vocab)
      throw new RangeError(
        `the logits have ${y.length} values, not batch·length·vocab = ${B}·${T}·(${source.vocab} or more)`,
      );
    for (let r = 0; r < B; r++) {
      if (done[r]) continue;
      const at = (r * T + len[r]! - 1) * V;
      let best = 0;
      for (let v = 1; v < V; v++) if (y[at + v]! > y[at + best]!) best = v;
      if (best === DOT) {
        out[r] = text[r]!;
        done[r] = 1;
        open--;
      } else if (len[r] === T || best >= source.vocab) {
        // no room left and no `.` (unterminated), or a token outside the alphabet: wrong
        done[r] = 1;
        open--;
      } else {
        text[r] += arithmeticAlphabet[best]!;
        input[r * T + len[r]!] = best;
        len[r]!++;
      }
    }
  }
  return out;
}

/** Exact-match count: `predicted[i] === expected[i]` (null never matches). */
export function exactMatch(predicted: readonly (string | null)[], expected: readonly string[]) {
  if (predicted.length !== expected.length)
    throw new RangeError(`${predicted.length} predictions for ${expected.length} answers`);
  let correct = 0;
  for (let i = 0; i < expected.length; i++) if (predicted[i] === expected[i]) correct++;
  return {
    correct,
    total: expected.length,
    accuracy: expected.length ? correct / expected.length : 0,
  };
}

/** Exact-match accuracy of greedy answers over a split (default: all of valid, batches of 64). */
export async function arithmeticAccuracy(
  source: ArithmeticSource,
  logits: LogitsFn,
  options: { split?: Split; batchSize?: number; limit?: number } = {},
): Promise<{ correct: number; total: number; accuracy: number }> {
  const split = options.split ?? "valid";
  const batchSize = options.batchSize ?? 64;
  const size = Math.min(
    split === "train" ? source.trainSize : source.validSize,
    options.limit ?? Infinity,
  );
  let correct = 0;
  let total = 0;
  for (let k = 0; k * batchSize < size; k++) {
    const { prompts, answers } = source.answers(split, k, batchSize);
    const keep = Math.min(prompts.length, size - total);
    const predicted = await greedyAnswers(source, prompts.slice(0, keep), logits);
    const m = exactMatch(predicted, answers.slice(0, keep));
    correct += m.correct;
    total += m.total;
  }
  return { correct, total, accuracy: total ? correct / total : 0 };
}

// ---------------------------------------------------------------------------------------------
// two_moons

export const MAX_TWO_MOONS_POINTS = 10_000_000;
const MOONS_HELP = "for example: std.data.two_moons(n: 1000, seed: 1)";

/** sklearn's make_moons with t uniform over [0, π) (not evenly spaced), shuffled. */
function moons(n: number, noise: number, seed: number): { x: Float32Array; y: Int32Array } {
  const rng = new Rng(mixSeed(seed, STREAM_MOONS));
  const outer = Math.floor(n / 2);
  const px = new Float64Array(n);
  const py = new Float64Array(n);
  const label = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const t = Math.PI * rng.float();
    if (i < outer) {
      px[i] = Math.cos(t);
      py[i] = Math.sin(t);
    } else {
      px[i] = 1 - Math.cos(t);
      py[i] = 0.5 - Math.sin(t);
      label[i] = 1;
    }
  }
  for (let i = 0; i < n; i++) {
    px[i] += noise * rng.normal();
    py[i] += noise * rng.normal();
  }
  const perm = rng.permutation(n);
  const x = new Float32Array(2 * n);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const j = perm[i]!;
    x[2 * i] = px[j]!;
    x[2 * i + 1] = py[j]!;
    y[i] = label[j]!;
  }
  return { x, y };
}

export function twoMoons(params: { n: number; noise: number; seed: number }): TwoMoonsSource {
  const { n, noise, seed } = params;
  checkInteger("n", n, 2, MAX_TWO_MOONS_POINTS, MOONS_HELP);
  if (!Number.isFinite(noise) || noise < 0)
    throw new DataError(`\`noise\` must be a number ≥ 0, not ${noise}`, MOONS_HELP);
  checkInteger("seed", seed, -(2 ** 53), 2 ** 53, MOONS_HELP);
  const validN = Math.max(1, Math.floor(n / 5));
  const splits = { train: moons(n, noise, seed), valid: moons(validN, noise, seed + 1) };
  const order = new EpochOrder(n, seed);
  return {
    kind: "two_moons",
    vocab: 2,
    trainSize: n,
    validSize: validN,
    fieldShapes: (batch) => ({
      x: { shape: [batch, 2], dtype: "f32" },
      y: { shape: [batch], dtype: "i32" },
    }),
    batch(split, index, batchSize) {
      const d = splits[split];
      let ids: ArrayLike<number>;
      if (split === "train") ids = order.indices(index, batchSize);
      else {
        const { start, count } = inOrder(split, validN, index, batchSize);
        ids = Array.from({ length: count }, (_, r) => start + r);
      }
      const m = ids.length;
      const x = new Float32Array(2 * m);
      const y = new Int32Array(m);
      for (let r = 0; r < m; r++) {
        const e = ids[r]!;
        x[2 * r] = d.x[2 * e]!;
        x[2 * r + 1] = d.x[2 * e + 1]!;
        y[r] = d.y[e]!;
      }
      return {
        fields: {
          x: { shape: [m, 2], dtype: "f32", data: x },
          y: { shape: [m], dtype: "i32", data: y },
        },
        examples: m,
      };
    },
    batchCount: (split, batchSize) => Math.ceil((split === "train" ? n : validN) / batchSize),
    trainPosition: (index, batchSize) => order.position(index, batchSize),
  };
}

// ---------------------------------------------------------------------------------------------
// text

/** A Hugging Face tokenizer folder (relative to `baseDir`), its problems as DataErrors. */
export function openTokenizer(path: string, baseDir: string): Tokenizer {
  try {
    return readTokenizer(resolve(baseDir, path));
  } catch (e) {
    if (e instanceof TokenizerError) throw new DataError(e.message, e.help);
    throw e;
  }
}

/** A file's text as token ids (a leading byte-order mark dropped); problems as DataErrors. */
function encodeFile(tokenizer: Tokenizer, raw: Uint8Array, path: string): number[] {
  try {
    return tokenizer.encode(new TextDecoder().decode(raw).replace(/^\uFEFF/, ""), {
      special: false,
    });
  } catch (e) {
    if (e instanceof TokenizerError) throw new DataError(`"${path}": ${e.message}`, e.help);
    throw e;
  }
}

const TEXT_HELP = 'for example: std.data.text("corpus.txt", context: 128, tokenizer: bytes)';

export interface TextParams {
  path: string;
  context: number;
  tokenizer?: string;
  /** Directory that a relative `path` is resolved against. */
  baseDir: string;
  /** Seed of the random train windows. */
  seed?: number;
}

export function readBytes(path: string, full: string): Uint8Array {
  const fail = (e: unknown): never => {
    const code = (e as NodeJS.ErrnoException | undefined)?.code;
    if (code === "ENOENT" || code === "ENOTDIR")
      throw new DataError(
        `cannot find the file "${path}" (looked for ${full})`,
        "a relative path is relative to the directory of the .lrk file that declares the data",
      );
    if (code === "EISDIR")
      throw new DataError(`"${path}" is a directory, not a file`, "give the path of a text file");
    if (code === "EACCES" || code === "EPERM")
      throw new DataError(`cannot read "${path}": permission denied`);
    throw new DataError(`cannot read "${path}": ${(e as Error)?.message ?? String(e)}`);
  };
  let stat;
  try {
    stat = statSync(full);
  } catch (e) {
    return fail(e);
  }
  if (stat.isDirectory())
    throw new DataError(`"${path}" is a directory, not a file`, "give the path of a text file");
  if (!stat.isFile()) throw new DataError(`"${path}" is not a regular file`);
  try {
    const buf = readFileSync(full);
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  } catch (e) {
    return fail(e);
  }
}

/**
 * Byte-level text. Train is the first 90% of the bytes and valid the last 10%; when that 10% is
 * shorter than context + 1 bytes, train is the whole file and valid its last context + 1 bytes
 * (they overlap, and `note` says so). Train batch `index` takes windows of context + 1 bytes at
 * random offsets seeded by (seed, index); valid batches take consecutive windows with stride
 * `context`, so every valid byte after the first is a target exactly once.
 */
export function text(params: TextParams): TextSource {
  const { path, context } = params;
  if (path === "") throw new DataError("`path` is empty", TEXT_HELP);
  checkInteger("context", context, 1, 2 ** 31 - 1, TEXT_HELP);
  const full = resolve(params.baseDir, path);
  const tokenizer =
    params.tokenizer === undefined || params.tokenizer === "bytes"
      ? undefined
      : openTokenizer(params.tokenizer, params.baseDir);
  const raw = readBytes(path, full);
  // With a tokenizer, the windows are of token ids (and the messages below count tokens).
  const bytes: ArrayLike<number> = tokenizer ? encodeFile(tokenizer, raw, path) : raw;
  const n = bytes.length;
  const unit = tokenizer ? "token" : "byte";
  if (n === 0) throw new DataError(`"${path}" is empty`, "text needs a file with some text in it");
  if (n < context + 1)
    throw new DataError(
      `"${path}" has ${n} ${unit}${n === 1 ? "" : "s"}, fewer than context + 1 = ${context + 1}`,
      n >= 2
        ? `use a context of at most ${n - 1}, or a longer file`
        : `text needs a file of at least 2 ${unit}s`,
    );

  let trainEnd = Math.floor(0.9 * n);
  let validStart = trainEnd;
  let note: string | undefined;
  if (n - validStart < context + 1) {
    trainEnd = n;
    validStart = n - (context + 1);
    note =
      `"${path}" is short for context ${context}: its last 10% is under ${context + 1} ${unit}s, ` +
      `so train is the whole file and valid its last ${context + 1} ${unit}s (they overlap)`;
  }
  const trainWindows = trainEnd - context;
  const validWindows = Math.floor((n - validStart - 1) / context);
  const seed = params.seed ?? 0;

  const windows = (starts: ArrayLike<number>): Batch => {
    const m = starts.length;
    const input = new Int32Array(m * context);
    const target = new Int32Array(m * context);
    for (let r = 0; r < m; r++) {
      const s = starts[r]!;
      for (let i = 0; i < context; i++) {
        input[r * context + i] = bytes[s + i]!;
        target[r * context + i] = bytes[s + i + 1]!;
      }
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
    kind: "text",
    vocab: tokenizer?.vocabSize ?? 256,
    trainSize: trainWindows,
    validSize: validWindows,
    ...(note !== undefined ? { note } : {}),
    context,
    path: full,
    ...(tokenizer ? { tokenizer } : {}),
    trainEnd,
    validStart,
    fieldShapes: (batch) => ({
      input: { shape: [batch, context], dtype: "i32" },
      target: { shape: [batch, context], dtype: "i32" },
    }),
    batch(split, index, batchSize) {
      if (split === "train") {
        checkBatchArgs(index, batchSize);
        const rng = new Rng(mixSeed(seed, STREAM_TEXT, index));
        const starts = new Int32Array(batchSize);
        for (let r = 0; r < batchSize; r++) starts[r] = rng.int(trainWindows);
        return windows(starts);
      }
      const { start, count } = inOrder(split, validWindows, index, batchSize);
      return windows(Array.from({ length: count }, (_, r) => validStart + (start + r) * context));
    },
    batchCount: (split, batchSize) =>
      Math.ceil((split === "train" ? trainWindows : validWindows) / batchSize),
    trainPosition(index, batchSize) {
      checkBatchArgs(index, batchSize);
      const p = index * batchSize;
      return { epoch: Math.floor(p / trainWindows), offset: p % trainWindows };
    },
  };
}
