// The adapters built on frozen buffers (PiSSA, OLoRA, LoRA-XS, RandLoRA, Bone, PELA), trained on the WebGPU
// device and on the CPU reference interpreter (f32): the buffers are computed by the init
// program's svd and qr kernels on each device, and the losses, parameters and buffers after a few
// steps agree within 1e-3 relative to each tensor's largest magnitude. Needs a WebGPU adapter
// (lavapipe in CI).
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { initialize, train } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { relativeDiff, root, tinyLmSource } from "./helpers.js";
import { loadOnGpu, prepare, type TestRun } from "./program-helpers.js";
import { expectTrainsAlike } from "./program-helpers.js";

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

function compile(adapt: string, steps = 3): TestRun {
  const text = `${tinyLmSource()}
import std.adapters.{pissa, olora, lora_xs, randlora, bone, pela}
import std.optim.{adamw}

data arith = std.data.arithmetic(ops: "+", digits: 1, seed: 5)

train t {
  model TinyLM(vocab: arith.vocab, d: 8, layers: 1, heads: 2, ctx: 16)
  data arith
  loss cross_entropy(model(batch.input), batch.target)
  freeze **
  ${adapt}
  optimize adapters with adamw(lr: 1e-2)
  steps ${steps}
  batch 4
}
`;
  const { run, diagnostics } = prepare(new SourceFile(join(root, "examples", "buffers.lrk"), text));
  if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  return run;
}

async function compare(run: TestRun, steps: number): Promise<void> {
  const store = await expectTrainsAlike(device, run, steps, TOLERANCE);
  expect([...store.keys()].filter((name) => name.startsWith("buffer:")).length).toBeGreaterThan(0);
}

describe("svd and qr on WebGPU match the interpreter", () => {
  it("exact and randomized svd, qr of a wide and of a tall matrix, seeded values", async () => {
    const text = `${tinyLmSource()}
import std.optim.{sgd}

data arith = std.data.arithmetic(ops: "+", digits: 1, seed: 5)

adapter probe on Linear(in, out) {
  const (U, S, Vh) = svd(base.weight, 3, exact: true)
  const (U2, S2, Vh2) = svd(base.weight, 2, iterations: 20)
  const (Q, R) = qr(base.weight)
  const (Qt, Rt) = qr(base.weight^T)
  param u: f32[out, 3] = U
  param s: f32[3] = S
  param vh: f32[3, in] = Vh
  param s2: f32[2] = S2
  param q: f32[out, 8] = Q
  param r: f32[8, in] = R
  param qt: f32[in, 8] = Qt
  param rt: f32[8, out] = Rt
  param noise: f32[4, in] = normal([4, in], seed: 9)
  forward(x: f32[..., in]) -> f32[..., out] = base(x)
}

train t {
  model TinyLM(vocab: arith.vocab, d: 8, layers: 1, heads: 2, ctx: 16)
  data arith
  loss cross_entropy(model(batch.input), batch.target)
  freeze **
  adapt blocks.*.mlp.up with probe
  optimize adapters with sgd(lr: 0)
  batch 4
}
`;
    const { run, diagnostics } = prepare(new SourceFile(join(root, "examples", "probe.lrk"), text));
    if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
    await loadOnGpu(device, run);
    const gpu = await initialize(run.program, device);
    const cpu = await initialize(run.program, new CpuDevice());
    const names = [...cpu.keys()].filter((n) => n.startsWith("param:blocks.0.mlp.up.probe."));
    expect(names).toHaveLength(9);
    for (const name of names)
      expect(relativeDiff(gpu.get(name)!, cpu.get(name)!), name).toBeLessThan(TOLERANCE);
  }, 300_000);
});

describe("adapters on frozen buffers on WebGPU match the interpreter", () => {
  it("PiSSA (svd kernels at init)", async () => {
    await compare(compile("adapt blocks.*.mlp.{up, down} with pissa(rank: 2, alpha: 4)"), 3);
  }, 300_000);

  it("OLoRA (qr kernels at init)", async () => {
    await compare(compile("adapt blocks.*.mlp.{up, down} with olora(rank: 2)"), 3);
  }, 300_000);

  it("LoRA-XS", async () => {
    await compare(compile("adapt blocks.*.attn.{q, v} with lora_xs(rank: 2)"), 3);
  }, 300_000);

  it("Bone and PELA", async () => {
    await compare(
      compile(
        "adapt blocks.*.attn.{q, v} with bone(rank: 3)\n  adapt blocks.*.mlp.{up, down} with pela(ratio: 2)",
      ),
      3,
    );
  }, 300_000);

  it("RandLoRA, both orientations", async () => {
    await compare(compile("adapt blocks.*.mlp.{up, down} with randlora(rank: 4, alpha: 8)"), 3);
  }, 300_000);
});
