// Kernels shared between groups alike (compiler/kernel-memo.ts): the plan with shared kernels is
// the plan with every group emitted from the whole graph, kernel for kernel, on programs that
// exercise each kernel family and the memo's edge cases — repeated layers (shared), split
// bindings (chunks in the key), packed and f16 weights, gathers (their flag names a node: never
// shared), special kernels with scratch (SVD), subgroup matmuls and low-rank tiles.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { Builder } from "../compiler/builder.js";
import { planStep } from "../compiler/compile.js";
import { emitKernels, fuseEntries, planBuffers, matmulChooser } from "../compiler/plan.js";
import type { PlanTarget } from "../compiler/plan.js";
import type { GraphProgram } from "../compiler/program.js";
import { portableTarget } from "../cli/target.js";
import { compile } from "./program-helpers.js";
import { loraTinyLmProgram } from "./helpers.js";

function example(path: string, layers?: number): GraphProgram {
  let text = readFileSync(path, "utf8");
  if (layers !== undefined)
    text = text.replace(
      "model TinyLM(vocab: sub.vocab)",
      `model TinyLM(vocab: sub.vocab, layers: ${layers})`,
    );
  return compile(text, { path }).program.step;
}

function expectSharedEqualsUnshared(step: GraphProgram, target: PlanTarget): number {
  const shared = planStep(step, target);
  const alone = planStep(step, { ...target, shareKernels: false });
  expect(shared.kernels.length).toBe(alone.kernels.length);
  shared.kernels.forEach((k, i) => expect(k).toEqual(alone.kernels[i]));
  expect(shared).toEqual(alone);
  const fused = fuseEntries(step, target.limits);
  const buffers = planBuffers(step, fused, target.limits, matmulChooser(target));
  return emitKernels(step, fused, buffers, target).shared;
}

const subgroupTarget: PlanTarget = {
  ...portableTarget,
  features: ["subgroups", "shader-f16"],
};

describe("kernels shared between groups alike", () => {
  it("are the kernels each group gets alone: a 3-layer LoRA tiny LM, most of them shared", () => {
    const step = example("examples/lora_finetune.lrk", 3);
    const shared = expectSharedEqualsUnshared(step, portableTarget);
    const kernels = planStep(step, portableTarget).kernels.length;
    // two of three layers come from the first's kernels
    expect(shared).toBeGreaterThan(kernels / 2);
    expectSharedEqualsUnshared(step, subgroupTarget);
  });

  it("with buffers split into chunks (a 4 KiB binding limit): chunks are part of the key", () => {
    const two = loraTinyLmProgram("chunks", 10)
      .replace("layers: 1", "layers: 2")
      .replace("batch 16", "batch 4"); // more would bind more chunks than a kernel may
    const step = compile(two, { path: "chunks.lrk" }).program.step;
    const small: PlanTarget = {
      ...portableTarget,
      limits: { ...portableTarget.limits, maxStorageBufferBindingSize: 4096 },
    };
    expectSharedEqualsUnshared(step, small);
    const plan = planStep(step, small);
    expect(plan.kernels.some((k) => k.bindings.some((b) => b.offset !== undefined))).toBe(true);
    // the data's token ids are known to fit the embedding (their range survives every pass):
    // its gather needs no bounds check
    expect(plan.kernels.some((k) => k.gatherFlag !== undefined)).toBe(false);
  });

  it("never shares a gather that checks its ids (its code names the gather's node)", () => {
    const b = new Builder();
    const table = b.input("param", "table", [5, 4]);
    const outputs = [0, 1, 2].map((i) => {
      const ids = b.input("data", `ids${i}`, [8], "i32"); // no known range: checked
      return { name: `rows${i}`, node: b.gather(table, ids) };
    });
    const program: GraphProgram = {
      graph: b.graph,
      inputs: [
        { name: "table", node: table, role: "param", shape: [5, 4], dtype: "f32" },
        ...[0, 1, 2].map((i) => ({
          name: `ids${i}`,
          node: b.graph.nodes.find((n) => n.name === `ids${i}`)!.id,
          role: "data" as const,
          shape: [8],
          dtype: "i32" as const,
        })),
      ],
      // an entry each: one kernel each, alike but for their nodes
      entries: outputs.map((o, i) => ({ name: `e${i}`, outputs: [o] })),
    };
    expect(expectSharedEqualsUnshared(program, portableTarget)).toBe(0);
    const flags = planStep(program, portableTarget).kernels.map(
      (k) => k.wgsl.match(/lrk_gather_flag\[0\] = (\d+)i/)?.[1],
    );
    expect(new Set(flags).size).toBe(3); // each kernel names its own gather
  });

  for (const path of [
    "examples/svdquant_lora.lrk",
    "examples/galore_pretrain.lrk",
    "examples/dora_finetune.lrk",
    "examples/adalora_budget.lrk",
    "examples/full_finetune.lrk",
  ])
    it(`are the kernels each group gets alone: ${path}`, () => {
      expectSharedEqualsUnshared(example(path), portableTarget);
    });
});
