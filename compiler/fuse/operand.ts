// How a matmul reads an operand in place: a view (reshape, permute, expand) of a buffer becomes a
// transpose flag and a batch stride instead of a copy.
import { strides, type Graph, type Node } from "../ir.js";
import type { MatmulOperand } from "./types.js";

/** Ops a matmul operand may be a view through. */
const VIEW_KINDS = new Set(["reshape", "permute", "expand"]);

/** Row-major (contiguous) strides, ignoring size-1 dims. */
function isContiguous(shape: readonly number[], st: readonly number[]): boolean {
  const want = strides(shape);
  return shape.every((d, i) => d === 1 || st[i] === want[i]);
}

/** The nodes from `id` down to the first one that is not a view op (or already has a buffer). */
function viewChain(
  graph: Graph,
  id: number,
  hasBuffer: (id: number) => boolean,
): { chain: Node[]; src: Node } {
  const chain: Node[] = [];
  let src = graph.node(id);
  while (VIEW_KINDS.has(src.op.kind) && !hasBuffer(src.id)) {
    chain.push(src);
    src = graph.node(src.inputs[0]!);
  }
  return { chain, src };
}

/** Every view node `viewChain` may walk through from `id`, whatever has a buffer. */
export function viewNodes(graph: Graph, id: number): number[] {
  return viewChain(graph, id, () => false).chain.map((n) => n.id);
}

/**
 * Shape and strides of a view chain (applied bottom-up) relative to its source's contiguous
 * buffer; undefined when a reshape of a non-contiguous view cannot be expressed by strides.
 */
function viewStrides(
  src: Node,
  chain: readonly Node[],
): { shape: number[]; st: number[] } | undefined {
  let shape: number[] = [...src.shape];
  let st = strides(shape);
  for (const n of [...chain].reverse()) {
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
  return { shape, st };
}

/**
 * How a matmul reads operand `id` (rows×cols in its last two axes, after the op's own transpose
 * flag) if it is a view (reshape, permute, expand) of another node's buffer; undefined if not.
 */
export function operandView(
  graph: Graph,
  id: number,
  opTrans: boolean,
  allowBroadcast: boolean,
  hasBuffer: (id: number) => boolean,
): MatmulOperand | undefined {
  const { chain, src } = viewChain(graph, id, hasBuffer);
  const view = viewStrides(src, chain);
  if (!view) return undefined;
  const { shape, st } = view;
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
