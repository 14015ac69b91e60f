// The kernel plan: fusion, then the memory plan, then WGSL for every kernel group, assembled into
// one plain, JSON-serializable object that the WebGPU device executes and `--emit plan` can show.
//
//   buffers  [{id, bytes, role, names}]   role: param|state|data|scalar|activation|scratch|output
//   kernels  [{id, name, wgsl, entryPoint, workgroupSize, dispatch, bindings, features, nodes,
//              sourceLines, kind, params?}]   params: u32s for a uniform bound after the storage
//              bindings (sizes a shader reads at run time)
//   entries  {name → {dispatches: kernel ids in order, inputs: [name], outputs: [{name, buffer,
//              shape, dtype}]}}
//   inputs   [{name, buffer, shape, dtype, role}]
//   peakBytes
//
// Entries share the input buffers and the pool of activation/scratch buffers (entries never run
// at the same time); each entry's outputs have buffers of their own, so they survive the run.
import { fuse, type KernelGroup } from "./fuse/index.js";
import { numel, type DType, type Graph } from "./ir.js";
import { contractionKernel, reduceKernel, rowKernel } from "./kernels/reduce.js";
import { mapKernel } from "./kernels/elementwise.js";
import { defaultMatmulParams, matmulKernel, type MatmulAdapterKind } from "./kernels/matmul.js";
import { specialKernels, specialScratch, type ParamKernelSource } from "./kernels/special.js";
import type { KernelBinding, KernelSource, MatmulParams, MatmulShape } from "./kernels/types.js";
import {
  planMemory,
  type BufferLimits,
  type BufferRole,
  type MemoryStep,
  type PlannedBuffer,
  type TensorNeed,
} from "./memory-plan.js";
import type { Entry, ProgramInput } from "./step.js";
import { header, matmulFusionCode, sourceLines } from "./wgsl.js";

export interface PlanKernel {
  id: number;
  name: string;
  wgsl: string;
  entryPoint: string;
  workgroupSize: [number, number, number];
  dispatch: [number, number, number];
  bindings: KernelBinding[];
  features: string[];
  /** The IR nodes the kernel computes or reads in place. */
  nodes: number[];
  /** `file:line` of the .lrk source those nodes came from. */
  sourceLines: string[];
  /** Which fusion group kind the kernel belongs to. */
  kind: KernelGroup["kind"];
  /**
   * u32 values for a uniform buffer bound after the storage bindings (`var<uniform>` at binding
   * `bindings.length`): sizes a shader reads at run time, so one shader serves many sizes.
   */
  params?: number[];
}

export interface PlanTensor {
  name: string;
  buffer: number;
  shape: number[];
  dtype: DType;
}

export interface PlanEntry {
  dispatches: number[];
  /** Names of the inputs this entry reads. */
  inputs: string[];
  outputs: PlanTensor[];
}

export interface Plan {
  buffers: PlannedBuffer[];
  kernels: PlanKernel[];
  entries: Record<string, PlanEntry>;
  inputs: (PlanTensor & { role: BufferRole })[];
  peakBytes: number;
}

export interface PlanLimits extends BufferLimits {
  /** Storage buffers one kernel may bind (default 8, WebGPU's minimum). */
  maxStorageBuffersPerShaderStage?: number;
}

/**
 * Matmuls up to this many multiply-adds use the template's naive variant: their run time is a
 * few microseconds whatever the variant, while a tiled variant costs lavapipe seconds of shader
 * compilation (measured 3.6 s for 8×64×2 subgroup tiles, 76 ms naive).
 */
const SMALL_MATMUL = 1 << 18;
const NAIVE_MATMUL: MatmulParams = {
  variant: "naive",
  rowsPerThread: 1,
  colsPerThread: 1,
  workgroupX: 8,
  workgroupY: 8,
  tileK: 0,
  vectorWidth: 1,
};

export interface PlanOptions {
  /** The adapter, for the matmul template's default parameters. */
  adapter?: MatmulAdapterKind;
  /** Matmul parameters per shape (an autotuner's choices); default: the template's defaults. */
  matmulParams?: (shape: MatmulShape) => MatmulParams;
}

/** The matmul parameters a plan uses without an autotuner: naive for small products, else the template's default. */
export function planMatmulParams(
  shape: MatmulShape,
  features: ReadonlySet<string>,
  adapter?: PlanOptions["adapter"],
): MatmulParams {
  return isSmallMatmul(shape) ? NAIVE_MATMUL : defaultMatmulParams(shape, features, adapter);
}

/** Small products run in microseconds whatever the variant: not worth tuning (or compiling tiles). */
export function isSmallMatmul(shape: MatmulShape): boolean {
  return shape.batch * shape.m * shape.n * shape.k <= SMALL_MATMUL;
}

export function planProgram(
  graph: Graph,
  inputs: readonly ProgramInput[],
  entries: Record<string, Entry>,
  limits: PlanLimits,
  features: readonly string[] = [],
  options: PlanOptions = {},
): Plan {
  const featureSet = new Set(features);
  const chooseMatmul =
    options.matmulParams ??
    ((shape: MatmulShape) => planMatmulParams(shape, featureSet, options.adapter));
  const inputByNode = new Map(inputs.map((i) => [i.node, i]));
  const tensors: TensorNeed[] = [];
  const seenInputs = new Set<string>();
  const outputTensors: TensorNeed[] = [];
  const work: TensorNeed[] = [];
  const steps: MemoryStep[] = [];
  const bytesOf = (node: number) => 4 * numel(graph.shape(node));

  interface EntryWork {
    name: string;
    groups: KernelGroup[];
    keyOf: (node: number) => string;
    scratch: Map<number, string[]>;
    inputs: string[];
  }
  const planned: EntryWork[] = [];

  for (const [entryName, entry] of Object.entries(entries)) {
    const outputNodes = entry.outputs.map((o) => o.node);
    const fusion = fuse(graph, outputNodes, {
      maxBindings: limits.maxStorageBuffersPerShaderStage ?? 8,
    });
    const keyOf = (node: number) => {
      const input = inputByNode.get(node);
      return input ? `in:${input.name}` : `n:${entryName}:${node}`;
    };
    const entryInputs: string[] = [];
    for (const id of fusion.needed) {
      const node = graph.node(id);
      if (node.op.kind !== "input") continue;
      const input = inputByNode.get(id);
      if (!input)
        throw new Error(`plan: input node %${id} (${node.op.name}) is not a program input`);
      entryInputs.push(input.name);
      if (seenInputs.has(input.name)) continue;
      seenInputs.add(input.name);
      tensors.push({
        key: `in:${input.name}`,
        bytes: bytesOf(id),
        role: input.role,
        name: input.name,
      });
    }
    const outputNames = new Map<number, string[]>();
    for (const o of entry.outputs)
      outputNames.set(o.node, [...(outputNames.get(o.node) ?? []), o.name]);
    for (const [node, names] of outputNames) {
      if (inputByNode.has(node)) continue; // an input passed through: its own buffer
      outputTensors.push({
        key: keyOf(node),
        bytes: bytesOf(node),
        role: "output",
        name: `${entryName ? `${entryName}/` : ""}${names.join(", ")}`,
      });
    }
    const scratch = new Map<number, string[]>();
    for (const g of fusion.groups) {
      const writes = g.outputs.map(keyOf);
      for (const o of g.outputs)
        if (!outputNames.has(o))
          work.push({ key: keyOf(o), bytes: bytesOf(o), role: "activation", name: `%${o}` });
      if (g.kind === "special") {
        const keys: string[] = [];
        for (const s of specialScratch(graph, g.anchor)) {
          const key = `s:${entryName}:${g.anchor}:${s.name}`;
          keys.push(key);
          work.push({ key, bytes: s.bytes, role: "scratch", name: `%${g.anchor} ${s.name}` });
        }
        scratch.set(g.anchor, keys);
        writes.push(...keys);
      }
      steps.push({ reads: g.reads.map(keyOf), writes });
    }
    planned.push({ name: entryName, groups: fusion.groups, keyOf, scratch, inputs: entryInputs });
  }

  const memory = planMemory([...tensors, ...outputTensors, ...work], steps, limits);
  const kernels: PlanKernel[] = [];
  const planEntries: Record<string, PlanEntry> = {};
  const maxBindings = limits.maxStorageBuffersPerShaderStage ?? 8;

  for (const e of planned) {
    const bufferOf = (node: number) => {
      const b = memory.assignment.get(e.keyOf(node));
      if (b === undefined) throw new Error(`plan: %${node} has no buffer`);
      return b;
    };
    const materialized = new Set<number>();
    for (const g of e.groups) for (const o of g.outputs) materialized.add(o);
    const isBuffer = (node: number) =>
      materialized.has(node) || graph.node(node).op.kind === "input";
    const scratch = new Map(
      [...e.scratch].map(([anchor, keys]) => [anchor, keys.map((k) => memory.assignment.get(k)!)]),
    );
    const dispatches: number[] = [];
    for (const g of e.groups) {
      for (const k of groupKernels(graph, g, isBuffer, bufferOf, scratch, chooseMatmul)) {
        if (k.bindings.length > maxBindings)
          throw new Error(
            `plan: kernel "${k.name}" binds ${k.bindings.length} storage buffers; the device allows ${maxBindings}`,
          );
        const id = kernels.length;
        kernels.push({
          id,
          name: k.name,
          wgsl: k.wgsl,
          entryPoint: k.entryPoint,
          workgroupSize: k.workgroupSize,
          dispatch: k.dispatch,
          bindings: k.bindings,
          features: k.features,
          nodes: g.nodes,
          sourceLines: sourceLines(graph, g.nodes),
          kind: g.kind,
          ...((k as ParamKernelSource).params ? { params: (k as ParamKernelSource).params } : {}),
        });
        dispatches.push(id);
      }
    }
    const entry = entries[e.name]!;
    planEntries[e.name] = {
      dispatches,
      inputs: e.inputs,
      outputs: entry.outputs.map((o) => ({
        name: o.name,
        buffer: bufferOf(o.node),
        shape: [...graph.shape(o.node)],
        dtype: graph.node(o.node).dtype,
      })),
    };
  }

  const planInputs = inputs
    .filter((i) => seenInputs.has(i.name))
    .map((i) => ({
      name: i.name,
      buffer: memory.assignment.get(`in:${i.name}`)!,
      shape: [...i.shape],
      dtype: i.dtype,
      role: i.role as BufferRole,
    }));
  return {
    buffers: memory.buffers,
    kernels,
    entries: planEntries,
    inputs: planInputs,
    peakBytes: memory.peakBytes,
  };
}

/** The kernels of one fusion group (one, except for some special kernels). */
export function groupKernels(
  graph: Graph,
  g: KernelGroup,
  isBuffer: (node: number) => boolean,
  bufferOf: (node: number) => number,
  scratch: Map<number, number[]>,
  chooseMatmul: (shape: MatmulShape) => MatmulParams,
): KernelSource[] {
  const common = { graph, output: g.output, nodes: g.nodes, isBuffer, bufferOf };
  switch (g.kind) {
    case "map":
      return [mapKernel({ ...common, outputs: g.outputs })];
    case "reduce":
      return [reduceKernel({ ...common, anchor: g.anchor, epilogue: g.epilogue })];
    case "row":
      return [rowKernel({ ...common, row: g.row!, outputs: g.outputs })];
    case "matmul": {
      const mm = graph.node(g.anchor);
      const r = mm.shape.length;
      const a = graph.node(mm.inputs[0]!);
      const op = mm.op as { transA: boolean; transB: boolean };
      const m = mm.shape[r - 2]!;
      const n = mm.shape[r - 1]!;
      const k = op.transA ? a.shape[r - 2]! : a.shape[r - 1]!;
      const batch = numel(mm.shape.slice(0, r - 2));
      if (mm.dtype === "i32" || (!g.foldBatch && batch > 65535) || !g.a || !g.b)
        return [contractionKernel({ ...common, anchor: g.anchor, epilogue: g.epilogue })];
      // Σ_batch A_bᵀ B_b: the batch folds into k. B shared by every batch (and A plain): the
      // batch folds into A's rows.
      const fold = !g.foldBatch && g.b.broadcast && !g.a.broadcast && !g.a.trans;
      if (!g.foldBatch && (g.a.broadcast || g.b.broadcast) && !fold)
        return [contractionKernel({ ...common, anchor: g.anchor, epilogue: g.epilogue })];
      const shape: MatmulShape = g.foldBatch
        ? { batch: 1, m, n, k: batch * k, transA: true, transB: false }
        : fold
          ? { batch: 1, m: batch * m, n, k, transA: false, transB: g.b.trans }
          : { batch, m, n, k, transA: g.a.trans, transB: g.b.trans };
      // Operands without a buffer are prologues, computed at each load.
      const prologue = {
        ...(isBuffer(g.a.node) ? {} : { a: g.a.node }),
        ...(isBuffer(g.b.node) ? {} : { b: g.b.node }),
      };
      const fused =
        g.epilogue.length || prologue.a !== undefined || prologue.b !== undefined
          ? matmulFusionCode(
              graph,
              g.anchor,
              g.epilogue,
              isBuffer,
              bufferOf,
              3,
              g.foldBatch ?? false,
              prologue,
            )
          : undefined;
      // A prologue's binding holds a buffer it reads (or, if it reads none, the other operand's).
      const bufA = isBuffer(g.a.node) ? bufferOf(g.a.node) : fused?.operandBuffers.a;
      const bufB = isBuffer(g.b.node) ? bufferOf(g.b.node) : fused?.operandBuffers.b;
      const anyBuffer = bufA ?? bufB ?? fused?.epilogue.bindings[0]?.buffer;
      if (anyBuffer === undefined)
        throw new Error(`plan: the matmul %${g.anchor} reads no buffer at all`);
      const kernel = matmulKernel(
        shape,
        chooseMatmul(shape),
        { a: bufA ?? anyBuffer, b: bufB ?? anyBuffer, out: bufferOf(g.output) },
        fused && { epilogue: fused.epilogue, prologue: fused.prologue },
      );
      return [{ ...kernel, wgsl: `${header(graph, kernel.name, g.nodes)}\n${kernel.wgsl}` }];
    }
    case "special":
      return specialKernels(
        graph,
        g.anchor,
        {
          inputs: graph.node(g.anchor).inputs.map(bufferOf),
          out: bufferOf(g.output),
          scratch: scratch.get(g.anchor) ?? [],
        },
        chooseMatmul,
      );
  }
}
