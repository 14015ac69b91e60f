// The IR builder's shape inference and the CPU reference interpreter on hand-computed cases.
import { describe, expect, it } from "vitest";
import { Builder } from "../compiler/builder.js";
import { evaluate, tensor, type Tensor } from "../runtime/interpreter.js";
import { printGraph, type Node } from "../compiler/ir.js";
import { hash32, normalAt, uniformAt } from "../runtime/random.js";

/** Evaluates `out` with `feeds` given as [node, tensor] pairs; returns plain numbers. */
function run(b: Builder, out: number, feeds: [number, Tensor][] = [], float64 = true): number[] {
  return [...evaluate(b.graph, new Map(feeds), [out], { float64 }).get(out)!.data];
}

const nodesOf = (b: Builder, kind: Node["op"]["kind"]) =>
  b.graph.nodes.filter((n) => n.op.kind === kind);

function near(actual: number[], expected: number[], tol = 1e-12) {
  expect(actual.length).toBe(expected.length);
  actual.forEach((a, i) => expect(Math.abs(a - expected[i]!)).toBeLessThanOrEqual(tol));
}

describe("builder shapes", () => {
  it("broadcasts binary operands with reshape + expand and never a no-op expand", () => {
    const b = new Builder();
    const x = b.input("data", "x", [3, 1]);
    const y = b.input("data", "y", [4]);
    const z = b.add(x, y);
    expect(b.shape(z)).toEqual([3, 4]);
    const same = b.mul(z, z);
    expect(b.graph.node(same).inputs).toEqual([z, z]);
    for (const n of nodesOf(b, "expand")) expect(b.shape(n.inputs[0]!)).not.toEqual(n.shape);
    expect(nodesOf(b, "reshape").map((n) => n.shape)).toEqual([[1, 4]]);
    expect(nodesOf(b, "expand").map((n) => n.shape)).toEqual([
      [3, 4],
      [3, 4],
    ]);
    expect(() => b.add(x, b.input("data", "w", [2, 5]))).toThrow(/do not broadcast/);
    expect(() => b.add(x, b.input("data", "i", [3, 1], "i32"))).toThrow(/cast/);
  });

  it("re-emits a broadcast constant at the full shape", () => {
    const b = new Builder();
    const x = b.input("data", "x", [2, 3]);
    const y = b.mul(x, b.constant(2));
    const c = b.graph.node(b.graph.node(y).inputs[1]!);
    expect(c.op).toEqual({ kind: "const", value: 2 });
    expect(c.shape).toEqual([2, 3]);
  });

  it("infers matmul shapes: batch broadcast, 1-D operands, transposes", () => {
    const b = new Builder();
    const a = b.input("data", "a", [2, 1, 3, 4]);
    const c = b.input("data", "c", [5, 4, 6]);
    const m = b.matmul(a, c);
    expect(b.shape(m)).toEqual([2, 5, 3, 6]);
    const node = b.graph.node(m);
    expect(node.inputs.map((i) => b.shape(i))).toEqual([
      [2, 5, 3, 4],
      [2, 5, 4, 6],
    ]);
    const v = b.input("data", "v", [4]);
    const w = b.input("data", "w", [4, 3]);
    const q = b.input("data", "q", [3, 4]);
    expect(b.shape(b.matmul(v, w))).toEqual([3]);
    expect(b.shape(b.matmul(q, v))).toEqual([3]);
    expect(b.shape(b.matmul(v, v))).toEqual([]);
    expect(b.shape(b.matmul(v, c))).toEqual([5, 6]);
    expect(b.shape(b.matmul(q, q, { transB: true }))).toEqual([3, 3]);
    expect(b.shape(b.matmul(q, q, { transA: true }))).toEqual([4, 4]);
    expect(() => b.matmul(q, q)).toThrow(/inner dims/);
  });

  it("reduces over negative axes, keeping or dropping dims", () => {
    const b = new Builder();
    const x = b.input("data", "x", [2, 3, 4]);
    expect(b.shape(b.sum(x, -1))).toEqual([2, 3]);
    expect(b.shape(b.sum(x, [0, -1], true))).toEqual([1, 3, 1]);
    expect(b.shape(b.max(x, 1))).toEqual([2, 4]);
    expect(b.shape(b.mean(x))).toEqual([]);
    expect(b.graph.node(b.graph.node(b.sum(x, [-1, 0])).inputs[0]!).op).toEqual({
      kind: "reduce",
      fn: "sum",
      axes: [0, 2],
    });
    expect(() => b.sum(x, 3)).toThrow(/axis 3/);
  });

  it("reshapes with -1, permutes, transposes", () => {
    const b = new Builder();
    const x = b.input("data", "x", [2, 3, 4]);
    expect(b.shape(b.reshape(x, [-1, 4]))).toEqual([6, 4]);
    expect(b.reshape(x, [2, 3, 4])).toBe(x);
    expect(() => b.reshape(x, [5, -1])).toThrow(/reshape/);
    expect(b.shape(b.permute(x, [2, 0, -2]))).toEqual([4, 2, 3]);
    expect(b.shape(b.transpose(x))).toEqual([2, 4, 3]);
    expect(b.permute(x, [0, 1, 2])).toBe(x);
    expect(() => b.permute(x, [0, 0, 1])).toThrow(/permutation/);
  });

  it("normalizes Python slices, negative steps and indices included", () => {
    const cases: [number | null, number | null, number | null, number[]][] = [
      [-3, null, null, [7, 8, 9]],
      [null, null, -1, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]],
      [8, 2, -2, [8, 6, 4]],
      [-1, -11, -3, [9, 6, 3, 0]],
      [1, 100, 4, [1, 5, 9]],
      [5, 2, null, []],
      [-100, 3, null, [0, 1, 2]],
      [null, null, -4, [9, 5, 1]],
      [100, null, -3, [9, 6, 3, 0]],
    ];
    for (const [start, stop, step, expected] of cases) {
      const b = new Builder();
      const x = b.iota([10], 0, "f32");
      const s = b.slice(x, [start], [stop], [step]);
      expect(b.shape(s)).toEqual([expected.length]);
      expect(run(b, s)).toEqual(expected);
    }
    const b = new Builder();
    const x = b.input("data", "x", [4, 5]);
    expect(b.slice(x, [0], [4])).toBe(x);
    const s = b.slice(x, [null, -2], [null, null], [-1, 1]);
    expect(b.graph.node(s).op).toEqual({ kind: "slice", starts: [3, 3], steps: [-1, 1] });
    expect(b.shape(s)).toEqual([4, 2]);
    expect(() => b.slice(x, [0], [1], [0])).toThrow(/step/);
  });

  it("checks pad, gather, scatterAdd, intrinsics shapes", () => {
    const b = new Builder();
    const x = b.input("data", "x", [2, 3]);
    const ids = b.input("data", "ids", [4, 5], "i32");
    expect(b.shape(b.pad(x, [1, 0], [4, 5]))).toEqual([4, 5]);
    expect(() => b.pad(x, [3, 0], [4, 5])).toThrow(/pad/);
    expect(b.shape(b.gather(x, ids))).toEqual([4, 5, 3]);
    expect(() => b.gather(x, x)).toThrow(/i32/);
    expect(b.shape(b.scatterAdd(ids, b.input("data", "v", [4, 5, 7]), 9))).toEqual([9, 7]);
    const g = b.input("data", "g", [6, 4]);
    expect(b.shape(b.svd(g, "left", 2))).toEqual([6, 2]);
    expect(b.shape(b.svd(g, "right", 3))).toEqual([3, 4]);
    expect(() => b.svd(g, "left", 5)).toThrow(/rank/);
    expect(b.shape(b.quantScale(g, 4, 2))).toEqual([6, 2]);
    expect(() => b.quantize(g, 4, 3)).toThrow(/divide/);
    expect(b.shape(b.topkMask(b.input("data", "s", [7]), b.constant(2)))).toEqual([7]);
  });

  it("prints a tiny graph", () => {
    const b = new Builder();
    b.source = { file: "tiny.lrk", line: 3 };
    const x = b.input("data", "x", [2, 3]);
    const w = b.input("param", "w", [4, 3]);
    const y = b.matmul(x, w, { transB: true });
    b.sum(b.relu(y), -1);
    expect(printGraph(b.graph)).toBe(
      [
        `%0 = input.data "x" : f32[2, 3]  // x tiny.lrk:3`,
        `%1 = input.param "w" : f32[4, 3]  // w tiny.lrk:3`,
        `%2 = matmul Bᵀ %0, %1 : f32[2, 4]  // tiny.lrk:3`,
        `%3 = relu %2 : f32[2, 4]  // tiny.lrk:3`,
        `%4 = reduce.sum axes=[1] %3 : f32[2, 1]  // tiny.lrk:3`,
        `%5 = reshape %4 : f32[2]  // tiny.lrk:3`,
      ].join("\n"),
    );
  });
});

describe("interpreter", () => {
  it("computes unary functions", () => {
    const xs = [-2, -0.5, 0, 0.5, 1, 3];
    const b = new Builder();
    const x = b.input("data", "x", [6]);
    const feed: [number, Tensor][] = [[x, tensor([6], xs)]];
    const f = (fn: Parameters<Builder["unary"]>[0]) => run(b, b.unary(fn, x), feed);
    near(
      f("neg"),
      xs.map((v) => -v),
    );
    near(f("exp"), xs.map(Math.exp));
    near(f("tanh"), xs.map(Math.tanh));
    near(f("abs"), xs.map(Math.abs));
    near(f("sign"), [-1, -1, 0, 1, 1, 1]);
    near(f("floor"), [-2, -1, 0, 0, 1, 3]);
    near(f("relu"), [0, 0, 0, 0.5, 1, 3]);
    near(
      f("square"),
      xs.map((v) => v * v),
    );
    near(f("not"), [0, 0, 1, 0, 0, 0]);
    near(
      f("sigmoid"),
      xs.map((v) => 1 / (1 + Math.exp(-v))),
      1e-15,
    );
    near(
      f("silu"),
      xs.map((v) => v / (1 + Math.exp(-v))),
      1e-15,
    );
    // reference values from mpmath
    near(
      f("erf"),
      [
        -0.9953222650189527, -0.5204998778130465, 0, 0.5204998778130465, 0.8427007929497149,
        0.9999779095030014,
      ],
      1e-15,
    );
    near(
      f("gelu"),
      [
        -0.04550026389635842, -0.15426876936299344, 0, 0.34573123063700656, 0.8413447460685429,
        2.99595030590511,
      ],
      1e-15,
    );
    const p = b.input("data", "p", [3]);
    const pf: [number, Tensor][] = [[p, tensor([3], [0.25, 1, 4])]];
    near(run(b, b.sqrt(p), pf), [0.5, 1, 2]);
    near(run(b, b.rsqrt(p), pf), [2, 1, 0.5]);
    near(run(b, b.log(p), pf), [Math.log(0.25), 0, Math.log(4)]);
    near(run(b, b.unary("recip", p), pf), [4, 1, 0.25]);
  });

  it("computes binary functions, comparisons and where", () => {
    const b = new Builder();
    const x = b.input("data", "x", [4]);
    const y = b.input("data", "y", [4]);
    const feeds: [number, Tensor][] = [
      [x, tensor([4], [-7, 7, 2, 0])],
      [y, tensor([4], [3, -3, 2, 1])],
    ];
    const f = (fn: Parameters<Builder["binary"]>[0]) => run(b, b.binary(fn, x, y), feeds);
    expect(f("add")).toEqual([-4, 4, 4, 1]);
    expect(f("sub")).toEqual([-10, 10, 0, -1]);
    expect(f("mul")).toEqual([-21, -21, 4, 0]);
    near(f("div"), [-7 / 3, -7 / 3, 1, 0]);
    expect(f("pow")).toEqual([-343, 7 ** -3, 4, 0]);
    expect(f("max")).toEqual([3, 7, 2, 1]);
    expect(f("min")).toEqual([-7, -3, 2, 0]);
    expect(f("mod")).toEqual([2, -2, 0, 0]);
    expect(f("lt")).toEqual([1, 0, 0, 1]);
    expect(f("le")).toEqual([1, 0, 1, 1]);
    expect(f("gt")).toEqual([0, 1, 0, 0]);
    expect(f("ge")).toEqual([0, 1, 1, 0]);
    expect(f("eq")).toEqual([0, 0, 1, 0]);
    expect(f("ne")).toEqual([1, 1, 0, 1]);
    expect(f("and")).toEqual([1, 1, 1, 0]);
    expect(f("or")).toEqual([1, 1, 1, 1]);
    expect(run(b, b.where(b.gt(x, y), x, b.constant(-1)), feeds)).toEqual([-1, 7, -1, -1]);
  });

  it("reduces sum and max, and means", () => {
    const b = new Builder();
    const x = b.input("data", "x", [2, 3]);
    const feeds: [number, Tensor][] = [[x, tensor([2, 3], [1, 5, 3, 4, -2, 6])]];
    expect(run(b, b.sum(x, 0), feeds)).toEqual([5, 3, 9]);
    expect(run(b, b.sum(x, -1), feeds)).toEqual([9, 8]);
    expect(run(b, b.sum(x), feeds)).toEqual([17]);
    expect(run(b, b.max(x, 1), feeds)).toEqual([5, 6]);
    expect(run(b, b.max(x, 0, true), feeds)).toEqual([4, 5, 6]);
    expect(run(b, b.mean(x, 1), feeds)).toEqual([3, 8 / 3]);
  });

  it("multiplies matrices with every transpose combination and batches", () => {
    const A = [1, 2, 3, 4, 5, 6]; // [2, 3]
    const At = [1, 4, 2, 5, 3, 6]; // [3, 2]
    const B = [7, 8, 9, 10, 11, 12]; // [3, 2]
    const Bt = [7, 9, 11, 8, 10, 12]; // [2, 3]
    const C = [58, 64, 139, 154];
    for (const [transA, transB] of [
      [false, false],
      [true, false],
      [false, true],
      [true, true],
    ] as const) {
      const b = new Builder();
      const a = b.input("data", "a", transA ? [3, 2] : [2, 3]);
      const c = b.input("data", "c", transB ? [2, 3] : [3, 2]);
      const m = b.matmul(a, c, { transA, transB });
      const feeds: [number, Tensor][] = [
        [a, tensor(b.shape(a), transA ? At : A)],
        [c, tensor(b.shape(c), transB ? Bt : B)],
      ];
      expect(run(b, m, feeds)).toEqual(C);
      expect(run(b, m, feeds, false)).toEqual(C);
    }
    const b = new Builder();
    const a = b.input("data", "a", [2, 1, 2]);
    const c = b.input("data", "c", [2, 1]);
    const feeds: [number, Tensor][] = [
      [a, tensor([2, 1, 2], [1, 2, 3, 4])],
      [c, tensor([2, 1], [10, 100])],
    ];
    expect(run(b, b.matmul(a, c), feeds)).toEqual([210, 430]);
    const v = b.input("data", "v", [2]);
    expect(run(b, b.matmul(v, c), [...feeds, [v, tensor([2], [1, 1])]])).toEqual([110]);
  });

  it("moves data: permute, expand, slice, pad, reshape", () => {
    const b = new Builder();
    const x = b.iota([2, 3], 1, "f32"); // [[0,1,2],[0,1,2]]
    const y = b.add(b.mul(b.iota([2, 3], 0, "f32"), b.constant(10)), x); // [[0,1,2],[10,11,12]]
    expect(run(b, y)).toEqual([0, 1, 2, 10, 11, 12]);
    expect(run(b, b.transpose(y))).toEqual([0, 10, 1, 11, 2, 12]);
    const z = b.reshape(b.iota([24], 0, "f32"), [2, 3, 4]);
    const p = b.permute(z, [2, 0, 1]); // p[k, i, j] = z[i, j, k] = 12i + 4j + k
    const pv = run(b, p);
    expect(b.shape(p)).toEqual([4, 2, 3]);
    expect(pv[1 * 6 + 1 * 3 + 2]).toBe(12 + 8 + 1);
    expect(run(b, b.expand(b.reshape(b.iota([3], 0, "f32"), [3, 1]), [3, 2]))).toEqual([
      0, 0, 1, 1, 2, 2,
    ]);
    expect(run(b, b.slice(y, [null, -1], [null, null], [-1, -2]))).toEqual([12, 10, 2, 0]);
    expect(run(b, b.pad(b.slice(y, [1]), [1, 0], [3, 4]))).toEqual([
      0, 0, 0, 0, 10, 11, 12, 0, 0, 0, 0, 0,
    ]);
    expect(run(b, b.iota([2, 3], 0))).toEqual([0, 0, 0, 1, 1, 1]);
  });

  it("gathers rows and scatter-adds them back", () => {
    const b = new Builder();
    const table = b.input("param", "emb", [4, 2]);
    const ids = b.input("data", "ids", [2, 2], "i32");
    const feeds: [number, Tensor][] = [
      [table, tensor([4, 2], [0, 1, 10, 11, 20, 21, 30, 31])],
      [ids, tensor([2, 2], [3, 0, 3, 1], "i32")],
    ];
    const g = b.gather(table, ids);
    expect(b.shape(g)).toEqual([2, 2, 2]);
    expect(run(b, g, feeds)).toEqual([30, 31, 0, 1, 30, 31, 10, 11]);
    expect(run(b, b.scatterAdd(ids, g, 5), feeds)).toEqual([0, 1, 10, 11, 0, 0, 60, 62, 0, 0]);
    const bad: [number, Tensor][] = [feeds[0]!, [ids, tensor([2, 2], [4, 0, 0, 0], "i32")]];
    expect(() => run(b, g, bad)).toThrow(/outside its table: 4 for a table of/);
  });

  it("generates deterministic counter-based random numbers", () => {
    expect([
      hash32(0, 0),
      hash32(0, 1),
      hash32(1, 0),
      hash32(42, 7),
      hash32(0xffffffff, 123456),
    ]).toEqual([2066478199, 4189535487, 3144712384, 3883867344, 187953793]);
    expect(uniformAt(42, 7)).toBe((3883867344 >>> 8) * 2 ** -24);
    const n = 20000;
    const b = new Builder();
    const u = b.random("uniform", [n], 7);
    const u2 = b.random("uniform", [100, 200], 7);
    const z = b.random("normal", [n], 7);
    const out = evaluate(b.graph, new Map(), [u, u2, z]);
    const uv = [...out.get(u)!.data];
    expect(uv).toEqual([...out.get(u2)!.data]);
    expect(out.get(u)!.data).toBeInstanceOf(Float32Array);
    expect(run(b, b.random("uniform", [n], 8))).not.toEqual(uv);
    expect(Math.min(...uv)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...uv)).toBeLessThan(1);
    const mean = (v: number[]) => v.reduce((s, x) => s + x, 0) / v.length;
    const variance = (v: number[]) => {
      const m = mean(v);
      return mean(v.map((x) => (x - m) ** 2));
    };
    expect(Math.abs(mean(uv) - 0.5)).toBeLessThan(0.01);
    expect(Math.abs(variance(uv) - 1 / 12)).toBeLessThan(0.003);
    const zv = [...out.get(z)!.data];
    expect(Math.abs(mean(zv))).toBeLessThan(0.03);
    expect(Math.abs(variance(zv) - 1)).toBeLessThan(0.04);
    expect(zv[5]).toBe(Math.fround(normalAt(7, 5)));
    expect(zv.every(Number.isFinite)).toBe(true);
  });

  it("rounds every op to f32 unless float64, and keeps i32 as Int32Array", () => {
    const b = new Builder();
    const s = b.add(b.constant(0.1), b.constant(0.2));
    const i = b.add(b.iota([3], 0), b.constant(1, [3], "i32"));
    const f32 = evaluate(b.graph, new Map(), [s, i]);
    const f64 = evaluate(b.graph, new Map(), [s, i], { float64: true });
    expect(f64.get(s)!.data[0]).toBe(0.1 + 0.2);
    expect(f32.get(s)!.data[0]).toBe(Math.fround(Math.fround(0.1) + Math.fround(0.2)));
    expect(f32.get(s)!.data[0]).not.toBe(f64.get(s)!.data[0]);
    expect(f64.get(s)!.data).toBeInstanceOf(Float64Array);
    expect(f32.get(i)!.data).toBeInstanceOf(Int32Array);
    expect(f64.get(i)!.data).toBeInstanceOf(Int32Array);
    expect([...f32.get(i)!.data]).toEqual([1, 2, 3]);
    // a sum of 1 + 2^-24 + 2^-24 in f32 loses both small terms one at a time
    const c = b.input("data", "c", [3]);
    const t = b.sum(c);
    const feed = new Map([[c, tensor([3], [1, 2 ** -24, 2 ** -24])]]);
    expect(evaluate(b.graph, feed, [t]).get(t)!.data[0]).toBe(1);
    expect(evaluate(b.graph, feed, [t], { float64: true }).get(t)!.data[0]).toBe(1 + 2 ** -23);
  });

  it("evaluates only what is wanted and names a missing input", () => {
    const b = new Builder();
    const x = b.input("data", "x", [2]);
    const y = b.input("param", "layer.weight", [2]);
    const sx = b.sum(x);
    b.sum(y);
    expect(run(b, sx, [[x, tensor([2], [1, 2])]])).toEqual([3]);
    expect(() => run(b, b.add(x, y), [[x, tensor([2], [1, 2])]])).toThrow(/layer\.weight/);
  });

  it("computes softmax, crossEntropy and layerNorm", () => {
    const b = new Builder();
    const logits = b.input("data", "logits", [2, 3]);
    const targets = b.input("data", "t", [2], "i32");
    const L = [1, 2, 3, -1, 0.5, 4];
    const feeds: [number, Tensor][] = [
      [logits, tensor([2, 3], L)],
      [targets, tensor([2], [2, 0], "i32")],
    ];
    const sm = run(b, b.softmax(logits, -1), feeds);
    near([sm[0]! + sm[1]! + sm[2]!, sm[3]! + sm[4]! + sm[5]!], [1, 1], 1e-15);
    near([sm[0]!], [Math.exp(1) / (Math.exp(1) + Math.exp(2) + Math.exp(3))], 1e-15);
    const lse = (v: number[]) => Math.log(v.reduce((s, x) => s + Math.exp(x), 0));
    const expected = (lse(L.slice(0, 3)) - 3 + (lse(L.slice(3)) - -1)) / 2;
    near(run(b, b.crossEntropy(logits, targets), feeds), [expected], 1e-14);
    near(run(b, b.logSoftmax(logits, 1), feeds).slice(0, 1), [1 - lse(L.slice(0, 3))], 1e-14);
    const ln = run(b, b.layerNorm(logits, undefined, undefined, 0), feeds);
    for (const row of [ln.slice(0, 3), ln.slice(3)]) {
      const m = row.reduce((s, v) => s + v, 0) / 3;
      near([m, row.reduce((s, v) => s + (v - m) ** 2, 0) / 3], [0, 1], 1e-12);
    }
    const w = b.constant(2, [3]);
    const bias = b.constant(1, [3]);
    near(
      run(b, b.layerNorm(logits, w, bias, 0), feeds),
      ln.map((v) => 2 * v + 1),
      1e-12,
    );
  });
});
