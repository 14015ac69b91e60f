// An adapter's `state` (compiler/adapter-states.ts): a tensor it keeps between steps without
// training it, read by its members, changed by its `at` actions, saved in checkpoints. Checked by
// hand across an action, through a checkpoint and resume, for its diagnostics, and on WebGPU.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { train } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { relativeDiff } from "./helpers.js";
import { expectSameTensors, stopAndResume } from "./resume-helpers.js";
import { compile, loadOnGpu, prepare } from "./program-helpers.js";

const adapter = `
// LoRA whose down projection A is swapped with a pool every 2 steps; the pool starts as half the
// base weight's first rows, and a counter of swaps scales a term of the forward
adapter pooled(rank: int) on Linear(in, out) {
  param A: f32[rank, in] = kaiming_uniform(a: sqrt(5))
  param B: f32[out, rank] = zeros
  state pool = 0.5 * base.weight[0:rank, :]
  state swaps = zeros(1)
  forward(x) = base(x) + (1 + 0.1 * swaps) * ((x @ A^T) @ B^T)
  at every 2 {
    let old = A
    A = pool
    pool = old
    swaps = swaps + 1
  }
}
`;

const program = (extra = "") => `import std.nn.{Linear}
import std.optim.{adamw}

data moons = std.data.two_moons(n: 64, seed: 3)
${adapter}${extra}
model Net {
  l1 = Linear(2, 4)
  l2 = Linear(4, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] = l2(gelu(l1(x)))
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  adapt l2 with pooled(rank: 2)
  optimize adapters with adamw(lr: 0.1)
  steps 5
  batch 8
}
`;

const data = (t: { data: ArrayLike<number> }) => Array.from(t.data);

describe("an adapter's state", () => {
  it("starts from its initializer, is read by forward, and is swapped by the action", async () => {
    const run = compile(program());
    expect(run.step.states.map((s) => s.name).slice(0, 2)).toEqual([
      "l2.pooled:pool",
      "l2.pooled:swaps",
    ]);
    const device = new CpuDevice({ float64: true });
    const one = await train(run, device, { steps: 1 });
    const w = data(one.store.get("param:l2.weight")!);
    expect(data(one.store.get("state:l2.pooled:pool")!)).toEqual(w.slice(0, 8).map((x) => 0.5 * x));
    expect(data(one.store.get("state:l2.pooled:swaps")!)).toEqual([0]);
    // step 2's action: A ↔ pool, one swap counted (A after step 2's update is the new pool)
    const two = await train(run, device, { steps: 2, resume: { step: 1, store: one.store } });
    const poolBefore = data(one.store.get("state:l2.pooled:pool")!);
    expect(data(two.store.get("param:l2.pooled.A")!)).toEqual(poolBefore);
    expect(data(two.store.get("state:l2.pooled:swaps")!)).toEqual([1]);
    const a2 = data(two.store.get("state:l2.pooled:pool")!);
    expect(a2).not.toEqual(data(one.store.get("param:l2.pooled.A")!)); // A was updated at step 2
  });

  it("is saved in the checkpoint: a run stopped after the action and resumed is exact", async () => {
    const device = new CpuDevice({ float64: true });
    const { whole, checkpoint, resumed } = await stopAndResume(compile(program()), device, 2, {
      floats: "F64",
    });
    expect(data(checkpoint.store.get("state:l2.pooled:swaps")!)).toEqual([1]);
    expectSameTensors(resumed.store, whole.store);
  });

  it("is not refreshed by `refresh every` (E0206); a model's state is still refused", () => {
    const errors = (text: string) =>
      prepare(new SourceFile("s.lrk", text), { batch: 8 }).diagnostics.filter(
        (d) => d.severity === "error",
      );
    const refreshed = errors(
      program().replace("state swaps = zeros(1)", "state swaps = zeros(1) refresh every 2"),
    );
    expect(refreshed.map((d) => d.message).join("\n")).toContain(
      "not refreshed by `refresh every`",
    );
    const model = errors(
      program().replace("  l2 = Linear(4, 2)\n", "  l2 = Linear(4, 2)\n  state s = zeros(2)\n"),
    );
    expect(model.map((d) => d.code)).toContain("E0206");
  });
});

describe("an adapter's state on WebGPU", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  });
  afterAll(() => device?.destroy());

  it("trains as on the interpreter across the actions", async () => {
    const run = compile(program());
    await loadOnGpu(device, run);
    const gpu = await train(run, device);
    const cpu = await train(run, new CpuDevice());
    gpu.losses.forEach((l, i) => expect(l).toBeCloseTo(cpu.losses[i]!, 5));
    for (const name of ["param:l2.pooled.A", "state:l2.pooled:pool", "state:l2.pooled:swaps"])
      expect(relativeDiff(gpu.store.get(name)!, cpu.store.get(name)!), name).toBeLessThan(1e-4);
  });
});
