// Whether a set of reduce and map groups can be one row kernel, and its rows: every read of a row
// reduce must be at the current row (through elementwise ops, reshapes and the expand of its size-1
// axes over the row), every read of a reduction over everything after all rows.
import { numel, type Graph } from "../ir.js";
import { isAnchor, keepsElement } from "./ops.js";
import type { KernelGroup, RowInfo } from "./types.js";

/** A row kernel with reductions over everything runs as one workgroup: at most this many elements. */
export const ROW_TOTAL_MAX = 1 << 18;

/** (rows, len) of a reduce group over trailing axes (f32); undefined for other groups. */
export function rowShape(graph: Graph, g: KernelGroup): { rows: number; len: number } | undefined {
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
const MODES: readonly RowMode[] = ["E", "R", "S", "T", "X"];

/**
 * The row structure of a candidate set of groups, or undefined if one kernel cannot compute it.
 * `produced`: the nodes the groups write (and their anchors).
 */
export function rowStructure(
  graph: Graph,
  members: readonly KernelGroup[],
  produced: ReadonlySet<number>,
): RowInfo | undefined {
  const dims = rowDims(graph, members);
  if (!dims) return undefined;
  const { rows, len } = dims;
  const found = rowRoots(graph, members, rows, len);
  if (!found) return undefined;
  const { reduces, totals, roots } = found;
  if (totals.length && rows * len > ROW_TOTAL_MAX) return undefined;
  if (!totals.length && roots.some(([, mode]) => mode === "T")) return undefined;
  const computed = new Set<number>(produced);
  for (const g of members) for (const x of g.nodes) computed.add(x);
  const readable = rowReads(graph, len, computed, new Set(reduces), new Set(totals));
  for (const [x, mode] of roots) if (!readable(x, mode)) return undefined;
  // Row reduces in dependency (node) order; totals after them.
  return {
    rows,
    len,
    reduces: reduces.sort((p, q) => p - q),
    totals: totals.sort((p, q) => p - q),
  };
}

/** The rows: those of the first row reduce that is not over everything, else of the first one. */
function rowDims(
  graph: Graph,
  members: readonly KernelGroup[],
): { rows: number; len: number } | undefined {
  let shape: { rows: number; len: number } | undefined;
  for (const g of members) {
    const s = rowShape(graph, g);
    if (s && (numel(graph.shape(g.anchor)) !== 1 || !shape)) shape = s;
    if (s && numel(graph.shape(g.anchor)) !== 1) break;
  }
  return shape;
}

/**
 * The row reduces, the totals (reduces over everything of per-row or per-element values), and
 * the values the kernel computes with how each is indexed: reduce inputs, epilogues and map
 * outputs. Undefined when a group fits neither.
 */
function rowRoots(
  graph: Graph,
  members: readonly KernelGroup[],
  rows: number,
  len: number,
): { reduces: number[]; totals: number[]; roots: [number, RowMode][] } | undefined {
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
  return { reduces, totals, roots };
}

/**
 * Whether the kernel can read node `x` the way `mode` says: a row reduce only at its row, a total
 * only after the rows; computed nodes pass the mode on to their inputs (the same for elementwise
 * ops and reshapes of the same element count, the row for the expand of a row value over it).
 */
function rowReads(
  graph: Graph,
  len: number,
  computed: ReadonlySet<number>,
  rowSet: ReadonlySet<number>,
  totalSet: ReadonlySet<number>,
): (x: number, mode: RowMode) => boolean {
  const seen = new Set<number>(); // 5·node + the mode's index
  const ok = (x: number, mode: RowMode): boolean => {
    const key = 5 * x + MODES.indexOf(mode);
    if (seen.has(key)) return true;
    seen.add(key);
    if (rowSet.has(x)) return mode === "R";
    if (totalSet.has(x)) return mode === "T";
    if (!computed.has(x)) return true; // a buffer
    const n = graph.node(x);
    const k = n.op.kind;
    if (k === "input") return true;
    if (keepsElement(k))
      return n.inputs.every((i) => ok(i, numel(graph.shape(i)) === numel(n.shape) ? mode : "X"));
    if (k === "expand")
      return ok(n.inputs[0]!, expandMode(graph.shape(n.inputs[0]!), n.shape, mode, len));
    if (isAnchor(k)) return false;
    return n.inputs.every((i) => ok(i, "X"));
  };
  return ok;
}

/** How an expand from `a` to `b` read in `mode` reads its input. */
function expandMode(
  a: readonly number[],
  b: readonly number[],
  mode: RowMode,
  len: number,
): RowMode {
  if (numel(a) === 1) return mode === "T" ? "T" : "S";
  if (mode !== "E") return "X";
  // the row is b's axes from `cut` on: a is 1 there and b before it (no slices: a row kernel's
  // check asks this of every expand it reads, once per candidate group)
  let rowCount = 1; // numel(b.slice(cut))
  for (let cut = b.length; cut >= 0; cut--) {
    if (cut < b.length) rowCount *= b[cut]!;
    if (rowCount !== len) continue;
    let fits = true;
    for (let i = cut; i < a.length && fits; i++) fits = a[i] === 1;
    for (let i = 0; i < Math.min(cut, a.length) && fits; i++) fits = a[i] === b[i];
    if (fits) return "R";
  }
  return "X";
}
