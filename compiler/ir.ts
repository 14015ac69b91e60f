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
  /** inputs [scores [n]]: 1 for the `k` largest entries (k is input 1, a scalar), else 0. */
  | { kind: "topkMask" }
  /** inputs [w [out, in]]: w rounded to `bits`-bit integers per group of `group` along the last axis (values, as f32). */
  | { kind: "quantize"; bits: number; group: number }
  /** inputs [w [out, in]]: the per-group scales that `quantize` used, [out, in / group]. */
  | { kind: "quantScale"; bits: number; group: number };

export interface SourceRef {
  /** The .lrk file and line the node came from, for comments in kernels and errors. */
  file: string;
  line: number;
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
}

export class Graph {
  readonly nodes: Node[] = [];

  add(
    op: Op,
    inputs: readonly number[],
    shape: Shape,
    dtype: DType = "f32",
    extra: { name?: string; source?: SourceRef } = {},
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
  let n = 1;
  for (const d of shape) n *= d;
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
  const seen = new Set<number>();
  const stack = [...wanted];
  while (stack.length) {
    const id = stack.pop()!;
    if (seen.has(id)) continue;
    seen.add(id);
    stack.push(...graph.node(id).inputs);
  }
  return [...seen].sort((a, b) => a - b);
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
  for (const n of graph.nodes) {
    if (only && !only.has(n.id)) continue;
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
