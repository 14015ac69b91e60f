// Builds IR graphs: one method per primitive, each computing its result shape, plus the NumPy
// conveniences (broadcasting, negative axes, Python slices, matmul promotion) lowered to explicit
// primitives, and a few composites (softmax, cross-entropy, layer norm) made only of primitives.
// The checker reports user mistakes before lowering with messages in the user's terms; a shape
// error that still reaches the builder is a `ShapeError`, which the lowerer reports at the
// expression being lowered (never an internal error).

import {
  Graph,
  numel,
  opKey,
  sameShape,
  type BinaryFn,
  type DType,
  type InputRole,
  type Op,
  type Shape,
  type SourceRef,
  type UnaryFn,
  type ValueRange,
} from "./ir.js";

/** One axis or several; negative axes count from the end. */
export type Axes = number | readonly number[];
/** A Python slice bound per axis; null/undefined is the default for that end. */
export type Bound = number | null | undefined;

const fmt = (s: Shape) => `[${s.join(", ")}]`;

/** A shape or dtype the builder cannot represent; `Lowerer.expr` reports it at the expression. */
export class ShapeError extends Error {}

/** The most elements one tensor may have: buffer sizes and indices are 32-bit on every device. */
export const maxElements = 2 ** 31 - 1;

function fail(message: string): never {
  throw new ShapeError(message);
}

/** The NumPy broadcast of several shapes. */
export function broadcastShapes(...shapes: Shape[]): number[] {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    let d = 1;
    for (const s of shapes) {
      const k = s.length - rank + i;
      const sd = k >= 0 ? s[k]! : 1;
      if (sd === 1) continue;
      if (d !== 1 && d !== sd) fail(`shapes ${shapes.map(fmt).join(" and ")} do not broadcast`);
      d = sd;
    }
    out.push(d);
  }
  return out;
}

/** `axis` in [-rank, rank) → [0, rank). */
export function normAxis(axis: number, rank: number): number {
  if (!Number.isInteger(axis) || axis < -rank || axis >= rank)
    fail(`axis ${axis} out of range for rank ${rank}`);
  return axis < 0 ? axis + rank : axis;
}

function normAxes(axes: Axes | undefined, rank: number): number[] {
  if (axes === undefined) return [...Array(rank).keys()];
  const list = typeof axes === "number" ? [axes] : axes;
  const out = [...new Set(list.map((a) => normAxis(a, rank)))].sort((a, b) => a - b);
  if (out.length !== list.length) fail(`repeated axis in [${list.join(", ")}]`);
  return out;
}

/**
 * Ops made once per distinct op and inputs (value numbering): the same computation written twice
 * is one node (DoRA's `x @ W^T` beside the base layer's own, a transpose taken in the forward and
 * again in the backward, an optimizer's constants and what it computes from them alone, made
 * again for each parameter). Not inputs (each is its own value), reductions (a softmax's max is
 * marked `detached` after it is made), random draws, gathers and the special ops. An entry's
 * outputs that came out as one node get nodes of their own (`fresh`).
 */
const SHARED_KINDS = new Set([
  "unary",
  "binary",
  "where",
  "cast",
  "reshape",
  "permute",
  "expand",
  "slice",
  "pad",
  "matmul",
  "iota",
  "const",
]);

export class Builder {
  /** Attached to every node added while set. */
  source?: SourceRef;
  /**
   * Nodes whose influence on every value built from them cancels exactly (the max subtracted
   * inside softmax/logSoftmax): autodiff treats them as constants and spends no work on them.
   */
  readonly detached = new Set<number>();
  /** The nodes of SHARED_KINDS made so far, by op, inputs, shape, dtype and name. */
  private readonly shared = new Map<string, number>();

  constructor(readonly graph: Graph = new Graph()) {}

  shape(x: number): Shape {
    return this.graph.shape(x);
  }

  dtype(x: number): DType {
    return this.graph.node(x).dtype;
  }

  private emit(
    op: Op,
    inputs: number[],
    shape: Shape,
    dtype: DType = "f32",
    name?: string,
  ): number {
    // Empty tensors (an empty Python slice) are representable; the lowerer refuses them in
    // user programs, where no device kernel could run them.
    if (shape.some((d) => !Number.isInteger(d) || d < 0))
      fail(`a tensor of shape ${fmt(shape)}: every dim must be a non-negative integer`);
    if (numel(shape) > maxElements)
      fail(`a tensor of shape ${fmt(shape)} has more than 2^31 - 1 elements`);
    if (!SHARED_KINDS.has(op.kind))
      return this.graph.add(op, inputs, shape, dtype, { name, source: this.source });
    const key = `${opKey(op)} ${inputs.join(",")} ${shape.join(",")} ${dtype} ${name ?? ""}`;
    let id = this.shared.get(key);
    if (id === undefined) {
      id = this.graph.add(op, inputs, shape, dtype, { name, source: this.source });
      this.shared.set(key, id);
    }
    return id;
  }

  // ------------------------------------------------------------------------ leaves

  /** `range`: the bounds of an i32 input's values, where they are known (a data field's). */
  input(
    role: InputRole,
    name: string,
    shape: Shape,
    dtype: DType = "f32",
    range?: ValueRange,
  ): number {
    const op: Op = { kind: "input", role, name };
    return this.graph.add(op, [], shape, dtype, {
      name,
      source: this.source,
      ...(range ? { range } : {}),
    });
  }

  constant(value: number, shape: Shape = [], dtype: DType = "f32"): number {
    return this.emit({ kind: "const", value }, [], shape, dtype);
  }

  iota(shape: Shape, axis: number, dtype: DType = "i32"): number {
    return this.emit({ kind: "iota", axis: normAxis(axis, shape.length) }, [], shape, dtype);
  }

  /** `offset`, a scalar node (the step), makes the numbers differ from one step to the next. */
  random(dist: "uniform" | "normal", shape: Shape, seed: number, offset?: number): number {
    return this.emit({ kind: "random", dist, seed }, offset === undefined ? [] : [offset], shape);
  }

  // ------------------------------------------------------------------------ elementwise

  /**
   * A stored output's value as a node of its own: `node` itself unless it is another stored
   * tensor's input (`A = pool`, a swap), which becomes an exact copy, -(-x). As the other input
   * it would share that input's buffer, and the next run writing that input would overwrite it.
   */
  ownValue(output: string, node: number): number {
    const op = this.graph.node(node).op;
    if (op.kind !== "input" || op.name === output) return node;
    return this.fresh(node);
  }

  /**
   * A node of its own with `x`'s value, never shared by value numbering: a constant made anew, or
   * an exact copy -(-x). Two outputs of an entry that computed the same value (two moments both
   * initialized to zeros) need two nodes: each is written into its own tensor's buffer.
   */
  fresh(x: number): number {
    const n = this.graph.node(x);
    const extra = { source: this.source };
    if (n.op.kind === "const") return this.graph.add(n.op, [], n.shape, n.dtype, extra);
    const neg: Op = { kind: "unary", fn: "neg" };
    return this.graph.add(neg, [this.unary("neg", x)], n.shape, n.dtype, extra);
  }

  unary(fn: UnaryFn, x: number): number {
    return this.emit({ kind: "unary", fn }, [x], this.shape(x), this.dtype(x));
  }

  /** Elementwise with NumPy broadcasting; comparisons and logic give 1/0 in the operands' dtype. */
  binary(fn: BinaryFn, a: number, b: number): number {
    if (this.dtype(a) !== this.dtype(b))
      fail(`${fn} of ${this.dtype(a)} and ${this.dtype(b)}: cast one operand first`);
    const shape = broadcastShapes(this.shape(a), this.shape(b));
    const ins = [this.broadcastTo(a, shape), this.broadcastTo(b, shape)];
    return this.emit({ kind: "binary", fn }, ins, shape, this.dtype(a));
  }

  /** a where cond ≠ 0, else b; all three broadcast. */
  where(cond: number, a: number, b: number): number {
    if (this.dtype(a) !== this.dtype(b)) fail(`where of ${this.dtype(a)} and ${this.dtype(b)}`);
    const shape = broadcastShapes(this.shape(cond), this.shape(a), this.shape(b));
    const ins = [cond, a, b].map((x) => this.broadcastTo(x, shape));
    return this.emit({ kind: "where" }, ins, shape, this.dtype(a));
  }

  cast(x: number, dtype: DType): number {
    return this.dtype(x) === dtype ? x : this.emit({ kind: "cast" }, [x], this.shape(x), dtype);
  }

  add(a: number, b: number): number {
    return this.binary("add", a, b);
  }
  sub(a: number, b: number): number {
    return this.binary("sub", a, b);
  }
  mul(a: number, b: number): number {
    return this.binary("mul", a, b);
  }
  div(a: number, b: number): number {
    return this.binary("div", a, b);
  }
  pow(a: number, b: number): number {
    return this.binary("pow", a, b);
  }
  maximum(a: number, b: number): number {
    return this.binary("max", a, b);
  }
  minimum(a: number, b: number): number {
    return this.binary("min", a, b);
  }
  lt(a: number, b: number): number {
    return this.binary("lt", a, b);
  }
  le(a: number, b: number): number {
    return this.binary("le", a, b);
  }
  gt(a: number, b: number): number {
    return this.binary("gt", a, b);
  }
  ge(a: number, b: number): number {
    return this.binary("ge", a, b);
  }
  eq(a: number, b: number): number {
    return this.binary("eq", a, b);
  }
  ne(a: number, b: number): number {
    return this.binary("ne", a, b);
  }

  neg(x: number): number {
    return this.unary("neg", x);
  }
  exp(x: number): number {
    return this.unary("exp", x);
  }
  log(x: number): number {
    return this.unary("log", x);
  }
  sqrt(x: number): number {
    return this.unary("sqrt", x);
  }
  rsqrt(x: number): number {
    return this.unary("rsqrt", x);
  }
  abs(x: number): number {
    return this.unary("abs", x);
  }
  tanh(x: number): number {
    return this.unary("tanh", x);
  }
  sigmoid(x: number): number {
    return this.unary("sigmoid", x);
  }
  relu(x: number): number {
    return this.unary("relu", x);
  }
  gelu(x: number): number {
    return this.unary("gelu", x);
  }
  silu(x: number): number {
    return this.unary("silu", x);
  }
  square(x: number): number {
    return this.unary("square", x);
  }

  // ------------------------------------------------------------------------ reductions

  private reduce(fn: "sum" | "max", x: number, axes: Axes | undefined, keepDims: boolean): number {
    const s = this.shape(x);
    const ax = normAxes(axes, s.length);
    if (ax.length === 0) return x;
    const kept = s.map((d, i) => (ax.includes(i) ? 1 : d));
    const r = this.emit({ kind: "reduce", fn, axes: ax }, [x], kept, this.dtype(x));
    return keepDims
      ? r
      : this.reshape(
          r,
          s.filter((_, i) => !ax.includes(i)),
        );
  }

  /** Sum over `axes` (all axes when omitted). */
  sum(x: number, axes?: Axes, keepDims = false): number {
    return this.reduce("sum", x, axes, keepDims);
  }

  max(x: number, axes?: Axes, keepDims = false): number {
    return this.reduce("max", x, axes, keepDims);
  }

  mean(x: number, axes?: Axes, keepDims = false): number {
    const s = this.shape(x);
    const count = normAxes(axes, s.length).reduce((n, a) => n * s[a]!, 1);
    return this.div(this.sum(x, axes, keepDims), this.constant(count, [], this.dtype(x)));
  }

  // ------------------------------------------------------------------------ matmul

  /**
   * NumPy matmul: a 1-D operand is promoted to a matrix and the dim removed again; batch dims
   * broadcast (both operands are expanded to the common batch dims). `transA`/`transB` read a
   * (≥ 2-D) operand with its last two axes swapped, as the IR op does.
   */
  matmul(a: number, b: number, opts: { transA?: boolean; transB?: boolean } = {}): number {
    const transA = opts.transA ?? false;
    const transB = opts.transB ?? false;
    let sa = this.shape(a);
    let sb = this.shape(b);
    if (sa.length === 0 || sb.length === 0) fail(`matmul of a scalar: ${fmt(sa)} @ ${fmt(sb)}`);
    if ((transA && sa.length < 2) || (transB && sb.length < 2))
      fail(`matmul transpose of a vector: ${fmt(sa)} @ ${fmt(sb)}`);
    const aVec = sa.length === 1;
    const bVec = sb.length === 1;
    if (aVec) a = this.reshape(a, (sa = [1, sa[0]!]));
    if (bVec) b = this.reshape(b, (sb = [sb[0]!, 1]));
    const [ra, ca] = sa.slice(-2) as [number, number];
    const [rb, cb] = sb.slice(-2) as [number, number];
    const [m, k] = transA ? [ca, ra] : [ra, ca];
    const [k2, n] = transB ? [cb, rb] : [rb, cb];
    if (k !== k2) fail(`matmul inner dims differ: ${fmt(sa)} @ ${fmt(sb)}`);
    if (this.dtype(a) !== this.dtype(b)) fail(`matmul of ${this.dtype(a)} and ${this.dtype(b)}`);
    const batch = broadcastShapes(sa.slice(0, -2), sb.slice(0, -2));
    a = this.broadcastTo(a, [...batch, ra, ca]);
    b = this.broadcastTo(b, [...batch, rb, cb]);
    const out = this.emit(
      { kind: "matmul", transA, transB },
      [a, b],
      [...batch, m, n],
      this.dtype(a),
    );
    if (!aVec && !bVec) return out;
    return this.reshape(out, [...batch, ...(aVec ? [] : [m]), ...(bVec ? [] : [n])]);
  }

  // ------------------------------------------------------------------------ movement

  /** Swaps the last two axes. */
  transpose(x: number): number {
    const r = this.shape(x).length;
    if (r < 2) fail(`transpose of rank ${r}`);
    return this.permute(x, [...Array(r - 2).keys(), r - 1, r - 2]);
  }

  permute(x: number, perm: readonly number[]): number {
    const s = this.shape(x);
    const p = perm.map((a) => normAxis(a, s.length));
    if (p.length !== s.length || new Set(p).size !== p.length)
      fail(`[${perm.join(", ")}] is not a permutation of rank ${s.length}`);
    if (p.every((a, i) => a === i)) return x;
    return this.emit(
      { kind: "permute", perm: p },
      [x],
      p.map((a) => s[a]!),
      this.dtype(x),
    );
  }

  /** One dim may be -1 (inferred). */
  reshape(x: number, shape: readonly number[]): number {
    const s = this.shape(x);
    const known = shape.reduce((n, d) => (d === -1 ? n : n * d), 1);
    const holes = shape.filter((d) => d === -1).length;
    const out =
      holes === 1 && known > 0 && numel(s) % known === 0
        ? shape.map((d) => (d === -1 ? numel(s) / known : d))
        : [...shape];
    if (holes > 1 || out.some((d) => !Number.isInteger(d) || d < 0) || numel(out) !== numel(s))
      fail(`cannot reshape ${fmt(s)} to ${fmt(shape)}`);
    if (sameShape(s, out)) return x;
    return this.emit({ kind: "reshape" }, [x], out, this.dtype(x));
  }

  /** Same rank; size-1 dims grow to `shape`. */
  expand(x: number, shape: Shape): number {
    const s = this.shape(x);
    if (s.length !== shape.length || s.some((d, i) => d !== 1 && d !== shape[i]))
      fail(`cannot expand ${fmt(s)} to ${fmt(shape)}`);
    if (sameShape(s, shape)) return x;
    return this.emit({ kind: "expand" }, [x], shape, this.dtype(x));
  }

  /** NumPy broadcast: leading 1-dims by reshape, then expand; a constant is re-emitted. */
  broadcastTo(x: number, shape: Shape): number {
    const s = this.shape(x);
    if (sameShape(s, shape)) return x;
    const lead = shape.length - s.length;
    if (lead < 0 || s.some((d, i) => d !== 1 && d !== shape[lead + i]))
      fail(`cannot broadcast ${fmt(s)} to ${fmt(shape)}`);
    const node = this.graph.node(x);
    if (node.op.kind === "const") return this.constant(node.op.value, shape, node.dtype);
    return this.expand(this.reshape(x, [...Array<number>(lead).fill(1), ...s]), shape);
  }

  /**
   * Python slicing per axis (`x[start:stop:step]`); missing trailing axes are taken whole.
   * Negative indices count from the end; a negative step walks backwards.
   */
  slice(
    x: number,
    starts: readonly Bound[],
    stops: readonly Bound[] = [],
    steps: readonly Bound[] = [],
  ): number {
    const s = this.shape(x);
    if (starts.length > s.length || stops.length > s.length || steps.length > s.length)
      fail(`slice of rank ${s.length} with more bounds than axes`);
    const opStarts: number[] = [];
    const opSteps: number[] = [];
    const counts: number[] = [];
    s.forEach((n, i) => {
      const step = steps[i] ?? 1;
      if (!Number.isInteger(step) || step === 0) fail(`slice step ${step}`);
      const clamp = (v: Bound, dflt: number) => {
        if (v === null || v === undefined) return dflt;
        if (v < 0) v += n;
        if (v < 0) return step < 0 ? -1 : 0;
        if (v >= n) return step < 0 ? n - 1 : n;
        return v;
      };
      const start = clamp(starts[i], step < 0 ? n - 1 : 0);
      const stop = clamp(stops[i], step < 0 ? -1 : n);
      const count =
        step > 0
          ? start < stop
            ? Math.floor((stop - start - 1) / step) + 1
            : 0
          : stop < start
            ? Math.floor((start - stop - 1) / -step) + 1
            : 0;
      opStarts.push(count > 0 ? start : 0);
      opSteps.push(step);
      counts.push(count);
    });
    if (opStarts.every((v) => v === 0) && opSteps.every((v) => v === 1) && sameShape(counts, s))
      return x;
    return this.emit(
      { kind: "slice", starts: opStarts, steps: opSteps },
      [x],
      counts,
      this.dtype(x),
    );
  }

  /** Zero padding: `before[i]` zeros before axis i's data, filled to `shape[i]` after it. */
  pad(x: number, before: readonly number[], shape: Shape): number {
    const s = this.shape(x);
    if (before.length !== s.length || shape.length !== s.length)
      fail(`pad of rank ${s.length} with before [${before.join(", ")}] to ${fmt(shape)}`);
    if (s.some((d, i) => !(before[i]! >= 0) || before[i]! + d > shape[i]!))
      fail(`cannot pad ${fmt(s)} by [${before.join(", ")}] to ${fmt(shape)}`);
    if (sameShape(s, shape)) return x;
    return this.emit({ kind: "pad", before: [...before] }, [x], shape, this.dtype(x));
  }

  // ------------------------------------------------------------------------ gather / scatter

  /** Rows of `table` [V, ...rest] picked by i32 `ids`: [...ids.shape, ...rest]. */
  gather(table: number, ids: number): number {
    const t = this.shape(table);
    if (this.dtype(ids) !== "i32") fail(`gather ids must be i32`);
    if (t.length === 0) fail(`gather from a scalar`);
    return this.emit(
      { kind: "gather" },
      [table, ids],
      [...this.shape(ids), ...t.slice(1)],
      this.dtype(table),
    );
  }

  /** Sums `values` [...ids.shape, ...rest] into `count` rows by i32 `ids`: [count, ...rest]. */
  scatterAdd(ids: number, values: number, count: number): number {
    const si = this.shape(ids);
    const sv = this.shape(values);
    if (this.dtype(ids) !== "i32") fail(`scatterAdd ids must be i32`);
    if (sv.length < si.length || si.some((d, i) => d !== sv[i]))
      fail(`scatterAdd values ${fmt(sv)} do not start with the ids' shape ${fmt(si)}`);
    return this.emit(
      { kind: "scatterAdd" },
      [ids, values],
      [count, ...sv.slice(si.length)],
      this.dtype(values),
    );
  }

  // ------------------------------------------------------------------------ intrinsics

  /** Top-`rank` left singular vectors [m, rank] or right ones as rows [rank, n] of g [m, n]. */
  svd(
    g: number,
    side: "left" | "right",
    rank: number,
    opts: { iterations?: number; oversample?: number; seed?: number } = {},
  ): number {
    const s = this.shape(g);
    if (s.length !== 2) fail(`svd of rank-${s.length} tensor ${fmt(s)}`);
    const [m, n] = s as [number, number];
    if (!Number.isInteger(rank) || rank < 1 || rank > Math.min(m, n))
      fail(`svd rank ${rank} of ${fmt(s)}`);
    const { iterations = 2, oversample = 4, seed = 0 } = opts;
    const op: Op = { kind: "svd", side, rank, iterations, oversample, seed };
    return this.emit(op, [g], side === "left" ? [m, rank] : [rank, n]);
  }

  /** The thin Householder Q [m, k] of x [m, k], m ≥ k (the IR's `qr`). */
  qr(x: number): number {
    const s = this.shape(x);
    if (s.length !== 2 || s[0]! < s[1]!) fail(`qr of ${fmt(s)}: needs a matrix with rows ≥ cols`);
    return this.emit({ kind: "qr" }, [x], s);
  }

  /** 1 at the `k` largest of `scores` [n] (k a scalar node), else 0; ties go to the lower index. */
  topkMask(scores: number, k: number): number {
    if (this.shape(scores).length !== 1) fail(`topkMask of ${fmt(this.shape(scores))}`);
    if (this.shape(k).length !== 0) fail(`topkMask k must be a scalar`);
    return this.emit({ kind: "topkMask" }, [scores, k], this.shape(scores), this.dtype(scores));
  }

  private quantShape(w: number, bits: number, group: number): [number, number] {
    const s = this.shape(w);
    if (s.length !== 2) fail(`quantize of ${fmt(s)}: needs [out, in]`);
    if (!Number.isInteger(bits) || bits < 2 || bits > 24) fail(`quantize bits ${bits}`);
    if (!Number.isInteger(group) || group < 1 || s[1]! % group !== 0)
      fail(`quantize group ${group} does not divide ${s[1]}`);
    return [s[0]!, s[1]! / group];
  }

  quantize(w: number, bits: number, group: number): number {
    this.quantShape(w, bits, group);
    return this.emit({ kind: "quantize", bits, group }, [w], this.shape(w));
  }

  quantScale(w: number, bits: number, group: number): number {
    return this.emit({ kind: "quantScale", bits, group }, [w], this.quantShape(w, bits, group));
  }

  // ------------------------------------------------------------------------ composites

  softmax(x: number, axis = -1): number {
    const m = this.max(x, axis, true);
    this.detached.add(m);
    const e = this.exp(this.sub(x, m));
    return this.div(e, this.sum(e, axis, true));
  }

  /** x - max - log Σ exp(x - max). */
  logSoftmax(x: number, axis = -1): number {
    const m = this.max(x, axis, true);
    this.detached.add(m);
    const z = this.sub(x, m);
    return this.sub(z, this.log(this.sum(this.exp(z), axis, true)));
  }

  /** Row mean of -log softmax(logits)[target], the target picked by a one-hot (iota = target). */
  crossEntropy(logits: number, targets: number): number {
    const s = this.shape(logits);
    if (s.length !== 2 || this.dtype(targets) !== "i32" || !sameShape(this.shape(targets), [s[0]!]))
      fail(`crossEntropy of ${fmt(s)} with targets ${fmt(this.shape(targets))}`);
    const [n, c] = s as [number, number];
    const classes = this.iota([n, c], 1, "i32");
    const oneHot = this.cast(this.eq(classes, this.reshape(targets, [n, 1])), "f32");
    const picked = this.sum(this.mul(oneHot, this.logSoftmax(logits, 1)));
    return this.div(this.neg(picked), this.constant(n));
  }

  /** Normalizes over the last axis, then scales by `weight`, shifts by `bias` (both optional). */
  layerNorm(x: number, weight?: number, bias?: number, eps = 1e-5): number {
    const centered = this.sub(x, this.mean(x, -1, true));
    const variance = this.mean(this.square(centered), -1, true);
    let y = this.mul(centered, this.rsqrt(this.add(variance, this.constant(eps))));
    if (weight !== undefined) y = this.mul(y, weight);
    if (bias !== undefined) y = this.add(y, bias);
    return y;
  }
}
