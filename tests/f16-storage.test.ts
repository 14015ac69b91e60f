// f16 storage of frozen tensors (`--frozen-f16`, compiler/half-storage.ts): frozen f32 inputs are
// stored as IEEE half floats on a device with `shader-f16`, converted on upload
// (runtime/webgpu-device.ts), read as f16 and computed with in f32 (compiler/wgsl.ts
// `BindingTable.load`, the matmul template's f16 operands); the interpreter rounds the same
// values to f16 once (runtime/device.ts), so WebGPU is checked against it. Checked: the rounding
// by hand, kernels reading f16 against the interpreter (tight enough that unrounded values fail),
// a LoRA step, and the bytes of the plan, the device and `--emit memory`'s estimate.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Builder } from "../compiler/builder.js";
import { planStep } from "../compiler/compile.js";
import { frozenInputs } from "../compiler/half-storage.js";
import { Emitter } from "../compiler/wgsl.js";
import { halfReads, matmulCandidates, matmulShapeClassKey } from "../compiler/kernels/matmul.js";
import { fuseEntries, matmulShapes, matmulTemplate } from "../compiler/plan.js";
import { Autotuner } from "../runtime/autotune.js";
import { memoryReport } from "../compiler/memory.js";
import {
  storedBytes,
  type GraphProgram,
  type MatmulParams,
  type MatmulShape,
  type ProgramInput,
  type Tensor,
} from "../compiler/program.js";
import { defaultLimits, deviceTarget, portableTarget } from "../cli/target.js";
import { SourceFile } from "../language/source.js";
import { locationText } from "../language/diagnostics.js";
import { CpuDevice } from "../runtime/device.js";
import { halfBits, halfValue, roundToHalf } from "../runtime/half.js";
import { evaluate } from "../runtime/interpreter.js";
import { train } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { loraTinyLmProgram, lrkcBin } from "./helpers.js";
import { expectTrainsAlike, loadOnGpu, prepare } from "./program-helpers.js";

describe("f16 rounding", () => {
  it("rounds to the nearest f16, ties to even, overflow to infinity, through subnormals", () => {
    expect(halfBits(1)).toBe(0x3c00);
    expect(halfBits(-2)).toBe(0xc000);
    expect(halfBits(65504)).toBe(0x7bff);
    expect(halfBits(65520)).toBe(0x7c00); // the tie above the largest f16 rounds up: infinity
    expect(halfBits(1 + 2 ** -11)).toBe(0x3c00); // a tie: to the even mantissa (1)
    expect(halfBits(1 + 3 * 2 ** -11)).toBe(0x3c02); // a tie: to the even mantissa (1 + 2^-9)
    expect(halfBits(2 ** -24)).toBe(1); // the smallest subnormal
    expect(halfBits(2 ** -26)).toBe(0); // below half of it
    expect(halfBits(3 * 2 ** -25)).toBe(2); // a subnormal tie: to even
    expect(halfBits(2 ** -14 - 2 ** -25)).toBe(0x0400); // rounds up into the normals
    expect(halfValue(0x3555)).toBeCloseTo(1 / 3, 3);
    expect(halfValue(0x7c00)).toBe(Infinity);
    expect(Number.isNaN(halfValue(halfBits(NaN)))).toBe(true);
    expect([...roundToHalf(Float32Array.from([0.1, 1000.3, -7]))]).toEqual([
      Math.fround(0.0999755859375),
      1000.5,
      -7,
    ]);
  });

  it("kernel locals never take a WGSL type's name (which would shadow its conversion)", () => {
    const em = new Emitter(new Builder().graph, { isBuffer: () => true, load: (_, f) => f });
    const names = Array.from({ length: 40 }, () => em.fresh("f"));
    expect(names).not.toContain("f32");
    expect(names).not.toContain("f16");
    expect(new Set(names).size).toBe(40);
  });

  it("an f16 input takes 2 bytes an element, whole 4-byte words", () => {
    expect(storedBytes({ storage: "f16" }, 10)).toBe(20);
    expect(storedBytes({ storage: "f16" }, 7)).toBe(16);
  });

  it("the matmul template's f16 reads convert each element or vec4 as loaded", () => {
    expect(halfReads("let v = mm_b[(bOff + mm_b[i]) >> 2u][i & 3u] + mm_bb[0];", "mm_b")).toBe(
      "let v = mm_b_load((bOff + mm_b_load(i)) >> 2u)[i & 3u] + mm_bb[0];",
    );
  });
});

/** Relative to 1 + |value|: f32 accumulation is well within it, f16 rounding of an input is not. */
const TOLERANCE = 1e-5;

const wave = (n: number, f: number, offset = 1) =>
  Float32Array.from({ length: n }, (_, i) => offset + 0.5 * Math.sin(i * f));

/**
 * `want`: the interpreter's values with f16 storage (rounded inputs). Also checks that the f32
 * values (unrounded) would not have passed: the tolerance sees the rounding.
 */
function expectMatches(
  got: Map<string, Tensor>,
  want: Map<string, Tensor>,
  unrounded: Map<string, Tensor>,
  names: readonly string[],
): void {
  let worstUnrounded = 0;
  for (const name of names) {
    const g = got.get(name)!.data;
    const e = want.get(name)!.data;
    const u = unrounded.get(name)!.data;
    expect(g.length).toBe(e.length);
    for (let j = 0; j < e.length; j++) {
      const scale = 1 + Math.abs(e[j]!);
      expect(Math.abs(g[j]! - e[j]!) / scale, `${name}[${j}]`).toBeLessThan(TOLERANCE);
      worstUnrounded = Math.max(worstUnrounded, Math.abs(u[j]! - e[j]!) / scale);
    }
  }
  expect(worstUnrounded).toBeGreaterThan(TOLERANCE);
}

describe("kernels reading f16 inputs on WebGPU", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  });
  afterAll(() => device?.destroy());

  /** Runs `program` on the device (with `params` for every matmul) and on both interpreters. */
  async function run(program: GraphProgram, feeds: Map<string, Tensor>, params?: MatmulParams) {
    const target = await deviceTarget(device, [program], { autotune: false });
    const plan = planStep(program, params ? { ...target, matmulParams: () => params } : target);
    device.load(program, plan);
    const entry = program.entries[0]!;
    const got = await device.run(program, entry, feeds);
    const want = await new CpuDevice().run(program, entry, feeds);
    const byNode = new Map(program.inputs.map((i) => [i.node, feeds.get(i.name)!]));
    const values = evaluate(
      program.graph,
      byNode,
      entry.outputs.map((o) => o.node),
    );
    const unrounded = new Map(entry.outputs.map((o) => [o.name, values.get(o.node)!]));
    return { got, want, unrounded, plan };
  }

  it("map and reduce kernels, odd sizes, as the interpreter with rounded values", async () => {
    if (!device.features.includes("shader-f16")) return;
    const [rows, cols] = [5, 13]; // 65 halves: the last word half used
    const b = new Builder();
    const w = b.input("param", "w", [rows, cols]);
    const x = b.input("data", "x", [rows, cols]);
    const shifted = b.binary("mul", w, x);
    const rowSum = b.sum(w, [1]);
    const program: GraphProgram = {
      graph: b.graph,
      inputs: [
        { name: "w", node: w, role: "param", shape: [rows, cols], dtype: "f32", storage: "f16" },
        { name: "x", node: x, role: "data", shape: [rows, cols], dtype: "f32" },
      ],
      entries: [
        {
          name: "entry",
          outputs: [
            { name: "shifted", node: shifted },
            { name: "rowSum", node: rowSum },
          ],
        },
      ],
    };
    const feeds = new Map<string, Tensor>([
      ["w", { shape: [rows, cols], data: wave(rows * cols, 0.7) }],
      ["x", { shape: [rows, cols], data: wave(rows * cols, 0.3) }],
    ]);
    const { got, want, unrounded, plan } = await run(program, feeds);
    expectMatches(got, want, unrounded, ["shifted", "rowSum"]);
    const planned = plan.inputs.find((i) => i.name === "w")!;
    expect(planned.packed).toBe(16);
    expect(plan.buffers[planned.buffer]!.bytes).toBe(132); // 65 halves in 33 words
    expect(plan.kernels.map((k) => k.wgsl).join("\n")).toContain("enable f16;");
  });

  /** y = x·op(W) with W [out, in] stored f16 as B, and g = op(W)·z with W as A. */
  function products(trans: boolean, [m, inW, out]: [number, number, number]): GraphProgram {
    const b = new Builder();
    const w = b.input("param", "w", trans ? [out, inW] : [inW, out]);
    const x = b.input("data", "x", [m, inW]);
    const z = b.input("data", "z", [out, m]);
    const y = b.matmul(x, w, { transB: trans }); // [m, out]
    const g = b.matmul(w, z, { transA: trans }); // [inW, m]
    const inputs: ProgramInput[] = [
      {
        name: "w",
        node: w,
        role: "param",
        shape: [...b.graph.node(w).shape],
        dtype: "f32",
        storage: "f16",
      },
      { name: "x", node: x, role: "data", shape: [m, inW], dtype: "f32" },
      { name: "z", node: z, role: "data", shape: [out, m], dtype: "f32" },
    ];
    return {
      graph: b.graph,
      inputs,
      entries: [
        {
          name: "entry",
          outputs: [
            { name: "y", node: y },
            { name: "g", node: g },
          ],
        },
      ],
    };
  }

  function feedsOf(program: GraphProgram): Map<string, Tensor> {
    return new Map(
      program.inputs.map((i, n) => {
        const size = i.shape.reduce((a, d) => a * d, 1);
        return [i.name, { shape: [...i.shape], data: wave(size, 0.31 + 0.17 * n) }];
      }),
    );
  }

  for (const trans of [false, true])
    it(`the matmul template with W ${trans ? "transposed" : "row-major"} as B and as A (defaults)`, async () => {
      if (!device.features.includes("shader-f16")) return;
      const program = products(trans, [63, 68, 99]);
      const { got, want, unrounded, plan } = await run(program, feedsOf(program));
      expectMatches(got, want, unrounded, ["y", "g"]);
      const wgsl = plan.kernels.map((k) => k.wgsl).join("\n");
      expect(wgsl).toMatch(/B f16/);
      expect(wgsl).toMatch(/A f16/);
    });

  it("the autotuner times the f16 kernels, keys them apart from f32, and its choice is right", async () => {
    if (!device.features.includes("shader-f16")) return;
    const program = products(true, [63, 68, 99]);
    const shapes = matmulShapes(program, fuseEntries(program, defaultLimits));
    expect(shapes.map((s) => s.storage)).toEqual([{ b: "f16" }, { a: "f16" }]);
    expect(matmulShapeClassKey(shapes[0]!)).toMatch(/ B f16$/);
    expect(matmulShapeClassKey(shapes[1]!)).toMatch(/ A f16$/);
    const cacheFile = join(mkdtempSync(join(tmpdir(), "lrk-tune-")), "autotune.json");
    const lines: string[] = [];
    const tuner = new Autotuner(device.device, device.summary, matmulTemplate, {
      cacheFile,
      runs: 1,
      log: (line) => lines.push(line),
    });
    const chosen = new Map<string, MatmulParams>();
    for (const shape of shapes) chosen.set(matmulShapeClassKey(shape), await tuner.matmul(shape));
    // every candidate ran on f16 bindings (none failed), each timed (those close to the fastest
    // again)
    expect(lines.filter((l) => l.includes("failed"))).toEqual([]);
    for (const shape of shapes) {
      const key = matmulShapeClassKey(shape);
      for (const c of matmulCandidates(shape, new Set(device.features), device.summary))
        expect(lines.some((l) => l.includes(`${key}: ${matmulTemplate.describe(c)} `))).toBe(true);
    }
    const cached = JSON.parse(readFileSync(cacheFile, "utf8")) as {
      adapters: Record<string, Record<string, unknown>>;
    };
    expect(Object.keys(Object.values(cached.adapters)[0]!).sort()).toEqual(
      [...chosen.keys()].sort(),
    );
    // the kernel timed is the kernel planned: f16 bindings
    const timed = matmulTemplate.kernel(shapes[0]!, chosen.get(matmulShapeClassKey(shapes[0]!))!);
    expect(timed.wgsl).toContain("B f16");
    expect(timed.wgsl).toContain("f16>");
    const target = await deviceTarget(device, [program], { autotune: false });
    const plan = planStep(program, {
      ...target,
      matmulParams: (shape) => chosen.get(matmulShapeClassKey(shape))!,
    });
    device.load(program, plan);
    const feeds = feedsOf(program);
    const got = await device.run(program, program.entries[0]!, feeds);
    const want = await new CpuDevice().run(program, program.entries[0]!, feeds);
    const byNode = new Map(program.inputs.map((i) => [i.node, feeds.get(i.name)!]));
    const values = evaluate(
      program.graph,
      byNode,
      program.entries[0]!.outputs.map((o) => o.node),
    );
    const unrounded = new Map(
      program.entries[0]!.outputs.map((o) => [o.name, values.get(o.node)!]),
    );
    expectMatches(got, want, unrounded, ["y", "g"]);
  }, 120_000);

  it("every matmul candidate reading f16 operands, as the interpreter", async () => {
    if (!device.features.includes("shader-f16")) return;
    const sizes: [number, number, number] = [37, 64, 44];
    const shapes: MatmulShape[] = [false, true].flatMap((t) => [
      { batch: 1, m: 37, n: 44, k: 64, transA: false, transB: t },
      { batch: 1, m: 64, n: 37, k: 44, transA: !t, transB: false },
    ]);
    const candidates = new Map<string, MatmulParams>();
    for (const shape of shapes)
      for (const p of matmulCandidates(shape, new Set(device.features)))
        candidates.set(JSON.stringify(p), p);
    for (const p of candidates.values())
      for (const trans of [false, true]) {
        const program = products(trans, sizes);
        const { got, want, unrounded } = await run(program, feedsOf(program), p);
        expectMatches(got, want, unrounded, ["y", "g"]);
      }
  }, 600_000); // lavapipe compiles each candidate's kernels
});

describe("a LoRA step with its frozen weights stored as f16", () => {
  const source = () => new SourceFile("lora.lrk", loraTinyLmProgram("lora", 3));

  it("marks the frozen weights, not the adapters, and halves their bytes in every count", async () => {
    const { run, diagnostics } = prepare(source(), { frozenF16: true });
    expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    const step = run!.program.step;
    const half = step.inputs.filter((i) => i.storage === "f16");
    expect(half.map((i) => i.name)).toContain("param:blocks.0.attn.q.weight");
    expect(half.some((i) => i.name.includes("lora"))).toBe(false);
    expect(half.every((i) => !step.trainable.includes(i.name.slice("param:".length)))).toBe(true);
    expect(new Set(half.map((i) => i.name))).toEqual(frozenInputs(step, step.trainable));
    // the estimate counts 2 bytes per frozen element
    const plain = prepare(source()).run!.program.step;
    const halfElements = half.reduce((a, i) => a + i.shape.reduce((x, d) => x * d, 1), 0);
    expect(memoryReport(plain).frozen - memoryReport(step).frozen).toBe(2 * halfElements);
    // a target without shader-f16 keeps them f32
    const portable = planStep(step, portableTarget);
    expect(portable.inputs.some((i) => i.packed === 16)).toBe(false);
    const device = await WebGpuDevice.open();
    try {
      if (!device.features.includes("shader-f16")) return;
      await loadOnGpu(device, run!);
      const plan = device.plan(step);
      for (const i of half) {
        const planned = plan.inputs.find((p) => p.name === i.name);
        if (!planned) continue; // an input the step never reads
        expect(planned.packed, i.name).toBe(16);
        const elements = i.shape.reduce((x, d) => x * d, 1);
        expect(plan.buffers[planned.buffer]!.bytes, i.name).toBe(4 * Math.ceil(elements / 2));
      }
      expect(device.allocatedBytes(step)).toBe(plan.buffers.reduce((a, b) => a + b.bytes, 0));
    } finally {
      device.destroy();
    }
  });

  it("trains on WebGPU as the interpreter does with the rounded weights, unlike f32", async () => {
    const device = await WebGpuDevice.open();
    try {
      if (!device.features.includes("shader-f16")) return;
      const half = prepare(source(), { frozenF16: true }).run!;
      const store = await expectTrainsAlike(device, half, 3, 1e-3);
      // the rounding is real: the f32 run's losses differ, and the checkpointed weights are f32
      const plain = prepare(source()).run!;
      const f32 = await train(plain, new CpuDevice(), { steps: 3 });
      const f16 = await train(half, new CpuDevice(), { steps: 3 });
      expect(f16.losses[0]).not.toBe(f32.losses[0]);
      const w = store.get("param:blocks.0.attn.q.weight")!.data;
      expect(Array.from(w).some((v) => roundToHalf(Float32Array.of(v))[0] !== v)).toBe(true);
    } finally {
      device.destroy();
    }
  }, 120_000);
});

/** The tiny LM of loraTinyLmProgram with other adapters. */
function adapted(rules: string, steps: number): SourceFile {
  const text = loraTinyLmProgram("t", steps)
    .replace("import std.adapters.{lora}", "import std.adapters.{lora, dora, pissa, relora}")
    .replace("adapt blocks.*.attn.{q, v} with lora(rank: 4, alpha: 8)", rules);
  return new SourceFile("adapted.lrk", text);
}

describe("f16 storage with other adapters", () => {
  it("keeps a frozen weight that an action rewrites (ReLoRA's merge) in f32", () => {
    const { run } = prepare(
      adapted("adapt blocks.*.attn.{q, v} with relora(rank: 2, period: 2)", 4),
      { frozenF16: true },
    );
    const step = run!.program.step;
    const storage = (name: string) => step.inputs.find((i) => i.name === name)?.storage;
    expect(storage("param:blocks.0.attn.q.weight")).toBeUndefined(); // merged into every 2 steps
    expect(storage("param:blocks.0.attn.k.weight")).toBe("f16");
  });

  it("DoRA and PiSSA (a frozen residual the init program computes) train alike on WebGPU", async () => {
    const device = await WebGpuDevice.open();
    try {
      if (!device.features.includes("shader-f16")) return;
      const { run, diagnostics } = prepare(
        adapted(
          "adapt blocks.*.attn.{q, v} with dora(rank: 2)\n  adapt blocks.*.mlp.up with pissa(rank: 2)",
          2,
        ),
        { frozenF16: true },
      );
      expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
      const step = run!.program.step;
      expect(step.inputs.filter((i) => i.storage === "f16").map((i) => i.name)).toContain(
        "buffer:blocks.0.mlp.up.pissa.residual",
      );
      await expectTrainsAlike(device, run!, 2, 1e-3);
    } finally {
      device.destroy();
    }
  }, 180_000);
});

/** The tiny LM LoRA program with `frozen_storage VALUE` in its train block. */
function withFrozenStorage(value: string, steps = 2): string {
  return loraTinyLmProgram("lora", steps).replace(
    "  batch 16\n",
    `  batch 16\n  frozen_storage ${value}\n`,
  );
}

describe("the train block's `frozen_storage`", () => {
  it("`frozen_storage f16` is `--frozen-f16`: the same inputs stored as f16, the same plan", () => {
    const flag = prepare(new SourceFile("a.lrk", loraTinyLmProgram("lora", 2)), {
      frozenF16: true,
    });
    const block = prepare(new SourceFile("a.lrk", withFrozenStorage("f16")));
    const both = prepare(new SourceFile("a.lrk", withFrozenStorage("f16")), { frozenF16: true });
    const f32 = prepare(new SourceFile("a.lrk", withFrozenStorage("f32")));
    for (const r of [flag, block, both, f32]) expect(r.diagnostics).toEqual([]);
    const stored = (r: typeof flag) =>
      r.run!.step.inputs.filter((i) => i.storage === "f16").map((i) => i.name);
    expect(stored(flag).length).toBeGreaterThan(0);
    expect(stored(block)).toEqual(stored(flag));
    expect(stored(both)).toEqual(stored(flag));
    expect(stored(f32)).toEqual([]);
    expect(planStep(block.run!.step, portableTarget)).toEqual(
      planStep(flag.run!.step, portableTarget),
    );
    // the flag wins over the block (as --steps does): f32 in the block, f16 asked for
    const override = prepare(new SourceFile("a.lrk", withFrozenStorage("f32")), {
      frozenF16: true,
    });
    expect(stored(override)).toEqual(stored(flag));
  });

  it("takes f16 or f32, anything else E0402 at the value", () => {
    const { diagnostics } = prepare(new SourceFile("a.lrk", withFrozenStorage("f8")));
    expect(diagnostics.map((d) => d.code)).toEqual(["E0402"]);
    expect(diagnostics[0]!.message).toBe("`frozen_storage` takes `f16` or `f32`");
    const text = withFrozenStorage("f8");
    const line = text.split("\n").findIndex((l) => l.includes("frozen_storage")) + 1;
    expect(locationText(diagnostics[0]!.at!)).toBe(`a.lrk:${line}:18`);
  });

  it("`lrkc train` records it in run.json as the flag does; with the flag too it is the same run", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-f16-"));
    writeFileSync(join(dir, "lora.lrk"), withFrozenStorage("f16", 2));
    const train = (...args: string[]) =>
      spawnSync(process.execPath, [lrkcBin, "train", "lora.lrk", "--device", "cpu", ...args], {
        cwd: dir,
        encoding: "utf8",
      });
    const first = train("--out", "run", "--steps", "1");
    expect(first.status, first.stderr).toBe(0);
    const record = JSON.parse(readFileSync(join(dir, "run", "run.json"), "utf8")) as {
      frozen_f16?: boolean;
    };
    expect(record.frozen_f16).toBe(true);
    // the flag asks for what the block already says: the same run
    const resumed = train("--out", "run", "--steps", "1", "--frozen-f16", "--resume");
    // (run.json's comparison passed: what stops it is that the run is done)
    expect(resumed.stderr).not.toContain("f16 storage of frozen weights");
    expect(resumed.stderr).toContain("already finished all 1 steps");
  }, 60_000);
});

describe("lrkc train --frozen-f16", () => {
  it("records the choice in run.json, resumes with it, and refuses to resume without it", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-f16-"));
    writeFileSync(join(dir, "lora.lrk"), loraTinyLmProgram("lora", 2));
    const train = (...args: string[]) =>
      spawnSync(process.execPath, [lrkcBin, "train", "lora.lrk", "--device", "cpu", ...args], {
        cwd: dir,
        encoding: "utf8",
      });
    const first = train("--frozen-f16", "--out", "run");
    expect(first.status, first.stderr).toBe(0);
    const record = JSON.parse(readFileSync(join(dir, "run", "run.json"), "utf8")) as {
      frozen_f16?: boolean;
      resume: string;
    };
    expect(record.frozen_f16).toBe(true);
    expect(record.resume).toContain("--frozen-f16");
    const without = train("--out", "run", "--resume");
    expect(without.status).toBe(1);
    expect(without.stderr).toContain(
      "f16 storage of frozen weights (--frozen-f16, `frozen_storage f16`) is on in the run, off now",
    );
  }, 60_000);

  it("`lrkc build --emit memory` counts the frozen weights at 2 bytes, estimated and planned", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-f16-"));
    writeFileSync(join(dir, "lora.lrk"), loraTinyLmProgram("lora", 2));
    const bytes = (...args: string[]) => {
      const r = spawnSync(
        process.execPath,
        [lrkcBin, "build", "lora.lrk", "--emit", "memory", ...args],
        { cwd: dir, encoding: "utf8" },
      );
      expect(r.status, r.stderr).toBe(0);
      const count = (label: string) =>
        Number(new RegExp(`^${label} .* ([\\d,]+) B$`, "m").exec(r.stdout)![1]!.replace(/,/g, ""));
      return { frozen: count("frozen weights"), parameters: count("parameters") };
    };
    const plain = bytes();
    const half = bytes("--frozen-f16");
    expect(half.frozen * 2).toBe(plain.frozen);
    expect(plain.parameters - half.parameters).toBe(plain.frozen / 2);
  }, 60_000);
});
