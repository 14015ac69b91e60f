// Kernels that bind more storage buffers than the device allows: each such group is split by
// materializing inlined nodes below it, the one that gathers the most of its buffers (and still
// fits in a kernel) first, until the group fits. Every over-limit group of a fusion is split at
// once, from its own nodes alone, so fusion runs again once or twice per entry rather than once
// per split: a gradient-norm reduce over a deep model's gradients needs a split per few layers.
import type { Graph } from "../ir.js";
import { BindingLimitError } from "../memory-plan.js";
import { sourceLines } from "../wgsl.js";
import { isElementwise, isMap } from "./ops.js";
import type { Fusion, KernelGroup } from "./types.js";

/** The bindings a node's buffer takes (FuseOptions.bindingsOf). */
export type BindingsOf = (node: number) => number;
export const oneBinding: BindingsOf = () => 1;

/** The bindings the buffers of `nodes` take together. */
export function bindingsOfAll(nodes: Iterable<number>, bindingsOf: BindingsOf): number {
  let n = 0;
  for (const x of nodes) n += bindingsOf(x);
  return n;
}

/** Storage buffers a group's kernel binds (its outputs, the buffers it reads). */
function bindingCount(g: KernelGroup, bindingsOf: BindingsOf): number {
  return bindingsOfAll(g.reads, bindingsOf) + bindingsOfAll(g.outputs, bindingsOf);
}

/** The groups (special kernels aside) binding more than `max` buffers. */
export function overBindings(
  f: Pick<Fusion, "groups">,
  max: number,
  bindingsOf: BindingsOf = oneBinding,
): KernelGroup[] {
  return f.groups.filter((g) => g.kind !== "special" && bindingCount(g, bindingsOf) > max);
}

/**
 * The nodes of group `over` to materialize so that it binds at most `max` buffers: map or
 * elementwise nodes (not the output, the anchor or a buffer), each time the one whose inlined
 * subgraph reads the most buffers, at most `max - 1` and more than one; the first in node order on
 * ties. Throws a BindingLimitError if no node can be split off at all.
 */
export function splitPoints(
  graph: Graph,
  f: Pick<Fusion, "materialized">,
  over: KernelGroup,
  max: number,
  bindingsOf: BindingsOf = oneBinding,
): number[] {
  const members = new Set(over.nodes);
  // The nodes whose values the kernel computes in order rather than inline: after an epilogue node
  // is materialized, the rest of the chain is a map kernel reading it, with only `output` on top.
  let tops = new Set([over.output, over.anchor, ...over.epilogue]);
  const chosen = new Set<number>();
  const isBuffer = (x: number) => f.materialized.has(x) || chosen.has(x) || !members.has(x);
  // Counting past `cap` buffers tells nothing more: a node reading that many is too big to split
  // off, and a top reading that many (less the tops themselves) keeps the group over the limit.
  // So a set stops growing there (`undefined`: too many), and the rounds of splitting a reduction
  // over every gradient of a deep model (a chain of n additions) cost n·cap each, not n².
  for (;;) {
    const cap = max + tops.size;
    // The buffers read below each node the kernel still computes (down to buffers), up to `cap`.
    // Every node below a top is visited, even under a set already too big: the candidates are the
    // nodes visited.
    const memo = new Map<number, Set<number> | undefined>();
    const leaves = (x: number): Set<number> | undefined => {
      if (memo.has(x)) return memo.get(x);
      let out: Set<number> | undefined = new Set<number>();
      for (const i of graph.node(x).inputs) {
        const below = isBuffer(i) ? [i] : leaves(i);
        if (!out) continue;
        if (!below) out = undefined;
        else for (const l of below) out.add(l);
        if (out && out.size > cap) out = undefined;
      }
      memo.set(x, out);
      return out;
    };
    let reads: Set<number> | undefined = new Set<number>();
    for (const t of tops) {
      const below = leaves(t);
      if (!below) reads = undefined;
      else if (reads) for (const l of below) if (!tops.has(l)) reads.add(l);
    }
    if (reads && bindingsOfAll(reads, bindingsOf) + bindingsOfAll(over.outputs, bindingsOf) <= max)
      break;
    let best: number | undefined;
    let bestSize = 1;
    for (const x of over.nodes) {
      if (x === over.output || x === over.anchor || isBuffer(x) || !memo.has(x)) continue;
      if (!isMap(graph.node(x)) && !isElementwise(graph.node(x).op.kind)) continue;
      const below = leaves(x);
      const size = below ? bindingsOfAll(below, bindingsOf) : Infinity;
      if (size + bindingsOf(x) <= max && size > bestSize) [best, bestSize] = [x, size];
    }
    if (best === undefined) break;
    chosen.add(best);
    if (tops.has(best)) tops = new Set([over.output]);
  }
  // A program can ask for this (one expression over more tensors than a kernel may bind): the
  // caller reports it at the user's lines.
  if (chosen.size === 0)
    throw new BindingLimitError(
      `kernel for %${over.output}`,
      bindingCount(over, bindingsOf),
      max,
      sourceLines(graph, over.nodes),
      bindingsOfAll(
        [...over.reads, ...over.outputs].filter((x) => bindingsOf(x) > 1),
        bindingsOf,
      ),
    );
  return [...chosen];
}
