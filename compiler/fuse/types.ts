// The data fusion hands to the kernel generators and the plan: kernel groups and their operands.
import type { LowRankBranchForm, MatmulShape } from "../kernels/types.js";

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

/**
 * One kernel's worth of the graph. (A field that holds node ids must also be renumbered by
 * compiler/kernel-memo.ts `renumberGroup`, which emits a group's kernels from a small graph.)
 */
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
  /**
   * How many times the fusion steps ran: once, plus once per round of splitting groups over the
   * binding limit (every such group is split in the same round). It does not grow with depth.
   */
  passes: number;
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
  /**
   * The bindings a node's buffer takes (default 1): a tensor over one storage binding is bound as
   * its chunks (compiler/memory-plan.ts), and counts as many.
   */
  bindingsOf?: (node: number) => number;
  /** Inner dims up to this make a matmul a low-rank branch of an epilogue (LOW_RANK_MAX; 0: none). */
  lowRankMax?: number;
  /**
   * A branch the matmul's tile cannot compute (`mayTile`: its operands are views or packed) is
   * fused, as the epilogue's per-element loop, only up to this inner dim (default lowRankMax).
   */
  lowRankLoopMax?: number;
  /**
   * Whether a branch the matmul's tile computes (`mayTile`) is fused into the product `base` (its
   * template shape, batch folded into m) or left as kernels of its own: the autotuner's choice
   * where the cost model is unsure (cli/target.ts `lowRankChoices`); default: always fused.
   */
  lowRankTileFuses?: (base: MatmulShape, branch: LowRankBranchForm) => boolean;
  /**
   * Input nodes stored packed (quantized values, `packedBits`): a matmul's B that multiplies one
   * (a dequantization) is read as a prologue however wide the matmul, since the template unpacks
   * it in registers (compiler/kernels/dequant.ts) rather than reading an f32 copy.
   */
  packed?: ReadonlySet<number>;
  /**
   * Input nodes stored as f16 (`storage: "f16"`): read through f16 bindings, which the matmul's
   * tile does not take for a low-rank branch's operands (`mayTile`).
   */
  half?: ReadonlySet<number>;
}
