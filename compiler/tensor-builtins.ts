// The built-in functions of .lrk on tensors, each lowered to primitive IR ops. On plain numbers
// the numeric ones are computed at compile time instead.
import type * as A from "../language/ast.js";
import { error, type Location } from "../language/diagnostics.js";
import type { Frame, Lowerer, Tensor } from "./lower.js";
import { shapeText } from "./lower.js";
import { broadcastShapes, type Builder } from "./builder.js";
import type { UnaryFn } from "./ir.js";
import { MAX_PANEL } from "./kernels/special.js";
import { initGradientCall } from "./init-gradient.js";
import { loadCall } from "./load.js";
import { qrTuple, seededRandom, svdTuple } from "./linalg-builtins.js";
import { describeValue, num, type Value } from "./values.js";
import { argmax, cast, concat, cumsum } from "./axis-builtins.js";
import { rangeItems } from "./sequences.js";
import { generationRules } from "./generation-builtins.js";

type Arg = { name?: string; value: Value; at: Location };

export class Args {
  private used = new Set<Arg>();
  constructor(
    private readonly L: Lowerer,
    private readonly fn: string,
    private readonly list: Arg[],
    private readonly at: Location,
  ) {}

  /** The i-th positional argument, or the named one. */
  get(i: number, name?: string): Value | undefined {
    const named = name ? this.list.find((a) => a.name === name) : undefined;
    const arg = named ?? this.list.filter((a) => !a.name)[i];
    if (arg) this.used.add(arg);
    return arg?.value;
  }

  need(i: number, name?: string): Value {
    const v = this.get(i, name);
    if (v === undefined)
      this.L.r.report(
        error(
          "E0205",
          `\`${this.fn}\` needs ${name ? `\`${name}\`` : `argument ${i + 1}`}`,
          this.at,
        ),
      );
    return v;
  }

  tensor(i: number, name?: string): Tensor {
    const v = this.need(i, name);
    if (v.kind === "tensor") return v;
    if (v.kind === "number") return this.L.tensor(this.L.b.constant(v.value));
    return this.L.r.report(
      error("E0402", `\`${this.fn}\` needs a tensor, not ${describeValue(v)}`, this.argAt(i, name)),
    );
  }

  number(i: number, name?: string, fallback?: number): number {
    const v = this.get(i, name);
    if (v === undefined && fallback !== undefined) return fallback;
    if (v?.kind === "number") return v.value;
    if (v?.kind === "bool") return v.value ? 1 : 0;
    return this.L.r.report(
      error(
        "E0402",
        `\`${this.fn}\`'s ${name ?? `argument ${i + 1}`} must be a number known while compiling`,
        this.argAt(i, name),
      ),
    );
  }

  /** A compile-time integer of at least `min` (a dim, a rank, a count). */
  integer(i: number, name?: string, fallback?: number, min = -Infinity): number {
    const v = this.number(i, name, fallback);
    if (!Number.isInteger(v) || v < min) {
      const what = `\`${this.fn}\`'s ${name ?? `argument ${i + 1}`}`;
      this.L.r.report(
        error(
          "E0402",
          `${what} must be ${min === 1 ? "a positive integer" : min === 0 ? "a non-negative integer" : "an integer"}, not ${v}`,
          this.argAt(i, name),
        ),
      );
    }
    return v;
  }

  bool(name: string, fallback: boolean): boolean {
    const v = this.get(-1, name);
    if (v === undefined) return fallback;
    if (v.kind === "bool") return v.value;
    return this.L.r.report(
      error("E0402", `\`${name}\` must be true or false`, this.argAt(-1, name)),
    );
  }

  argAt(i: number, name?: string): Location {
    const a =
      (name ? this.list.find((x) => x.name === name) : undefined) ??
      this.list.filter((x) => !x.name)[i];
    return a?.at ?? this.at;
  }

  /** Every argument was used: a misspelled named argument is an error, not silently ignored. */
  done(): void {
    const extra = this.list.find((a) => !this.used.has(a));
    if (extra) {
      this.L.r.report(
        error(
          "E0205",
          extra.name
            ? `\`${this.fn}\` has no parameter \`${extra.name}\``
            : `too many arguments to \`${this.fn}\``,
          extra.at,
        ),
      );
    }
  }
}

/** Compile-time versions: one number in, a number out (`floor`, `ceil`, `round` give integers). */
const numeric: Record<string, (x: number) => number> = {
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  exp: Math.exp,
  log: Math.log,
  abs: Math.abs,
  sign: Math.sign,
  tanh: Math.tanh,
  sin: Math.sin,
  cos: Math.cos,
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  relu: (x) => Math.max(0, x),
  floor: Math.floor,
  ceil: Math.ceil,
  round: Math.round,
};
const integerValued = new Set(["floor", "ceil", "round"]);

function axisOf(L: Lowerer, args: Args, rank: number, fallback?: number): number[] | undefined {
  const v = args.get(-1, "axis");
  if (v === undefined) return fallback === undefined ? undefined : [fallback];
  const axes = v.kind === "list" || v.kind === "tuple" ? v.items : [v];
  return axes.map((a) => {
    if (a.kind !== "number" || !Number.isInteger(a.value) || a.value < -rank || a.value >= rank) {
      L.r.report(
        error("E0402", `axis must be an integer in ${-rank}..${rank - 1}`, args.argAt(-1, "axis")),
      );
    }
    return a.value < 0 ? a.value + rank : a.value;
  });
}

/** One call of a built-in being lowered. */
export interface Call {
  readonly L: Lowerer;
  readonly b: Builder;
  readonly name: string;
  readonly e: A.Call;
  readonly frame: Frame;
  readonly at: Location;
  readonly args: Args;
  /** Wraps an IR node as a tensor value. */
  readonly tensor: (node: number) => Tensor;
}

/** Lowers one built-in call; the driver checks afterwards that every argument was used. */
export type Rule = (c: Call) => Value;

/**
 * Every built-in name, in the order scopes list them (`builtinNames` is this table's keys), with
 * its lowering on tensors. Names without one (`ceil`/`round` of a tensor, initializers,
 * schedules, reserved names) are `E0206` when called inside a function.
 */
const builtinRules = {
  // elementwise
  sqrt: elementwise("sqrt"),
  rsqrt: elementwise("rsqrt"),
  exp: elementwise("exp"),
  log: elementwise("log"),
  abs: elementwise("abs"),
  sign: elementwise("sign"),
  tanh: elementwise("tanh"),
  sigmoid: elementwise("sigmoid"),
  relu: elementwise("relu"),
  gelu: elementwise("gelu"),
  silu: elementwise("silu"),
  erf: elementwise("erf"),
  sin: elementwise("sin"),
  cos: elementwise("cos"),
  floor: elementwise("floor"),
  ceil: noLowering, // on numbers only
  round: noLowering,
  min: extremum("min"),
  max: extremum("max"),
  where: ({ L, b, at, args, tensor }) => {
    const c = args.tensor(0).node;
    const x = args.tensor(1).node;
    const y = args.tensor(2).node;
    try {
      broadcastShapes(b.shape(c), b.shape(x), b.shape(y));
    } catch {
      L.fail(
        at,
        `\`where\` of ${L.typeText(c)}, ${L.typeText(x)} and ${L.typeText(y)}: the shapes do not broadcast`,
        { help: "shapes must match from the last dim, or be 1 where they broadcast" },
      );
    }
    return tensor(b.where(c, b.cast(x, "f32"), b.cast(y, "f32")));
  },
  stop_grad: ({ L, b, args, tensor }) => {
    const x = args.tensor(0);
    const node = b.graph.add({ kind: "reshape" }, [x.node], x.shape, x.dtype, {
      source: b.source,
    });
    L.stopped.add(node);
    return tensor(node);
  },
  // reductions and normalization
  sum: reduction((b, x, axes, keep) => b.sum(x, axes, keep)),
  mean: reduction((b, x, axes, keep) => b.mean(x, axes, keep)),
  var: reduction((b, x, axes, keep) => {
    const centered = b.sub(x, b.mean(x, axes, true));
    return b.mean(b.mul(centered, centered), axes, keep);
  }),
  softmax: lastAxisRow((b, x, axis) => b.softmax(x, axis)),
  log_softmax: lastAxisRow((b, x, axis) => b.logSoftmax(x, axis)),
  row_norm: ({ b, args, tensor }) => {
    const w = args.tensor(0);
    return tensor(b.sqrt(b.sum(b.mul(w.node, w.node), [-1])));
  },
  fro: ({ b, args, tensor }) => {
    const x = args.tensor(0);
    return tensor(b.sqrt(b.sum(b.mul(x.node, x.node))));
  },
  layer_norm: ({ L, b, e, frame, args, tensor }) => {
    const x = args.tensor(0);
    const w = args.get(1, "weight");
    const c = args.get(2, "bias");
    const eps = args.number(3, "eps", 1e-5);
    const weight = w ? L.asNode(w, frame, e) : undefined;
    const bias = c ? L.asNode(c, frame, e) : undefined;
    return tensor(b.layerNorm(x.node, weight, bias, eps));
  },
  // shapes
  reshape,
  transpose,
  concat,
  cumsum,
  argmax,
  range: ({ L, e, at, args }) => {
    const bounds = e.args.map((_, i) => args.integer(i));
    const list = rangeItems(bounds);
    if (typeof list === "string") return L.r.report(error("E0402", list, at));
    return list;
  },
  len: ({ L, at, args }) => {
    const v = args.get(0);
    if (v?.kind === "list" || v?.kind === "tuple") return num(v.items.length, true);
    return L.r.report(error("E0205", "`len` takes one list or tuple known while compiling", at));
  },
  i32: cast("i32"),
  f32: cast("f32"),
  arange: ({ b, args, tensor }) =>
    tensor(b.iota([args.integer(0, undefined, undefined, 1)], 0, "i32")),
  eye: ({ b, args, tensor }) => {
    const n = args.integer(0, undefined, undefined, 1);
    return tensor(b.cast(b.eq(b.iota([n, n], 0, "i32"), b.iota([n, n], 1, "i32")), "f32"));
  },
  tril: triangle((b, rows, cols) => b.le(cols, rows)),
  triu: triangle((b, rows, cols) => b.ge(cols, rows)),
  one_hot: ({ b, args, tensor }) => {
    const ids = args.tensor(0);
    const n = args.integer(1, undefined, undefined, 1);
    const shape = [...ids.shape, n];
    // Compared in the ids' dtype: arithmetic on i32 tensors (`arange(n) % k`) gives f32 ids,
    // whose whole values are exact up to 2^24.
    const expanded = b.broadcastTo(b.reshape(ids.node, [...ids.shape, 1]), shape);
    const classes = b.iota(shape, ids.shape.length, "i32");
    return tensor(b.cast(b.eq(expanded, b.cast(classes, ids.dtype)), "f32"));
  },
  // losses and regularization
  cross_entropy: ({ L, at, args }) => crossEntropy(L, args.tensor(0), args.tensor(1), at),
  mse: ({ L, b, at, args, tensor }) => {
    const a = args.tensor(0);
    const c = args.tensor(1);
    for (const [x, i] of [
      [a, 0],
      [c, 1],
    ] as const) {
      if (x.dtype !== "f32")
        L.r.report(
          error("E0402", `\`mse\` needs f32 values, found ${L.typeText(x.node)}`, args.argAt(i), {
            help: "for class ids use `cross_entropy(logits, ids)`",
          }),
        );
    }
    // torch broadcasts mismatched shapes with only a warning; that trains the wrong loss.
    if (a.shape.length !== c.shape.length || a.shape.some((d, i) => d !== c.shape[i]))
      L.fail(at, `\`mse\` of ${L.typeText(a.node)} and ${L.typeText(c.node)}: the shapes differ`, {
        help: "reshape one of them so that both have the same shape",
      });
    const d = b.sub(a.node, c.node);
    return tensor(b.mean(b.mul(d, d)));
  },
  dropout,
  // initializers
  zeros: filled,
  ones: filled,
  full: filled,
  zeros_like: ({ b, args, tensor }) => tensor(b.constant(0, args.tensor(0).shape)),
  ones_like: ({ b, args, tensor }) => tensor(b.constant(1, args.tensor(0).shape)),
  // a `param`'s whole initializer without a shape (init.ts); given a shape, a seeded value
  normal: seededRandom("normal"),
  uniform: seededRandom("uniform"),
  kaiming_uniform: noLowering,
  // learning-rate schedules: only in a `schedule` item (resolve.ts)
  constant: noLowering,
  linear: noLowering,
  cosine: noLowering,
  // intrinsics
  svd_left: singularVectors("left"),
  svd_right: singularVectors("right"),
  svd_split: svdSplit,
  svd: svdTuple,
  qr: qrTuple,
  quantize,
  dequantize: ({ L, at, args, tensor }) => tensor(dequantize(L, args.need(0), at)),
  dequant_matmul: ({ L, b, at, args, tensor }) => {
    // x @ dequantize(q)^T; the fusion pass keeps the dequantization inside the matmul's loop.
    const x = args.tensor(0);
    const w = dequantize(L, args.need(1), at);
    return tensor(b.matmul(x.node, w, { transB: true }));
  },
  topk_mask: ({ L, b, args, tensor }) => {
    const scores = args.tensor(0);
    const k = args.tensor(1);
    if (scores.shape.length !== 1)
      L.fail(
        args.argAt(0),
        `\`topk_mask\` needs a vector of scores, found ${L.typeText(scores.node)}`,
        { help: "flatten it first: `reshape(x, [-1])`" },
      );
    if (k.shape.length !== 0)
      L.fail(args.argAt(1), `\`topk_mask\`'s k must be a number, found ${L.typeText(k.node)}`);
    return tensor(b.topkMask(scores.node, k.node));
  },
  kthvalue: noLowering, // reserved
  // a definition's check of its arguments, as a member `const` (resolve.ts)
  require: noLowering,
  // a state's initializer only: `state M = pooled(zeros_like(param), active) refresh every N`
  // (compiler/update.ts, pooled-states.ts)
  pooled: noLowering,
  // the gradient of a base weight over training batches, before training (compiler/init-gradient.ts)
  init_gradient: initGradientCall,
  // a tensor of a safetensors file, read when training starts (compiler/load.ts)
  load: loadCall,
  // a Hugging Face config.json read while compiling (resolve.ts, hf-config.ts)
  hf_config: noLowering,
  // generation one token at a time (compiler/generation-builtins.ts)
  ...generationRules,
} satisfies Record<string, Rule>;

type BuiltinName = keyof typeof builtinRules;

/** Every name a .lrk scope starts with (besides `std`), re-exported by builtins.ts. */
export const builtinNames = Object.keys(builtinRules) as readonly BuiltinName[];

export function tensorBuiltin(L: Lowerer, name: string, e: A.Call, frame: Frame): Value {
  const at = L.at(frame, e);
  const args = new Args(L, name, L.args(e, frame), at);
  // Read up front for the compile-time case, which marks the first positional argument used for
  // every built-in (a rule that ignores it does not make it "too many arguments").
  const first = args.get(0);
  let value: Value;
  if (first?.kind === "number" && name in numeric && e.args.length === 1) {
    // Numeric functions on compile-time numbers stay numbers.
    value = num(numeric[name]!(first.value), integerValued.has(name));
  } else {
    if (!Object.hasOwn(builtinRules, name)) return notAvailable(L, name, at);
    const tensor = (node: number) => L.tensor(node);
    value = builtinRules[name as BuiltinName]({ L, b: L.b, name, e, frame, at, args, tensor });
  }
  args.done();
  return value;
}

function notAvailable(L: Lowerer, name: string, at: Location): never {
  return L.r.report(
    error("E0206", `\`${name}\` is not available here`, at, {
      help: ["normal", "uniform", "kaiming_uniform"].includes(name)
        ? "random initializers fill a model's or adapter's `param` (`param w: f32[n] = normal(std: 0.02)`); an optimizer's or budget's `state` starts from a tensor expression such as `zeros_like(param)`"
        : undefined,
    }),
  );
}

/** A built-in that resolves but has no lowering on tensors. */
function noLowering({ L, name, at }: Call): Value {
  return notAvailable(L, name, at);
}

function elementwise(fn: UnaryFn): Rule {
  return ({ b, args, tensor }) => tensor(b.unary(fn, b.cast(args.tensor(0).node, "f32")));
}

/** `min`/`max`: of two operands (two numbers give a number), or with `axis:` a reduction. */
function extremum(which: "min" | "max"): Rule {
  const ofNumbers = which === "min" ? Math.min : Math.max;
  const reduce = reduction((b, x, axes, keep) =>
    which === "max" ? b.max(x, axes, keep) : b.neg(b.max(b.neg(x), axes, keep)),
  );
  return (c) => {
    const { b, args, tensor } = c;
    if (args.get(-1, "axis") !== undefined) return reduce(c);
    const a = args.need(0);
    const y = args.need(1);
    if (a.kind === "number" && y.kind === "number")
      return num(ofNumbers(a.value, y.value), a.integer && y.integer);
    const x0 = args.tensor(0).node;
    const x1 = args.tensor(1).node;
    return tensor(which === "min" ? b.minimum(x0, x1) : b.maximum(x0, x1));
  };
}

/** A reduction over `axis:` (every axis without it) of the input as f32, with `keepdim:`. */
function reduction(
  reduce: (b: Builder, x: number, axes: number[] | undefined, keep: boolean) => number,
): Rule {
  return ({ L, b, args, tensor }) => {
    const x = args.tensor(0);
    const axes = axisOf(L, args, x.shape.length);
    const keep = args.bool("keepdim", false);
    return tensor(reduce(b, b.cast(x.node, "f32"), axes, keep));
  };
}

/** A function of rows along one `axis:` (the last by default). */
function lastAxisRow(lower: (b: Builder, x: number, axis: number) => number): Rule {
  return ({ L, b, args, tensor }) => {
    const x = args.tensor(0);
    const axis = axisOf(L, args, x.shape.length, x.shape.length - 1)!;
    return tensor(lower(b, x.node, axis[0]!));
  };
}

function reshape({ L, b, at, args, tensor }: Call): Value {
  const x = args.tensor(0);
  const dims = args.need(1, "shape");
  if (dims.kind !== "list" && dims.kind !== "tuple")
    return L.r.report(
      error("E0402", "`reshape` needs a list of dims, like `[B, T, d]`", args.argAt(1, "shape")),
    );
  const shape = dims.items.map((d) => {
    if (d.kind !== "number" || !Number.isInteger(d.value) || (d.value < 1 && d.value !== -1))
      return L.r.report(
        error(
          "E0402",
          `reshape dims must be positive integers (or one -1 for the rest), not ${d.kind === "number" ? d.value : describeValue(d)}`,
          args.argAt(1, "shape"),
        ),
      );
    return d.value;
  });
  if (shape.filter((d) => d === -1).length > 1)
    L.r.report(
      error("E0402", "reshape can infer only one dim: use -1 once", args.argAt(1, "shape")),
    );
  const known = shape.filter((d) => d !== -1).reduce((a, c) => a * c, 1);
  const total = x.shape.reduce((a, c) => a * c, 1);
  if (shape.includes(-1) ? total % known !== 0 : known !== total) {
    L.fail(
      at,
      `cannot reshape ${shapeText(x.shape, x.dtype)} (${total} elements) to [${shape.join(", ")}]`,
    );
  }
  return tensor(b.reshape(x.node, shape));
}

function transpose({ L, b, at, args, tensor }: Call): Value {
  const x = args.tensor(0);
  const rank = x.shape.length;
  const i = args.integer(1, undefined, rank - 2);
  const j = args.integer(2, undefined, rank - 1);
  const perm = x.shape.map((_, k) => k);
  const a = i < 0 ? i + rank : i;
  const c = j < 0 ? j + rank : j;
  if (a < 0 || c < 0 || a >= rank || c >= rank)
    L.fail(at, `cannot swap axes ${i} and ${j} of ${shapeText(x.shape, x.dtype)}`);
  [perm[a], perm[c]] = [perm[c]!, perm[a]!];
  return tensor(b.permute(x.node, perm));
}

/** `tril`/`triu`: keeps the last two axes' entries where `keep(rows, cols)`, zeros the rest. */
function triangle(keep: (b: Builder, rows: number, cols: number) => number): Rule {
  return ({ L, b, name, at, args, tensor }) => {
    const x = args.tensor(0);
    const s = x.shape;
    // one token at a time, a triangle is no causal mask: compiler/generation.ts refuses the model
    if (L.generation) L.generation.used.triangles++;
    if (s.length < 2) L.fail(at, `\`${name}\` needs a matrix, found ${shapeText(s, x.dtype)}`);
    const rows = b.iota(s.slice(-2), 0, "i32");
    const cols = b.iota(s.slice(-2), 1, "i32");
    const kept = b.cast(keep(b, rows, cols), "f32");
    return tensor(b.mul(b.cast(x.node, "f32"), kept));
  };
}

/** `zeros(d1, …)`, `ones(d1, …)`, `full(d1, …, value)`. */
function filled({ b, name, e, args, tensor }: Call): Value {
  const dims = e.args.filter((a) => !a.name).length;
  const shape: number[] = [];
  const count = name === "full" ? dims - 1 : dims;
  for (let i = 0; i < count; i++) shape.push(args.integer(i, undefined, undefined, 1));
  const value = name === "full" ? args.number(count, "value") : name === "ones" ? 1 : 0;
  return tensor(b.constant(value, shape));
}

function dropout({ L, b, args, tensor }: Call): Value {
  const x = args.tensor(0);
  const p = args.number(1, "p");
  // A misspelled argument is reported before a bad probability.
  args.done();
  if (p < 0 || p >= 1) {
    L.r.report(
      error("E0402", `dropout probability must be in [0, 1), not ${p}`, args.argAt(1, "p")),
    );
  }
  if (p === 0 || !L.isTraining()) return x;
  // Inverted dropout: keep with probability 1 - p, scale kept values by 1 / (1 - p). The mask
  // is new every step: the random seed is mixed with the step counter.
  const u = b.random("uniform", x.shape, L.nextSeed(), L.stepNode);
  const keep = b.cast(b.ge(u, b.constant(p)), "f32");
  return tensor(b.mul(b.mul(x.node, keep), b.constant(1 / (1 - p))));
}

function singularVectors(side: "left" | "right"): Rule {
  return ({ L, b, name, at, args, tensor }) => {
    const g = args.tensor(0);
    const rank = args.integer(1, "rank", undefined, 1);
    const accuracy = svdAccuracy(L, args);
    args.done();
    if (g.shape.length !== 2)
      L.fail(at, `\`${name}\` needs a matrix, found ${shapeText(g.shape, g.dtype)}`);
    // The device's svd kernels hold rank + oversample columns in one workgroup.
    const columns = Math.min(rank + accuracy.oversample, g.shape[0]!, g.shape[1]!);
    if (columns > MAX_PANEL)
      L.fail(
        args.argAt(-1, "oversample"),
        `\`${name}\` takes at most ${MAX_PANEL} columns (rank + oversample), not ${columns}`,
      );
    return tensor(b.svd(g.node, side, rank, { ...accuracy, seed: L.nextSeed() }));
  };
}

/**
 * `iterations:` and `oversample:` of the randomized SVD (defaults 2 and 4): each iteration
 * multiplies the error of the subspace by about (σ_{l+1} / σ_rank)², so a small spectral gap
 * needs more of them.
 */
function svdAccuracy(L: Lowerer, args: Args): { iterations: number; oversample: number } {
  const count = (name: string, fallback: number, most: number): number => {
    const v = args.number(-1, name, fallback);
    if (!Number.isInteger(v) || v < 0 || v > most) {
      L.r.report(
        error(
          "E0402",
          `\`${name}\` must be an integer from 0 to ${most}, not ${v}`,
          args.argAt(-1, name),
        ),
      );
      return fallback;
    }
    return v;
  };
  return {
    iterations: count("iterations", 2, 1000),
    oversample: count("oversample", 4, MAX_PANEL),
  };
}

/**
 * w = L1 @ L2 + R from the top-r SVD w ≈ U S Vᵀ: L2 = V_rᵀ [r, in], L1 = w V_r = U_r S_r [out, r].
 */
function svdSplit({ L, b, at, args, tensor }: Call): Value {
  const w = args.tensor(0);
  const rank = args.integer(1, "rank", undefined, 1);
  if (w.shape.length !== 2)
    L.fail(at, `\`svd_split\` needs a matrix, found ${shapeText(w.shape, w.dtype)}`);
  const r = Math.min(rank, w.shape[0]!, w.shape[1]!);
  // The device's svd kernels hold rank + oversample (4) columns in one workgroup.
  const columns = Math.min(r + 4, w.shape[0]!, w.shape[1]!);
  if (columns > MAX_PANEL)
    L.fail(
      args.argAt(1, "rank"),
      `\`svd_split\` takes a rank of at most ${MAX_PANEL - 4} (its SVD holds rank + 4 columns, at most ${MAX_PANEL}), not ${rank}`,
      { help: `lower the rank to ${MAX_PANEL - 4} or less` },
    );
  const l2 = b.svd(w.node, "right", r, { seed: L.nextSeed() });
  const l1 = b.matmul(w.node, l2, { transB: true });
  const residual = b.sub(w.node, b.matmul(l1, l2));
  return { kind: "tuple", items: [tensor(l1), tensor(l2), tensor(residual)] };
}

/** Symmetric per-group integers: one scale per `group` consecutive entries of the last axis. */
function quantize({ L, b, at, args, tensor }: Call): Value {
  const x = args.tensor(0);
  const bits = args.number(1, "bits");
  const group = args.integer(2, "group", undefined, 1);
  if (x.shape.length !== 2)
    L.fail(at, `\`quantize\` needs a matrix, found ${shapeText(x.shape, x.dtype)}`);
  if (x.shape[1]! % group !== 0) {
    L.fail(
      at,
      `\`quantize\` groups of ${group} do not divide the ${x.shape[1]} columns of ${shapeText(x.shape, x.dtype)}`,
      { help: "pick a group size that divides the input width" },
    );
  }
  if (!Number.isInteger(bits) || bits < 2 || bits > 8)
    L.r.report(
      error("E0402", `\`bits\` must be an integer from 2 to 8, not ${bits}`, args.argAt(1, "bits")),
    );
  return {
    kind: "struct",
    what: `a ${bits}-bit quantized tensor`,
    fields: new Map<string, Value>([
      ["values", tensor(b.quantize(x.node, bits, group))],
      ["scales", tensor(b.quantScale(x.node, bits, group))],
      ["bits", num(bits, true)],
    ]),
  };
}

function dequantize(L: Lowerer, q: Value, at: Location): number {
  const b = L.b;
  const values = q.kind === "struct" ? q.fields.get("values") : undefined;
  const scales = q.kind === "struct" ? q.fields.get("scales") : undefined;
  if (values?.kind !== "tensor" || scales?.kind !== "tensor") {
    return L.r.report(
      error(
        "E0402",
        `expected a quantized tensor (from \`quantize\`), found ${describeValue(q)}`,
        at,
      ),
    );
  }
  const [out, inWidth] = values.shape as [number, number];
  const groups = scales.shape[1]!;
  const expanded = b.reshape(
    b.broadcastTo(b.reshape(scales.node, [out, groups, 1]), [out, groups, inWidth / groups]),
    [out, inWidth],
  );
  return b.mul(values.node, expanded);
}

/**
 * Mean cross-entropy over the last axis; targets of -1 are ignored (as PyTorch's ignore_index),
 * and the mean is over the targets that are not.
 */
function crossEntropy(L: Lowerer, logits: Tensor, targets: Tensor, at: Location): Value {
  const b = L.b;
  const classes = logits.shape[logits.shape.length - 1]!;
  if (targets.dtype !== "i32")
    L.fail(
      at,
      `cross_entropy's targets must be i32 class ids, found ${shapeText(targets.shape, targets.dtype)}`,
    );
  const lead = logits.shape.slice(0, -1);
  if (lead.length !== targets.shape.length || lead.some((d, i) => d !== targets.shape[i])) {
    L.fail(
      at,
      `cross_entropy of logits ${shapeText(logits.shape)} needs targets i32[${lead.join(", ")}], found ${shapeText(targets.shape, targets.dtype)}`,
    );
  }
  const n = lead.reduce((a, c) => a * c, 1);
  const flat = b.reshape(logits.node, [n, classes]);
  const ids = b.reshape(targets.node, [n]);
  const logp = b.logSoftmax(flat, 1);
  const hot = b.cast(
    b.eq(b.broadcastTo(b.reshape(ids, [n, 1]), [n, classes]), b.iota([n, classes], 1, "i32")),
    "f32",
  );
  const picked = b.sum(b.mul(hot, logp));
  const counted = b.sum(b.cast(b.ne(ids, b.constant(-1, [], "i32")), "f32"));
  return L.tensor(b.neg(b.div(picked, b.maximum(counted, b.constant(1)))));
}
