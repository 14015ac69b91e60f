// Reverse-mode gradients checked against central finite differences of the f64 interpreter:
// f64 gradients within 1e-6 relative error, f32 gradients within 1e-3.
import { describe, expect, it } from "vitest";
import { gradients } from "../compiler/autodiff.js";
import { Builder } from "../compiler/builder.js";
import { evaluate, tensor, type Tensor } from "../runtime/interpreter.js";
import type { Shape } from "../compiler/ir.js";
import { numel } from "../compiler/ir.js";
import { uniformAt } from "../runtime/random.js";

/** A test program: parameters to differentiate, fixed data, and the builder. */
class Case {
  readonly b = new Builder();
  readonly params: { id: number; values: Float64Array }[] = [];
  readonly feeds = new Map<number, Tensor>();
  private seed = 1;

  /** A parameter uniform in [lo, hi]; with `signed`, magnitudes in [lo, hi] with random signs. */
  param(
    shape: Shape,
    opts: { lo?: number; hi?: number; signed?: boolean; values?: number[] } = {},
  ): number {
    const { lo = -1, hi = 1, signed = false } = opts;
    const seed = this.seed++;
    const values = Float64Array.from(
      opts.values ??
        Array.from({ length: numel(shape) }, (_, i) => {
          const v = lo + (hi - lo) * uniformAt(seed, 2 * i);
          return signed && uniformAt(seed, 2 * i + 1) < 0.5 ? -v : v;
        }),
    );
    const id = this.b.input("param", `p${this.params.length}`, shape);
    this.params.push({ id, values });
    this.feeds.set(id, { shape: [...shape], data: values });
    return id;
  }

  data(shape: Shape, values: number[], dtype: "f32" | "i32" = "f32"): number {
    const id = this.b.input("data", `d${this.feeds.size}`, shape, dtype);
    this.feeds.set(id, tensor(shape, values, dtype));
    return id;
  }
}

const norm = (v: ArrayLike<number>) => Math.sqrt(Array.from(v).reduce((s, x) => s + x * x, 0));
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const d = Array.from(a, (x, i) => x - b[i]!);
  return norm(d) / Math.max(norm(a), norm(b), 1e-12);
}

/**
 * Makes a scalar loss from `out` (Σ out·R for fixed random R unless `out` is already scalar),
 * differentiates with respect to every parameter, and compares with finite differences.
 */
function check(
  c: Case,
  out: number,
  opts: { tol32?: number; h?: number } = {},
): Map<number, number> {
  const b = c.b;
  const shape = b.shape(out);
  const loss =
    shape.length === 0
      ? out
      : b.sum(
          b.mul(
            out,
            c.data(
              shape,
              Array.from({ length: numel(shape) }, (_, i) => uniformAt(999, i) * 2 - 1),
            ),
          ),
        );
  const wrt = c.params.map((p) => p.id);
  const grads = gradients(b, loss, wrt);
  const ids = wrt.map((w) => grads.get(w)!);
  const g64 = evaluate(b.graph, c.feeds, ids, { float64: true });
  const g32 = evaluate(b.graph, c.feeds, ids);
  const lossAt = () => evaluate(b.graph, c.feeds, [loss], { float64: true }).get(loss)!.data[0]!;
  const h = opts.h ?? 1e-6;
  for (const p of c.params) {
    const fd = new Float64Array(p.values.length);
    for (let i = 0; i < p.values.length; i++) {
      const v = p.values[i]!;
      p.values[i] = v + h;
      const up = lossAt();
      p.values[i] = v - h;
      const down = lossAt();
      p.values[i] = v;
      fd[i] = (up - down) / (2 * h);
    }
    const gid = grads.get(p.id)!;
    expect(norm(fd), "finite differences are all zero: a useless check").toBeGreaterThan(1e-8);
    expect(relErr(g64.get(gid)!.data, fd), `f64 gradient of param %${p.id}`).toBeLessThanOrEqual(
      1e-6,
    );
    expect(relErr(g32.get(gid)!.data, fd), `f32 gradient of param %${p.id}`).toBeLessThanOrEqual(
      opts.tol32 ?? 1e-3,
    );
  }
  return grads;
}

/** Nodes appended after `from`. */
const after = (b: Builder, from: number) => b.graph.nodes.filter((n) => n.id >= from);

describe("gradients of primitives", () => {
  const unary: [Parameters<Builder["unary"]>[0], { lo?: number; hi?: number; signed?: boolean }][] =
    [
      ["neg", {}],
      ["exp", {}],
      ["log", { lo: 0.2, hi: 2 }],
      ["sqrt", { lo: 0.2, hi: 2 }],
      ["rsqrt", { lo: 0.2, hi: 2 }],
      ["abs", { lo: 0.1, hi: 1, signed: true }],
      ["tanh", { lo: -2, hi: 2 }],
      ["sigmoid", { lo: -3, hi: 3 }],
      ["relu", { lo: 0.1, hi: 1, signed: true }],
      ["gelu", { lo: -3, hi: 3 }],
      ["silu", { lo: -3, hi: 3 }],
      ["erf", { lo: -2, hi: 2 }],
      ["recip", { lo: 0.3, hi: 2, signed: true }],
      ["square", {}],
    ];
  for (const [fn, range] of unary)
    it(`unary ${fn}`, () => {
      const c = new Case();
      check(c, c.b.unary(fn, c.param([2, 3], range)));
    });

  it("gives zero gradient through sign, floor and not", () => {
    for (const fn of ["sign", "floor", "not"] as const) {
      const c = new Case();
      const x = c.param([3]);
      const loss = c.b.sum(c.b.unary(fn, x));
      const g = gradients(c.b, loss, [x]).get(x)!;
      expect([...evaluate(c.b.graph, c.feeds, [g]).get(g)!.data]).toEqual([0, 0, 0]);
    }
  });

  const binary: [Parameters<Builder["binary"]>[0], object, object][] = [
    ["add", {}, {}],
    ["sub", {}, {}],
    ["mul", {}, {}],
    ["div", {}, { lo: 0.5, hi: 2, signed: true }],
    ["pow", { lo: 0.5, hi: 2 }, { lo: -1.5, hi: 1.5 }],
    ["max", { values: [0.1, 0.9, -0.5, 0.3, 2, -1] }, { values: [0.4, 0.2, -0.7, 0.5, 1, -2] }],
    ["min", { values: [0.1, 0.9, -0.5, 0.3, 2, -1] }, { values: [0.4, 0.2, -0.7, 0.5, 1, -2] }],
    ["mod", { lo: 3, hi: 5 }, { lo: 1.1, hi: 1.3 }],
  ];
  for (const [fn, ra, rb] of binary)
    it(`binary ${fn}`, () => {
      const c = new Case();
      check(c, c.b.binary(fn, c.param([2, 3], ra), c.param([2, 3], rb)));
    });

  it("binary with broadcasting sums over the broadcast axes", () => {
    const c = new Case();
    check(c, c.b.mul(c.param([3, 1]), c.param([4])));
  });

  it("pow gradients are 0 where the base is 0 and the exponent positive", () => {
    const c = new Case();
    const a = c.param([2], { values: [0, 2] });
    const x = c.param([2], { values: [2, 3] });
    const g = gradients(c.b, c.b.sum(c.b.pow(a, x)), [a, x]);
    const out = evaluate(c.b.graph, c.feeds, [g.get(a)!, g.get(x)!], { float64: true });
    expect([...out.get(g.get(a)!)!.data]).toEqual([0, 12]);
    expect([...out.get(g.get(x)!)!.data]).toEqual([0, 8 * Math.log(2)]);
  });

  it("max/min send a tie to the first operand", () => {
    const c = new Case();
    const a = c.param([2], { values: [1, 2] });
    const x = c.param([2], { values: [1, 3] });
    for (const fn of ["max", "min"] as const) {
      const g = gradients(c.b, c.b.sum(c.b.binary(fn, a, x)), [a, x]);
      const out = evaluate(c.b.graph, c.feeds, [g.get(a)!, g.get(x)!]);
      expect([...out.get(g.get(a)!)!.data]).toEqual(fn === "max" ? [1, 0] : [1, 1]);
      expect([...out.get(g.get(x)!)!.data]).toEqual(fn === "max" ? [0, 1] : [0, 0]);
    }
  });

  it("where routes the gradient by the condition", () => {
    const c = new Case();
    const cond = c.data([2, 3], [1, 0, 0, 1, 1, 0]);
    check(c, c.b.where(cond, c.param([2, 3]), c.param([3])));
  });

  it("cast f32 → f32 passes the gradient through", () => {
    const c = new Case();
    const x = c.param([4]);
    check(c, c.b.graph.add({ kind: "cast" }, [x], [4], "f32"));
  });

  it("reduce sum and mean over some axes", () => {
    const c = new Case();
    const x = c.param([2, 3, 4]);
    check(c, c.b.add(c.b.sum(x, [0, 2]), c.b.mean(x, [-1, 0])));
    const d = new Case();
    check(d, d.b.mean(d.param([2, 3, 4]), 1, true));
  });

  it("reduce max goes to the argmax, split evenly on ties", () => {
    const c = new Case();
    const x = c.param([2, 3], { values: [0.3, -0.2, 0.9, 0.1, 0.7, 0.4] });
    check(c, c.b.max(x, 1));
    const t = new Case();
    const y = t.param([4], { values: [2, 1, 2, 2] });
    const g = gradients(t.b, t.b.max(y), [y]).get(y)!;
    expect([...evaluate(t.b.graph, t.feeds, [g], { float64: true }).get(g)!.data]).toEqual([
      1 / 3,
      0,
      1 / 3,
      1 / 3,
    ]);
  });

  for (const [transA, transB] of [
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ] as const)
    it(`matmul transA=${transA} transB=${transB}`, () => {
      const c = new Case();
      const a = c.param(transA ? [4, 3] : [3, 4]);
      const x = c.param(transB ? [5, 4] : [4, 5]);
      check(c, c.b.matmul(a, x, { transA, transB }));
    });

  it("matmul with batch broadcasting and 1-D operands", () => {
    const c = new Case();
    check(c, c.b.matmul(c.param([2, 1, 3, 4]), c.param([2, 4, 2])));
    const d = new Case();
    check(d, d.b.matmul(d.param([4]), d.param([2, 4, 3])));
    const e = new Case();
    check(e, e.b.matmul(e.param([3, 4]), e.param([4])));
  });

  it("reshape, permute and expand", () => {
    const c = new Case();
    const x = c.param([2, 3, 4]);
    check(
      c,
      c.b.add(c.b.permute(c.b.reshape(x, [6, 4]), [1, 0]), c.b.expand(c.param([4, 1]), [4, 6])),
    );
  });

  it("slice with positive, negative and strided steps", () => {
    const c = new Case();
    const x = c.param([5, 7]);
    check(c, c.b.slice(x, [1, null], [null, null], [2, 1]));
    const d = new Case();
    check(d, d.b.slice(d.param([5, 7]), [-1, 6], [null, 0], [-2, -3]));
    const e = new Case();
    check(e, e.b.slice(e.param([6]), [-2], [0], [-1]));
  });

  it("pad", () => {
    const c = new Case();
    check(c, c.b.pad(c.param([2, 3]), [1, 2], [4, 6]));
  });

  it("gather with repeated ids scatters the gradient back", () => {
    const c = new Case();
    const ids = c.data([2, 3], [4, 0, 4, 1, 1, 4], "i32");
    check(c, c.b.gather(c.param([5, 2]), ids));
  });

  it("scatterAdd gathers the gradient", () => {
    const c = new Case();
    const ids = c.data([4], [2, 0, 2, 1], "i32");
    check(c, c.b.scatterAdd(ids, c.param([4, 3]), 3));
  });

  it("stops at intrinsics, `stop` nodes and unrelated nodes", () => {
    const c = new Case();
    const w = c.param([4, 3]);
    const unrelated = c.param([2]);
    const b = c.b;
    const r = c.data(
      [4, 3],
      Array.from({ length: 12 }, (_, i) => i - 5),
    );
    const viaSvd = b.sum(b.matmul(b.svd(w, "left", 2), b.svd(w, "right", 2)));
    const viaQuant = b.sum(b.mul(b.quantize(w, 4, 3), b.quantScale(b.mul(w, w), 4, 3)));
    const k = b.constant(2);
    const viaTopk = b.sum(b.topkMask(b.sum(w, 1), k));
    const stopped = b.mul(w, r);
    const loss = b.add(b.add(viaSvd, viaQuant), b.add(viaTopk, b.sum(b.add(b.square(w), stopped))));
    const g = gradients(b, loss, [w, unrelated], { stop: new Set([stopped]) });
    const out = evaluate(b.graph, c.feeds, [g.get(w)!, g.get(unrelated)!], { float64: true });
    expect([...out.get(g.get(w)!)!.data]).toEqual([...c.params[0]!.values].map((v) => 2 * v));
    expect([...out.get(g.get(unrelated)!)!.data]).toEqual([0, 0]);
    expect(() => gradients(b, viaSvd, [w])).not.toThrow();
    expect(() => gradients(b, b.square(w), [w])).toThrow(/scalar/);
  });
});

describe("gradients of composites", () => {
  it("softmax over either axis, without differentiating the subtracted max", () => {
    const c = new Case();
    const x = c.param([3, 4], { lo: -2, hi: 2 });
    const start = c.b.graph.nodes.length;
    const y = c.b.add(c.b.softmax(x, 0), c.b.softmax(x, -1));
    const mid = c.b.graph.nodes.length;
    check(c, y);
    expect(mid - start).toBeGreaterThan(0);
    const backward = after(c.b, mid);
    expect(backward.some((n) => n.op.kind === "binary" && n.op.fn === "eq")).toBe(false);
  });

  it("logSoftmax", () => {
    const c = new Case();
    check(c, c.b.logSoftmax(c.param([3, 4], { lo: -2, hi: 2 }), 1));
  });

  it("crossEntropy", () => {
    const c = new Case();
    const t = c.data([3], [2, 0, 3], "i32");
    check(c, c.b.crossEntropy(c.param([3, 4], { lo: -2, hi: 2 }), t));
  });

  it("layerNorm with weight and bias", () => {
    const c = new Case();
    check(c, c.b.layerNorm(c.param([3, 5], { lo: -2, hi: 2 }), c.param([5]), c.param([5])));
  });
});

describe("gradients of small programs", () => {
  it("a 2-layer MLP with gelu and a mean-squared loss", () => {
    const c = new Case();
    const b = c.b;
    const x = c.data(
      [4, 3],
      Array.from({ length: 12 }, (_, i) => Math.sin(i + 1)),
    );
    const t = c.data(
      [4, 2],
      Array.from({ length: 8 }, (_, i) => Math.cos(i)),
    );
    const w1 = c.param([5, 3]);
    const b1 = c.param([5]);
    const w2 = c.param([2, 5]);
    const b2 = c.param([2]);
    const h = b.gelu(b.add(b.matmul(x, w1, { transB: true }), b1));
    const y = b.add(b.matmul(h, w2, { transB: true }), b2);
    check(c, b.mean(b.square(b.sub(y, t))));
  });

  it("causal multi-head attention with layer norm", () => {
    const c = new Case();
    const b = c.b;
    const [T, H, Dh] = [4, 2, 3];
    const D = H * Dh;
    const x = c.param([T, D], { lo: -2, hi: 2 });
    const [wq, wk, wv] = [0, 1, 2].map(() => c.param([D, D], { lo: -0.7, hi: 0.7 })) as [
      number,
      number,
      number,
    ];
    const lnw = c.param([D], { lo: 0.5, hi: 1.5 });
    const lnb = c.param([D], { lo: -0.3, hi: 0.3 });
    const hN = b.layerNorm(x, lnw, lnb, 1e-5);
    const heads = (w: number) =>
      b.permute(b.reshape(b.matmul(hN, w, { transB: true }), [T, H, Dh]), [1, 0, 2]);
    const [q, k, v] = [heads(wq), heads(wk), heads(wv)];
    const scores = b.mul(b.matmul(q, k, { transB: true }), b.constant(1 / Math.sqrt(Dh)));
    const causal = b.le(b.iota([T, T], 1), b.iota([T, T], 0));
    const masked = b.where(causal, scores, b.constant(-1e9));
    const attn = b.matmul(b.softmax(masked, -1), v); // [H, T, Dh]
    const out = b.reshape(b.permute(attn, [1, 0, 2]), [T, D]);
    check(c, b.add(out, x));
  });

  it("LoRA on a frozen linear: gradients only for A and B, three backward matmuls", () => {
    const c = new Case();
    const b = c.b;
    const [N, In, Out, r] = [3, 4, 5, 2];
    const x = c.data(
      [N, In],
      Array.from({ length: N * In }, (_, i) => Math.sin(2 * i + 1)),
    );
    const t = c.data(
      [N, Out],
      Array.from({ length: N * Out }, (_, i) => Math.cos(3 * i)),
    );
    const w = b.input("param", "w", [Out, In]);
    c.feeds.set(
      w,
      tensor(
        [Out, In],
        Array.from({ length: Out * In }, (_, i) => Math.sin(i) / 2),
      ),
    );
    const A = c.param([r, In]);
    const B = c.param([Out, r]);
    const base = b.matmul(x, w, { transB: true });
    const lora = b.matmul(b.mul(b.constant(0.5), b.matmul(x, A, { transB: true })), B, {
      transB: true,
    });
    const loss = b.mean(b.square(b.sub(b.add(base, lora), t)));
    const start = b.graph.nodes.length;
    check(c, loss);
    const backward = after(b, start);
    expect(backward.filter((n) => n.op.kind === "matmul")).toHaveLength(3);
    for (const n of backward) {
      expect(n.inputs).not.toContain(w);
      expect(n.inputs).not.toContain(base);
    }
    // x enters the backward pass once: dA = (s·Bᵀ-projected dY)ᵀ x
    expect(backward.filter((n) => n.inputs.includes(x)).map((n) => n.op.kind)).toEqual(["matmul"]);
  });
});

describe("equal computations are one node (Builder value numbering)", () => {
  it("the same product, transpose, sum or constant twice is one node; inputs, reductions and draws stay apart", () => {
    const b = new Builder();
    const x = b.input("data", "x", [3, 4]);
    const w = b.input("param", "w", [5, 4]);
    expect(b.matmul(x, b.transpose(w))).toBe(b.matmul(x, b.transpose(w)));
    expect(b.add(x, x)).toBe(b.add(x, x));
    expect(b.constant(0.5, [3, 4])).toBe(b.constant(0.5, [3, 4]));
    // every value its own: −0 is not 0, NaN is NaN
    expect(b.constant(-0)).not.toBe(b.constant(0));
    expect(b.constant(NaN)).toBe(b.constant(NaN));
    expect(b.constant(NaN)).not.toBe(b.constant(Infinity));
    expect(b.input("data", "y", [3, 4])).not.toBe(b.input("data", "y", [3, 4]));
    expect(b.max(x, 1)).not.toBe(b.max(x, 1));
    expect(b.random("normal", [2], 1)).not.toBe(b.random("normal", [2], 1));
    // fresh: the same value as a node of its own
    const zeros = b.constant(0, [3, 4]);
    expect(b.fresh(zeros)).not.toBe(zeros);
    expect(b.fresh(zeros)).not.toBe(b.fresh(zeros));
    expect(b.fresh(b.add(x, x))).not.toBe(b.fresh(b.add(x, x)));
    // another op: the transpose as the matmul's flag
    expect(b.matmul(x, w, { transB: true })).not.toBe(b.matmul(x, b.transpose(w)));
  });

  it("a shared node's gradient sums its uses: d/dw Σ (x·wᵀ + x·wᵀ) = 2 Σ_rows x, as finite differences say", () => {
    const c = new Case();
    const x = c.param([3, 4]);
    const w = c.param([5, 4]);
    const b = c.b;
    const twice = b.add(b.matmul(x, b.transpose(w)), b.matmul(x, b.transpose(w)));
    check(c, twice);
    const g = gradients(b, b.sum(twice), [w]).get(w)!;
    const out = evaluate(b.graph, c.feeds, [g], { float64: true }).get(g)!.data;
    const xs = c.params[0]!.values;
    for (let j = 0; j < 5; j++)
      for (let k = 0; k < 4; k++)
        expect(out[j * 4 + k]).toBeCloseTo(2 * (xs[k]! + xs[4 + k]! + xs[8 + k]!), 12);
  });
});
