// `lrkc check`: every check lrkc can make without running anything.
import { check, planStep } from "../compiler/compile.js";
import { BindingLimitError, BufferLimitError } from "../compiler/memory-plan.js";
import { interpreterBytes, memoryReport, MemoryLimitError } from "../compiler/memory.js";
import type { TrainProgram } from "../compiler/program.js";
import { normalize, type Diagnostic } from "../language/diagnostics.js";
import { failureDiagnostic } from "./failures.js";
import { readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";
import { hostMemory, portableTarget } from "./target.js";
import { runOrDiagnostic } from "./train.js";

export function checkCommand(paths: string[], options: ReportOptions): number {
  const diagnostics: Diagnostic[] = [];
  for (const path of paths) {
    const read = readSource(path);
    if ("diagnostic" in read) {
      diagnostics.push(read.diagnostic);
      continue;
    }
    // A program with train blocks is compiled through to its training step, one block at a time,
    // so that shape errors in forward functions, losses and updates are found too; then each
    // block's data is opened (a missing corpus file is found here, not at step 1).
    const checked = check(read.file);
    diagnostics.push(...checked.diagnostics);
    for (const { program } of checked.compiled) {
      const tooLarge = memoryProblem(program);
      if (tooLarge) diagnostics.push(tooLarge);
      const run = runOrDiagnostic(program);
      if ("severity" in run) diagnostics.push(run);
    }
  }
  // An imported file's problems are reported once, however many files import it.
  const unique = normalize(diagnostics);
  const code = report(unique, options);
  if (code === 0 && !options.json) {
    const warnings = unique.length;
    process.stderr.write(
      `checked ${paths.length} file${paths.length === 1 ? "" : "s"}: ${warnings ? `${warnings} warning${warnings === 1 ? "" : "s"}` : "no problems"}\n`,
    );
  }
  return code;
}

/**
 * E0604 when even the buffers of the step's plan for a portable WebGPU target (what any device
 * keeps at once: the CPU interpreter keeps more) exceed this machine's memory; when a tensor is
 * over WebGPU's default limits, its weights and optimizer state. (The memory report's total
 * counts every saved activation apart, several times what a plan needs: not a lower bound.)
 */
function memoryProblem(program: TrainProgram): Diagnostic | undefined {
  const { total } = hostMemory();
  // Planning costs as much as compiling: skipped when every value of the step at once (more than
  // a plan's buffers, which hold each tensor once at most; halved for kernels' scratch) fits.
  if (2 * interpreterBytes([program.step], false) <= total) return undefined;
  const needed = leastBytes(program);
  if (needed.bytes <= total) return undefined;
  const e = new MemoryLimitError(
    needed.bytes,
    total,
    needed.counted,
    "memory this machine has",
    "lower the batch size (`--batch`) or the model's dimensions, or train only adapters; or check and train it on a machine with more memory",
  );
  return failureDiagnostic(e, { program });
}

function leastBytes(program: TrainProgram): { bytes: number; counted: string } {
  try {
    const plan = planStep(program.step, portableTarget);
    return { bytes: plan.peakBytes, counted: "the buffers of its training step, at least" };
  } catch (e) {
    if (!(e instanceof BufferLimitError || e instanceof BindingLimitError)) throw e;
    const r = memoryReport(program.step, undefined, program.steps);
    return {
      bytes: r.frozen + r.trainable + r.optimizerState,
      counted: "its weights and optimizer state, at least",
    };
  }
}
