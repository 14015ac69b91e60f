// The methods of issue 11's FRUGAL slice (FRUGAL's block variant, CoSO, rich/lazy init) trained
// on the WebGPU device and on the CPU interpreter: same losses, parameters and states after the
// run (expectTrainsAlike, within 1e-3). Needs a WebGPU adapter (lavapipe in CI).
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { expectTrainsAlike, prepare, type TestRun } from "./program-helpers.js";
import { root, tinyLmSource } from "./helpers.js";

const TOLERANCE = 1e-3;
let device: WebGpuDevice;

beforeAll(async () => {
  device = await WebGpuDevice.open();
}, 60_000);

afterAll(() => device?.destroy());

function program(rules: string, imports: string, steps: number): string {
  return `${tinyLmSource()}
${imports}

data arith = std.data.arithmetic(ops: "+", digits: 1, seed: 5)

train t {
  model TinyLM(vocab: arith.vocab, d: 8, layers: 1, heads: 2, ctx: 16)
  data arith
  loss cross_entropy(model(batch.input), batch.target)
${rules}
  steps ${steps}
  batch 4
}
`;
}

function compile(text: string): TestRun {
  const { run, diagnostics } = prepare(new SourceFile(join(root, "examples", "methods.lrk"), text));
  if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  return run;
}

describe("FRUGAL slice methods on WebGPU match the interpreter", () => {
  // The keys' bias has an exactly zero gradient, whose Adam step is rounding noise: frozen (as
  // webgpu-methods.test.ts does).
  const rest = "  freeze blocks.*.attn.k.bias\n";

  it("FRUGAL (blocks), random order, across two windows", async () => {
    const run = compile(
      program(
        rest +
          '  optimize blocks.*.{attn, mlp}.*.weight with frugal_block(lr: 1e-2, density: 0.5, period: 2, order: "random", seed: 3)\n  optimize ** with adamw(lr: 1e-2)',
        "import std.optim.{adamw, frugal_block}",
        4,
      ),
    );
    await expectTrainsAlike(device, run, 4, TOLERANCE);
  }, 120_000);

  it("FRUGAL (blocks), mirror order (pairs i and N − 1 − i), across two windows", async () => {
    // six weights, four active: the pairs move by two every window
    const run = compile(
      program(
        rest +
          '  optimize blocks.*.{attn, mlp}.*.weight with frugal_block(lr: 1e-2, density: 0.66, period: 2, order: "mirror")\n  optimize ** with adamw(lr: 1e-2)',
        "import std.optim.{adamw, frugal_block}",
        4,
      ),
    );
    await expectTrainsAlike(device, run, 4, TOLERANCE);
  }, 120_000);

  it("a per-tensor condition on a seeded draw, decided on the host (step-conditions.ts)", async () => {
    // FRUGAL's random choice written as an `if`: two of the four attention weights a window
    const picked = `optimizer picked(lr: float) on param: f32[...] {
  update(g) {
    let window = floor((step - 1) / 2)
    if topk_mask(uniform([group.size], seed: 7, key: window), 2)[group.index] == 1 {
      param -= lr * g
    } else {
      param -= lr * sign(g)
    }
  }
}`;
    const run = compile(
      program(
        rest +
          "  optimize blocks.*.attn.*.weight with picked(lr: 1e-2)\n  optimize ** with adamw(lr: 1e-2)",
        `import std.optim.{adamw}\n${picked}`,
        4,
      ),
    );
    expect(run.step.variants.size).toBe(16);
    await expectTrainsAlike(device, run, 4, TOLERANCE);
  }, 120_000);

  it("CoSO across a task boundary (the history grows) and a projection refresh", async () => {
    const run = compile(
      program(
        rest +
          "  optimize blocks.*.mlp.*.weight with coso(lr: 1e-2, proj_rank: 2, rank: 3, threshold: 0.99, boundaries: [2], period: 2)\n  optimize ** with adamw(lr: 1e-2)",
        "import std.optim.{adamw, coso}",
        4,
      ),
    );
    const store = await expectTrainsAlike(device, run, 4, TOLERANCE);
    expect(store.get("state:blocks.0.mlp.up.weight:used")!.data[0]).toBeGreaterThan(0);
  }, 120_000);

  it("λ-balanced LoRA (lambda_lora), its initial product subtracted", async () => {
    const run = compile(
      program(
        "  freeze **\n  adapt blocks.*.attn.{q, v} with lambda_lora(rank: 2, lambda: 0.5, sigma: 0.5)\n  optimize adapters with adamw(lr: 1e-2)",
        "import std.adapters.{lambda_lora}\nimport std.optim.{adamw}",
        4,
      ),
    );
    await expectTrainsAlike(device, run, 4, TOLERANCE);
  }, 120_000);
});
