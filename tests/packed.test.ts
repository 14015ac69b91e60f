// Quantized values are stored packed on the device: 2-, 4- or 8-bit two's complement fields of
// u32 words (compiler/program.ts `packedBits`), packed on upload (runtime/webgpu-device.ts
// `packIntegers`) and unpacked where kernels load them (compiler/wgsl.ts `BindingTable.load`).
// Checked: the layout by hand, kernels reading packed inputs against the interpreter for every
// width, and an SVDQuant program whose plan, device allocation and `--emit memory` estimate all
// count 4 bits per quantized value.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Builder } from "../compiler/builder.js";
import { packedBits, storedBytes, type ProgramInput, type Tensor } from "../compiler/program.js";
import { planStep } from "../compiler/compile.js";
import { memoryReport } from "../compiler/memory.js";
import { defaultLimits, deviceTarget, portableTarget } from "../cli/target.js";
import {
  matmulCandidates,
  matmulShapeClassKey,
  PACKED_B_TEMPLATE_VERSION,
} from "../compiler/kernels/matmul.js";
import { fuseEntries, matmulShapes, matmulTemplate } from "../compiler/plan.js";
import { Autotuner } from "../runtime/autotune.js";
import type { KernelSource, MatmulParams } from "../compiler/program.js";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SourceFile } from "../language/source.js";
import { evaluate } from "../runtime/interpreter.js";
import { packIntegers, WebGpuDevice } from "../runtime/webgpu-device.js";
import { loadOnGpu, prepare, runGraph } from "./program-helpers.js";

describe("packed integers", () => {
  it("lay out element i in word i / (32 / bits), from the low bits up, two's complement", () => {
    expect([...packIntegers([1, -1, 7, -8, 0, 2, 3, -2], 4)]).toEqual([0xe32087f1]);
    expect([...packIntegers([1, -2, 1], 2)]).toEqual([0b011001]);
    expect([...packIntegers([-128, 127, 5, -1, 9], 8)]).toEqual([0xff057f80, 9]);
    expect(() => packIntegers([8], 4)).toThrow(/does not fit/);
    expect(() => packIntegers([0.5], 8)).toThrow(/does not fit/);
  });

  it("use the narrowest of 2, 4 and 8 bits that holds the values, and count their bytes", () => {
    expect([2, 3, 4, 5, 8, 9].map((bits) => packedBits({ bits }))).toEqual([
      2,
      4,
      4,
      8,
      8,
      undefined,
    ]);
    expect(packedBits({})).toBeUndefined();
    expect(storedBytes({ bits: 4 }, 1000)).toBe(500);
    expect(storedBytes({ bits: 3 }, 9)).toBe(8); // 9 nibbles: two words
    expect(storedBytes({}, 10)).toBe(40);
  });
});

describe("kernels reading packed inputs on WebGPU", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  });
  afterAll(() => device?.destroy());

  for (const bits of [2, 3, 4, 8]) {
    it(`unpack ${bits}-bit values as the interpreter reads them (elementwise, reduce, matmul prologue)`, async () => {
      const [rows, cols] = [5, 12]; // 60 values: the last word is partly used
      const max = 2 ** (bits - 1) - 1;
      const values = Float32Array.from(
        { length: rows * cols },
        (_, i) => ((i * 7) % (2 * max + 1)) - max,
      );
      const b = new Builder();
      const q = b.input("param", "q", [rows, cols]);
      const scale = b.input("param", "scale", [rows, 1]);
      const x = b.input("data", "x", [3, cols]);
      const w = b.binary("mul", q, b.expand(scale, [rows, cols]));
      const shifted = b.binary("add", q, b.constant(0.5, [rows, cols]));
      const rowSum = b.sum(q, [1]);
      const y = b.matmul(x, w, { transB: true });
      const inputs: ProgramInput[] = [
        { name: "q", node: q, role: "param", shape: [rows, cols], dtype: "f32", bits },
        { name: "scale", node: scale, role: "param", shape: [rows, 1], dtype: "f32" },
        { name: "x", node: x, role: "data", shape: [3, cols], dtype: "f32" },
      ];
      const outputs = [
        { name: "shifted", node: shifted },
        { name: "rowSum", node: rowSum },
        { name: "y", node: y },
      ];
      const feeds = new Map<string, Tensor>([
        ["q", { shape: [rows, cols], data: values }],
        ["scale", { shape: [rows, 1], data: Float32Array.from([0.5, -1, 2, 0.25, 3]) }],
        [
          "x",
          {
            shape: [3, cols],
            data: Float32Array.from({ length: 3 * cols }, (_, i) => Math.sin(i)),
          },
        ],
      ]);
      const got = await runGraph(device, b.graph, inputs, outputs, feeds);
      const byNode = new Map(inputs.map((i) => [i.node, feeds.get(i.name)!]));
      const want = evaluate(
        b.graph,
        byNode,
        outputs.map((o) => o.node),
      );
      outputs.forEach((o) => {
        const g = got.get(o.name)!.data;
        const e = want.get(o.node)!.data;
        expect(g.length).toBe(e.length);
        for (let j = 0; j < e.length; j++) expect(g[j]!, `${o.name}[${j}]`).toBeCloseTo(e[j]!, 4);
      });
    });
  }
});

/**
 * A packed weight w = dequantize(q) [out, inWidth] (values packed along inWidth, one scale per
 * `group` of them, as std.quant builds it) in the two products of a training step: y = x·wᵀ
 * (forward; B packed along k) and dx = dy·w (input gradient; B packed along n), with A stored
 * either way (transposed, the batches are not folded: the prologue's per-element path). Sizes:
 * above the naive kernel's limit, out odd (partial tiles along n, and a k tail for dy·w), rows odd.
 */
function dequantProducts(bits: number, group: number, transA: boolean) {
  // x [batches, rows, inWidth]: the matmul folds the batches into its rows (7 · 9 = 63); per batch
  // it is narrow (9 rows), which is when fusion reads the dequantized weight as a prologue
  const [batches, rows, out, inWidth] = [7, 9, 99, 128];
  const max = 2 ** (bits - 1) - 1;
  const b = new Builder();
  const q = b.input("param", "q", [out, inWidth]);
  const scales = b.input("param", "scales", [out, inWidth / group]);
  // one dequantization per product, as the step's graph has (a weight read twice is materialized)
  const dequantize = () =>
    b.binary(
      "mul",
      q,
      b.reshape(
        b.expand(b.reshape(scales, [out, inWidth / group, 1]), [out, inWidth / group, group]),
        [out, inWidth],
      ),
    );
  const x = b.input("data", "x", transA ? [batches, inWidth, rows] : [batches, rows, inWidth]);
  const dy = b.input("data", "dy", transA ? [batches, out, rows] : [batches, rows, out]);
  const y = b.matmul(x, dequantize(), { transA, transB: true });
  const dx = b.matmul(dy, dequantize(), { transA, transB: false });
  const inputs: ProgramInput[] = [
    { name: "q", node: q, role: "param", shape: [out, inWidth], dtype: "f32", bits },
    { name: "scales", node: scales, role: "param", shape: [out, inWidth / group], dtype: "f32" },
    { name: "x", node: x, role: "data", shape: b.graph.node(x).shape, dtype: "f32" },
    { name: "dy", node: dy, role: "data", shape: b.graph.node(dy).shape, dtype: "f32" },
  ];
  const wave = (n: number, f: number) =>
    Float32Array.from({ length: n }, (_, i) => Math.sin(i * f));
  const feeds = new Map<string, Tensor>([
    [
      "q",
      {
        shape: [out, inWidth],
        data: Float32Array.from(
          { length: out * inWidth },
          (_, i) => ((i * 7) % (2 * max + 1)) - max,
        ),
      },
    ],
    ["scales", { shape: [out, inWidth / group], data: wave((out * inWidth) / group, 0.37) }],
    ["x", { shape: [...b.graph.node(x).shape], data: wave(batches * rows * inWidth, 0.11) }],
    ["dy", { shape: [...b.graph.node(dy).shape], data: wave(batches * rows * out, 0.23) }],
  ]);
  const outputs = [
    { name: "y", node: y },
    { name: "dx", node: dx },
  ];
  return { graph: b.graph, inputs, outputs, feeds };
}

describe("the matmul reading a packed weight word by word (dequantized in registers)", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  });
  afterAll(() => device?.destroy());

  /** Runs the products with `params` (the device's defaults if none), checks them, returns the WGSL. */
  async function check(
    bits: number,
    group: number,
    transA: boolean,
    params?: MatmulParams,
  ): Promise<string> {
    const { graph, inputs, outputs, feeds } = dequantProducts(bits, group, transA);
    const program = { graph, inputs, entries: [{ name: "entry", outputs }] };
    const target = await deviceTarget(device, [program], { autotune: false });
    const plan = planStep(program, params ? { ...target, matmulParams: () => params } : target);
    device.load(program, plan);
    const got = await device.run(program, program.entries[0]!, feeds);
    const byNode = new Map(inputs.map((i) => [i.node, feeds.get(i.name)!]));
    const want = evaluate(
      graph,
      byNode,
      outputs.map((o) => o.node),
    );
    for (const o of outputs) {
      const g = got.get(o.name)!.data;
      const e = want.get(o.node)!.data;
      expect(g.length).toBe(e.length);
      for (let j = 0; j < e.length; j++)
        expect(Math.abs(g[j]! - e[j]!), `${o.name}[${j}]`).toBeLessThan(
          1e-3 * (1 + Math.abs(e[j]!)),
        );
    }
    return plan.kernels.map((k) => k.wgsl).join("\n");
  }

  for (const [bits, group] of [
    [4, 32],
    [2, 64],
    [8, 32],
  ] as const) {
    for (const transA of [false, true]) {
      it(`${bits}-bit, group ${group}, A ${transA ? "transposed" : "row-major"}: the defaults, as the interpreter`, async () => {
        const wgsl = await check(bits, group, transA);
        if (!device.features.includes("subgroups") || transA) return;
        // both products take the packed path on a device with subgroups
        expect(wgsl).toContain(`packed ${bits}-bit words along k, group ${group}`);
        expect(wgsl).toContain(`packed ${bits}-bit words along n, group ${group}`);
      });
    }
  }

  /** Every candidate of both products (the packed words read by all but naive), checked. */
  async function checkCandidates(bits: number, group: number, variants: string[]) {
    const shapes = [
      { batch: 1, m: 63, n: 99, k: 128, transA: false, transB: true },
      { batch: 1, m: 63, n: 128, k: 99, transA: false, transB: false },
    ];
    // the shared tiles' slabs and the register tiles as a GPU without subgroups has them
    const features = new Set([...device.features, "subgroups"]);
    const candidates = new Map<string, MatmulParams>();
    for (const shape of shapes)
      for (const p of matmulCandidates(shape, features))
        if (
          variants.includes(p.variant) &&
          (p.variant !== "subgroup" || device.features.includes("subgroups"))
        )
          candidates.set(JSON.stringify(p), p);
    expect(candidates.size).toBeGreaterThan(0);
    for (const p of candidates.values()) {
      const wgsl = await check(bits, group, false, p);
      if (p.variant !== "naive" && (p.variant !== "subgroup" || p.colsPerThread % 8 === 0))
        expect(wgsl, describeParams(p)).toContain(`packed ${bits}-bit words along k`);
      if (p.variant === "register" || p.variant === "shared")
        expect(wgsl, describeParams(p)).toContain(`packed ${bits}-bit words along n`);
    }
  }

  it("every subgroup candidate of both products (4-bit, group 32), as the interpreter", async () => {
    await checkCandidates(4, 32, ["subgroup"]);
  }, 300_000); // lavapipe compiles each candidate's two kernels (about a second each)

  for (const [bits, group] of [
    [4, 32],
    [2, 64],
    [8, 32],
  ] as const)
    it(`every register, shared and naive candidate (${bits}-bit, group ${group}), as the interpreter`, async () => {
      await checkCandidates(bits, group, ["register", "shared", "naive"]);
    }, 300_000);
});

describe("the autotuner on packed products", () => {
  const dequant = dequantProducts(4, 32, false);
  const program = {
    graph: dequant.graph,
    inputs: dequant.inputs,
    entries: [{ name: "entry", outputs: dequant.outputs }],
  };
  const shapes = matmulShapes(program, fuseEntries(program, defaultLimits));

  it("sees the products' packed B in the shapes it tunes, and keys its cache on it", () => {
    const packed = shapes.filter((s) => s.storage?.b);
    // y = x·wᵀ (B packed along k) and dx = dy·w (along n)
    expect(packed.map((s) => [s.transB, s.storage])).toEqual([
      [true, { b: { bits: 4, group: 32 } }],
      [false, { b: { bits: 4, group: 32 } }],
    ]);
    const f32 = { ...packed[0]!, storage: undefined };
    expect(matmulShapeClassKey(packed[0]!)).toBe(
      `${matmulShapeClassKey(f32)} B packed4 g32 r${PACKED_B_TEMPLATE_VERSION}`,
    );
  });

  it("times the kernel that runs: the packed words read by every variant that can, 5 bindings", async () => {
    const cacheFile = join(mkdtempSync(join(tmpdir(), "lrk-tune-")), "autotune.json");
    const timed: { kernel: KernelSource; params: MatmulParams }[] = [];
    const features = new Set(["subgroups"]);
    const fakeDevice = { features } as unknown as GPUDevice;
    const adapter = { vendor: "v", architecture: "a", description: "d", fallback: false };
    const tuner = new Autotuner(fakeDevice, adapter as never, matmulTemplate, {
      cacheFile,
      measure: async (kernel, params) => {
        timed.push({ kernel, params });
        return timed.length === 1 ? 1 : 5; // the first timed wins, no other close to it
      },
    });
    const forward = shapes.find((s) => s.storage?.b && s.transB)!;
    const chosen = await tuner.matmul(forward);
    const candidates = matmulCandidates(forward, features);
    expect(timed.map((t) => t.params)).toEqual(expect.arrayContaining(candidates));
    expect(timed).toHaveLength(candidates.length);
    expect(candidates.map((c) => c.variant)).toEqual(
      expect.arrayContaining(["subgroup", "register", "shared"]),
    );
    for (const { kernel, params } of timed) {
      expect(kernel.bindings.map((b) => b.buffer)).toEqual([0, 1, 2, 3, 4]);
      if (params.variant !== "naive")
        expect(kernel.wgsl, describeParams(params)).toContain("packed 4-bit words along k");
    }
    const cached = JSON.parse(readFileSync(cacheFile, "utf8")) as {
      adapters: Record<string, Record<string, { params: MatmulParams }>>;
    };
    const keys = Object.keys(Object.values(cached.adapters)[0]!);
    expect(keys).toEqual([matmulShapeClassKey(forward)]);
    expect(keys[0]).toContain("B packed4 g32");
    expect(chosen).toEqual(timed[0]!.params);
  });
});

describe("the autotuner on a packed product, on WebGPU", () => {
  it("runs every candidate's kernel on the packed values and scales it binds", async () => {
    const dequant = dequantProducts(8, 32, false);
    const program = {
      graph: dequant.graph,
      inputs: dequant.inputs,
      entries: [{ name: "entry", outputs: dequant.outputs }],
    };
    const shape = matmulShapes(program, fuseEntries(program, defaultLimits)).find(
      (s) => s.storage?.b && !s.transB,
    )!;
    const device = await WebGpuDevice.open();
    try {
      const lines: string[] = [];
      const cacheFile = join(mkdtempSync(join(tmpdir(), "lrk-tune-")), "autotune.json");
      // tuned as for a GPU: every candidate, the shared-memory tiles too
      // (a software adapter's tuning leaves those out)
      const gpu = { ...device.summary, fallback: false, architecture: "gpu", description: "" };
      const tuner = new Autotuner(device.device, gpu, matmulTemplate, {
        cacheFile,
        runs: 1,
        log: (line) => lines.push(line),
      });
      await tuner.matmul(shape);
      expect(lines.filter((l) => l.includes("failed"))).toEqual([]);
      const all = matmulCandidates(shape, new Set(device.features));
      expect(all.map((p) => p.variant)).toContain("shared");
      expect(tuner.measurements).toBe(all.length);
    } finally {
      device.destroy();
    }
  }, 120_000);
});

const describeParams = (p: MatmulParams) => matmulTemplate.describe(p);

const svdquant = `import std.nn.{Linear}
import std.quant.{svdquant}
import std.adapters.{lora}
import std.optim.{adamw}

data moons = std.data.two_moons(n: 64)

model Net {
  up = Linear(2, 64)
  mid = Linear(64, 64)
  head = Linear(64, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] = head(gelu(mid(gelu(up(x)))))
}

train q {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  quantize mid with svdquant(bits: 4, group: 16, rank: 4)
  adapt mid with lora(rank: 2)
  optimize adapters with adamw(lr: 1e-3)
}
`;

describe("an SVDQuant program's quantized values", () => {
  it("take 4 bits each in the plan, on the device and in `--emit memory`'s estimate", async () => {
    const { run, diagnostics } = prepare(new SourceFile("q.lrk", svdquant), { batch: 4 });
    expect(diagnostics).toEqual([]);
    const step = run!.program.step;
    const values = step.inputs.find((i) => i.name === "buffer:mid.svdquant.q.values")!;
    expect(values.bits).toBe(4);
    const plan = planStep(step, portableTarget);
    const planned = plan.inputs.find((i) => i.name === values.name)!;
    expect(planned.packed).toBe(4);
    expect(plan.buffers[planned.buffer]!.bytes).toBe((64 * 64) / 2);
    // the estimate's frozen bytes: the float weights and the packed values
    const frozen = step.inputs
      .filter((i) => i.role === "param" && !step.trainable.includes(i.name.slice(6)))
      .reduce(
        (sum, i) => sum + (i === values ? (64 * 64) / 2 : 4 * i.shape.reduce((a, d) => a * d, 1)),
        0,
      );
    expect(memoryReport(step).frozen).toBe(frozen);
    // full fine-tuning trains the dense weights the quantizer replaced, with AdamW's two moments
    // (not the packed values, the low-rank buffers or the adapters)
    const model = run!.program.params.filter((p) => p.origin === "model");
    const report = memoryReport(step, model);
    const dense = model.reduce((a, p) => a + 4 * p.shape.reduce((x, d) => x * d, 1), 0);
    expect(model.some((p) => p.path === "mid.weight")).toBe(true);
    expect(report.fullAdamW - report.activations).toBe(4 * dense);
    // the device allocates what the plan says
    const device = await WebGpuDevice.open();
    try {
      await loadOnGpu(device, run!);
      const gpuPlan = device.plan(step)!;
      const onDevice = gpuPlan.inputs.find((i) => i.name === values.name)!;
      expect(onDevice.packed).toBe(4);
      expect(device.allocatedBytes(step)).toBe(gpuPlan.buffers.reduce((a, b) => a + b.bytes, 0));
      expect(gpuPlan.buffers[onDevice.buffer]!.bytes).toBe((64 * 64) / 2);
    } finally {
      device.destroy();
    }
  });
});
