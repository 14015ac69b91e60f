// The CPU reference interpreter of the IR: the oracle for every pass and every kernel.
// Plain typed-array loops. In f32 mode every float result is stored in a Float32Array and every
// accumulation step is rounded with Math.fround, so each IR op is computed in f32; with
// `float64` every float tensor is a Float64Array instead. i32 tensors are always Int32Array.

import {
  numel,
  dependencies,
  strides,
  type DType,
  type Graph,
  type Node,
  type Op,
  type Shape,
  type UnaryFn,
  type BinaryFn,
} from "../compiler/ir.js";
import {
  erf,
  erfc,
  householderQ,
  mat,
  randomizedLeftSingularVectors,
  transpose,
} from "./linalg.js";
import { hash32, normalAt, uniformAt } from "./random.js";

import type { Tensor } from "../compiler/program.js";

export type { Tensor };
type Data = Tensor["data"];

const SQRT1_2 = Math.SQRT1_2;

function unaryFn(fn: UnaryFn): (x: number) => number {
  switch (fn) {
    case "neg":
      return (x) => -x;
    case "exp":
      return Math.exp;
    case "log":
      return Math.log;
    case "sqrt":
      return Math.sqrt;
    case "rsqrt":
      return (x) => 1 / Math.sqrt(x);
    case "abs":
      return Math.abs;
    case "sign":
      return (x) => (x > 0 ? 1 : x < 0 ? -1 : x); // keeps 0 and NaN
    case "tanh":
      return Math.tanh;
    case "sigmoid":
      return (x) => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));
    case "relu":
      return (x) => (x > 0 ? x : 0);
    case "gelu":
      return (x) => 0.5 * x * erfc(-x * SQRT1_2); // = 0.5·x·(1 + erf(x/√2)), exact erf form
    case "silu":
      return (x) => x * (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));
    case "erf":
      return erf;
    case "sin":
      return Math.sin;
    case "cos":
      return Math.cos;
    case "floor":
      return Math.floor;
    case "recip":
      return (x) => 1 / x;
    case "square":
      return (x) => x * x;
    case "not":
      return (x) => (x === 0 ? 1 : 0);
  }
}

function binaryFn(fn: BinaryFn, int: boolean): (a: number, b: number) => number {
  switch (fn) {
    case "add":
      return (a, b) => a + b;
    case "sub":
      return (a, b) => a - b;
    case "mul":
      return int ? Math.imul : (a, b) => a * b;
    case "div":
      return int ? (a, b) => Math.trunc(a / b) : (a, b) => a / b;
    case "pow":
      return Math.pow;
    case "max":
      return (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : a >= b ? a : b);
    case "min":
      return (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : a <= b ? a : b);
    case "lt":
      return (a, b) => (a < b ? 1 : 0);
    case "le":
      return (a, b) => (a <= b ? 1 : 0);
    case "gt":
      return (a, b) => (a > b ? 1 : 0);
    case "ge":
      return (a, b) => (a >= b ? 1 : 0);
    case "eq":
      return (a, b) => (a === b ? 1 : 0);
    case "ne":
      return (a, b) => (a !== b ? 1 : 0);
    case "and":
      return (a, b) => (a !== 0 && b !== 0 ? 1 : 0);
    case "or":
      return (a, b) => (a !== 0 || b !== 0 ? 1 : 0);
    case "mod":
      return (a, b) => a - b * Math.floor(a / b);
  }
}

/**
 * Visits every element of an output of `shape` in row-major order, passing the offset into an
 * input whose elements for output coordinates c lie at base + Σ c[k]·inStrides[k] (an odometer,
 * so no coordinates are allocated per element).
 */
function walk(
  shape: readonly number[],
  inStrides: readonly number[],
  base: number,
  visit: (o: number, i: number) => void,
): void {
  const rank = shape.length;
  const n = shape.reduce((a, b) => a * b, 1);
  if (n === 0) return;
  const c = new Array<number>(rank).fill(0);
  let i = base;
  for (let o = 0; o < n; o++) {
    visit(o, i);
    for (let k = rank - 1; k >= 0; k--) {
      c[k]!++;
      i += inStrides[k]!;
      if (c[k]! < shape[k]!) break;
      i -= inStrides[k]! * shape[k]!;
      c[k] = 0;
    }
  }
}

/** Row-major coordinates of flat index `i`. */
function coords(i: number, st: readonly number[]): number[] {
  return st.map((s) => {
    const c = Math.floor(i / s);
    i -= c * s;
    return c;
  });
}

function dot(c: readonly number[], st: readonly number[]): number {
  let o = 0;
  for (let k = 0; k < c.length; k++) o += c[k]! * st[k]!;
  return o;
}

export function evaluate(
  graph: Graph,
  feeds: Map<number, Tensor>,
  wanted: number[],
  options: { float64?: boolean } = {},
): Map<number, Tensor> {
  const f64 = options.float64 ?? false;
  const mode: Mode = { f64, R: f64 ? (x: number) => x : Math.fround, feeds };
  const values = new Map<number, Tensor>();
  for (const id of dependencies(graph, wanted)) {
    const node = graph.node(id);
    const ins = node.inputs.map((i) => values.get(i)!);
    const out = allocate(node.dtype, numel(node.shape), f64);
    // The table is keyed by op kind, so the entry for this node takes this node's op.
    const evaluateOp = opEvaluators[node.op.kind] as OpEvaluator<Op["kind"]>;
    evaluateOp({ ...mode, node, op: node.op, ins, out, n: out.length, int: node.dtype === "i32" });
    values.set(id, { shape: [...node.shape], data: out });
  }
  return new Map(wanted.map((id) => [id, values.get(id)!]));
}

function allocate(dtype: DType, n: number, f64: boolean): Data {
  return dtype === "i32" ? new Int32Array(n) : f64 ? new Float64Array(n) : new Float32Array(n);
}

/** The evaluation's settings, the same for every node. */
interface Mode {
  /** Floats are float64 throughout, not rounded to f32 after each step. */
  readonly f64: boolean;
  /** Rounds one float accumulation step to f32 (the identity with `float64`). */
  readonly R: (x: number) => number;
  readonly feeds: Map<number, Tensor>;
}

type OpOf<K extends Op["kind"]> = Extract<Op, { kind: K }>;

/** One node to evaluate: its op, its inputs' values and the array (zeroed) to fill. */
interface OpCall<O extends Op> extends Mode {
  readonly node: Node;
  readonly op: O;
  readonly ins: Tensor[];
  readonly out: Data;
  /** Elements of `out`. */
  readonly n: number;
  /** The node is i32: integer arithmetic, and values are truncated into it. */
  readonly int: boolean;
}

type OpEvaluator<K extends Op["kind"]> = (c: OpCall<OpOf<K>>) => void;

/** Per op kind, how a node's values are computed; a new op kind is a type error until it's here. */
const opEvaluators: { [K in Op["kind"]]: OpEvaluator<K> } = {
  input: evaluateInput,
  const: ({ op, out }) => out.fill(op.value),
  iota: ({ node, op, out, n }) => {
    const st = strides(node.shape);
    for (let i = 0; i < n; i++) out[i] = Math.floor(i / st[op.axis]!) % node.shape[op.axis]!;
  },
  random: ({ op, ins, out, n }) => {
    const seed = ins.length === 1 ? hash32(op.seed, ins[0]!.data[0]! >>> 0) : op.seed;
    for (let i = 0; i < n; i++)
      out[i] = op.dist === "uniform" ? uniformAt(seed, i) : normalAt(seed, i);
  },
  unary: ({ op, ins, out, n }) => {
    const f = unaryFn(op.fn);
    const x = ins[0]!.data;
    for (let i = 0; i < n; i++) out[i] = f(x[i]!);
  },
  binary: ({ op, ins, out, n, int }) => {
    const f = binaryFn(op.fn, int);
    const a = ins[0]!.data;
    const b = ins[1]!.data;
    for (let i = 0; i < n; i++) out[i] = f(a[i]!, b[i]!);
  },
  where: ({ ins, out, n }) => {
    const [c, a, b] = ins.map((t) => t.data) as [Data, Data, Data];
    for (let i = 0; i < n; i++) out[i] = c[i] !== 0 ? a[i]! : b[i]!;
  },
  cast: ({ ins, out, n, int }) => {
    const x = ins[0]!.data;
    for (let i = 0; i < n; i++) out[i] = int ? Math.trunc(x[i]!) : x[i]!;
  },
  reduce: evaluateReduce,
  matmul: evaluateMatmul,
  reshape: ({ ins, out }) => out.set(ins[0]!.data),
  permute: ({ node, op, ins, out }) => {
    const x = ins[0]!;
    const inSt = strides(x.shape);
    const xd = x.data;
    walk(
      node.shape,
      op.perm.map((a) => inSt[a]!),
      0,
      (o, i) => (out[o] = xd[i]!),
    );
  },
  expand: ({ node, ins, out }) => {
    const x = ins[0]!;
    const inSt = strides(x.shape).map((s, k) => (x.shape[k] === 1 ? 0 : s));
    const xd = x.data;
    walk(node.shape, inSt, 0, (o, i) => (out[o] = xd[i]!));
  },
  slice: ({ node, op, ins, out }) => {
    const x = ins[0]!;
    const inSt = strides(x.shape);
    const xd = x.data;
    const base = op.starts.reduce((acc, s0, k) => acc + s0 * inSt[k]!, 0);
    walk(
      node.shape,
      inSt.map((s, k) => s * op.steps[k]!),
      base,
      (o, i) => (out[o] = xd[i]!),
    );
  },
  pad: ({ node, op, ins, out }) => {
    const x = ins[0]!;
    const inSt = strides(x.shape);
    const outSt = strides(node.shape);
    for (let i = 0; i < x.data.length; i++) {
      const c = coords(i, inSt).map((v, k) => v + op.before[k]!);
      out[dot(c, outSt)] = x.data[i]!;
    }
  },
  gather: evaluateGather,
  scatterAdd: evaluateScatterAdd,
  svd: ({ op, ins, out }) => {
    const g = ins[0]!;
    const [m, k] = g.shape as [number, number];
    let a = mat(m, k, g.data);
    if (op.side === "right") a = transpose(a);
    let u = randomizedLeftSingularVectors(a, op.rank, op.iterations, op.oversample, op.seed);
    if (op.side === "right") u = transpose(u);
    out.set(u.data);
  },
  qr: ({ ins, out }) => {
    const x = ins[0]!;
    const [m, k] = x.shape as [number, number];
    out.set(householderQ(mat(m, k, x.data)).data);
  },
  topkMask: evaluateTopkMask,
  quantize: evaluateQuantize,
  quantScale: evaluateQuantize,
};

function evaluateInput({ node, op, feeds, out, n, int }: OpCall<OpOf<"input">>) {
  const feed = feeds.get(node.id);
  if (!feed)
    throw new Error(`interpreter: no feed for input ${op.role} "${op.name}" (node %${node.id})`);
  if (feed.data.length !== n)
    throw new Error(
      `interpreter: feed for "${op.name}" has ${feed.data.length} values, needs ${n}`,
    );
  for (let i = 0; i < n; i++) out[i] = int ? Math.trunc(feed.data[i]!) : feed.data[i]!;
}

function evaluateReduce({ node, op, ins, out, int, R }: OpCall<OpOf<"reduce">>) {
  const x = ins[0]!;
  const outSt = strides(node.shape).map((s, k) => (op.axes.includes(k) ? 0 : s));
  const isMax = op.fn === "max";
  const xd = x.data;
  // An i32 array cannot hold -Infinity (it would store 0): start from the smallest i32.
  out.fill(isMax ? (int ? -2147483648 : -Infinity) : 0);
  // Walk the input in order; each element lands on the output offset with reduced axes at 0.
  walk(x.shape, outSt, 0, (i, o) => {
    const v = xd[i]!;
    out[o] = isMax ? (Number.isNaN(v) || v > out[o]! ? v : out[o]!) : R(out[o]! + v);
  });
}

function evaluateMatmul({ node, op, ins, out, n, int, f64 }: OpCall<OpOf<"matmul">>) {
  const [a, b] = ins as [Tensor, Tensor];
  const shape = node.shape;
  const r = shape.length;
  const m = shape[r - 2]!;
  const p = shape[r - 1]!;
  const k = op.transA ? a.shape[r - 2]! : a.shape[r - 1]!;
  const batches = n / (m * p);
  const aCols = a.shape[r - 1]!;
  const bCols = b.shape[r - 1]!;
  // Element (i, l) of A and (l, j) of B as offsets, whichever way each is stored.
  const aI = op.transA ? 1 : aCols;
  const aL = op.transA ? aCols : 1;
  const bL = op.transB ? 1 : bCols;
  const bJ = op.transB ? bCols : 1;
  const ad = a.data;
  const bd = b.data;
  for (let bt = 0; bt < batches; bt++) {
    const ao = bt * a.shape[r - 2]! * aCols;
    const bo = bt * b.shape[r - 2]! * bCols;
    for (let i = 0; i < m; i++) {
      const arow = ao + i * aI;
      for (let j = 0; j < p; j++) {
        let acc = 0;
        let ai = arow;
        let bi = bo + j * bJ;
        if (int) {
          for (let l = 0; l < k; l++, ai += aL, bi += bL)
            acc = (acc + Math.imul(ad[ai]!, bd[bi]!)) | 0;
        } else if (f64) {
          for (let l = 0; l < k; l++, ai += aL, bi += bL) acc += ad[ai]! * bd[bi]!;
        } else {
          for (let l = 0; l < k; l++, ai += aL, bi += bL)
            acc = Math.fround(acc + Math.fround(ad[ai]! * bd[bi]!));
        }
        out[bt * m * p + i * p + j] = acc;
      }
    }
  }
}

/**
 * A gather met an id outside its table's rows (ids computed at run time; those from the data and
 * positions are checked when compiling). Both devices report it: the interpreter at once, the
 * WebGPU device from the kernels' error flag after the run (they clamp the row meanwhile).
 * `step` is the training step, when the run had one; cli/failures.ts makes it a diagnostic.
 */
export class IndexOutOfRange extends Error {
  step?: number;
  constructor(
    readonly id: number,
    readonly rows: number,
    /** The gather node's source line, `file:line`, when known. */
    readonly source: string | undefined,
  ) {
    super(
      `an index was outside its table: ${id} for a table of ${rows} rows${source ? ` (the gather at ${source})` : ""}`,
    );
  }

  /** The error with the step of the run that met it: the feed `step`, if there was one. */
  atStep(feeds: ReadonlyMap<string, Tensor>): this {
    const step = feeds.get("step")?.data[0];
    if (step !== undefined) this.step = step;
    return this;
  }
}

function evaluateGather({ node, ins, out }: OpCall<OpOf<"gather">>) {
  const [table, ids] = ins as [Tensor, Tensor];
  const rows = table.shape[0]!;
  const row = numel(table.shape.slice(1));
  const source = node.source ? `${node.source.file}:${node.source.line}` : undefined;
  ids.data.forEach((id, r) => {
    if (id < 0 || id >= rows) throw new IndexOutOfRange(id, rows, source);
    for (let j = 0; j < row; j++) out[r * row + j] = table.data[id * row + j]!;
  });
}

function evaluateScatterAdd({ node, ins, out, R }: OpCall<OpOf<"scatterAdd">>) {
  const [ids, vals] = ins as [Tensor, Tensor];
  const rows = node.shape[0]!;
  const row = numel(node.shape.slice(1));
  ids.data.forEach((id, r) => {
    if (id < 0 || id >= rows)
      throw new Error(`interpreter: scatterAdd id ${id} outside [0, ${rows})`);
    for (let j = 0; j < row; j++)
      out[id * row + j] = R(out[id * row + j]! + vals.data[r * row + j]!);
  });
}

function evaluateTopkMask({ ins, out, n }: OpCall<OpOf<"topkMask">>) {
  const [scores, kt] = ins as [Tensor, Tensor];
  const k = Math.max(0, Math.min(n, Math.round(kt.data[0]!)));
  const order = [...scores.data.keys()].sort((i, j) => {
    const d = scores.data[j]! - scores.data[i]!;
    return d !== 0 && !Number.isNaN(d) ? d : i - j;
  });
  for (const i of order.slice(0, k)) out[i] = 1;
}

/** `quantize` writes the integers, `quantScale` the per-group scales they were divided by. */
function evaluateQuantize({ op, ins, out, R }: OpCall<OpOf<"quantize" | "quantScale">>) {
  const w = ins[0]!;
  const [rows, cols] = w.shape as [number, number];
  if (cols % op.group !== 0)
    throw new Error(`interpreter: quantize group ${op.group} does not divide ${cols}`);
  const qmax = 2 ** (op.bits - 1) - 1;
  const groups = cols / op.group;
  for (let r = 0; r < rows; r++)
    for (let g = 0; g < groups; g++) {
      const base = r * cols + g * op.group;
      let amax = 0;
      for (let j = 0; j < op.group; j++) amax = Math.max(amax, Math.abs(w.data[base + j]!));
      const scale = amax === 0 ? 1 : R(amax / qmax);
      if (op.kind === "quantScale") {
        out[r * groups + g] = scale;
        continue;
      }
      for (let j = 0; j < op.group; j++) {
        const v = R(w.data[base + j]! / scale);
        const q = Math.sign(v) * Math.round(Math.abs(v)); // round half away from zero
        out[base + j] = Math.max(-qmax, Math.min(qmax, q));
      }
    }
}

/** A tensor from plain numbers (f32 unless `dtype` says i32). */
export function tensor(shape: Shape, values: ArrayLike<number>, dtype: DType = "f32"): Tensor {
  if (values.length !== numel(shape))
    throw new Error(`tensor: ${values.length} values for shape [${shape.join(", ")}]`);
  const data = dtype === "i32" ? Int32Array.from(values) : Float64Array.from(values);
  return { shape: [...shape], data };
}
