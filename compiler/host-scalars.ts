// Step-only scalars on the host, in float64. An optimizer's `1 - beta2 ^ step` computed on the
// device in f32, with beta2 rounded to f32 first, is off by ~2e-5 at β2 = 0.999 (issue 10): an
// Adam run drifts 10–40× further from float64 than PyTorch's f32 run, which computes its bias
// corrections in Python floats. This pass finds every scalar subgraph of the step program that
// depends only on `step`, `lr_scale` and constants (whose IR values are float64 numbers), and
// turns each value such a subgraph hands to the rest of the graph (a boundary) into an element
// of one packed program input, `host_scalars`. The runtime evaluates the host program in
// float64 every step and rounds each value once when it feeds it (not at all on `cpu64`). One
// packed input rather than one per value: a fused kernel binds it once.
import { Graph, numel, type Node } from "./ir.js";
import type { Entry, GraphProgram, HostScalars, Output, StepProgram } from "./program.js";

/** The name of the packed input the runtime feeds. */
export const HOST_SCALARS_INPUT = "host_scalars";

/** The inputs a host scalar may read: both are fed by the runtime every step. */
const HOST_INPUTS = new Set(["step", "lr_scale"]);

/** Ops a host scalar may be made of: elementwise arithmetic and scalar movement. */
const HOST_KINDS = new Set([
  "const",
  "unary",
  "binary",
  "where",
  "cast",
  "reshape",
  "expand",
  "permute",
]);

/** Which nodes are scalars computed from `step`, `lr_scale` and constants only. */
function hostComputable(graph: Graph): boolean[] {
  const host: boolean[] = [];
  for (const n of graph.nodes) {
    const scalar = numel(n.shape) === 1;
    if (n.op.kind === "input")
      host.push(scalar && n.op.role === "scalar" && HOST_INPUTS.has(n.op.name));
    else host.push(scalar && HOST_KINDS.has(n.op.kind) && n.inputs.every((i) => host[i]));
  }
  return host;
}

/** Host values the device reads: f32 results of an op (not a bare input or constant). */
function boundaries(graph: Graph, host: boolean[], outputs: ReadonlySet<number>): number[] {
  const wanted = new Set<number>();
  for (const n of graph.nodes) {
    if (host[n.id]) continue;
    for (const i of n.inputs) if (host[i]) wanted.add(i);
  }
  for (const o of outputs) if (host[o]) wanted.add(o);
  return [...wanted]
    .filter((id) => {
      const n = graph.node(id);
      return n.dtype === "f32" && n.op.kind !== "input" && n.op.kind !== "const";
    })
    .sort((a, b) => a - b);
}

/**
 * The host program: the boundaries' subgraphs copied into a graph of their own, with equal
 * subgraphs (every optimizer's `1 - beta1 ^ step`) computed once. Returns it and, per boundary,
 * its slot in the packed input.
 */
function hostProgram(
  graph: Graph,
  wanted: readonly number[],
): { program: GraphProgram; slot: Map<number, number> } {
  const host = new Graph();
  const copied = new Map<number, number>();
  const byKey = new Map<string, number>();
  const inputs: GraphProgram["inputs"] = [];
  const copy = (id: number): number => {
    const known = copied.get(id);
    if (known !== undefined) return known;
    const n = graph.node(id);
    const ins = n.inputs.map(copy);
    const key = JSON.stringify([n.op, ins, n.shape, n.dtype]);
    let made = byKey.get(key);
    if (made === undefined) {
      made = host.add(n.op, ins, n.shape, n.dtype, { name: n.name, source: n.source });
      byKey.set(key, made);
      if (n.op.kind === "input")
        inputs.push({
          name: n.op.name,
          node: made,
          role: "scalar",
          shape: n.shape,
          dtype: n.dtype,
        });
    }
    copied.set(id, made);
    return made;
  };
  const outputs: Output[] = [];
  const slotOf = new Map<number, number>();
  const slot = new Map<number, number>();
  for (const id of wanted) {
    const node = copy(id);
    let k = slotOf.get(node);
    if (k === undefined) {
      k = outputs.length;
      slotOf.set(node, k);
      outputs.push({ name: `${HOST_SCALARS_INPUT}[${k}]`, node });
    }
    slot.set(id, k);
  }
  return { program: { graph: host, inputs, entries: [{ name: "host_scalars", outputs }] }, slot };
}

/**
 * The step program with its step-only scalars computed on the host: the graph is rebuilt with
 * the packed input and each boundary read from it (node ids after the first boundary move, so
 * every id the program holds is mapped). Unchanged when there is nothing to move.
 */
export function hostScalars(step: StepProgram): StepProgram {
  const { graph } = step;
  const allOutputs = new Set(step.entries.flatMap((e) => e.outputs.map((o) => o.node)));
  const host = hostComputable(graph);
  const wanted = boundaries(graph, host, allOutputs);
  if (wanted.length === 0) return step;
  const { program, slot } = hostProgram(graph, wanted);
  const count = program.entries[0]!.outputs.length;

  // The packed input goes just before the first boundary, so that the nodes before it (the
  // forward pass, in practice) keep their ids in printed graphs and kernels.
  const out = new Graph();
  let packed = -1;
  const moved: number[] = [];
  for (const n of graph.nodes) {
    const k = slot.get(n.id);
    // before the first boundary every node keeps its id and inputs: the node itself serves
    if (packed < 0 && k === undefined) {
      out.nodes.push(n);
      moved.push(n.id);
      continue;
    }
    if (k !== undefined && packed < 0) {
      const op = { kind: "input", role: "scalar", name: HOST_SCALARS_INPUT } as const;
      packed = out.add(op, [], [count], "f32", { name: HOST_SCALARS_INPUT });
    }
    moved.push(rebuild(out, n, moved, packed, k));
  }

  const at = (id: number) => moved[id]!;
  const entries = new Map<Entry, Entry>();
  const entry = (e: Entry): Entry => {
    let mapped = entries.get(e);
    if (!mapped) {
      mapped = { ...e, outputs: e.outputs.map((o) => ({ ...o, node: at(o.node) })) };
      entries.set(e, mapped);
    }
    return mapped;
  };
  const hostScalars: HostScalars = { input: HOST_SCALARS_INPUT, program };
  return {
    ...step,
    graph: out,
    inputs: [
      { name: HOST_SCALARS_INPUT, node: packed, role: "scalar", shape: [count], dtype: "f32" },
      ...step.inputs.map((i) => ({ ...i, node: at(i.node) })),
    ],
    entries: step.entries.map(entry),
    loss: at(step.loss),
    variants: new Map([...step.variants].map(([k, e]) => [k, entry(e)])),
    states: step.states.map((s) => ({ ...s, init: at(s.init) })),
    stateInit: entry(step.stateInit),
    budgets: step.budgets.map((b) => ({ ...b, score: entry(b.score), prune: entry(b.prune) })),
    actions: step.actions.map((a) => ({ ...a, entry: entry(a.entry) })),
    gradients: new Map([...step.gradients].map(([k, g]) => [k, at(g)])),
    evaluate: entry(step.evaluate),
    predict: step.predict && entry(step.predict),
    hostScalars,
  };
}

/** One node of the rebuilt graph: a boundary reads its slot of the packed input, others copy. */
function rebuild(
  out: Graph,
  n: Node,
  moved: readonly number[],
  packed: number,
  slot: number | undefined,
): number {
  // a data input's known value range goes along (a gather of it then needs no bounds check)
  const extra = { name: n.name, source: n.source, ...(n.range ? { range: n.range } : {}) };
  if (slot === undefined)
    return out.add(
      n.op,
      n.inputs.map((i) => moved[i]!),
      n.shape,
      n.dtype,
      extra,
    );
  const element = out.add(
    { kind: "slice", starts: [slot], steps: [1] },
    [packed],
    [1],
    "f32",
    extra,
  );
  if (n.shape.length === 1) return element;
  return out.add({ kind: "reshape" }, [element], n.shape, "f32", extra);
}
