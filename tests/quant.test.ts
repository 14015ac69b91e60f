// SVDQuant's weight decomposition, as compiled from stdlib/quant.lrk: W ≈ L1 L2 + Q(R), with one
// SVD shared by every name of `const (L1, L2, R) = svd_split(…)`, and a residual quantized per
// group with an error of at most half a quantization step.
import { describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { initialize } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { planStep } from "../compiler/compile.js";
import { defaultLimits } from "../cli/target.js";
import { compile, expectTrainsAlike, prepare } from "./program-helpers.js";

const program = `import std.nn.{Linear}
import std.quant.{svdquant}
import std.adapters.{lora}
import std.optim.{adamw}

data moons = std.data.two_moons(n: 64)

model Net {
  up = Linear(2, 32)
  mid = Linear(32, 24)
  head = Linear(24, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] = head(gelu(mid(gelu(up(x)))))
}

train q {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  quantize mid with svdquant(bits: 4, group: 8, rank: 4)
  adapt mid with lora(rank: 2)
  optimize adapters with adamw(lr: 1e-3)
}
`;

describe("svdquant", () => {
  it("stores L1, L2 and a 4-bit residual that reconstruct the weight within half a step", async () => {
    const { run, diagnostics } = prepare(new SourceFile("q.lrk", program), { batch: 4 });
    expect(diagnostics).toEqual([]);
    const store = await initialize(run!.program, new CpuDevice({ float64: true }));
    const w = store.get("param:mid.weight")!;
    const l1 = store.get("buffer:mid.svdquant.L1")!;
    const l2 = store.get("buffer:mid.svdquant.L2")!;
    const values = store.get("buffer:mid.svdquant.q.values")!;
    const scales = store.get("buffer:mid.svdquant.q.scales")!;
    const [out, width] = w.shape as [number, number];
    expect(l1.shape).toEqual([out, 4]);
    expect(l2.shape).toEqual([4, width]);
    expect(scales.shape).toEqual([out, width / 8]);
    let worst = 0;
    for (let i = 0; i < out; i++) {
      for (let j = 0; j < width; j++) {
        let low = 0;
        for (let k = 0; k < 4; k++) low += l1.data[i * 4 + k]! * l2.data[k * width + j]!;
        const q = values.data[i * width + j]!;
        expect(Number.isInteger(q) && Math.abs(q) <= 7).toBe(true);
        const scale = scales.data[i * (width / 8) + Math.floor(j / 8)]!;
        const error = Math.abs(low + q * scale - w.data[i * width + j]!);
        worst = Math.max(worst, error / scale);
      }
    }
    expect(worst).toBeLessThanOrEqual(0.5 + 1e-9);
    // The dense weight is not an input of the training step any more: only the buffers are.
    const names = run!.step.inputs.map((i) => i.name);
    expect(names).not.toContain("param:mid.weight");
    expect(names).toContain("buffer:mid.svdquant.q.values");
    expect(run!.step.inputs.find((i) => i.name === "buffer:mid.svdquant.q.values")!.bits).toBe(4);
  });
});

// Large enough for the tiled matmuls (above the naive kernel's 2^18 multiply-adds), with LoRA
// on `up` too, so that the step computes mid's input gradient: both products read the packed
// weight word by word (compiler/kernels/matmul.ts `packedBMode`) on a device with subgroups. At
// batch 128 the products are wider than fusion's low-rank limit (64 rows), where it used to
// materialize the dequantized weight in f32 rather than read it as a prologue.
const packedProgram = `import std.nn.{Linear}
import std.quant.{svdquant}
import std.adapters.{lora}
import std.optim.{adamw}

data moons = std.data.two_moons(n: 256)

model Net {
  up = Linear(2, 128)
  mid = Linear(128, 128)
  head = Linear(128, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] = head(gelu(mid(gelu(up(x)))))
}

train q {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  quantize mid with svdquant(bits: 4, group: 32, rank: 4)
  adapt up, mid with lora(rank: 2)
  optimize adapters with adamw(lr: 1e-2)
}
`;

/** The step's kernels that read the packed weight word by word, per layout (k: x·Wᵀ, n: dy·W). */
const packedReads = (wgsl: string[], along: "k" | "n") =>
  wgsl.filter((w) => w.includes(`packed 4-bit words along ${along}, group 32`)).length;

describe("svdquant on WebGPU", () => {
  it("plans both products on the packed weight however many rows they have", () => {
    const software = {
      limits: defaultLimits,
      features: ["subgroups"],
      adapter: { fallback: true },
    };
    for (const batch of [32, 128]) {
      const run = compile(packedProgram, { batch });
      const wgsl = planStep(run.step, software).kernels.map((k) => k.wgsl);
      expect(packedReads(wgsl, "k"), `batch ${batch}`).toBeGreaterThan(0);
      expect(packedReads(wgsl, "n"), `batch ${batch}`).toBeGreaterThan(0);
      // no kernel writes the dequantized weight: the products read the packed values themselves
      const dense = wgsl.filter(
        (w) => /^\/\/ map f32\[128, 128\]/.test(w) && w.includes("q.values"),
      );
      expect(dense, `batch ${batch}`).toEqual([]);
    }
  });

  it("trains LoRA on a 4-bit base read word by word as the interpreter does", async () => {
    const run = compile(packedProgram, { batch: 128 });
    const device = await WebGpuDevice.open();
    try {
      await expectTrainsAlike(device, run, 3, 1e-3);
      if (!device.features.includes("subgroups")) return;
      const wgsl = device.plan(run.step).kernels.map((k) => k.wgsl);
      expect(packedReads(wgsl, "k")).toBeGreaterThan(0);
      expect(packedReads(wgsl, "n")).toBeGreaterThan(0);
    } finally {
      device.destroy();
    }
  }, 120_000);
});
