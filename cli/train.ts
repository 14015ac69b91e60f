// `lrkc train FILE`: compile a train block and run it: progress on the terminal, metrics,
// held-out evaluation, atomic checkpoints, `--resume`, a clean stop on Ctrl-C, and a run folder
// with the final weights and a plot of the curves.
import { join, resolve } from "node:path";
import type { Tensor } from "../compiler/interpreter.js";
import { error, type Diagnostic } from "../language/diagnostics.js";
import { BufferLimitError } from "../compiler/memory-plan.js";
import { CpuDevice, type Device } from "../runtime/device.js";
import { NoAdapterError } from "../runtime/gpu.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { RunFolder } from "../runtime/run-folder.js";
import { CheckpointError } from "../runtime/safetensors.js";
import {
  NonFiniteLoss,
  prepare,
  train,
  type EvalEvent,
  type Run,
  type StepEvent,
} from "../runtime/trainer.js";
import { planProgram, type Plan } from "../compiler/plan.js";
import { defaultLimits } from "./build.js";
import { readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";

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

export const devices = ["auto", "webgpu", "cpu", "cpu64"] as const;

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
  const { run, diagnostics } = prepare(read.file, { train: options.train, batch, steps });
  const code = report(diagnostics, options);
  if (!run || code !== 0) return code || 1;
  // --init replaces the block's `init` (a path relative to the working directory, not the file)
  if (options.init !== undefined) run.spec.init = { path: resolve(options.init) };

  const device = await openDeviceOrDiagnostic(options.device, options.autotune !== false);
  if ("severity" in device) return report([device], options);
  const total = steps ?? run.spec.steps;
  const name = run.spec.decl.name.name;
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
      resume = folder.loadCheckpoint(
        run.step.inputs.filter((i) => i.role === "param" || i.role === "state").map((i) => i.name),
      );
    } catch (e) {
      if (e instanceof CheckpointError)
        return report([error("E0502", e.message, undefined, { help: e.help })], options);
      throw e;
    }
    folder.truncateMetricsAfter(resume.step);
  } else {
    folder.startFresh();
  }

  const progress = new Progress(total);
  progress.firstStep = (resume?.step ?? 0) + 1;
  progress.line(
    `training \`${name}\` for ${total} steps (batch ${run.batch}) on ${device.name}${resume ? `, resuming after step ${resume.step}` : ""}; run folder ${folder.dir}`,
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
    folder.writePlan(await stepPlan(run, device));
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
    const failure = trainingFailure(e, run, folder);
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
 * The kernel plan of the plain training step: on WebGPU the one the device runs (tuned to its
 * adapter), on the CPU the one a GPU with WebGPU's default limits would run.
 */
async function stepPlan(run: Run, device: Device): Promise<Plan> {
  const entry = run.step.variants.get("")!;
  return device instanceof WebGpuDevice
    ? await device.tunedPlan(run.step.graph, run.step.inputs, entry)
    : planProgram(run.step.graph, run.step.inputs, { step: entry }, defaultLimits);
}

/** openDevice, with "no adapter" as the E0601 diagnostic that says what to install. */
export async function openDeviceOrDiagnostic(
  choice: string,
  autotune: boolean,
): Promise<Device | Diagnostic> {
  try {
    return await openDevice(choice, autotune);
  } catch (e) {
    if (e instanceof NoAdapterError) return error("E0601", e.message, undefined, { help: e.help });
    throw e;
  }
}

/** `auto`: the WebGPU adapter if there is one, else the CPU reference interpreter. */
export async function openDevice(choice: string, autotune: boolean): Promise<Device> {
  if (choice === "cpu" || choice === "cpu64") return new CpuDevice({ float64: choice === "cpu64" });
  try {
    return await WebGpuDevice.open({ autotune });
  } catch (e) {
    if (choice === "auto" && e instanceof NoAdapterError) {
      process.stderr.write(
        `note: ${e.message}; training on the CPU reference interpreter (slow). ${e.help}\n`,
      );
      return new CpuDevice();
    }
    throw e;
  }
}

function trainingFailure(e: unknown, run: Run, folder: RunFolder): Diagnostic | undefined {
  if (e instanceof BufferLimitError) {
    return error(
      "E0602",
      e.message,
      { file: run.spec.module.file, span: run.spec.decl.name.span },
      { help: "lower the batch size (`--batch`) or the model's dimensions" },
    );
  }
  if (e instanceof CheckpointError) {
    const at = run.spec.init?.at
      ? { file: run.spec.module.file, span: run.spec.init.at.span }
      : undefined;
    return error("E0502", e.message, at, { help: e.help });
  }
  if (e instanceof NonFiniteLoss) {
    const kept = folder.hasCheckpoint()
      ? `the last good checkpoint is kept in ${folder.checkpointPath}`
      : "no checkpoint was written yet";
    return error(
      "E0503",
      `the loss became ${e.loss} at step ${e.step}; training stopped`,
      { file: run.spec.module.file, span: run.spec.loss!.span },
      {
        notes: [
          {
            message: e.tensor
              ? `the first non-finite value after that step is in \`${e.tensor.replace(/^(param|state):/, "")}\``
              : "no parameter was non-finite yet: the loss itself overflowed",
          },
          { message: kept },
        ],
        help: "lower the learning rate, add `clip 1.0`, or check the data",
      },
    );
  }
  return undefined;
}
