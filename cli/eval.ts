// `lrkc eval FILE`: the held-out loss (and, for arithmetic data, exact-match accuracy) of a train
// block's model with given weights, on the block's eval data or on another `data` declaration of
// the file: how well a fine-tune does, or what it forgot of the task it started from.
import { compile } from "../compiler/compile.js";
import { error } from "../language/diagnostics.js";
import { evaluate, evaluationSkipped, initializeWithWeights } from "../runtime/trainer.js";
import { compiling } from "./jit.js";
import { startingPoint } from "./export.js";
import { failureDiagnostic } from "./failures.js";
import { readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";
import { formatShown, showExamples } from "./show.js";
import { loadPlans } from "./target.js";
import { dataNotes, devices, openDeviceOrDiagnostic, runOrDiagnostic } from "./train.js";

export interface EvalCommandOptions extends ReportOptions {
  train?: string;
  batch?: string;
  device: string;
  /** safetensors with parameters by path (a run's final.safetensors or checkpoint). */
  weights?: string;
  /** A `data` declaration of the file to evaluate on (its valid split). */
  data?: string;
  /** Full batches to evaluate (default 8). */
  batches?: string;
  /** commander's negated `--no-autotune` */
  autotune?: boolean;
  /** The adapters' values: a PEFT adapter folder or an adapters.safetensors (over --weights). */
  initAdapters?: string;
  /** Held-out examples to print with the model's predictions beside their targets. */
  show?: string;
  /** Store frozen tensors as f16 (compiler/half-storage.ts). */
  frozenF16?: boolean;
}

export async function evalCommand(path: string, options: EvalCommandOptions): Promise<number> {
  const batch = options.batch === undefined ? undefined : Number(options.batch);
  const batches = options.batches === undefined ? 8 : Number(options.batches);
  const show = options.show === undefined ? undefined : Number(options.show);
  for (const [flag, n] of [
    ["--batch", batch],
    ["--batches", batches],
    ["--show", show],
  ] as const) {
    if (n !== undefined && (!Number.isInteger(n) || n <= 0)) {
      process.stderr.write(`error: ${flag} must be a positive integer\n`);
      return 1;
    }
  }
  if (!(devices as readonly string[]).includes(options.device)) {
    process.stderr.write(`error: unknown device \`${options.device}\` (${devices.join(", ")})\n`);
    return 1;
  }
  const read = readSource(path);
  if ("diagnostic" in read) return report([read.diagnostic], options);
  const { compiled, diagnostics } = compiling(() =>
    compile(read.file, {
      train: options.train,
      batch,
      evalData: options.data,
      ...(options.frozenF16 ? { frozenF16: true } : {}),
    }),
  );
  if (!compiled) return report(diagnostics, options) || 1;
  const program = compiled.program;
  const run = runOrDiagnostic(program);
  if ("severity" in run) return report([run], options);
  if (!options.json) for (const note of dataNotes(run)) process.stderr.write(`note: ${note}\n`);
  const skipped = evaluationSkipped(run);
  if (skipped)
    return report(
      [
        error(
          "E0501",
          skipped.replace(/^held-out evaluation skipped: /, "nothing to evaluate: "),
          program.eval.data.at,
        ),
      ],
      options,
    );

  // Read (and checked against the program) before the device opens: a bad file fails fast.
  let start: ReturnType<typeof startingPoint>;
  try {
    start = startingPoint(compiled, options.weights, options.initAdapters, (text) => {
      if (!options.json) process.stderr.write(`note: ${text}\n`);
    });
  } catch (e) {
    const failure = failureDiagnostic(e, { program, checkpointFromCommandLine: true });
    if (failure) return report([failure], options);
    throw e;
  }
  const { weights, adapters } = start;
  const device = await openDeviceOrDiagnostic(options.device);
  if ("severity" in device) return report([device], options);
  try {
    await loadPlans(device, program, { autotune: options.autotune !== false });
    // the weights replace the block's `init`: no need to read that file too
    const store = await initializeWithWeights(program, device, weights?.tensors, {
      data: run.data,
      adapters,
      onNote: (text) => {
        if (!options.json) process.stderr.write(`note: ${text}\n`);
      },
    });
    if (weights) {
      const { missing, unused } = weights;
      if (unused.length > 0 && !options.json)
        process.stderr.write(
          `note: ${unused.length} tensor${unused.length === 1 ? "" : "s"} in ${options.weights} ${unused.length === 1 ? "is" : "are"} not this model's and ${unused.length === 1 ? "is" : "are"} not used (${unused.slice(0, 3).join(", ")}${unused.length > 3 ? ", …" : ""})\n`,
        );
      if (missing.length > 0 && !options.json)
        process.stderr.write(
          `note: ${missing.length} parameter${missing.length === 1 ? "" : "s"} not in ${options.weights} keep their initial values (${missing.slice(0, 3).join(", ")}${missing.length > 3 ? ", …" : ""})\n`,
        );
    }
    const e = await evaluate(run, device, store, 0, batches);
    const shown = show ? await showExamples(run, device, store, show) : undefined;
    const on = options.data ?? "its eval data";
    if (options.json) {
      const result = {
        data: on,
        loss: e.loss,
        accuracy: e.accuracy,
        examples: e.examples,
        ...(shown ? { shown } : {}),
      };
      return report(diagnostics, options, { result });
    } else {
      report(diagnostics, options);
      process.stdout.write(
        `${program.name} on ${on} (${run.evalSplit} split): held-out loss ${e.loss.toFixed(4)}${e.accuracy !== undefined ? `, exact-match accuracy ${(100 * e.accuracy).toFixed(1)}%` : ""} (${e.examples} examples)\n`,
      );
      if (shown) process.stdout.write(formatShown(shown));
      if (shown?.length === 0)
        process.stderr.write(
          "note: --show prints token predictions: this block's data has no `input` tokens (or no full batch) to show\n",
        );
    }
    return 0;
  } catch (e) {
    const failure = failureDiagnostic(e, { program });
    if (failure) return report([failure], options);
    throw e;
  } finally {
    (device as { destroy?: () => void }).destroy?.();
  }
}
