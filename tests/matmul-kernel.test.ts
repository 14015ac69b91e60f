// The matmul template on the real WebGPU adapter (lavapipe in CI) against the CPU interpreter,
// for every parameterization the autotuner can choose, and the autotuner's disk cache.
//
// Compile time dominates on lavapipe (a shader compiles at its first dispatch, ~0.1–0.5 s each), so
// the grid is chosen rather than exhaustive: every parameterization runs an odd-size case
// (17 × 65 × 130: no dimension a multiple of any tile or of 4, so scalar loads and partial tiles)
// in all four transA/transB layouts, and a batched case with an epilogue whose sizes are multiples
// of 4 but not of the tiles (the vec4 load paths) in the two layouts that between them use every
// vec4 path (NT: A and B along k; TN: A along m, B along n). The default parameters also run the
// edge shapes (1 × 1 × 1, a vector, exact tiles).

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Builder } from "../compiler/builder.js";
import { evaluate, type Tensor } from "../runtime/interpreter.js";
import {
  defaultMatmulParams,
  describeMatmulParams,
  matmulCandidates,
  matmulKernel,
  matmulShapeClassKey,
  validateMatmulParams,
} from "../compiler/kernels/matmul.js";
import type {
  KernelSource,
  MatmulFusion,
  MatmulParams,
  MatmulShape,
} from "../compiler/kernels/types.js";
import { fuse } from "../compiler/fuse/index.js";
import { numel } from "../compiler/ir.js";
import { groupKernels, matmulTemplate } from "../compiler/plan.js";
import {
  Autotuner,
  adapterKey,
  dispatchKernel,
  kernelBindGroup,
  kernelPipeline,
  timeMatmulKernel,
} from "../runtime/autotune.js";
import { requestAdapter, requestDevice, summarize } from "../runtime/gpu.js";

// No adapter is a failure, not a skip: CI installs lavapipe (scripts/setup.sh).
const gpuAdapter = await requestAdapter().catch((e: Error & { help?: string }) => {
  throw new Error(
    `the matmul kernel tests need a WebGPU adapter and found none (${e.message}). ` +
      (e.help ?? "Install Mesa's lavapipe: bash scripts/setup.sh."),
  );
});
const device = await requestDevice(gpuAdapter);
const adapter = summarize(gpuAdapter);
const features: ReadonlySet<string> = new Set([...device.features]);

afterAll(() => device.destroy());

// ------------------------------------------------------------------------------ helpers

/** Deterministic uniform numbers in [-1, 1). */
function random(count: number, seed: number): Float32Array<ArrayBuffer> {
  let s = seed >>> 0;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) / 2 ** 31 - 1;
  }
  return out;
}

const storedA = (s: MatmulShape) => [s.batch, s.transA ? s.k : s.m, s.transA ? s.m : s.k];
const storedB = (s: MatmulShape) => [s.batch, s.transB ? s.n : s.k, s.transB ? s.k : s.n];

/** The interpreter's f32 result of matmul (then `acc * 2 + bias[col]` with a bias). */
function reference(s: MatmulShape, a: Float32Array, b: Float32Array, bias?: Float32Array) {
  const g = new Builder();
  const ia = g.input("data", "a", storedA(s));
  const ib = g.input("data", "b", storedB(s));
  let out = g.matmul(ia, ib, { transA: s.transA, transB: s.transB });
  const feeds = new Map<number, Tensor>([
    [ia, { shape: storedA(s), data: a }],
    [ib, { shape: storedB(s), data: b }],
  ]);
  if (bias) {
    const ibias = g.input("data", "bias", [s.n]);
    feeds.set(ibias, { shape: [s.n], data: bias });
    out = g.add(g.mul(out, g.constant(2)), ibias);
  }
  return evaluate(g.graph, feeds, [out]).get(out)!.data;
}

function storage(data: Float32Array<ArrayBuffer>): GPUBuffer {
  const buffer = device.createBuffer({
    size: Math.max(16, Math.ceil(data.byteLength / 16) * 16),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
  });
  device.queue.writeBuffer(buffer, 0, data);
  return buffer;
}

const GUARD = 64; // NaN words after the output: a store out of bounds would overwrite them

const BIAS_EPILOGUE = (binding: number): NonNullable<MatmulFusion["epilogue"]> => ({
  expression: "acc * 2.0 + bias[col]",
  declarations: `@group(0) @binding(${binding}) var<storage, read> bias: array<f32>;`,
  bindings: [{ buffer: 3, access: "read" }],
});

/** Runs the kernel for `params` on random inputs and checks it against the interpreter. */
async function check(s: MatmulShape, params: MatmulParams, epilogue = false): Promise<void> {
  const a = random(s.batch * s.m * s.k, 1 + s.m * 7 + s.k);
  const b = random(s.batch * s.k * s.n, 2 + s.n * 5 + s.k);
  const bias = epilogue ? random(s.n, 3 + s.n) : undefined;
  const kernel = matmulKernel(
    s,
    params,
    { a: 0, b: 1, out: 2 },
    epilogue ? { epilogue: BIAS_EPILOGUE(3) } : undefined,
  );
  const outCount = s.batch * s.m * s.n;
  const inputs = [a, b, new Float32Array(outCount + GUARD).fill(NaN)];
  if (bias) inputs.push(bias);
  const got = await runKernel(kernel, inputs, outCount);
  compare(kernel.name, got, reference(s, a, b, bias), (i) => {
    const bt = Math.floor(i / (s.m * s.n));
    const row = Math.floor((i % (s.m * s.n)) / s.n);
    return `[batch ${bt}, row ${row}, col ${i % s.n}]`;
  });
}

/**
 * Runs `kernel` with `inputs[i]` bound at binding i (binding 2, the output, holds `outCount`
 * words then the NaN guard) and returns what binding 2 holds afterwards.
 */
async function runKernel(
  kernel: KernelSource,
  inputs: Float32Array<ArrayBuffer>[],
  outCount: number,
): Promise<Float32Array> {
  const buffers = inputs.map(storage);
  const read = device.createBuffer({
    size: (outCount + GUARD) * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  try {
    device.pushErrorScope("validation");
    const module = device.createShaderModule({ code: kernel.wgsl });
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === "error");
    if (errors.length)
      throw new Error(
        `${kernel.name}: WGSL errors:\n${errors.map((e) => `${e.lineNum}: ${e.message}`).join("\n")}\n${kernel.wgsl}`,
      );
    const pipeline = kernelPipeline(device, kernel);
    const bindGroup = kernelBindGroup(device, pipeline, buffers);
    const error = await device.popErrorScope();
    if (error) throw new Error(`${kernel.name}: ${error.message}`);
    dispatchKernel(device, pipeline, bindGroup, kernel.dispatch);
    const encoder = device.createCommandEncoder();
    encoder.copyBufferToBuffer(buffers[2]!, 0, read, 0, (outCount + GUARD) * 4);
    device.queue.submit([encoder.finish()]);
    // A plain await: here a wait is mostly the first dispatch's compile, which GpuWaiter's
    // learned estimate would turn into oversleeping on the next (cached) one.
    await read.mapAsync(GPUMapMode.READ);
    const got = new Float32Array(read.getMappedRange().slice(0));
    read.unmap();
    return got;
  } finally {
    for (const buffer of buffers) buffer.destroy();
    read.destroy();
  }
}

/** `got` (the output, then the guard) against `want` within 1e-4 of want's largest magnitude. */
function compare(
  name: string,
  got: Float32Array,
  want: ArrayLike<number>,
  at: (i: number) => string,
): void {
  const outCount = want.length;
  let scale = 0;
  for (let i = 0; i < outCount; i++) scale = Math.max(scale, Math.abs(want[i]!));
  const tolerance = 1e-4 * Math.max(scale, 1e-30);
  let worst = 0;
  let where = -1;
  for (let i = 0; i < outCount; i++) {
    const d = Math.abs(got[i]! - want[i]!);
    if (!(d <= worst)) [worst, where] = [Number.isNaN(d) ? Infinity : d, i];
  }
  expect(
    worst,
    `${name}: worst error at ${at(where)}: got ${got[where]}, want ${want[where]} (tolerance ${tolerance})`,
  ).toBeLessThanOrEqual(tolerance);
  const overwritten = got.subarray(outCount).findIndex((x) => !Number.isNaN(x));
  expect(overwritten, `${name}: stored past the output`).toBe(-1);
}

/**
 * A base matmul with a low-rank add in its epilogue, built by `build` as IR, fused and planned
 * as the plan does (with `params` for the kernel): one kernel, checked against the interpreter.
 */
async function checkLowRank(
  params: MatmulParams,
  build: (b: Builder) => number,
  name: string,
): Promise<void> {
  const builder = new Builder();
  const out = build(builder);
  const graph = builder.graph;
  const fusion = fuse(graph, [out]);
  expect(
    fusion.groups.map((g) => g.kind),
    name,
  ).toEqual(["matmul"]);
  const group = fusion.groups[0]!;
  expect(group.lowRank, name).toHaveLength(1);
  const isBuffer = (node: number) => graph.node(node).op.kind === "input";
  const kernels = groupKernels(
    graph,
    group,
    isBuffer,
    (node) => node,
    new Map(),
    () => params,
  );
  expect(kernels).toHaveLength(1);
  const kernel = kernels[0]!;
  expect(kernel.name, name).toContain(describeMatmulParams(params));
  // the kernel computes the branch: in its tile (MatmulBranch, bindings mm_ld0 / mm_lu0) where
  // the operands are stored matrices, else as the epilogue's per-element loop
  const id = group.lowRank![0]!;
  expect(kernel.wgsl).toMatch(new RegExp(`low-rank %${id} = matmul|fn mm_branch0\\(`));
  const outCount = numel(graph.shape(out));
  const feeds = new Map<number, Tensor>();
  for (const n of graph.nodes)
    if (n.op.kind === "input")
      feeds.set(n.id, { shape: [...n.shape], data: random(numel(n.shape), 11 + n.id * 13) });
  const inputs = kernel.bindings.map((b, i) =>
    i === 2 ? new Float32Array(outCount + GUARD).fill(NaN) : feeds.get(b.buffer)!.data,
  );
  expect(kernel.bindings[2]!.buffer).toBe(out);
  const got = await runKernel(kernel, inputs as Float32Array<ArrayBuffer>[], outCount);
  const want = evaluate(graph, feeds, [out]).get(out)!.data;
  compare(`${name}, ${kernel.name}`, got, want, (i) => `element ${i}`);
}

/**
 * The low-rank cases every parameterization runs (odd sizes, rank 5, scale 0.5):
 *  - folded: x[2, 17, 130] @ Wᵀ (W [65, 130], shared by the batch: folded into rows) + bias
 *    + 0.5·(t[2, 17, 5] @ Uᵀ) with U [65, 5] shared too, the scale on the left;
 *  - prologue: A = 0.5·x has no buffer; the kernel scales x where it loads it;
 *  - batched: Aᵀ·B over a batch of 2 (A stored [2, 130, 17], B [2, 130, 65]), the low-rank term
 *    first in the add, its T read transposed (stored [2, 5, 17]), U plain, the scale on the right.
 */
const LOW_RANK_CASES: [string, (b: Builder) => number][] = [
  [
    "x·Wᵀ + b + 0.5·(t·Uᵀ), batch folded",
    (b) => {
      const x = b.input("data", "x", [2, 17, 130]);
      const w = b.input("param", "w", [65, 130]);
      const bias = b.input("param", "bias", [65]);
      const t = b.input("data", "t", [2, 17, 5]);
      const u = b.input("param", "u", [65, 5]);
      const base = b.add(b.matmul(x, b.transpose(w)), bias);
      return b.add(base, b.mul(b.constant(0.5), b.matmul(t, b.transpose(u))));
    },
  ],
  [
    "(Tᵀ·U)·0.5 + Aᵀ·B, batched",
    (b) => {
      const a = b.input("data", "a", [2, 130, 17]);
      const bb = b.input("data", "b", [2, 130, 65]);
      const t = b.input("data", "t", [2, 5, 17]);
      const u = b.input("data", "u", [2, 5, 65]);
      const low = b.mul(b.matmul(t, u, { transA: true }), b.constant(0.5));
      return b.add(low, b.matmul(a, bb, { transA: true }));
    },
  ],
  [
    "(0.5·x)·W + t·U, A computed in its loads (a prologue: n = 36 is narrow)",
    (b) => {
      const x = b.input("data", "x", [2, 17, 130]);
      const w = b.input("param", "w", [130, 36]);
      const t = b.input("data", "t", [2, 17, 5]);
      const u = b.input("param", "u", [5, 36]);
      return b.add(b.matmul(b.mul(x, b.constant(0.5)), w), b.matmul(t, u));
    },
  ],
];

// ------------------------------------------------------------------------------ grid

const LAYOUTS = [
  [false, false],
  [false, true],
  [true, false],
  [true, true],
] as const;
const layoutName = (transA: boolean, transB: boolean) =>
  `${transA ? "T" : "N"}${transB ? "T" : "N"}`;

const square = (n: number, batch = 1): MatmulShape => ({
  batch,
  m: n,
  n,
  k: n,
  transA: false,
  transB: false,
});
/** Shapes whose classes give every candidate list the runtime and the benchmark meet. */
const CLASS_SHAPES: MatmulShape[] = [
  square(17),
  square(64),
  square(256),
  square(1024),
  square(2048),
  square(130, 3),
  { batch: 1, m: 1024, n: 16, k: 1024, transA: false, transB: false }, // LoRA down/up
  { batch: 1, m: 16, n: 1024, k: 1024, transA: true, transB: false },
  { batch: 1, m: 1, n: 1024, k: 1024, transA: false, transB: false }, // a vector
  { batch: 1, m: 3, n: 1, k: 17, transA: false, transB: false },
  // attention's batched tiny products (batch·heads, 9 × 9 scores, head dim 32) and a skinny,
  // k-heavy LoRA gradient: their classes bring the small-workgroup subgroup tiles
  { batch: 256, m: 9, n: 9, k: 32, transA: false, transB: true },
  { batch: 256, m: 9, n: 32, k: 9, transA: false, transB: false },
  { batch: 1, m: 8, n: 512, k: 576, transA: true, transB: false },
  // rank-8 products (a LoRA step's x·Aᵀ and its gradient): 8-column subgroup tiles, B's loads
  // spread over steps of k
  { batch: 1, m: 576, n: 8, k: 512, transA: false, transB: true },
  { batch: 1, m: 512, n: 8, k: 576, transA: true, transB: false },
];

/** Every candidate (with and without subgroups) and every default, once each. */
function allParams(): MatmulParams[] {
  const seen = new Map<string, MatmulParams>();
  const add = (p: MatmulParams) => seen.set(`${describeMatmulParams(p)} tk${p.tileK}`, p);
  const gpuKind = { fallback: false, architecture: "gpu" };
  for (const s of CLASS_SHAPES) {
    for (const set of [features, new Set<string>()]) {
      matmulCandidates(s, set).forEach(add);
      add(defaultMatmulParams(s, set, adapter));
      add(defaultMatmulParams(s, set, gpuKind));
    }
  }
  return [...seen.values()].filter(
    (p) =>
      (p.variant !== "subgroup" || features.has("subgroups")) &&
      ((p.kUnroll ?? 1) === 1 || UNROLLED_IN_GRID.has(describeMatmulParams(p))),
  );
}

/**
 * The k-unrolled tiles the grid runs: rows 1/2/4, 16 and 32 columns, 8 and 64 rows per
 * workgroup, steps of 2 and 4 — the code paths of every kUnroll candidate. (Each unrolled tile
 * costs lavapipe ~10 s to compile on a cold shader cache; all 15 made this file 212 s cold.)
 */
const UNROLLED_IN_GRID = new Set([
  "subgroup 2x32 wg 1x8 v4 u4",
  "subgroup 4x32 wg 1x8 v4 u4",
  "subgroup 4x32 wg 1x8 v4 u2",
  "subgroup 4x16 wg 1x8 v4 u4",
  "subgroup 1x16 wg 1x64 v4 u4",
]);

describe(`matmul template on ${adapter.description}`, () => {
  it("candidates are 4–11 valid parameterizations and include the default", () => {
    for (const s of CLASS_SHAPES) {
      const candidates = matmulCandidates(s, features);
      expect(candidates.length).toBeGreaterThanOrEqual(4);
      expect(candidates.length).toBeLessThanOrEqual(11);
      const keys = candidates.map((p) => `${describeMatmulParams(p)} tk${p.tileK}`);
      expect(new Set(keys).size, "no duplicates").toBe(keys.length);
      for (const p of candidates) validateMatmulParams(p);
      const d = describeMatmulParams(defaultMatmulParams(s, features, adapter));
      expect(candidates.map(describeMatmulParams)).toContain(d);
    }
    if (features.has("subgroups") && adapter.fallback)
      expect(defaultMatmulParams(square(1024), features, adapter).variant).toBe("subgroup");
    expect(defaultMatmulParams(square(1024), features, { fallback: false }).variant).toBe("shared");
  });

  for (const params of allParams()) {
    it(describeMatmulParams(params), async () => {
      for (const [transA, transB] of LAYOUTS) {
        // odd sizes, every layout
        await check(
          { batch: transA !== transB ? 2 : 1, m: 17, n: 65, k: 130, transA, transB },
          params,
        );
      }
      for (const [transA, transB] of [
        [false, true],
        [true, false],
      ] as const) {
        // multiples of 4 (vec4 paths), not of the tiles; batched; with an epilogue
        await check({ batch: 3, m: 68, n: 36, k: 20, transA, transB }, params, true);
      }
      // batched tiny products (attention-like, odd): many batches, fewer rows than a workgroup
      await check({ batch: 5, m: 9, n: 9, k: 33, transA: false, transB: true }, params, true);
      await check({ batch: 5, m: 9, n: 33, k: 9, transA: true, transB: false }, params);
      // a low-rank add in the epilogue
      for (const [name, build] of LOW_RANK_CASES) await checkLowRank(params, build, name);
    });
  }

  it("register and subgroup tiles store vec4s of 4 columns where n is a multiple of 4", async () => {
    const outDecl = (s: MatmulShape, p: MatmulParams) =>
      matmulKernel(s, p, { a: 0, b: 1, out: 2 })
        .wgsl.split("\n")
        .find((l) => l.includes("var<storage, read_write> mm_out"));
    const tiles: MatmulParams[] = [
      {
        variant: "register",
        rowsPerThread: 4,
        colsPerThread: 4,
        workgroupX: 16,
        workgroupY: 16,
        tileK: 0,
        vectorWidth: 4,
      },
      {
        variant: "register",
        rowsPerThread: 2,
        colsPerThread: 8,
        workgroupX: 8,
        workgroupY: 4,
        tileK: 0,
        vectorWidth: 4,
      },
    ];
    if (features.has("subgroups")) tiles.push(defaultMatmulParams(square(256), features, adapter));
    for (const p of tiles) {
      // n a multiple of 4 but not of the tile; rows past m; batched; with the bias epilogue
      const s: MatmulShape = { batch: 2, m: 13, n: 36, k: 9, transA: false, transB: true };
      expect(outDecl(s, p), describeMatmulParams(p)).toContain("array<vec4<f32>>");
      await check(s, p, true);
      // n not a multiple of 4: scalar stores
      const odd = { ...s, n: 35 };
      expect(outDecl(odd, p), describeMatmulParams(p)).toContain("array<f32>");
      await check(odd, p, true);
    }
    // scalar variants keep scalar stores
    const naive = defaultMatmulParams(square(64), features, { fallback: false });
    expect(outDecl(square(64), naive)).toContain("array<f32>");
  });

  it("the default subgroup tile on a software adapter: 4 rows for A stored transposed and for narrow products, else 2, at most m/8", () => {
    if (!features.has("subgroups")) return;
    const software = { fallback: true, architecture: "software" };
    const rows = (m: number, n: number, k: number, transA: boolean, transB: boolean) => {
      const p = defaultMatmulParams({ batch: 1, m, n, k, transA, transB }, features, software);
      expect(p.variant).toBe("subgroup");
      return `${p.rowsPerThread}x${p.colsPerThread}`;
    };
    // a LoRA step's products (lora_finetune.lrk: 576 tokens, d 128, MLP 512, rank 8)
    expect(rows(576, 512, 128, false, false)).toBe("2x32"); // stepping k by 4: 2 rows
    expect(rows(576, 128, 512, false, false)).toBe("2x32");
    expect(rows(576, 512, 128, false, true)).toBe("4x16");
    expect(rows(576, 128, 128, false, true)).toBe("4x16");
    expect(rows(128, 128, 576, true, false)).toBe("4x32");
    expect(rows(576, 8, 512, false, true)).toBe("4x8");
    expect(rows(512, 8, 576, true, false)).toBe("4x8");
    expect(rows(576, 16, 128, false, true)).toBe("4x16");
    // few rows: no more rows per invocation than the 8 invocations of a workgroup can use
    expect(rows(8, 128, 576, true, false)).toBe("1x32");
    expect(rows(9, 9, 32, false, false)).toBe("2x16");
  });

  it("kUnroll: B stored k-major steps k by kUnroll (· the spread) per iteration, each accumulator written once; checked against the interpreter", async () => {
    const tile = (
      variant: "register" | "subgroup",
      r: number,
      c: number,
      y: number,
      kUnroll: number,
    ): MatmulParams => ({
      variant,
      rowsPerThread: r,
      colsPerThread: c,
      workgroupX: variant === "register" ? 4 : 1,
      workgroupY: y,
      tileK: 0,
      vectorWidth: 4,
      kUnroll,
    });
    const wide: MatmulShape = { batch: 1, m: 64, n: 64, k: 64, transA: false, transB: false };
    const loop = (p: MatmulParams) => {
      const wgsl = matmulKernel(wide, p, { a: 0, b: 1, out: 2 }).wgsl;
      const start = wgsl.indexOf("for (var k0");
      const body = wgsl.slice(start, wgsl.indexOf("for (var i = lrk_zero", start));
      return { step: /k0 \+= (\d+)u/.exec(body)?.[1], writes: body.split("acc0_0 +=").length - 1 };
    };
    if (features.has("subgroups")) {
      // 32 columns: 4 steps of k, A loaded as vec4s along k; one write per iteration
      expect(loop(tile("subgroup", 4, 32, 8, 4))).toEqual({ step: "4", writes: 1 });
      expect(loop(tile("subgroup", 4, 32, 8, 1))).toEqual({ step: "1", writes: 1 });
      // 16 columns spread their B loads over 2 lanes' steps: 2 × 4 steps
      expect(loop(tile("subgroup", 2, 16, 8, 4))).toEqual({ step: "8", writes: 1 });
      // the software default for a wide NN product takes kUnroll 4; B stored transposed steps
      // k by 4 anyway
      const soft = { fallback: true, architecture: "software" };
      expect(defaultMatmulParams(wide, features, soft).kUnroll).toBe(4);
      expect(defaultMatmulParams({ ...wide, transB: true }, features, soft).kUnroll).toBe(
        undefined,
      );
    }
    expect(loop(tile("register", 4, 4, 16, 4))).toEqual({ step: "4", writes: 1 });
    expect(() => validateMatmulParams({ ...tile("register", 4, 4, 16, 9) })).toThrow(/kUnroll/);
    const shared = { ...defaultMatmulParams(wide, features, { fallback: false }), kUnroll: 4 };
    expect(() => validateMatmulParams(shared)).toThrow(/kUnroll/);
    // (the candidates' kUnroll tiles run the whole grid above; these add a register tile with
    // scalar columns and a subgroup tile with kUnroll 2 and a spread)
    const tiles = [tile("register", 2, 3, 16, 2)];
    if (features.has("subgroups")) tiles.push(tile("subgroup", 2, 16, 8, 2));
    for (const p of tiles)
      for (const [transA, transB] of LAYOUTS)
        // k not a multiple of the step (a tail), odd m and n
        await check({ batch: 2, m: 17, n: 65, k: 38, transA, transB }, p, transA);
  });

  it("edge shapes with the default parameters", async () => {
    const edges: [number, number, number, number][] = [
      [1, 1, 1, 1],
      [1, 3, 1, 17],
      [2, 1, 3, 5],
      [1, 130, 17, 3],
      [2, 64, 64, 64],
    ];
    for (const [batch, m, n, k] of edges) {
      for (const [transA, transB] of LAYOUTS) {
        if (m === 64 && transA !== transB) continue; // exact tiles: NN and TT suffice
        const s = { batch, m, n, k, transA, transB };
        await check(s, defaultMatmulParams(s, features, adapter), m === 64);
      }
    }
  });
});

// ------------------------------------------------------------------------------ autotuner

describe("Autotuner", () => {
  const dir = mkdtempSync(join(tmpdir(), "lrk-autotune-"));
  const cacheFile = join(dir, "sub", "autotune.json");
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const shape: MatmulShape = { batch: 1, m: 64, n: 48, k: 40, transA: false, transB: true };

  it("times the candidates, keeps one of them and caches it; a second one reads the cache", async () => {
    const lines: string[] = [];
    const first = new Autotuner(device, adapter, matmulTemplate, {
      cacheFile,
      runs: 2,
      log: (l) => lines.push(l),
    });
    const choice = await first.matmul(shape);
    const candidates = matmulCandidates(shape, features, adapter).map(describeMatmulParams);
    expect(candidates).toContain(describeMatmulParams(choice));
    expect(first.measurements).toBe(candidates.length);
    // every candidate timed (and those close to the fastest again)
    for (const c of candidates) expect(lines.some((l) => l.includes(`: ${c} `))).toBe(true);
    // the same class again: no more timing
    await first.matmul({ ...shape, m: 50, k: 33 });
    expect(first.measurements).toBe(candidates.length);

    const cache = JSON.parse(readFileSync(cacheFile, "utf8"));
    const entry = cache.adapters[adapterKey(adapter)][matmulShapeClassKey(shape)];
    expect(describeMatmulParams(entry.params)).toBe(describeMatmulParams(choice));

    const second = new Autotuner(device, adapter, matmulTemplate, {
      cacheFile,
      measure: async () => {
        throw new Error("the second autotuner must not time anything");
      },
    });
    expect(await second.matmul(shape)).toEqual(choice);
    expect(second.measurements).toBe(0);
  });

  it("a candidate's time is its fastest timed run (other work only ever slows a run down); pruning follows a timed run", async () => {
    const params = defaultMatmulParams(shape, features, adapter);
    const kernel = matmulKernel(shape, params, { a: 0, b: 1, out: 2 });
    const buffers = [
      storage(random(shape.m * shape.k, 1)),
      storage(random(shape.k * shape.n, 2)),
      storage(new Float32Array(shape.m * shape.n)),
    ];
    const timing = await timeMatmulKernel(device, kernel, buffers, 5);
    // above the pruning bound after its first timed run (not after the probe, which busy-polls
    // a core and on a loaded machine measured up to 100× a kernel's time): no more runs
    const pruned = await timeMatmulKernel(device, kernel, buffers, 5, -1);
    for (const b of buffers) b.destroy();
    expect(timing.runs).toBe(5);
    expect(timing.samples).toHaveLength(5);
    expect(timing.ms).toBe(Math.min(...timing.samples));
    expect(pruned.runs).toBe(1);
    expect(pruned.samples).toHaveLength(1);
  });

  it("times the candidates close to the fastest again, alternating, each keeping its fastest: a slow spell does not decide", async () => {
    const candidates = matmulCandidates(shape, features, adapter);
    const [lucky, steady, slow] = candidates.map(describeMatmulParams);
    // lucky: fast in the first pass, then slow; steady: a little slower first, then fastest;
    // slow: beyond 2× the fastest, never timed again; the rest slower still
    const clock: Record<string, number[]> = {
      [lucky!]: [1.0, 2.0, 2.0],
      [steady!]: [1.2, 0.9, 0.95],
      [slow!]: [2.1],
    };
    const calls: string[] = [];
    const tuner = new Autotuner(device, adapter, matmulTemplate, {
      cacheFile: join(dir, "rounds.json"),
      measure: async (_kernel, params) => {
        const d = describeMatmulParams(params);
        const times = clock[d] ?? [9];
        calls.push(d);
        return times[calls.filter((c) => c === d).length - 1] ?? 9;
      },
    });
    expect(describeMatmulParams(await tuner.matmul(shape))).toBe(steady);
    // two more rounds over the two close ones: reversed, then forward
    expect(calls.slice(candidates.length)).toEqual([steady, lucky, lucky, steady]);
    expect(tuner.measurements).toBe(candidates.length);
    const entry = JSON.parse(readFileSync(join(dir, "rounds.json"), "utf8")).adapters[
      adapterKey(adapter)
    ][matmulShapeClassKey(shape)];
    expect(entry.ms).toBe(0.9);
  });

  it("on a software adapter with subgroups, the shared-memory tiles and the naive kernel are not candidates", () => {
    const subgroups = new Set(["subgroups"]);
    const small = { ...shape, m: 32, n: 32 };
    const variants = (kind?: Parameters<typeof matmulCandidates>[2], set = subgroups) =>
      new Set(matmulCandidates(small, set, kind).map((p) => p.variant));
    const lavapipe = { fallback: false, description: "llvmpipe (LLVM 15.0.6)" };
    expect(variants(lavapipe)).toEqual(new Set(["subgroup", "register"]));
    expect(variants({ fallback: true })).toEqual(new Set(["subgroup", "register"]));
    // a GPU, no adapter (the tests' every candidate), or no subgroups: all of them
    const all = new Set(["subgroup", "register", "shared", "naive"]);
    expect(variants({ fallback: false, architecture: "gpu" })).toEqual(all);
    expect(variants()).toEqual(all);
    expect(variants(lavapipe, new Set())).toEqual(new Set(["register", "shared", "naive"]));
  });

  it("picks the fastest by the clock it is given, and enabled: false times nothing", async () => {
    const file = join(dir, "fake.json");
    const candidates = matmulCandidates(shape, features, adapter);
    const fastest = candidates[candidates.length - 1]!;
    const tuner = new Autotuner(device, adapter, matmulTemplate, {
      cacheFile: file,
      measure: async (_kernel, params) =>
        describeMatmulParams(params) === describeMatmulParams(fastest) ? 1 : 5,
    });
    expect(await tuner.matmul(shape)).toEqual(fastest);
    expect(tuner.measurements).toBe(candidates.length);

    const off = new Autotuner(device, adapter, matmulTemplate, {
      cacheFile: join(dir, "never.json"),
      enabled: false,
      measure: async () => {
        throw new Error("disabled autotuner timed something");
      },
    });
    expect(await off.matmul(shape)).toEqual(defaultMatmulParams(shape, features, adapter));
    expect(off.measurements).toBe(0);
    expect(() => readFileSync(join(dir, "never.json"))).toThrow();
  });
});
