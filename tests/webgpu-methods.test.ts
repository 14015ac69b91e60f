// Every method of the stdlib, trained on the WebGPU device and on the CPU reference interpreter
// (f32): LoRA, DoRA, GaLore across a projection refresh, AdaLoRA across a budget (pruning) step,
// and LoRA on an SVDQuant 4-bit base. Same losses and same parameters and states after the run,
// within 1e-3 relative to each tensor's largest magnitude. Also: the WGSL of every example's plan
// compiles under Dawn. Needs a WebGPU adapter (lavapipe in CI): without one the tests fail.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Tensor } from "../compiler/program.js";
import { planProgram } from "./program-helpers.js";
import { expectTrainsAlike } from "./program-helpers.js";
import type { Entry } from "../compiler/program.js";
import { SourceFile } from "../language/source.js";
import { requestAdapter, requestDevice } from "../runtime/gpu.js";
import type { TestRun as Run } from "./program-helpers.js";
import { prepare } from "./program-helpers.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { root, tinyLmSource } from "./helpers.js";

const TOLERANCE = 1e-3;
let device: WebGpuDevice;

beforeAll(async () => {
  try {
    device = await WebGpuDevice.open();
  } catch (e) {
    throw new Error(
      `these tests need a WebGPU adapter (bash scripts/setup.sh installs lavapipe): ${(e as Error).message}`,
    );
  }
}, 60_000);

afterAll(() => device?.destroy());

const tinyLm = tinyLmSource();

function program(rules: string, imports: string, steps = 4): string {
  return `${tinyLm}
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

function compile(text: string): Run {
  const { run, diagnostics } = prepare(new SourceFile(join(root, "examples", "methods.lrk"), text));
  if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  return run;
}

const compare = (run: Run, steps: number) => expectTrainsAlike(device, run, steps, TOLERANCE);

describe("stdlib methods on WebGPU match the interpreter", () => {
  it("LoRA", async () => {
    await compare(
      compile(
        program(
          "  freeze **\n  adapt blocks.*.attn.{q, v} with lora(rank: 2, alpha: 4)\n  optimize adapters with adamw(lr: 1e-2)",
          "import std.adapters.{lora}\nimport std.optim.{adamw}",
        ),
      ),
      4,
    );
  }, 120_000);

  it("DoRA", async () => {
    await compare(
      compile(
        program(
          "  freeze **\n  adapt blocks.*.attn.{q, v} with dora(rank: 2)\n  optimize adapters with adamw(lr: 1e-2)",
          "import std.adapters.{dora}\nimport std.optim.{adamw}",
        ),
      ),
      4,
    );
  }, 120_000);

  it("GaLore across a projection refresh", async () => {
    // The keys' bias has an exactly zero gradient (softmax ignores a shift of all scores), so Adam
    // would turn float noise into full-size steps that differ between devices: freeze it.
    const run = compile(
      program(
        "  freeze blocks.*.attn.k.bias\n  optimize blocks.*.mlp.*.weight with galore(rank: 2, period: 2)\n  optimize ** with adamw(lr: 1e-2)",
        "import std.optim.{adamw, galore}",
      ),
    );
    expect([...run.step.variants.keys()].sort()).toEqual(["", "2"]);
    await compare(run, 3); // steps 1 and 3 refresh the projection
  }, 120_000);

  it("AdaLoRA across a budget step", async () => {
    const run = compile(
      program(
        "  freeze **\n  adapt blocks.*.mlp.{up, down} with adalora(init_rank: 3)\n  budget rank 2 over blocks.*.mlp.{up, down} by adalora_budget()\n  optimize adapters with adamw(lr: 1e-2)",
        "import std.adapters.{adalora, adalora_budget}\nimport std.optim.{adamw}",
      ),
    );
    expect(run.step.budgets[0]!.pruneAt(2)).toBe(true);
    await compare(run, 3);
  }, 120_000);

  it("LoRA on an SVDQuant 4-bit base", async () => {
    await compare(
      compile(
        program(
          "  freeze **\n  quantize blocks.*.mlp.{up, down} with svdquant(bits: 4, group: 4, rank: 2)\n  adapt blocks.*.mlp.{up, down} with lora(rank: 2)\n  optimize adapters with adamw(lr: 1e-2)",
          "import std.quant.{svdquant}\nimport std.adapters.{lora}\nimport std.optim.{adamw}",
        ),
      ),
      3,
    );
  }, 120_000);
});

describe("every example's WGSL compiles under Dawn", () => {
  it("has no shader compilation errors in any entry of any example", async () => {
    const adapter = await requestAdapter();
    const gpu = await requestDevice(adapter);
    const features = [...gpu.features];
    const limits = {
      maxStorageBufferBindingSize: gpu.limits.maxStorageBufferBindingSize,
      maxBufferSize: gpu.limits.maxBufferSize,
      maxStorageBuffersPerShaderStage: gpu.limits.maxStorageBuffersPerShaderStage,
    };
    const examples = readdirSync(join(root, "examples")).filter(
      (f) =>
        f.endsWith(".lrk") && readFileSync(join(root, "examples", f), "utf8").includes("\ntrain "),
    );
    const seen = new Set<string>();
    let kernels = 0;
    for (const name of examples) {
      const path = join(root, "examples", name);
      const text = readFileSync(path, "utf8").replace(/\n\s*init "[^"]*".*/, "");
      const { run, diagnostics } = prepare(new SourceFile(path, text), { batch: 2 });
      expect(run, diagnostics.map((d) => d.message).join("\n")).toBeDefined();
      const entries: Record<string, Entry> = {
        stateInit: run!.step.stateInit,
        evaluate: run!.step.evaluate,
      };
      for (const [key, entry] of run!.step.variants) entries[`step${key}`] = entry;
      if (run!.step.predict) entries["predict"] = run!.step.predict;
      run!.step.budgets.forEach((b, i) =>
        Object.assign(entries, { [`score${i}`]: b.score, [`prune${i}`]: b.prune }),
      );
      for (const a of run!.step.actions) entries[a.entry.name] = a.entry;
      const plans = [
        planProgram(run!.step.graph, run!.step.inputs, entries, limits, features),
        planProgram(
          run!.init.graph,
          run!.init.inputs,
          { model: run!.init.model, quantize: run!.init.quantize, adapters: run!.init.adapters },
          limits,
          features,
        ),
      ];
      for (const plan of plans) {
        for (const k of plan.kernels) {
          if (seen.has(k.wgsl)) continue;
          seen.add(k.wgsl);
          kernels++;
          const info = await gpu.createShaderModule({ code: k.wgsl }).getCompilationInfo();
          const errors = info.messages.filter((m) => m.type === "error");
          expect(errors.map((m) => `${name} kernel ${k.id} (${k.name}): ${m.message}`)).toEqual([]);
        }
      }
    }
    expect(kernels).toBeGreaterThan(50);
    gpu.destroy();
  }, 300_000);
});
