// Reduction templates. A reduce kernel reads its input through the fused prologue expression and
// applies the fused epilogue chain to the result before storing it. Two variants:
//  - "serial": one invocation per output element, adding the reduced elements in row-major order
//    (the interpreter's order, so sums match it exactly up to fused multiply-adds);
//  - "workgroup": one workgroup per output element for few, long reductions: strided partial
//    sums, then a tree in workgroup memory.
// `contractionKernel` is the generic matmul (a sum over k of a product of two operand
// expressions): for what the matmul template does not take (i32 matmuls).
import type { Graph } from "../ir.js";
import { numel, strides } from "../ir.js";
import {
  BindingTable,
  Emitter,
  grid,
  header,
  helperCode,
  iadd,
  imul,
  OPAQUE_BUILTIN,
  opaqueZero,
  shapeText,
  wgslType,
  type Index,
} from "../wgsl.js";
import type { KernelSource } from "./types.js";

export interface ReduceParams {
  variant: "serial" | "workgroup";
  workgroupSize: number;
}

export function defaultReduceParams(outputs: number, reduced: number): ReduceParams {
  if (reduced >= 2048 && outputs <= 2048) return { variant: "workgroup", workgroupSize: 256 };
  return { variant: "serial", workgroupSize: 64 };
}

export interface ReduceKernelInput {
  graph: Graph;
  /** The reduce node. */
  anchor: number;
  /** The node written: the last of the epilogue chain, or the reduce itself. */
  output: number;
  epilogue: readonly number[];
  nodes: readonly number[];
  isBuffer: (node: number) => boolean;
  bufferOf: (node: number) => number;
}

/** Input coordinates of reduced element `r` of output element (coords `oc`). */
function inputIndex(
  em: Emitter,
  inShape: readonly number[],
  axes: readonly number[],
  oc: () => string[],
  o: string,
  r: string,
): Index {
  const rank = inShape.length;
  const kept = inShape.map((_, k) => k).filter((k) => !axes.includes(k));
  const R = axes.reduce((s, a) => s * inShape[a]!, 1);
  const O = kept.reduce((s, a) => s * inShape[a]!, 1);
  const trailing = axes.every((a, i) => a === rank - axes.length + i);
  const leading = axes.every((a, i) => a === i);
  if (trailing) return em.index(inShape, { flat: iadd(imul(o, R), r) });
  if (leading) return em.index(inShape, { flat: iadd(imul(r, O), o) });
  const redShape = axes.map((a) => inShape[a]!);
  const st = strides(redShape);
  const rc = redShape.map((d, i) => {
    if (d === 1) return "0";
    let e = st[i] === 1 ? r : `(${r} / ${st[i]})`;
    if (i > 0) e = `(${e} % ${d})`;
    return e === r ? r : em.let(e, "c");
  });
  const c = oc();
  return em.index(inShape, {
    coords: inShape.map((_, k) => (axes.includes(k) ? rc[axes.indexOf(k)]! : c[k]!)),
  });
}

export function reduceKernel(k: ReduceKernelInput, params?: ReduceParams): KernelSource {
  const g = k.graph;
  const red = g.node(k.anchor);
  if (red.op.kind !== "reduce") throw new Error("reduceKernel: not a reduce");
  const op = red.op;
  const input = g.node(red.inputs[0]!);
  const out = g.node(k.output);
  const outputs = numel(red.shape);
  const R = op.axes.reduce((s, a) => s * input.shape[a]!, 1);
  const p = params ?? defaultReduceParams(outputs, R);
  const table = new BindingTable(g, k.bufferOf, 1);
  const inEpilogue = new Set(k.epilogue);
  const em = new Emitter(g, {
    isBuffer: (id) => id !== k.anchor && !inEpilogue.has(id) && k.isBuffer(id),
    bufferName: (id) => table.name(id),
    leaves: new Map([[k.anchor, "acc"]]),
  });
  const int = red.dtype === "i32";
  const ty = wgslType(red.dtype);
  const isMax = op.fn === "max";
  const init = isMax ? (int ? "i32(-2147483647 - 1)" : "-lrk_inf()") : int ? "0i" : "0.0";
  if (isMax && !int) em.helpers.add("lrk_inf");
  const combine = (acc: string, v: string) =>
    isMax ? `select(${acc}, ${v}, ${v} > ${acc} || ${v} != ${v})` : `${acc} + ${v}`;

  // o: the output element; its coordinates in the reduce's shape.
  const outIndex = em.index(red.shape, { flat: "o" });
  outIndex.coords(); // hoisted out of the loop: em.lines holds the statements before it
  const loopBody = em.scope(() => {
    const idx = inputIndex(em, input.shape, op.axes, () => outIndex.coords(), "o", "r");
    em.lines.push(`acc = ${combine("acc", em.value(input.id, idx))};`);
  });
  const epilogue = em.scope(() => {
    const v = em.value(k.output, em.index(out.shape, { flat: "o" }));
    em.lines.push(`out[o] = ${v};`);
  });
  const name = `reduce.${op.fn} ${shapeText(input.dtype, input.shape)} → ${shapeText(out.dtype, out.shape)} %${k.output} (${p.variant})`;
  const decls = [
    header(g, name, k.nodes),
    `@group(0) @binding(0) var<storage, read_write> out: array<${wgslType(out.dtype)}>;  // %${k.output}`,
    table.declarations(),
  ];
  let body: string[];
  let dispatch: [number, number, number];
  const ind = (lines: string[], n: number) => lines.map((l) => " ".repeat(n) + l);
  if (p.variant === "serial") {
    dispatch = grid(Math.ceil(outputs / p.workgroupSize));
    body = [
      `@compute @workgroup_size(${p.workgroupSize})`,
      `fn main(@builtin(global_invocation_id) gid: vec3<u32>, ${OPAQUE_BUILTIN}) {`,
      `  let t = gid.x + gid.y * ${dispatch[0] * p.workgroupSize}u;`,
      `  ${opaqueZero(dispatch[0])}`,
      `  if (t >= ${outputs}u) {`,
      `    return;`,
      `  }`,
      `  let o = i32(t);`,
      ...ind(em.lines, 2),
      `  var acc: ${ty} = ${init};`,
      `  for (var r = 0; r < ${R} + i32(lrk_zero); r++) {`,
      ...ind(loopBody, 4),
      `  }`,
      ...ind(epilogue, 2),
      `}`,
    ];
  } else {
    const W = p.workgroupSize;
    dispatch = grid(outputs);
    decls.push(`var<workgroup> partial: array<${ty}, ${W}>;`);
    body = [
      `@compute @workgroup_size(${W})`,
      `fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, ${OPAQUE_BUILTIN}) {`,
      `  ${opaqueZero(dispatch[0])}`,
      `  let o = i32(wid.x + wid.y * ${dispatch[0]}u);`,
      ...ind(em.lines, 2),
      `  var acc: ${ty} = ${init};`,
      `  for (var r = i32(lid); r < ${R} + i32(lrk_zero); r += ${W}) {`,
      ...ind(loopBody, 4),
      `  }`,
      `  partial[lid] = acc;`,
      `  workgroupBarrier();`,
      `  for (var s = ${W / 2}u + lrk_zero; s > 0u; s >>= 1u) {`,
      `    if (lid < s) {`,
      `      let a = partial[lid];`,
      `      let b = partial[lid + s];`,
      `      partial[lid] = ${isMax ? "select(a, b, b > a || b != b)" : "a + b"};`,
      `    }`,
      `    workgroupBarrier();`,
      `  }`,
      `  if (lid == 0u && o < ${outputs}) {`,
      `    acc = partial[0];`,
      ...ind(epilogue, 4),
      `  }`,
      `}`,
    ];
  }
  const wgsl = [...decls, helperCode(em.helpers), ...body].filter((s) => s !== "").join("\n");
  return {
    name,
    wgsl: wgsl + "\n",
    entryPoint: "main",
    workgroupSize: [p.workgroupSize, 1, 1],
    dispatch,
    bindings: [{ buffer: k.bufferOf(k.output), access: "read_write" }, ...table.bindings()],
    features: [],
  };
}

export interface ContractionKernelInput {
  graph: Graph;
  /** The matmul node. */
  anchor: number;
  output: number;
  epilogue: readonly number[];
  nodes: readonly number[];
  isBuffer: (node: number) => boolean;
  bufferOf: (node: number) => number;
}

/** A matmul as a serial sum over k of operand expressions (any dtype, any operand view). */
export function contractionKernel(k: ContractionKernelInput): KernelSource {
  const g = k.graph;
  const mm = g.node(k.anchor);
  if (mm.op.kind !== "matmul") throw new Error("contractionKernel: not a matmul");
  const { transA, transB } = mm.op;
  const a = g.node(mm.inputs[0]!);
  const b = g.node(mm.inputs[1]!);
  const out = g.node(k.output);
  const r = mm.shape.length;
  const K = transA ? a.shape[r - 2]! : a.shape[r - 1]!;
  const table = new BindingTable(g, k.bufferOf, 1);
  const inEpilogue = new Set(k.epilogue);
  const em = new Emitter(g, {
    isBuffer: (id) => id !== k.anchor && !inEpilogue.has(id) && k.isBuffer(id),
    bufferName: (id) => table.name(id),
    leaves: new Map([[k.anchor, "acc"]]),
  });
  const outputs = numel(mm.shape);
  const W = 64;
  const dispatch = grid(Math.ceil(outputs / W));
  const oi = em.index(mm.shape, { flat: "o" });
  oi.coords(); // hoisted out of the loop
  const loop = em.scope(() => {
    const c = oi.coords();
    const batch = c.slice(0, r - 2);
    const [i, j] = [c[r - 2]!, c[r - 1]!];
    const ia = em.index(a.shape, { coords: [...batch, ...(transA ? ["l", i] : [i, "l"])] });
    const ib = em.index(b.shape, { coords: [...batch, ...(transB ? [j, "l"] : ["l", j])] });
    em.lines.push(`acc = acc + ${em.value(a.id, ia)} * ${em.value(b.id, ib)};`);
  });
  const epilogue = em.scope(() => {
    em.lines.push(`out[o] = ${em.value(k.output, em.index(out.shape, { flat: "o" }))};`);
  });
  const ty = wgslType(mm.dtype);
  const name = `matmul (contraction) ${shapeText(mm.dtype, mm.shape)} k=${K} %${k.output}`;
  const wgsl = [
    header(g, name, k.nodes),
    `@group(0) @binding(0) var<storage, read_write> out: array<${wgslType(out.dtype)}>;  // %${k.output}`,
    table.declarations(),
    helperCode(em.helpers),
    `@compute @workgroup_size(${W})`,
    `fn main(@builtin(global_invocation_id) gid: vec3<u32>, ${OPAQUE_BUILTIN}) {`,
    `  let t = gid.x + gid.y * ${dispatch[0] * W}u;`,
    `  ${opaqueZero(dispatch[0])}`,
    `  if (t >= ${outputs}u) {`,
    `    return;`,
    `  }`,
    `  let o = i32(t);`,
    ...em.lines.map((l) => `  ${l}`),
    `  var acc: ${ty} = ${mm.dtype === "i32" ? "0i" : "0.0"};`,
    `  for (var l = 0; l < ${K} + i32(lrk_zero); l++) {`,
    ...loop.map((l) => `    ${l}`),
    `  }`,
    ...epilogue.map((l) => `  ${l}`),
    `}`,
  ]
    .filter((s) => s !== "")
    .join("\n");
  return {
    name,
    wgsl: wgsl + "\n",
    entryPoint: "main",
    workgroupSize: [W, 1, 1],
    dispatch,
    bindings: [{ buffer: k.bufferOf(k.output), access: "read_write" }, ...table.bindings()],
    features: [],
  };
}
