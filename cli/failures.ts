// Every failure of a run that is not a bug in lrkc, as a diagnostic: the one place where the
// runtime's errors (data, checkpoints, device limits, a non-finite loss, no adapter, a kernel the
// driver rejects) become what the user reads. Anything else is a bug and keeps its stack.
import { error, type Diagnostic, type Location, type Note } from "../language/diagnostics.js";
import { BindingLimitError, BufferLimitError } from "../compiler/memory-plan.js";
import { MemoryLimitError } from "../compiler/memory.js";
import type { TrainProgram } from "../compiler/program.js";
import { DataError } from "../runtime/data.js";
import { NoAdapterError } from "../runtime/gpu.js";
import { RunFolderBusy, RunFolderError } from "../runtime/run-folder.js";
import { IndexOutOfRange } from "../runtime/interpreter.js";
import { CheckpointError } from "../runtime/safetensors.js";
import { NonFiniteLoss } from "../runtime/trainer.js";
import { PipelineError } from "../runtime/webgpu-device.js";

export interface FailureContext {
  program?: TrainProgram;
  /** Where a checkpoint came from when it is not the program's `init` (`--resume`, `--weights`). */
  checkpointFromCommandLine?: boolean;
  /** What is left of the run after a non-finite loss (which checkpoint is kept). */
  kept?: string;
}

export function failureDiagnostic(
  e: unknown,
  context: FailureContext = {},
): Diagnostic | undefined {
  const { program } = context;
  if (e instanceof DataError)
    return error("E0501", e.message, e.at ?? program?.data.at, { help: e.help });
  if (e instanceof CheckpointError) {
    // a `load` call's file is reported at the call (runtime/trainer.ts sets `at`)
    const loadAt = (e as { at?: Location }).at;
    const at = loadAt ?? (context.checkpointFromCommandLine ? undefined : program?.init?.at);
    return error("E0502", e.message, at, { help: e.help });
  }
  if (e instanceof RunFolderError) return error("E0504", e.message, undefined, { help: e.help });
  if (e instanceof RunFolderBusy) return error("E0505", e.message, undefined, { help: e.help });
  if (e instanceof IndexOutOfRange)
    return error(
      "E0510",
      `${e.step !== undefined ? `at step ${e.step}, ` : ""}${e.message}; the run stopped`,
      program?.at,
      {
        help: "the ids come from a computation whose values the compiler cannot bound: clamp them into the table (`min(max(ids, 0), rows - 1)`) or make the table larger",
      },
    );
  if (e instanceof NoAdapterError) return error("E0601", e.message, undefined, { help: e.help });
  if (e instanceof BufferLimitError)
    return error("E0602", e.message, program?.at, {
      help: "lower the batch size (`--batch`) or the model's dimensions",
    });
  if (e instanceof BindingLimitError)
    return error("E0602", e.message, program?.at, {
      notes: lines(e.sourceLines),
      help: e.chunkBindings
        ? "a tensor larger than one storage binding is bound in chunks, one binding each: lower the batch size (`--batch`) or the dimensions of the largest tensors here, or plan for a larger binding (`--max-binding`, up to the device's maxStorageBufferBindingSize)"
        : "split the computation at these lines into smaller steps (fewer tensors in one expression), or run on a device with more storage buffers per shader stage",
    });
  if (e instanceof MemoryLimitError)
    return error("E0604", e.message, program?.at, { help: e.help });
  if (e instanceof PipelineError)
    return error(
      "E0603",
      `the GPU driver rejected ${e.kernels.length === 1 ? "a kernel" : `${e.kernels.length} kernels`} of this program: ${e.kernels.join("; ")}`,
      program?.at,
      {
        help: "run with `--device cpu` to train on the reference interpreter, and report this with `lrkc build --emit wgsl` output",
      },
    );
  if (e instanceof NonFiniteLoss) {
    return error(
      "E0503",
      `the loss became ${e.loss} at step ${e.step}; training stopped`,
      program?.lossAt,
      {
        notes: [
          {
            message: e.tensor
              ? `the first non-finite value after that step is in \`${e.tensor.replace(/^(param|state):/, "")}\``
              : "no parameter was non-finite yet: the loss itself overflowed",
          },
          ...(context.kept ? [{ message: context.kept }] : []),
        ],
        help: "lower the learning rate, add `clip 1.0`, or check the data",
      },
    );
  }
  return undefined;
}

function lines(sourceLines: readonly string[]): Note[] {
  return sourceLines.slice(0, 4).map((l) => ({ message: `the kernel computes ${l}` }));
}
