// Multi-output map kernels: consecutive map groups of one element count whose later members read
// the earlier ones' outputs only at the same element join into one kernel (an optimizer's param
// and states), as long as it binds no more storage buffers than the device allows.
import { numel, type Graph } from "../ir.js";
import { keepsElement } from "./ops.js";
import { bindingsOfAll, oneBinding, type BindingsOf } from "./split.js";
import type { KernelGroup } from "./types.js";

/**
 * Joins consecutive map groups of the same element count into one kernel with several outputs,
 * when the later ones read the earlier ones' outputs only at the element being computed (through
 * elementwise ops and reshapes): the thread that writes an element has just computed it.
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
    const last = out[out.length - 1];
    if (
      last?.kind === "map" &&
      g.kind === "map" &&
      numel(graph.shape(last.output)) === numel(graph.shape(g.output))
    ) {
      const produced = new Set(last.outputs);
      const reads = [...new Set([...last.reads, ...g.reads])].filter((r) => !produced.has(r));
      if (
        bindingsOfAll([...reads, ...last.outputs, g.output], bindingsOf) <= max &&
        readsAtSameElement(graph, g, produced, materialized)
      ) {
        out[out.length - 1] = {
          ...last,
          output: g.output,
          anchor: g.anchor,
          outputs: [...last.outputs, g.output],
          nodes: [...new Set([...last.nodes, ...g.nodes])].sort((p, q) => p - q),
          reads: reads.sort((p, q) => p - q),
        };
        continue;
      }
    }
    out.push(g);
  }
  return out;
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
