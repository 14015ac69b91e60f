// The low-rank branch computed in the base matmul's tile (MatmulBranch, compiler/kernels/matmul.ts):
// y = x·Wᵀ + 2·((x·Aᵀ)·Bᵀ) (up stored [n, rank]: LoRA's forward) and dx = dy·W + (dy·B)·A (up
// stored [rank, n]: its input gradient), run on WebGPU with every matmul candidate against the
// interpreter, at odd sizes and ranks 1, 8, 13 (not a multiple of 4: scalar loads), 16 and 64,
// with the device's default tile and the shared-memory tile (sharedBranchSteps).
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Builder } from "../compiler/builder.js";
import type {
  GraphProgram,
  LowRankBranchForm,
  MatmulParams,
  MatmulShape,
  ProgramInput,
  Tensor,
} from "../compiler/program.js";
import { compile, planStep } from "../compiler/compile.js";
import { SourceFile } from "../language/source.js";
import {
  deviceTarget,
  LOW_RANK_TIMED_ROWS,
  lowRankChoices,
  portableTarget,
} from "../cli/target.js";
import { matmulTemplate, type PlanTarget } from "../compiler/plan.js";
import { Autotuner } from "../runtime/autotune.js";
import { defaultMatmulParams, matmulCandidates } from "../compiler/kernels/matmul.js";
import { fuse } from "../compiler/fuse/index.js";
import { branchCoefficient } from "../compiler/fuse/low-rank.js";
import { evaluate } from "../runtime/interpreter.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { values } from "./helpers.js";

/** The forward and the input gradient of a LoRA linear, m tokens, k in, n out. */
function loraProducts(m: number, k: number, n: number, rank: number) {
  const b = new Builder();
  const inputs: ProgramInput[] = [];
  const feeds = new Map<string, Tensor>();
  const input = (name: string, shape: number[]) => {
    const node = b.input("param", name, shape);
    inputs.push({ name, node, role: "param", shape, dtype: "f32" });
    feeds.set(name, { shape, data: values(shape[0]! * shape[1]!, inputs.length) });
    return node;
  };
  const x = input("x", [m, k]);
  const w = input("w", [n, k]);
  const a = input("a", [rank, k]);
  const up = input("b", [n, rank]);
  const dy = input("dy", [m, n]);
  const down = b.matmul(x, a, { transB: true });
  const y = b.binary(
    "add",
    b.matmul(x, w, { transB: true }),
    b.binary("mul", b.matmul(down, up, { transB: true }), b.constant(2, [m, n])),
  );
  const dx = b.binary("add", b.matmul(dy, w), b.matmul(b.matmul(dy, up), a));
  const program: GraphProgram = {
    graph: b.graph,
    inputs,
    entries: [
      {
        name: "entry",
        outputs: [
          { name: "y", node: y },
          { name: "dx", node: dx },
        ],
      },
    ],
  };
  return { program, feeds };
}

describe("the low-rank branch in the matmul's tile", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  });
  afterAll(() => device?.destroy());

  /** Runs both products (the device's default tiles, or `params`), checks them, returns the WGSL. */
  async function check(
    m: number,
    k: number,
    n: number,
    rank: number,
    params?: MatmulParams,
    baseOnly = false,
  ): Promise<string> {
    const { program, feeds } = loraProducts(m, k, n, rank);
    const target = await deviceTarget(device, [program], { autotune: false, lowRankMax: 64 });
    // `params` for the two base products (n is not the rank), or for every product
    const chosen = (shape: MatmulShape) =>
      !params || (baseOnly && shape.n === rank) ? defaultParams(shape) : params;
    const defaultParams = (shape: MatmulShape) =>
      defaultMatmulParams(shape, new Set(device.features), device.summary);
    const plan = planStep(program, params ? { ...target, matmulParams: chosen } : target);
    device.load(program, plan);
    const got = await device.run(program, program.entries[0]!, feeds);
    const byNode = new Map(program.inputs.map((i) => [i.node, feeds.get(i.name)!]));
    const outputs = program.entries[0]!.outputs;
    const want = evaluate(
      program.graph,
      byNode,
      outputs.map((o) => o.node),
    );
    for (const o of outputs) {
      const g = got.get(o.name)!.data;
      const e = want.get(o.node)!.data;
      expect(g.length).toBe(e.length);
      let worst = 0;
      for (let j = 0; j < e.length; j++)
        worst = Math.max(worst, Math.abs(g[j]! - e[j]!) / (1 + Math.abs(e[j]!)));
      expect(worst, `${o.name}, rank ${rank}, ${JSON.stringify(params)}`).toBeLessThan(1e-4);
    }
    // 4 kernels: the two down-projections (x·Aᵀ, dy·B) and the two base products with the
    // up-projection, its scale and the add fused in
    expect(plan.entries.entry!.dispatches.length).toBe(4);
    return plan.kernels.map((kernel) => kernel.wgsl).join("\n");
  }

  for (const rank of [1, 8, 13, 16, 64])
    it(`rank ${rank}, 67 tokens × 96 → 52 (and 50, n not a multiple of 4): the defaults, as the interpreter`, async () => {
      const wgsl = await check(67, 96, 52, rank);
      // the tiles run the branch as rank more k-steps (no per-element loop over the rank), in
      // the product's accumulators: the epilogue adds 2·branch (y) and the branch (dx)
      expect(wgsl).toContain(
        `// branch 0 (rank ${rank}) in the tile: added into the product's accumulators, times 2`,
      );
      // (at rank 64 dy·B's inner dim, 52, is the larger: dx has no branch)
      if (rank < 52)
        expect(wgsl).toContain(
          `// branch 0 (rank ${rank}) in the tile: added into the product's accumulators\n`,
        );
      expect(wgsl).not.toContain("lb0_");
      expect(wgsl).not.toContain("// low-rank");
      await check(67, 96, 50, rank);
    }, 180_000); // cold, lavapipe compiles each kernel in seconds on a loaded machine

  // the shared-memory tile (the GPU default): the branch staged in slabs of min(tileK, rank) steps
  const shared = (rows: number, tileK: number, vectorWidth: 1 | 4 = 4): MatmulParams => ({
    variant: "shared",
    rowsPerThread: rows,
    colsPerThread: rows,
    workgroupX: 4,
    workgroupY: 4,
    tileK,
    vectorWidth,
  });
  for (const rank of [1, 8, 13, 16, 64])
    it(`rank ${rank}, the shared-memory tile runs the branch as staged k-steps, as the interpreter`, async () => {
      const wgsl = await check(67, 96, 52, rank, shared(4, 16), true);
      expect(wgsl).toContain(`// branch 0 (rank ${rank}) in the tile: added into`);
      expect(wgsl).toContain("mm_tile_a[kk * 16u + x] = select(0.0, 2.0f * mm_ld0_at(at), ok)");
      // no per-element loop over the rank: mm_branch0 is defined but not called
      expect(wgsl).not.toContain("mm_branch0(row, col)");
      expect(wgsl).not.toContain("// low-rank");
    }, 180_000);

  it("the shared-memory tile with a slab shallower than the rank (a partial last slab), n odd, scalar loads", async () => {
    await check(67, 96, 50, 13, shared(4, 8), true);
    await check(37, 52, 29, 13, shared(2, 4, 1), true);
  }, 180_000);

  it("every candidate of the products at rank 8, as the interpreter", async () => {
    const shape = { batch: 1, m: 67, n: 52, k: 96, transA: false, transB: true };
    for (const p of matmulCandidates(shape, new Set(device.features)))
      await check(67, 96, 52, 8, p);
  }, 600_000); // lavapipe compiles each candidate's kernels (a fraction of a second each)
});

/**
 * y = x·Wᵀ + 2·(x·Aᵀ)·Bᵀ; with `transposedDown` the down-projection is stored transposed (A·xᵀ,
 * read with transA), a layout the tile does not read.
 */
function branchGraph(rank: number, transposedDown: boolean) {
  const b = new Builder();
  const x = b.input("data", "x", [64, 96]);
  const w = b.input("param", "w", [52, 96]);
  const a = b.input("param", "a", [rank, 96]);
  const up = b.input("param", "b", [52, rank]);
  const branch = transposedDown
    ? b.matmul(b.matmul(a, x, { transB: true }), up, { transA: true, transB: true })
    : b.matmul(b.matmul(x, a, { transB: true }), up, { transB: true });
  const y = b.binary(
    "add",
    b.matmul(x, w, { transB: true }),
    b.binary("mul", branch, b.constant(2)),
  );
  return { graph: b.graph, y, up, w };
}

describe("fused or unfused: the low-rank cost model", () => {
  const kernels = (rank: number, transposedDown: boolean, lowRankLoopMax?: number) => {
    const { graph, y } = branchGraph(rank, transposedDown);
    const options = lowRankLoopMax === undefined ? {} : { lowRankLoopMax };
    return fuse(graph, [y], options).groups.length;
  };

  it("fuses a branch the tile computes at every rank up to 64, even where the per-element loop is off (lavapipe)", () => {
    for (const rank of [1, 8, 16, 64]) expect(kernels(rank, false, 0)).toBe(2);
    expect(kernels(65, false)).toBe(3); // over LOW_RANK_MAX: a kernel of its own
  });

  it("fuses a branch the tile cannot compute (down stored transposed) only up to the loop's cap", () => {
    expect(kernels(8, true)).toBe(2); // default: the loop's cap is LOW_RANK_MAX
    expect(kernels(8, true, 0)).toBe(3); // lavapipe: the loop costs more than the kernel it saves
    expect(kernels(8, true, 8)).toBe(2);
    expect(kernels(16, true, 8)).toBe(3);
  });

  it("a branch factor stored as f16 (--frozen-f16) is not for the tile: fused only as the loop", () => {
    const { graph, y, up } = branchGraph(8, false);
    const half = new Set([up]);
    expect(fuse(graph, [y], { lowRankLoopMax: 0, half }).groups.length).toBe(3);
    expect(fuse(graph, [y], { lowRankLoopMax: 8, half }).groups.length).toBe(2);
    expect(fuse(graph, [y], { lowRankLoopMax: 0 }).groups.length).toBe(2);
  });
});

describe("fused or unfused, timed where the cost model is unsure", () => {
  it("a branch the tile computes is left unfused where the autotuner's choice says so, and the choice is asked with the product's shape and the branch's form", () => {
    const { graph, y } = branchGraph(8, false);
    const asked: string[] = [];
    const fuses = (answer: boolean) => (base: MatmulShape, branch: LowRankBranchForm) => {
      asked.push(
        `${base.batch} ${base.m}x${base.n}x${base.k} ${base.transB} r${branch.rank} ${branch.upTrans}`,
      );
      return answer;
    };
    expect(
      fuse(graph, [y], { lowRankLoopMax: 0, lowRankTileFuses: fuses(false) }).groups.length,
    ).toBe(3);
    expect(
      fuse(graph, [y], { lowRankLoopMax: 0, lowRankTileFuses: fuses(true) }).groups.length,
    ).toBe(2);
    expect(asked).toEqual(["1 64x52x96 true r8 true", "1 64x52x96 true r8 true"]);
    // a branch the tile cannot compute keeps the loop's rule; one beside an f16 B is not asked
    asked.length = 0;
    const transposed = branchGraph(8, true);
    fuse(transposed.graph, [transposed.y], { lowRankTileFuses: fuses(false) });
    const half = branchGraph(8, false);
    const options = { lowRankLoopMax: 0, half: new Set([half.w]), lowRankTileFuses: fuses(false) };
    expect(fuse(half.graph, [half.y], options).groups.length).toBe(2);
    expect(asked).toEqual([]);
  });

  it("the product's layout is the one the template runs: an operand read through a transpose counts as transposed", () => {
    const b = new Builder();
    const x = b.input("data", "x", [64, 96]);
    const w = b.input("param", "w", [52, 96]);
    const a = b.input("param", "a", [8, 96]);
    const up = b.input("param", "b", [52, 8]);
    const branch = b.matmul(b.matmul(x, a, { transB: true }), b.transpose(up));
    const y = b.binary("add", b.matmul(x, b.transpose(w)), branch);
    const asked: string[] = [];
    fuse(b.graph, [y], {
      lowRankLoopMax: 0,
      lowRankTileFuses: (base, form) => {
        asked.push(`${base.transA} ${base.transB} ${form.upTrans}`);
        return true;
      },
    });
    expect(asked).toEqual(["false true true"]);
  });

  it("lowRankChoices: the plan leaves unfused exactly the branches decided so, on products up to LOW_RANK_TIMED_ROWS rows (not the naive kernel's)", async () => {
    const small = loraProducts(67, 96, 52, 8).program;
    const large = loraProducts(LOW_RANK_TIMED_ROWS + 1, 96, 52, 8).program;
    const target = { ...portableTarget, lowRankLoopMax: 0 };
    const asked: string[] = [];
    const decide = async (shape: MatmulShape, branch: LowRankBranchForm) => {
      asked.push(
        `${shape.m}x${shape.n}x${shape.k} r${branch.rank} ${branch.upTrans ? "upT" : "up"}`,
      );
      return !branch.upTrans; // the forward (up stored [n, rank]) unfused, the input gradient fused
    };
    const choices = await lowRankChoices([small], target, decide);
    // the forward x·Wᵀ and the input gradient dy·W
    expect(asked.sort()).toEqual(["67x52x96 r8 upT", "67x96x52 r8 up"]);
    const dispatches = (p: typeof small, t: PlanTarget) =>
      planStep(p, t).entries.entry!.dispatches.length;
    expect(dispatches(small, target)).toBe(4);
    expect(dispatches(small, { ...target, lowRankChoices: choices! })).toBe(5);
    // every branch fused: nothing to carry
    expect(await lowRankChoices([small], target, async () => true)).toBeUndefined();
    // larger products keep the structural choice (fused), unasked
    asked.length = 0;
    expect(await lowRankChoices([large], target, decide)).toBeUndefined();
    // and products small enough for the naive kernel (which loops per element anyway)
    const tiny = loraProducts(16, 32, 24, 8).program;
    expect(await lowRankChoices([tiny], target, decide)).toBeUndefined();
    expect(asked).toEqual([]);
  });
});

describe("the autotuner's fused-or-unfused timing", () => {
  let device: WebGpuDevice;
  const dir = mkdtempSync(join(tmpdir(), "lrk-lowrank-"));
  const cacheFile = join(dir, "autotune.json");
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  });
  afterAll(() => {
    device?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  const shape: MatmulShape = { batch: 1, m: 67, n: 52, k: 96, transA: false, transB: true };
  const params = () => defaultMatmulParams(shape, new Set(device.features), device.summary);

  it("times both forms on the device, caches the choice under the product's class, parameters, rank and layout; a second tuner reads it", async () => {
    const lines: string[] = [];
    const tuner = new Autotuner(device.device, device.summary, matmulTemplate, {
      cacheFile,
      runs: 2,
      log: (line) => lines.push(line),
    });
    const fused = await tuner.lowRankFused(shape, { rank: 8, upTrans: true }, params());
    expect(tuner.measurements).toBe(6); // 3 rounds of each form
    const cache = JSON.parse(readFileSync(cacheFile, "utf8")) as {
      lowRank: Record<
        string,
        Record<string, { fused: boolean; fusedMs: number; unfusedMs: number }>
      >;
    };
    const [key, entry] = Object.entries(Object.values(cache.lowRank)[0]!)[0]!;
    expect(key).toContain(matmulTemplate.classKey(shape));
    expect(key).toMatch(/ r8 upT$/);
    expect(entry.fused).toBe(fused);
    expect(entry.fusedMs).toBeGreaterThan(0);
    expect(entry.unfusedMs).toBeGreaterThan(0);
    expect(lines.join("\n")).toMatch(/fused .* ms, unfused .* ms/);

    const second = new Autotuner(device.device, device.summary, matmulTemplate, {
      cacheFile,
      measure: async () => {
        throw new Error("the second autotuner must not time anything");
      },
    });
    expect(second.lowRankCached(shape, { rank: 8, upTrans: true }, params())).toBe(true);
    expect(second.lowRankCached(shape, { rank: 8, upTrans: false }, params())).toBe(false);
    expect(await second.lowRankFused(shape, { rank: 8, upTrans: true }, params())).toBe(fused);
    expect(second.measurements).toBe(0);
  }, 120_000);

  it("keeps the branch fused unless unfused is faster by more than the margin", async () => {
    const choose = async (fusedMs: number, unfusedMs: number, rank: number) => {
      const tuner = new Autotuner(device.device, device.summary, matmulTemplate, {
        cacheFile: join(dir, `t${rank}.json`),
        // the unfused form's two kernels share its time
        measure: async (kernel) =>
          kernel.wgsl.includes("// branch 0 (rank") ? fusedMs : unfusedMs / 2,
      });
      return tuner.lowRankFused(shape, { rank, upTrans: false }, params());
    };
    expect(await choose(10, 9, 1)).toBe(false);
    expect(await choose(10, 9.9, 2)).toBe(true); // within the margin: fused (it saves memory)
    expect(await choose(10, 12, 3)).toBe(true);
  });
});

describe("SVDQuant's and DoRA's branches take the tile path too", () => {
  // an SVDQuant-quantized Linear with LoRA on top (two branches: SVDQuant's rank-32 L1·L2 and
  // LoRA's rank 8, beside the packed 4-bit residual) and a DoRA Linear
  const source = `import std.nn.{Linear}
import std.adapters.{lora, dora}
import std.quant.{svdquant}
import std.optim.{adamw}

data moons = std.data.two_moons(n: 256, seed: 1)

model Net(hidden: int = 128) {
  embed = Linear(2, hidden)
  mix = Linear(hidden, hidden)
  mid = Linear(hidden, hidden)
  head = Linear(hidden, 2)

  forward(x: f32[B, 2]) -> f32[B, 2] = head(relu(mid(relu(mix(relu(embed(x)))))))
}

train t {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  quantize mix with svdquant(bits: 4, group: 64, rank: 32)
  adapt mix with lora(rank: 8, alpha: 16)
  adapt mid with dora(rank: 8, alpha: 16)
  optimize adapters with adamw(lr: 1e-2)
  steps 1
  batch 32
  seed 1
}
`;
  const limits = {
    maxStorageBufferBindingSize: 2 ** 27,
    maxBufferSize: 2 ** 32,
    maxStorageBuffersPerShaderStage: 16,
  };
  /** The matmul kernels of each entry of the step that compute a low-rank branch. */
  function branchKernels(target: PlanTarget): Map<string, string[]> {
    const { compiled, diagnostics } = compile(new SourceFile("methods.lrk", source));
    if (!compiled) throw new Error(diagnostics.map((d) => d.message).join("\n"));
    const plan = planStep(compiled.program.step, target);
    const out = new Map<string, string[]>();
    for (const [name, entry] of Object.entries(plan.entries)) {
      const kernels = entry.dispatches.map((id) => plan.kernels[id]!);
      for (const k of kernels.filter(
        (k) => k.kind === "matmul" && /\/\/ branch 0 \(rank/.test(k.wgsl),
      )) {
        // no per-element loop over a rank anywhere
        expect(k.wgsl).not.toContain("mm_branch0(row, col)");
        expect(k.wgsl).not.toContain("// low-rank");
        // each branch's rank: its loop (register/subgroup tiles) or its staging's bound (shared)
        const steps = /l0 < (\d+)u; l0|tileRow \+ x < \d+u && l0 \+ kk < (\d+)u/g;
        const ranks = [...k.wgsl.matchAll(steps)].map((m) => m[1] ?? m[2]);
        const packed = k.wgsl.includes("packed 4-bit") ? " packed" : "";
        out.set(name, [...(out.get(name) ?? []), `${k.name.split(" (")[0]}${packed} ${ranks}`]);
      }
    }
    return out;
  }

  it("lavapipe's subgroup tile: SVDQuant's packed product runs its rank-32 branch and LoRA's rank-8 one in the tile; DoRA's input gradient its rank-8 branch", () => {
    const found = branchKernels({
      limits,
      features: ["subgroups"],
      adapter: { fallback: true },
      lowRankLoopMax: 0,
    });
    // training: the packed forward with both branches; DoRA's input gradient (its forward's
    // branch value is also read by the magnitude's gradient, so the step stores it: a kernel)
    expect(found.get("step")).toEqual([
      "matmul 32x128x128 NT packed 32,8",
      "matmul 32x128x128 NN 8",
    ]);
    // evaluation: the packed forward. DoRA's forward, base(x) + (λ − 1)·x·Wᵀ + λ·s·branch, has one
    // x·Wᵀ (the builder makes equal products one node), read twice: its branch is a kernel of
    // its own, one GEMM cheaper than a second x·Wᵀ with the branch in its tile
    expect(found.get("evaluate")).toEqual(["matmul 32x128x128 NT packed 32,8"]);
  });

  it("a GPU's shared-memory tile: the same branches as staged k-steps", () => {
    const found = branchKernels({ limits, features: [], adapter: { fallback: false } });
    expect(found.get("step")).toEqual([
      "matmul 32x128x128 NT packed 32,8",
      "matmul 32x128x128 NN 8",
    ]);
    expect(found.get("evaluate")).toEqual(["matmul 32x128x128 NT packed 32,8"]);
  });
});

describe("branchCoefficient: where the tile may add a branch into the product's accumulators", () => {
  /** y = f(x·Wᵀ, branch) for `f`; the group computes every node after the two matmuls' inputs. */
  function coefficient(
    f: (b: Builder, product: number, branch: number) => number,
    written: (product: number, branch: number, y: number) => number[] = (_p, _b, y) => [y],
  ): number | undefined {
    const b = new Builder();
    const x = b.input("param", "x", [6, 8]);
    const w = b.input("param", "w", [5, 8]);
    const a = b.input("param", "a", [2, 8]);
    const u = b.input("param", "u", [5, 2]);
    const down = b.matmul(x, a, { transB: true });
    const first = b.graph.nodes.length;
    const product = b.matmul(x, w, { transB: true });
    const branch = b.matmul(down, u, { transB: true });
    const y = f(b, product, branch);
    const nodes = [...Array(b.graph.nodes.length - first).keys()].map((i) => first + i);
    return branchCoefficient(
      b.graph,
      { anchor: product, nodes, outputs: written(product, branch, y) },
      branch,
    );
  }
  const scalar = (b: Builder, v: number) => b.constant(v, [6, 5]);

  it("a constant scale on the way, a bias and other terms beside the product", () => {
    expect(coefficient((b, p, r) => b.binary("add", p, r))).toBe(1);
    expect(
      coefficient((b, p, r) =>
        b.binary(
          "add",
          b.binary("add", p, b.input("param", "bias", [6, 5])),
          b.binary("mul", scalar(b, 2), r),
        ),
      ),
    ).toBe(2);
    expect(coefficient((b, p, r) => b.binary("add", b.binary("div", r, scalar(b, 4)), p))).toBe(
      0.25,
    );
    expect(coefficient((b, p, r) => b.binary("sub", p, b.binary("mul", r, scalar(b, 3))))).toBe(-3);
    // whatever follows the sum sees acc + branch: a per-column scale after the add is fine
    expect(
      coefficient((b, p, r) =>
        b.binary("mul", b.binary("add", p, r), b.input("param", "s", [6, 5])),
      ),
    ).toBe(1);
  });

  it("keeps the branch apart where the epilogue needs it so", () => {
    // a per-element scale between the branch and the add (DoRA's magnitude)
    expect(
      coefficient((b, p, r) =>
        b.binary("add", p, b.binary("mul", r, b.input("param", "s", [6, 5]))),
      ),
    ).toBeUndefined();
    // the product negated: branch − x·Wᵀ
    expect(coefficient((b, p, r) => b.binary("sub", r, p))).toBeUndefined();
    // the branch read twice
    expect(
      coefficient((b, p, r) => b.binary("add", b.binary("add", p, r), b.binary("mul", r, r))),
    ).toBeUndefined();
    // the product read by something else before the add
    expect(
      coefficient((b, p, r) => b.binary("add", b.binary("add", p, r), b.unary("exp", p))),
    ).toBeUndefined();
    // the kernel writes the product alone too (its value must not hold the branch)
    expect(
      coefficient(
        (b, p, r) => b.binary("add", p, r),
        (p, _r, y) => [p, y],
      ),
    ).toBeUndefined();
    // added to something that is not the product
    expect(
      coefficient((b, p, r) =>
        b.binary("mul", p, b.binary("add", b.input("param", "c", [6, 5]), r)),
      ),
    ).toBeUndefined();
  });
});
