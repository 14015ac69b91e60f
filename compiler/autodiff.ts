// Reverse-mode automatic differentiation over the IR. Backward nodes are appended to the same
// graph through the Builder. Only nodes on a path from some `wrt` node to the loss get gradient
// work, so frozen weights cost nothing beyond the chain that passes through them.
//
// No gradient flows through: comparisons, logic, sign, floor, not, iota, random, constants,
// inputs, i32 values, and the intrinsics svd, qr, topkMask, quantize and quantScale (their
// outputs are treated as constants: a stop-gradient, as the methods that use them intend —
// a GaLore projector or a quantized base weight is not trained through). Nodes in `stop` and in
// the builder's `detached` set are treated as constants too.

import type { Builder } from "./builder.js";
import { sameShape, type Node } from "./ir.js";

/** Gradient contributions for each input of `node`, given `g` = dLoss/dNode; undefined = none. */
type Rule = (
  b: Builder,
  node: Node,
  g: number,
  need: (input: number) => boolean,
) => (number | undefined)[];

const c = (b: Builder, v: number) => b.constant(v);
const zerosLike = (b: Builder, x: number) => b.constant(0, b.shape(x));

const unaryRules: Record<
  string,
  (b: Builder, x: number, y: number, g: number) => number | undefined
> = {
  neg: (b, _x, _y, g) => b.neg(g),
  exp: (b, _x, y, g) => b.mul(g, y),
  log: (b, x, _y, g) => b.div(g, x),
  sqrt: (b, _x, y, g) => b.div(b.mul(g, c(b, 0.5)), y),
  rsqrt: (b, _x, y, g) => b.mul(g, b.mul(c(b, -0.5), b.mul(y, b.square(y)))), // -½·x^{-3/2}
  abs: (b, x, _y, g) => b.mul(g, b.unary("sign", x)), // abs'(0) = 0
  tanh: (b, _x, y, g) => b.mul(g, b.sub(c(b, 1), b.square(y))),
  sigmoid: (b, _x, y, g) => b.mul(g, b.mul(y, b.sub(c(b, 1), y))),
  relu: (b, x, _y, g) => b.where(b.gt(x, c(b, 0)), g, c(b, 0)), // relu'(0) = 0
  gelu: (b, x, _y, g) => {
    // d/dx ½x(1 + erf(x/√2)) = ½(1 + erf(x/√2)) + x·exp(-x²/2)/√(2π)
    const cdf = b.mul(c(b, 0.5), b.add(c(b, 1), b.unary("erf", b.mul(x, c(b, Math.SQRT1_2)))));
    const pdf = b.mul(b.exp(b.mul(b.square(x), c(b, -0.5))), c(b, 1 / Math.sqrt(2 * Math.PI)));
    return b.mul(g, b.add(cdf, b.mul(x, pdf)));
  },
  silu: (b, x, _y, g) => {
    const s = b.sigmoid(x); // σ(x)·(1 + x·(1 - σ(x)))
    return b.mul(g, b.mul(s, b.add(c(b, 1), b.mul(x, b.sub(c(b, 1), s)))));
  },
  erf: (b, x, _y, g) => b.mul(g, b.mul(b.exp(b.neg(b.square(x))), c(b, 2 / Math.sqrt(Math.PI)))),
  sin: (b, x, _y, g) => b.mul(g, b.unary("cos", x)),
  cos: (b, x, _y, g) => b.neg(b.mul(g, b.unary("sin", x))),
  recip: (b, _x, y, g) => b.neg(b.mul(g, b.square(y))),
  square: (b, x, _y, g) => b.mul(g, b.mul(x, c(b, 2))),
};

/** Per operand, a thunk that builds its gradient: only the needed ones are called. */
type BinaryRule = (b: Builder, a: number, x: number, y: number, g: number) => (() => number)[];

/** Gradient to the first operand where `first()` ≠ 0, else to the second (one mask for both). */
function route(b: Builder, first: () => number, g: number): (() => number)[] {
  let mask: number | undefined;
  const m = () => (mask ??= first());
  return [() => b.where(m(), g, c(b, 0)), () => b.where(m(), c(b, 0), g)];
}

const binaryRules: Record<string, BinaryRule> = {
  add: (_b, _a, _x, _y, g) => [() => g, () => g],
  sub: (b, _a, _x, _y, g) => [() => g, () => b.neg(g)],
  mul: (b, a, x, _y, g) => [() => b.mul(g, x), () => b.mul(g, a)],
  div: (b, _a, x, y, g) => [() => b.div(g, x), () => b.neg(b.div(b.mul(g, y), x))],
  pow: (b, a, x, y, g) => [
    () => b.mul(g, b.mul(x, b.pow(a, b.sub(x, c(b, 1))))),
    // a^x·log a, defined as 0 where a ≤ 0
    () => b.where(b.gt(a, c(b, 0)), b.mul(g, b.mul(y, b.log(a))), c(b, 0)),
  ],
  max: (b, a, x, _y, g) => route(b, () => b.ge(a, x), g), // ties go to the first operand
  min: (b, a, x, _y, g) => route(b, () => b.le(a, x), g),
  // a mod x = a - x·⌊a/x⌋
  mod: (b, a, x, _y, g) => [() => g, () => b.neg(b.mul(g, b.unary("floor", b.div(a, x))))],
};

/** dLoss/dx for y = x[starts + i·steps] (op-level starts/steps; counts from y's shape). */
function sliceGrad(b: Builder, node: Node, g: number, xShape: readonly number[]): number {
  if (node.op.kind !== "slice") throw new Error("unreachable");
  const { starts, steps } = node.op;
  const counts = node.shape;
  if (counts.some((d) => d === 0)) return b.constant(0, xShape);
  // Walk every axis forwards: a negative step is a flipped positive one.
  const flip = steps.map((s) => s < 0);
  let v = b.slice(
    g,
    counts.map((n, i) => (flip[i] ? n - 1 : 0)),
    [],
    steps.map((s) => (s < 0 ? -1 : 1)),
  );
  const first = starts.map((s, i) => (flip[i] ? s + (counts[i]! - 1) * steps[i]! : s));
  const stride = steps.map(Math.abs);
  // Dilate: [.., n, ..] → [.., n, stride, ..] (zeros after each element) → [.., n·stride, ..].
  if (stride.some((s) => s > 1)) {
    const split = counts.flatMap((n, i) => (stride[i]! > 1 ? [n, 1] : [n]));
    const spread = counts.flatMap((n, i) => (stride[i]! > 1 ? [n, stride[i]!] : [n]));
    v = b.pad(b.reshape(v, split), new Array<number>(split.length).fill(0), spread);
    v = b.reshape(
      v,
      counts.map((n, i) => n * stride[i]!),
    );
    v = b.slice(
      v,
      [],
      counts.map((n, i) => (n - 1) * stride[i]! + 1),
    );
  }
  return b.pad(v, first, xShape);
}

const rules: Partial<Record<Node["op"]["kind"], Rule>> = {
  unary: (b, node, g) => {
    const fn = node.op.kind === "unary" ? node.op.fn : "";
    const r = unaryRules[fn];
    return [r ? r(b, node.inputs[0]!, node.id, g) : undefined];
  },
  binary: (b, node, g, need) => {
    const r = node.op.kind === "binary" ? binaryRules[node.op.fn] : undefined;
    const [a, x] = node.inputs as [number, number];
    return r ? r(b, a, x, node.id, g).map((f, k) => (need(k) ? f() : undefined)) : [];
  },
  where: (b, node, g, need) => {
    const [ga, gb] = route(b, () => node.inputs[0]!, g) as [() => number, () => number];
    return [undefined, need(1) ? ga() : undefined, need(2) ? gb() : undefined];
  },
  cast: (b, node, g) => [
    b.dtype(node.inputs[0]!) === "f32" && node.dtype === "f32" ? g : undefined,
  ],
  reduce: (b, node, g) => {
    const x = node.inputs[0]!;
    if (node.op.kind !== "reduce") return [];
    if (node.op.fn === "sum") return [b.expand(g, b.shape(x))];
    // amax: split evenly among the positions equal to the max
    const mask = b.cast(b.eq(x, b.expand(node.id, b.shape(x))), "f32");
    const count = b.sum(mask, node.op.axes, true);
    return [b.mul(mask, b.expand(b.div(g, count), b.shape(x)))];
  },
  matmul: (b, node, g, need) => {
    if (node.op.kind !== "matmul") return [];
    const { transA, transB } = node.op;
    const [a, x] = node.inputs as [number, number];
    // C = op(A)·op(B): d op(A) = G·op(B)ᵀ, d op(B) = op(A)ᵀ·G
    const ga = !need(0)
      ? undefined
      : transA
        ? b.matmul(x, g, { transA: transB, transB: true })
        : b.matmul(g, x, { transB: !transB });
    const gx = !need(1)
      ? undefined
      : transB
        ? b.matmul(g, a, { transA: true, transB: transA })
        : b.matmul(a, g, { transA: !transA });
    return [ga, gx];
  },
  reshape: (b, node, g) => [b.reshape(g, b.shape(node.inputs[0]!))],
  permute: (b, node, g) => {
    if (node.op.kind !== "permute") return [];
    const inverse: number[] = [];
    node.op.perm.forEach((a, i) => (inverse[a] = i));
    return [b.permute(g, inverse)];
  },
  expand: (b, node, g) => {
    const s = b.shape(node.inputs[0]!);
    const axes = s.flatMap((d, i) => (d === 1 && node.shape[i] !== 1 ? [i] : []));
    return [b.sum(g, axes, true)];
  },
  slice: (b, node, g) => [sliceGrad(b, node, g, b.shape(node.inputs[0]!))],
  pad: (b, node, g) => {
    if (node.op.kind !== "pad") return [];
    const s = b.shape(node.inputs[0]!);
    const before = node.op.before;
    return [
      b.slice(
        g,
        before,
        s.map((d, i) => before[i]! + d),
      ),
    ];
  },
  gather: (b, node, g) => {
    const [table, ids] = node.inputs as [number, number];
    return [b.scatterAdd(ids, g, b.shape(table)[0]!), undefined];
  },
  scatterAdd: (b, node, g) => [undefined, b.gather(g, node.inputs[0]!)],
};

/**
 * Appends the backward pass for scalar `loss` to `b.graph` and returns, for each node of
 * `wrt`, the id of its gradient node (a zero constant when it does not influence the loss).
 */
export function gradients(
  b: Builder,
  loss: number,
  wrt: readonly number[],
  opts: { stop?: ReadonlySet<number> } = {},
): Map<number, number> {
  const graph = b.graph;
  const lossNode = graph.node(loss);
  if (lossNode.shape.length !== 0)
    throw new Error(
      `autodiff: the loss must be a scalar, got shape [${lossNode.shape.join(", ")}]`,
    );
  const constant = (id: number) =>
    opts.stop?.has(id) || b.detached.has(id) || graph.node(id).dtype !== "f32";

  // Nodes that depend on some wrt node (through non-constant nodes) …
  const fromWrt = new Set<number>();
  const wrtSet = new Set(wrt);
  for (let id = Math.min(...wrt, loss); id <= loss; id++) {
    if (constant(id)) continue;
    const node = graph.node(id);
    if (wrtSet.has(id) || node.inputs.some((i) => fromWrt.has(i))) fromWrt.add(id);
  }
  // … and that the loss depends on: only these get gradient work.
  const active = new Set<number>();
  const stack = fromWrt.has(loss) ? [loss] : [];
  while (stack.length) {
    const id = stack.pop()!;
    if (active.has(id) || !fromWrt.has(id)) continue;
    active.add(id);
    stack.push(...graph.node(id).inputs);
  }

  const pending = new Map<number, number[]>();
  const total = new Map<number, number>();
  const savedSource = b.source;
  try {
    if (active.has(loss)) pending.set(loss, [b.constant(1)]);
    for (let id = loss; id >= 0; id--) {
      const parts = pending.get(id);
      if (!parts || !active.has(id)) continue;
      pending.delete(id);
      const node = graph.node(id);
      b.source = node.source;
      const g = parts.reduce((acc, p) => b.add(acc, p));
      total.set(id, g);
      const rule = rules[node.op.kind];
      if (!rule) continue;
      const need = (k: number) => active.has(node.inputs[k]!);
      rule(b, node, g, need).forEach((gi, k) => {
        const input = node.inputs[k]!;
        if (gi === undefined || !need(k)) return;
        if (!sameShape(b.shape(gi), b.shape(input)))
          throw new Error(
            `autodiff: ${node.op.kind} gradient shape [${b.shape(gi)}] ≠ [${b.shape(input)}]`,
          );
        pending.set(input, [...(pending.get(input) ?? []), gi]);
      });
    }
  } finally {
    b.source = savedSource;
  }
  return new Map(wrt.map((w) => [w, total.get(w) ?? zerosLike(b, w)]));
}
