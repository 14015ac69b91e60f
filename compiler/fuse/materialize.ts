// Which needed nodes get a buffer. Decided from the last node down, so a node's consumers are
// decided before it: inputs, entry outputs and the end of every kernel (a map node of its own, an
// epilogue chain's last node, a reduce, matmul or special node without a chain) are materialized;
// so is a node a kernel needs as a buffer (a matmul operand that is not a view of one and not a
// cheap prologue, a special kernel's input, a low-rank branch's operand), and a map node read by
// kernels of two or more groups unless it is cheap to recompute (movement ops are never worth a
// buffer: their input decides) or read only as the prologue of narrow matmuls.
import type { Chains } from "./chains.js";
import { isChainEnd } from "./chains.js";
import type { FuseContext } from "./context.js";
import { LOW_RANK_MAX } from "./low-rank.js";
import { isAnchor, isElementwise, isMovement, roleOf } from "./ops.js";
import { operandView } from "./operand.js";
import type { FuseOptions, MatmulOperand } from "./types.js";

/** The most arithmetic (see `costs`) a matmul prologue may recompute per operand load. */
const PROLOGUE_COST = 24;
/** Below this inline cost a map node read by several kernels is recomputed in each. */
const CHEAP_COST = 4;

export interface Materialization {
  /** Nodes with a buffer. */
  materialized: Set<number>;
  /** matmul → how it reads A and B (a buffer, a view of one, or a prologue expression). */
  operands: Map<number, [MatmulOperand, MatmulOperand]>;
}

interface State extends Materialization {
  /** Nodes a kernel reads as a buffer: they must be materialized. */
  demanded: Set<number>;
  /** materialized node or chain node → its group's key (the anchor, or the node itself) */
  groupOf: Map<number, number>;
  /** inlined node → keys of the groups that inline it */
  groupsReading: Map<number, Set<number>>;
  /** operand → the matmuls that may inline it as a prologue */
  prologueReaders: Map<number, Set<number>>;
}

interface Inputs {
  ctx: FuseContext;
  isOutput: ReadonlySet<number>;
  lowRank: ReadonlySet<number>;
  chains: Chains;
  broadcast: NonNullable<FuseOptions["broadcast"]>;
  packed: ReadonlySet<number>;
}

export function materialize(
  ctx: FuseContext,
  isOutput: ReadonlySet<number>,
  lowRank: ReadonlySet<number>,
  chains: Chains,
  options: FuseOptions,
): Materialization {
  const at: Inputs = {
    ctx,
    isOutput,
    lowRank,
    chains,
    broadcast: options.broadcast ?? "fold",
    packed: options.packed ?? new Set(),
  };
  const s: State = {
    materialized: new Set(),
    operands: new Map(),
    demanded: new Set(),
    groupOf: new Map(),
    groupsReading: new Map(),
    prologueReaders: new Map(),
  };
  for (let k = ctx.needed.length - 1; k >= 0; k--) {
    const id = ctx.needed[k]!;
    const kind = ctx.graph.node(id).op.kind;
    if (chains.inChain.has(id)) decideChainNode(at, s, id);
    else if (kind === "input") s.materialized.add(id);
    else if (lowRank.has(id)) decideLowRank(at, s, id);
    else if (isAnchor(kind)) decideAnchor(at, s, id);
    else decideMapNode(at, s, id);
  }
  return { materialized: s.materialized, operands: s.operands };
}

/** A chain node belongs to its anchor's group; the chain's last node is the kernel's output. */
function decideChainNode(at: Inputs, s: State, id: number): void {
  const anchor = at.chains.inChain.get(id)!;
  s.groupOf.set(id, anchor);
  if (isChainEnd(at.chains, id)) s.materialized.add(id);
}

/** The keys of the groups that read node `id` (decided: its consumers come after it). */
function readersOf(at: Inputs, s: State, id: number): Set<number> {
  const readers = new Set<number>();
  for (const c of at.ctx.consumers.get(id)!) {
    const key = s.groupOf.get(c);
    if (key !== undefined) readers.add(key);
    else for (const g of s.groupsReading.get(c) ?? []) readers.add(g);
  }
  return readers;
}

/** A low-rank branch is computed inside the epilogue that reads it: its operands are buffers (or views of them). */
function decideLowRank(at: Inputs, s: State, id: number): void {
  const { graph } = at.ctx;
  const n = graph.node(id);
  s.groupsReading.set(id, readersOf(at, s, id));
  const op = n.op as { transA: boolean; transB: boolean };
  for (const [operand, trans] of [
    [n.inputs[0]!, op.transA],
    [n.inputs[1]!, op.transB],
  ] as const) {
    const v = operandView(graph, operand, trans, true, (x) => isChainEnd(at.chains, x));
    const src = v ? v.node : operand;
    if (graph.node(src).op.kind !== "input") s.demanded.add(src);
  }
}

/** A reduce, matmul or special node: a kernel of its own, written unless a chain follows it. */
function decideAnchor(at: Inputs, s: State, id: number): void {
  const n = at.ctx.graph.node(id);
  s.groupOf.set(id, id);
  if (at.chains.chainOf.get(id)?.length === 0 || !at.chains.chainOf.has(id)) s.materialized.add(id);
  const folded = at.chains.foldK.get(id);
  if (folded) {
    folded.forEach((v, side) => useOperand(at, s, id, v, side as 0 | 1));
    s.operands.set(id, folded);
  } else if (n.op.kind === "matmul") decideMatmulOperands(at, s, id);
  else if (n.op.kind !== "reduce") for (const i of n.inputs) s.demanded.add(i);
}

/**
 * A matmul operand read from `v.node`: an operand that is a cheap elementwise expression (not a
 * view of a buffer) is read as a prologue when the matmul is narrow on the other side (n for A, m
 * for B): each element is recomputed at most LOW_RANK_MAX times, and no kernel writes it (a
 * dropout mask or a scale on a low-rank branch's input); so is a B that dequantizes a packed input,
 * however wide the matmul (FuseOptions.packed). Any other operand needs a buffer.
 */
function useOperand(at: Inputs, s: State, id: number, v: MatmulOperand, side: 0 | 1): void {
  const { graph } = at.ctx;
  const n = graph.node(id);
  const r = n.shape.length;
  const other = [n.shape[r - 1]!, n.shape[r - 2]!];
  const src = graph.node(v.node);
  if (src.op.kind === "input") return;
  const dequantizes =
    side === 1 &&
    src.op.kind === "binary" &&
    src.op.fn === "mul" &&
    src.inputs.some((i) => at.packed.has(i));
  if (
    (other[side]! <= LOW_RANK_MAX || dequantizes) &&
    isElementwise(src.op.kind) &&
    src.dtype === "f32" &&
    !at.isOutput.has(src.id) &&
    at.ctx.cost.get(src.id)! <= PROLOGUE_COST
  ) {
    const keys = s.prologueReaders.get(src.id) ?? new Set<number>();
    s.prologueReaders.set(src.id, keys.add(id));
  } else s.demanded.add(src.id);
}

/**
 * How a matmul reads A and B: in place through views where it can (i32 matmuls never), else
 * from the operand itself. With broadcast "fold", only B may broadcast over the batch, and only
 * when A is read neither transposed nor broadcast.
 */
function decideMatmulOperands(at: Inputs, s: State, id: number): void {
  const { graph } = at.ctx;
  const n = graph.node(id);
  const op = n.op as { transA: boolean; transB: boolean };
  const integer = n.dtype === "i32";
  const view = (operand: number, trans: boolean) =>
    integer ? undefined : operandView(graph, operand, trans, true, (x) => isChainEnd(at.chains, x));
  let va = view(n.inputs[0]!, op.transA);
  let vb = view(n.inputs[1]!, op.transB);
  const pick = (operand: number, trans: boolean, side: 0 | 1, v?: MatmulOperand) => {
    if (integer) {
      s.demanded.add(operand);
      return { node: operand, trans, broadcast: false };
    }
    const picked = v ?? { node: operand, trans, broadcast: false };
    useOperand(at, s, id, picked, side);
    return picked;
  };
  if (at.broadcast === "fold" && va?.broadcast) va = undefined;
  const pa = pick(n.inputs[0]!, op.transA, 0, va);
  if (at.broadcast === "fold" && vb?.broadcast && (pa.trans || pa.broadcast)) vb = undefined;
  const pb = pick(n.inputs[1]!, op.transB, 1, vb);
  s.operands.set(id, [pa, pb]);
  // Two prologues computed from seeded random values and constants alone (`normal([…], seed:) @
  // normal([…], seed:)`) would leave the kernel no buffer to read, which its bindings need: B
  // gets one.
  const inlined = (v: MatmulOperand) => s.prologueReaders.get(v.node)?.has(id) === true;
  if (inlined(pa) && inlined(pb) && !readsBuffer(graph, pa.node) && !readsBuffer(graph, pb.node)) {
    s.prologueReaders.get(pb.node)!.delete(id);
    s.demanded.add(pb.node);
  }
}

/**
 * Whether an expression of map nodes reads a buffer anywhere: an input, a kernel's output, a
 * gather's table; its leaves may instead be constants, iotas and unkeyed random values.
 */
function readsBuffer(graph: Inputs["ctx"]["graph"], node: number): boolean {
  const n = graph.node(node);
  if (roleOf(n.op.kind) !== "map" || n.op.kind === "gather") return true;
  return n.inputs.some((i) => readsBuffer(graph, i));
}

/**
 * A map node is materialized when it is an entry output, when a kernel needs it as a buffer, or
 * when kernels of two or more groups read it and it is not cheap to recompute (or read only as
 * matmul prologues: recomputed in each, the matmuls being narrow); else each reader inlines it.
 */
function decideMapNode(at: Inputs, s: State, id: number): void {
  const kind = at.ctx.graph.node(id).op.kind;
  const readers = readersOf(at, s, id);
  const cost = at.ctx.cost.get(id)!;
  const cheap = isMovement(kind) || (cost < CHEAP_COST && kind !== "random" && kind !== "gather");
  const viaPrologue = s.prologueReaders.get(id);
  const prologueOnly = viaPrologue !== undefined && [...readers].every((g) => viaPrologue.has(g));
  if (at.isOutput.has(id) || s.demanded.has(id) || (readers.size > 1 && !cheap && !prologueOnly)) {
    s.materialized.add(id);
    s.groupOf.set(id, id);
  } else {
    s.groupsReading.set(id, readers);
  }
}
