// `init_gradient` and LoRA-SB on the WebGPU device against the CPU reference interpreter (f32):
// the init program's gradient passes run as WGSL kernels, and the gradient sums, the buffers made
// from them, the losses and the parameters after a few steps agree within 1e-3 relative to each
// tensor's largest magnitude. Needs a WebGPU adapter (lavapipe in CI).
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import type { Tensor } from "../compiler/program.js";
import { CpuDevice } from "../runtime/device.js";
import { train } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { relativeDiff, root, tinyLmSource } from "./helpers.js";
import { expectTrainsAlike, loadOnGpu, prepare, type TestRun } from "./program-helpers.js";

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

function compile(rules: string, steps: number): TestRun {
  const text = `${tinyLmSource()}
import std.adapters.{lora_sb}
import std.optim.{adamw, sgd}

data arith = std.data.arithmetic(ops: "+", digits: 1, seed: 5)

// keeps the gradient sum as an (untrained) param, so that both devices' sums are compared
adapter probe on Linear(in, out) {
  const G = init_gradient(base.weight, batches: 3, batch: 2)
  param D: f32[out, in] = G
  forward(x: f32[..., in]) -> f32[..., out] = base(x) + 0 * (x @ D^T)
}

train t {
  model TinyLM(vocab: arith.vocab, d: 8, layers: 1, heads: 2, ctx: 16)
  data arith
  loss cross_entropy(model(batch.input), batch.target)
  freeze **
  ${rules}
  steps ${steps}
  batch 4
}
`;
  const { run, diagnostics } = prepare(new SourceFile(join(root, "examples", "lorasb.lrk"), text));
  if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  return run;
}

describe("init_gradient and LoRA-SB on WebGPU match the interpreter", () => {
  it("the gradient sums of the init program's passes", async () => {
    const run = compile(
      "adapt blocks.*.attn.{q, v} with probe\n  adapt blocks.*.mlp.down with probe\n  optimize adapters with sgd(lr: 0)",
      1,
    );
    const store = await expectTrainsAlike(device, run, 1, TOLERANCE);
    const sum = store.get("param:blocks.0.mlp.down.probe.D")!;
    expect(Math.max(...Array.from(sum.data, Math.abs))).toBeGreaterThan(0);
  });

  // The singular vectors' signs are the svd kernels' to choose (and of a zero singular value, the
  // vectors themselves): B's column i and A's row i may flip together, and R with them. What a
  // device must agree on is the function: the losses and each module's B R A.
  // Rank 2: at d 8 sign(G) has a low rank (mlp.down's is 2), and σ_2 stands well apart from σ_3
  // in every module, so the top-2 subspace is well defined.
  it("lora_sb trains alike for 3 steps: the losses and each module's B R A", async () => {
    const run = compile(
      "adapt blocks.*.attn.{q, k, v, o} with lora_sb(rank: 2, lr: 1e-2, warmup: 2)\n  adapt blocks.*.mlp.{up, down} with lora_sb(rank: 2, lr: 1e-2, warmup: 2)\n  optimize adapters with adamw(lr: 1e-2, weight_decay: 0)",
      3,
    );
    await loadOnGpu(device, run);
    const gpu = await train(run, device, { steps: 3 });
    const cpu = await train(run, new CpuDevice(), { steps: 3 });
    gpu.losses.forEach((l, i) =>
      expect(Math.abs(l - cpu.losses[i]!) / cpu.losses[i]!, `loss at step ${i + 1}`).toBeLessThan(
        TOLERANCE,
      ),
    );
    const modules = run.program.params
      .filter((p) => p.path.endsWith(".lora_sb.R"))
      .map((p) => p.path.slice(0, -".R".length));
    expect(modules).toHaveLength(6);
    for (const m of modules) {
      const product = (store: Map<string, Tensor>): Tensor => {
        const [B, R, A] = [`buffer:${m}.B`, `param:${m}.R`, `buffer:${m}.A`].map((name) =>
          store.get(name)!,
        );
        const [out, r] = B!.shape as [number, number];
        const inp = A!.shape[1]!;
        const data = new Float64Array(out * inp);
        for (let o = 0; o < out; o++)
          for (let i = 0; i < r; i++)
            for (let j = 0; j < r; j++) {
              const br = B!.data[o * r + i]! * R!.data[i * r + j]!;
              for (let k = 0; k < inp; k++) data[o * inp + k] += br * A!.data[j * inp + k]!;
            }
        return { shape: [out, inp], data };
      };
      expect(relativeDiff(product(gpu.store), product(cpu.store)), m).toBeLessThan(TOLERANCE);
    }
  });
});
