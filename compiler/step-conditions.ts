// `if` statements in an optimizer's update or a budget's `observe` whose condition depends only on
// the step number (and constants): `if step % 10 == 0 { … }`. Selecting per element would compute
// both branches every step; instead the condition is decided on the host before each step, and
// the step program has one variant per outcome (as it has one per combination of due refresh
// periods), lowered with only the taken branch. The runtime picks the variant with `stepEntry`
// (program.ts), which calls each condition's `holds(step)`: a float64 evaluation of the
// condition's IR here, with the interpreter's arithmetic.
import type { Graph, Node } from "./ir.js";
import type { Entry, Output, StepCondition } from "./program.js";

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

/** Whether `node` is a scalar computed from the `step` input and constants only. */
export function stepOnly(graph: Graph, node: number): boolean {
  const seen = new Map<number, boolean>();
  const visit = (id: number): boolean => {
    const known = seen.get(id);
    if (known !== undefined) return known;
    const n = graph.node(id);
    const scalar = n.shape.reduce((a, d) => a * d, 1) === 1;
    let ok: boolean;
    if (n.op.kind === "input") ok = scalar && n.op.role === "scalar" && n.op.name === "step";
    else if (n.op.kind === "unary" && !UNARY.has(n.op.fn))
      ok = false; // selected per element
    else ok = scalar && KINDS.has(n.op.kind) && n.inputs.every(visit);
    seen.set(id, ok);
    return ok;
  };
  return visit(node);
}

/** A text that two structurally equal conditions share (the same `if` in every tensor's update). */
function fingerprint(graph: Graph, node: number): string {
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
            : `${op.kind}:${n.dtype}`;
    const out = n.inputs.length ? `${head}(${n.inputs.map(text).join(",")})` : head;
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

/** The condition as a function of the step, evaluated in float64 (i32 nodes truncated). */
function compileCondition(graph: Graph, node: number): (step: number) => boolean {
  return (step) => {
    const values = new Map<number, number>();
    const value = (id: number): number => {
      const known = values.get(id);
      if (known !== undefined) return known;
      const n: Node = graph.node(id);
      const ins = n.inputs.map(value);
      const int = n.dtype === "i32";
      let v: number;
      switch (n.op.kind) {
        case "input":
          v = step;
          break;
        case "const":
          v = n.op.value;
          break;
        case "unary":
          v = unary(n.op.fn, ins[0]!);
          break;
        case "binary":
          v = binary(n.op.fn, ins[0]!, ins[1]!, int);
          break;
        case "where":
          v = ins[0] !== 0 ? ins[1]! : ins[2]!;
          break;
        default: // cast, reshape, expand, permute of a scalar
          v = ins[0]!;
      }
      if (int) v = Math.trunc(v);
      values.set(id, v);
      return v;
    };
    return value(node) !== 0;
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
    if (!this.found.some((c) => c.key === key))
      this.found.push({ key, holds: compileCondition(graph, node) });
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
