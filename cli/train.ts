// `lrkc train FILE`: compile a train block and run it: progress on the terminal, metrics,
// held-out evaluation, atomic checkpoints, `--resume`, a clean stop on Ctrl-C, and a run folder
// with the final weights and a plot of the curves.
import { join, resolve } from "node:path";
import { compile, type CompileOptions } from "../compiler/compile.js";
import type { SourceFile } from "../language/source.js";
import type { Tensor, TrainProgram } from "../compiler/program.js";
import { error, type Diagnostic } from "../language/diagnostics.js";
import type { Device } from "../runtime/device.js";
import { RunFolder } from "../runtime/run-folder.js";
import { openRun, train, type EvalEvent, type Run, type StepEvent } from "../runtime/trainer.js";
import { failureDiagnostic } from "./failures.js";
import { readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";
import { deviceChoices, loadPlans, openDevice } from "./target.js";

export interface TrainCommandOptions extends ReportOptions {
  train?: string;
  steps?: string;
  batch?: string;
  device: string;
  out?: string;
  resume?: boolean;
  /** Start from this checkpoint instead of the train block's `init`. */
  init?: string;
  /** commander's negated `--no-autotune` */
  autotune?: boolean;
}

export const devices = deviceChoices;

function positive(value: string | undefined, flag: string): number | undefined | "bad" {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) {
    process.stderr.write(`error: ${flag} must be a positive integer (got \`${value}\`)\n`);
    return "bad";
  }
  return n;
}

/** A one-line progress display on a terminal; plain periodic lines otherwise (logs, CI). */
class Progress {
  private readonly tty = process.stderr.isTTY === true;
  private lastLine = 0;
  /** Steps after the first (which also compiles the kernels): the rates come from these. */
  private timed = { steps: 0, millis: 0, tokens: 0 };

  constructor(private readonly total: number) {}

  step(e: StepEvent): void {
    if (e.step > this.firstStep) {
      this.timed.steps++;
      this.timed.millis += e.millis;
      this.timed.tokens += e.tokens;
    }
    const { steps, millis, tokens } = this.timed.steps > 0 ? this.timed : { ...e, steps: 1 };
    const rate = (1000 * tokens) / Math.max(millis, 1e-6);
    const eta = ((e.steps - e.step) * millis) / steps / 1000;
    const text = `step ${String(e.step).padStart(String(e.steps).length)}/${e.steps}  loss ${e.loss.toFixed(4)}  lr×${e.lr.toFixed(3)}  ${formatRate(rate)} tok/s  ETA ${formatDuration(eta)}`;
    if (this.tty) {
      const width = 24;
      const done = Math.round((width * e.step) / e.steps);
      process.stderr.write(`\r[${"#".repeat(done)}${".".repeat(width - done)}] ${text}\x1b[K`);
      if (e.step === e.steps) process.stderr.write("\n");
      return;
    }
    const every = Math.max(1, Math.floor(this.total / 20));
    const now = performance.now();
    if (
      e.step === this.firstStep ||
      e.step % every === 0 ||
      e.step === e.steps ||
      now - this.lastLine > 10_000
    ) {
      process.stderr.write(`${text}\n`);
      this.lastLine = now;
    }
  }

  firstStep = 1;

  line(text: string): void {
    process.stderr.write(`${this.tty ? "\r\x1b[K" : ""}${text}\n`);
  }
}

function formatRate(rate: number): string {
  return rate >= 1e6
    ? `${(rate / 1e6).toFixed(1)}M`
    : rate >= 1e3
      ? `${(rate / 1e3).toFixed(1)}k`
      : rate.toFixed(0);
}

function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  if (seconds < 60) return `${seconds.toFixed(0)}s`;
  const m = Math.floor(seconds / 60);
  return m < 60
    ? `${m}m${String(Math.round(seconds % 60)).padStart(2, "0")}s`
    : `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

function evalText(e: EvalEvent): string {
  return `eval at step ${e.step}: held-out loss ${e.loss.toFixed(4)}${e.accuracy !== undefined ? `, exact-match accuracy ${(100 * e.accuracy).toFixed(1)}%` : ""} (${e.examples} examples)`;
}

export async function trainCommand(path: string, options: TrainCommandOptions): Promise<number> {
  const steps = positive(options.steps, "--steps");
  const batch = positive(options.batch, "--batch");
  if (steps === "bad" || batch === "bad") return 1;
  if (!(devices as readonly string[]).includes(options.device)) {
    process.stderr.write(
      `error: unknown device \`${options.device}\`; this version runs on: ${devices.join(", ")}\n`,
    );
    return 1;
  }
  const read = readSource(path);
  if ("diagnostic" in read) return report([read.diagnostic], options);
  // --init replaces the block's `init` (a path relative to the working directory, not the file)
  const init = options.init !== undefined ? resolve(options.init) : undefined;
  const { compiled, diagnostics } = compile(read.file, {
    train: options.train,
    batch,
    steps,
    init,
  });
  const code = report(diagnostics, options);
  if (!compiled || code !== 0) return code || 1;
  const program = compiled.program;
  const run = runOrDiagnostic(program);
  if ("severity" in run) return report([run], options);

  const device = await openDeviceOrDiagnostic(options.device);
  if ("severity" in device) return report([device], options);
  const total = program.steps;
  const name = program.name;
  const folder = new RunFolder(options.out ?? join("runs", name));
  const meta = { train: name, program: path, steps: String(total) };

  let resume: { step: number; store: Map<string, Tensor> } | undefined;
  if (options.resume) {
    if (!folder.hasCheckpoint()) {
      return report(
        [
          error("E0502", `there is no checkpoint to resume in \`${folder.dir}\``, undefined, {
            help: "run without --resume first, or pass the run's folder with --out",
          }),
        ],
        options,
      );
    }
    try {
      resume = folder.loadCheckpoint(program);
    } catch (e) {
      const failure = failureDiagnostic(e, { program, checkpointFromCommandLine: true });
      if (failure) return report([failure], options);
      throw e;
    }
    folder.truncateMetricsAfter(resume.step);
  } else {
    folder.startFresh();
  }

  const progress = new Progress(total);
  progress.firstStep = (resume?.step ?? 0) + 1;
  progress.line(
    `training \`${name}\` for ${total} steps (batch ${program.batch}) on ${device.name}${resume ? `, resuming after step ${resume.step}` : ""}; run folder ${folder.dir}`,
  );
  let interrupted = false;
  const onSigint = () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    progress.line(
      "interrupted: finishing this step and saving a checkpoint (Ctrl-C again to quit at once)",
    );
  };
  process.on("SIGINT", onSigint);
  const started = performance.now();
  let result;
  try {
    folder.writePlan(
      await loadPlans(device, program, {
        autotune: options.autotune !== false,
        log: (line) => progress.line(line),
      }),
    );
    result = await train(run, device, {
      steps: total,
      resume,
      onStep: (e) => {
        progress.step(e);
        folder.log({
          kind: "step",
          step: e.step,
          loss: e.loss,
          lr: e.lr,
          tokens_per_s: e.tokens / (e.millis / 1000),
          wall_s: (performance.now() - started) / 1000,
        });
      },
      onEval: (e) => {
        progress.line(evalText(e));
        folder.log({
          kind: "eval",
          step: e.step,
          loss: e.loss,
          accuracy: e.accuracy,
          examples: e.examples,
        });
      },
      onCheckpoint: (s, store) => folder.saveCheckpoint(s, store, meta),
      shouldStop: () => interrupted,
    });
  } catch (e) {
    const kept = folder.hasCheckpoint()
      ? `the last good checkpoint is kept in ${folder.checkpointPath}`
      : "no checkpoint was written yet";
    const failure = failureDiagnostic(e, { program, kept });
    if (failure) return report([failure], options);
    throw e;
  } finally {
    process.off("SIGINT", onSigint);
    (device as { destroy?: () => void }).destroy?.();
  }
  const params = new Map<string, Tensor>();
  for (const [key, t] of result.store) if (key.startsWith("param:")) params.set(key.slice(6), t);
  const curves = folder.writeCurves(`${name} (${path})`);
  if (result.stopped) {
    progress.line(
      `stopped after step ${result.step}; checkpoint saved: resume with \`lrkc train ${path} --resume${options.out ? ` --out ${options.out}` : ""}\``,
    );
    return 130;
  }
  const file = folder.writeFinal(params, meta);
  const losses = result.losses;
  const seconds = (performance.now() - started) / 1000;
  progress.line(
    [
      `done in ${formatDuration(seconds)}: loss ${losses[0]?.toFixed(4) ?? "?"} → ${losses[losses.length - 1]?.toFixed(4) ?? "?"}`,
      ...(result.evals.length
        ? [`  last ${evalText(result.evals[result.evals.length - 1]!)}`]
        : []),
      `  weights: ${file}`,
      `  metrics: ${folder.metricsPath}, curves: ${curves}`,
      `  kernels: ${join(folder.dir, "plan.json")}, ${join(folder.dir, "kernels")}/`,
    ].join("\n"),
  );
  return 0;
}

/**
 * Compiles a train block and opens its data, every problem a diagnostic: where `lrkc train`,
 * benchmarks and tests start from.
 */
export function compileRun(
  file: SourceFile,
  options: CompileOptions = {},
): { run?: Run; diagnostics: Diagnostic[] } {
  const { compiled, diagnostics } = compile(file, options);
  if (!compiled) return { diagnostics };
  const run = runOrDiagnostic(compiled.program);
  return "severity" in run ? { diagnostics: [...diagnostics, run] } : { run, diagnostics };
}

/** The program with its data opened, or the data's problem as a diagnostic. */
export function runOrDiagnostic(program: TrainProgram): Run | Diagnostic {
  try {
    return openRun(program);
  } catch (e) {
    const failure = failureDiagnostic(e, { program });
    if (failure) return failure;
    throw e;
  }
}

/** openDevice, with "no adapter" as the E0601 diagnostic that says what to install. */
export async function openDeviceOrDiagnostic(choice: string): Promise<Device | Diagnostic> {
  try {
    return await openDevice(choice);
  } catch (e) {
    const failure = failureDiagnostic(e);
    if (failure) return failure;
    throw e;
  }
}
