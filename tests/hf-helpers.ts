// Shared by the tests of Hugging Face checkpoint folders (hf-models, hf-layouts): compile a
// program loading a fixture folder of tests/fixtures/hf through std.models, run its predict entry,
// and compare logits and greedy tokens with the folder's reference.json (written by
// scripts/hf-fixtures.py from an independent PyTorch implementation).
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { expect } from "vitest";
import type { Tensor } from "../compiler/program.js";
import { SourceFile } from "../language/source.js";
import type { Device } from "../runtime/device.js";
import { numberToBfloat16, numberToHalf } from "../runtime/safetensors.js";
import { initialize } from "../runtime/trainer.js";
import { root } from "./helpers.js";
import { prepare, type TestRun } from "./program-helpers.js";

export const fixtures = join(root, "tests", "fixtures", "hf");
export const TOLERANCE = 1e-5;

export interface Reference {
  sequences: number[][];
  logits: number[][][];
  prompt: number[];
  greedy: number[];
}

export const reference = (folder: string): Reference =>
  JSON.parse(readFileSync(join(fixtures, folder, "reference.json"), "utf8")) as Reference;

/**
 * A program training `Model` from `folder`, compiled as if it were a file in `dir`. Its data fixes
 * the batch input's shape: arithmetic `-` problems of up to 3 digits are `i32[B, 11]`, room for
 * the 8-token sequences and for a 4-token prompt with 8 greedy tokens (11 positions read).
 */
export function program(
  model: "GPT2" | "Llama" | "Qwen2" | "Mistral",
  folder: string,
  dir = fixtures,
  settings = "",
): TestRun {
  const text = `import std.models.{${model}}
import std.optim.{adamw}

data sub = std.data.arithmetic(ops: "-", digits: 3, negative: false)

train hf {
  model ${model}(hf_config("${folder}"))
  data sub
  init "${folder}"
  loss cross_entropy(model(batch.input), batch.target)
  optimize ** with adamw(lr: 1e-4)
  batch 2${settings ? `\n  ${settings}` : ""}
}
`;
  const { run, diagnostics } = prepare(new SourceFile(join(dir, "main.lrk"), text));
  if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  return run;
}

/** The batch input's length T (fixed by the data). */
export const inputLength = (run: TestRun) =>
  Number(run.step.inputs.find((i) => i.name === "batch.input")!.shape[1]);

/** Logits [2, T, vocab] of two token rows (each padded with 0 to T: the model is causal). */
export async function logitsOf(
  device: Device,
  run: TestRun,
  store: ReadonlyMap<string, Tensor>,
  rows: number[][],
): Promise<{ data: ArrayLike<number>; T: number; vocab: number }> {
  const T = inputLength(run);
  const input = new Int32Array(2 * T);
  rows.forEach((row, b) => input.set(row.slice(0, T), b * T));
  const feeds = new Map(store);
  feeds.set("batch.input", { shape: [2, T], data: input });
  const predict = run.step.predict!;
  const out = (await device.run(run.step, predict, feeds)).get("logits")!;
  return { data: out.data, T, vocab: Number(out.shape[2]) };
}

/** max |a - ref| / max |ref| over the reference's positions. */
export function logitsError(
  got: { data: ArrayLike<number>; T: number; vocab: number },
  ref: Reference,
) {
  let diff = 0;
  let scale = 0;
  ref.logits.forEach((seq, b) =>
    seq.forEach((row, t) =>
      row.forEach((want, v) => {
        const have = got.data[(b * got.T + t) * got.vocab + v]!;
        diff = Math.max(diff, Math.abs(have - want));
        scale = Math.max(scale, Math.abs(want));
      }),
    ),
  );
  return diff / scale;
}

/** Greedy decoding by recomputing the whole prefix (no KV cache yet). */
export async function greedy(
  device: Device,
  run: TestRun,
  store: ReadonlyMap<string, Tensor>,
  prompt: number[],
  count: number,
): Promise<number[]> {
  const tokens = [...prompt];
  for (let i = 0; i < count; i++) {
    const { data, T, vocab } = await logitsOf(device, run, store, [tokens, tokens]);
    expect(tokens.length).toBeLessThanOrEqual(T);
    const at = (tokens.length - 1) * vocab;
    let best = 0;
    for (let v = 1; v < vocab; v++) if (data[at + v]! > data[at + best]!) best = v;
    tokens.push(best);
  }
  return tokens.slice(prompt.length);
}

export async function expectMatches(device: Device, run: TestRun, folder: string) {
  const ref = reference(folder);
  const store = await initialize(run.program, device);
  const err = logitsError(await logitsOf(device, run, store, ref.sequences), ref);
  expect(err).toBeLessThan(TOLERANCE);
  expect(await greedy(device, run, store, ref.prompt, ref.greedy.length)).toEqual(ref.greedy);
}

export type Stored = "F64" | "F32" | "F16" | "BF16" | "I64" | "I32" | "BOOL";

/** A raw tensor as a checkpoint stores it: dtype, shape and the values to encode. */
export interface Raw {
  dtype: Stored;
  shape: number[];
  values: ArrayLike<number>;
}

function encode({ dtype, values }: Raw): Buffer {
  const n = values.length;
  switch (dtype) {
    case "F64":
      return Buffer.from(Float64Array.from(values).buffer);
    case "F32":
      return Buffer.from(Float32Array.from(values).buffer);
    case "F16":
      return Buffer.from(Uint16Array.from(values, numberToHalf).buffer);
    case "BF16":
      return Buffer.from(Uint16Array.from(values, numberToBfloat16).buffer);
    case "I64":
      return Buffer.from(BigInt64Array.from({ length: n }, (_, i) => BigInt(values[i]!)).buffer);
    case "I32":
      return Buffer.from(Int32Array.from(values).buffer);
    case "BOOL":
      return Buffer.from(Uint8Array.from(values, (x) => (x ? 1 : 0)));
  }
}

/** A safetensors file written byte by byte, as torch's safetensors writes one. */
export function writeRaw(
  path: string,
  tensors: ReadonlyMap<string, Raw>,
  metadata?: Record<string, string>,
): void {
  const header: Record<string, unknown> = metadata ? { __metadata__: metadata } : {};
  const blobs: Buffer[] = [];
  let offset = 0;
  for (const [name, raw] of [...tensors].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const bytes = encode(raw);
    header[name] = {
      dtype: raw.dtype,
      shape: raw.shape,
      data_offsets: [offset, offset + bytes.length],
    };
    blobs.push(bytes);
    offset += bytes.length;
  }
  const json = Buffer.from(JSON.stringify(header));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([length, json, ...blobs]));
}
