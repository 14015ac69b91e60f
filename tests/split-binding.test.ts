// Tensors larger than one storage binding (compiler/memory-plan.ts `bufferChunks`, compiler/
// kernels/render.ts `splitBindings`): such a buffer is bound as 256-byte-aligned chunks, views of
// one GPUBuffer, and kernels reach its elements through accessors that pick the chunk. Checked:
// the chunks and the pooling; the accessor rewrite by hand; on WebGPU with the binding limit
// lowered (`maxBinding`, as `--max-binding` does) every kernel family against the interpreter
// (map, reductions and row kernels, gather and scatter-add, the special kernels, every matmul
// variant with vec4 loads, a packed 4-bit weight, f16 storage); the autotuner leaving split
// operands alone; E0602 where chunks do not fit a kernel; host reads and writes over 16 MiB; a
// TinyLM trained with split tensors against the unsplit run; and the CLI's `--max-binding`.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Builder } from "../compiler/builder.js";
import { planStep } from "../compiler/compile.js";
import { matmulCandidates } from "../compiler/kernels/matmul.js";
import { splitBindings } from "../compiler/kernels/render.js";
import {
  BindingLimitError,
  bufferChunks,
  planMemory,
  type TensorNeed,
} from "../compiler/memory-plan.js";
import type {
  GraphProgram,
  MatmulParams,
  Plan,
  ProgramInput,
  Tensor,
} from "../compiler/program.js";
import { deviceTarget, loadPlans } from "../cli/target.js";
import { roundToHalf } from "../runtime/half.js";
import { evaluate } from "../runtime/interpreter.js";
import { train, type TrainResult } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { lrkcBin, root, tinyLmSource } from "./helpers.js";
import { compile } from "./program-helpers.js";

describe("chunks of a tensor over one binding", () => {
  it("are 256-byte aligned, at most the limit, and cover the buffer", () => {
    expect(bufferChunks(4000, 1000)).toEqual([
      { offset: 0, bytes: 768 },
      { offset: 768, bytes: 768 },
      { offset: 1536, bytes: 768 },
      { offset: 2304, bytes: 768 },
      { offset: 3072, bytes: 768 },
      { offset: 3840, bytes: 160 },
    ]);
    expect(() => bufferChunks(4000, 100)).toThrow(/holds no chunk/);
  });

  it("are pooled only with tensors of as many chunks: buffers within one binding stay so", () => {
    const limits = { maxStorageBufferBindingSize: 1024, maxBufferSize: 1 << 20 };
    const tensors: TensorNeed[] = [
      { key: "a", bytes: 512, role: "activation", name: "%1" },
      { key: "big", bytes: 3000, role: "activation", name: "%2" },
      { key: "b", bytes: 1000, role: "activation", name: "%3" },
      { key: "big2", bytes: 2900, role: "activation", name: "%4" },
      { key: "huge", bytes: 5000, role: "activation", name: "%5" },
    ];
    const steps = [
      { reads: [], writes: ["a"] },
      { reads: ["a"], writes: ["big"] },
      { reads: ["big"], writes: ["b"] },
      { reads: ["b"], writes: ["big2"] },
      { reads: ["big2"], writes: ["huge"] },
    ];
    const plan = planMemory(tensors, steps, limits);
    const bufferOf = (k: string) => plan.buffers[plan.assignment.get(k)!]!;
    expect(bufferOf("big").chunks?.map((c) => c.bytes)).toEqual([1024, 1024, 952]);
    // %3 reuses %1's buffer (grown), never the split one; %4 (three chunks) reuses %2's
    expect(bufferOf("b")).toBe(bufferOf("a"));
    expect(bufferOf("big2")).toBe(bufferOf("big"));
    expect(bufferOf("huge")).not.toBe(bufferOf("big"));
    expect(bufferOf("huge").chunks).toHaveLength(5);
    for (const b of plan.buffers) if (!b.chunks) expect(b.bytes).toBeLessThanOrEqual(1024);
    // over maxBufferSize it is still refused (E0602)
    expect(() =>
      planMemory([{ key: "x", bytes: 2 << 20, role: "param", name: "w" }], [], limits),
    ).toThrow(/maxBufferSize/);
  });

  it("are read and written through accessors: plain, compound and nested accesses", () => {
    const wgsl = [
      "@group(0) @binding(0) var<storage, read_write> out0: array<f32>;",
      "@group(0) @binding(1) var<storage, read> in0: array<vec4<f32>>;",
      "@group(0) @binding(2) var<storage, read> in1: array<i32>;",
      "struct Dims {",
      "  v0: u32,",
      "}",
      "@group(0) @binding(3) var<uniform> dims: Dims;",
      "fn lrk_opaque_zero() -> u32 { return u32(arrayLength(&out0) == 0u); }",
      "fn main() {",
      "  out0[in1[3]] = in0[in1[2]].x; // a comment: out0[1] = 2;",
      "  out0[7] += in0[0][1];",
      "  let same = out0[1] == 2.0;",
      "}",
    ].join("\n");
    const split = splitBindings(
      {
        name: "k",
        wgsl,
        entryPoint: "main",
        workgroupSize: [1, 1, 1],
        dispatch: [1, 1, 1],
        bindings: [
          { buffer: 5, access: "read_write" },
          { buffer: 6, access: "read" },
          { buffer: 7, access: "read" },
        ],
        features: [],
        params: [1, 0, 0, 0],
      },
      (b) =>
        b === 7
          ? undefined
          : [
              { offset: 0, bytes: 256 },
              { offset: 256, bytes: 100 },
            ],
    );
    expect(split.bindings.map((b) => [b.buffer, b.offset])).toEqual([
      [5, 0],
      [5, 256],
      [6, 0],
      [6, 256],
      [7, undefined],
    ]);
    // vec4 elements: chunk 1 starts at element 256 / 16
    expect(split.wgsl).toContain("if (i < 16u) { return in0_c0[i]; }");
    expect(split.wgsl).toContain("@group(0) @binding(4) var<storage, read> in1: array<i32>;");
    expect(split.wgsl).toContain("@group(0) @binding(5) var<uniform> dims: Dims;");
    expect(split.wgsl).toContain("arrayLength(&out0_c0)");
    expect(split.wgsl).toContain(
      "out0_set(u32(in1[3]), in0_get(u32(in1[2])).x); // a comment: out0[1] = 2;",
    );
    expect(split.wgsl).toContain("out0_set(u32(7), out0_get(u32(7)) + (in0_get(u32(0))[1]));");
    expect(split.wgsl).toContain("let same = out0_get(u32(1)) == 2.0;");
  });
});

// No adapter is a failure, not a skip: CI installs lavapipe (scripts/setup.sh).
/** The binding limit the kernel tests plan for: 1 KiB, 256 f32s a binding. */
const SMALL = 1024;

/** Deterministic values in [-1, 1). */
const wave = (n: number, f: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * f));

interface Case {
  program: GraphProgram;
  feeds: Map<string, Tensor>;
}

function program(
  b: Builder,
  inputs: ProgramInput[],
  outputs: Record<string, number>,
): GraphProgram {
  return {
    graph: b.graph,
    inputs,
    entries: [
      { name: "entry", outputs: Object.entries(outputs).map(([name, node]) => ({ name, node })) },
    ],
  };
}

function input(b: Builder, name: string, shape: number[], dtype: "f32" | "i32" = "f32") {
  const node = b.input(dtype === "i32" ? "data" : "param", name, shape, dtype);
  return {
    node,
    input: { name, node, role: dtype === "i32" ? "data" : "param", shape, dtype } as ProgramInput,
  };
}

describe("kernels on split bindings, as the interpreter", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open({ maxBinding: SMALL });
  });
  afterAll(() => device?.destroy());

  /** Plans `c` with the lowered limit, checks some binding is a chunk, runs it, compares. */
  async function check(c: Case, params?: MatmulParams, limit = SMALL): Promise<Plan> {
    const device_ = await deviceTarget(device, [c.program], { autotune: false });
    expect(device_.limits.maxStorageBufferBindingSize).toBe(SMALL);
    // a limit over the device's lowered one: still within what the adapter binds
    const target = {
      ...device_,
      limits: { ...device_.limits, maxStorageBufferBindingSize: limit },
    };
    const plan = planStep(c.program, params ? { ...target, matmulParams: () => params } : target);
    expect(plan.buffers.some((b) => b.chunks)).toBe(true);
    expect(plan.kernels.some((k) => k.bindings.some((b) => b.offset! > 0))).toBe(true);
    const program = { ...c.program }; // a device holds one plan per program object
    device.load(program, plan);
    const got = await device.run(program, program.entries[0]!, c.feeds);
    const byNode = new Map(c.program.inputs.map((i) => [i.node, c.feeds.get(i.name)!]));
    const outputs = c.program.entries[0]!.outputs;
    const want = evaluate(
      c.program.graph,
      byNode,
      outputs.map((o) => o.node),
    );
    for (const o of outputs) {
      const g = got.get(o.name)!.data;
      const e = want.get(o.node)!.data;
      expect(g.length).toBe(e.length);
      for (let j = 0; j < e.length; j++)
        expect(Math.abs(g[j]! - e[j]!), `${o.name}[${j}]`).toBeLessThan(
          1e-4 * (1 + Math.abs(e[j]!)),
        );
    }
    return plan;
  }

  it("elementwise (map) and reductions over rows and columns", async () => {
    const b = new Builder();
    const x = input(b, "x", [40, 25]); // 4000 bytes: 4 chunks
    const y = b.add(b.gelu(x.node), b.mul(x.node, x.node));
    const rows = b.sum(x.node, [1]);
    const cols = b.max(x.node, [0]);
    const soft = b.softmax(x.node, -1);
    await check({
      program: program(b, [x.input], { y, rows, cols, soft }),
      feeds: new Map([["x", { shape: [40, 25], data: wave(1000, 0.37) }]]),
    });
  });

  it("gather (an embedding) and scatter-add (its gradient) into split tables", async () => {
    const b = new Builder();
    const table = input(b, "table", [50, 12]); // 2400 bytes: 3 chunks
    const ids = input(b, "ids", [30], "i32");
    const rows = b.gather(table.node, ids.node);
    const grad = b.scatterAdd(ids.node, b.mul(rows, b.constant(2, [30, 12])), 50);
    await check({
      program: program(b, [table.input, ids.input], { rows, grad }),
      feeds: new Map([
        ["table", { shape: [50, 12], data: wave(600, 0.11) }],
        ["ids", { shape: [30], data: Int32Array.from({ length: 30 }, (_, i) => (i * 17) % 50) }],
      ]),
    });
  });

  it("special kernels: QR and a top-k mask of split tensors", async () => {
    const b = new Builder();
    const x = input(b, "x", [64, 12]); // 3072 bytes: three chunks
    const s = input(b, "s", [320]); // 1280 bytes: two chunks
    const q = b.qr(x.node);
    const mask = b.topkMask(s.node, b.constant(17, [], "i32"));
    // full rank (a wave along the flat index would span two dimensions: Q ill-defined past them)
    const full = Float32Array.from({ length: 64 * 12 }, (_, i) => Math.sin(i * i * 0.37 + i));
    await check({
      program: program(b, [x.input, s.input], { q, mask }),
      feeds: new Map([
        ["x", { shape: [64, 12], data: full }],
        ["s", { shape: [320], data: wave(320, 1.37) }],
      ]),
    });
  });

  /**
   * x [64, 96] · wᵀ, w [80, 96], then · w: every operand and output two or three chunks at a 12 KiB
   * limit; sizes multiples of 4 (vec4 loads).
   */
  function product(): Case {
    const b = new Builder();
    const x = input(b, "x", [64, 96]);
    const w = input(b, "w", [80, 96]);
    const y = b.matmul(x.node, w.node, { transB: true });
    const z = b.matmul(y, w.node); // [64, 96]: B along n, not transposed
    return {
      program: program(b, [x.input, w.input], { y, z }),
      feeds: new Map([
        ["x", { shape: [64, 96], data: wave(64 * 96, 0.13) }],
        ["w", { shape: [80, 96], data: wave(80 * 96, 0.29) }],
      ]),
    };
  }

  it("matmul: one candidate of each variant (naive, register, shared, subgroup), vec4 loads where the variant has them", async () => {
    const candidates = matmulCandidates(
      { batch: 1, m: 64, n: 80, k: 96, transA: false, transB: true },
      new Set(device.features),
    );
    const chosen = new Map<string, MatmulParams>();
    for (const p of candidates) {
      const known = chosen.get(p.variant);
      if (!known || (p.vectorWidth > known.vectorWidth && known.vectorWidth === 1))
        chosen.set(p.variant, p);
    }
    // the naive variant too (small products take it), with scalar loads
    chosen.set("naive", {
      variant: "naive",
      rowsPerThread: 1,
      colsPerThread: 1,
      workgroupX: 8,
      workgroupY: 8,
      tileK: 0,
      vectorWidth: 1,
    });
    expect(chosen.has("register")).toBe(true);
    if (device.features.includes("subgroups")) expect(chosen.has("subgroup")).toBe(true);
    for (const p of chosen.values()) {
      const plan = await check(product(), p, 12 * 1024);
      if (p.vectorWidth === 4)
        expect(plan.kernels.some((k) => /array<vec4<f32>>/.test(k.wgsl))).toBe(true);
    }
  }, 120_000);

  it("matmul reading a packed 4-bit weight (dequantized in the kernel)", async () => {
    // at a 4 KiB limit only q (8 KiB packed) and y (8 KiB) are split, two chunks each
    const [out, inWidth, group, rows] = [256, 64, 32, 8];
    const b = new Builder();
    const q = input(b, "q", [out, inWidth]);
    q.input.bits = 4;
    const scales = input(b, "scales", [out, inWidth / group]);
    const x = input(b, "x", [rows, inWidth]);
    const w = b.binary(
      "mul",
      q.node,
      b.reshape(
        b.expand(b.reshape(scales.node, [out, inWidth / group, 1]), [out, inWidth / group, group]),
        [out, inWidth],
      ),
    );
    const y = b.matmul(x.node, w, { transB: true });
    const plan = await check(
      {
        program: program(b, [q.input, scales.input, x.input], { y }),
        feeds: new Map([
          [
            "q",
            {
              shape: [out, inWidth],
              data: Float32Array.from({ length: out * inWidth }, (_, i) => ((i * 7) % 15) - 7),
            },
          ],
          ["scales", { shape: [out, inWidth / group], data: wave((out * inWidth) / group, 0.37) }],
          ["x", { shape: [rows, inWidth], data: wave(rows * inWidth, 0.11) }],
        ]),
      },
      undefined,
      4096,
    );
    // the packed buffer itself is split
    const packed = plan.inputs.find((i) => i.name === "q")!;
    expect(plan.buffers[packed.buffer]!.chunks?.length).toBe(2);
  }, 60_000);

  it("f16 storage (a frozen weight read as f16, elementwise and as a matmul operand)", async () => {
    if (!device.features.includes("shader-f16")) return;
    const b = new Builder();
    const w = input(b, "w", [16, 64]); // 2048 bytes as f16: two chunks of 512 halves
    w.input.storage = "f16";
    const x = input(b, "x", [8, 64]);
    const scaled = b.mul(w.node, b.constant(3, [16, 64]));
    const y = b.matmul(x.node, w.node, { transB: true });
    // the values are f16 already: the upload's rounding leaves them as the interpreter reads them
    const plan = await check(
      {
        program: program(b, [w.input, x.input], { scaled, y }),
        feeds: new Map([
          ["w", { shape: [16, 64], data: roundToHalf(wave(16 * 64, 0.21)) }],
          ["x", { shape: [8, 64], data: wave(8 * 64, 0.05) }],
        ]),
      },
      undefined,
      SMALL,
    );
    expect(plan.kernels.some((k) => /_c0: array<f16>/.test(k.wgsl))).toBe(true);
  });

  it("the autotuner leaves a matmul with a split operand at its defaults (it binds operands whole)", async () => {
    const c = product();
    const lines: string[] = [];
    const twelve = await WebGpuDevice.open({ maxBinding: 12 * 1024 });
    try {
      const target = await deviceTarget(twelve, [c.program], {
        autotune: true,
        log: (line) => lines.push(line),
      });
      expect(lines.join("\n")).not.toMatch(/tuning/);
      const plan = planStep(c.program, target);
      expect(plan.kernels.filter((k) => k.kind === "matmul").length).toBe(2);
    } finally {
      twelve.destroy();
    }
  });

  it("E0602 where splitting cannot help: a kernel binding more chunks than the device allows", async () => {
    const b = new Builder();
    const x = input(b, "x", [64, 96]);
    const w = input(b, "w", [80, 96]);
    const y = b.matmul(x.node, w.node, { transB: true });
    const p = program(b, [x.input, w.input], { y });
    const target = await deviceTarget(device, [p], { autotune: false });
    const tiny = { ...target, limits: { ...target.limits, maxStorageBufferBindingSize: 256 } };
    let caught: unknown;
    try {
      planStep(p, tiny);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(BindingLimitError);
    expect((caught as BindingLimitError).chunkBindings).toBeGreaterThan(0);
    expect((caught as Error).message).toMatch(/chunks of tensors larger than one binding/);
  });
});

describe("a tensor over 16 MiB on the host side", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open({ maxBinding: 8 * 2 ** 20 });
  });
  afterAll(() => device?.destroy());

  it("is written and read back piece by piece, whole and as a device tensor synced later", async () => {
    const n = 5_000_000; // 20 MB: three 8 MiB chunks, two 16 MiB pieces each way
    const b = new Builder();
    const x = input(b, "x", [n]);
    const y = b.add(b.mul(x.node, b.constant(2, [n])), b.constant(1, [n]));
    const p = program(b, [x.input], { y });
    const plan = planStep(p, await deviceTarget(device, [p], { autotune: false }));
    expect(plan.buffers.find((buf) => buf.names.includes("x"))?.chunks).toHaveLength(3);
    device.load(p, plan);
    const data = Float32Array.from({ length: n }, (_, i) => (i % 1000) - 500);
    const feeds = new Map([["x", { shape: [n], data }]]);
    const check = (got: ArrayLike<number>) => {
      expect(got.length).toBe(n);
      for (const i of [0, 1, 2 ** 21 - 1, 2 ** 21, 4 * 2 ** 20, n - 1])
        expect(got[i], `y[${i}]`).toBe(2 * data[i]! + 1);
      let bad = 0;
      for (let i = 0; i < n; i++) if (got[i] !== 2 * data[i]! + 1) bad++;
      expect(bad).toBe(0);
    };
    check((await device.run(p, p.entries[0]!, feeds)).get("y")!.data);
    const later = (await device.run(p, p.entries[0]!, feeds, { read: new Set() })).get("y")!;
    await device.sync([later]);
    check(later.data);
  }, 60_000);
});

/**
 * TinyLM over bytes (vocabulary 256) at d 32: the tied embedding / output head [256, 32] is 32
 * KiB, the logits [4, 16, 256] 64 KiB.
 */
const trainingProgram = `${tinyLmSource()}
import std.optim.{adamw}

data corpus = std.data.text("corpus.txt", context: 16)

train split {
  model TinyLM(vocab: corpus.vocab, d: 32, layers: 1, heads: 2, ctx: 16)
  data corpus
  loss cross_entropy(model(batch.input), batch.target)
  optimize ** with adamw(lr: 1e-2)
  steps 3
  batch 4
  seed 1
}
`;

describe("training with split tensors", () => {
  let folder = "";
  const devices: WebGpuDevice[] = [];
  const results = new Map<number | undefined, { plan: Plan; result: TrainResult }>();
  beforeAll(async () => {
    folder = mkdtempSync(join(tmpdir(), "lrk-split-"));
    writeFileSync(
      join(folder, "corpus.txt"),
      "the quick brown fox jumps over the lazy dog. ".repeat(40),
    );
    // unsplit; 48 KiB: the logits in two chunks; 24 KiB: the embedding too (and its gradient and
    // AdamW states), the logits in three
    for (const limit of [undefined, 48 * 1024, 24 * 1024]) {
      const device = await WebGpuDevice.open(limit ? { maxBinding: limit } : {});
      devices.push(device);
      const run = compile(trainingProgram, { path: join(folder, "split.lrk") });
      await loadPlans(device, run.program, { autotune: false });
      const result = await train(run, device, { steps: 3 });
      results.set(limit, { plan: device.plan(run.program.step), result });
    }
  }, 240_000);
  afterAll(() => {
    for (const d of devices) d.destroy();
    if (folder) rmSync(folder, { recursive: true, force: true });
  });

  const splitNames = (plan: Plan) =>
    plan.buffers
      .filter((b) => b.chunks)
      .flatMap((b) => b.names)
      .join(" ");

  it("the same kernels on split logits: the same losses and weights, bit for bit", () => {
    const whole = results.get(undefined)!;
    const split = results.get(48 * 1024)!;
    expect(splitNames(whole.plan)).toBe("");
    expect(split.plan.buffers.filter((b) => b.chunks).length).toBeGreaterThan(0);
    // the fusion is the same, so every kernel sums in the same order: the accessors change
    // addressing only
    expect(split.plan.kernels.map((k) => k.name)).toEqual(whole.plan.kernels.map((k) => k.name));
    expect(split.result.losses).toEqual(whole.result.losses);
    for (const [name, t] of whole.result.store) {
      if (name.startsWith("batch.")) continue;
      expect([...split.result.store.get(name)!.data], name).toEqual([...t.data]);
    }
  });

  it("a split embedding (a kernel split to fit the chunks' bindings): the same run within rounding", () => {
    const whole = results.get(undefined)!;
    const split = results.get(24 * 1024)!;
    expect(splitNames(split.plan)).toMatch(/tok\.weight/);
    // AdamW's update of the embedding binds 2 chunks for each of its 7 tensors: fusion counted
    // them and split it in two kernels, whose f32 rounding (FMA contraction) may differ in the
    // last bit of a few values
    expect(split.plan.kernels.length).toBeGreaterThan(whole.plan.kernels.length);
    split.result.losses.forEach((l, i) =>
      expect(Math.abs(l - whole.result.losses[i]!), `loss ${i + 1}`).toBeLessThan(1e-6 * l),
    );
    for (const [name, t] of whole.result.store) {
      if (name.startsWith("batch.")) continue;
      // AdamW's step m̂/(√v̂ + ε) is scale-free: a gradient element near 0 carries its rounding
      // difference into its step whole. So weights are compared against the learning rate (1e-2
      // a step): within 1% of one step. A key's bias has no gradient but rounding noise (softmax
      // ignores a shift of every score), which AdamW turns into steps of up to lr: within 3 steps.
      const tolerance = /attn\.k\.bias/.test(name) ? 3 * 1e-2 : 1e-4;
      const got = split.result.store.get(name)!.data;
      for (let j = 0; j < t.data.length; j++)
        expect(Math.abs(got[j]! - t.data[j]!), `${name}[${j}]`).toBeLessThanOrEqual(
          tolerance * (1 + Math.abs(t.data[j]!)),
        );
    }
  });
});

describe("--max-binding", () => {
  const lrkc = (...args: string[]) =>
    spawnSync(process.execPath, [lrkcBin, ...args], { encoding: "utf8", cwd: root });
  const example = "examples/tiny_lm_pretrain.lrk";

  it("lrkc build --emit plan and --emit memory list each split buffer and its chunks", () => {
    const plan = lrkc(
      "build",
      example,
      "--emit",
      "plan",
      "--device",
      "portable",
      "--max-binding",
      "1MiB",
    );
    expect(plan.status, plan.stderr).toBe(0);
    expect(plan.stdout).toMatch(
      /split across storage bindings \(1\.00 MiB a binding at most\): \d+ buffers/,
    );
    // (a 4 MiB buffer in 4 bindings before the weight gradients over joined heads folded their
    // batch into k: the batched products it held are gone)
    expect(plan.stdout).toMatch(
      /1\.13 MiB in 2 bindings, bytes \[0, 1048576\) \[1048576, 1179648\)/,
    );
    const memory = lrkc("build", example, "--emit", "memory", "--max-binding", "1048576");
    expect(memory.status, memory.stderr).toBe(0);
    expect(memory.stdout).toMatch(/split across storage bindings/);
    // without it nothing of this model is split
    const whole = lrkc("build", example, "--emit", "memory");
    expect(whole.stdout).not.toMatch(/split across/);
  });

  it("lrkc train --max-binding trains on WebGPU with split tensors", () => {
    const folder = mkdtempSync(join(tmpdir(), "lrk-split-train-"));
    try {
      writeFileSync(join(folder, "corpus.txt"), "a tiny corpus of bytes. ".repeat(50));
      writeFileSync(join(folder, "split.lrk"), trainingProgram);
      const run = lrkc(
        "train",
        join(folder, "split.lrk"),
        "--device",
        "webgpu",
        "--max-binding",
        "24KiB",
        "--steps",
        "2",
        "--no-autotune",
        "--out",
        join(folder, "run"),
      );
      expect(run.status, run.stderr).toBe(0);
      expect(existsSync(join(folder, "run", "final.safetensors"))).toBe(true);
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  }, 120_000);

  it("is checked, and E0602 says when chunks are what does not fit", () => {
    const bad = lrkc("build", example, "--emit", "plan", "--max-binding", "12");
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/--max-binding must be a whole number of bytes, at least 256/);
    const train = lrkc("train", example, "--max-binding", "lots", "--device", "cpu");
    expect(train.status).toBe(1);
    expect(train.stderr).toMatch(/--max-binding must be/);
    const over = lrkc(
      "build",
      example,
      "--emit",
      "plan",
      "--device",
      "portable",
      "--max-binding",
      "64KiB",
    );
    expect(over.status).toBe(1);
    expect(over.stderr).toMatch(/error\[E0602\].*chunks of tensors larger than one binding/);
    expect(over.stderr).toMatch(/help: .*--max-binding/);
    expect(over.stderr).not.toMatch(/bug in lrkc|at .*\.js:\d+/);
  });
});
