// The map kernel template: one output tensor computed elementwise from an inlined subgraph of
// elementwise, movement, const, iota, random, gather, cast and where nodes. Parameters: the
// workgroup size and the elements each invocation computes (strided by the whole grid, so that
// neighbouring invocations touch neighbouring elements).
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
  const out = k.graph.node(k.output);
  const outputs = k.outputs ?? [k.output];
  const n = numel(out.shape);
  const p = params ?? defaultMapParams(n);
  const table = new BindingTable(k.graph, k.bufferOf, "in", k.packedOf);
  const written = new Set(outputs);
  // An output written over an input it reads (compiler/in-place.ts) is read through its own
  // binding: one buffer may not be bound twice when one binding is writable.
  outputs.forEach((id, j) => table.alias(id, `out${j}`));
  const em = new Emitter(k.graph, {
    isBuffer: (id) => !written.has(id) && k.isBuffer(id),
    load: (id, f) => table.load(id, f),
  });
  const groups = Math.ceil(n / (p.workgroupSize * p.perInvocation));
  const dispatch = grid(groups);
  const stride = dispatch[0] * dispatch[1] * p.workgroupSize;
  // Every value is computed (its loads done) before any store: an in-place output must not
  // overwrite an element another output still reads.
  const body = em.scope(() => {
    const values = outputs.map((id) => em.value(id, em.index(k.graph.shape(id), { flat: "gi" })));
    values.forEach((v, j) => em.lines.push(`out${j}[i] = ${v};`));
  });
  const name =
    k.title ?? `map ${shapeText(out.dtype, out.shape)} ${outputs.map((o) => `%${o}`).join(" ")}`;
  const loop =
    p.perInvocation === 1
      ? [`let i = t;`, `if (i < ${n}u) {`, `  let gi = i32(i);`, ...indent(body), `}`]
      : [
          `for (var e = 0u; e < ${p.perInvocation}u + lrk_zero; e++) {`,
          `  let i = t + e * ${stride}u;`,
          `  if (i < ${n}u) {`,
          `    let gi = i32(i);`,
          ...indent(body, 4),
          `  }`,
          `}`,
        ];
  return renderKernel({
    name,
    header: header(k.graph, name, k.nodes),
    buffers: [...outputBuffers(k.graph, outputs, k.bufferOf), ...table.buffers()],
    declarations: [helperCode(em.helpers)],
    workgroupSize: p.workgroupSize,
    builtins: { gid: "global_invocation_id" },
    body: [`let t = gid.x + gid.y * ${dispatch[0] * p.workgroupSize}u;`, ...loop],
    dispatch,
  });
}
