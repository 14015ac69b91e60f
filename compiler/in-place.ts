// In-place updates: which of a program's outputs may be written over the input of the same name
// (a parameter's or an optimizer state's new value over the old one), so that the plan gives both
// one buffer instead of two. Full fine-tuning's planned memory then drops by a copy of the weights
// and of the optimizer states.
//
//   input:  a program and its fused entries (kernel groups in dispatch order)
//   output: the names of the outputs to write in place
//
// An output N (with an input also named N, of the same shape and dtype) is written in place when,
// in every entry that writes it:
//  - a map kernel writes it (each invocation writes the elements it computes, nothing else);
//  - that kernel reads the input only at the element it writes: every node of the kernel that
//    depends on the input is elementwise, of the input's shape (so the index reaching the input is
//    the output's own; the kernel loads every value before it stores any, see mapKernel);
//  - no kernel after it reads the input (it would see the new value);
//  - the entry does not also output the input itself under another name.
import type { Graph } from "./ir.js";
import { isElementwise } from "./fuse/ops.js";
import type { KernelGroup } from "./fuse/index.js";
import type { EntryFusion } from "./plan.js";
import type { GraphProgram } from "./program.js";

export function inPlaceOutputs(
  program: GraphProgram,
  fused: readonly Pick<EntryFusion, "entry" | "groups">[],
): Set<string> {
  const { graph } = program;
  const inputs = new Map(program.inputs.map((i) => [i.name, i]));
  const verdict = new Map<string, boolean>();
  for (const { entry, groups } of fused) {
    // the last kernel reading each buffer, and the kernel writing each node
    const lastReader = new Map<number, number>();
    const writer = new Map<number, number>();
    groups.forEach((g, i) => {
      for (const r of g.reads) lastReader.set(r, i);
      for (const o of g.outputs) writer.set(o, i);
    });
    const order = {
      groups,
      lastReader,
      writer,
      outputs: new Set(entry.outputs.map((o) => o.node)),
    };
    for (const o of entry.outputs) {
      const input = inputs.get(o.name);
      if (!input || verdict.get(o.name) === false) continue;
      const ok = o.node !== input.node && writableOver(graph, order, o.node, input.node);
      verdict.set(o.name, ok);
    }
  }
  return new Set([...verdict].filter(([, ok]) => ok).map(([name]) => name));
}

function writableOver(
  graph: Graph,
  order: {
    groups: readonly KernelGroup[];
    lastReader: ReadonlyMap<number, number>;
    writer: ReadonlyMap<number, number>;
    outputs: ReadonlySet<number>;
  },
  output: number,
  input: number,
): boolean {
  const same = (a: readonly number[], b: readonly number[]) =>
    a.length === b.length && a.every((d, i) => d === b[i]);
  const [out, old] = [graph.node(output), graph.node(input)];
  if (out.dtype !== old.dtype || !same(out.shape, old.shape)) return false;
  if (order.outputs.has(input)) return false; // passed through as well
  const at = order.writer.get(output);
  if (at === undefined) return false;
  const writer = order.groups[at]!;
  if (writer.kind !== "map") return false;
  if ((order.lastReader.get(input) ?? -1) > at) return false;
  // Every node of the writer that depends on the input reads it at its own element.
  const dependent = new Set<number>([input]);
  for (const id of writer.nodes) {
    const node = graph.node(id);
    if (!node.inputs.some((i) => dependent.has(i))) continue;
    if (!isElementwise(node.op.kind) || !same(node.shape, old.shape)) return false;
    dependent.add(id);
  }
  return true;
}
