// Every kernel family of the WebGPU device against the CPU reference interpreter, on a real
// WebGPU adapter (lavapipe in CI): map kernels for each unary and binary function, where, cast,
// iota, const, random (the uniform bit-exact), every movement op, gather; reductions over each
// axis; row kernels (softmax, layer norm and cross-entropy, forward and backward, as one kernel
// each) over odd row lengths and counts; matmuls with every transpose combination, batches and
// broadcast operands; scatterAdd, svd (compared as subspaces), topkMask, quantize and quantScale.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { gradients } from "../compiler/autodiff.js";
import { Builder } from "../compiler/builder.js";
import { fuse } from "../compiler/fuse/index.js";
import { mapKernel } from "../compiler/kernels/elementwise.js";
import { defaultRowParams, rowKernel } from "../compiler/kernels/reduce.js";
import { evaluate, type Tensor } from "../runtime/interpreter.js";
import type { BinaryFn, DType, UnaryFn } from "../compiler/ir.js";
import type { ProgramInput } from "../compiler/program.js";
import { runGraph } from "./program-helpers.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { mulberry32 as rng } from "../runtime/rng.js";

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

class Case {
  readonly b = new Builder();
  readonly inputs: ProgramInput[] = [];
  readonly feeds = new Map<string, Tensor>();
  private readonly random: () => number;

  constructor(seed = 1) {
    this.random = rng(seed);
  }

  input(name: string, shape: number[], values: ArrayLike<number>, dtype: DType = "f32"): number {
    const node = this.b.input("data", name, shape, dtype);
    this.inputs.push({ name, node, role: "data", shape, dtype });
    const data = dtype === "i32" ? Int32Array.from(values) : Float32Array.from(values);
    this.feeds.set(name, { shape, data });
    return node;
  }

  /** Uniform in [lo, hi). */
  uniform(name: string, shape: number[], lo = -1, hi = 1): number {
    const n = shape.reduce((a, c) => a * c, 1);
    return this.input(
      name,
      shape,
      Array.from({ length: n }, () => lo + (hi - lo) * this.random()),
    );
  }

  ints(name: string, shape: number[], lo: number, hi: number): number {
    const n = shape.reduce((a, c) => a * c, 1);
    return this.input(
      name,
      shape,
      Array.from({ length: n }, () => lo + Math.floor((hi - lo) * this.random())),
      "i32",
    );
  }

  /** Runs the outputs on both devices: [webgpu, interpreter] by name. */
  async run(
    outputs: Record<string, number>,
  ): Promise<{ got: Map<string, Tensor>; want: Map<string, Tensor> }> {
    const named = Object.entries(outputs).map(([name, node]) => ({ name, node }));
    const got = await runGraph(device, this.b.graph, this.inputs, named, this.feeds);
    const byNode = new Map(this.inputs.map((i) => [i.node, this.feeds.get(i.name)!]));
    const values = evaluate(this.b.graph, byNode, Object.values(outputs));
    const want = new Map(Object.entries(outputs).map(([name, node]) => [name, values.get(node)!]));
    return { got, want };
  }

  /** Runs and checks every output: |got − want| ≤ rel·|want| + abs (NaN where NaN). */
  async check(outputs: Record<string, number>, rel: number, abs = rel * 1e-2): Promise<void> {
    const { got, want } = await this.run(outputs);
    for (const [name, w] of want) {
      const g = got.get(name)!;
      expect(g.shape, name).toEqual(w.shape);
      expect(g.data.length, name).toBe(w.data.length);
      expect(g.data instanceof Int32Array, `${name} dtype`).toBe(w.data instanceof Int32Array);
      for (let i = 0; i < w.data.length; i++) {
        const x = g.data[i]!;
        const y = w.data[i]!;
        if (Number.isNaN(y)) {
          expect(Number.isNaN(x), `${name}[${i}]: got ${x}, want NaN`).toBe(true);
          continue;
        }
        if (x === y) continue;
        const ok = Math.abs(x - y) <= rel * Math.abs(y) + abs;
        if (!ok) expect.fail(`${name}[${i}]: got ${x}, want ${y} (|Δ| ${Math.abs(x - y)})`);
      }
    }
  }
}

const unaryDomains: Record<UnaryFn, [number, number]> = {
  neg: [-5, 5],
  exp: [-10, 10],
  log: [0.01, 100],
  sqrt: [0, 100],
  rsqrt: [0.01, 100],
  abs: [-5, 5],
  sign: [-2, 2],
  tanh: [-6, 6],
  sigmoid: [-20, 20],
  relu: [-5, 5],
  gelu: [-6, 6],
  silu: [-20, 20],
  erf: [-4, 4],
  sin: [-3, 3],
  cos: [-3, 3],
  floor: [-10, 10],
  recip: [0.1, 10],
  square: [-5, 5],
  not: [-2, 2],
};

describe("map kernels", () => {
  it("every unary function, in f32, within 1e-5 relative", async () => {
    const c = new Case(2);
    const outs: Record<string, number> = {};
    for (const [fn, [lo, hi]] of Object.entries(unaryDomains) as [UnaryFn, [number, number]][]) {
      const x = c.uniform(`x_${fn}`, [257], lo, hi);
      outs[fn] = c.b.unary(fn, x);
    }
    // values near 0, where tanh, erf, expm1-like forms lose precision easily
    const small = c.uniform("small", [64], -1e-3, 1e-3);
    for (const fn of ["tanh", "erf", "gelu", "sigmoid", "silu", "sign", "relu"] as const)
      outs[`${fn}_small`] = c.b.unary(fn, small);
    // exact zeros and integers for sign, floor, not, relu
    const z = c.input("z", [6], [0, -0, 1, -1, 2.5, -2.5]);
    for (const fn of ["sign", "floor", "not", "relu", "abs"] as const)
      outs[`${fn}_z`] = c.b.unary(fn, z);
    await c.check(outs, 1e-5, 1e-7);
  });

  it("every binary function, f32 and i32", async () => {
    const c = new Case(3);
    const outs: Record<string, number> = {};
    const a = c.uniform("a", [5, 41], -4, 4);
    const b = c.uniform("b", [5, 41], -4, 4);
    const bPos = c.uniform("bpos", [5, 41], 0.5, 4);
    const base = c.uniform("base", [5, 41], 0.05, 3);
    const expo = c.uniform("expo", [5, 41], -3, 3);
    const negBase = c.uniform("nbase", [5, 41], -3, -0.1);
    const intExpo = c.input(
      "iexpo",
      [5, 41],
      Array.from({ length: 205 }, (_, i) => (i % 9) - 4),
    );
    const steps = c.input(
      "steps",
      [5, 41],
      Array.from({ length: 205 }, (_, i) => 1 + i),
    );
    const beta = c.input("beta", [5, 41], Array(205).fill(0.999));
    const fns: BinaryFn[] = ["add", "sub", "mul", "max", "min", "lt", "le", "gt", "ge", "eq", "ne"];
    for (const fn of fns) outs[fn] = c.b.binary(fn, a, b);
    outs.eq_self = c.b.binary("eq", a, a);
    outs.div = c.b.binary("div", a, bPos);
    outs.mod = c.b.binary("mod", a, bPos);
    outs.mod_neg = c.b.binary("mod", a, c.b.neg(bPos));
    outs.pow = c.b.binary("pow", base, expo);
    outs.pow_neg_int = c.b.binary("pow", negBase, intExpo);
    // Adam's bias correction 1 - β^t: correctly rounded, as the interpreter's
    outs.bias_correction = c.b.sub(c.b.constant(1, [5, 41]), c.b.binary("pow", beta, steps));
    const logic = c.input("logic", [8], [0, 1, 0, 2, -1, 0, 0.5, 0]);
    const logic2 = c.input("logic2", [8], [0, 0, 1, 1, 1, 3, 0, 0]);
    outs.and = c.b.binary("and", logic, logic2);
    outs.or = c.b.binary("or", logic, logic2);
    await c.check(outs, 2e-6, 1e-7);

    const d = new Case(4);
    const ia = d.ints("ia", [3, 37], -50, 50);
    const ib = d.ints("ib", [3, 37], -9, 10);
    const iouts: Record<string, number> = {};
    for (const fn of [...fns, "div", "mod"] as BinaryFn[])
      iouts[`i_${fn}`] = d.b.binary(fn, ia, ib);
    iouts.i_neg = d.b.neg(ia);
    iouts.i_abs = d.b.abs(ia);
    iouts.i_square = d.b.square(ia);
    await d.check(iouts, 0, 0);
  });

  it("where, cast, const, iota", async () => {
    const c = new Case(5);
    const cond = c.uniform("cond", [4, 9], -1, 1);
    const x = c.uniform("x", [4, 9], -10, 10);
    const y = c.uniform("y", [4, 9], -10, 10);
    const positive = c.b.gt(cond, c.b.constant(0, [4, 9]));
    const ids = c.ints("ids", [4, 9], -20, 20);
    await c.check(
      {
        where: c.b.where(positive, x, y),
        where_i32: c.b.where(c.b.cast(positive, "i32"), ids, c.b.neg(ids)),
        to_i32: c.b.cast(x, "i32"),
        to_f32: c.b.cast(ids, "f32"),
        const_f32: c.b.constant(0.1, [3, 5]),
        const_neg: c.b.constant(-1e-8, [7]),
        const_i32: c.b.constant(-7, [2, 2], "i32"),
        const_scalar: c.b.constant(3.25),
        iota0: c.b.iota([3, 4, 5], 0),
        iota1: c.b.iota([3, 4, 5], 1, "f32"),
        iota2: c.b.iota([3, 4, 5], 2),
      },
      0,
      0,
    );
  });

  it("random: the uniform is bit-exact, the normal within 1e-5", async () => {
    const c = new Case(6);
    const step = c.input("step", [], [17]);
    const outs = {
      uniform: c.b.random("uniform", [1031], 1234),
      uniform_step: c.b.random("uniform", [3, 77], 99, step),
      uniform_seed0: c.b.random("uniform", [64], 0),
      normal: c.b.random("normal", [2049], 0xdeadbeef),
      normal_step: c.b.random("normal", [5, 33], 7, step),
      // fused: a dropout-like mask read twice inside one kernel
      mask: c.b.mul(
        c.b.cast(c.b.ge(c.b.random("uniform", [129], 5, step), c.b.constant(0.3, [129])), "f32"),
        c.b.constant(1 / 0.7, [129]),
      ),
    };
    const { got, want } = await c.run(outs);
    for (const name of ["uniform", "uniform_step", "uniform_seed0", "mask"])
      expect(Array.from(got.get(name)!.data), name).toEqual(Array.from(want.get(name)!.data));
    for (const name of ["normal", "normal_step"]) {
      const g = got.get(name)!.data;
      const w = want.get(name)!.data;
      for (let i = 0; i < w.length; i++)
        if (Math.abs(g[i]! - w[i]!) > 1e-5 * Math.max(1, Math.abs(w[i]!)))
          expect.fail(`${name}[${i}]: got ${g[i]}, want ${w[i]}`);
    }
  });

  it("movement ops as index arithmetic: reshape, permute, expand, slice (negative steps), pad", async () => {
    const c = new Case(7);
    const x = c.uniform("x", [3, 5, 7]);
    const v = c.uniform("v", [1, 5, 1]);
    const b = c.b;
    const sliced = b.slice(x, [2, null, 1], [null, 0, 6], [-1, -2, 2]);
    await c.check(
      {
        reshape: b.reshape(x, [7, 15]),
        permute: b.permute(x, [2, 0, 1]),
        permute_reshape: b.reshape(b.permute(x, [1, 2, 0]), [35, 3]),
        expand: b.expand(v, [4, 5, 6]),
        slice: sliced,
        slice_permute: b.permute(b.slice(x, [1, 1, null], [3, null, null], [1, 3, -3]), [2, 1, 0]),
        pad: b.pad(x, [1, 0, 2], [5, 6, 10]),
        pad_slice: b.neg(b.pad(sliced, [0, 1, 1], [4, 4, 5])),
        reshape_expand: b.add(
          b.expand(b.reshape(v, [5, 1]), [5, 7]),
          b.reshape(b.slice(x, [0, 0, 0], [1, 5, 7]), [5, 7]),
        ),
        transpose_of_sum: b.add(
          b.reshape(x, [15, 7]),
          b.reshape(b.permute(b.reshape(x, [7, 15]), [1, 0]), [15, 7]),
        ),
      },
      0,
      0,
    );
  });

  it("vec4 kernels (rows of 4k elements): every movement op, reads by vec4, by element and shared", async () => {
    const c = new Case(21);
    const b = c.b;
    const x = c.uniform("x", [4, 4, 8]);
    const v = c.uniform("v", [1, 4, 1]);
    const w = c.uniform("w", [4, 1, 8]);
    const y = c.uniform("y", [4, 8, 4]);
    const z = c.uniform("z", [6, 10]);
    const table = c.uniform("table", [11, 8]);
    const ids = c.ints("ids", [3, 4], 0, 11);
    const step = c.input("step", [], [5]);
    const outs = {
      same_shape: b.mul(b.square(x), b.neg(x)),
      // x twice, at two different vec4s of it
      permute_kept: b.add(x, b.permute(x, [1, 0, 2])),
      permute_moved: b.permute(y, [2, 1, 0]),
      expand_last: b.add(x, b.expand(v, [4, 4, 8])),
      expand_other: b.sub(b.expand(w, [4, 4, 8]), x),
      reshape_rows: b.reshape(x, [8, 16]),
      reshape_odd: b.reshape(z, [15, 4]),
      slice_aligned: b.slice(x, [0, 1, 4], [4, 4, 8]),
      slice_unaligned: b.slice(x, [0, 0, 2], [4, 4, 6]),
      slice_reversed: b.slice(x, [3, null, 4], [null, null, 8], [-1, 1, 1]),
      pad_rows: b.pad(x, [1, 0, 0], [6, 5, 8]),
      pad_last: b.pad(x, [0, 0, 2], [4, 4, 12]),
      gather: b.mul(b.gather(table, ids), b.constant(3, [3, 4, 8])),
      iota_random: b.add(b.iota([4, 8], 1, "f32"), b.random("uniform", [4, 8], 3, step)),
      // one kernel, two outputs of one element count and different shapes
      first: b.add(x, b.constant(1, [4, 4, 8])),
      second: b.mul(b.reshape(x, [2, 8, 8]), b.constant(2, [2, 8, 8])),
    };
    const fused = fuse(b.graph, Object.values(outs));
    const maps = fused.groups.filter((g) => g.kind === "map");
    const kernels = maps.map((g) =>
      mapKernel({
        graph: b.graph,
        output: g.output,
        outputs: g.outputs,
        nodes: g.nodes,
        isBuffer: (id) => fused.materialized.has(id),
        bufferOf: (id) => id,
      }),
    );
    // every kernel computes 4 elements at a time (reshape_odd's reads its rows of 4 from rows of
    // 10 element by element, permute_moved's from columns)
    expect(kernels.every((k) => k.name.endsWith("(vec4)"))).toBe(true);
    const text = kernels.map((k) => k.wgsl).join("\n");
    expect(text).toMatch(/array<vec4<f32>>/);
    expect(text).toMatch(/var<storage, read> \w+: array<vec4<f32>>/); // inputs read by vec4
    await c.check(outs, 0, 0);
  });

  it("gather rows of a table by i32 ids, inside a fused expression", async () => {
    const c = new Case(8);
    const table = c.uniform("table", [11, 6]);
    const ids = c.ints("ids", [3, 4], 0, 11);
    const ids1 = c.ints("ids1", [5], 0, 11);
    await c.check(
      {
        gather: c.b.gather(table, ids),
        gather_fused: c.b.mul(c.b.gather(c.b.exp(table), ids1), c.b.constant(2, [5, 6])),
      },
      1e-6,
      0,
    );
  });
});

describe("reduce kernels", () => {
  it("sum and max over each axis and several axes of odd sizes, with a fused prologue", async () => {
    const c = new Case(9);
    const x = c.uniform("x", [5, 7, 9], -3, 3);
    const outs: Record<string, number> = {};
    const axesList = [[0], [1], [2], [0, 1], [1, 2], [0, 2], [0, 1, 2]];
    for (const axes of axesList) {
      outs[`sum_${axes.join("")}`] = c.b.sum(x, axes, true);
      outs[`max_${axes.join("")}`] = c.b.max(x, axes, true);
      outs[`sumexp_${axes.join("")}`] = c.b.sum(c.b.exp(c.b.permute(x, [2, 0, 1])), axes, true);
    }
    outs.mean_keep = c.b.mean(c.b.square(x), -1);
    const ix = c.ints("ix", [4, 33], -100, 100);
    outs.i32_sum = c.b.sum(ix, 1);
    // (non-negative: the interpreter starts an i32 max at 0, Int32Array's -Infinity)
    outs.i32_max = c.b.max(c.ints("ipos", [4, 33], 0, 100), 0);
    await c.check(outs, 1e-5, 1e-6);
  });

  it("long reductions (one workgroup per output) within 1e-5", async () => {
    const c = new Case(10);
    const x = c.uniform("x", [3, 5000]);
    const y = c.uniform("y", [6000, 2]);
    await c.check(
      {
        rows: c.b.sum(x, 1),
        rows_max: c.b.max(x, 1),
        all: c.b.sum(c.b.square(x)),
        cols: c.b.sum(y, 0),
      },
      1e-5,
      1e-4,
    );
  });
});

describe("row kernels", () => {
  // Rows of 1 to 2500 elements (one invocation per row up to 2047, but 64 for 8 rows or fewer from
  // 256; from 2048, 256 invocations per row, each looping; vec4 loads for 128 and 1000), 1 to 7
  // rows (not a multiple of the rows a workgroup takes).
  const lens = [1, 3, 33, 128, 257, 1000, 2500];
  const rowCounts = [1, 3, 7];
  /** Row kernels among the kernels of `outs` (at least one, or the test checks nothing new). */
  const rowKernels = (c: Case, outs: number[]) =>
    fuse(c.b.graph, outs).groups.filter((g) => g.kind === "row").length;
  /** The names of the row kernels of `outs`. */
  const rowNames = (c: Case, outs: number[]) => {
    const fused = fuse(c.b.graph, outs);
    return fused.groups
      .filter((g) => g.kind === "row")
      .map(
        (g) =>
          rowKernel({
            graph: c.b.graph,
            row: g.row!,
            outputs: g.outputs,
            nodes: g.nodes,
            isBuffer: (id) => fused.materialized.has(id),
            bufferOf: (id) => id,
          }).name,
      )
      .join("; ");
  };

  for (const pattern of ["softmax", "layer norm", "cross-entropy"] as const)
    it(`${pattern}, forward and backward (x's gradient), each row length and count`, async () => {
      let seed = 20;
      for (const len of lens)
        for (const rows of rowCounts) {
          const c = new Case(seed++);
          const b = c.b;
          const x = c.uniform("x", [rows, len], -4, 4);
          const outs: Record<string, number> = {};
          let loss: number;
          if (pattern === "cross-entropy") {
            loss = b.crossEntropy(x, c.ints("t", [rows], 0, len));
            outs.loss = loss;
          } else {
            const y =
              pattern === "softmax"
                ? b.softmax(x, -1)
                : b.layerNorm(x, c.uniform("w", [len], 0.5, 1.5), c.uniform("bias", [len]));
            outs.y = y;
            if (pattern === "softmax") outs.logp = b.logSoftmax(x, -1);
            loss = b.sum(b.mul(y, c.uniform("dy", [rows, len])));
          }
          outs.dx = gradients(b, loss, [x]).get(x)!;
          // (reductions over one element are no reductions)
          if (len > 1)
            expect(rowKernels(c, Object.values(outs)), `${rows}×${len}`).toBeGreaterThan(0);
          if (len % 4 === 0) expect(rowNames(c, Object.values(outs))).toMatch(/vec4/);
          await c.check(outs, 1e-4, 1e-5);
        }
    });

  it("a few long rows (a gradient norm's one row) are shared by 64 invocations each", () => {
    expect(defaultRowParams(1, 1024, false).lanes).toBe(64);
    expect(defaultRowParams(8, 256, false).lanes).toBe(64);
    // many rows keep one invocation each: the workgroups fill the device
    expect(defaultRowParams(576, 128, false).lanes).toBe(1);
    expect(defaultRowParams(9, 1000, false).lanes).toBe(1);
  });

  it("two row reductions feeding a total, with per-row and per-element outputs", async () => {
    const c = new Case(40);
    const b = c.b;
    const x = c.uniform("x", [5, 4, 37], -2, 2);
    const m = b.mean(x, -1, true);
    const v = b.mean(b.square(b.sub(x, m)), -1, true); // a per-row output
    const z = b.div(b.sub(x, m), b.sqrt(b.add(v, b.constant(1))));
    const zmax = b.max(z, -1, true);
    const total = b.sum(b.exp(b.sub(z, zmax))); // over everything
    const outs = { v, z, total, t2: b.mul(total, b.constant(2)) };
    expect(rowKernels(c, Object.values(outs))).toBe(1);
    expect(fuse(b.graph, Object.values(outs)).groups).toHaveLength(1);
    await c.check(outs, 1e-5, 1e-5);
  });
});

describe("matmul kernels", () => {
  it("every transpose combination, from IR flags and from permutes read in place", async () => {
    const c = new Case(11);
    const b = c.b;
    const a = c.uniform("a", [7, 5]);
    const at = c.uniform("at", [5, 7]);
    const w = c.uniform("w", [5, 9]);
    const wt = c.uniform("wt", [9, 5]);
    await c.check(
      {
        nn: b.matmul(a, w),
        nt: b.matmul(a, wt, { transB: true }),
        tn: b.matmul(at, w, { transA: true }),
        tt: b.matmul(at, wt, { transA: true, transB: true }),
        perm_b: b.matmul(a, b.transpose(wt)),
        perm_a: b.matmul(b.transpose(at), w),
        perm_both_flagged: b.matmul(b.transpose(a), b.transpose(w), { transA: true, transB: true }),
      },
      1e-5,
      1e-6,
    );
  });

  it("batches, broadcast operands, fused epilogues and i32", async () => {
    const c = new Case(12);
    const b = c.b;
    const x = c.uniform("x", [3, 4, 6]);
    const y = c.uniform("y", [3, 6, 5]);
    const w = c.uniform("w", [6, 5]);
    const bias = c.uniform("bias", [5]);
    const res = c.uniform("res", [3, 4, 5]);
    const ia = c.ints("ia", [4, 3], -5, 5);
    const ib = c.ints("ib", [3, 2], -5, 5);
    await c.check(
      {
        batched: b.matmul(x, y),
        batched_tb: b.matmul(x, b.transpose(b.permute(y, [0, 2, 1])), { transB: false }),
        broadcast_b: b.matmul(x, w),
        broadcast_a: b.matmul(w, y, { transA: true }),
        epilogue: b.add(b.gelu(b.add(b.matmul(x, w), bias)), res),
        // Σ over the batch of xᵀ·y (a broadcast weight's gradient): one matmul, batch folded into k
        batch_summed: b.mul(
          b.sum(b.matmul(x, c.uniform("dy", [3, 4, 7]), { transA: true }), 0),
          b.constant(0.5, [6, 7]),
        ),
        i32: b.matmul(ia, ib),
      },
      1e-5,
      1e-6,
    );
  });
});

describe("special kernels", () => {
  it("scatterAdd sums rows per id in the interpreter's order", async () => {
    const c = new Case(13);
    const ids = c.ints("ids", [3, 5], 0, 6);
    const vals = c.uniform("vals", [3, 5, 4]);
    await c.check({ scatter: c.b.scatterAdd(ids, vals, 6) }, 0, 0);
  });

  it("topkMask with ties and a fractional k", async () => {
    const c = new Case(14);
    const scores = c.input("scores", [12], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 9]);
    const k = c.input("k", [], [5.5]);
    const big = c.uniform("big", [300]);
    const k2 = c.input("k2", [], [41]);
    await c.check({ mask: c.b.topkMask(scores, k), big: c.b.topkMask(big, k2) }, 0, 0);
  });

  it("quantize and quantScale, a zero group included", async () => {
    const c = new Case(15);
    const values = Array.from({ length: 6 * 16 }, (_, i) => (i < 8 ? 0 : Math.sin(i * 1.7) * 3));
    values[20] = 0.5; // halfway cases after scaling are rounded away from zero
    const w = c.input("w", [6, 16], values);
    await c.check(
      {
        q4: c.b.quantize(w, 4, 8),
        s4: c.b.quantScale(w, 4, 8),
        q8: c.b.quantize(w, 8, 16),
        s8: c.b.quantScale(w, 8, 16),
      },
      1e-6,
      0,
    );
  });

  /** P = U Uᵀ of the columns of u [m, r] (or of the rows of u [r, m] when `rows`). */
  function projector(u: Tensor, rows: boolean): Float64Array {
    const [a, b] = u.shape as [number, number];
    const m = rows ? b : a;
    const r = rows ? a : b;
    const at = (i: number, k: number) => (rows ? u.data[k * m + i]! : u.data[i * r + k]!);
    const p = new Float64Array(m * m);
    for (let i = 0; i < m; i++)
      for (let j = 0; j < m; j++) {
        let s = 0;
        for (let k = 0; k < r; k++) s += at(i, k) * at(j, k);
        p[i * m + j] = s;
      }
    return p;
  }

  it("svd: left and right singular subspaces match the interpreter's (projectors within 1e-4)", async () => {
    const c = new Case(16);
    const random = rng(99);
    // A rank-4 signal with decaying singular values, plus noise: a clear gap after rank 4.
    const [m, n] = [40, 24];
    const g = new Float64Array(m * n);
    for (let k = 0; k < 4; k++) {
      const u = Array.from({ length: m }, () => random() - 0.5);
      const v = Array.from({ length: n }, () => random() - 0.5);
      for (let i = 0; i < m; i++)
        for (let j = 0; j < n; j++) g[i * n + j]! += (10 / (k + 1)) * u[i]! * v[j]!;
    }
    for (let i = 0; i < m * n; i++) g[i]! += 0.01 * (random() - 0.5);
    const x = c.input("g", [m, n], g);
    const { got, want } = await c.run({
      left: c.b.svd(x, "left", 4, { seed: 11 }),
      right: c.b.svd(x, "right", 4, { seed: 12 }),
      wide_left: c.b.svd(c.b.transpose(x), "left", 3, { seed: 13, iterations: 1 }),
    });
    for (const [name, rows] of [
      ["left", false],
      ["right", true],
      ["wide_left", false],
    ] as const) {
      const pg = projector(got.get(name)!, rows);
      const pw = projector(want.get(name)!, rows);
      let worst = 0;
      for (let i = 0; i < pw.length; i++) worst = Math.max(worst, Math.abs(pg[i]! - pw[i]!));
      expect(worst, `${name}: max |P_gpu − P_cpu|`).toBeLessThan(1e-4);
      // the same vectors, signs included, where the singular values are well separated
      const gd = got.get(name)!.data;
      const wd = want.get(name)!.data;
      let diff = 0;
      for (let i = 0; i < wd.length; i++) diff = Math.max(diff, Math.abs(gd[i]! - wd[i]!));
      expect(diff, `${name}: max |U_gpu − U_cpu|`).toBeLessThan(1e-3);
    }
  });
});
