// Low-rank branches: a matmul with a small inner dim whose value reaches another matmul's epilogue
// chain through single-consumer elementwise nodes (add(x·W, s·(t·U)), a LoRA branch) is no kernel
// of its own: the chain recomputes it as a short loop over the inner dim per output element. It
// builds no chain of its own, so the base matmul's chain can reach the add; a candidate whose path
// ends elsewhere is dropped and the chains are rebuilt.
//
// Candidates are taken one at a time, in order: accepted when, with it (and those accepted before)
// building no chain, its value reaches the chain of a matmul with a larger inner dim. Then the
// accepted set is checked as a whole (dropping one lets it build a chain again) until it is stable.
import { numel, type Graph } from "../ir.js";
import { buildChains, type Chains } from "./chains.js";
import type { FuseContext } from "./context.js";
import { keepsElement } from "./ops.js";

/** Inner dims up to this make a matmul a low-rank branch, recomputed inside an epilogue. */
export const LOW_RANK_MAX = 64;
/** Elementwise nodes allowed between a low-rank matmul and the epilogue chain that reads it. */
const LOW_RANK_PATH = 4;

/** The inner (summed) dim of matmul `id`. */
export function innerDim(graph: Graph, id: number): number {
  const n = graph.node(id);
  const a = graph.node(n.inputs[0]!);
  const r = a.shape.length;
  return (n.op as { transA: boolean }).transA ? a.shape[r - 2]! : a.shape[r - 1]!;
}

/** An f32 matmul whose inner dim is at most `max`. */
function lowRankShape(graph: Graph, id: number, max: number): boolean {
  const n = graph.node(id);
  return n.op.kind === "matmul" && n.dtype === "f32" && innerDim(graph, id) <= max;
}

/** A low-rank matmul, not an output, read once by an elementwise node (or a reshape). */
function isCandidate(
  ctx: FuseContext,
  isOutput: ReadonlySet<number>,
  id: number,
  max: number,
): boolean {
  if (!lowRankShape(ctx.graph, id, max) || isOutput.has(id)) return false;
  const cs = ctx.consumers.get(id)!;
  return cs.length === 1 && keepsElement(ctx.graph.node(cs[0]!).op.kind);
}

/**
 * The matmul whose epilogue chain reads low-rank candidate `id`: `id`'s value must reach a node
 * of that chain through single-consumer elementwise nodes (or reshapes) of the same element count
 * that are not outputs. Undefined if there is none.
 */
function lowRankTarget(
  ctx: FuseContext,
  id: number,
  isOutput: ReadonlySet<number>,
  chains: Chains,
): number | undefined {
  const { graph } = ctx;
  const count = numel(graph.shape(id));
  let cur = id;
  for (let step = 0; step <= LOW_RANK_PATH; step++) {
    const cs = ctx.consumers.get(cur)!;
    if (cs.length !== 1) return undefined;
    const c = graph.node(cs[0]!);
    if (numel(c.shape) !== count || c.dtype !== "f32") return undefined;
    const anchor = chains.inChain.get(c.id);
    if (anchor !== undefined)
      return graph.node(anchor).op.kind === "matmul" && anchor !== id ? anchor : undefined;
    if (!keepsElement(c.op.kind) || isOutput.has(c.id)) return undefined;
    cur = c.id;
  }
  return undefined;
}

/** `lowRankTarget`, when that matmul's inner dim is larger than the candidate's. */
function wideTarget(
  ctx: FuseContext,
  id: number,
  isOutput: ReadonlySet<number>,
  chains: Chains,
): number | undefined {
  const m = lowRankTarget(ctx, id, isOutput, chains);
  return m !== undefined && innerDim(ctx.graph, m) > innerDim(ctx.graph, id) ? m : undefined;
}

/**
 * The low-rank branches, and the epilogue chains built without them. The answer for one candidate
 * depends only on the chains of the anchors near it, so each trial rebuilds only those (see
 * `FuseContext.anchorsNear`) instead of every chain of the graph.
 */
export function selectLowRank(
  ctx: FuseContext,
  isOutput: ReadonlySet<number>,
  max = LOW_RANK_MAX,
): { lowRank: Set<number>; chains: Chains } {
  let lowRank = new Set<number>();
  for (const id of ctx.chainAnchors) {
    if (!isCandidate(ctx, isOutput, id, max)) continue;
    const skip = (x: number) => x === id || lowRank.has(x);
    const local = buildChains(ctx, isOutput, ctx.anchorsNear(id), skip);
    if (wideTarget(ctx, id, isOutput, local) !== undefined) lowRank.add(id);
  }
  let chains = buildChains(ctx, isOutput, ctx.chainAnchors, (x) => lowRank.has(x));
  for (;;) {
    const keep = new Set(
      [...lowRank].filter((id) => wideTarget(ctx, id, isOutput, chains) !== undefined),
    );
    if (keep.size === lowRank.size) break;
    lowRank = keep;
    chains = buildChains(ctx, isOutput, ctx.chainAnchors, (x) => lowRank.has(x));
  }
  return { lowRank, chains };
}

/**
 * A fused low-rank branch as the matmul kernel computes it in its tile (MatmulBranch in
 * compiler/kernels/matmul.ts): `down` [m, rank] row-major and `up` [n, rank] (`upTrans`) or
 * [rank, n], both plain f32 buffers (through reshapes, which keep the layout).
 */
export interface TileBranch {
  node: number;
  down: number;
  up: number;
  rank: number;
  upTrans: boolean;
}

/**
 * Low-rank branch `id` of a matmul group whose template product is m × n (batch 1), as a tile
 * branch; undefined where the epilogue keeps computing it per element (operands that are views,
 * packed or f16 storage, a batched up-projection, transposed down-projection, a reshape that
 * changes the rows). The branch reaches the epilogue through elementwise nodes and reshapes of its
 * element count (lowRankTarget), so its element at the product's (row, col) is its flat element
 * row·n + col when its last dim is n.
 */
export function tileBranch(
  graph: Graph,
  id: number,
  product: { m: number; n: number },
  isBuffer: (node: number) => boolean,
  packedOf: (node: number) => number | undefined,
): TileBranch | undefined {
  const node = graph.node(id);
  if (node.op.kind !== "matmul" || node.dtype !== "f32") return undefined;
  const { transA, transB } = node.op as { transA: boolean; transB: boolean };
  const { m, n } = product;
  const rank = innerDim(graph, id);
  if (transA || node.shape[node.shape.length - 1] !== n || numel(node.shape) !== m * n)
    return undefined;
  const buffer = (x: number): number | undefined => {
    while (!isBuffer(x) && graph.node(x).op.kind === "reshape") x = graph.node(x).inputs[0]!;
    return isBuffer(x) && !packedOf(x) && graph.node(x).dtype === "f32" ? x : undefined;
  };
  const down = buffer(node.inputs[0]!);
  const upNode = graph.node(node.inputs[1]!);
  const up = buffer(upNode.id);
  // up shared by every row: [n, rank] or [rank, n] behind leading 1s
  const upShape = upNode.shape.filter((d, i) => d !== 1 || i >= upNode.shape.length - 2);
  const upOk =
    upShape.length === 2 && upShape[transB ? 0 : 1] === n && upShape[transB ? 1 : 0] === rank;
  if (down === undefined || up === undefined || !upOk) return undefined;
  return { node: id, down, up, rank, upTrans: transB };
}
