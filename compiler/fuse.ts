// Fusion: from a graph and the outputs an entry wants, an ordered list of kernel groups. Only IR
// patterns are looked at, never what a node stands for.
//
// Every needed node is either **materialized** (it gets a buffer: inputs, entry outputs, the result
// of every kernel) or **inlined** (recomputed, as an expression, inside each kernel that reads
// it). Kernels:
//  - map: one materialized elementwise/movement/const/iota/random/gather/cast/where node, with the
//    inlined subgraph below it; movement ops are index arithmetic on reads, never a copy;
//  - reduce: a reduce whose input expression is inlined (the prologue), and whose chain of
//    single-consumer elementwise successors of the same element order is fused as an epilogue;
//  - matmul: a matmul reading its operands in place (a swap of the last two axes is a transpose
//    flag, a reshape that only adds or drops size-1 dims or reshapes a contiguous buffer is free,
//    an expand of B over the batch folds the batch into A's rows), with the same kind of epilogue
//    chain (bias add, scale, residual add, activation); a batched Aᵀ·B summed over its batch (a
//    shared weight's gradient) is one matmul with the batch folded into k;
//    A matmul with a small inner dim (≤ LOW_RANK_MAX) whose value reaches another matmul's chain
//    through single-consumer elementwise nodes (a LoRA branch: x·Wᵀ + s·(t·Uᵀ)) is computed in
//    that chain (a short loop per element), and an elementwise operand of a matmul narrow on the
//    other side is a prologue, computed where it is loaded (a dropout mask, a scale);
//  - special: scatterAdd, svd, topkMask, quantize, quantScale, reading buffers;
//  - row: after the groups above are formed, a reduce over the trailing axes of contiguous rows
//    joins the reduce and map groups near it that read it or that it reads, when each row
//    reduce is read only at its own row (elementwise ops, reshapes, the expand of its size-1
//    axes over the row) and reductions over everything are read only after every row: one
//    kernel computes a row's reductions one after another, then its per-row and per-element
//    values (softmax, layer norm, cross-entropy and their backwards), see `fuseRows`.
// A map node is materialized when it is an entry output, when a kernel needs it as a buffer (a
// matmul operand that is not a view of one, a special kernel's input), or when kernels of two or
// more groups read it and it is not cheap to recompute (movement ops never are: their input
// decides). Then consecutive map groups of one element count whose later members read the earlier
// ones' outputs only at the same element merge into one kernel with several outputs (an
// optimizer's param and states). A group that would bind more storage buffers than the device
// allows is split by materializing the inlined node that gathers the most of them.
import { dependencies, numel, strides, type Graph, type Node } from "./ir.js";

export type GroupKind = "map" | "reduce" | "matmul" | "special" | "row";

/**
 * A row kernel's structure: the reduced elements of every row reduce are the last `len` elements
 * of a contiguous row; there are `rows` rows.
 */
export interface RowInfo {
  rows: number;
  len: number;
  /** Reduces over each row (trailing axes), in dependency order: one per-row scalar each. */
  reduces: number[];
  /** Reduces over everything (one value), after the rows: the kernel is then one workgroup. */
  totals: number[];
}

/** How a matmul reads one operand from a buffer. */
export interface MatmulOperand {
  /** The materialized node whose buffer is read. */
  node: number;
  /** The stored matrix is read with its last two axes swapped. */
  trans: boolean;
  /** Every batch reads the same matrix (an expand of the batch dims): batch stride 0. */
  broadcast: boolean;
}

export interface KernelGroup {
  kind: GroupKind;
  /** The node the kernel writes (an epilogue chain's last node for reduce and matmul). */
  output: number;
  /**
   * Every node the kernel writes, in order (`output` last). Several only for map kernels that
   * compute several outputs of one element count at the same element (an optimizer's param and
   * states): each thread computes them all, sharing common subexpressions.
   */
  outputs: number[];
  /** The reduce, matmul or special node; the output itself for map kernels. */
  anchor: number;
  /** Every node the kernel computes or reads in place, increasing. */
  nodes: number[];
  /** Materialized nodes (inputs included) the kernel reads, increasing. */
  reads: number[];
  /** The epilogue chain after the anchor (reduce, matmul), in order, ending at `output`. */
  epilogue: number[];
  a?: MatmulOperand;
  b?: MatmulOperand;
  /**
   * The matmul's batch is summed by the first epilogue node (a reduce over the batch axes): the
   * kernel is one matmul with the batch folded into k (A read transposed, B plain).
   */
  foldBatch?: boolean;
  /**
   * Low-rank matmuls (inner dim ≤ LOW_RANK_MAX) the epilogue computes itself, increasing: each
   * output element adds Σ_r T[i, r]·U[r, j] (times whatever scales it) in a short loop after the
   * main one, reading T and U in place.
   */
  lowRank?: number[];
  /**
   * Operands computed where they are loaded (an elementwise expression of buffers, inlined: the
   * operand node `a.node` / `b.node` has no buffer). Only on matmuls narrow on the other side.
   */
  prologue?: { a: boolean; b: boolean };
  /** For row kernels: the rows and the reductions over them. */
  row?: RowInfo;
}

export interface Fusion {
  groups: KernelGroup[];
  /** Nodes with a buffer: inputs the entry reads and the output of every group. */
  materialized: Set<number>;
  /** Every node the outputs depend on. */
  needed: number[];
}

export interface FuseOptions {
  /**
   * Which operands broadcast over the batch (an expand of the batch dims) a matmul reads in
   * place: "any" (the template takes a batch stride of 0), or "fold" (default: only B, with A
   * neither transposed nor broadcast, so the batch folds into A's rows: [b·m, k] @ [k, n]);
   * other broadcast operands are materialized.
   */
  broadcast?: "any" | "fold";
  /** Storage buffers one kernel may bind: bigger groups are split by materializing a node. */
  maxBindings?: number;
}

const MAP_KINDS = new Set([
  "const",
  "iota",
  "random",
  "unary",
  "binary",
  "where",
  "cast",
  "reshape",
  "permute",
  "expand",
  "slice",
  "pad",
  "gather",
]);
const SPECIAL_KINDS = new Set(["scatterAdd", "svd", "topkMask", "quantize", "quantScale"]);
const ELEMENTWISE = new Set(["unary", "binary", "where", "cast"]);

export function isMap(node: Node): boolean {
  return MAP_KINDS.has(node.op.kind);
}

/**
 * Arithmetic a node costs when inlined, counting its inlined subgraph (capped): movement and
 * leaves are free, transcendental and random ops dear. Under 4 means cheap to recompute.
 */
function costs(graph: Graph, needed: readonly number[]): Map<number, number> {
  const cost = new Map<number, number>();
  for (const id of needed) {
    const n = graph.node(id);
    let c: number;
    switch (n.op.kind) {
      case "const":
      case "iota":
        c = 0;
        break;
      case "input":
        c = 0;
        break;
      case "reshape":
      case "permute":
      case "expand":
      case "slice":
      case "pad":
        c = cost.get(n.inputs[0]!)!;
        break;
      case "unary":
      case "binary":
      case "where":
      case "cast":
        c = 1 + n.inputs.reduce((s, i) => s + cost.get(i)!, 0);
        break;
      case "random":
      case "gather":
        c = 8;
        break;
      default:
        c = 0; // reduce, matmul, special: a buffer read
    }
    cost.set(id, Math.min(c, 100));
  }
  return cost;
}

/** Row-major (contiguous) strides, ignoring size-1 dims. */
function isContiguous(shape: readonly number[], st: readonly number[]): boolean {
  const want = strides(shape);
  return shape.every((d, i) => d === 1 || st[i] === want[i]);
}

/**
 * How a matmul reads operand `id` (rows×cols in its last two axes, after the op's own transpose
 * flag) if it is a view (reshape, permute, expand) of another node's buffer; undefined if not.
 */
function operandView(
  graph: Graph,
  id: number,
  opTrans: boolean,
  allowBroadcast: boolean,
  hasBuffer: (id: number) => boolean,
): MatmulOperand | undefined {
  // Walk down to the first node that is not a view op (or already has a buffer).
  const chain: Node[] = [];
  let src = graph.node(id);
  while (["reshape", "permute", "expand"].includes(src.op.kind) && !hasBuffer(src.id)) {
    chain.push(src);
    src = graph.node(src.inputs[0]!);
  }
  // Strides of the view relative to the source's contiguous buffer, applied bottom-up.
  let shape: number[] = [...src.shape];
  let st = strides(shape);
  for (const n of chain.reverse()) {
    const op = n.op;
    if (op.kind === "reshape") {
      const big = (s: readonly number[]) => s.filter((d) => d !== 1);
      const from = big(shape);
      const to = big(n.shape);
      if (from.length === to.length && from.every((d, i) => d === to[i])) {
        // Only size-1 dims come or go: the other dims keep their strides.
        const kept = st.filter((_, k) => shape[k] !== 1);
        let j = 0;
        st = n.shape.map((d) => (d === 1 ? 0 : kept[j++]!));
      } else {
        if (!isContiguous(shape, st)) return undefined;
        st = strides(n.shape);
      }
      shape = [...n.shape];
    } else if (op.kind === "permute") {
      shape = op.perm.map((a) => shape[a]!);
      st = op.perm.map((a) => st[a]!);
    } else {
      st = st.map((s, k) => (shape[k] === 1 && n.shape[k] !== 1 ? 0 : s));
      shape = [...n.shape];
    }
  }
  const r = shape.length;
  if (r < 2) return undefined;
  const rows = shape[r - 2]!;
  const cols = shape[r - 1]!;
  let trans: boolean;
  const rowMajor = (rows === 1 || st[r - 2] === cols) && (cols === 1 || st[r - 1] === 1);
  const colMajor = (rows === 1 || st[r - 2] === 1) && (cols === 1 || st[r - 1] === rows);
  if (rowMajor) trans = false;
  else if (colMajor) trans = true;
  else return undefined;
  const batchShape = shape.slice(0, r - 2);
  const batchSt = st.slice(0, r - 2);
  const broadcast = batchShape.some((d, k) => d !== 1 && batchSt[k] === 0);
  if (broadcast) {
    if (!allowBroadcast || batchShape.some((d, k) => d !== 1 && batchSt[k] !== 0)) return undefined;
  } else {
    const want = strides([...batchShape, rows, cols]).slice(0, r - 2);
    if (batchShape.some((d, k) => d !== 1 && batchSt[k] !== want[k])) return undefined;
  }
  return { node: src.id, trans: trans !== opTrans, broadcast };
}

/** Storage buffers a group's kernel binds (its output, the buffers it reads). */
function bindingCount(g: KernelGroup): number {
  return g.reads.length + g.outputs.length;
}

/**
 * Joins consecutive map groups of the same element count into one kernel with several outputs,
 * when the later ones read the earlier ones' outputs only at the element being computed (through
 * elementwise ops and reshapes): the thread that writes an element has just computed it.
 */
function mergeMaps(
  graph: Graph,
  groups: KernelGroup[],
  materialized: ReadonlySet<number>,
  max: number,
): KernelGroup[] {
  const out: KernelGroup[] = [];
  const sameElement = (g: KernelGroup, produced: ReadonlySet<number>): boolean => {
    let ok = true;
    const seen = new Set<string>();
    const walk = (x: number, identity: boolean) => {
      if (!ok || seen.has(`${x}:${identity}`)) return;
      seen.add(`${x}:${identity}`);
      if (x !== g.output && materialized.has(x)) {
        if (produced.has(x) && !identity) ok = false;
        return;
      }
      const n = graph.node(x);
      const keeps = ELEMENTWISE.has(n.op.kind) || n.op.kind === "reshape";
      for (const i of n.inputs) walk(i, identity && keeps);
    };
    walk(g.output, true);
    return ok;
  };
  for (const g of groups) {
    const last = out[out.length - 1];
    if (
      last?.kind === "map" &&
      g.kind === "map" &&
      numel(graph.shape(last.output)) === numel(graph.shape(g.output))
    ) {
      const produced = new Set(last.outputs);
      const reads = [...new Set([...last.reads, ...g.reads])].filter((r) => !produced.has(r));
      if (reads.length + last.outputs.length + 1 <= max && sameElement(g, produced)) {
        out[out.length - 1] = {
          ...last,
          output: g.output,
          anchor: g.anchor,
          outputs: [...last.outputs, g.output],
          nodes: [...new Set([...last.nodes, ...g.nodes])].sort((p, q) => p - q),
          reads: reads.sort((p, q) => p - q),
        };
        continue;
      }
    }
    out.push(g);
  }
  return out;
}

/** Inner dims up to this make a matmul a low-rank branch, recomputed inside an epilogue. */
export const LOW_RANK_MAX = 64;
/** The most arithmetic (see `costs`) a matmul prologue may recompute per operand load. */
const PROLOGUE_COST = 24;
/** Elementwise nodes allowed between a low-rank matmul and the epilogue chain that reads it. */
const LOW_RANK_PATH = 4;

interface Chains {
  /** anchor → its epilogue chain */
  chainOf: Map<number, number[]>;
  /** chain node → its anchor */
  inChain: Map<number, number>;
  foldK: Map<number, [MatmulOperand, MatmulOperand]>;
}

/** The inner (summed) dim of matmul `id`. */
function innerDim(graph: Graph, id: number): number {
  const n = graph.node(id);
  const a = graph.node(n.inputs[0]!);
  const r = a.shape.length;
  return (n.op as { transA: boolean }).transA ? a.shape[r - 2]! : a.shape[r - 1]!;
}

/** An f32 matmul whose inner dim is at most LOW_RANK_MAX. */
function lowRankShape(graph: Graph, id: number): boolean {
  const n = graph.node(id);
  return n.op.kind === "matmul" && n.dtype === "f32" && innerDim(graph, id) <= LOW_RANK_MAX;
}

/**
 * The matmul whose epilogue chain reads low-rank candidate `id`: `id`'s value must reach a node
 * of that chain through single-consumer elementwise nodes (or reshapes) of the same element count
 * that are not outputs. Undefined if there is none.
 */
function lowRankTarget(
  graph: Graph,
  id: number,
  consumers: ReadonlyMap<number, number[]>,
  isOutput: ReadonlySet<number>,
  chains: Chains,
): number | undefined {
  const count = numel(graph.shape(id));
  let cur = id;
  for (let step = 0; step <= LOW_RANK_PATH; step++) {
    const cs = consumers.get(cur)!;
    if (cs.length !== 1) return undefined;
    const c = graph.node(cs[0]!);
    if (numel(c.shape) !== count || c.dtype !== "f32") return undefined;
    const anchor = chains.inChain.get(c.id);
    if (anchor !== undefined)
      return graph.node(anchor).op.kind === "matmul" && anchor !== id ? anchor : undefined;
    if (!(ELEMENTWISE.has(c.op.kind) || c.op.kind === "reshape") || isOutput.has(c.id))
      return undefined;
    cur = c.id;
  }
  return undefined;
}

export function fuse(graph: Graph, outputs: readonly number[], options: FuseOptions = {}): Fusion {
  const max = options.maxBindings ?? Infinity;
  const forced = new Set<number>();
  for (;;) {
    const f = fuseOnce(graph, outputs, options, forced);
    const over = f.groups.find((g) => g.kind !== "special" && bindingCount(g) > max);
    if (!over) return f;
    // Materialize the inlined node below it that gathers the most buffers that still fit.
    const below = new Map<number, Set<number>>();
    const leaves = (x: number): Set<number> => {
      const known = below.get(x);
      if (known) return known;
      const out = new Set<number>();
      for (const i of graph.node(x).inputs) {
        if (f.materialized.has(i)) out.add(i);
        else for (const l of leaves(i)) out.add(l);
      }
      below.set(x, out);
      return out;
    };
    let best: number | undefined;
    let bestSize = 1;
    for (const x of over.nodes) {
      if (x === over.output || x === over.anchor || f.materialized.has(x)) continue;
      if (!isMap(graph.node(x)) && !ELEMENTWISE.has(graph.node(x).op.kind)) continue;
      const size = leaves(x).size;
      if (size + 1 <= max && size > bestSize) [best, bestSize] = [x, size];
    }
    if (best === undefined)
      throw new Error(
        `fuse: the kernel for %${over.output} reads ${over.reads.length} buffers, over the device's ${max - 1}, and cannot be split`,
      );
    forced.add(best);
  }
}

function fuseOnce(
  graph: Graph,
  outputs: readonly number[],
  options: FuseOptions,
  forced: ReadonlySet<number>,
): Fusion {
  const broadcastMode = options.broadcast ?? "fold";
  const needed = dependencies(graph, outputs);
  const neededSet = new Set(needed);
  const isOutput = new Set([...outputs, ...forced]);
  const consumers = new Map<number, number[]>(needed.map((id) => [id, []]));
  for (const id of needed)
    for (const i of new Set(graph.node(id).inputs)) consumers.get(i)!.push(id);
  const cost = costs(graph, needed);

  // Epilogue chains: from a reduce or matmul, follow the single consumer while it is elementwise
  // (or a reshape) with the same element order and the anchor's value feeds it only through the
  // chain.
  function buildChains(skip: ReadonlySet<number>): Chains {
    const chainOf = new Map<number, number[]>(); // anchor → chain
    const inChain = new Map<number, number>(); // chain node → anchor
    const chainEnd = (x: number) => {
      const anchor = inChain.get(x);
      return anchor !== undefined && chainOf.get(anchor)!.at(-1) === x;
    };
    // Batched Aᵀ·B summed over the batch (a weight's gradient when the weight is broadcast over
    // the batch): one matmul with the batch folded into k, [b·k, m]ᵀ @ [b·k, n].
    const foldK = new Map<number, [MatmulOperand, MatmulOperand]>();
    for (const id of needed) {
      const n = graph.node(id);
      if (n.op.kind !== "reduce" && n.op.kind !== "matmul") continue;
      if (inChain.has(id)) continue; // a batch sum folded into a matmul
      if (skip.has(id)) continue; // a low-rank branch, computed in another matmul's epilogue
      const chain: number[] = [];
      let cur = id;
      let count = numel(n.shape);
      if (n.op.kind === "matmul" && n.dtype === "f32" && n.shape.length >= 3 && !isOutput.has(id)) {
        const cs = consumers.get(id)!;
        const r = cs.length === 1 ? graph.node(cs[0]!) : undefined;
        const batchAxes = n.shape.slice(0, -2).map((_, i) => i);
        if (
          r?.op.kind === "reduce" &&
          r.op.fn === "sum" &&
          r.op.axes.length === batchAxes.length &&
          r.op.axes.every((a, i) => a === batchAxes[i])
        ) {
          const va = operandView(graph, n.inputs[0]!, n.op.transA, false, chainEnd);
          const vb = operandView(graph, n.inputs[1]!, n.op.transB, false, chainEnd);
          if (va?.trans && vb && !vb.trans) {
            foldK.set(id, [va, vb]);
            chain.push(r.id);
            inChain.set(r.id, id);
            cur = r.id;
            count = numel(r.shape);
          }
        }
      }
      for (;;) {
        if (isOutput.has(cur)) break;
        const cs = consumers.get(cur)!;
        if (cs.length !== 1) break;
        const c = graph.node(cs[0]!);
        if (!(ELEMENTWISE.has(c.op.kind) || c.op.kind === "reshape") || numel(c.shape) !== count)
          break;
        if (inChain.has(c.id) || c.dtype !== n.dtype) break; // another anchor's chain took it
        chain.push(c.id);
        inChain.set(c.id, id);
        cur = c.id;
      }
      chainOf.set(id, chain);
    }
    return { chainOf, inChain, foldK };
  }

  // A matmul with a small inner dim whose value reaches another matmul's epilogue chain through
  // single-consumer elementwise nodes (a low-rank branch: add(x·W, s·(t·U))) is no kernel of its
  // own: the chain recomputes it as a short loop over the inner dim per output element. It builds
  // no chain of its own, so the base matmul's chain can reach the add; a candidate whose path ends
  // elsewhere is dropped and the chains are rebuilt.
  // Candidates one at a time, in order: accepted when, with it (and those accepted before) building
  // no chain, its value reaches the chain of a matmul with a larger inner dim. Then the accepted
  // set is checked as a whole (dropping one lets it build a chain again) until it is stable.
  const target = (id: number, c: Chains) => {
    const m = lowRankTarget(graph, id, consumers, isOutput, c);
    return m !== undefined && innerDim(graph, m) > innerDim(graph, id) ? m : undefined;
  };
  let lowRank = new Set<number>();
  for (const id of needed) {
    if (!lowRankShape(graph, id) || isOutput.has(id)) continue;
    const cs = consumers.get(id)!;
    const c = cs.length === 1 ? graph.node(cs[0]!) : undefined;
    if (!c || !(ELEMENTWISE.has(c.op.kind) || c.op.kind === "reshape")) continue;
    const trial = new Set([...lowRank, id]);
    if (target(id, buildChains(trial)) !== undefined) lowRank = trial;
  }
  let chains = buildChains(lowRank);
  for (;;) {
    const keep = new Set([...lowRank].filter((id) => target(id, chains) !== undefined));
    if (keep.size === lowRank.size) break;
    lowRank = keep;
    chains = buildChains(lowRank);
  }
  const { chainOf, inChain, foldK } = chains;
  const chainEnd = (x: number) => {
    const anchor = inChain.get(x);
    return anchor !== undefined && chainOf.get(anchor)!.at(-1) === x;
  };

  // Decide materialization from the last node down: each node's consumers are decided first.
  const materialized = new Set<number>();
  const demanded = new Set<number>();
  const groupOf = new Map<number, number>(); // materialized node or chain node → its group's key
  const groupsReading = new Map<number, Set<number>>(); // inlined node → keys of groups that inline it
  const operands = new Map<number, [MatmulOperand, MatmulOperand]>();
  const prologueReaders = new Map<number, Set<number>>(); // operand → matmuls that may inline it

  const keyOfConsumer = (c: number): Set<number> => {
    if (groupOf.has(c)) return new Set([groupOf.get(c)!]);
    return groupsReading.get(c) ?? new Set();
  };

  for (let k = needed.length - 1; k >= 0; k--) {
    const id = needed[k]!;
    const n = graph.node(id);
    const kind = n.op.kind;
    if (inChain.has(id)) {
      const anchor = inChain.get(id)!;
      const chain = chainOf.get(anchor)!;
      groupOf.set(id, anchor);
      if (chain[chain.length - 1] === id) materialized.add(id);
      continue;
    }
    if (kind === "input") {
      materialized.add(id);
      continue;
    }
    if (lowRank.has(id)) {
      // Computed inside the epilogue that reads it: its operands are buffers (or views of them).
      const readers = new Set<number>();
      for (const c of consumers.get(id)!) for (const g of keyOfConsumer(c)) readers.add(g);
      groupsReading.set(id, readers);
      const op = n.op as { transA: boolean; transB: boolean };
      for (const [operand, trans] of [
        [n.inputs[0]!, op.transA],
        [n.inputs[1]!, op.transB],
      ] as const) {
        const v = operandView(graph, operand, trans, true, chainEnd);
        const src = v ? v.node : operand;
        if (graph.node(src).op.kind !== "input") demanded.add(src);
      }
      continue;
    }
    if (kind === "reduce" || kind === "matmul" || SPECIAL_KINDS.has(kind)) {
      groupOf.set(id, id);
      if (chainOf.get(id)?.length === 0 || !chainOf.has(id)) materialized.add(id);
      const folded = foldK.get(id);
      // An operand that is a cheap elementwise expression (not a view of a buffer) is read as a
      // prologue when the matmul is narrow on the other side (n for A, m for B): each element is
      // recomputed at most LOW_RANK_MAX times, and no kernel writes it (a dropout mask or a scale
      // on a low-rank branch's input).
      const r = n.shape.length;
      const other = [n.shape[r - 1]!, n.shape[r - 2]!];
      const use = (v: MatmulOperand, side: 0 | 1) => {
        const src = graph.node(v.node);
        if (src.op.kind === "input") return;
        if (
          other[side]! <= LOW_RANK_MAX &&
          ELEMENTWISE.has(src.op.kind) &&
          src.dtype === "f32" &&
          !isOutput.has(src.id) &&
          cost.get(src.id)! <= PROLOGUE_COST
        ) {
          const keys = prologueReaders.get(src.id) ?? new Set<number>();
          prologueReaders.set(src.id, keys.add(id));
        } else demanded.add(src.id);
      };
      if (folded) {
        folded.forEach((v, side) => use(v, side as 0 | 1));
        operands.set(id, folded);
      } else if (kind === "matmul") {
        const op = n.op as { transA: boolean; transB: boolean };
        const integer = n.dtype === "i32";
        const view = (operand: number, trans: boolean) =>
          integer ? undefined : operandView(graph, operand, trans, true, chainEnd);
        let va = view(n.inputs[0]!, op.transA);
        let vb = view(n.inputs[1]!, op.transB);
        const pick = (
          operand: number,
          trans: boolean,
          side: 0 | 1,
          v?: MatmulOperand,
        ): MatmulOperand => {
          if (integer) {
            demanded.add(operand);
            return { node: operand, trans, broadcast: false };
          }
          const picked = v ?? { node: operand, trans, broadcast: false };
          use(picked, side);
          return picked;
        };
        if (broadcastMode === "fold" && va?.broadcast) va = undefined;
        const pa = pick(n.inputs[0]!, op.transA, 0, va);
        if (broadcastMode === "fold" && vb?.broadcast && (pa.trans || pa.broadcast)) vb = undefined;
        operands.set(id, [pa, pick(n.inputs[1]!, op.transB, 1, vb)]);
      } else if (SPECIAL_KINDS.has(kind)) {
        for (const i of n.inputs) demanded.add(i);
      }
      continue;
    }
    // A map node.
    const readers = new Set<number>();
    for (const c of consumers.get(id)!) for (const g of keyOfConsumer(c)) readers.add(g);
    // A movement op is index arithmetic: never worth a buffer of its own; its input decides.
    const movement = ["reshape", "permute", "expand", "slice", "pad"].includes(kind);
    const cheap = movement || (cost.get(id)! < 4 && kind !== "random" && kind !== "gather");
    // Read only as matmul prologues: recomputed in each (the matmuls are narrow).
    const viaPrologue = prologueReaders.get(id);
    const prologueOnly = viaPrologue !== undefined && [...readers].every((g) => viaPrologue.has(g));
    if (isOutput.has(id) || demanded.has(id) || (readers.size > 1 && !cheap && !prologueOnly)) {
      materialized.add(id);
      groupOf.set(id, id);
    } else {
      groupsReading.set(id, readers);
    }
  }

  // Build the groups in the order of their output nodes (a topological order).
  const groups: KernelGroup[] = [];
  for (const id of needed) {
    if (!materialized.has(id)) continue;
    const n = graph.node(id);
    if (n.op.kind === "input") continue;
    const anchor = inChain.get(id) ?? id;
    const a = graph.node(anchor);
    const kind: GroupKind = isMap(a)
      ? "map"
      : a.op.kind === "reduce"
        ? "reduce"
        : a.op.kind === "matmul"
          ? "matmul"
          : "special";
    const epilogue = kind === "reduce" || kind === "matmul" ? chainOf.get(anchor)! : [];
    const nodes = new Set<number>([anchor, ...epilogue]);
    const reads = new Set<number>();
    // Everything inlined below a node, stopping at buffers.
    const visited = new Set<number>();
    const visit = (x: number, top: boolean) => {
      if (!top && materialized.has(x)) {
        reads.add(x);
        return;
      }
      if (visited.has(x)) return;
      visited.add(x);
      nodes.add(x);
      for (const i of graph.node(x).inputs) visit(i, false);
    };
    if (kind === "map") visit(anchor, true);
    else if (kind === "reduce") visit(a.inputs[0]!, false);
    else if (kind === "matmul") {
      const [oa, ob] = operands.get(anchor)!;
      for (const [operand, view] of [
        [a.inputs[0]!, oa],
        [a.inputs[1]!, ob],
      ] as const) {
        if (materialized.has(view.node)) reads.add(view.node);
        else visit(view.node, false); // a prologue
        for (let x = operand; x !== view.node; x = graph.node(x).inputs[0]!) nodes.add(x);
      }
    } else for (const i of a.inputs) reads.add(i);
    let prev = anchor;
    for (const c of epilogue) {
      for (const i of graph.node(c).inputs) if (i !== prev) visit(i, false);
      prev = c;
    }
    const ops = operands.get(anchor);
    const prologue = ops && {
      a: !materialized.has(ops[0].node),
      b: !materialized.has(ops[1].node),
    };
    groups.push({
      kind,
      output: id,
      outputs: [id],
      anchor,
      nodes: [...nodes]
        .filter((x) => !materialized.has(x) || x === id || x === anchor)
        .sort((p, q) => p - q),
      reads: [...reads].sort((p, q) => p - q),
      epilogue,
      ...(ops ? { a: ops[0], b: ops[1] } : {}),
      ...(foldK.has(anchor) ? { foldBatch: true } : {}),
      ...(prologue && (prologue.a || prologue.b) ? { prologue } : {}),
      ...(kind === "matmul" && [...nodes].some((x) => lowRank.has(x))
        ? { lowRank: [...nodes].filter((x) => lowRank.has(x)).sort((p, q) => p - q) }
        : {}),
    });
  }
  for (const g of groups) if (!neededSet.has(g.output)) throw new Error("fuse: stray group");
  const merged = mergeMaps(graph, groups, materialized, options.maxBindings ?? Infinity);
  return {
    groups: fuseRows(graph, merged, materialized, isOutput, options.maxBindings ?? Infinity),
    materialized,
    needed,
  };
}

// ---------------------------------------------------------------------------- row kernels

/** Groups before and after a row kernel's members that may join it. */
const ROW_WINDOW = 12;
/** A row kernel with reductions over everything runs as one workgroup: at most this many elements. */
export const ROW_TOTAL_MAX = 1 << 18;

/** (rows, len) of a reduce group over trailing axes (f32); undefined for other groups. */
function rowShape(graph: Graph, g: KernelGroup): { rows: number; len: number } | undefined {
  if (g.kind !== "reduce") return undefined;
  const red = graph.node(g.anchor);
  if (red.op.kind !== "reduce" || red.dtype !== "f32") return undefined;
  const input = graph.node(red.inputs[0]!);
  const r = input.shape.length;
  const axes = red.op.axes;
  if (!axes.every((a, i) => a === r - axes.length + i)) return undefined;
  const rows = numel(red.shape);
  const len = numel(input.shape) / Math.max(rows, 1);
  if (rows === 0 || len === 0) return undefined;
  return { rows, len };
}

/**
 * How a row kernel indexes a node: at an element of the current row (`E`, flat index row·len + e),
 * at the row (`R`, flat index row), at the single element of a scalar (`S`, inside the rows; `T`
 * after them, where the totals are known), or anywhere (`X`).
 */
type RowMode = "E" | "R" | "S" | "T" | "X";

/**
 * The row structure of a candidate set of groups, or undefined if one kernel cannot compute it:
 * every read of a row reduce must be at the current row (through elementwise ops, reshapes and
 * the expand of its size-1 axes over the row), every read of a total after all rows.
 */
function rowStructure(
  graph: Graph,
  members: readonly KernelGroup[],
  produced: ReadonlySet<number>,
): RowInfo | undefined {
  let shape: { rows: number; len: number } | undefined;
  for (const g of members) {
    const s = rowShape(graph, g);
    if (s && (numel(graph.shape(g.anchor)) !== 1 || !shape)) shape = s;
    if (s && numel(graph.shape(g.anchor)) !== 1) break;
  }
  if (!shape) return undefined;
  const { rows, len } = shape;
  const reduces: number[] = [];
  const totals: number[] = [];
  const roots: [number, RowMode][] = [];
  for (const g of members) {
    if (g.kind === "reduce") {
      const red = graph.node(g.anchor);
      if (red.op.kind !== "reduce" || red.dtype !== "f32") return undefined;
      const inCount = numel(graph.shape(red.inputs[0]!));
      const s = rowShape(graph, g);
      if (s && s.rows === rows && s.len === len) {
        reduces.push(g.anchor);
        roots.push([red.inputs[0]!, "E"]);
        for (const c of g.epilogue) roots.push([c, "R"]);
      } else if (
        numel(red.shape) === 1 &&
        rows > 1 &&
        (inCount === rows * len || inCount === rows)
      ) {
        totals.push(g.anchor);
        roots.push([red.inputs[0]!, inCount === rows * len ? "E" : "R"]);
        for (const c of g.epilogue) roots.push([c, "T"]);
      } else return undefined;
    } else if (g.kind === "map") {
      for (const o of g.outputs) {
        const count = numel(graph.shape(o));
        if (count === rows * len) roots.push([o, "E"]);
        else if (count === rows) roots.push([o, "R"]);
        else if (count === 1 && rows > 1)
          roots.push([o, "T"]); // after the totals
        else return undefined;
      }
    } else return undefined;
  }
  if (totals.length && rows * len > ROW_TOTAL_MAX) return undefined;
  if (!totals.length && roots.some(([, mode]) => mode === "T")) return undefined;
  const computed = new Set<number>(produced);
  for (const g of members) for (const x of g.nodes) computed.add(x);
  const rowSet = new Set(reduces);
  const totalSet = new Set(totals);
  const seen = new Set<string>();
  const ok = (x: number, mode: RowMode): boolean => {
    const key = `${x}:${mode}`;
    if (seen.has(key)) return true;
    seen.add(key);
    if (rowSet.has(x)) return mode === "R";
    if (totalSet.has(x)) return mode === "T";
    if (!computed.has(x)) return true; // a buffer
    const n = graph.node(x);
    if (n.op.kind === "input") return true;
    const k = n.op.kind;
    if (ELEMENTWISE.has(k) || k === "reshape")
      return n.inputs.every((i) => ok(i, numel(graph.shape(i)) === numel(n.shape) ? mode : "X"));
    if (k === "expand") {
      const a = graph.shape(n.inputs[0]!);
      const b = n.shape;
      let next: RowMode = "X";
      if (numel(a) === 1) next = mode === "T" ? "T" : "S";
      else if (mode === "E") {
        for (let cut = 0; cut <= b.length; cut++) {
          if (numel(b.slice(cut)) !== len) continue;
          if (a.slice(cut).every((d) => d === 1) && a.slice(0, cut).every((d, i) => d === b[i]))
            next = "R";
        }
      }
      return ok(n.inputs[0]!, next);
    }
    if (k === "reduce" || k === "matmul" || SPECIAL_KINDS.has(k)) return false;
    return n.inputs.every((i) => ok(i, "X"));
  };
  for (const [x, mode] of roots) if (!ok(x, mode)) return undefined;
  // Row reduces in dependency (node) order; totals after them.
  return {
    rows,
    len,
    reduces: reduces.sort((p, q) => p - q),
    totals: totals.sort((p, q) => p - q),
  };
}

/**
 * Row kernels: a reduce over the trailing axes of contiguous rows, with the reduces of the same
 * rows that read it (or that it reads), the elementwise groups between and after them, and
 * reductions over everything of values per row or per element, become one kernel when every row
 * reduce is read only at its own row (max → Σ exp(x − max) → exp(x − max)/Σ; mean → variance →
 * normalize; a row sum of the log-softmax picked by a one-hot, summed over all rows). Groups join
 * from a window around the first reduce when they read a member's output or a member reads
 * theirs, the kernel fits the device's bindings, and merging makes no cycle. The merged kernel
 * writes only the values read outside it (or wanted by the entry); the others stay in registers.
 */
function fuseRows(
  graph: Graph,
  groups: readonly KernelGroup[],
  materialized: Set<number>,
  isOutput: ReadonlySet<number>,
  max: number,
): KernelGroup[] {
  const n = groups.length;
  const unit = groups.map((_, i) => i); // group → the unit (cluster) it belongs to
  const members = new Map<number, number[]>(groups.map((_, i) => [i, [i]]));
  const readers = new Map<number, number[]>(); // node → indices of the groups that read it
  groups.forEach((g, j) => g.reads.forEach((r) => readers.set(r, [...(readers.get(r) ?? []), j])));
  const succ = (u: number): Set<number> => {
    const out = new Set<number>();
    for (const gi of members.get(u)!)
      for (const o of groups[gi]!.outputs) for (const j of readers.get(o) ?? []) out.add(unit[j]!);
    out.delete(u);
    return out;
  };
  const succCache = new Map<number, Set<number>>();
  const succOf = (u: number) => {
    let s = succCache.get(u);
    if (!s) succCache.set(u, (s = succ(u)));
    return s;
  };
  /** A path from `from` to `to` through at least one other unit. */
  const longPath = (from: number, to: number): boolean => {
    const stack = [...succOf(from)].filter((x) => x !== to);
    const seen = new Set(stack);
    while (stack.length) {
      const x = stack.pop()!;
      for (const y of succOf(x)) {
        if (y === to) return true;
        if (!seen.has(y) && y !== from) {
          seen.add(y);
          stack.push(y);
        }
      }
    }
    return false;
  };
  const rowGroups = new Map<number, KernelGroup>(); // unit → its merged group
  const merge = (idx: number[]): { group: KernelGroup; internal: number[] } | undefined => {
    const gs = idx.map((i) => groups[i]!);
    const produced = new Set<number>();
    for (const g of gs) {
      for (const o of g.outputs) produced.add(o);
      produced.add(g.anchor);
    }
    const row = rowStructure(graph, gs, produced);
    if (!row) return undefined;
    const inside = new Set(idx);
    const outputs: number[] = [];
    const internal: number[] = [];
    for (const g of gs)
      for (const o of g.outputs) {
        const readOutside = (readers.get(o) ?? []).some((j) => !inside.has(j));
        (isOutput.has(o) || readOutside ? outputs : internal).push(o);
      }
    const reads = new Set<number>();
    for (const g of gs) for (const r of g.reads) if (!produced.has(r)) reads.add(r);
    if (outputs.length === 0 || outputs.length + reads.size > max) return undefined;
    outputs.sort((p, q) => p - q);
    const nodes = new Set<number>();
    for (const g of gs) for (const x of g.nodes) nodes.add(x);
    return {
      group: {
        kind: "row",
        output: outputs[outputs.length - 1]!,
        outputs,
        anchor: row.reduces[0]!,
        nodes: [...nodes].sort((p, q) => p - q),
        reads: [...reads].sort((p, q) => p - q),
        epilogue: [],
        row,
      },
      internal,
    };
  };
  for (let i = 0; i < n; i++) {
    const start = groups[i]!;
    if (unit[i] !== i || members.get(i)!.length !== 1) continue;
    const s = rowShape(graph, start);
    if (!s) continue;
    let cluster = [i];
    let merged: ReturnType<typeof merge>;
    for (let changed = true; changed;) {
      changed = false;
      const lo = Math.max(0, Math.min(...cluster) - ROW_WINDOW);
      const hi = Math.min(n - 1, Math.max(...cluster) + ROW_WINDOW);
      for (let j = lo; j <= hi; j++) {
        if (cluster.includes(j) || unit[j] !== j || members.get(j)!.length !== 1) continue;
        const h = groups[j]!;
        if (h.kind !== "map" && h.kind !== "reduce") continue;
        const outs = new Set(cluster.flatMap((c) => groups[c]!.outputs));
        const connected =
          h.reads.some((r) => outs.has(r)) ||
          cluster.some((c) => groups[c]!.reads.some((r) => h.outputs.includes(r)));
        if (!connected) continue;
        // No cycle: no path between the cluster and h through another unit.
        const u = i;
        if (longPath(u, j) || longPath(j, u)) continue;
        const trial = merge([...cluster, j].sort((p, q) => p - q));
        if (!trial) continue;
        cluster = [...cluster, j].sort((p, q) => p - q);
        merged = trial;
        // Contract j into the cluster's unit.
        for (const c of cluster) unit[c] = u;
        members.set(u, cluster);
        members.set(j, []);
        succCache.clear();
        changed = true;
      }
    }
    if (cluster.length < 2 || !merged) continue;
    rowGroups.set(i, merged.group);
    for (const x of merged.internal) materialized.delete(x);
  }
  // Units in a topological order, each at the position of its last member where it can be.
  const units = [...new Set(unit)];
  const lastOf = (u: number) => Math.max(...members.get(u)!);
  const preds = new Map<number, Set<number>>(units.map((u) => [u, new Set<number>()]));
  for (const u of units) for (const v of succOf(u)) preds.get(v)!.add(u);
  const done = new Set<number>();
  const out: KernelGroup[] = [];
  while (done.size < units.length) {
    let best: number | undefined;
    for (const u of units)
      if (!done.has(u) && [...preds.get(u)!].every((p) => done.has(p)))
        if (best === undefined || lastOf(u) < lastOf(best)) best = u;
    if (best === undefined) throw new Error("fuse: a cycle among row kernels");
    done.add(best);
    out.push(rowGroups.get(best) ?? groups[best]!);
  }
  return out;
}
