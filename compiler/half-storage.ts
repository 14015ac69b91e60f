// f16 storage of frozen tensors (`lrkc train --frozen-f16`, spec/compiler.md "f16 storage"): the
// step program's frozen f32 inputs are marked `storage: "f16"`, so a device with `shader-f16`
// stores them as half floats (half the bytes) and every kernel converts each load to f32 and
// computes in f32. Their values are the f32 ones rounded to f16 once where they are fed; the
// interpreter (runtime/device.ts) rounds them the same way, so the two devices still agree.
import { isSpecial } from "./fuse/ops.js";
import { packedBits, type GraphProgram, type StepProgram } from "./program.js";

/**
 * The inputs of `program` that f16 storage applies to: parameters and buffers (role `param`)
 * that are f32, not quantized, not trainable, and never written by an entry (an output of the
 * same name would be written over the input's buffer in place, and an action that rewrites a
 * frozen tensor wants its f32 value); nor read by a special kernel (svd, scatterAdd, …: those
 * read 32-bit elements).
 */
export function frozenInputs(program: GraphProgram, trainable: readonly string[]): Set<string> {
  const trained = new Set(trainable.map((p) => `param:${p}`));
  const written = new Set(program.entries.flatMap((e) => e.outputs.map((o) => o.name)));
  const readBySpecial = new Set<number>();
  for (const node of program.graph.nodes)
    if (isSpecial(node.op.kind)) for (const i of node.inputs) readBySpecial.add(i);
  const frozen = new Set<string>();
  for (const input of program.inputs)
    if (
      input.role === "param" &&
      input.dtype === "f32" &&
      !packedBits(input) &&
      !trained.has(input.name) &&
      !written.has(input.name) &&
      !readBySpecial.has(input.node)
    )
      frozen.add(input.name);
  return frozen;
}

/** The step program with its frozen inputs stored as f16 (a new program; the graph is shared). */
export function storeFrozenAsF16(step: StepProgram): StepProgram {
  const frozen = frozenInputs(step, step.trainable);
  return {
    ...step,
    inputs: step.inputs.map((i) => (frozen.has(i.name) ? { ...i, storage: "f16" as const } : i)),
  };
}

/** The program with every input stored as 32 bits (a device without `shader-f16`). */
export function withoutHalfStorage<P extends GraphProgram>(program: P): P {
  if (!program.inputs.some((i) => i.storage === "f16")) return program;
  return {
    ...program,
    inputs: program.inputs.map((i) => {
      if (i.storage !== "f16") return i;
      const { storage: _storage, ...rest } = i;
      return rest;
    }),
  };
}
