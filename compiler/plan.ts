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
import { branchCoefficient, tileBranch, type TileBranch } from "./fuse/low-rank.js";
import { numel, type DType, type Graph } from "./ir.js";
import { contractionKernel, reduceKernel, rowKernel } from "./kernels/reduce.js";
import { mapKernel } from "./kernels/elementwise.js";
import {
  defaultMatmulParams,
  lowRankBranchForms,
  describeMatmulParams,
  matmulCandidates,
  matmulKernel,
  matmulShapeClassKey,
  type MatmulAdapterKind,
} from "./kernels/matmul.js";
import { specialKernels, specialScratch, type ParamKernelSource } from "./kernels/special.js";
import { splitBindings } from "./kernels/render.js";
import type {
  KernelBinding,
  KernelSource,
  LowRankBranchForm,
  MatmulParams,
  MatmulShape,
} from "./kernels/types.js";
import {
  BindingLimitError,
  bufferBytes,
  bufferChunks,
  planMemory,
  type BufferLimits,
  type BufferRole,
  type MemoryPlan,
  type MemoryStep,
  type PlannedBuffer,
  type TensorNeed,
} from "./memory-plan.js";
import { inPlaceOutputs } from "./in-place.js";
import { KernelMemo } from "./kernel-memo.js";
import { packedBits, storedBytes, storedWidth } from "./program.js";
import type { Entry, GraphProgram, MatmulTemplate } from "./program.js";
import { header, matmulFusionCode, sourceLines, type PackedOf } from "./wgsl.js";
import { matmulStorage, storedMatmulBindingBytes, storedMatmulKernel } from "./kernels/dequant.js";
import {
  canSplitK,
  SPLIT_K_CHOICES,
  splitKCandidates,
  splitKKernels,
  splitKScratchBytes,
} from "./kernels/split-k.js";

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
  /** The gather error flag's binding, if the kernel has one (KernelSource.gatherFlag). */
  gatherFlag?: number;
}

export interface PlanTensor {
  name: string;
  buffer: number;
  shape: number[];
  dtype: DType;
  /**
   * Stored with this many bits per element (`storedWidth` in program.ts): 2, 4 or 8 packed
   * integers, or 16: f16 floats (the host converts f32 values at upload).
   */
  packed?: number;
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

/** The matmul parameters a plan uses without an autotuner: naive for small products, else the template's default. */
export function planMatmulParams(
  shape: MatmulShape,
  features: ReadonlySet<string>,
  adapter?: MatmulAdapterKind,
): MatmulParams {
  return isSmallMatmul(shape) ? NAIVE_MATMUL : defaultMatmulParams(shape, features, adapter);
}

/** Small products run in microseconds whatever the variant: not worth tuning (or compiling tiles). */
export function isSmallMatmul(shape: MatmulShape): boolean {
  return shape.batch * shape.m * shape.n * shape.k <= SMALL_MATMUL;
}

/** What a plan is made for: the device's limits and features, and its matmul choices. */
export interface PlanTarget {
  limits: PlanLimits;
  /** Optional WebGPU features the kernels may use (`subgroups`). */
  features: readonly string[];
  adapter?: MatmulAdapterKind;
  /** Matmul parameters per shape (an autotuner's choices); default: the template's defaults. */
  matmulParams?: (shape: MatmulShape) => MatmulParams;
  /** Fuse low-rank branches up to this inner dim into epilogues (default LOW_RANK_MAX). */
  lowRankMax?: number;
  /**
   * Fused low-rank branches run in the matmul's tile (MatmulBranch) where their operands allow
   * (default); false: as a loop per output element in the epilogue (the old form, for
   * bench/branch.ts's comparison).
   */
  lowRankTile?: boolean;
  /** Fuse branches the tile cannot compute, as a per-element loop, up to this inner dim. */
  lowRankLoopMax?: number;
  /**
   * The autotuner's fused-or-unfused choices for branches the tile computes (FuseOptions
   * .lowRankTileFuses), `key` naming them for fusion's memo; absent: every such branch fused.
   */
  lowRankChoices?: LowRankChoices;
  /**
   * Groups alike share their kernels' emission (compiler/kernel-memo.ts; default); false: every
   * group is emitted from the whole graph (what the memo must equal, for its tests).
   */
  shareKernels?: boolean;
}

/** Which tile-able low-rank branches are fused, as timed (cli/target.ts `lowRankChoices`). */
export interface LowRankChoices {
  /** Says which choices differ from the default (fused): the same key, the same answers. */
  key: string;
  fuses: (base: MatmulShape, branch: LowRankBranchForm) => boolean;
}

/** One entry's kernel groups, and what it reads. */
export interface EntryFusion {
  entry: Entry;
  groups: KernelGroup[];
  /** Program inputs the entry reads, by name. */
  inputs: string[];
}

const fusionCache = new WeakMap<Graph, Map<string, EntryFusion[]>>();

/**
 * Fusion of every entry of a program (memoized per graph and binding limit: tuning and planning
 * both need it, and it is the costly part of planning).
 */
export function fuseEntries(
  program: GraphProgram,
  limits: PlanLimits,
  lowRankMax?: number,
  lowRankLoopMax?: number,
  lowRankChoices?: LowRankChoices,
): EntryFusion[] {
  const maxBindings = limits.maxStorageBuffersPerShaderStage ?? 8;
  const packed = new Set(program.inputs.filter((i) => packedBits(i)).map((i) => i.node));
  const half = new Set(program.inputs.filter((i) => i.storage === "f16").map((i) => i.node));
  const key = `${maxBindings}|${limits.maxStorageBufferBindingSize}|${lowRankMax}|${lowRankLoopMax}|${lowRankChoices?.key ?? ""}|${[...packed].join(",")}|${[...half].join(",")}|${program.entries.map((e) => entryKey(e)).join(";")}`;
  let perGraph = fusionCache.get(program.graph);
  if (!perGraph) fusionCache.set(program.graph, (perGraph = new Map()));
  const known = perGraph.get(key);
  if (known) return known;
  const inputByNode = new Map(program.inputs.map((i) => [i.node, i]));
  const bindingsOf = splitBindingCounter(program, limits);
  const fused = program.entries.map((entry) => {
    const fusion = fuse(
      program.graph,
      entry.outputs.map((o) => o.node),
      {
        maxBindings,
        ...(bindingsOf ? { bindingsOf } : {}),
        ...(lowRankMax !== undefined ? { lowRankMax } : {}),
        ...(lowRankLoopMax !== undefined ? { lowRankLoopMax } : {}),
        ...(lowRankChoices ? { lowRankTileFuses: lowRankChoices.fuses } : {}),
        ...(packed.size ? { packed } : {}),
        ...(half.size ? { half } : {}),
      },
    );
    const inputs: string[] = [];
    for (const id of fusion.needed) {
      const node = program.graph.node(id);
      if (node.op.kind !== "input") continue;
      const input = inputByNode.get(id);
      if (!input)
        throw new Error(`plan: input node %${id} (${node.op.name}) is not a program input`);
      inputs.push(input.name);
    }
    return { entry, groups: fusion.groups, inputs };
  });
  perGraph.set(key, fused);
  return fused;
}

/**
 * The storage bindings a node's buffer takes in a kernel: one, or its chunks when it is larger
 * than one binding (compiler/memory-plan.ts); undefined when no tensor of the program is.
 */
function splitBindingCounter(
  program: GraphProgram,
  limits: PlanLimits,
): ((node: number) => number) | undefined {
  const inputByNode = new Map(program.inputs.map((i) => [i.node, i]));
  const limit = limits.maxStorageBufferBindingSize;
  const count = (node: number) => {
    const n = numel(program.graph.shape(node));
    const input = inputByNode.get(node);
    const bytes = bufferBytes(input ? storedBytes(input, n) : 4 * n);
    return bytes > limit ? bufferChunks(bytes, limit).length : 1;
  };
  return program.graph.nodes.some((_, id) => count(id) > 1) ? count : undefined;
}

function entryKey(e: Entry): string {
  return `${e.name}=${e.outputs.map((o) => `${o.name}:${o.node}`).join(",")}`;
}

/** The buffers of a plan, and how each entry's tensors map to them. */
export interface BufferPlan extends MemoryPlan {
  /** Per entry: a node's tensor key (look it up in `assignment`). */
  keyOf: Map<string, (node: number) => string>;
  /** Per entry: a special kernel's scratch tensor keys, by anchor node. */
  scratch: Map<string, Map<number, string[]>>;
}

/**
 * The memory plan of a fused program. Inputs are shared by every entry. An output has a buffer
 * of its own that lives across runs, shared by the entries that write an output of that name
 * (only one entry runs at a time, and the next run reads its inputs before writing any output).
 * Activations and scratch of every entry share one pool.
 */
export function planBuffers(
  program: GraphProgram,
  fused: readonly EntryFusion[],
  limits: PlanLimits,
  /** The plan's matmul choices: a split-k matmul needs scratch for its partial products. */
  chooseMatmul?: (shape: MatmulShape) => MatmulParams,
): BufferPlan {
  const { graph } = program;
  const inputByNode = new Map(program.inputs.map((i) => [i.node, i]));
  const byName = new Map(program.inputs.map((i) => [i.name, i]));
  const bytesOf = (node: number) => 4 * numel(graph.shape(node));
  const inputs = new Map<string, TensorNeed>();
  const outputs = new Map<string, TensorNeed>();
  const work: TensorNeed[] = [];
  const steps: MemoryStep[] = [];
  const keyOf = new Map<string, (node: number) => string>();
  const scratchOf = new Map<string, Map<number, string[]>>();
  const inPlace = inPlaceOutputs(program, fused);
  const inputNeed = (name: string): TensorNeed => {
    const input = byName.get(name)!;
    const need = inputs.get(name) ?? {
      key: `in:${name}`,
      bytes: storedBytes(input, numel(graph.shape(input.node))),
      role: input.role,
      name,
    };
    inputs.set(name, need);
    return need;
  };
  for (const { entry, groups, inputs: read } of fused) {
    for (const name of read) inputNeed(name);
    const outputNames = new Map<number, string[]>();
    for (const o of entry.outputs)
      outputNames.set(o.node, [...(outputNames.get(o.node) ?? []), o.name]);
    const key = (node: number) => {
      const input = inputByNode.get(node);
      if (input) return `in:${input.name}`;
      const names = outputNames.get(node);
      // a new value written over the old one (compiler/in-place.ts): the input's buffer
      if (names?.length === 1 && inPlace.has(names[0]!)) return inputNeed(names[0]!).key;
      return names ? `out:${names.join(", ")}` : `n:${entry.name}:${node}`;
    };
    keyOf.set(entry.name, key);
    for (const [node, names] of outputNames) {
      if (inputByNode.has(node)) continue; // an input passed through: its own buffer
      if (key(node).startsWith("in:")) continue; // written in place
      const need = outputs.get(key(node));
      const bytes = Math.max(need?.bytes ?? 0, bytesOf(node));
      outputs.set(key(node), { key: key(node), bytes, role: "output", name: names.join(", ") });
    }
    const scratch = new Map<number, string[]>();
    const materialized = new Set(groups.flatMap((g) => g.outputs));
    const isBuffer = (node: number) => materialized.has(node) || inputByNode.has(node);
    const packedOf = (node: number) => {
      const input = inputByNode.get(node);
      return input && storedWidth(input);
    };
    for (const g of groups) {
      const writes = g.outputs.map(key);
      const splits = chooseMatmul && splitKOf(graph, g, isBuffer, packedOf, chooseMatmul);
      if (splits) {
        const k = `s:${entry.name}:${g.anchor}:partials`;
        const shape = templateShape(graph, g)!;
        const bytes = splitKScratchBytes(shape, splits);
        work.push({ key: k, bytes, role: "scratch", name: `%${g.anchor} split-k partials` });
        scratch.set(g.anchor, [k]);
        writes.push(k);
      }
      for (const o of g.outputs)
        if (!outputNames.has(o))
          work.push({ key: key(o), bytes: bytesOf(o), role: "activation", name: `%${o}` });
      if (g.kind === "special") {
        const keys: string[] = [];
        for (const s of specialScratch(graph, g.anchor)) {
          const k = `s:${entry.name}:${g.anchor}:${s.name}`;
          keys.push(k);
          work.push({ key: k, bytes: s.bytes, role: "scratch", name: `%${g.anchor} ${s.name}` });
        }
        scratch.set(g.anchor, keys);
        writes.push(...keys);
      }
      steps.push({ reads: g.reads.map(key), writes });
    }
    scratchOf.set(entry.name, scratch);
  }
  const memory = planMemory([...inputs.values(), ...outputs.values(), ...work], steps, limits);
  return { ...memory, keyOf, scratch: scratchOf };
}

/** WGSL for every kernel of every entry, in dispatch order, with the entries' dispatch lists. */
export function emitKernels(
  program: GraphProgram,
  fused: readonly EntryFusion[],
  buffers: BufferPlan,
  target: PlanTarget,
): { kernels: PlanKernel[]; entries: Record<string, PlanEntry>; shared: number } {
  const { graph } = program;
  const chooseMatmul = matmulChooser(target);
  const maxBindings = target.limits.maxStorageBuffersPerShaderStage ?? 8;
  const packed = new Map(program.inputs.map((i) => [i.node, storedWidth(i)]));
  const packedOf: PackedOf = (node) => packed.get(node);
  const kernels: PlanKernel[] = [];
  const entries: Record<string, PlanEntry> = {};
  const chunksOf = (buffer: number) => buffers.buffers[buffer]?.chunks;
  // each layer's kernels are the first layer's on other nodes and buffers: emitted once
  const lowRankTile = target.lowRankTile ?? true;
  const memo = new KernelMemo((g, c) =>
    groupKernels(
      c.graph,
      g,
      c.isBuffer,
      c.bufferOf,
      c.scratch,
      chooseMatmul,
      c.packedOf,
      lowRankTile,
    ).map((k) => splitBindings(k, c.chunksOf)),
  );
  const share = target.shareKernels ?? true;
  for (const { entry, groups, inputs } of fused) {
    const keyOf = buffers.keyOf.get(entry.name)!;
    // Kernels ask for the buffers they read many times over; a node's key is a string made anew.
    const bufferByNode = new Map<number, number>();
    const bufferOf = (node: number) => {
      let b = bufferByNode.get(node);
      if (b !== undefined) return b;
      b = buffers.assignment.get(keyOf(node));
      if (b === undefined) throw new Error(`plan: %${node} has no buffer`);
      bufferByNode.set(node, b);
      return b;
    };
    const materialized = new Set<number>();
    for (const g of groups) for (const o of g.outputs) materialized.add(o);
    const isBuffer = (node: number) =>
      materialized.has(node) || graph.node(node).op.kind === "input";
    const scratch = new Map(
      [...buffers.scratch.get(entry.name)!].map(([anchor, keys]) => [
        anchor,
        keys.map((k) => buffers.assignment.get(k)!),
      ]),
    );
    const dispatches: number[] = [];
    const context = { graph, isBuffer, bufferOf, packedOf, chunksOf, scratch };
    for (const g of groups) {
      for (const k of share ? memo.kernels(g, context) : memo.emit(g, context)) {
        if (k.bindings.length > maxBindings)
          throw new BindingLimitError(
            k.name,
            k.bindings.length,
            maxBindings,
            sourceLines(graph, g.nodes),
            splitCount(k.bindings),
          );
        dispatches.push(kernels.length);
        kernels.push(planKernel(graph, kernels.length, g, k));
      }
    }
    entries[entry.name] = {
      dispatches,
      inputs,
      outputs: entry.outputs.map((o) => ({
        name: o.name,
        buffer: bufferOf(o.node),
        shape: [...graph.shape(o.node)],
        dtype: graph.node(o.node).dtype,
      })),
    };
  }
  return { kernels, entries, shared: memo.hits };
}

/** Bindings that are chunks of split buffers (beyond one binding per buffer). */
function splitCount(bindings: readonly KernelBinding[]): number {
  return bindings.filter((b) => b.offset !== undefined).length;
}

function planKernel(graph: Graph, id: number, g: KernelGroup, k: KernelSource): PlanKernel {
  const params = (k as ParamKernelSource).params;
  return {
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
    ...(params ? { params } : {}),
    ...(k.gatherFlag !== undefined ? { gatherFlag: k.gatherFlag } : {}),
  };
}

/** The plan: buffers, kernels, entries, and the inputs every entry shares. */
export function assemblePlan(
  program: GraphProgram,
  buffers: BufferPlan,
  emitted: { kernels: PlanKernel[]; entries: Record<string, PlanEntry> },
): Plan {
  const inputs = program.inputs
    .filter((i) => buffers.assignment.has(`in:${i.name}`))
    .map((i) => ({
      name: i.name,
      buffer: buffers.assignment.get(`in:${i.name}`)!,
      shape: [...i.shape],
      dtype: i.dtype,
      role: i.role as BufferRole,
      ...(storedWidth(i) ? { packed: storedWidth(i) } : {}),
    }));
  return {
    buffers: buffers.buffers,
    kernels: emitted.kernels,
    entries: emitted.entries,
    inputs,
    peakBytes: buffers.peakBytes,
  };
}

/** The matmul problems a fused program runs through the matmul template (what tuning needs). */
export function matmulShapes(program: GraphProgram, fused: readonly EntryFusion[]): MatmulShape[] {
  const shapes = new Map<string, MatmulShape>();
  const { graph } = program;
  const packed = new Map(program.inputs.map((i) => [i.node, storedWidth(i)]));
  for (const { groups } of fused) {
    // as emitKernels sees the entry's buffers (its operands' storage is part of the shape)
    const materialized = new Set(groups.flatMap((g) => g.outputs));
    const isBuffer = (node: number) =>
      materialized.has(node) || graph.node(node).op.kind === "input";
    for (const g of groups) {
      const shape = g.kind === "matmul" ? templateShape(graph, g) : undefined;
      if (!shape) continue;
      const operands = { a: g.a!.node, b: g.b!.node };
      const storage = matmulStorage(graph, operands, isBuffer, (node) => packed.get(node));
      const stored = storage ? { ...shape, storage } : shape;
      shapes.set(JSON.stringify(stored), stored);
    }
  }
  return [...shapes.values()];
}

/** The kernels of one fusion group (one, except for some special kernels). */
export function groupKernels(
  graph: Graph,
  g: KernelGroup,
  isBuffer: (node: number) => boolean,
  bufferOf: (node: number) => number,
  scratch: ReadonlyMap<number, readonly number[]>,
  chooseMatmul: (shape: MatmulShape) => MatmulParams,
  packedOf: PackedOf = () => undefined,
  lowRankTile = true,
): KernelSource[] {
  const common = { graph, output: g.output, nodes: g.nodes, isBuffer, bufferOf, packedOf };
  // Packed buffers are read through an emitter's loads (BindingTable.load), which unpack them;
  // the matmul template's own operand loads and special kernels read 32-bit elements.
  // (The template reads an f16 operand through an f16 binding: `halfOk`.)
  const direct = (node: number, what: string, halfOk = false) => {
    if (isBuffer(node) && packedOf(node) && !(halfOk && packedOf(node) === 16))
      throw new Error(`plan: ${what} reads the packed buffer %${node} directly`);
  };
  switch (g.kind) {
    case "map":
      return [mapKernel({ ...common, outputs: g.outputs })];
    case "reduce":
      return [reduceKernel({ ...common, anchor: g.anchor, epilogue: g.epilogue })];
    case "row":
      return [rowKernel({ ...common, row: g.row!, outputs: g.outputs })];
    case "matmul": {
      const shape = templateShape(graph, g);
      if (!shape || !g.a || !g.b)
        return [contractionKernel({ ...common, anchor: g.anchor, epilogue: g.epilogue })];
      // Operands without a buffer are prologues, computed at each load.
      direct(g.a.node, `the matmul %${g.anchor}`, true);
      direct(g.b.node, `the matmul %${g.anchor}`, true);
      const prologue = {
        ...(isBuffer(g.a.node) ? {} : { a: g.a.node }),
        ...(isBuffer(g.b.node) ? {} : { b: g.b.node }),
      };
      // Low-rank branches the kernel's tile computes (the rest loop per element in the epilogue).
      const branches =
        g.foldBatch || !lowRankTile
          ? []
          : (g.lowRank ?? [])
              .map((id) => tileBranch(graph, id, shape, isBuffer, packedOf))
              .filter((b): b is TileBranch => b !== undefined);
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
              packedOf,
              branches.map((b) => b.node),
            )
          : undefined;
      // A prologue's binding holds a buffer it reads (or, if it reads none, the other operand's).
      const bufA = isBuffer(g.a.node) ? bufferOf(g.a.node) : fused?.operandBuffers.a;
      const bufB = isBuffer(g.b.node) ? bufferOf(g.b.node) : fused?.operandBuffers.b;
      const anyBuffer = bufA ?? bufB ?? fused?.epilogue.bindings[0]?.buffer;
      if (anyBuffer === undefined)
        throw new Error(`plan: the matmul %${g.anchor} reads no buffer at all`);
      // an operand stored as f16 is read through an f16 binding (each load converted to f32)
      const half = (node: number) => isBuffer(node) && packedOf(node) === 16;
      const storage = matmulStorage(graph, { a: g.a.node, b: g.b.node }, isBuffer, packedOf);
      const params = chooseMatmul(storage ? { ...shape, storage } : shape);
      // split-k where the memory plan gave the group scratch for it (splitKOf)
      const partials = scratch.get(g.anchor);
      if (params.splitK && partials?.length === 1 && bufA !== undefined && bufB !== undefined) {
        const passes = splitKKernels(
          shape,
          params.splitK,
          params,
          { a: bufA, b: bufB, partials: partials[0]!, out: bufferOf(g.output) },
          fused?.epilogue,
        );
        return passes.map((k) => ({ ...k, wgsl: `${header(graph, k.name, g.nodes)}\n${k.wgsl}` }));
      }
      const kernel = matmulKernel(
        shape,
        params,
        { a: bufA ?? anyBuffer, b: bufB ?? anyBuffer, out: bufferOf(g.output) },
        fused && {
          epilogue: fused.epilogue,
          prologue: fused.prologue,
          ...(branches.length
            ? {
                branches: branches.map((b) => {
                  const scale = branchCoefficient(graph, g, b.node);
                  return {
                    rank: b.rank,
                    upTrans: b.upTrans,
                    down: bufferOf(b.down),
                    up: bufferOf(b.up),
                    ...(scale !== undefined ? { scale } : {}),
                  };
                }),
              }
            : {}),
        },
        { a: half(g.a.node), b: half(g.b.node) },
      );
      return [{ ...kernel, wgsl: `${header(graph, kernel.name, g.nodes)}\n${kernel.wgsl}` }];
    }
    case "special":
      for (const i of graph.node(g.anchor).inputs)
        direct(i, `the ${graph.node(g.anchor).op.kind} kernel`);
      return specialKernels(
        graph,
        g.anchor,
        {
          inputs: graph.node(g.anchor).inputs.map(bufferOf),
          out: bufferOf(g.output),
          scratch: [...(scratch.get(g.anchor) ?? [])],
        },
        chooseMatmul,
      );
  }
}

/**
 * The matmul template's problem for a matmul group, or undefined when the group runs as a plain
 * contraction (i32, operands the template cannot read in place, too many batches).
 */
export function templateShape(graph: Graph, g: KernelGroup): MatmulShape | undefined {
  const mm = graph.node(g.anchor);
  const r = mm.shape.length;
  const a = graph.node(mm.inputs[0]!);
  const op = mm.op as { transA: boolean; transB: boolean };
  const m = mm.shape[r - 2]!;
  const n = mm.shape[r - 1]!;
  const k = op.transA ? a.shape[r - 2]! : a.shape[r - 1]!;
  const batch = numel(mm.shape.slice(0, r - 2));
  if (mm.dtype === "i32" || (!g.foldBatch && batch > 65535) || !g.a || !g.b) return undefined;
  // Σ_batch A_bᵀ B_b: the batch folds into k. B shared by every batch (and A plain): the
  // batch folds into A's rows.
  const fold = !g.foldBatch && g.b.broadcast && !g.a.broadcast && !g.a.trans;
  if (!g.foldBatch && (g.a.broadcast || g.b.broadcast) && !fold) return undefined;
  return g.foldBatch
    ? { batch: 1, m, n, k: batch * k, transA: true, transB: false }
    : fold
      ? { batch: 1, m: batch * m, n, k, transA: false, transB: g.b.trans }
      : { batch, m, n, k, transA: g.a.trans, transB: g.b.trans };
}

/** The matmul template for the autotuner: candidates, defaults, kernels, shape classes. */
export const matmulTemplate: MatmulTemplate = {
  // split-k where the output is small and k long: chosen only where timed faster
  candidates: (shape, features, adapter) => [
    ...matmulCandidates(shape, features, adapter),
    ...splitKCandidates(shape, features),
  ],
  defaults: defaultMatmulParams,
  kernel: (shape, params) => matmulTemplate.passes!(shape, params)[0]!,
  // a class split-k may serve is its own (a choice cached before split-k was a candidate never
  // timed it)
  classKey: (shape) =>
    `${matmulShapeClassKey(shape)}${splitKCandidates(shape, new Set()).length ? " split-k" : ""}`,
  describe: (p) => `${describeMatmulParams(p)}${p.splitK ? ` split-k ${p.splitK}` : ""}`,
  // a split-k's partial products after the operands and out (binding 3)
  bindingBytes: (shape) => [
    ...storedMatmulBindingBytes(shape),
    ...(splitKCandidates(shape, new Set(["subgroups"])).length
      ? [splitKScratchBytes(shape, Math.max(...SPLIT_K_CHOICES))]
      : []),
  ],
  lowRankForms: lowRankBranchForms,
  passes: (shape, params) =>
    params.splitK
      ? splitKKernels(shape, params.splitK, params, { a: 0, b: 1, out: 2, partials: 3 })
      : [storedMatmulKernel(shape, params)],
};

/** The parameters a target's plan gives each matmul shape. */
export function matmulChooser(target: PlanTarget): (shape: MatmulShape) => MatmulParams {
  const features = new Set(target.features);
  return target.matmulParams ?? ((shape) => planMatmulParams(shape, features, target.adapter));
}

/**
 * The chunks a matmul group runs split-k in (its chosen parameters' splitK, where the template
 * reads both operands from buffers as f32), or undefined: planBuffers gives it scratch for the
 * partial products and groupKernels plans its two kernels.
 */
function splitKOf(
  graph: Graph,
  g: KernelGroup,
  isBuffer: (node: number) => boolean,
  packedOf: PackedOf,
  chooseMatmul: (shape: MatmulShape) => MatmulParams,
): number | undefined {
  const shape = g.kind === "matmul" ? templateShape(graph, g) : undefined;
  if (!shape || !g.a || !g.b || !isBuffer(g.a.node) || !isBuffer(g.b.node)) return undefined;
  if (packedOf(g.a.node) || packedOf(g.b.node)) return undefined;
  const splits = chooseMatmul(shape).splitK;
  return splits && canSplitK(shape, splits) ? splits : undefined;
}
