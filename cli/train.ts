// `lrkc train FILE`: compile a train block and run it: progress on the terminal, metrics,
// held-out evaluation, atomic checkpoints, `--resume`, a clean stop on Ctrl-C, and a run folder
// with the final weights and a plot of the curves.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { compile, type CompileOptions } from "../compiler/compile.js";
import type { SourceFile } from "../language/source.js";
import type { Plan, Tensor, TrainProgram } from "../compiler/program.js";
import { MAX_STEPS } from "../compiler/train.js";
import { error, type Diagnostic } from "../language/diagnostics.js";
import type { Device } from "../runtime/device.js";
import { RunFolder, RunFolderBusy, type RunRecord } from "../runtime/run-folder.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { CheckpointError } from "../runtime/safetensors.js";
import { openRun, train, type EvalEvent, type Run, type StepEvent } from "../runtime/trainer.js";
import { compiling } from "./jit.js";
import { initialAdapters } from "./export.js";
import { failureDiagnostic } from "./failures.js";
import { readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";
import { STOP_SIGNALS } from "./signals.js";
import { deviceChoices, loadPlans, openDevice, parseMaxBinding, refuseTooLarge } from "./target.js";

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
  /** Replace the run the folder holds (a fresh run refuses to, without it). */
  force?: boolean;
  /** The adapters' starting values: a PEFT adapter folder or an adapters.safetensors. */
  initAdapters?: string;
  /** Store frozen tensors as f16 (compiler/half-storage.ts). */
  frozenF16?: boolean;
  /** `--max-binding`: bytes one storage binding may hold (cli/target.ts `parseMaxBinding`). */
  maxBinding?: string;
}

export const devices = deviceChoices;

function positive(
  value: string | undefined,
  flag: string,
  max = Number.MAX_SAFE_INTEGER,
): number | undefined | "bad" {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) {
    process.stderr.write(`error: ${flag} must be a positive integer (got \`${value}\`)\n`);
    return "bad";
  }
  if (n > max) {
    process.stderr.write(`error: ${flag} must be at most ${max} (got \`${value}\`)\n`);
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
      const line = progressLine(text, e.step, e.steps, process.stderr.columns);
      process.stderr.write(`\r${line}\x1b[K`);
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

/**
 * The terminal's progress line: bar and text, fitted to `columns` (the bar goes first, then the
 * text's end) so it never wraps: a wrapped line is not rewritten by `\r`, and would print a new
 * line per step.
 */
export function progressLine(text: string, step: number, steps: number, columns?: number): string {
  const width = 24;
  const done = Math.round((width * step) / steps);
  const line = `[${"#".repeat(done)}${".".repeat(width - done)}] ${text}`;
  if (columns === undefined || !(columns > 0)) return line;
  // one column spare: a character in the last column wraps on some terminals
  const room = Math.max(1, columns - 1);
  if (line.length <= room) return line;
  return text.slice(0, room);
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
  const steps = positive(options.steps, "--steps", MAX_STEPS);
  const batch = positive(options.batch, "--batch");
  if (steps === "bad" || batch === "bad") return 1;
  const maxBinding =
    options.maxBinding !== undefined ? parseMaxBinding(options.maxBinding) : undefined;
  if (typeof maxBinding === "object") {
    process.stderr.write(`error: ${maxBinding.error}\n`);
    return 1;
  }
  if (!(devices as readonly string[]).includes(options.device)) {
    process.stderr.write(
      `error: unknown device \`${options.device}\`; this version runs on: ${devices.join(", ")}\n`,
    );
    return 1;
  }
  if (options.force && options.resume) {
    process.stderr.write("error: --force (start over) and --resume (continue) contradict\n");
    return 1;
  }
  if (options.initAdapters !== undefined && options.resume) {
    process.stderr.write(
      "error: --init-adapters (start from these adapters) and --resume (continue) contradict\n",
    );
    return 1;
  }
  const gone = deletedWorkingDirectory();
  if (gone) return report([gone], options);
  const read = readSource(path);
  if ("diagnostic" in read) return report([read.diagnostic], options);
  // --init replaces the block's `init` (a path relative to the working directory, not the file)
  const init = options.init !== undefined ? resolve(options.init) : undefined;
  const { compiled, diagnostics } = compiling(() =>
    compile(read.file, {
      train: options.train,
      batch,
      steps,
      init,
      ...(options.frozenF16 ? { frozenF16: true } : {}),
    }),
  );
  const code = report(diagnostics, options);
  if (!compiled || code !== 0) return code || 1;
  const program = compiled.program;
  // the flag, or the block's `frozen_storage f16`: what run.json records and --resume compares
  const frozenF16 = options.frozenF16 === true || compiled.spec.frozenStorage === "f16";
  const run = runOrDiagnostic(program);
  if ("severity" in run) return report([run], options);
  if (!options.json) for (const note of dataNotes(run)) process.stderr.write(`note: ${note}\n`);
  let adapters: Map<string, Tensor> | undefined;
  try {
    // on --resume the checkpoint holds the adapters: the block's `init_adapters` is not read
    if (!options.resume)
      adapters = initialAdapters(options.initAdapters, compiled, (text) => {
        if (!options.json) process.stderr.write(`note: ${text}\n`);
      });
  } catch (e) {
    const failure = failureDiagnostic(e, { program, checkpointFromCommandLine: true });
    if (failure) return report([failure], options);
    throw e;
  }

  const dir = options.out ?? join("runs", program.name);
  const record: RunRecord = {
    program: path,
    source_sha256: createHash("sha256").update(read.file.text).digest("hex"),
    train: program.name,
    steps: program.steps,
    batch: program.batch,
    device: options.device,
    init: program.init?.path ?? null,
    autotune: options.autotune !== false,
    ...(frozenF16 ? { frozen_f16: true } : {}),
    resume: resumeCommand(path, options, dir),
  };
  let folder: RunFolder | undefined;
  let device: Device | Diagnostic | undefined;
  // a checkpoint problem before training is the run folder's (--resume), after it the `init`'s
  let training = false;
  try {
    folder = new RunFolder(dir);
    folder.lock();
    folder.removeTemporaries();
    const resume = options.resume
      ? resumePoint(folder, program, record)
      : freshStart(folder, options.force === true);
    device = await openDeviceOrDiagnostic(
      options.device,
      maxBinding !== undefined ? { maxBinding } : {},
    );
    if ("severity" in device) return report([device], options);
    const untuned = await refuseTooLarge(device, program);
    if (resume) folder.truncateMetricsAfter(resume.step);
    else folder.startFresh();
    folder.writeRecord(record);
    training = true;
    return await runTraining(run, device, folder, resume, record, {
      ...options,
      untuned,
      adapters,
    });
  } catch (e) {
    const kept = folder?.hasCheckpoint()
      ? `the last good checkpoint is kept in ${folder.checkpointPath}`
      : "no checkpoint was written yet";
    const failure = failureDiagnostic(e, {
      program,
      kept,
      checkpointFromCommandLine: !training,
    });
    if (failure) return report([failure], options);
    throw e;
  } finally {
    // (a refusal after the device opened must release it too: Dawn keeps the process alive)
    if (device && !("severity" in device)) (device as { destroy?: () => void }).destroy?.();
    folder?.unlock();
  }
}

/** Trains in a prepared (locked) run folder: progress, metrics, checkpoints, final weights. */
async function runTraining(
  run: Run,
  device: Device,
  folder: RunFolder,
  resume: Resume | undefined,
  record: RunRecord,
  options: TrainCommandOptions & { untuned?: Plan[]; adapters?: Map<string, Tensor> },
): Promise<number> {
  const { program } = run;
  const total = program.steps;
  const name = program.name;
  const meta = { train: name, program: record.program, steps: String(total) };
  const progress = new Progress(total);
  progress.firstStep = (resume?.step ?? 0) + 1;
  progress.line(
    `training \`${name}\` for ${total} step${total === 1 ? "" : "s"} (batch ${program.batch}) on ${device.name}${resume ? `, resuming after step ${resume.step}` : ""}; run folder ${folder.dir}`,
  );
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) process.exit(130);
    interrupted = true;
    progress.line(
      `${signal === "SIGINT" ? "interrupted" : `received ${signal}`}: finishing this step and saving a checkpoint (${signal === "SIGINT" ? "Ctrl-C" : "the signal"} again to quit at once)`,
    );
  };
  for (const signal of STOP_SIGNALS) process.on(signal, onSignal);
  const started = performance.now();
  let result;
  let plan;
  try {
    plan = await loadPlans(device, program, {
      untuned: options.untuned,
      autotune: options.autotune !== false,
      log: (line) => progress.line(line),
    });
    if (plan) folder.writePlan(plan);
    // Without this the first step looks like a hang: lavapipe compiles each shader at its first
    // dispatch (seconds for a small transformer's step); later steps reuse them.
    if (plan && device instanceof WebGpuDevice)
      progress.line(
        `compiling ${plan.kernels.length} kernels as they are first used: the first step and evaluation take longer`,
      );
    else if (!plan)
      progress.line(
        "note: no plan.json: a tensor of this program exceeds WebGPU's default limits (it trains on the CPU, or on an adapter with larger limits)",
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
      onNote: (text) => progress.line(`note: ${text}`),
      // A float64 run (cpu64) keeps its checkpoint in float64, so that it resumes exactly.
      onCheckpoint: (s, store) =>
        folder.saveCheckpoint(s, store, meta, { floats: device.float64 ? "F64" : "F32" }),
      shouldStop: () => interrupted,
      adapters: options.adapters,
    });
  } finally {
    for (const signal of STOP_SIGNALS) process.off(signal, onSignal);
  }
  const params = new Map<string, Tensor>();
  for (const [key, t] of result.store) if (key.startsWith("param:")) params.set(key.slice(6), t);
  const curves = folder.writeCurves(`${name} (${record.program})`);
  if (result.stopped) {
    progress.line(
      `stopped after step ${result.step}; checkpoint saved: resume with \`${record.resume}\``,
    );
    return 130;
  }
  const file = folder.writeFinal(params, meta);
  // the adapters alone beside the whole model: the fine-tune without its base
  const adapterPaths = program.params.filter((p) => p.origin === "adapter").map((p) => p.path);
  const adapterFile = adapterPaths.length
    ? folder.writeAdapters(new Map(adapterPaths.map((p) => [p, params.get(p)!])), meta)
    : undefined;
  const losses = result.losses;
  const seconds = (performance.now() - started) / 1000;
  progress.line(
    [
      losses.length > 0
        ? `done in ${formatDuration(seconds)}: loss ${losses[0]!.toFixed(4)} → ${losses[losses.length - 1]!.toFixed(4)}`
        : `done: no steps were left to run after step ${result.step}`,
      ...(result.evals.length
        ? [`  last ${evalText(result.evals[result.evals.length - 1]!)}`]
        : []),
      `  weights: ${file}`,
      ...(adapterFile ? [`  adapters: ${adapterFile}`] : []),
      `  metrics: ${folder.metricsPath}, curves: ${curves}`,
      ...(plan
        ? [`  kernels: ${join(folder.dir, "plan.json")}, ${join(folder.dir, "kernels")}/`]
        : []),
    ].join("\n"),
  );
  return 0;
}

type Resume = { step: number; store: Map<string, Tensor> };

/** E0504 when the working directory was deleted (paths relative to it cannot be resolved). */
function deletedWorkingDirectory(): Diagnostic | undefined {
  try {
    process.cwd();
    return undefined;
  } catch {
    return error(
      "E0504",
      "cannot write the run folder: the working directory no longer exists (it was deleted)",
      undefined,
      { help: "`cd` into an existing folder and run the command again" },
    );
  }
}

/** A word of the command line as the shell reads it back. */
function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** The command that continues this run: the same file, block, options and folder. */
export function resumeCommand(path: string, options: TrainCommandOptions, dir: string): string {
  const words = ["lrkc", "train", path];
  if (options.train !== undefined) words.push("--train", options.train);
  if (options.steps !== undefined) words.push("--steps", options.steps);
  if (options.batch !== undefined) words.push("--batch", options.batch);
  words.push("--device", options.device);
  if (options.init !== undefined) words.push("--init", options.init);
  words.push("--out", dir);
  if (options.autotune === false) words.push("--no-autotune");
  if (options.frozenF16) words.push("--frozen-f16");
  words.push("--resume");
  return words.map(shellWord).join(" ");
}

/** A fresh run may replace what the folder holds only with --force. */
function freshStart(folder: RunFolder, force: boolean): undefined {
  if (force || !folder.holdsRun()) return undefined;
  const previous = folder.readRecord();
  const finished = existsSync(join(folder.dir, "final.safetensors"));
  const what = previous?.train ? `a run of \`${previous.train}\`` : "a run";
  throw new RunFolderBusy(
    `the run folder \`${folder.dir}\` already holds ${what}${finished ? " that finished" : " that did not finish"}`,
    finished
      ? "pass --force to replace it, or another --out to keep it"
      : `pass --force to replace it, ${previous?.resume ? `\`${previous.resume}\`` : "--resume"} to continue it, or another --out`,
  );
}

/**
 * The checkpoint to continue from, when it is this run's: the folder's run.json must record the
 * same source text, train block, options and length, and the checkpoint a step within it.
 */
function resumePoint(folder: RunFolder, program: TrainProgram, record: RunRecord): Resume {
  if (!folder.hasCheckpoint())
    throw new CheckpointError(
      `there is no checkpoint to resume in \`${folder.dir}\``,
      "run without --resume first, or pass the run's folder with --out",
    );
  // Which run the folder holds is decided first: a checkpoint of another run says so, not that
  // its tensors have other shapes.
  const recorded = folder.readRecord();
  if (!recorded)
    throw new CheckpointError(
      `\`${folder.dir}\` has no run.json saying which run its checkpoint belongs to`,
      "it was not written by this version of `lrkc train`; start over with --force (or another --out)",
    );
  const differences = runDifferences(recorded, record);
  if (differences.length > 0)
    throw new CheckpointError(
      `the checkpoint in \`${folder.dir}\` belongs to another run: ${differences.join("; ")}`,
      `continue that run with \`${recorded.resume}\`, or start over with --force (or another --out)`,
    );
  const resume = folder.loadCheckpoint(program);
  if (resume.meta["train"] !== record.train || resume.step > record.steps)
    throw new CheckpointError(
      `\`${folder.checkpointPath}\` was saved at step ${resume.step} of \`${resume.meta["train"] ?? "?"}\`, which is not this run of \`${record.train}\` (${record.steps} steps)`,
      "start over with --force (or another --out)",
    );
  if (resume.step === record.steps && existsSync(join(folder.dir, "final.safetensors")))
    throw new CheckpointError(
      `the run in \`${folder.dir}\` already finished all ${record.steps} steps; there is nothing to resume`,
      "its weights are in final.safetensors; to train more steps, start a run with --init from them",
    );
  return resume;
}

/** How a recorded run differs from the one asked for, in words; none when it is the same. */
function runDifferences(recorded: RunRecord, asked: RunRecord): string[] {
  const out: string[] = [];
  if (recorded.source_sha256 !== asked.source_sha256)
    out.push(
      `the program's text changed since (\`${recorded.program}\` was hashed when the run started)`,
    );
  const fields = ["train", "steps", "batch", "device", "init", "autotune"] as const;
  for (const field of fields)
    if (recorded[field] !== asked[field])
      out.push(
        `${field} is ${JSON.stringify(recorded[field])} in the run, ${JSON.stringify(asked[field])} now`,
      );
  // (a run recorded before the flag existed stored its frozen weights as f32)
  const half = [recorded.frozen_f16 === true, asked.frozen_f16 === true];
  if (half[0] !== half[1])
    out.push(
      `f16 storage of frozen weights (--frozen-f16, \`frozen_storage f16\`) is ${half[0] ? "on" : "off"} in the run, ${half[1] ? "on" : "off"} now`,
    );
  return out;
}

/**
 * Compiles a train block and opens its data, every problem a diagnostic: where `lrkc train`,
 * benchmarks and tests start from.
 */
export function compileRun(
  file: SourceFile,
  options: CompileOptions = {},
): { run?: Run; diagnostics: Diagnostic[] } {
  const { compiled, diagnostics } = compiling(() => compile(file, options));
  if (!compiled) return { diagnostics };
  const run = runOrDiagnostic(compiled.program);
  return "severity" in run ? { diagnostics: [...diagnostics, run] } : { run, diagnostics };
}

/**
 * What opening the data found worth saying (a split shrunk or overlapping, examples cut or left
 * out), once per data set: the run trains on something other than the user may think.
 */
export function dataNotes(run: Run): string[] {
  const notes = [run.data.note, run.evalData === run.data ? undefined : run.evalData.note];
  return notes.filter((n): n is string => n !== undefined);
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
export async function openDeviceOrDiagnostic(
  choice: string,
  options: { maxBinding?: number } = {},
): Promise<Device | Diagnostic> {
  try {
    return await openDevice(choice, options);
  } catch (e) {
    const failure = failureDiagnostic(e);
    if (failure) return failure;
    throw e;
  }
}
