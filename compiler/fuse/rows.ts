// Row kernels: a reduce over the trailing axes of contiguous rows, with the reduces of the same
// rows that read it (or that it reads), the elementwise groups between and after them, and
// reductions over everything of values per row or per element, become one kernel when every row
// reduce is read only at its own row (max → Σ exp(x − max) → exp(x − max)/Σ; mean → variance →
// normalize; a row sum of the log-softmax picked by a one-hot, summed over all rows). Groups join
// from a window around the first reduce when they read a member's output or a member reads
// theirs, the kernel fits the device's bindings, and merging makes no cycle. The merged kernel
// writes only the values read outside it (or wanted by the entry); the others stay in registers.
import type { Graph } from "../ir.js";
import { rowShape, rowStructure } from "./row-structure.js";
import { bindingsOfAll, oneBinding, type BindingsOf } from "./split.js";
import type { KernelGroup } from "./types.js";
import { UnitGraph } from "./unit-graph.js";

export { ROW_TOTAL_MAX } from "./row-structure.js";

/** Groups before and after a row kernel's members that may join it. */
const ROW_WINDOW = 12;

interface RowContext {
  graph: Graph;
  groups: readonly KernelGroup[];
  /** node → the groups that read it, increasing */
  readers: ReadonlyMap<number, number[]>;
  isOutput: ReadonlySet<number>;
  max: number;
  bindingsOf: BindingsOf;
}

/** A row kernel, and the outputs of its members it keeps in registers. */
interface RowGroup {
  group: KernelGroup;
  internal: number[];
}

/**
 * Joins groups into row kernels (the nodes they keep in registers leave `materialized`) and
 * returns the groups in a topological order, each at the position of its last member where it
 * can be.
 */
export function fuseRows(
  graph: Graph,
  groups: readonly KernelGroup[],
  materialized: Set<number>,
  isOutput: ReadonlySet<number>,
  max: number,
  bindingsOf: BindingsOf = oneBinding,
): KernelGroup[] {
  const readers = new Map<number, number[]>();
  groups.forEach((g, j) => {
    for (const r of g.reads) {
      const list = readers.get(r);
      if (list) list.push(j);
      else readers.set(r, [j]);
    }
  });
  const rc: RowContext = { graph, groups, readers, isOutput, max, bindingsOf };
  const units = new UnitGraph(groups, readers);
  const rowGroups = new Map<number, KernelGroup>(); // unit → its merged group
  for (let i = 0; i < groups.length; i++) {
    if (units.unitOf(i) !== i || units.membersOf(i).length !== 1) continue;
    if (!rowShape(graph, groups[i]!)) continue;
    const merged = growCluster(rc, units, i);
    if (!merged) continue;
    rowGroups.set(i, merged.group);
    for (const x of merged.internal) materialized.delete(x);
  }
  return units.order().map((u) => rowGroups.get(u) ?? groups[u]!);
}

/**
 * Grows a row kernel from the row reduce group `i`: passes over the window around the cluster
 * join each map or reduce group that is connected to it, makes no cycle and leaves a kernel one
 * row kernel computes, until a pass joins none. Undefined when nothing joined.
 */
function growCluster(rc: RowContext, units: UnitGraph, i: number): RowGroup | undefined {
  const { groups } = rc;
  const n = groups.length;
  let cluster = [i];
  // The outputs of the cluster's groups, kept as it grows: `connected` asks for each candidate.
  const outs = new Set(groups[i]!.outputs);
  let merged: RowGroup | undefined;
  for (let changed = true; changed;) {
    changed = false;
    const lo = Math.max(0, Math.min(...cluster) - ROW_WINDOW);
    const hi = Math.min(n - 1, Math.max(...cluster) + ROW_WINDOW);
    for (let j = lo; j <= hi; j++) {
      if (cluster.includes(j) || units.unitOf(j) !== j || units.membersOf(j).length !== 1) continue;
      const h = groups[j]!;
      if (h.kind !== "map" && h.kind !== "reduce") continue;
      if (!connected(groups, cluster, outs, h)) continue;
      // No cycle: no path between the cluster and h through another unit.
      if (units.longPath(i, j) || units.longPath(j, i)) continue;
      const trial = mergeRow(
        rc,
        [...cluster, j].sort((p, q) => p - q),
      );
      if (!trial) continue;
      cluster = [...cluster, j].sort((p, q) => p - q);
      for (const o of h.outputs) outs.add(o);
      merged = trial;
      units.contract(i, j, cluster);
      changed = true;
    }
  }
  return cluster.length < 2 ? undefined : merged;
}

/** Whether group `h` reads an output of the cluster (`outs`) or a member reads one of `h`'s. */
function connected(
  groups: readonly KernelGroup[],
  cluster: readonly number[],
  outs: ReadonlySet<number>,
  h: KernelGroup,
): boolean {
  return (
    h.reads.some((r) => outs.has(r)) ||
    cluster.some((c) => groups[c]!.reads.some((r) => h.outputs.includes(r)))
  );
}

/**
 * The row kernel of groups `idx` (increasing), or undefined if one kernel cannot compute them or
 * it would bind more buffers than `max` (or write nothing). It writes the members' outputs read
 * outside it or wanted by the entry; the others are internal.
 */
function mergeRow(rc: RowContext, idx: readonly number[]): RowGroup | undefined {
  const gs = idx.map((i) => rc.groups[i]!);
  const produced = new Set<number>();
  for (const g of gs) {
    for (const o of g.outputs) produced.add(o);
    produced.add(g.anchor);
  }
  const row = rowStructure(rc.graph, gs, produced);
  if (!row) return undefined;
  const inside = new Set(idx);
  const outputs: number[] = [];
  const internal: number[] = [];
  for (const g of gs)
    for (const o of g.outputs) {
      const readOutside = (rc.readers.get(o) ?? []).some((j) => !inside.has(j));
      (rc.isOutput.has(o) || readOutside ? outputs : internal).push(o);
    }
  const reads = new Set<number>();
  for (const g of gs) for (const r of g.reads) if (!produced.has(r)) reads.add(r);
  if (outputs.length === 0 || bindingsOfAll([...outputs, ...reads], rc.bindingsOf) > rc.max)
    return undefined;
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
}
