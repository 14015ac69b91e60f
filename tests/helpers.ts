// Shared test helpers: parsing text, comparing ASTs without spans, finding the .lrk files, the
// programs several test files train, running `lrkc`.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Tensor } from "../runtime/interpreter.js";
import { expect } from "vitest";
import { parse, type ParseResult } from "../language/parse.js";
import { SourceFile } from "../language/source.js";

export const root = fileURLToPath(new URL("..", import.meta.url));

export function parseText(text: string, path = "test.lrk"): ParseResult & { file: SourceFile } {
  const file = new SourceFile(path, text);
  return { ...parse(file), file };
}

/** A deep copy with every `span` removed, for comparing trees modulo positions. */
export function withoutSpans(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutSpans);
  if (value === null || typeof value !== "object") return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (k === "span" || v === undefined) continue;
    out[k] = withoutSpans(v);
  }
  return out;
}

/** Every .lrk file under examples/ and stdlib/, as paths relative to the repository root. */
export function lrkFiles(): string[] {
  const out: string[] = [];
  for (const dir of ["examples", "stdlib"]) {
    for (const name of readdirSync(join(root, dir)).sort()) {
      if (name.endsWith(".lrk")) out.push(join(dir, name));
    }
  }
  return out;
}

export function readRepoFile(path: string): string {
  return readFileSync(join(root, path), "utf8");
}

/** The largest |a − b| over a tensor, relative to the tensor's largest |b|. */
export function relativeDiff(a: Tensor, b: Tensor): number {
  let scale = 0;
  for (const v of b.data) scale = Math.max(scale, Math.abs(v));
  let worst = 0;
  for (let i = 0; i < b.data.length; i++) {
    worst = Math.max(worst, Math.abs(a.data[i]! - b.data[i]!) / Math.max(scale, 1e-30));
  }
  return worst;
}

/** examples/tiny_lm.lrk (the TinyLM model), optionally with its token embedding drawn at `tokenStd`. */
export function tinyLmSource(tokenStd?: number): string {
  const text = readRepoFile("examples/tiny_lm.lrk");
  if (tokenStd === undefined) return text;
  const drawn = text.replace(
    "tok = Embedding(vocab, d)",
    `tok = Embedding(vocab, d, init_std: ${tokenStd})`,
  );
  if (drawn === text)
    throw new Error("examples/tiny_lm.lrk no longer declares `tok = Embedding(vocab, d)`");
  return drawn;
}

/**
 * The LoRA fine-tune the CPU and WebGPU training tests run: TinyLM at d 16, one layer, LoRA on q
 * and v. There is no pretrained checkpoint, so the base is a frozen random model whose output head
 * is tied to the token embedding; drawn at TinyLM's std 0.02 it keeps the logits within about ±0.3
 * whatever the adapters do, so the embedding is drawn at std 0.3 to give the head room to learn.
 */
export function loraTinyLmProgram(train: string, steps: number): string {
  return `${tinyLmSource(0.3)}
import std.adapters.{lora}
import std.optim.{adamw}

data arith = std.data.arithmetic(ops: "+", digits: 1, seed: 3)

train ${train} {
  model TinyLM(vocab: arith.vocab, d: 16, layers: 1, heads: 2, ctx: 16)
  data arith
  loss cross_entropy(model(batch.input), batch.target)
  freeze **
  adapt blocks.*.attn.{q, v} with lora(rank: 4, alpha: 8)
  optimize adapters with adamw(lr: 1e-2)
  steps ${steps}
  batch 16
  seed 1
}
`;
}

/** bin/lrkc.js, for tests that run the command line. */
export const lrkcBin = join(root, "bin", "lrkc.js");

export interface MoonsOptions {
  /** Examples in the two-moons data set. */
  n?: number;
  steps?: number;
  lr?: string;
  checkpointEvery?: number;
  /** Lines added at the end of the train block. */
  extra?: string;
  /** Import lines added after the optimizer's (each ending in a newline). */
  imports?: string;
}

/**
 * The runs tests train: a two-layer classifier on two moons, train block `run` (batch 16, AdamW),
 * checkpointing every few steps. Small enough for the CPU interpreter in a fraction of a second.
 */
export function moonsProgram(o: MoonsOptions = {}): string {
  return `import std.nn.{Linear}
import std.optim.{adamw}
${o.imports ?? ""}
data moons = std.data.two_moons(n: ${o.n ?? 400}, seed: 3)

model Net(hidden: int = 16) {
  l1 = Linear(2, hidden)
  l2 = Linear(hidden, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] = l2(gelu(l1(x)))
}

train run {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with adamw(lr: ${o.lr ?? "1e-2"})
  steps ${o.steps ?? 40}
  batch 16
  checkpoint every ${o.checkpointEvery ?? 5}
  ${o.extra ?? ""}
}
`;
}

/** A fresh folder holding `text` as run.lrk, and the run folder `out` a run there would use. */
export function runSetup(
  text: string,
  prefix = "lrk-run-",
): { dir: string; file: string; out: string } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const file = join(dir, "run.lrk");
  writeFileSync(file, text);
  return { dir, file, out: join(dir, "out") };
}

/** |a_i − b_i| <= tol · max(1, |b_i|) for every i, with the worst offender in the message. */
export function expectAllClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  what: string,
): void {
  expect(actual.length, `${what}: length`).toBe(expected.length);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < expected.length; i++) {
    const e = Math.abs(actual[i]! - expected[i]!) / Math.max(1, Math.abs(expected[i]!));
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  expect(
    worst,
    `${what}: element ${at}: ${actual[at]} vs ${expected[at]} (relative error ${worst})`,
  ).toBeLessThanOrEqual(tol);
}

/** `lrkc <args>` in a child process: its exit status and output. */
export function lrkc(args: string[], options: { cwd?: string; timeout?: number } = {}) {
  return spawnSync(process.execPath, [lrkcBin, ...args], { encoding: "utf8", ...options });
}

/** The Hugging Face fixtures (scripts/hf-fixtures.py): tests/fixtures/hf/<model>. */
export const hfFixtures = join(root, "tests", "fixtures", "hf");

/**
 * A train block `tune` fine-tuning the GPT-2 fixture (`hf_config` and `init` from its folder) on
 * `data` (a `std.data…` call, declared as `dataName`) at batch 2. `imports` are lines after the
 * optimizer's import (each ending in a newline); `rules` are the block's lines between its loss and
 * its batch (adapt, freeze, optimize, steps).
 */
export function gpt2FixtureProgram(o: {
  data: string;
  dataName: string;
  rules: string;
  imports?: string;
  model?: string;
}): string {
  const folder = join(hfFixtures, o.model ?? "gpt2");
  return `import std.models.{GPT2}
import std.optim.{adamw}
${o.imports ?? ""}
data ${o.dataName} = ${o.data}

train tune {
  model GPT2(hf_config("${folder}"))
  data ${o.dataName}
  init "${folder}"
  loss cross_entropy(model(batch.input), batch.target)
${o.rules}
  batch 2
}
`;
}

/** Deterministic values in [-0.5, 0.5) from a fixed-seed LCG. */
export function values(count: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 32 - 0.5;
  }
  return out;
}
