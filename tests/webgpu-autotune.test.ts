// A device's plan target uses the autotuner's choice for large matmuls' shape classes (timed on
// first use, then read from the cache), and the naive kernel for small ones; the device runs the
// plan it is given.
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Builder } from "../compiler/builder.js";
import { tensor } from "../runtime/interpreter.js";
import type { ProgramInput } from "../compiler/program.js";
import { planStep } from "../compiler/compile.js";
import { defaultLimits, deviceTarget, loadPlans, tuningShapes } from "../cli/target.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { SourceFile } from "../language/source.js";
import { batchFeeds, initialize } from "../runtime/trainer.js";
import { prepare } from "./program-helpers.js";
import { root } from "./helpers.js";

let device: WebGpuDevice | undefined;
afterAll(() => device?.destroy());

describe("autotuned plans", () => {
  it("uses the tuned matmul for a large product and caches the choice", async () => {
    const cache = mkdtempSync(join(tmpdir(), "lrk-cache-"));
    process.env["XDG_CACHE_HOME"] = cache;
    device = await WebGpuDevice.open();
    const b = new Builder();
    const x = b.input("data", "x", [128, 96]);
    const w = b.input("param", "w", [80, 96]);
    const y = b.matmul(x, w, { transB: true }); // 128·80·96 ≈ 1M multiply-adds: tuned
    const small = b.matmul(b.input("data", "s", [4, 3]), b.input("data", "t", [3, 2])); // naive
    const inputs: ProgramInput[] = b.graph.nodes
      .filter((n) => n.op.kind === "input")
      .map((n) => ({
        name: (n.op as { name: string }).name,
        node: n.id,
        role: (n.op as { role: ProgramInput["role"] }).role,
        shape: n.shape,
        dtype: n.dtype,
      }));
    const entry = {
      name: "entry",
      outputs: [
        { name: "y", node: y },
        { name: "small", node: small },
      ],
    };
    const program = { graph: b.graph, inputs, entries: [entry] };
    const target = await deviceTarget(device, [program], { autotune: true });
    device.load(program, planStep(program, target));
    const feeds = new Map(
      inputs.map((i) => [
        i.name,
        tensor(
          i.shape,
          Array.from({ length: i.shape.reduce((a, c) => a * c, 1) }, (_, k) => (k % 7) - 3),
        ),
      ]),
    );
    const out = await device.run(program, entry, feeds);
    expect(out.get("y")!.shape).toEqual([128, 80]);
    const plan = device.plan(program);
    const matmuls = plan.kernels.filter((k) => k.kind === "matmul").map((k) => k.name);
    const cached = JSON.parse(readFileSync(join(cache, "lrk", "autotune.json"), "utf8")) as {
      adapters: Record<string, Record<string, { params: { variant: string } }>>;
    };
    const choices = Object.values(Object.values(cached.adapters)[0]!);
    expect(choices).toHaveLength(1); // only the large product's shape class was tuned
    expect(matmuls.some((name) => name.includes(choices[0]!.params.variant))).toBe(true);
    expect(matmuls.some((name) => name.includes("naive"))).toBe(true);
  }, 120_000);

  it("allocates exactly the bytes its plan reports for a training step", async () => {
    device ??= await WebGpuDevice.open();
    const path = join(root, "examples", "mlp.lrk");
    const { run } = prepare(new SourceFile(path, readFileSync(path, "utf8")), { batch: 8 });
    await loadPlans(device, run!.program, { autotune: false });
    const plan = device.plan(run!.step);
    expect(plan.peakBytes).toBeGreaterThan(0);
    expect(device.allocatedBytes(run!.step)).toBe(plan.peakBytes);
  });

  it("times each kernel of a step on the device (bench:profile)", async () => {
    device ??= await WebGpuDevice.open();
    const path = join(root, "examples", "mlp.lrk");
    const { run } = prepare(new SourceFile(path, readFileSync(path, "utf8")), { batch: 8 });
    await loadPlans(device, run!.program, { autotune: false });
    const store = await initialize(run!.program, device);
    const entry = run!.step.variants.get("")!;
    const feeds = batchFeeds(run!, store, "train", 0, 1);
    const times = await device.profile(run!.step, entry, feeds, 3);
    if (!device.features.includes("timestamp-query")) {
      expect(times).toBeUndefined();
      return;
    }
    const plan = device.plan(run!.step);
    const dispatched = plan.entries[entry.name]!.dispatches.filter((k) =>
      plan.kernels[k]!.dispatch.every((n) => n > 0),
    );
    expect(times!.map((t) => t.kernel)).toEqual(dispatched);
    for (const t of times!) expect(t.ms).toBeGreaterThanOrEqual(0);
    expect(times!.some((t) => t.ms > 0)).toBe(true);
  });
});

describe("the shapes the autotuner times", () => {
  it("come from the fusion the plan makes: with no low-rank fusion, LoRA's products are tuned", () => {
    const path = join(root, "examples", "lora_finetune.lrk");
    const { run } = prepare(new SourceFile(path, readFileSync(path, "utf8")));
    const rank8 = (shapes: ReturnType<typeof tuningShapes>) =>
      shapes.filter((s) => s.n === 8 || s.k === 8).length;
    const unfused = tuningShapes([run!.step], {
      limits: defaultLimits,
      features: [],
      lowRankMax: 0,
    });
    const fused = tuningShapes([run!.step], { limits: defaultLimits, features: [] });
    // lavapipe plans LoRA's x·Aᵀ and (x·Aᵀ)·Bᵀ as matmuls of their own (lowRankMax 0): tuning
    // the fused plan's shapes instead left them on the defaults
    expect(rank8(unfused)).toBeGreaterThan(rank8(fused));
  });
});
