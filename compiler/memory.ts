// A memory report for a compiled training step: bytes of frozen weights, trainable parameters,
// their gradients, optimizer state and saved activations at the declared batch, beside what full
// fine-tuning with AdamW of the same model would need.
import { numel } from "./ir.js";
import type { StepProgram } from "./program.js";

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

export function memoryReport(step: StepProgram): MemoryReport {
  let frozen = 0;
  let trainable = 0;
  const trainablePaths = new Set(step.trainable);
  for (const input of step.inputs) {
    if (input.role !== "param") continue;
    if (trainablePaths.has(input.name.slice("param:".length))) trainable += bytes(input.shape);
    else frozen += Math.ceil((bytes(input.shape) * (input.bits ?? 32)) / 32);
  }
  const statesByParam = new Map<string, number>();
  let optimizerState = 0;
  for (const s of step.states) {
    const size = bytes(s.shape);
    optimizerState += size;
    const owner = s.name.split(":")[0]!;
    statesByParam.set(owner, (statesByParam.get(owner) ?? 0) + size);
  }
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
  const all = frozen + trainable;
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
