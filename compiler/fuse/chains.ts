// Epilogue chains: from a reduce or matmul, follow the single consumer while it is elementwise (or
// a reshape) with the same element order and the anchor's value feeds it only through the chain.
// A batched Aᵀ·B summed over its batch (a weight's gradient when the weight is broadcast over the
// batch) folds the sum into the matmul: one matmul with the batch folded into k,
// [b·k, m]ᵀ @ [b·k, n], the sum being the chain's first node. Whether an operand is read in place
// may depend on a node that only `materialize` gives a buffer (heads joined back: a copy that
// other matmuls demand); `buffered` names such nodes for a second build (see `missesFold`).
import { numel, type Node } from "../ir.js";
import type { FuseContext } from "./context.js";
import { keepsElement } from "./ops.js";
import { operandView, viewNodes } from "./operand.js";
import type { MatmulOperand } from "./types.js";

export interface Chains {
  /** anchor → its epilogue chain */
  chainOf: Map<number, number[]>;
  /** chain node → its anchor */
  inChain: Map<number, number>;
  /** matmul → its operands, when its batch sum is folded into k */
  foldK: Map<number, [MatmulOperand, MatmulOperand]>;
}

/** Whether `x` is the last node of an epilogue chain (its kernel writes it: it has a buffer). */
export function isChainEnd(chains: Chains, x: number): boolean {
  const anchor = chains.inChain.get(x);
  return anchor !== undefined && chains.chainOf.get(anchor)!.at(-1) === x;
}

/**
 * The chains of `anchors` (reduces and matmuls, increasing), skipping those `skip` says (low-rank
 * branches, computed in another matmul's epilogue). An anchor takes the nodes no earlier anchor's
 * chain took. Nodes of `buffered` count as having buffers when a batch sum is folded.
 */
export function buildChains(
  ctx: FuseContext,
  isOutput: ReadonlySet<number>,
  anchors: readonly number[],
  skip: (id: number) => boolean,
  buffered?: ReadonlySet<number>,
): Chains {
  const chains: Chains = { chainOf: new Map(), inChain: new Map(), foldK: new Map() };
  for (const id of anchors) {
    if (chains.inChain.has(id)) continue; // a batch sum folded into a matmul
    if (skip(id)) continue;
    const n = ctx.graph.node(id);
    const chain: number[] = [];
    const fold = foldedSum(ctx, isOutput, chains, n, buffered);
    let cur = id;
    let count = numel(n.shape);
    if (fold) {
      chains.foldK.set(id, fold.operands);
      chain.push(fold.sum.id);
      chains.inChain.set(fold.sum.id, id);
      cur = fold.sum.id;
      count = numel(fold.sum.shape);
    }
    for (;;) {
      if (isOutput.has(cur)) break;
      const cs = ctx.consumers.get(cur)!;
      if (cs.length !== 1) break;
      const c = ctx.graph.node(cs[0]!);
      if (!keepsElement(c.op.kind) || numel(c.shape) !== count) break;
      if (chains.inChain.has(c.id) || c.dtype !== n.dtype) break; // another anchor's chain took it
      chain.push(c.id);
      chains.inChain.set(c.id, id);
      cur = c.id;
    }
    chains.chainOf.set(id, chain);
  }
  return chains;
}

/**
 * The batch sum of a batched f32 matmul (its only consumer, a sum over exactly the batch axes)
 * when the matmul reads A transposed and B plain, both in place: the sum folds into k.
 */
function foldedSum(
  ctx: FuseContext,
  isOutput: ReadonlySet<number>,
  chains: Chains,
  n: Node,
  buffered?: ReadonlySet<number>,
): { sum: Node; operands: [MatmulOperand, MatmulOperand] } | undefined {
  const { graph } = ctx;
  if (n.op.kind !== "matmul" || n.dtype !== "f32" || n.shape.length < 3 || isOutput.has(n.id))
    return undefined;
  const cs = ctx.consumers.get(n.id)!;
  const r = cs.length === 1 ? graph.node(cs[0]!) : undefined;
  // a sum over exactly the batch axes: 0, 1, …, rank - 3
  if (
    r?.op.kind !== "reduce" ||
    r.op.fn !== "sum" ||
    r.op.axes.length !== n.shape.length - 2 ||
    !r.op.axes.every((a, i) => a === i)
  )
    return undefined;
  const hasBuffer = (x: number) => isChainEnd(chains, x) || buffered?.has(x) === true;
  const va = operandView(graph, n.inputs[0]!, n.op.transA, false, hasBuffer);
  const vb = operandView(graph, n.inputs[1]!, n.op.transB, false, hasBuffer);
  return va?.trans && vb && !vb.trans ? { sum: r, operands: [va, vb] } : undefined;
}

/**
 * Whether a matmul of `chains` would fold its batch sum were the `materialized` nodes known to have
 * buffers: then chains built with them as `buffered` save a kernel (the sum) and a buffer.
 */
export function missesFold(
  ctx: FuseContext,
  isOutput: ReadonlySet<number>,
  chains: Chains,
  materialized: ReadonlySet<number>,
): boolean {
  for (const anchor of chains.chainOf.keys()) {
    if (chains.foldK.has(anchor)) continue;
    if (foldedSum(ctx, isOutput, chains, ctx.graph.node(anchor), materialized)) return true;
  }
  return false;
}

/**
 * Which chain anchors can affect each other's chains: `buildChains` for one anchor reads only the
 * nodes its walk reaches through single consumers (elementwise, reshape or a batch sum, from a
 * node that is not an output), and, to fold a batch sum, whether the views a matmul reads its
 * operands through end chains. Nodes joined by those links form components; an anchor's chain
 * depends only on the anchors (and skips) of its component, in the same order, and so does
 * `lowRankTarget`, whose walk follows the same links. Returns: node → the chain anchors of its
 * component, increasing. More outputs only cut links: the components of fewer outputs are unions
 * of these, and serve as well.
 */
export function chainComponents(
  ctx: Pick<FuseContext, "graph" | "needed" | "consumers" | "chainAnchors">,
  isOutput: ReadonlySet<number>,
): (id: number) => readonly number[] {
  const { graph } = ctx;
  const parent = new Int32Array(graph.nodes.length).map((_, i) => i);
  const find = (x: number): number => {
    while (parent[x] !== x) {
      parent[x] = parent[parent[x]!]!;
      x = parent[x]!;
    }
    return x;
  };
  const union = (x: number, y: number) => {
    const [rx, ry] = [find(x), find(y)];
    if (rx !== ry) parent[Math.max(rx, ry)] = Math.min(rx, ry);
  };
  for (const id of ctx.needed) {
    const cs = ctx.consumers.get(id)!;
    if (isOutput.has(id) || cs.length !== 1) continue;
    const c = graph.node(cs[0]!);
    if (keepsElement(c.op.kind) || c.op.kind === "reduce") union(id, c.id);
  }
  for (const id of ctx.chainAnchors) {
    const n = graph.node(id);
    if (n.op.kind !== "matmul") continue;
    for (const operand of n.inputs) for (const v of viewNodes(graph, operand)) union(id, v);
  }
  const anchorsOf = new Map<number, number[]>();
  for (const id of ctx.chainAnchors) {
    const root = find(id);
    const list = anchorsOf.get(root);
    if (list) list.push(id);
    else anchorsOf.set(root, [id]);
  }
  return (id) => anchorsOf.get(find(id)) ?? [];
}
