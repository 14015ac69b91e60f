// Training on the WebGPU device against the CPU reference interpreter (f32): the same program,
// initialized and trained for 5 steps on each device, gives the same losses and the same
// parameters and optimizer states, within 1e-4 relative (to each tensor's largest magnitude).
// Runs on a real WebGPU adapter (lavapipe in CI); without one the tests fail, they never skip.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Tensor } from "../compiler/program.js";
import { Builder } from "../compiler/builder.js";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { batchFeeds, initialize, stepScalars, train } from "../runtime/trainer.js";
import type { TestRun as Run } from "./program-helpers.js";
import { loadOnGpu, prepare, runGraph } from "./program-helpers.js";
import { DeviceTensor, WebGpuDevice } from "../runtime/webgpu-device.js";
import { loraTinyLmProgram, relativeDiff, root } from "./helpers.js";

const STEPS = 5;
const TOLERANCE = 1e-4;

let device: WebGpuDevice;

beforeAll(async () => {
  try {
    device = await WebGpuDevice.open();
  } catch (e) {
    throw new Error(
      `these tests need a WebGPU adapter (lavapipe on a machine without a GPU: bash scripts/setup.sh): ${(e as Error).message}`,
    );
  }
}, 60_000);

afterAll(() => device?.destroy());

function compile(text: string, path: string, batch: number): Run {
  const { run, diagnostics } = prepare(new SourceFile(path, text), { batch });
  if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  return run;
}

async function compareTraining(run: Run): Promise<void> {
  await loadOnGpu(device, run);
  const gpu = await train(run, device, { steps: STEPS });
  const cpu = await train(run, new CpuDevice(), { steps: STEPS });
  expect(gpu.losses).toHaveLength(STEPS);
  gpu.losses.forEach((l, i) => {
    const want = cpu.losses[i]!;
    expect(
      Math.abs(l - want) / Math.abs(want),
      `loss at step ${i + 1}: ${l} vs ${want}`,
    ).toBeLessThan(TOLERANCE);
  });
  expect([...gpu.store.keys()].sort()).toEqual([...cpu.store.keys()].sort());
  for (const [name, want] of cpu.store) {
    const got = gpu.store.get(name)!;
    expect(got.shape, name).toEqual(want.shape);
    expect(relativeDiff(got, want), name).toBeLessThan(TOLERANCE);
  }
}

// TinyLM at d 16 with LoRA on q and v: embeddings (gather), layer norms, causal attention
// (softmax), a gelu MLP, cross-entropy, AdamW on the adapters.
const lora = loraTinyLmProgram("lora_webgpu", 100);

describe("training on WebGPU matches the CPU interpreter", () => {
  it(`examples/mlp.lrk at batch 8: ${STEPS} steps of AdamW, losses and every tensor within ${TOLERANCE}`, async () => {
    const path = join(root, "examples", "mlp.lrk");
    const run = compile(readFileSync(path, "utf8"), path, 8);
    await compareTraining(run);
  }, 120_000);

  it(`a LoRA fine-tune of a tiny transformer at batch 4: ${STEPS} steps within ${TOLERANCE}`, async () => {
    const run = compile(lora, "lora_webgpu.lrk", 4);
    await compareTraining(run);
  }, 120_000);

  it("keeps tensors on the GPU: a run's outputs fed to the next run are not uploaded again", async () => {
    const path = join(root, "examples", "mlp.lrk");
    const run = compile(readFileSync(path, "utf8"), path, 8);
    await loadOnGpu(device, run);
    const gpu = await train(run, device, { steps: 2 });
    // Corrupt the host copy of a parameter the GPU still holds: the device must use its own copy.
    const name = "param:l1.weight";
    const held = gpu.store.get(name)!;
    const cpuCopy = { shape: held.shape, data: Float32Array.from(held.data) };
    const feedsFor = (store: Map<string, Tensor>) => {
      const feeds = new Map(store);
      const batch = run.data.batch("train", 2, run.batch);
      for (const [field, f] of Object.entries(batch.fields))
        feeds.set(`batch.${field}`, { shape: f.shape, data: f.data });
      for (const [k, t] of stepScalars(run.step, 3, 1, false)) feeds.set(k, t);
      return feeds;
    };
    const entry = run.step.variants.get("")!;
    const reference = await new CpuDevice().run(
      run.step,
      entry,
      feedsFor(new Map([...gpu.store, [name, cpuCopy]])),
    );
    (held.data as Float32Array).fill(1e6); // the GPU copy is what counts
    const out = await device.run(run.step, entry, feedsFor(gpu.store));
    expect(relativeDiff(out.get("loss")!, reference.get("loss")!)).toBeLessThan(TOLERANCE);
    // a new Tensor object with new data is uploaded
    const fresh = { shape: held.shape, data: Float32Array.from(cpuCopy.data) };
    const out2 = await device.run(
      run.step,
      entry,
      feedsFor(new Map([...gpu.store, [name, fresh]])),
    );
    expect(relativeDiff(out2.get("loss")!, reference.get("loss")!)).toBeLessThan(TOLERANCE);
  }, 120_000);

  it("uploads an i32 input given as floats as integers (a float64 store's ids)", async () => {
    const b = new Builder();
    const table = b.input("param", "table", [3, 2]);
    const ids = b.input("data", "ids", [4], "i32");
    const picked = b.gather(table, ids);
    const inputs = [
      { name: "table", node: table, role: "param" as const, shape: [3, 2], dtype: "f32" as const },
      { name: "ids", node: ids, role: "data" as const, shape: [4], dtype: "i32" as const },
    ];
    const feeds = new Map<string, Tensor>([
      ["table", { shape: [3, 2], data: Float32Array.of(1, 2, 3, 4, 5, 6) }],
      ["ids", { shape: [4], data: Float64Array.of(2, 0, 1, 2) }],
    ]);
    const out = await runGraph(device, b.graph, inputs, [{ name: "picked", node: picked }], feeds);
    expect([...out.get("picked")!.data]).toEqual([5, 6, 1, 2, 3, 4, 5, 6]);
  });

  it("feeds tensors that live in each other's input buffers (a swap) without losing either", async () => {
    // outputs that are the other input unchanged share that input's buffer: fed back swapped,
    // each copy would read a buffer the other has just overwritten
    const b = new Builder();
    const x = b.input("param", "x", [3]);
    const y = b.input("param", "y", [3]);
    const inputs = [
      { name: "x", node: x, role: "param" as const, shape: [3], dtype: "f32" as const },
      { name: "y", node: y, role: "param" as const, shape: [3], dtype: "f32" as const },
    ];
    const outputs = [
      { name: "x", node: y },
      { name: "y", node: x },
    ];
    let feeds = new Map<string, Tensor>([
      ["x", { shape: [3], data: Float32Array.of(1, 2, 3) }],
      ["y", { shape: [3], data: Float32Array.of(4, 5, 6) }],
    ]);
    for (let run = 1; run <= 3; run++) {
      const out = await runGraph(device, b.graph, inputs, outputs, feeds, { read: new Set() });
      feeds = new Map([...out]);
    }
    await device.sync(feeds.values());
    // three swaps: x and y exchanged
    expect([...feeds.get("x")!.data]).toEqual([4, 5, 6]);
    expect([...feeds.get("y")!.data]).toEqual([1, 2, 3]);
  });

  it("reads back only what is asked: a step's parameters stay on the GPU until synced", async () => {
    const path = join(root, "examples", "mlp.lrk");
    const run = compile(readFileSync(path, "utf8"), path, 8);
    await loadOnGpu(device, run);
    const store = await initialize(run.program, device);
    const entry = run.step.variants.get("")!;
    const feeds = batchFeeds(run, store, "train", 0, 1);
    const reference = await new CpuDevice().run(run.step, entry, feeds);
    const out = await device.run(run.step, entry, feeds, {
      read: new Set(["loss"]),
    });
    expect(relativeDiff(out.get("loss")!, reference.get("loss")!)).toBeLessThan(TOLERANCE);
    const weight = out.get("param:l1.weight")!;
    expect(weight).toBeInstanceOf(DeviceTensor);
    expect(() => weight.data).toThrow(/still on the GPU/);
    // synced, it has the interpreter's values
    const bias = out.get("param:l1.bias")!;
    await device.sync([weight]);
    expect(relativeDiff(weight, reference.get("param:l1.weight")!)).toBeLessThan(TOLERANCE);
    // fed back, it needs no host data; the step updates the parameters in place
    // (compiler/in-place.ts), so a device tensor it consumed cannot be read back afterwards
    const fedBack = new Map([...feeds, ...[...out].filter(([k]) => k !== "loss")]);
    const next = await device.run(run.step, entry, fedBack, { read: new Set(["loss"]) });
    expect(Number.isFinite(next.get("loss")!.data[0]!)).toBe(true);
    await expect(device.sync([bias])).rejects.toThrow(/overwritten/);
    const twice = await new CpuDevice().run(run.step, entry, new Map([...feeds, ...reference]));
    await device.sync([next.get("param:l1.bias")!]);
    expect(relativeDiff(next.get("param:l1.bias")!, twice.get("param:l1.bias")!)).toBeLessThan(
      TOLERANCE,
    );
  });
});
