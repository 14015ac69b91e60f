// Reduction templates. A reduce kernel reads its input through the fused prologue expression and
// applies the fused epilogue chain to the result before storing it. Two variants:
//  - "serial": one invocation per output element, adding the reduced elements in row-major order
//    (the interpreter's order, so sums match it exactly up to fused multiply-adds);
//  - "workgroup": one workgroup per output element for few, long reductions: strided partial
//    sums, then a tree in workgroup memory.
// `rowKernel` computes several reductions of the same rows and the elementwise work between and
// after them (softmax, layer norm, cross-entropy: see `fuseRows` in fuse.ts) in one kernel.
// `contractionKernel` is the generic matmul (a sum over k of a product of two operand
// expressions): for what the matmul template does not take (i32 matmuls).
import type { RowInfo } from "../fuse/index.js";
import type { Graph } from "../ir.js";
import { numel, strides } from "../ir.js";
import {
  BindingTable,
  type PackedOf,
  Emitter,
  grid,
  header,
  helperCode,
  iadd,
  imul,
  outputBuffers,
  shapeText,
  wgslType,
  type Index,
} from "../wgsl.js";
import { combine, indent, renderKernel, workgroupReduce } from "./render.js";
import type { KernelSource } from "./types.js";
import { VectorLoads, vectorReads, vectorRows, WIDTH } from "./vector.js";

export interface ReduceParams {
  variant: "serial" | "workgroup";
  workgroupSize: number;
}

export function defaultReduceParams(outputs: number, reduced: number): ReduceParams {
  if (reduced >= 2048 && outputs <= 2048) return { variant: "workgroup", workgroupSize: 256 };
  return { variant: "serial", workgroupSize: 64 };
}

/** A kernel accumulating over a loop (a reduce, or a matmul as a contraction) with its epilogue. */
export interface ReduceKernelInput {
  graph: Graph;
  /** The reduce or matmul node: `acc` in the epilogue's expressions. */
  anchor: number;
  /** The node written: the last of the epilogue chain, or the anchor itself. */
  output: number;
  epilogue: readonly number[];
  nodes: readonly number[];
  isBuffer: (node: number) => boolean;
  bufferOf: (node: number) => number;
  packedOf?: PackedOf;
}

export type ContractionKernelInput = ReduceKernelInput;

/** The binding table and emitter of an accumulating kernel: the anchor's value is `acc`. */
function accumulating(k: ReduceKernelInput): { table: BindingTable; em: Emitter } {
  const table = new BindingTable(k.graph, k.bufferOf, "in", k.packedOf);
  const inEpilogue = new Set(k.epilogue);
  const em = new Emitter(k.graph, {
    isBuffer: (id) => id !== k.anchor && !inEpilogue.has(id) && k.isBuffer(id),
    load: (id, f) => table.load(id, f),
    leaves: new Map([[k.anchor, "acc"]]),
  });
  return { table, em };
}

/** One invocation per output element `o` (of `outputs`), in workgroups of `W`: its first lines. */
function perElement(dispatch: readonly number[], W: number, outputs: number): string[] {
  return [
    `let t = gid.x + gid.y * ${dispatch[0]! * W}u;`,
    `if (t >= ${outputs}u) {`,
    `  return;`,
    `}`,
    `let o = i32(t);`,
  ];
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
  const { table, em } = accumulating(k);
  const int = red.dtype === "i32";
  const ty = wgslType(red.dtype);
  const isMax = op.fn === "max";
  const init = isMax ? (int ? "i32(-2147483647 - 1)" : "-lrk_inf()") : int ? "0i" : "0.0";
  if (isMax && !int) em.helpers.add("lrk_inf");

  // o: the output element; its coordinates in the reduce's shape.
  const outIndex = em.index(red.shape, { flat: "o" });
  outIndex.coords(); // hoisted out of the loop: em.lines holds the statements before it
  const loopBody = em.scope(() => {
    const idx = inputIndex(em, input.shape, op.axes, () => outIndex.coords(), "o", "r");
    em.lines.push(`acc = ${combine(op.fn, "acc", em.value(input.id, idx), ty)};`);
  });
  const epilogue = em.scope(() => {
    const v = em.value(k.output, em.index(out.shape, { flat: "o" }));
    em.lines.push(`out[o] = ${v};`);
  });
  const name = `reduce.${op.fn} ${shapeText(input.dtype, input.shape)} → ${shapeText(out.dtype, out.shape)} %${k.output} (${p.variant})`;
  const W = p.workgroupSize;
  const serial = p.variant === "serial";
  const dispatch = serial ? grid(Math.ceil(outputs / W)) : grid(outputs);
  const body = serial
    ? [
        ...perElement(dispatch, W, outputs),
        ...em.lines,
        `var acc: ${ty} = ${init};`,
        `for (var r = 0; r < ${R} + i32(lrk_zero); r++) {`,
        ...indent(loopBody),
        `}`,
        ...epilogue,
      ]
    : [
        `let o = i32(wid.x + wid.y * ${dispatch[0]}u);`,
        ...em.lines,
        `var acc: ${ty} = ${init};`,
        `for (var r = i32(lid); r < ${R} + i32(lrk_zero); r += ${W}) {`,
        ...indent(loopBody),
        `}`,
        `acc = lrk_wg_${op.fn}(acc, lid, lid, ${W}u);`,
        `if (lid == 0u && o < ${outputs}) {`,
        ...indent(epilogue),
        `}`,
      ];
  return renderKernel({
    name,
    header: header(g, name, k.nodes),
    buffers: [...outputBuffers(g, [k.output], k.bufferOf, "out"), ...table.buffers()],
    declarations: [...(serial ? [] : workgroupReduce(ty, W, [op.fn])), helperCode(em.helpers)],
    workgroupSize: W,
    builtins: serial
      ? { gid: "global_invocation_id" }
      : { wid: "workgroup_id", lid: "local_invocation_index" },
    body,
    dispatch,
  });
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
  const { table, em } = accumulating(k);
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
  return renderKernel({
    name,
    header: header(g, name, k.nodes),
    buffers: [...outputBuffers(g, [k.output], k.bufferOf, "out"), ...table.buffers()],
    declarations: [helperCode(em.helpers)],
    workgroupSize: W,
    builtins: { gid: "global_invocation_id" },
    body: [
      ...perElement(dispatch, W, outputs),
      ...em.lines,
      `var acc: ${ty} = ${mm.dtype === "i32" ? "0i" : "0.0"};`,
      `for (var l = 0; l < ${K} + i32(lrk_zero); l++) {`,
      ...indent(loop),
      `}`,
      ...epilogue,
    ],
    dispatch,
  });
}

/**
 * A vec4 row kernel's loop over a row's elements: each invocation takes groups of WIDTH
 * neighbours, emits each element in turn (`body` given its flat index returns the values to store
 * there in the arrays `stores`), and stores each array's group as one vec4.
 */
function vectorRowLoop(
  em: Emitter,
  loads: VectorLoads,
  len: number,
  L: number,
  body: (f: string) => string[],
  stores: readonly string[],
): string[] {
  const inner = em.scope(() => {
    const values: string[][] = stores.map(() => []);
    let first = "";
    loads.group();
    for (let j = 0; j < WIDTH; j++) {
      loads.element(j);
      const f = em.let(`row * ${len} + e + ${j}`, "f");
      if (j === 0) first = f;
      // each element in a scope of its own: common subexpressions are per element
      em.lines.push(...em.scope(() => body(f).forEach((v, o) => values[o]!.push(v))));
    }
    loads.element(undefined);
    values.forEach((v, o) =>
      em.lines.push(`${stores[o]}[u32(${first}) / ${WIDTH}u] = vec4<f32>(${v.join(", ")});`),
    );
  });
  return [
    `for (var e = lane * ${WIDTH}; e < ${len} + i32(lrk_zero); e += ${WIDTH * L}) {`,
    ...indent(inner),
    `}`,
  ];
}

export interface RowParams {
  /** Invocations per workgroup. */
  workgroupSize: number;
  /** Invocations per row (a power of two dividing the workgroup): workgroupSize / lanes rows at once. */
  lanes: number;
}

/**
 * As for reduce kernels: one invocation per row (no barriers: lavapipe runs a 128-lane row with
 * its barrier trees 3× slower than the separate kernels it replaces) unless rows are few and long.
 */
export function defaultRowParams(rows: number, len: number, total: boolean): RowParams {
  let lanes = 1;
  if (len >= 2048 && rows <= 2048) while (lanes < len && lanes < 256) lanes *= 2;
  // A few rows of hundreds of elements (a gradient norm: one row of a whole tensor) would run on
  // as many invocations: one lane of one SIMD group did 15 sums of 1024 in 1 ms on lavapipe.
  else if (rows <= FEW_ROWS && len >= 256) lanes = 64;
  return { workgroupSize: total ? 256 : Math.max(64, lanes), lanes };
}

/** Rows this few get `lanes` invocations each (defaultRowParams). */
const FEW_ROWS = 8;

export interface RowKernelInput {
  graph: Graph;
  row: RowInfo;
  /** The nodes written, increasing: per element of a row, per row, or (totals) one value. */
  outputs: readonly number[];
  nodes: readonly number[];
  isBuffer: (node: number) => boolean;
  bufferOf: (node: number) => number;
  packedOf?: PackedOf;
}

/**
 * A row kernel: `lanes` invocations per row compute the row's reductions one after another
 * (strided partial results, then a tree in workgroup memory), each an expression of the row's
 * elements and the reductions before it, held as per-row scalars; then write the per-row values
 * and the row's elements. With totals (reductions over every row), one workgroup walks all rows,
 * each invocation accumulating its share, and reduces the shares at the end.
 */
export function rowKernel(k: RowKernelInput, params?: RowParams, vec4 = true): KernelSource {
  const g = k.graph;
  const { rows, len, reduces, totals } = k.row;
  const total = totals.length > 0;
  const p = params ?? defaultRowParams(rows, len, total);
  const W = p.workgroupSize;
  const L = p.lanes;
  const perGroup = W / L;
  const dispatch: [number, number, number] = total ? [1, 1, 1] : grid(Math.ceil(rows / perGroup));
  const written = new Set(k.outputs);
  const table = new BindingTable(g, k.bufferOf, "in", k.packedOf);
  const leaves = new Map<number, string>();
  reduces.forEach((r, i) => leaves.set(r, `lrk_s${i}`));
  totals.forEach((r, i) => leaves.set(r, `lrk_t${i}`));
  const isBuffer = (id: number) => !written.has(id) && k.isBuffer(id);
  // What the row loops compute at each element: reductions' inputs, per-element outputs.
  const perRow = k.outputs.filter((o) => numel(g.shape(o)) === rows && !totalOut(o));
  const perElement = k.outputs.filter(
    (o) => numel(g.shape(o)) === rows * len && !totalOut(o) && !perRow.includes(o),
  );
  const inputOf = (r: number) => g.node(r).inputs[0]!;
  const elementwise = [
    ...reduces.map(inputOf),
    ...perElement,
    ...totals.map(inputOf).filter((i) => numel(g.shape(i)) === rows * len),
  ];
  // vec4 loads (compiler/kernels/vector.ts) where the rows are whole groups of 4
  const vector =
    vec4 &&
    len % WIDTH === 0 &&
    elementwise.every((id) => vectorRows(g.shape(id))) &&
    perElement.every((o) => g.node(o).dtype === "f32");
  const elementOut = new Set(perElement.map((o) => `out${k.outputs.indexOf(o)}`));
  const loads = new VectorLoads(
    g,
    table,
    vector ? vectorReads(g, elementwise, isBuffer, new Set(leaves.keys())) : new Map(),
    isBuffer,
    k.bufferOf,
    k.packedOf,
    (name) => vector && elementOut.has(name),
  );
  const em: Emitter = new Emitter(g, {
    isBuffer,
    load: (id, f) => (vector ? loads.load(em, id, f) : table.load(id, f)),
    leaves,
  });
  const fnOf = (r: number) => {
    const op = g.node(r).op;
    if (op.kind !== "reduce") throw new Error("rowKernel: not a reduce");
    return op.fn;
  };
  const init = (r: number) => {
    if (fnOf(r) !== "max") return "0.0";
    em.helpers.add("lrk_inf");
    return "-lrk_inf()";
  };
  const acc = (r: number, a: string, v: string) => `${a} = ${combine(fnOf(r), a, v)};`;
  /**
   * A loop over the row's elements (this invocation's share): `body`, given an element's flat
   * index, returns the values to store there in the arrays `stores`. A vec4 kernel's invocations
   * take groups of 4 neighbours, each element emitted in turn, and store each array's by vec4.
   */
  const overRow = (body: (f: string) => string[], stores: readonly string[] = []): string[] => {
    if (!vector) {
      const inner = em.scope(() => {
        const f = em.let(`row * ${len} + e`, "f");
        body(f).forEach((v, o) => em.lines.push(`${stores[o]}[${f}] = ${v};`));
      });
      return [`for (var e = lane; e < ${len} + i32(lrk_zero); e += ${L}) {`, ...indent(inner), `}`];
    }
    return vectorRowLoop(em, loads, len, L, body, stores);
  };
  // The tree reductions across invocations: a row's lanes, and (totals) the whole workgroup.
  const shared = [...(L > 1 ? reduces : []), ...totals].map(fnOf);
  const outIndex = (id: number) => k.outputs.indexOf(id);
  const rowBody = em.scope(() => {
    reduces.forEach((r, i) => {
      const input = g.node(r).inputs[0]!;
      const shape = g.shape(input);
      em.lines.push(`var lrk_a${i}: f32 = ${init(r)};`);
      em.lines.push(
        ...overRow((f) => {
          em.lines.push(acc(r, `lrk_a${i}`, em.value(input, em.index(shape, { flat: f }))));
          return [];
        }),
      );
      em.lines.push(
        L === 1
          ? `let lrk_s${i} = lrk_a${i};`
          : `let lrk_s${i} = lrk_wg_${fnOf(r)}(lrk_a${i}, lid, u32(lane), ${L}u);`,
      );
    });
    // Per-row values, then the row's elements.
    if (perRow.length) {
      const lines = em.scope(() => {
        for (const o of perRow)
          em.lines.push(
            `out${outIndex(o)}[row] = ${em.value(o, em.index(g.shape(o), { flat: "row" }))};`,
          );
      });
      em.lines.push(`if (valid && lane == 0) {`, ...indent(lines), `}`);
    }
    if (perElement.length) {
      const lines = em.scope(() => {
        em.lines.push(
          ...overRow(
            (f) => perElement.map((o) => em.value(o, em.index(g.shape(o), { flat: f }))),
            perElement.map((o) => `out${outIndex(o)}`),
          ),
        );
      });
      em.lines.push(`if (valid) {`, ...indent(lines), `}`);
    }
    // Each invocation's share of the totals.
    totals.forEach((r, i) => {
      const input = g.node(r).inputs[0]!;
      const shape = g.shape(input);
      const lines = em.scope(() => {
        if (numel(shape) === rows * len)
          em.lines.push(
            ...overRow((f) => {
              em.lines.push(acc(r, `lrk_t${i}`, em.value(input, em.index(shape, { flat: f }))));
              return [];
            }),
          );
        else
          em.lines.push(
            `if (lane == 0) {`,
            ...indent(
              em.scope(() =>
                em.lines.push(
                  acc(r, `lrk_t${i}`, em.value(input, em.index(shape, { flat: "row" }))),
                ),
              ),
            ),
            `}`,
          );
      });
      em.lines.push(`if (valid) {`, ...indent(lines), `}`);
    });
  });
  function totalOut(o: number): boolean {
    // A total's value or its epilogue: one element, computed after every row.
    return total && numel(g.shape(o)) === 1 && rows > 1;
  }
  const finish = em.scope(() => {
    totals.forEach((r, i) =>
      em.lines.push(`lrk_t${i} = lrk_wg_${fnOf(r)}(lrk_t${i}, lid, lid, ${W}u);`),
    );
    const lines = em.scope(() => {
      for (const o of k.outputs.filter(totalOut))
        em.lines.push(
          `out${outIndex(o)}[0] = ${em.value(o, em.index(g.shape(o), { flat: "0" }))};`,
        );
    });
    if (lines.length) em.lines.push(`if (lid == 0u) {`, ...indent(lines), `}`);
  });
  const rowSetup = (rowExpr: string) => [
    `let raw = ${rowExpr};`,
    `let valid = raw < ${rows};`,
    `let row = min(raw, ${rows - 1});`,
  ];
  const main = total
    ? [
        ...totals.map((r, i) => `var lrk_t${i}: f32 = ${init(r)};`),
        `for (var first = 0; first < ${rows} + i32(lrk_zero); first += ${perGroup}) {`,
        ...indent([...rowSetup("first + i32(seg)"), ...rowBody]),
        `}`,
        ...finish,
      ]
    : [...rowSetup(`i32((wid.x + wid.y * ${dispatch[0]}u) * ${perGroup}u + seg)`), ...rowBody];
  const first = g.node(reduces[0]!);
  if (!loads.matched) return rowKernel(k, p, false);
  const name = `row ${shapeText(first.dtype, g.shape(first.inputs[0]!))} ×${reduces.length}${total ? ` +${totals.length} total` : ""} ${k.outputs.map((o) => `%${o}`).join(" ")} (${L} lanes${vector ? ", vec4" : ""})`;
  const buffers = [...outputBuffers(g, k.outputs, k.bufferOf), ...table.buffers()];
  return renderKernel({
    name,
    header: header(g, name, k.nodes),
    buffers: vector ? loads.declare(buffers, (b) => elementOut.has(b.name)) : buffers,
    declarations: [...workgroupReduce("f32", W, shared), helperCode(em.helpers)],
    workgroupSize: W,
    builtins: { wid: "workgroup_id", lid: "local_invocation_index" },
    body: [`let lane = i32(lid % ${L}u);`, `let seg = lid / ${L}u;`, ...main],
    dispatch,
  });
}
