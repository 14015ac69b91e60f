// The WGSL of three canonical kernels, as files under tests/__snapshots__/, so that a change to the
// emitted code shows up in review as a diff of readable WGSL: the base matmul of a LoRA linear
// with the up projection fused into its epilogue, a softmax row kernel, and an AdamW update. They
// come from one small training program through the normal pipeline (compile, then planStep)
// with fixed features, limits and adapter, so the output does not depend on the machine. After an
// intended change to the emitted code: `npx vitest run tests/kernel-snapshots.test.ts -u`.
import { describe, expect, it } from "vitest";
import { compile, planStep } from "../compiler/compile.js";
import type { PlanKernel } from "../compiler/program.js";
import { SourceFile } from "../language/source.js";
import { readRepoFile } from "./helpers.js";

// hidden 128 and batch 32 make the LoRA linear's matmul large enough for a tiled variant (small
// products get the naive one), the variant lavapipe runs: subgroup tiles.
const program = `import std.nn.{Linear}
import std.adapters.{lora}
import std.optim.{adamw}

data moons = std.data.two_moons(n: 256, seed: 1)

model Net(hidden: int = 128) {
  embed = Linear(2, hidden)
  mix = Linear(hidden, hidden)
  head = Linear(hidden, 2)

  forward(x: f32[B, 2]) -> f32[B, 2] = head(softmax(mix(relu(embed(x))), axis: -1))
}

train snapshot {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  adapt mix with lora(rank: 4, alpha: 8)
  optimize adapters with adamw(lr: 1e-2)
  steps 1
  batch 32
  seed 1
}
`;

/** `file:line` of the first line of `file` (a repository path) that contains `text`. */
function lineOf(file: string, text: string, source = readRepoFile(file)): string {
  const i = source.split("\n").findIndex((l) => l.includes(text));
  if (i < 0) throw new Error(`${file} has no line with ${text}`);
  return `${file}:${i + 1}`;
}

const kernels = (() => {
  const { compiled, diagnostics } = compile(new SourceFile("snapshot.lrk", program));
  if (!compiled) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  const plan = planStep(compiled.program.step, {
    limits: {
      maxStorageBufferBindingSize: 2 ** 27,
      maxBufferSize: 2 ** 32,
      maxStorageBuffersPerShaderStage: 16,
    },
    features: ["subgroups"],
    adapter: { fallback: true },
  });
  return plan.entries.step!.dispatches.map((id) => plan.kernels[id]!);
})();

/** The one kernel `pick` selects (in dispatch order). */
function only(what: string, pick: (k: PlanKernel) => boolean): PlanKernel {
  const found = kernels.filter(pick);
  if (found.length !== 1)
    throw new Error(
      `${found.length} kernels are ${what}: ${kernels.map((k) => k.name).join("; ")}`,
    );
  return found[0]!;
}

describe("kernel snapshots", () => {
  it("a matmul with the fused LoRA epilogue", async () => {
    const k = only(
      "matmuls with a low-rank matmul in their epilogue",
      (k) => k.kind === "matmul" && /fn lrk_epilogue/.test(k.wgsl) && /fn mm_branch0/.test(k.wgsl),
    );
    expect(k.name).toMatch(/subgroup/);
    await expect(k.wgsl).toMatchFileSnapshot("__snapshots__/lora-matmul.wgsl");
  });

  it("a softmax row kernel", async () => {
    const softmax = lineOf("snapshot.lrk", "softmax(", program);
    const k = only(
      "forward softmax row kernels",
      (k) => k.kind === "row" && k.sourceLines.includes(softmax) && / ×2 /.test(k.name),
    );
    await expect(k.wgsl).toMatchFileSnapshot("__snapshots__/softmax-row.wgsl");
  });

  it("an AdamW update", async () => {
    const update = lineOf("stdlib/optim.lrk", "param -= lr * (mhat / (sqrt(vhat) + eps)");
    const k = only(
      "map kernels of AdamW's parameter update",
      (k) => k.kind === "map" && k.sourceLines.includes(update),
    );
    await expect(k.wgsl).toMatchFileSnapshot("__snapshots__/adamw-update.wgsl");
  });
});
