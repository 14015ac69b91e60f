// `std.data`: the data sources that ship with lrk (no downloads). This file knows their
// parameters and vocabularies, which programs need while compiling (`arith.vocab`); the runtime
// generates or reads the actual examples.
import type { Value } from "./values.js";

/**
 * The arithmetic task's tokens: digits 0–9 are ids 0–9, then `+ - * =`, then `.` (end of
 * answer) and ` ` (padding). `123+456=579.` is one example.
 */
export const arithmeticAlphabet = "0123456789+-*=. ";

interface SourceSpec {
  params: { name: string; kind: "number" | "string" | "bool" | "name"; default?: Value }[];
  vocab: (args: Map<string, Value>) => number;
  help: string;
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
    help: "std.data.two_moons(n: 1000, seed: 1)",
  },
  text: {
    params: [
      { name: "path", kind: "string" },
      { name: "context", kind: "number" },
      { name: "tokenizer", kind: "name", default: { kind: "builtin", name: "bytes" } },
    ],
    vocab: () => 256,
    help: 'std.data.text("corpus.txt", context: 128, tokenizer: bytes)',
  },
};

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
