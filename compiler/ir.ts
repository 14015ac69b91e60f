// The tensor IR: one small SSA graph type that every stage after lowering reads and writes.
//
// A few primitive op families, as in tinygrad: elementwise (unary, binary, where), reduce,
// matmul, movement (reshape, permute, expand, slice, pad), gather/scatter, random, and a handful
// of intrinsics whose lowering is special (truncated SVD by randomized subspace iteration, top-k,
// quantize/dequantize). Elementwise ops take operands of identical shape: broadcasting is an
// explicit `expand`, so fusion and codegen never reason about it. Shapes are concrete numbers.
// Nothing here knows a model, a method or a layer by name.

export type DType = "f32" | "i32";
export type Shape = readonly number[];

export type UnaryFn =
  | "neg"
  | "exp"
  | "log"
  | "sqrt"
  | "rsqrt"
  | "abs"
  | "sign"
  | "tanh"
  | "sigmoid"
  | "relu"
  | "gelu"
  | "silu"
  | "erf"
  | "sin"
  | "cos"
  | "floor"
  | "recip"
  | "square"
  | "not";

export type BinaryFn =
  | "add"
  | "sub"
  | "mul"
  | "div"
  | "pow"
  | "max"
  | "min"
  | "lt"
  | "le"
  | "gt"
  | "ge"
  | "eq"
  | "ne"
  | "and"
  | "or"
  | "mod";

export type InputRole = "param" | "state" | "data" | "scalar";

export type Op =
  /** A tensor supplied from outside the graph: a parameter, optimizer state, a batch, a scalar. */
  | { kind: "input"; role: InputRole; name: string }
  /** `value` in every element. */
  | { kind: "const"; value: number }
  /** Element index along `axis` (0, 1, 2, …). */
  | { kind: "iota"; axis: number }
  | { kind: "unary"; fn: UnaryFn }
  | { kind: "binary"; fn: BinaryFn }
  /** inputs [cond, a, b]: a where cond ≠ 0, else b. */
  | { kind: "where" }
  | { kind: "cast" }
  /** Reduces `axes`, keeping them as size-1 dims. */
  | { kind: "reduce"; fn: "sum" | "max"; axes: number[] }
  /** inputs [a, b] with equal batch dims: [..., m, k] @ [..., k, n]; `transA`/`transB` read an operand with its last two axes swapped. */
  | { kind: "matmul"; transA: boolean; transB: boolean }
  | { kind: "reshape" }
  | { kind: "permute"; perm: number[] }
  /** Broadcasts size-1 dims to the node's shape. */
  | { kind: "expand" }
  /** Per axis: elements start, start+step, … ; the node's shape gives the counts. */
  | { kind: "slice"; starts: number[]; steps: number[] }
  /** Zero padding: `before[i]` zeros before axis i's data; the node's shape gives the total. */
  | { kind: "pad"; before: number[] }
  /** inputs [table [V, ...rest], ids (i32)]: out [...ids.shape, ...rest]. */
  | { kind: "gather" }
  /** inputs [ids (i32), values [...ids.shape, ...rest]]: out [V, ...rest] with values summed per id. */
  | { kind: "scatterAdd" }
  /**
   * Counter-based random numbers: the same seed gives the same tensor on every device. With one
   * input (a scalar, e.g. the step), the seed is hash32(seed, input): fresh numbers every step.
   */
  | { kind: "random"; dist: "uniform" | "normal"; seed: number }
  /** inputs [g [m, n]]: top-`rank` left singular vectors [m, rank] or right singular vectors as rows [rank, n]. */
  | {
      kind: "svd";
      side: "left" | "right";
      rank: number;
      iterations: number;
      oversample: number;
      seed: number;
    }
  /**
   * inputs [x [m, k]], m ≥ k: the thin Q [m, k] of x's Householder QR, with LAPACK's signs (as
   * runtime/linalg.ts householderQ); a zero column gets no reflection.
   */
  | { kind: "qr" }
  /** inputs [scores [n]]: 1 for the `k` largest entries (k is input 1, a scalar), else 0. */
  | { kind: "topkMask" }
  /** inputs [w [out, in]]: w rounded to `bits`-bit integers per group of `group` along the last axis (values, as f32). */
  | { kind: "quantize"; bits: number; group: number }
  /** inputs [w [out, in]]: the per-group scales that `quantize` used, [out, in / group]. */
  | { kind: "quantScale"; bits: number; group: number };

/**
 * An op as text for keys, one text per distinct op: its kind, then each field as `name=value`,
 * numbers exactly (±Infinity, NaN and −0 each their own, where JSON writes `null` and `0`). Ops
 * are flat records of numbers, strings, booleans and arrays of numbers; a string field holds a
 * name from the op's own vocabulary (`fn`, `role`, `dist`) or an input's name, not keyed here.
 */
export function opKey(op: Op): string {
  // `for…in` and no cache: value numbering asks this of every node it makes, and the compiler
  // runs unoptimized (cli/jit.ts), where JSON.stringify and a WeakMap cost twice as much
  let key: string = op.kind;
  for (const field in op) {
    if (field === "kind") continue;
    const value = (op as Record<string, unknown>)[field];
    if (value === undefined) continue;
    key += ` ${field}=${Array.isArray(value) ? value.map(exactText).join(",") : exactText(value)}`;
  }
  return key;
}

function exactText(value: unknown): string {
  return typeof value === "number" && Object.is(value, -0) ? "-0" : String(value);
}

/**
 * JSON.stringify's replacer that writes ±Infinity, NaN and −0 as themselves (JSON writes them as
 * `null` and `0`): for keys that must tell every value apart.
 */
export function exactNumbers(_key: string, value: unknown): unknown {
  if (typeof value !== "number" || (Number.isFinite(value) && !Object.is(value, -0))) return value;
  return Object.is(value, -0) ? "-0" : String(value);
}

export interface SourceRef {
  /** The .lrk file and line the node came from, for comments in kernels and errors. */
  file: string;
  line: number;
}

/**
 * What an i32 node's elements are known to lie in, both ends included: a batch field of token ids
 * is in [0, vocab − 1], an `iota` along an axis of n in [0, n − 1]. `what` says where the bound
 * comes from, for messages ("the data's vocabulary is 16").
 */
export interface ValueRange {
  min: number;
  max: number;
  what?: string;
}

export interface Node {
  readonly id: number;
  readonly op: Op;
  readonly inputs: readonly number[];
  readonly shape: Shape;
  readonly dtype: DType;
  /** A human name for printing (`blocks.0.attn.q.weight`, `loss`). */
  readonly name?: string;
  readonly source?: SourceRef;
  /** Known bounds of an input's values (data fields); `valueRange` derives the others'. */
  readonly range?: ValueRange;
}

export class Graph {
  readonly nodes: Node[] = [];

  add(
    op: Op,
    inputs: readonly number[],
    shape: Shape,
    dtype: DType = "f32",
    extra: { name?: string; source?: SourceRef; range?: ValueRange } = {},
  ): number {
    for (const i of inputs) {
      if (i < 0 || i >= this.nodes.length) throw new Error(`IR: input ${i} does not exist`);
    }
    if (shape.some((d) => !Number.isInteger(d) || d < 0))
      throw new Error(`IR: bad shape [${shape.join(", ")}]`);
    const id = this.nodes.length;
    this.nodes.push({ id, op, inputs: [...inputs], shape: [...shape], dtype, ...extra });
    return id;
  }

  node(id: number): Node {
    const n = this.nodes[id];
    if (!n) throw new Error(`IR: no node ${id}`);
    return n;
  }

  shape(id: number): Shape {
    return this.node(id).shape;
  }
}

export function numel(shape: Shape): number {
  // an index loop: fusion asks this millions of times, and the compiler runs unoptimized
  // (cli/jit.ts), where `for…of` allocates an iterator result per element
  let n = 1;
  for (let i = 0; i < shape.length; i++) n *= shape[i]!;
  return n;
}

export function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Row-major strides. */
export function strides(shape: Shape): number[] {
  const out = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    out[i] = s;
    s *= shape[i]!;
  }
  return out;
}

/** Nodes `wanted` depends on, themselves included, in increasing id (a topological order). */
export function dependencies(graph: Graph, wanted: readonly number[]): number[] {
  // A mark per node and one scan in id order: increasing without a sort (fusion asks this of
  // graphs of tens of thousands of nodes).
  const seen = new Uint8Array(graph.nodes.length);
  const stack = [...wanted];
  while (stack.length) {
    const id = stack.pop()!;
    const n = graph.node(id);
    if (seen[id]) continue;
    seen[id] = 1;
    for (const i of n.inputs) if (!seen[i]) stack.push(i);
  }
  const found: number[] = [];
  for (let id = 0; id < seen.length; id++) if (seen[id]) found.push(id);
  return found;
}

// ---------------------------------------------------------------------------- value ranges

const rangeCache = new WeakMap<Graph, Map<number, ValueRange | undefined>>();

/**
 * The bounds of an i32 node's values, where they follow from its inputs' known bounds through
 * simple ops (movement, where, min/max, add/sub/mul by bounded values, comparisons, a gather from
 * a bounded table): undefined where nothing is known. A gather checks its ids against the table's
 * rows with it (compiler/lower.ts).
 */
export function valueRange(graph: Graph, id: number): ValueRange | undefined {
  let cache = rangeCache.get(graph);
  if (!cache) rangeCache.set(graph, (cache = new Map()));
  if (cache.has(id)) return cache.get(id);
  const r = computeRange(graph, graph.node(id));
  cache.set(id, r);
  return r;
}

function computeRange(graph: Graph, node: Node): ValueRange | undefined {
  if (node.dtype !== "i32") return undefined;
  const op = node.op;
  const input = (i: number) => valueRange(graph, node.inputs[i]!);
  const span = (min: number, max: number): ValueRange | undefined =>
    Number.isFinite(min) && Number.isFinite(max) ? { min, max } : undefined;
  switch (op.kind) {
    case "input":
      return node.range;
    case "const":
      return Number.isInteger(op.value) ? { min: op.value, max: op.value } : undefined;
    case "iota": {
      const n = node.shape[op.axis]!;
      return { min: 0, max: n - 1, what: `the positions go up to ${n - 1}` };
    }
    case "reshape":
    case "permute":
    case "expand":
    case "slice":
      return input(0);
    case "pad": {
      const x = input(0);
      return x && span(Math.min(x.min, 0), Math.max(x.max, 0));
    }
    case "where": {
      const [a, b] = [input(1), input(2)];
      return a && b && span(Math.min(a.min, b.min), Math.max(a.max, b.max));
    }
    case "gather":
      return input(0);
    case "reduce":
      return op.fn === "max" ? input(0) : undefined;
    case "unary": {
      const x = input(0);
      if (op.fn === "not") return { min: 0, max: 1 };
      if (!x) return undefined;
      if (op.fn === "neg") return span(-x.max, -x.min);
      if (op.fn === "relu") return span(Math.max(0, x.min), Math.max(0, x.max));
      if (op.fn === "floor") return x;
      return undefined;
    }
    case "binary": {
      if (["lt", "le", "gt", "ge", "eq", "ne", "and", "or"].includes(op.fn))
        return { min: 0, max: 1 };
      const [a, b] = [input(0), input(1)];
      if (!a || !b) return undefined;
      switch (op.fn) {
        case "add":
          return span(a.min + b.min, a.max + b.max);
        case "sub":
          return span(a.min - b.max, a.max - b.min);
        case "mul": {
          const p = [a.min * b.min, a.min * b.max, a.max * b.min, a.max * b.max];
          return span(Math.min(...p), Math.max(...p));
        }
        case "max":
          return span(Math.max(a.min, b.min), Math.max(a.max, b.max));
        case "min":
          return span(Math.min(a.min, b.min), Math.min(a.max, b.max));
        case "mod":
          // the sign of the divisor (lrk_imod, the interpreter's floored modulo)
          if (b.min > 0) return span(0, b.max - 1);
          return undefined;
      }
      return undefined;
    }
    default:
      return undefined;
  }
}

// ---------------------------------------------------------------------------- printing

function opText(op: Op): string {
  switch (op.kind) {
    case "input":
      return `input.${op.role} "${op.name}"`;
    case "const":
      return `const ${op.value}`;
    case "iota":
      return `iota axis=${op.axis}`;
    case "unary":
    case "binary":
      return op.fn;
    case "reduce":
      return `reduce.${op.fn} axes=[${op.axes.join(",")}]`;
    case "matmul":
      return `matmul${op.transA ? " Aᵀ" : ""}${op.transB ? " Bᵀ" : ""}`;
    case "permute":
      return `permute [${op.perm.join(",")}]`;
    case "slice":
      return `slice starts=[${op.starts.join(",")}] steps=[${op.steps.join(",")}]`;
    case "pad":
      return `pad before=[${op.before.join(",")}]`;
    case "random":
      return `random.${op.dist} seed=${op.seed}`;
    case "svd":
      return `svd.${op.side} rank=${op.rank} iters=${op.iterations} oversample=${op.oversample} seed=${op.seed}`;
    case "quantize":
    case "quantScale":
      return `${op.kind} bits=${op.bits} group=${op.group}`;
    default:
      return op.kind;
  }
}

/** One line per node: `%7 = matmul Bᵀ %3, %5 : f32[32, 64]  // blocks.0.attn.q (tiny.lrk:12)`. */
export function printGraph(graph: Graph, only?: ReadonlySet<number>): string {
  const lines: string[] = [];
  // A kernel header prints a few nodes of a large graph: visit those, in node order.
  const ids = only ? [...only].sort((a, b) => a - b) : graph.nodes.map((n) => n.id);
  for (const id of ids) {
    const n = graph.node(id);
    const args = n.inputs.map((i) => `%${i}`).join(", ");
    const note = [n.name, n.source ? `${n.source.file}:${n.source.line}` : undefined]
      .filter(Boolean)
      .join(" ");
    lines.push(
      `%${n.id} = ${opText(n.op)}${args ? " " + args : ""} : ${n.dtype}[${n.shape.join(", ")}]${note ? `  // ${note}` : ""}`,
    );
  }
  return lines.join("\n");
}
