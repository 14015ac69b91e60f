// In-place updates (compiler/in-place.ts): a parameter's or state's new value is written over the
// old one when the kernel that computes it reads the old value only at the element it writes and
// nothing after it reads the old value. Checked on the plans of real programs, on updates that
// must not be written in place, and on WebGPU against the interpreter.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { portableTarget } from "../cli/target.js";
import { planStep } from "../compiler/compile.js";
import type { Plan } from "../compiler/program.js";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { train } from "../runtime/trainer.js";
import { loadOnGpu, prepare, type TestRun } from "./program-helpers.js";
import { join } from "node:path";
import { readRepoFile, relativeDiff, root } from "./helpers.js";

function compile(text: string, batch = 8, path = "in_place.lrk"): TestRun {
  const { run, diagnostics } = prepare(new SourceFile(path, text), { batch });
  if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  return run;
}

/** Output name → whether the plan's step entry writes it into the input buffer of that name. */
function writtenInPlace(plan: Plan): Map<string, boolean> {
  const inputs = new Map(plan.inputs.map((i) => [i.name, i.buffer]));
  return new Map(
    plan.entries["step"]!.outputs.filter((o) => inputs.has(o.name)).map((o) => [
      o.name,
      inputs.get(o.name) === o.buffer,
    ]),
  );
}

const optimizer = (update: string) => `import std.nn.{Linear}

data moons = std.data.two_moons(n: 64, seed: 3)

optimizer odd(lr: float) on param: f32[n, n] {
  state m = zeros_like(param)
  update(g) {
    m = 0.5 * m + g
    ${update}
  }
}

model Net {
  l1 = Linear(2, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] = l1(x)
}

train t {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze l1.bias
  optimize l1.weight with odd(lr: 0.1)
  steps 4
}
`;

describe("in-place updates in the plan", () => {
  it("full fine-tuning with AdamW writes every parameter and moment over its old value", () => {
    const path = "examples/full_finetune.lrk";
    const run = compile(readRepoFile(path), 8, join(root, path));
    const plan = planStep(run.step, portableTarget);
    const written = writtenInPlace(plan);
    const names = [...written.keys()];
    expect(names.filter((n) => n.startsWith("param:")).length).toBe(run.step.trainable.length);
    expect(names.filter((n) => n.startsWith("state:")).length).toBe(2 * run.step.trainable.length);
    expect([...written.values()].every(Boolean)).toBe(true);
    // no buffer of its own holds a new parameter or state
    expect(plan.buffers.some((b) => b.role === "output" && /param:|state:/.test(b.names[0]!))).toBe(
      false,
    );
  });

  it("an update that reads the old value at another element gets a buffer of its own", () => {
    // the transpose reads param[j, i] while writing param[i, j]
    const plan = planStep(
      compile(optimizer("param -= lr * (m + 0.1 * param^T)")).step,
      portableTarget,
    );
    const written = writtenInPlace(plan);
    expect(written.get("param:l1.weight")).toBe(false);
    expect(written.get("state:l1.weight:m")).toBe(true);
  });
});

describe("in-place updates on WebGPU", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  });
  afterAll(() => device?.destroy());

  for (const [what, update] of [
    ["in place", "param -= lr * m"],
    ["not in place (a transpose)", "param -= lr * (m + 0.1 * param^T)"],
  ] as const) {
    it(`train 4 steps as the interpreter does (${what})`, async () => {
      const run = compile(optimizer(update));
      await loadOnGpu(device, run);
      const gpu = await train(run, device);
      const cpu = await train(run, new CpuDevice());
      expect(gpu.losses.length).toBe(4);
      gpu.losses.forEach((l, i) => expect(l).toBeCloseTo(cpu.losses[i]!, 5));
      const w = "param:l1.weight";
      expect(relativeDiff(gpu.store.get(w)!, cpu.store.get(w)!)).toBeLessThan(1e-5);
    });
  }
});
