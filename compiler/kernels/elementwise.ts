// The map kernel template: one output tensor computed elementwise from an inlined subgraph of
// elementwise, movement, const, iota, random, gather, cast and where nodes. Parameters: the
// workgroup size and the elements each invocation computes (strided by the whole grid, so that
// neighbouring invocations touch neighbouring elements).
//
// Where every output's last axis is a multiple of 4, each invocation computes 4 neighbouring
// elements of it with vec4 loads and stores (compiler/kernels/vector.ts): on lavapipe this cut a
// 295k-element GELU from 2.0 to 0.8–1.0 ms and a head transpose from 1.7 to 0.6 ms of worker CPU
// (measured alone, one process).
import type { Graph } from "../ir.js";
import { numel } from "../ir.js";
import {
  BindingTable,
  type PackedOf,
  Emitter,
  grid,
  header,
  helperCode,
  outputBuffers,
  shapeText,
} from "../wgsl.js";
import { indent, renderKernel } from "./render.js";
import type { KernelSource } from "./types.js";
import { VectorLoads, vectorReads, vectorRows, WIDTH } from "./vector.js";

export interface MapParams {
  workgroupSize: number;
  perInvocation: number;
}

export function defaultMapParams(count: number): MapParams {
  return { workgroupSize: 64, perInvocation: count >= 1 << 20 ? 4 : 1 };
}

export interface MapKernelInput {
  graph: Graph;
  /** The node written (the last of `outputs`). */
  output: number;
  /** Every node written, at the same element (default: `output` alone). */
  outputs?: readonly number[];
  /** Every node the kernel computes (for the header). */
  nodes: readonly number[];
  isBuffer: (node: number) => boolean;
  bufferOf: (node: number) => number;
  packedOf?: PackedOf;
  title?: string;
}

export function mapKernel(k: MapKernelInput, params?: MapParams): KernelSource {
  const outputs = k.outputs ?? [k.output];
  const vector = outputs.every((o) => {
    const node = k.graph.node(o);
    return node.dtype === "f32" && vectorRows(node.shape);
  });
  return (vector ? emitMap(k, params, true) : undefined) ?? emitMap(k, params, false)!;
}

/** The map kernel, vec4 or scalar; undefined if the vec4 one's elements did not load alike. */
function emitMap(
  k: MapKernelInput,
  params: MapParams | undefined,
  vector: boolean,
): KernelSource | undefined {
  const out = k.graph.node(k.output);
  const outputs = k.outputs ?? [k.output];
  const n = numel(out.shape);
  const p = params ?? defaultMapParams(n);
  const table = new BindingTable(k.graph, k.bufferOf, "in", k.packedOf);
  const written = new Set(outputs);
  // An output written over an input it reads (compiler/in-place.ts) is read through its own
  // binding: one buffer may not be bound twice when one binding is writable.
  outputs.forEach((id, j) => table.alias(id, `out${j}`));
  const isBuffer = (id: number) => !written.has(id) && k.isBuffer(id);
  const loads = new VectorLoads(
    k.graph,
    table,
    vector ? vectorReads(k.graph, outputs, isBuffer) : new Map(),
    isBuffer,
    k.bufferOf,
    k.packedOf,
    (name) => vector && name.startsWith("out"),
  );
  const em: Emitter = new Emitter(k.graph, {
    isBuffer,
    load: (id, f) => (vector ? loads.load(em, id, f) : table.load(id, f)),
  });
  const count = vector ? n / WIDTH : n;
  const groups = Math.ceil(count / (p.workgroupSize * p.perInvocation));
  const dispatch = grid(groups);
  const stride = dispatch[0] * dispatch[1] * p.workgroupSize;
  // Every value is computed (its loads done) before any store: an in-place output must not
  // overwrite an element another output still reads.
  const body = em.scope(() => {
    if (!vector) {
      const values = outputs.map((id) => em.value(id, em.index(k.graph.shape(id), { flat: "gi" })));
      values.forEach((v, j) => em.lines.push(`out${j}[i] = ${v};`));
      return;
    }
    const values: string[][] = outputs.map(() => []);
    loads.group();
    for (let j = 0; j < WIDTH; j++) {
      loads.element(j);
      em.lines.push(`let g${j} = gi * ${WIDTH} + ${j};`);
      // each element in a scope of its own: common subexpressions are per element
      const lines = em.scope(() =>
        outputs.forEach((id, o) =>
          values[o]!.push(em.value(id, em.index(k.graph.shape(id), { flat: `g${j}` }))),
        ),
      );
      em.lines.push(...lines);
    }
    loads.element(undefined);
    values.forEach((v, o) => em.lines.push(`out${o}[i] = vec4<f32>(${v.join(", ")});`));
  });
  if (!loads.matched) return undefined;
  const name =
    (k.title ?? `map ${shapeText(out.dtype, out.shape)} ${outputs.map((o) => `%${o}`).join(" ")}`) +
    (vector ? " (vec4)" : "");
  const loop =
    p.perInvocation === 1
      ? [`let i = t;`, `if (i < ${count}u) {`, `  let gi = i32(i);`, ...indent(body), `}`]
      : [
          `for (var e = 0u; e < ${p.perInvocation}u + lrk_zero; e++) {`,
          `  let i = t + e * ${stride}u;`,
          `  if (i < ${count}u) {`,
          `    let gi = i32(i);`,
          ...indent(body, 4),
          `  }`,
          `}`,
        ];
  const buffers = [...outputBuffers(k.graph, outputs, k.bufferOf), ...table.buffers()];
  return renderKernel({
    name,
    header: header(k.graph, name, k.nodes),
    buffers: vector ? loads.declare(buffers, (b) => b.access === "read_write") : buffers,
    declarations: [helperCode(em.helpers)],
    workgroupSize: p.workgroupSize,
    builtins: { gid: "global_invocation_id" },
    body: [`let t = gid.x + gid.y * ${dispatch[0] * p.workgroupSize}u;`, ...loop],
    dispatch,
  });
}
