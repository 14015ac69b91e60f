// Kernels that bind more storage buffers than the device allows: the first such group is split by
// materializing the inlined node below it that gathers the most of its buffers and still fits.
import type { Graph } from "../ir.js";
import { BindingLimitError } from "../memory-plan.js";
import { sourceLines } from "../wgsl.js";
import { isElementwise, isMap } from "./ops.js";
import type { Fusion, KernelGroup } from "./types.js";

/** Storage buffers a group's kernel binds (its outputs, the buffers it reads). */
function bindingCount(g: KernelGroup): number {
  return g.reads.length + g.outputs.length;
}

/** The first group (special kernels aside) binding more than `max` buffers. */
export function overBindings(f: Fusion, max: number): KernelGroup | undefined {
  return f.groups.find((g) => g.kind !== "special" && bindingCount(g) > max);
}

/**
 * The node of group `over` to materialize: the map or elementwise node (not the output, the anchor
 * or a buffer) whose inlined subgraph reads the most buffers, at most `max - 1`, more than one; the
 * first in node order on ties. Throws a BindingLimitError if there is none.
 */
export function splitPoint(graph: Graph, f: Fusion, over: KernelGroup, max: number): number {
  const below = new Map<number, Set<number>>();
  const leaves = (x: number): Set<number> => {
    const known = below.get(x);
    if (known) return known;
    const out = new Set<number>();
    for (const i of graph.node(x).inputs) {
      if (f.materialized.has(i)) out.add(i);
      else for (const l of leaves(i)) out.add(l);
    }
    below.set(x, out);
    return out;
  };
  let best: number | undefined;
  let bestSize = 1;
  for (const x of over.nodes) {
    if (x === over.output || x === over.anchor || f.materialized.has(x)) continue;
    if (!isMap(graph.node(x)) && !isElementwise(graph.node(x).op.kind)) continue;
    const size = leaves(x).size;
    if (size + 1 <= max && size > bestSize) [best, bestSize] = [x, size];
  }
  // A program can ask for this (one expression over more tensors than a kernel may bind): the
  // caller reports it at the user's lines.
  if (best === undefined)
    throw new BindingLimitError(
      `kernel for %${over.output}`,
      bindingCount(over),
      max,
      sourceLines(graph, over.nodes),
    );
  return best;
}
