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
import type { LowRankBranchForm, MatmulShape } from "../kernels/types.js";
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

/** Shape without its leading 1s. */
const core = (shape: readonly number[]) => {
  const first = shape.findIndex((d) => d !== 1);
  return first < 0 ? [] : shape.slice(first);
};

/**
 * The tensor a low-rank matmul's operand `id` reads, through the views that keep it one matrix
 * for every row of the product: reshapes that add or drop leading 1s, an expand over leading
 * (batch) dims, and a swap of the last two dims (`flipped`: the stored matrix is the transpose of
 * the logical one). `stored` says where the walk stops (a buffer); undefined when a view of another
 * kind comes first.
 */
function storedOperand(
  graph: Graph,
  id: number,
  stored: (node: number) => boolean,
): { node: number; flipped: boolean } | undefined {
  let x = id;
  let flipped = false;
  for (let step = 0; !stored(x); step++) {
    const node = graph.node(x);
    const input = node.inputs[0];
    if (step > 8 || input === undefined) return undefined;
    const from = graph.node(input).shape;
    const r = node.shape.length;
    switch (node.op.kind) {
      case "reshape":
        if (core(from).join() !== core(node.shape).join()) return undefined;
        break;
      case "expand":
        if (from.length < 2 || from.slice(-2).join() !== node.shape.slice(-2).join())
          return undefined;
        break;
      case "permute": {
        const perm = (node.op as { perm: readonly number[] }).perm;
        const swap = perm.every((p, i) => p === (i < r - 2 ? i : i === r - 2 ? r - 1 : r - 2));
        if (r < 2 || !swap) return undefined;
        flipped = !flipped;
        break;
      }
      default:
        return undefined;
    }
    x = input;
  }
  return { node: x, flipped };
}

/**
 * Low-rank matmul `id`'s operands as the tile reads them: down [rows, rank] row-major and up
 * stored [n, rank] (`upTrans`) or [rank, n], read through `storedOperand`; undefined where they
 * are laid out otherwise.
 */
function branchOperands(
  graph: Graph,
  id: number,
  stored: (node: number) => boolean,
): { down: number; up: number; upTrans: boolean } | undefined {
  const node = graph.node(id);
  if (node.op.kind !== "matmul" || (node.op as { transA: boolean }).transA) return undefined;
  const rank = innerDim(graph, id);
  const n = node.shape[node.shape.length - 1]!;
  const down = storedOperand(graph, node.inputs[0]!, stored);
  const up = storedOperand(graph, node.inputs[1]!, stored);
  if (!down || down.flipped || !up) return undefined;
  const downShape = graph.node(down.node).shape;
  // the stored up's last two dims, behind leading 1s only (its rank dim may be 1 itself)
  const upStored = graph.node(up.node).shape;
  const upShape = upStored.slice(0, -2).every((d) => d === 1) ? upStored.slice(-2) : [];
  const upTrans = (node.op as { transB: boolean }).transB !== up.flipped;
  const upOk =
    upShape.length === 2 && upShape[upTrans ? 0 : 1] === n && upShape[upTrans ? 1 : 0] === rank;
  if (!upOk || downShape[downShape.length - 1] !== rank) return undefined;
  return { down: down.node, up: up.node, upTrans };
}

/**
 * Whether the matmul kernel can compute low-rank matmul `id` in its tile (tileBranch, at plan
 * time), as far as fusion can tell: its operands a matmul's output or an input (not packed),
 * through the views `storedOperand` follows. (At plan time an f16-stored operand, a view that was
 * not materialized, or a product the template runs batched still falls back to the per-element
 * loop.)
 */
export function mayTile(graph: Graph, id: number, packed?: ReadonlySet<number>): boolean {
  return tileForm(graph, id, packed) !== undefined;
}

/** As fusion can tell, a plain f32 buffer: an input neither `packed` nor f16, or a matmul's output. */
const plainBuffer = (graph: Graph, packed?: ReadonlySet<number>) => (x: number) => {
  const kind = graph.node(x).op.kind;
  return (kind === "input" || kind === "matmul") && !packed?.has(x);
};

/** Low-rank matmul `id` as the tile would compute it (`mayTile`), or undefined. */
function tileForm(
  graph: Graph,
  id: number,
  packed?: ReadonlySet<number>,
): LowRankBranchForm | undefined {
  const operands = branchOperands(graph, id, plainBuffer(graph, packed));
  return operands && { rank: innerDim(graph, id), upTrans: operands.upTrans };
}

/**
 * Whether matmul `id`'s B is a plain f32 buffer read through views: the products whose
 * fused-or-unfused choice the autotuner times (a dequantized or f16 B keeps the structural
 * choice: fused).
 */
function plainB(graph: Graph, id: number, packed?: ReadonlySet<number>): boolean {
  return storedOperand(graph, graph.node(id).inputs[1]!, plainBuffer(graph, packed)) !== undefined;
}

/**
 * Matmul `id`'s product as the template runs it with a tile branch: batch folded into the rows
 * (a tile branch needs batch 1, `tileBranch`), operands read through transposes.
 */
function foldedShape(graph: Graph, id: number): MatmulShape {
  const node = graph.node(id);
  const op = node.op as { transA: boolean; transB: boolean };
  const n = node.shape[node.shape.length - 1]!;
  const m = numel(node.shape) / n;
  // the template reads an operand through a transpose in place (the layout it runs)
  const view = (x: number) => ["reshape", "expand", "permute"].includes(graph.node(x).op.kind);
  const flipped = (x: number) => storedOperand(graph, x, (y) => !view(y))?.flipped ?? false;
  const transA = op.transA !== flipped(node.inputs[0]!);
  const transB = op.transB !== flipped(node.inputs[1]!);
  return { batch: 1, m, n, k: innerDim(graph, id), transA, transB };
}

/** The cost model's side of a candidate: where to fuse, and what the per-element loop may take. */
export interface LowRankCosts {
  /** Inner dims up to this fuse as the per-element loop where the tile cannot (default: max). */
  loopMax?: number;
  packed?: ReadonlySet<number>;
  /** Whether a branch the tile computes is fused into product `base` (FuseOptions.lowRankTileFuses). */
  tileFuses?: (base: MatmulShape, branch: LowRankBranchForm) => boolean;
}

/**
 * A low-rank matmul, not an output, read once by an elementwise node (or a reshape), whose fused
 * form pays: the tile's (rank more k-steps of the base product: it saves the unfused form's
 * m × n × rank product and the m × n values written and read back, so it never costs more), or
 * the per-element loop's up to `loopMax` (2 scalar loads per FMA: on lavapipe +8 / +21 / +92 %
 * over the base GEMM at ranks 8 / 16 / 64 where unfused costs +0.3 / +5 / +11 %, bench/branch.ts).
 */
function isCandidate(
  ctx: FuseContext,
  isOutput: ReadonlySet<number>,
  id: number,
  max: number,
  costs: LowRankCosts,
): boolean {
  if (!lowRankShape(ctx.graph, id, max) || isOutput.has(id)) return false;
  if (innerDim(ctx.graph, id) > (costs.loopMax ?? max) && !mayTile(ctx.graph, id, costs.packed))
    return false;
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
 * `FuseContext.anchorsNear`) instead of every chain of the graph. `buffered`: see `buildChains`.
 */
export function selectLowRank(
  ctx: FuseContext,
  isOutput: ReadonlySet<number>,
  max = LOW_RANK_MAX,
  costs: LowRankCosts = {},
  buffered?: ReadonlySet<number>,
): { lowRank: Set<number>; chains: Chains } {
  let lowRank = new Set<number>();
  for (const id of ctx.chainAnchors) {
    if (!isCandidate(ctx, isOutput, id, max, costs)) continue;
    const skip = (x: number) => x === id || lowRank.has(x);
    const local = buildChains(ctx, isOutput, ctx.anchorsNear(id), skip, buffered);
    const target = wideTarget(ctx, id, isOutput, local);
    if (target === undefined) continue;
    // where the tile computes it, the autotuner may have timed the branch unfused faster
    const form = costs.tileFuses && tileForm(ctx.graph, id, costs.packed);
    const timed = form && plainB(ctx.graph, target, costs.packed);
    if (timed && !costs.tileFuses!(foldedShape(ctx.graph, target), form)) continue;
    lowRank.add(id);
  }
  let chains = buildChains(ctx, isOutput, ctx.chainAnchors, (x) => lowRank.has(x), buffered);
  for (;;) {
    const keep = new Set(
      [...lowRank].filter((id) => wideTarget(ctx, id, isOutput, chains) !== undefined),
    );
    if (keep.size === lowRank.size) break;
    lowRank = keep;
    chains = buildChains(ctx, isOutput, ctx.chainAnchors, (x) => lowRank.has(x), buffered);
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
  const { m, n } = product;
  if (node.dtype !== "f32" || node.shape[node.shape.length - 1] !== n) return undefined;
  if (numel(node.shape) !== m * n) return undefined;
  const stored = (x: number) => isBuffer(x);
  const operands = branchOperands(graph, id, stored);
  if (!operands) return undefined;
  const rank = innerDim(graph, id);
  const plain = (x: number) => !packedOf(x) && graph.node(x).dtype === "f32";
  const { down, up, upTrans } = operands;
  if (!plain(down) || !plain(up) || numel(graph.node(down).shape) !== m * rank) return undefined;
  return { node: id, down, up, rank, upTrans };
}

/**
 * The constant c where a matmul group's epilogue sees tile branch `id` only as `acc + c·branch`:
 * the branch reaches, through multiplications and divisions by constants (and reshapes), an add
 * (or the right side of a sub) whose other side is the product itself or the product plus other
 * terms (a bias, other branches: adds and reshapes from the anchor, each node read once and not
 * written by the kernel). The tile may then add c·down·up into the product's accumulators, as
 * more steps of its k loop, and hand the epilogue 0 for the branch (MatmulBranch `scale`): the
 * value is the same, with no accumulators of the branch's own. Undefined otherwise (a per-column
 * scale or a mask between the branch and the sum, a branch read twice, a kernel that writes a
 * partial sum).
 */
export function branchCoefficient(
  graph: Graph,
  group: { anchor: number; nodes: readonly number[]; outputs: readonly number[] },
  id: number,
): number | undefined {
  const written = new Set(group.outputs);
  // each node's readers in the kernel, once per read (a node reading x twice is listed twice)
  const readers = new Map<number, number[]>();
  for (const y of group.nodes)
    for (const i of graph.node(y).inputs) {
      const list = readers.get(i);
      if (list) list.push(y);
      else readers.set(i, [y]);
    }
  // the kernel's single reader of `x`, if x is read once and not written
  const onlyReader = (x: number): number | undefined => {
    const read = readers.get(x);
    return written.has(x) || read?.length !== 1 ? undefined : read[0];
  };
  // the product's additive path: anchor, then adds and reshapes that carry it
  const path = new Set<number>([group.anchor]);
  for (let x: number | undefined = group.anchor; x !== undefined;) {
    const next = onlyReader(x);
    if (next === undefined) break;
    const kind = opName(graph, next);
    const carries =
      kind === "reshape" || kind === "add" || (kind === "sub" && graph.node(next).inputs[0] === x);
    if (!carries) break;
    path.add(next);
    x = next;
  }
  // a constant, through the views that broadcast it
  const constant = (x: number): number | undefined => {
    const op = graph.node(x).op;
    if (op.kind === "reshape" || op.kind === "expand") return constant(graph.node(x).inputs[0]!);
    return op.kind === "const" && Number.isFinite(op.value) ? op.value : undefined;
  };
  let scale = 1;
  for (let term = id; ;) {
    const next = onlyReader(term);
    if (next === undefined) return undefined;
    const [left, right] = graph.node(next).inputs;
    const other = left === term ? right : left;
    const kind = opName(graph, next);
    switch (kind) {
      case "reshape":
        break;
      case "mul": {
        const c = other === undefined ? undefined : constant(other);
        if (c === undefined) return undefined;
        scale *= c;
        break;
      }
      case "div": {
        const c = right === undefined || left !== term ? undefined : constant(right);
        if (c === undefined || c === 0) return undefined;
        scale /= c;
        break;
      }
      case "add":
      case "sub": {
        const negated = kind === "sub" && right === term;
        if (kind === "sub" && left === term) return undefined;
        if (other === undefined || !path.has(other) || !path.has(next)) return undefined;
        const c = negated ? -scale : scale;
        return Number.isFinite(Math.fround(c)) && c !== 0 ? c : undefined;
      }
      default:
        return undefined;
    }
    term = next;
  }
}

/** A node's op as one name: a binary op's function (`add`, `mul`), else its kind. */
function opName(graph: Graph, id: number): string {
  const op = graph.node(id).op;
  return op.kind === "binary" ? op.fn : op.kind;
}
