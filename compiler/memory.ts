// A memory report for a compiled training step: bytes of frozen weights, trainable parameters,
// their gradients, optimizer state and saved activations at the declared batch, beside what full
// fine-tuning with AdamW of the same model would need.
import { numel } from "./ir.js";
import { pooledBytes } from "./pooled-states.js";
import { storedBytes, type Entry, type GraphProgram, type StepProgram } from "./program.js";

export interface MemoryReport {
  frozen: number;
  trainable: number;
  gradients: number;
  optimizerState: number;
  activations: number;
  total: number;
  /** Every parameter trainable, AdamW's two moments for each, the same activations. */
  fullAdamW: number;
  /** Optimizer state per parameter path (for the table). */
  statesByParam: Map<string, number>;
}

const bytes = (shape: readonly number[]) => 4 * numel(shape);

/**
 * `modelParams`, when given, are the model's own parameters at their full shapes (a quantized
 * weight as the dense matrix it replaced): what full fine-tuning would train. Without them the
 * step's parameter inputs stand for them (adapters' tensors and frozen buffers included). With
 * the run's `steps`, pooled optimizer states count the most they hold at once.
 */
export function memoryReport(
  step: StepProgram,
  modelParams?: readonly { shape: readonly number[] }[],
  steps?: number,
): MemoryReport {
  let frozen = 0;
  let trainable = 0;
  const trainablePaths = new Set(step.trainable);
  for (const input of step.inputs) {
    if (input.role !== "param") continue;
    if (trainablePaths.has(input.name.slice("param:".length))) trainable += bytes(input.shape);
    else frozen += storedBytes(input, numel(input.shape)); // packed as the device stores it
  }
  const statesByParam = new Map<string, number>();
  let optimizerState = 0;
  for (const s of step.states) {
    const size = bytes(s.shape);
    optimizerState += size;
    const owner = s.name.split(":")[0]!;
    statesByParam.set(owner, (statesByParam.get(owner) ?? 0) + size);
  }
  // pooled states (pooled-states.ts) count the most the run's `steps` hold at once
  const pooled = step.states.filter((s) => s.pooled);
  if (steps !== undefined && pooled.length > 0)
    optimizerState +=
      pooledBytes(step.states, steps).bytes - pooled.reduce((n, s) => n + bytes(s.shape), 0);
  // Saved activations: forward values (computed before the loss) that the backward pass or the
  // updates read again.
  const graph = step.graph;
  const saved = new Set<number>();
  for (const node of graph.nodes) {
    if (node.id <= step.loss) continue;
    for (const i of node.inputs) {
      const input = graph.node(i);
      if (i < step.loss && input.op.kind !== "input" && input.op.kind !== "const") saved.add(i);
    }
  }
  let activations = 0;
  for (const id of saved) activations += bytes(graph.node(id).shape);
  const gradients = trainable;
  const all = modelParams
    ? modelParams.reduce((sum, p) => sum + bytes(p.shape), 0)
    : frozen + trainable;
  return {
    frozen,
    trainable,
    gradients,
    optimizerState,
    activations,
    total: frozen + trainable + gradients + optimizerState + activations,
    fullAdamW: all + all + 2 * all + activations,
    statesByParam,
  };
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(2)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

/** Bytes of one element as a device keeps it: f32 and i32 words, or float64 on `cpu64`. */
const elementBytes = (dtype: string, float64: boolean) => (dtype !== "i32" && float64 ? 8 : 4);

/** Node ids an entry evaluates: its outputs and everything they read, inputs included. */
function entryNodes(program: GraphProgram, entry: Entry): Set<number> {
  const seen = new Set<number>();
  const stack = entry.outputs.map((o) => o.node);
  while (stack.length > 0) {
    const id = stack.pop()!;
    if (seen.has(id)) continue;
    seen.add(id);
    stack.push(...program.graph.node(id).inputs);
  }
  return seen;
}

/**
 * What the CPU reference interpreter keeps alive at once while it trains: the parameters and
 * states of the run (the store), and, while one entry runs, a value for every node the entry
 * evaluates (the interpreter frees nothing until the entry ends), the largest entry counted.
 */
export function interpreterBytes(programs: readonly GraphProgram[], float64: boolean): number {
  const store = new Map<string, number>();
  let largestEntry = 0;
  for (const program of programs) {
    for (const input of program.inputs)
      if (input.role === "param" || input.role === "state")
        store.set(input.name, numel(input.shape) * elementBytes(input.dtype, float64));
    for (const entry of program.entries) {
      let bytes = 0;
      for (const id of entryNodes(program, entry)) {
        const node = program.graph.node(id);
        bytes += numel(node.shape) * elementBytes(node.dtype, float64);
      }
      largestEntry = Math.max(largestEntry, bytes);
    }
  }
  let stored = 0;
  for (const bytes of store.values()) stored += bytes;
  return stored + largestEntry;
}

/** Bytes of the parameters and states a run keeps on the host (read back for checkpoints). */
export function storeBytes(programs: readonly GraphProgram[]): number {
  const store = new Map<string, number>();
  for (const program of programs)
    for (const input of program.inputs)
      if (input.role === "param" || input.role === "state")
        store.set(input.name, 4 * numel(input.shape));
  let bytes = 0;
  for (const b of store.values()) bytes += b;
  return bytes;
}

/**
 * A run that needs more memory than the machine that would run it has: refused before anything
 * is allocated (cli/failures.ts makes it E0604), not killed by the allocator halfway.
 */
export class MemoryLimitError extends Error {
  constructor(
    /** Bytes the run needs (an estimate that leaves out the runtime's own overhead). */
    readonly needed: number,
    /** Bytes the machine has for it. */
    readonly available: number,
    /** What is counted, in words (`parameters, … on the CPU interpreter`). */
    readonly counted: string,
    /** Whose memory `available` is, in words (`this machine's memory`). */
    readonly memory: string,
    readonly help: string,
  ) {
    super(
      `this program needs about ${formatBytes(needed)} (${counted}), more than the ${formatBytes(available)} of ${memory}`,
    );
  }
}
