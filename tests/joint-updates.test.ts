// Joint updates: an optimizer `on ADAPTER` updates all the tensors of one adapted module at once
// (compiler/place.ts `optimizeJoint`, compiler/update.ts), reading and assigning them by the
// adapter's names, with one gradient per tensor and one set of states per module. Checked against
// a hand computation from the step's gradients, for diagnostics, and on WebGPU.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { train } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { relativeDiff } from "./helpers.js";
import { compile, init, loadOnGpu, param, prepare, trainStep } from "./program-helpers.js";

const joint = `
// A's step uses a momentum; B's step is scaled by the norm of the A just updated: a rule over
// both factors, which a per-tensor optimizer cannot say.
optimizer paired(lr: float, beta: float = 0.5) on lora {
  state mA = zeros_like(A)
  update(gA, gB) {
    mA = beta * mA + gA
    A -= lr * mA
    B -= lr * fro(A) * gB
  }
}
`;

const program = (rules: string, freeze = "freeze **") => `import std.nn.{Linear}
import std.adapters.{lora}
import std.optim.{adamw}

data moons = std.data.two_moons(n: 64, seed: 3)
${joint}
model Net {
  l1 = Linear(2, 4)
  l2 = Linear(4, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] = l2(gelu(l1(x)))
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  ${freeze}
  adapt l1, l2 with lora(rank: 2)
${rules}
  steps 4
  batch 8
  seed 5
}
`;

const both = "  optimize adapters with paired(lr: 0.3)";

describe("joint updates", () => {
  it("update every tensor of a module together: three steps as computed by hand from the gradients", async () => {
    const run = compile(program(both));
    // one set of states per adapted module, named by the adapter's path
    expect(run.step.states.map((s) => s.name).sort()).toEqual(["l1.lora:mA", "l2.lora:mA"]);
    const store = await init(run, true);
    const lr = 0.3;
    const m = new Map(
      ["l1.lora", "l2.lora"].map((k) => [k, new Float64Array(2 * (k === "l1.lora" ? 2 : 4))]),
    );
    for (let t = 1; t <= 3; t++) {
      const before = new Map([...store].map(([k, v]) => [k, Float64Array.from(v.data)]));
      const { grads } = await trainStep(run, store, t, true);
      for (const mod of ["l1.lora", "l2.lora"]) {
        const A = before.get(`param:${mod}.A`)!;
        const B = before.get(`param:${mod}.B`)!;
        const gA = grads.get(`${mod}.A`)!;
        const gB = grads.get(`${mod}.B`)!;
        const mA = m.get(mod)!;
        for (let i = 0; i < mA.length; i++) mA[i] = 0.5 * mA[i]! + gA[i]!;
        const newA = A.map((a, i) => a - lr * mA[i]!);
        const norm = Math.sqrt(newA.reduce((s, a) => s + a * a, 0));
        const newB = B.map((b, i) => b - lr * norm * gB[i]!);
        const close = (got: Float64Array, want: Float64Array, what: string) =>
          want.forEach((w, i) => expect(got[i]!, `${what}[${i}] at step ${t}`).toBeCloseTo(w, 10));
        close(param(store, `${mod}.A`), newA, `${mod}.A`);
        close(param(store, `${mod}.B`), newB, `${mod}.B`);
      }
    }
  });

  it("are refused where a selected tensor is not the adapter's, or a module's tensors are split", () => {
    const diagnostics = (rules: string, freeze?: string) =>
      prepare(new SourceFile("joint.lrk", program(rules, freeze)), {
        batch: 8,
      }).diagnostics.filter((d) => d.severity === "error");
    const other = diagnostics(
      "  optimize adapters, l2.bias with paired(lr: 0.3)\n  optimize ** with adamw(lr: 0.1)",
      "freeze l1, l2.weight",
    );
    expect(other.map((d) => d.code)).toContain("E0303");
    expect(other.map((d) => d.message).join("\n")).toContain("`l2.bias` is not one");
    const split = diagnostics(
      "  optimize l1.lora.B with adamw(lr: 0.1)\n  optimize adapters with paired(lr: 0.3)",
    );
    expect(split.map((d) => d.message).join("\n")).toContain(
      "updates all of `l1.lora`'s tensors at once, but `l1.lora.B` is owned by an earlier rule",
    );
    expect(diagnostics(both)).toEqual([]); // the valid program
    const noAdapter = prepare(
      new SourceFile("joint.lrk", program(both).replace("on lora {", "on lorra {")),
      { batch: 8 },
    ).diagnostics;
    expect(noAdapter.map((d) => d.message).join("\n")).toContain(
      "updates the tensors of modules adapted with `lorra`, and no module is",
    );
    const wrongArity = prepare(
      new SourceFile("joint.lrk", program(both).replace("update(gA, gB)", "update(g)")),
      { batch: 8 },
    ).diagnostics;
    expect(wrongArity.map((d) => d.code)).toContain("E0205");
  });
});

describe("joint updates on WebGPU", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  });
  afterAll(() => device?.destroy());

  it("train as on the interpreter", async () => {
    const run = compile(program(both));
    await loadOnGpu(device, run);
    const gpu = await train(run, device);
    const cpu = await train(run, new CpuDevice());
    gpu.losses.forEach((l, i) => expect(l).toBeCloseTo(cpu.losses[i]!, 5));
    for (const name of ["param:l1.lora.A", "param:l2.lora.B", "state:l1.lora:mA"])
      expect(relativeDiff(gpu.store.get(name)!, cpu.store.get(name)!), name).toBeLessThan(1e-4);
  });
});
