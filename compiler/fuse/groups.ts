// One kernel group per materialized node (inputs aside), in the order of their output nodes (a
// topological order): the anchor, its epilogue chain, everything inlined below them down to
// buffers, and how a matmul reads its operands.
import type { Chains } from "./chains.js";
import type { FuseContext } from "./context.js";
import type { Materialization } from "./materialize.js";
import { roleOf } from "./ops.js";
import type { GroupKind, KernelGroup } from "./types.js";

export function buildGroups(
  ctx: FuseContext,
  chains: Chains,
  lowRank: ReadonlySet<number>,
  decided: Materialization,
): KernelGroup[] {
  const groups: KernelGroup[] = [];
  for (const id of ctx.needed) {
    if (!decided.materialized.has(id)) continue;
    if (ctx.graph.node(id).op.kind === "input") continue;
    groups.push(groupFor(ctx, chains, lowRank, decided, id));
  }
  for (const g of groups) if (!ctx.neededSet.has(g.output)) throw new Error("fuse: stray group");
  return groups;
}

/** The group whose kernel writes materialized node `id`. */
function groupFor(
  ctx: FuseContext,
  chains: Chains,
  lowRank: ReadonlySet<number>,
  decided: Materialization,
  id: number,
): KernelGroup {
  const { materialized, operands } = decided;
  const anchor = chains.inChain.get(id) ?? id;
  const kind = roleOf(ctx.graph.node(anchor).op.kind) as GroupKind;
  const epilogue = kind === "reduce" || kind === "matmul" ? chains.chainOf.get(anchor)! : [];
  const { nodes, reads } = members(ctx, decided, kind, anchor, epilogue);
  const ops = operands.get(anchor);
  const prologue = ops && { a: !materialized.has(ops[0].node), b: !materialized.has(ops[1].node) };
  const branches = kind === "matmul" ? [...nodes].filter((x) => lowRank.has(x)) : [];
  return {
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
    ...(chains.foldK.has(anchor) ? { foldBatch: true } : {}),
    ...(prologue && (prologue.a || prologue.b) ? { prologue } : {}),
    ...(branches.length ? { lowRank: branches.sort((p, q) => p - q) } : {}),
  };
}

/**
 * The nodes a group computes or reads in place (unsorted, materialized ones included), and the
 * buffers it reads: everything inlined below the anchor (a map node's inputs, a reduce's input, a
 * matmul's prologue operands and the views it reads through) and below its epilogue's other
 * inputs, stopping at buffers.
 */
function members(
  ctx: FuseContext,
  decided: Materialization,
  kind: GroupKind,
  anchor: number,
  epilogue: readonly number[],
): { nodes: Set<number>; reads: Set<number> } {
  const { graph } = ctx;
  const { materialized } = decided;
  const a = graph.node(anchor);
  const nodes = new Set<number>([anchor, ...epilogue]);
  const reads = new Set<number>();
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
    const [oa, ob] = decided.operands.get(anchor)!;
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
  return { nodes, reads };
}
