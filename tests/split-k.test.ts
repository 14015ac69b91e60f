// Split-k (compiler/kernels/split-k.ts) on the real WebGPU adapter against the interpreter: the
// rank-r weight-gradient shapes of a LoRA step (small output, k = tokens) and odd sizes, every
// split, the template's default and subgroup/register candidates as the first pass, with and
// without an epilogue. (Timings: bench/split-k.ts.)
import { afterAll, describe, expect, it } from "vitest";
import { Builder } from "../compiler/builder.js";
import { defaultMatmulParams, matmulCandidates } from "../compiler/kernels/matmul.js";
import {
  canSplitK,
  SPLIT_K_CHOICES,
  splitKCandidates,
  splitKChunkShape,
  splitKKernels,
} from "../compiler/kernels/split-k.js";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { planStep } from "../compiler/compile.js";
import { matmulTemplate } from "../compiler/plan.js";
import type { GraphProgram, ProgramInput } from "../compiler/program.js";
import { deviceTarget } from "../cli/target.js";
import { Autotuner } from "../runtime/autotune.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import type { KernelSource, MatmulShape } from "../compiler/kernels/types.js";
import { evaluate, type Tensor } from "../runtime/interpreter.js";
import { dispatchKernel, kernelBindGroup, kernelPipeline } from "../runtime/autotune.js";

import { requestAdapter, requestDevice, summarize } from "../runtime/gpu.js";

const gpuAdapter = await requestAdapter();
const device = await requestDevice(gpuAdapter);
const adapter = summarize(gpuAdapter);
const features: ReadonlySet<string> = new Set([...device.features]);
afterAll(() => device.destroy());

const wave = (n: number, f: number) =>
  Float32Array.from({ length: n }, (_, i) => Math.sin(i * f + 0.3));

function reference(s: MatmulShape, a: Float32Array, b: Float32Array, bias?: Float32Array) {
  const g = new Builder();
  const ia = g.input("data", "a", [s.k, s.m]);
  const ib = g.input("data", "b", [s.k, s.n]);
  let out = g.matmul(ia, ib, { transA: true, transB: false });
  const feeds = new Map<number, Tensor>([
    [ia, { shape: [s.k, s.m], data: a }],
    [ib, { shape: [s.k, s.n], data: b }],
  ]);
  if (bias) {
    const ibias = g.input("data", "bias", [s.n]);
    feeds.set(ibias, { shape: [s.n], data: bias });
    out = g.add(g.mul(out, g.constant(2)), ibias);
  }
  return evaluate(g.graph, feeds, [out]).get(out)!.data;
}

function storage(data: Float32Array): GPUBuffer {
  const buffer = device.createBuffer({
    size: Math.max(16, Math.ceil(data.byteLength / 16) * 16),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
  });
  device.queue.writeBuffer(buffer, 0, data.buffer, data.byteOffset, data.byteLength);
  return buffer;
}

/** Runs the kernels in order on `buffers` (by binding number) and reads back buffer `out`. */
async function run(kernels: KernelSource[], buffers: GPUBuffer[], out: number, count: number) {
  for (const k of kernels) {
    device.pushErrorScope("validation");
    const pipeline = kernelPipeline(device, k);
    const bindGroup = kernelBindGroup(
      device,
      pipeline,
      k.bindings.map((b) => buffers[b.buffer]!),
    );
    const error = await device.popErrorScope();
    if (error) throw new Error(`${k.name}: ${error.message}\n${k.wgsl}`);
    dispatchKernel(device, pipeline, bindGroup, k.dispatch);
  }
  const read = device.createBuffer({
    size: count * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const encoder = device.createCommandEncoder();
  encoder.copyBufferToBuffer(buffers[out]!, 0, read, 0, count * 4);
  device.queue.submit([encoder.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const got = new Float32Array(read.getMappedRange().slice(0));
  read.unmap();
  read.destroy();
  return got;
}

/** The LoRA step's rank-r gradients (tokens 576, d 128 / 512, rank 8) and odd sizes. */
const SHAPES: MatmulShape[] = [
  { batch: 1, m: 8, n: 128, k: 576, transA: true, transB: false },
  { batch: 1, m: 128, n: 8, k: 576, transA: true, transB: false },
  { batch: 1, m: 8, n: 512, k: 576, transA: true, transB: false },
  { batch: 1, m: 7, n: 19, k: 384, transA: true, transB: false },
];

describe("split-k matmuls as the interpreter", () => {
  it("only TN, one batch, whole chunks of at least 32", () => {
    expect(canSplitK(SHAPES[0]!, 4)).toBe(true);
    expect(canSplitK({ ...SHAPES[0]!, transB: true }, 4)).toBe(false);
    expect(canSplitK({ ...SHAPES[0]!, transA: false }, 4)).toBe(false);
    expect(canSplitK({ ...SHAPES[0]!, k: 577 }, 4)).toBe(false);
    expect(canSplitK({ ...SHAPES[0]!, k: 96 }, 4)).toBe(false);
    expect(canSplitK({ ...SHAPES[0]!, batch: 2 }, 4)).toBe(false);
  });

  for (const shape of SHAPES)
    it(`${shape.m}x${shape.n}x${shape.k}: every split, default and candidate first passes`, async () => {
      const a = wave(shape.k * shape.m, 0.37);
      const b = wave(shape.k * shape.n, 0.11);
      const bias = wave(shape.n, 0.7);
      for (const splits of SPLIT_K_CHOICES) {
        if (!canSplitK(shape, splits)) continue;
        const chunk = splitKChunkShape(shape, splits);
        const params = [
          defaultMatmulParams(chunk, features, adapter),
          ...matmulCandidates(chunk, features).slice(0, 2),
        ];
        for (const p of params)
          for (const epilogue of [false, true]) {
            const kernels = splitKKernels(
              shape,
              splits,
              p,
              { a: 0, b: 1, partials: 2, out: 3 },
              epilogue
                ? {
                    expression: "acc * 2.0 + bias[col]",
                    declarations: "",
                    bindings: [{ name: "bias", type: "f32", buffer: 4, access: "read" }],
                  }
                : undefined,
            );
            const count = shape.m * shape.n;
            const buffers = [
              storage(a),
              storage(b),
              storage(new Float32Array(splits * count).fill(NaN)),
              storage(new Float32Array(count).fill(NaN)),
              storage(bias),
            ];
            const got = await run(kernels, buffers, 3, count);
            for (const buffer of buffers) buffer.destroy();
            const want = reference(shape, a, b, epilogue ? bias : undefined);
            let worst = 0;
            for (let i = 0; i < count; i++)
              worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / (1 + Math.abs(want[i]!)));
            expect(worst, `${kernels[0]!.name}${epilogue ? " + epilogue" : ""}`).toBeLessThan(1e-4);
          }
      }
    }, 300_000);
});

/** g = 2·(xᵀ·dy) + bias: a weight gradient's product (TN, k = tokens) with an epilogue. */
function gradientProgram(tokens: number, m: number, n: number): GraphProgram {
  const b = new Builder();
  const x = b.input("data", "x", [tokens, m]);
  const dy = b.input("data", "dy", [tokens, n]);
  const bias = b.input("param", "bias", [n]);
  const g = b.add(b.mul(b.matmul(x, dy, { transA: true }), b.constant(2)), bias);
  const inputs: ProgramInput[] = [
    { name: "x", node: x, role: "data", shape: [tokens, m], dtype: "f32" },
    { name: "dy", node: dy, role: "data", shape: [tokens, n], dtype: "f32" },
    { name: "bias", node: bias, role: "param", shape: [n], dtype: "f32" },
  ];
  return {
    graph: b.graph,
    inputs,
    entries: [{ name: "entry", outputs: [{ name: "g", node: g }] }],
  };
}

describe("split-k planned where the autotuner chose it", () => {
  const shape: MatmulShape = { batch: 1, m: 8, n: 128, k: 2048, transA: true, transB: false };

  it("is offered for small outputs with long k (TN, f32) and nowhere else", () => {
    expect(splitKCandidates(shape, features).map((p) => p.splitK)).toEqual([4, 8, 16]);
    expect(splitKCandidates({ ...shape, k: 576 }, features).map((p) => p.splitK)).toEqual([4, 8]);
    expect(splitKCandidates({ ...shape, transA: false }, features)).toEqual([]);
    expect(splitKCandidates({ ...shape, m: 512, n: 512 }, features)).toEqual([]);
    expect(splitKCandidates({ ...shape, storage: { a: "f16" } }, features)).toEqual([]);
    // the autotuner's list: the template's own, then the split-k ones, described apart
    const all = matmulTemplate.candidates(shape, features);
    expect(all.filter((p) => p.splitK).length).toBe(3);
    const names = all.map((p) => matmulTemplate.describe(p));
    expect(new Set(names).size).toBe(names.length);
    expect(names.filter((d) => d.includes("split-k"))).toHaveLength(3);
    // its class is keyed apart: a choice cached before split-k was offered is timed again
    expect(matmulTemplate.classKey(shape)).toMatch(/ split-k$/);
    expect(matmulTemplate.classKey({ ...shape, transA: false })).not.toMatch(/split-k/);
  });

  it("the autotuner keeps split-k only where it measured faster", async () => {
    const cacheFile = join(mkdtempSync(join(tmpdir(), "lrk-tune-")), "autotune.json");
    const tune = async (splitFaster: boolean) => {
      const tuner = new Autotuner(device, adapter, matmulTemplate, {
        cacheFile: `${cacheFile}.${splitFaster}`,
        measure: async (_kernel, params) => (!!params.splitK === splitFaster ? 1 : 2),
      });
      return tuner.matmul(shape);
    };
    expect((await tune(true)).splitK).toBeGreaterThan(0);
    expect((await tune(false)).splitK).toBeUndefined();
  });

  it("times both passes on the device (partials bound as binding 3)", async () => {
    const lines: string[] = [];
    const cacheFile = join(mkdtempSync(join(tmpdir(), "lrk-tune-")), "autotune.json");
    const tuner = new Autotuner(device, adapter, matmulTemplate, {
      cacheFile,
      runs: 1,
      log: (line) => lines.push(line),
    });
    await tuner.matmul(shape);
    expect(lines.filter((l) => l.includes("failed"))).toEqual([]);
    // each of the 3 split-k candidates timed with its sum pass (the close ones again)
    const sums = lines.filter((l) => l.includes("split-k sum"));
    expect(new Set(sums.map((l) => l.split(" (split-k sum")[0])).size).toBe(3);
  }, 120_000);

  it("a plan with split-k chosen: two kernels, scratch for the partials, as the interpreter, deterministic", async () => {
    const gpu = await WebGpuDevice.open();
    try {
      const program = gradientProgram(2048, 8, 128);
      const base = await deviceTarget(gpu, [program], { autotune: false });
      const split = (splits: number) => (s: MatmulShape) => ({
        ...matmulCandidates(splitKChunkShape(s, splits), features)[0]!,
        splitK: splits,
      });
      const feeds = new Map<string, Tensor>([
        ["x", { shape: [2048, 8], data: wave(2048 * 8, 0.37) }],
        ["dy", { shape: [2048, 128], data: wave(2048 * 128, 0.11) }],
        ["bias", { shape: [128], data: wave(128, 0.7) }],
      ]);
      const byNode = new Map(program.inputs.map((i) => [i.node, feeds.get(i.name)!]));
      const out = program.entries[0]!.outputs[0]!.node;
      const want = evaluate(program.graph, byNode, [out]).get(out)!.data;
      for (const splits of [4, 16]) {
        const fresh = gradientProgram(2048, 8, 128); // a device loads a program once
        const plan = planStep(fresh, { ...base, matmulParams: split(splits) });
        const names = plan.kernels.map((k) => k.name);
        expect(names.some((n) => n.includes(`(split-k ${splits})`))).toBe(true);
        expect(names.some((n) => n.startsWith(`split-k sum ${splits}x8x128`))).toBe(true);
        expect(
          plan.buffers.some((b) => b.role === "scratch" && b.bytes === 4 * splits * 8 * 128),
        ).toBe(true);
        gpu.load(fresh, plan);
        const first = (await gpu.run(fresh, fresh.entries[0]!, feeds)).get("g")!.data;
        const again = (await gpu.run(fresh, fresh.entries[0]!, feeds)).get("g")!.data;
        expect(Array.from(again)).toEqual(Array.from(first));
        let worst = 0;
        for (let i = 0; i < want.length; i++)
          worst = Math.max(worst, Math.abs(first[i]! - want[i]!) / (1 + Math.abs(want[i]!)));
        expect(worst).toBeLessThan(1e-4);
      }
      // the untuned plan never splits
      const plain = planStep(program, base);
      expect(plain.kernels.some((k) => k.name.includes("split-k"))).toBe(false);
      expect(plain.buffers.some((b) => b.role === "scratch")).toBe(false);
    } finally {
      gpu.destroy();
    }
  }, 120_000);
});
