// `if` statements in an optimizer's update or a budget's `observe` whose condition depends only on
// the step number (and constants): `if step % 10 == 0 { … }`. Selecting per element would compute
// both branches every step; instead the condition is decided on the host before each step, and
// the step program has one variant per outcome (as it has one per combination of due refresh
// periods), lowered with only the taken branch. The runtime picks the variant with `stepEntry`
// (program.ts), which calls each condition's `holds(step)`: a float64 evaluation of the
// condition's IR here, with the interpreter's arithmetic.
//
// A condition may also read seeded uniform draws (`uniform([n], seed:, key: f(step))`), pick from
// them with `topk_mask` and index them (`[i]`): small vectors (at most MAX_DRAW elements) computed
// from the step, such as FRUGAL's random choice of active tensors. The host draws them with the
// interpreter's generator (runtime/random.ts), which the device's kernels reproduce bit-exactly;
// since the device then runs only the branch the host took, the two can never disagree.
import { numel, type Graph, type Node, type Shape } from "./ir.js";
import type { Entry, Output, StepCondition } from "./program.js";
import { hash32, uniformAt } from "../runtime/random.js";

/** The most step conditions one program may branch on: its variants double with each. */
export const MAX_STEP_CONDITIONS = 6;

/** The ops a step condition may be made of: scalar arithmetic on `step` and constants. */
const KINDS = new Set([
  "const",
  "unary",
  "binary",
  "where",
  "cast",
  "reshape",
  "expand",
  "permute",
]);

/** Ops of the small vectors a condition may compute on the way to its scalar (seeded draws). */
const VECTOR_KINDS = new Set([...KINDS, "random", "topkMask", "slice", "iota"]);

/** The most elements a vector in a step condition may have (the host computes it every step). */
export const MAX_DRAW = 4096;

/** The unary functions `holds` evaluates (the rest keep their `if` a select on the device). */
const UNARY = new Set([
  "neg",
  "abs",
  "floor",
  "sign",
  "not",
  "sqrt",
  "exp",
  "log",
  "sin",
  "cos",
  "square",
  "recip",
]);

/**
 * Whether `node` is a scalar computed from the `step` input and constants only, possibly through
 * small vectors of seeded uniform draws (`VECTOR_KINDS`).
 */
export function stepOnly(graph: Graph, node: number): boolean {
  if (numel(graph.shape(node)) !== 1) return false;
  const seen = new Map<number, boolean>();
  const visit = (id: number): boolean => {
    const known = seen.get(id);
    if (known !== undefined) return known;
    const n = graph.node(id);
    const small = numel(n.shape) <= MAX_DRAW;
    let ok: boolean;
    if (n.op.kind === "input")
      ok = numel(n.shape) === 1 && n.op.role === "scalar" && n.op.name === "step";
    else if (n.op.kind === "unary" && !UNARY.has(n.op.fn))
      ok = false; // selected per element
    // normal draws go through log and cos, which devices compute only approximately
    else if (n.op.kind === "random") ok = small && n.op.dist === "uniform" && n.inputs.every(visit);
    else ok = small && VECTOR_KINDS.has(n.op.kind) && n.inputs.every(visit);
    seen.set(id, ok);
    return ok;
  };
  return visit(node);
}

/** Whether a condition reads a seeded draw. */
function draws(graph: Graph, node: number): boolean {
  const seen = new Set<number>();
  const visit = (id: number): boolean => {
    if (seen.has(id)) return false;
    seen.add(id);
    const n = graph.node(id);
    return n.op.kind === "random" || n.inputs.some(visit);
  };
  return visit(node);
}

/** A text that two structurally equal conditions share (the same `if` in every tensor's update). */
export function fingerprint(graph: Graph, node: number): string {
  const memo = new Map<number, string>();
  const text = (id: number): string => {
    const cached = memo.get(id);
    if (cached !== undefined) return cached;
    const n = graph.node(id);
    const op = n.op;
    const head =
      op.kind === "input"
        ? "step"
        : op.kind === "const"
          ? `${op.value}`
          : op.kind === "unary" || op.kind === "binary"
            ? op.fn
            : op.kind === "random" || op.kind === "slice" || op.kind === "iota"
              ? `${op.kind}:${JSON.stringify(op)}`
              : `${op.kind}:${n.dtype}`;
    // a vector's shape tells apart draws of different sizes (scalars keep their old keys)
    const shaped = numel(n.shape) === 1 ? head : `${head}[${n.shape.join(",")}]`;
    const out = n.inputs.length ? `${shaped}(${n.inputs.map(text).join(",")})` : shaped;
    memo.set(id, out);
    return out;
  };
  return text(node);
}

function unary(fn: string, x: number): number {
  switch (fn) {
    case "neg":
      return -x;
    case "abs":
      return Math.abs(x);
    case "floor":
      return Math.floor(x);
    case "sign":
      return Math.sign(x);
    case "not":
      return x === 0 ? 1 : 0;
    case "sqrt":
      return Math.sqrt(x);
    case "exp":
      return Math.exp(x);
    case "log":
      return Math.log(x);
    case "sin":
      return Math.sin(x);
    case "cos":
      return Math.cos(x);
    case "square":
      return x * x;
    case "recip":
      return 1 / x;
  }
  throw new Error(`step condition: unary ${fn}`);
}

function binary(fn: string, a: number, b: number, int: boolean): number {
  switch (fn) {
    case "add":
      return a + b;
    case "sub":
      return a - b;
    case "mul":
      return a * b;
    case "div":
      return int ? Math.trunc(a / b) : a / b;
    case "pow":
      return a ** b;
    case "max":
      return Math.max(a, b);
    case "min":
      return Math.min(a, b);
    case "lt":
      return a < b ? 1 : 0;
    case "le":
      return a <= b ? 1 : 0;
    case "gt":
      return a > b ? 1 : 0;
    case "ge":
      return a >= b ? 1 : 0;
    case "eq":
      return a === b ? 1 : 0;
    case "ne":
      return a !== b ? 1 : 0;
    case "and":
      return a !== 0 && b !== 0 ? 1 : 0;
    case "or":
      return a !== 0 || b !== 0 ? 1 : 0;
    case "mod":
      return a - b * Math.floor(a / b); // the interpreter's: the sign of the divisor
  }
  throw new Error(`step condition: binary ${fn}`);
}

/** Row-major strides of a shape. */
function stridesOf(shape: Shape): number[] {
  const st = new Array<number>(shape.length).fill(1);
  for (let k = shape.length - 2; k >= 0; k--) st[k] = st[k + 1]! * shape[k + 1]!;
  return st;
}

/** The flat input index of each output element, for an output of `shape` read with `st` from `base`. */
function gatherIndices(shape: Shape, st: readonly number[], base: number): number[] {
  const out: number[] = [];
  const walk = (axis: number, at: number) => {
    if (axis === shape.length) return void out.push(at);
    for (let i = 0; i < shape[axis]!; i++) walk(axis + 1, at + i * st[axis]!);
  };
  walk(0, base);
  return out;
}

/** One op of a step condition on float64 values (the interpreter's semantics, runtime/interpreter.ts). */
function evaluateNode(
  n: Node,
  ins: readonly number[][],
  step: number,
  inShapes: Shape[],
): number[] {
  const int = n.dtype === "i32";
  const size = numel(n.shape);
  const each = (f: (i: number) => number) => Array.from({ length: size }, (_, i) => f(i));
  const at = (x: readonly number[], i: number) => (x.length === 1 ? x[0]! : x[i]!);
  switch (n.op.kind) {
    case "input":
      return [step];
    case "const":
      return each(() => (n.op as { value: number }).value);
    case "unary": {
      const fn = n.op.fn;
      return ins[0]!.map((x) => unary(fn, x));
    }
    case "binary": {
      const fn = n.op.fn;
      return each((i) => binary(fn, at(ins[0]!, i), at(ins[1]!, i), int));
    }
    case "where":
      return each((i) => (at(ins[0]!, i) !== 0 ? at(ins[1]!, i) : at(ins[2]!, i)));
    case "random": {
      const seed = ins.length === 1 ? hash32(n.op.seed, ins[0]![0]! >>> 0) : n.op.seed;
      return each((i) => uniformAt(seed, i));
    }
    case "topkMask": {
      // the k largest, ties to the lower index (as the interpreter and the kernels)
      const scores = ins[0]!;
      const k = Math.max(0, Math.min(size, Math.round(ins[1]![0]!)));
      const order = [...scores.keys()].sort((i, j) => {
        const d = scores[j]! - scores[i]!;
        return d !== 0 && !Number.isNaN(d) ? d : i - j;
      });
      const out = new Array<number>(size).fill(0);
      for (const i of order.slice(0, k)) out[i] = 1;
      return out;
    }
    case "iota": {
      const st = stridesOf(n.shape);
      const axis = n.op.axis;
      return each((i) => Math.floor(i / st[axis]!) % n.shape[axis]!);
    }
    case "slice": {
      const st = stridesOf(inShapes[0]!);
      const { starts, steps } = n.op;
      const base = starts.reduce((acc, s0, k) => acc + s0 * st[k]!, 0);
      return gatherIndices(
        n.shape,
        st.map((s, k) => s * steps[k]!),
        base,
      ).map((i) => ins[0]![i]!);
    }
    case "expand": {
      const from = inShapes[0]!;
      const padded = [...new Array<number>(n.shape.length - from.length).fill(1), ...from];
      const st = stridesOf(padded).map((s, k) => (padded[k] === 1 ? 0 : s));
      return gatherIndices(n.shape, st, 0).map((i) => ins[0]![i]!);
    }
    case "permute": {
      const from = inShapes[0]!;
      const st = stridesOf(from);
      const perm = n.op.perm;
      return gatherIndices(
        n.shape,
        perm.map((p) => st[p]!),
        0,
      ).map((i) => ins[0]![i]!);
    }
    default: // cast, reshape: the same values
      return ins[0]!;
  }
}

/** The condition as a function of the step, evaluated in float64 (i32 nodes truncated). */
export function compileCondition(graph: Graph, node: number): (step: number) => boolean {
  return (step) => {
    const values = new Map<number, number[]>();
    const value = (id: number): number[] => {
      const known = values.get(id);
      if (known !== undefined) return known;
      const n: Node = graph.node(id);
      const ins = n.inputs.map(value);
      let v = evaluateNode(
        n,
        ins,
        step,
        n.inputs.map((i) => graph.shape(i)),
      );
      if (n.dtype === "i32") v = v.map(Math.trunc);
      values.set(id, v);
      return v;
    };
    return value(node)[0] !== 0;
  };
}

/**
 * The step conditions met while lowering the update variants, in the order first met, and the
 * outcome assumed for each in the variant being lowered now (false for one not yet decided).
 */
export class StepConditions {
  readonly found: StepCondition[] = [];
  decisions = new Map<string, boolean>();

  /** The branch to lower for `node`'s `if`, or undefined if it is not a step condition. */
  decide(graph: Graph, node: number): boolean | undefined {
    if (!stepOnly(graph, node)) return undefined;
    const key = fingerprint(graph, node);
    if (!this.found.some((c) => c.key === key)) {
      // a condition on draws was selected per element before the host could draw: past the
      // limit it still is (a per-tensor draw over many tensors compiles as it did), where a
      // condition on the step alone over the limit is refused (`updateVariants`)
      if (this.found.length >= MAX_STEP_CONDITIONS && draws(graph, node)) return undefined;
      this.found.push({ key, holds: compileCondition(graph, node) });
    }
    return this.decisions.get(key) ?? false;
  }

  /** The variant key's part for these outcomes, in `found` order: `|` and one 0/1 per condition. */
  static suffix(outcomes: readonly boolean[]): string {
    return outcomes.length ? `|${outcomes.map((o) => (o ? 1 : 0)).join("")}` : "";
  }
}

/**
 * Every variant of the update: one per combination of the refresh periods (`periods`, filled
 * while lowering) and of the step conditions' outcomes. A condition inside a branch is met only
 * when that branch is lowered, so the combinations are enumerated again until no new condition
 * appears. `lower(due, outcomes)` lowers one variant's outputs (outcomes in `found` order).
 */
export function updateVariants(
  periods: ReadonlySet<number>,
  conditions: StepConditions,
  loss: Output,
  lower: (due: ReadonlySet<number>, outcomes: readonly boolean[]) => Output[] | undefined,
  tooMany: (count: number) => void,
): Map<string, Entry> | undefined {
  const plain = lower(new Set(), []);
  if (!plain) return undefined;
  for (;;) {
    const count = conditions.found.length;
    if (count > MAX_STEP_CONDITIONS) {
      tooMany(count);
      return undefined;
    }
    const list = [...periods].sort((a, c) => a - c);
    const variants = new Map<string, Entry>();
    for (let mask = 0; mask < 1 << list.length; mask++) {
      const due = new Set(list.filter((_, i) => mask & (1 << i)));
      const dueKey = [...due].join("+");
      for (let bits = 0; bits < 1 << count; bits++) {
        const outcomes = Array.from({ length: count }, (_, i) => (bits & (1 << i)) !== 0);
        const outputs = mask === 0 && bits === 0 ? plain : lower(due, outcomes);
        if (!outputs) return undefined;
        const suffix = StepConditions.suffix(outcomes);
        const name = `step${due.size ? `+refresh${dueKey}` : ""}${count ? `+if${suffix.slice(1)}` : ""}`;
        variants.set(dueKey + suffix, { name, outputs: [loss, ...outputs] });
      }
    }
    if (conditions.found.length === count) return variants;
  }
}
