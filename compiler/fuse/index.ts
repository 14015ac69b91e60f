// Fusion: from a graph and the outputs an entry wants, an ordered list of kernel groups. Only IR
// patterns are looked at, never what a node stands for.
//
//   input:  graph, the outputs an entry wants, options (the device's storage buffers per kernel)
//   output: kernel groups in a dispatch (topological) order, the materialized nodes (those with a
//           buffer), the needed nodes
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
//  - special: scatterAdd, svd, qr, topkMask, quantize, quantScale, reading buffers;
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
//
// The steps, in order (`analyze` once per call, the next four in `groupsOnce`, the merges once
// the groups fit the device, in `merged`), one file each:
//   analyze        needed nodes, their consumers, inline costs, chain anchors      context.ts
//   selectLowRank  low-rank branches, and the epilogue chains built around them    low-rank.ts
//   materialize    which nodes get a buffer; how each matmul reads its operands    materialize.ts
//   buildGroups    one group per materialized node: anchor, epilogue, inlined nodes groups.ts
//   mergeMaps      consecutive map groups of one element count → one kernel        merge-maps.ts
//   fuseRows       row reductions and the groups near them → row kernels, in order rows.ts
// and while groups bind more storage buffers than the device allows, `fuse` forces the nodes
// `splitPoints` picks for each of them to be materialized and forms the groups again (split.ts).
// Beside them: the op table (ops.ts), matmul operand views (operand.ts), epilogue chains
// (chains.ts), the row kernel check (row-structure.ts), the graph of groups row kernels contract
// (unit-graph.ts), the types (types.ts).
import type { Graph } from "../ir.js";
import { analyze, type FuseContext } from "./context.js";
import { buildGroups } from "./groups.js";
import { selectLowRank } from "./low-rank.js";
import { materialize } from "./materialize.js";
import { missesFold } from "./chains.js";
import { mergeMaps } from "./merge-maps.js";
import { fuseRows } from "./rows.js";
import { overBindings, splitPoints } from "./split.js";
import type { Fusion, FuseOptions, KernelGroup } from "./types.js";

export type {
  Fusion,
  FuseOptions,
  GroupKind,
  KernelGroup,
  MatmulOperand,
  RowInfo,
} from "./types.js";
export { isMap } from "./ops.js";
export { LOW_RANK_MAX } from "./low-rank.js";
export { ROW_TOTAL_MAX } from "./rows.js";

export function fuse(graph: Graph, outputs: readonly number[], options: FuseOptions = {}): Fusion {
  const max = options.maxBindings ?? Infinity;
  const ctx = analyze(graph, outputs);
  const forced = new Set<number>();
  for (let passes = 1; ; passes++) {
    const f = groupsOnce(ctx, outputs, forced, options);
    // Merging never makes a group over the limit (mergeMaps and fuseRows check it): the groups
    // to split are found before merging, which then runs once, on the groups that fit.
    const over = overBindings(f, max, options.bindingsOf);
    if (over.length === 0) return { ...merged(ctx, f, max, options), passes };
    for (const g of over)
      for (const x of splitPoints(graph, f, g, max, options.bindingsOf)) forced.add(x);
  }
}

/** The groups of one fusion of the entry, with the `forced` nodes materialized as if outputs. */
interface Grouped {
  groups: KernelGroup[];
  materialized: Set<number>;
  isOutput: ReadonlySet<number>;
}

/** One fusion of the entry up to its groups, before they merge. */
function groupsOnce(
  ctx: FuseContext,
  outputs: readonly number[],
  forced: ReadonlySet<number>,
  options: FuseOptions,
): Grouped {
  const isOutput = new Set([...outputs, ...forced]);
  const lowRankCosts = {
    ...(options.lowRankLoopMax !== undefined ? { loopMax: options.lowRankLoopMax } : {}),
    ...(options.lowRankTileFuses ? { tileFuses: options.lowRankTileFuses } : {}),
    ...(options.packed || options.half
      ? { packed: new Set([...(options.packed ?? []), ...(options.half ?? [])]) }
      : {}),
  };
  let { lowRank, chains } = selectLowRank(ctx, isOutput, options.lowRankMax, lowRankCosts);
  let decided = materialize(ctx, isOutput, lowRank, chains, options);
  // A batch sum that did not fold because its operand only got a buffer in `materialize` (heads
  // joined back, copied for the forward matmuls) folds in a second decision that knows the buffer.
  if (missesFold(ctx, isOutput, chains, decided.materialized)) {
    const buffered = decided.materialized;
    ({ lowRank, chains } = selectLowRank(
      ctx,
      isOutput,
      options.lowRankMax,
      lowRankCosts,
      buffered,
    ));
    decided = materialize(ctx, isOutput, lowRank, chains, options);
  }
  const groups = buildGroups(ctx, chains, lowRank, decided);
  return { groups, materialized: decided.materialized, isOutput };
}

/** The groups merged: map groups into multi-output kernels, then row kernels, in order. */
function merged(
  ctx: FuseContext,
  f: Grouped,
  max: number,
  options: FuseOptions,
): Omit<Fusion, "passes"> {
  const maps = mergeMaps(ctx.graph, f.groups, f.materialized, max, options.bindingsOf);
  const ordered = fuseRows(ctx.graph, maps, f.materialized, f.isOutput, max, options.bindingsOf);
  return { groups: ordered, materialized: f.materialized, needed: ctx.needed };
}
