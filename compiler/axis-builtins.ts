// Built-ins that work along one axis — `concat`, `cumsum`, `argmax` — and the casts `i32`/`f32`,
// each lowered to existing primitive ops (pad, matmul, reduce, iota, cast), so the interpreter,
// the WGSL kernels and autodiff need no new op for them.
import { error } from "../language/diagnostics.js";
import type { Builder } from "./builder.js";
import type { DType } from "./ir.js";
import { shapeText } from "./lower.js";
import type { Call, Rule } from "./tensor-builtins.js";
import { describeValue, num, type Value } from "./values.js";

/** The longest axis `cumsum` takes: its triangle of ones has n² entries (256 MiB of f32 here). */
export const MAX_CUMSUM = 8192;

/** The one `axis:` (or 2nd positional) argument as a non-negative axis of a rank-`rank` tensor. */
export function oneAxis(c: Call, rank: number, fallback: number | undefined, position = 1): number {
  const v = c.args.get(position, "axis");
  if (v === undefined && fallback !== undefined) return fallback;
  if (v === undefined) return c.L.r.report(error("E0205", `\`${c.name}\` needs \`axis\``, c.at));
  if (v.kind !== "number" || !Number.isInteger(v.value) || v.value < -rank || v.value >= rank)
    return c.L.r.report(
      error(
        "E0402",
        `\`${c.name}\`'s axis must be one integer in ${-rank}..${rank - 1}, not ${v.kind === "number" ? v.value : describeValue(v)}`,
        c.args.argAt(position, "axis"),
      ),
    );
  return v.value < 0 ? v.value + rank : v.value;
}

/** Moves `axis` of `x` to the end (a permutation, or nothing when it is already last). */
function axisLast(b: Builder, x: number, axis: number): { node: number; back: number[] } {
  const rank = b.shape(x).length;
  const perm = [...Array(rank).keys()].filter((a) => a !== axis).concat(axis);
  const back = perm.map((_, i) => perm.indexOf(i));
  return { node: axis === rank - 1 ? x : b.permute(x, perm), back };
}

/**
 * `concat(xs, axis: 0)`: the tensors of a list or tuple joined along `axis`; every other dim must
 * agree. Lowered as the sum of each piece zero-padded to the whole (its gradient is a slice).
 */
export function concat(c: Call): Value {
  const { L, b, at, args, tensor } = c;
  const list = args.need(0);
  if (list.kind !== "list" && list.kind !== "tuple")
    return L.r.report(
      error(
        "E0402",
        `\`concat\` needs a list of tensors, like \`[a, b]\`, not ${describeValue(list)}`,
        args.argAt(0),
        {
          help: "write the pieces in brackets: `concat([a, b], axis: 0)`",
        },
      ),
    );
  if (list.items.length === 0)
    return L.r.report(error("E0402", "`concat` of an empty list", args.argAt(0)));
  const pieces = list.items.map((v: Value) => {
    if (v.kind === "tensor") return v;
    if (v.kind === "number") return L.tensor(b.constant(v.value, [1]));
    return L.r.report(
      error("E0402", `\`concat\` joins tensors, not ${describeValue(v)}`, args.argAt(0)),
    );
  });
  const rank = pieces[0]!.shape.length;
  if (rank === 0)
    L.fail(args.argAt(0), "`concat` joins tensors of at least one dim, not scalars", {
      help: "make each a vector first: `reshape(x, [1])`",
    });
  const axis = oneAxis(c, rank, 0);
  const first = pieces[0]!.shape;
  for (const p of pieces)
    if (p.shape.length !== rank || p.shape.some((d, i) => i !== axis && d !== first[i]))
      L.fail(
        at,
        `\`concat\` along axis ${axis} of ${pieces.map((q) => shapeText(q.shape, q.dtype)).join(", ")}: the other dims differ`,
        { help: "every piece needs the same dims except along `axis`" },
      );
  const dtype: DType = pieces.every((p) => p.dtype === "i32") ? "i32" : "f32";
  const total = pieces.reduce((s, p) => s + p.shape[axis]!, 0);
  const shape = first.map((d, i) => (i === axis ? total : d));
  let offset = 0;
  let sum: number | undefined;
  for (const p of pieces) {
    const before = shape.map((_, i) => (i === axis ? offset : 0));
    const padded = b.pad(b.cast(p.node, dtype), before, shape);
    sum = sum === undefined ? padded : b.add(sum, padded);
    offset += p.shape[axis]!;
  }
  return tensor(sum!);
}

/**
 * `cumsum(x, axis: -1)`: running sums along `axis` (inclusive, like torch.cumsum), as f32. Lowered
 * as a product with an upper-triangular matrix of ones, n² work along an axis of n: meant for the
 * short axes of a method (ranks, column counts), and differentiable like any matmul.
 */
export function cumsum(c: Call): Value {
  const { L, b, args, tensor } = c;
  const x = args.tensor(0);
  if (x.shape.length === 0) L.fail(args.argAt(0), "`cumsum` of a scalar: it needs an axis");
  const axis = oneAxis(c, x.shape.length, x.shape.length - 1);
  const n = x.shape[axis]!;
  if (n > MAX_CUMSUM)
    L.fail(args.argAt(0), `\`cumsum\` along an axis of ${n}: at most ${MAX_CUMSUM}`, {
      help: `it is a product with an ${n} × ${n} triangle of ones; sum blocks of the axis separately`,
    });
  const { node, back } = axisLast(b, b.cast(x.node, "f32"), axis);
  // ones[k, i] = 1 where k <= i: column i sums x[0..i]
  const ones = b.cast(b.le(b.iota([n, n], 0, "i32"), b.iota([n, n], 1, "i32")), "f32");
  const sums = b.matmul(node, ones);
  return tensor(axis === x.shape.length - 1 ? sums : b.permute(sums, back));
}

/**
 * `argmax(x, axis:)`: the index (i32) of the largest entry along `axis`, that axis removed; the
 * first one on ties. The interpreter also picks the first NaN (as torch.argmax); WGSL may assume
 * there are no NaNs, so a NaN row is unspecified there. Without `axis`, the
 * index into the flattened tensor. No gradient flows through it.
 */
export function argmax(c: Call): Value {
  const { b, args, tensor } = c;
  let x = b.cast(args.tensor(0).node, "f32");
  let shape = b.shape(x);
  let axis: number;
  if (args.get(1, "axis") === undefined) {
    x = b.reshape(x, [shape.reduce((p, d) => p * d, 1)]);
    shape = b.shape(x);
    axis = 0;
  } else axis = oneAxis(c, shape.length, undefined);
  const n = shape[axis]!;
  const nan = b.ne(x, x);
  // NaN wins, as in torch: the largest value is NaN where the row holds one
  const top = b.max(b.where(nan, b.constant(Infinity), x), [axis], true);
  const rowHasNan = b.max(nan, [axis], true);
  const hit = b.where(rowHasNan, nan, b.eq(x, b.broadcastTo(top, shape)));
  const index = b.cast(b.iota(shape, axis, "i32"), "f32");
  const candidates = b.where(hit, index, b.constant(n));
  const first = b.neg(b.max(b.neg(candidates), [axis])); // the smallest candidate index
  return tensor(b.cast(first, "i32"));
}

/** `i32(x)` (toward zero, as WGSL's and C's conversion) and `f32(x)`; numbers stay numbers. */
export function cast(dtype: DType): Rule {
  return ({ args, tensor, b }) => {
    const v = args.need(0);
    if (v.kind === "number")
      return dtype === "i32" ? num(Math.trunc(v.value), true) : num(v.value, false);
    if (v.kind === "bool") return num(v.value ? 1 : 0, dtype === "i32");
    return tensor(b.cast(args.tensor(0).node, dtype));
  };
}
