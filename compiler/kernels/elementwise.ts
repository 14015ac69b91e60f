// The map kernel template: one output tensor computed elementwise from an inlined subgraph of
// elementwise, movement, const, iota, random, gather, cast and where nodes. Parameters: the
// workgroup size and the elements each invocation computes (strided by the whole grid, so that
// neighbouring invocations touch neighbouring elements).
//
// Where every output's last axis is a multiple of 4, each invocation computes 4 neighbouring
// elements of that axis ("vec4" kernels): the reads that are 4 neighbouring elements of their own
// tensor's last axis (`vectorReads`) become one vec4 load, the reads that are one element for all
// four one load, and the stores one vec4 store. On lavapipe a load or store whose address differs
// per lane is a per-lane loop whatever its width, so this cut a 295k-element GELU from 2.0 to
// 0.8–1.0 ms and a head transpose from 1.7 to 0.6 ms of worker CPU (measured alone, one process).
// The values are computed element by element as before (four times per invocation): results are
// identical to the scalar kernel's.
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
import type { KernelBuffer, KernelSource } from "./types.js";

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

/** Elements per invocation of a vec4 map kernel. */
const WIDTH = 4;
const COMPONENT = ["x", "y", "z", "w"];

/**
 * How the WIDTH elements an invocation computes (neighbours on the last axis of an output,
 * starting at a multiple of WIDTH) read a node: "vector", WIDTH neighbours on the node's own last
 * axis starting at a multiple of WIDTH (so one aligned vec4 of its buffer); "same", one element
 * for all; "other", anything else (read element by element).
 */
type Access = "vector" | "same" | "other";

const last = (shape: readonly number[]) => shape[shape.length - 1] ?? 1;

/** Whether a tensor's rows of `shape`'s last axis are whole vec4s. */
const vectorRows = (shape: readonly number[]) => last(shape) % WIDTH === 0 && numel(shape) > 0;

/**
 * How each node below `outputs` is read by a vec4 invocation (see Access), following the
 * emitter's index arithmetic op by op; a node reached in two ways gets "other" unless both agree.
 * Nodes below an inlined matmul are "other": its loop reads them in a scope of their own.
 */
function vectorReads(
  graph: Graph,
  outputs: readonly number[],
  isBuffer: (node: number) => boolean,
): Map<number, Access> {
  const access = new Map<number, Access>();
  const work: [number, Access][] = outputs.map((o) => [o, "vector"]);
  const reach = (id: number, a: Access) => work.push([id, a]);
  while (work.length) {
    const [id, a] = work.pop()!;
    const known = access.get(id);
    const joined: Access = known === undefined || known === a ? a : "other";
    if (joined === known) continue;
    access.set(id, joined);
    if (isBuffer(id) && !outputs.includes(id)) continue;
    const node = graph.node(id);
    const input = (i: number) => graph.node(node.inputs[i]!);
    // the access of an input whose index follows the node's when `ok`
    const keep = (ok: boolean): Access =>
      joined === "vector" ? (ok ? "vector" : "other") : joined;
    switch (node.op.kind) {
      case "unary":
      case "binary":
      case "where":
      case "cast":
        node.inputs.forEach((i) => reach(i, joined));
        break;
      case "reshape":
        reach(node.inputs[0]!, keep(vectorRows(input(0).shape)));
        break;
      case "permute": {
        const r = node.shape.length;
        reach(node.inputs[0]!, keep(r === 0 || node.op.perm[r - 1] === r - 1));
        break;
      }
      case "expand": {
        const x = input(0);
        const broadcast = last(x.shape) === 1 && last(node.shape) !== 1;
        reach(x.id, joined === "vector" && broadcast ? "same" : joined);
        break;
      }
      case "slice": {
        const r = node.shape.length;
        const ok = r > 0 && node.op.steps[r - 1] === 1 && node.op.starts[r - 1]! % WIDTH === 0;
        reach(node.inputs[0]!, keep(ok && vectorRows(input(0).shape)));
        break;
      }
      case "pad": {
        const r = node.shape.length;
        const ok =
          r > 0 && node.op.before[r - 1] === 0 && last(input(0).shape) === last(node.shape);
        reach(node.inputs[0]!, keep(ok));
        break;
      }
      case "gather": {
        // table[ids[c0..cs-1], cs..]: the ids are one element for the group when the last axis
        // is the table's
        const table = input(0);
        const ids = input(1);
        const inTable = table.shape.length > 1;
        reach(table.id, keep(inTable && vectorRows(table.shape)));
        reach(ids.id, joined === "same" || (joined === "vector" && inTable) ? "same" : "other");
        break;
      }
      case "const":
      case "iota":
      case "random":
        node.inputs.forEach((i) => reach(i, "other"));
        break;
      default:
        // an inlined low-rank matmul, or anything else: read element by element
        node.inputs.forEach((i) => reach(i, "other"));
    }
  }
  return access;
}

export function mapKernel(k: MapKernelInput, params?: MapParams): KernelSource {
  const outputs = k.outputs ?? [k.output];
  const vector = outputs.every((o) => {
    const node = k.graph.node(o);
    return node.dtype === "f32" && node.shape.length > 0 && vectorRows(node.shape);
  });
  return (vector ? emitMap(k, params, true) : undefined) ?? emitMap(k, params, false)!;
}

/**
 * The map kernel, vec4 or scalar. Undefined if the vec4 kernel's elements did not read their
 * nodes in the same order (each element's loads are matched to the first's by their order).
 */
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
  const reads = vector ? vectorReads(k.graph, outputs, isBuffer) : new Map<number, Access>();
  const plainF32 = (id: number) => k.graph.node(id).dtype === "f32" && !k.packedOf?.(id);
  // buffers bound as vec4 arrays: every output, and the f32 buffers some node is read from as
  // whole vec4s (BindingTable gives every f32 read of a buffer the same binding)
  const vectorBuffers = new Set<number>();
  for (const [id, a] of reads)
    if (a === "vector" && isBuffer(id) && plainF32(id)) vectorBuffers.add(k.bufferOf(id));
  const vectorArray = (name: string, id: number) =>
    name.startsWith("out") || (plainF32(id) && vectorBuffers.has(k.bufferOf(id)));
  // vec4 kernels: which of the four elements the emitter computes now, the loads made for the
  // first, in order per node, and how many the current one has asked for
  let component = 0;
  let matched = true;
  const made = new Map<number, string[]>();
  const seen = new Map<number, number>();
  const em: Emitter = new Emitter(k.graph, {
    isBuffer,
    load: (id, f) => {
      if (!vector) return table.load(id, f);
      const name = table.name(id);
      const scalar = () =>
        vectorArray(name, id)
          ? `${name}[u32(${f}) / ${WIDTH}u][u32(${f}) % ${WIDTH}u]`
          : table.load(id, f);
      let a = reads.get(id) ?? "other";
      if (a === "vector" && !vectorArray(name, id)) a = "other";
      if (a === "other") return scalar();
      const nth = seen.get(id) ?? 0;
      seen.set(id, nth + 1);
      if (component === 0) {
        const v = em.let(a === "vector" ? `${name}[u32(${f}) / ${WIDTH}u]` : scalar(), "w");
        made.set(id, [...(made.get(id) ?? []), v]);
        return a === "vector" ? `${v}.x` : v;
      }
      const v = made.get(id)?.[nth];
      if (v === undefined) {
        matched = false;
        return scalar();
      }
      return a === "vector" ? `${v}.${COMPONENT[component]}` : v;
    },
  });
  const width = vector ? WIDTH : 1;
  const count = n / width;
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
    for (component = 0; component < WIDTH; component++) {
      seen.clear();
      // a plain name for each element's flat index, so that the four emit alike
      const flat = `g${component}`;
      em.lines.push(`let ${flat} = gi * ${WIDTH} + ${component};`);
      // each element in a scope of its own: common subexpressions are per element
      const lines = em.scope(() =>
        outputs.forEach((id, j) =>
          values[j]!.push(em.value(id, em.index(k.graph.shape(id), { flat }))),
        ),
      );
      em.lines.push(...lines);
      for (const [id, v] of made) if ((seen.get(id) ?? 0) !== v.length) matched = false;
    }
    values.forEach((v, j) => em.lines.push(`out${j}[i] = vec4<f32>(${v.join(", ")});`));
  });
  if (!matched) return undefined;
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
  const vec4 = (b: KernelBuffer) =>
    vector && b.type === "f32" && (b.access === "read_write" || vectorBuffers.has(b.buffer))
      ? { ...b, type: "vec4<f32>" }
      : b;
  return renderKernel({
    name,
    header: header(k.graph, name, k.nodes),
    buffers: [...outputBuffers(k.graph, outputs, k.bufferOf), ...table.buffers()].map(vec4),
    declarations: [helperCode(em.helpers)],
    workgroupSize: p.workgroupSize,
    builtins: { gid: "global_invocation_id" },
    body: [`let t = gid.x + gid.y * ${dispatch[0] * p.workgroupSize}u;`, ...loop],
    dispatch,
  });
}
