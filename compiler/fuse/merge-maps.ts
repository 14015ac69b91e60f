// Multi-output map kernels: map groups of one element count whose later members read the earlier
// ones' outputs only at the same element join into one kernel (an optimizer's param and states),
// as long as it binds no more storage buffers than the device allows. A group may join one a few
// groups before it when it reads nothing those in between write: it then runs earlier, where the
// other is (an optimizer's scalar step beside the previous tensor's, SwitchLoRA's per-vector
// updates around the kernel between them).
import { numel, type Graph } from "../ir.js";
import { keepsElement } from "./ops.js";
import { bindingsOfAll, oneBinding, type BindingsOf } from "./split.js";
import type { KernelGroup } from "./types.js";

/** How many groups back a map group looks for one to join. */
const MERGE_WINDOW = 4;

/**
 * Joins map groups of the same element count into one kernel with several outputs, when the
 * later ones read the earlier ones' outputs only at the element being computed (through
 * elementwise ops and reshapes): the thread that writes an element has just computed it. A group
 * joins the nearest such group at most MERGE_WINDOW groups back when it reads no output of the
 * groups in between (so running it earlier keeps the order topological).
 */
export function mergeMaps(
  graph: Graph,
  groups: readonly KernelGroup[],
  materialized: ReadonlySet<number>,
  max: number,
  bindingsOf: BindingsOf = oneBinding,
): KernelGroup[] {
  const out: KernelGroup[] = [];
  for (const g of groups) {
    const at = g.kind === "map" ? partner(graph, out, g, materialized, max, bindingsOf) : -1;
    if (at < 0) {
      out.push(g);
      continue;
    }
    const last = out[at]!;
    const produced = new Set(last.outputs);
    out[at] = {
      ...last,
      output: g.output,
      anchor: g.anchor,
      outputs: [...last.outputs, g.output],
      nodes: [...new Set([...last.nodes, ...g.nodes])].sort((p, q) => p - q),
      reads: [...new Set([...last.reads, ...g.reads])]
        .filter((r) => !produced.has(r))
        .sort((p, q) => p - q),
    };
  }
  return out;
}

/**
 * The index in `out` of the map group that map group `g` can join, or -1: the nearest one of
 * `g`'s element count within the window, with none of the groups after it writing what `g`
 * reads, whose outputs `g` reads only at its own element, and the joined kernel within `max`
 * bindings.
 */
function partner(
  graph: Graph,
  out: readonly KernelGroup[],
  g: KernelGroup,
  materialized: ReadonlySet<number>,
  max: number,
  bindingsOf: BindingsOf,
): number {
  const count = numel(graph.shape(g.output));
  const reads = new Set(g.reads);
  for (let i = out.length - 1; i >= Math.max(0, out.length - MERGE_WINDOW); i--) {
    const last = out[i]!;
    if (last.kind === "map" && numel(graph.shape(last.output)) === count) {
      const produced = new Set(last.outputs);
      const joined = [...new Set([...last.reads, ...g.reads])].filter((r) => !produced.has(r));
      if (
        bindingsOfAll([...joined, ...last.outputs, g.output], bindingsOf) <= max &&
        readsAtSameElement(graph, g, produced, materialized)
      )
        return i;
    }
    // g cannot run before a group that writes what it reads
    if (last.outputs.some((o) => reads.has(o))) return -1;
  }
  return -1;
}

/** Whether map group `g` reads the nodes in `produced` only at the element it computes. */
function readsAtSameElement(
  graph: Graph,
  g: KernelGroup,
  produced: ReadonlySet<number>,
  materialized: ReadonlySet<number>,
): boolean {
  let ok = true;
  const seen = new Set<number>(); // 2·node + (1 when reached at the same element)
  const walk = (x: number, identity: boolean) => {
    const key = 2 * x + (identity ? 1 : 0);
    if (!ok || seen.has(key)) return;
    seen.add(key);
    if (x !== g.output && materialized.has(x)) {
      if (produced.has(x) && !identity) ok = false;
      return;
    }
    const keeps = keepsElement(graph.node(x).op.kind);
    for (const i of graph.node(x).inputs) walk(i, identity && keeps);
  };
  walk(g.output, true);
  return ok;
}
