// A run's folder: metrics.jsonl (one JSON object per step or evaluation), checkpoint.safetensors
// (everything needed to resume, written atomically), final.safetensors (the weights), and
// curves.svg. Nothing here is lost to a crash: every file is replaced by rename, and metrics
// lines past a resumed checkpoint are dropped so the log matches the weights.
import {
  accessSync,
  appendFileSync,
  constants,
  closeSync,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { dirname, join, resolve } from "node:path";
import type { Tensor } from "../compiler/program.js";
import type { Plan } from "../compiler/program.js";
import { makeFolder } from "./atomic.js";
import { lineChart } from "./plot.js";
import { CheckpointError, writeSafetensors, type WriteOptions } from "./safetensors.js";
import type { TrainProgram } from "../compiler/program.js";
import { checkpointUses, loadCheckpoint } from "./checkpoint.js";

export interface Metric {
  step: number;
  [key: string]: number | string | undefined;
}

/**
 * What a run is, recorded in run.json when it starts: `--resume` continues only the same run
 * (same source text, train block, options and length), since anything else would not be the
 * exact continuation it promises.
 */
export interface RunRecord {
  /** The .lrk file as given on the command line. */
  program: string;
  /** sha256 of the file's text. */
  source_sha256: string;
  train: string;
  steps: number;
  batch: number;
  device: string;
  /** The resolved `init` checkpoint, or null. */
  init: string | null;
  autotune: boolean;
  /** `--frozen-f16`: frozen weights rounded to f16 (absent: off). */
  frozen_f16?: boolean;
  /** The command line that continues this run (what a stopped run prints). */
  resume: string;
}

/**
 * The run folder cannot be written or read for a reason outside lrkc: a full disk, a read-only
 * folder, a path that is a file. The path and the system's reason go to the user (E0504).
 */
export class RunFolderError extends Error {
  constructor(
    message: string,
    readonly help: string,
  ) {
    super(message);
  }
}

/** The run folder already holds a run, or another process is training into it (E0505). */
export class RunFolderBusy extends Error {
  constructor(
    message: string,
    readonly help: string,
  ) {
    super(message);
  }
}

const SYSTEM_REASONS: Record<string, [string, string]> = {
  ENOSPC: ["the disk is full", "free some space (or pass another --out), then run again"],
  EDQUOT: ["the disk quota is exceeded", "free some space (or pass another --out), then run again"],
  EROFS: ["the file system is read-only", "pass an --out folder on a writable disk"],
  EACCES: ["permission denied", "pass an --out folder you can write to, or fix its permissions"],
  EPERM: ["permission denied", "pass an --out folder you can write to, or fix its permissions"],
  ENOTDIR: ["a part of the path is a file, not a folder", "pass an --out path that is a folder"],
  EEXIST: ["it exists and is not a folder", "pass an --out path that is a folder"],
  EISDIR: ["it is a folder where lrkc writes a file", "remove that folder, or pass another --out"],
  ENOENT: ["a folder on the path does not exist (was it deleted?)", "check the --out path"],
  EIO: ["an input/output error", "check the disk, or pass another --out"],
  EMFILE: ["too many open files", "close other programs, or raise the open-file limit"],
};

/** A file-system failure as a RunFolderError that says what and where; anything else rethrown. */
export function runFolderFailure(e: unknown, path: string): unknown {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  const reason = code !== undefined ? SYSTEM_REASONS[code] : undefined;
  if (!reason) return e;
  return new RunFolderError(`cannot write the run folder: \`${path}\`: ${reason[0]}`, reason[1]);
}

function guarded<T>(path: string, action: () => T): T {
  try {
    return action();
  } catch (e) {
    throw runFolderFailure(e, path);
  }
}

/**
 * Why `dir` cannot be created, when mkdir's ENOENT hides it: Node's recursive mkdir reports a
 * read-only or unwritable parent as ENOENT, so ask the nearest existing folder on the path.
 */
function whyNoFolder(dir: string): unknown {
  let parent = resolve(dir);
  while (!existsSync(parent) && dirname(parent) !== parent) parent = dirname(parent);
  try {
    accessSync(parent, constants.W_OK);
    return undefined;
  } catch (e) {
    return e;
  }
}

/**
 * Whether process `pid` still runs (a process we may not signal still does). A zombie — killed,
 * not yet reaped by its parent — holds no lock: right after `kill -9` a run must be resumable.
 */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
  try {
    // /proc/PID/stat: "pid (comm) state …"; comm may hold spaces and parentheses
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return true; // no /proc (not Linux): kill(pid, 0) is all there is
  }
}

/** Files a run writes: a folder holding any of them holds a run. */
/** What a fresh run would lose: a folder holding either is not replaced without --force. */
const RUN_FILES = ["checkpoint.safetensors", "final.safetensors"];

export class RunFolder {
  readonly metricsPath: string;
  readonly checkpointPath: string;
  readonly recordPath: string;
  readonly lockPath: string;
  private locked = false;
  private readonly releaseAtExit = () => this.unlock();

  constructor(readonly dir: string) {
    if (dir === "")
      throw new RunFolderError("the run folder (--out) is empty", "pass a folder name with --out");
    try {
      makeFolder(dir);
    } catch (e) {
      throw runFolderFailure(whyNoFolder(dir) ?? e, dir);
    }
    if (!guarded(dir, () => statSync(dir)).isDirectory())
      throw runFolderFailure(Object.assign(new Error(), { code: "EEXIST" }), dir);
    this.metricsPath = join(dir, "metrics.jsonl");
    this.checkpointPath = join(dir, "checkpoint.safetensors");
    this.recordPath = join(dir, "run.json");
    this.lockPath = join(dir, "run.lock");
  }

  /**
   * Takes the folder for this process: run.lock, created exclusively, holds our pid. A lock whose
   * process is gone (killed) is taken over; a live one is another run training here.
   */
  lock(): void {
    for (let attempt = 0; ; attempt++) {
      try {
        const fd = openSync(this.lockPath, "wx");
        try {
          writeSync(fd, `${process.pid}\n`);
        } finally {
          closeSync(fd);
        }
        this.locked = true;
        process.on("exit", this.releaseAtExit);
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST")
          throw runFolderFailure(e, this.lockPath);
        // another process took over the same stale lock first
        if (attempt > 0)
          throw new RunFolderBusy(
            `the run folder \`${this.dir}\` is in use by another \`lrkc train\``,
            "wait for it to finish (or stop it), or pass another --out",
          );
      }
      let owner = NaN;
      try {
        owner = Number.parseInt(readFileSync(this.lockPath, "utf8"), 10);
      } catch {
        // vanished or unreadable: treat as stale
      }
      if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && alive(owner))
        throw new RunFolderBusy(
          `the run folder \`${this.dir}\` is in use by another \`lrkc train\` (process ${owner})`,
          "wait for it to finish (or stop it), or pass another --out",
        );
      guarded(this.lockPath, () => rmSync(this.lockPath, { force: true }));
    }
  }

  /** Releases run.lock (at the end of the run, and at exit however it comes). */
  unlock(): void {
    if (!this.locked) return;
    this.locked = false;
    process.off("exit", this.releaseAtExit);
    try {
      rmSync(this.lockPath, { force: true });
    } catch {
      // the folder went away: nothing left to release
    }
  }

  /** Temporary files of writes that never finished (a failed write, a kill -9): never valid. */
  removeTemporaries(): void {
    const names = guarded(this.dir, () => readdirSync(this.dir));
    for (const name of names)
      if (/\.tmp(-\d+)?$/.test(name))
        guarded(this.dir, () => rmSync(join(this.dir, name), { force: true }));
  }

  /** Whether the folder holds (part of) a run that a fresh start would replace. */
  holdsRun(): boolean {
    return RUN_FILES.some((name) => existsSync(join(this.dir, name)));
  }

  /** run.json, or undefined when the folder has none (or an unreadable one). */
  readRecord(): RunRecord | undefined {
    if (!existsSync(this.recordPath)) return undefined;
    try {
      return JSON.parse(readFileSync(this.recordPath, "utf8")) as RunRecord;
    } catch {
      return undefined;
    }
  }

  writeRecord(record: RunRecord): void {
    this.writeAtomically(this.recordPath, JSON.stringify(record, null, 2) + "\n");
  }

  private writeAtomically(path: string, text: string): void {
    const temporary = `${path}.tmp-${process.pid}`;
    try {
      writeFileSync(temporary, text);
      renameSync(temporary, path);
    } catch (e) {
      rmSync(temporary, { force: true });
      throw runFolderFailure(e, path);
    }
  }

  hasCheckpoint(): boolean {
    return existsSync(this.checkpointPath);
  }

  /** Parameters, optimizer and controller states, and the step, so a run resumes exactly. */
  saveCheckpoint(
    step: number,
    store: ReadonlyMap<string, Tensor>,
    meta: Record<string, string>,
    options: WriteOptions = {},
  ): void {
    this.writeTensors(
      this.checkpointPath,
      new Map([...store].filter(([name]) => !name.startsWith("batch."))),
      { ...meta, step: String(step) },
      options,
    );
  }

  /** writeSafetensors, leaving no temporary file behind when the write fails. */
  private writeTensors(
    path: string,
    tensors: ReadonlyMap<string, Tensor>,
    meta: Record<string, string>,
    options: WriteOptions = {},
  ): void {
    try {
      writeSafetensors(path, tensors, meta, options);
    } catch (e) {
      rmSync(`${path}.tmp-${process.pid}`, { force: true });
      throw runFolderFailure(e, path);
    }
  }

  /** The checkpoint to resume `program` from: every parameter and state it reads, checked. */
  loadCheckpoint(program: TrainProgram): {
    step: number;
    store: Map<string, Tensor>;
    meta: Record<string, string>;
  } {
    const loaded = loadCheckpoint(this.checkpointPath, program, checkpointUses.resume);
    // Number("") is 0: only digits are a step, or a checkpoint without one would restart at 0
    const written = loaded.metadata["step"];
    const step = typeof written === "string" && /^\d+$/.test(written) ? Number(written) : NaN;
    if (!Number.isSafeInteger(step))
      throw new CheckpointError(
        `\`${this.checkpointPath}\` does not say which step it was saved at (its \`step\` is ${JSON.stringify(written ?? null)})`,
        "it was not written by `lrkc train`; start without --resume",
      );
    return { step, store: loaded.tensors, meta: loaded.metadata };
  }

  /** Appends metric lines; on resume, first drops lines after the resumed step. */
  log(metric: Metric): void {
    guarded(this.metricsPath, () =>
      appendFileSync(this.metricsPath, JSON.stringify(metric) + "\n"),
    );
  }

  truncateMetricsAfter(step: number): void {
    if (!existsSync(this.metricsPath)) return;
    const kept = readFileSync(this.metricsPath, "utf8")
      .split("\n")
      .filter((line) => {
        if (!line.trim()) return false;
        try {
          return (JSON.parse(line) as Metric).step <= step;
        } catch {
          return false;
        }
      });
    this.writeAtomically(this.metricsPath, kept.map((l) => l + "\n").join(""));
  }

  /** A new run: what a previous one left (replaced only with --force) is removed first. */
  startFresh(): void {
    for (const name of [...RUN_FILES, "adapters.safetensors", "curves.svg"])
      guarded(this.dir, () => rmSync(join(this.dir, name), { force: true }));
    this.writeAtomically(this.metricsPath, "");
  }

  /**
   * The training step's kernel plan: plan.json and kernels/NNN-name.wgsl (what `lrkc build
   * --emit wgsl --out` writes), so a run keeps the exact kernels it ran.
   */
  writePlan(plan: Plan): string {
    const kernels = join(this.dir, "kernels");
    guarded(kernels, () => {
      rmSync(kernels, { recursive: true, force: true });
      makeFolder(kernels);
    });
    const planPath = join(this.dir, "plan.json");
    for (const f of planFiles(plan, kernels, planPath)) this.writeAtomically(f.path, f.data);
    return planPath;
  }

  writeFinal(params: ReadonlyMap<string, Tensor>, meta: Record<string, string>): string {
    const path = join(this.dir, "final.safetensors");
    this.writeTensors(path, params, meta);
    return path;
  }

  /**
   * adapters.safetensors: the adapters' parameters alone, by path (`l1.lora.A`), as final.safetensors
   * names them: the fine-tune without its base, for `--init-adapters` (or `lrkc export --peft`).
   */
  writeAdapters(params: ReadonlyMap<string, Tensor>, meta: Record<string, string>): string {
    const path = join(this.dir, "adapters.safetensors");
    this.writeTensors(path, params, meta);
    return path;
  }

  /** Every line of metrics.jsonl, in order (none when the run has not started). */
  metrics(): Metric[] {
    if (!existsSync(this.metricsPath)) return [];
    return readFileSync(this.metricsPath, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Metric);
  }

  /** curves.svg from metrics.jsonl: training loss, held-out loss and accuracy. */
  writeCurves(title: string): string {
    const metrics = this.metrics();
    const train = metrics
      .filter((m) => typeof m["loss"] === "number" && m["kind"] === "step")
      .map((m) => [m.step, m["loss"] as number] as [number, number]);
    const valid = metrics
      .filter((m) => m["kind"] === "eval" && typeof m["loss"] === "number")
      .map((m) => [m.step, m["loss"] as number] as [number, number]);
    const accuracy = metrics
      .filter((m) => m["kind"] === "eval" && typeof m["accuracy"] === "number")
      .map((m) => [m.step, m["accuracy"] as number] as [number, number]);
    const series = [
      { label: "training loss", color: "#1f77b4", points: train },
      { label: "held-out loss", color: "#ff7f0e", points: valid },
      ...(accuracy.length
        ? [
            {
              label: "held-out accuracy (right axis)",
              color: "#2ca02c",
              points: accuracy,
              right: true,
            },
          ]
        : []),
    ];
    const path = join(this.dir, "curves.svg");
    this.writeAtomically(path, lineChart(title, series));
    return path;
  }
}

/**
 * A plan's files, in the order to write them: each kernel's WGSL in `kernelFolder`, then
 * `planPath` (plan.json), so that a plan.json on disk never names a kernel not yet written.
 */
export function planFiles(
  plan: Plan,
  kernelFolder: string,
  planPath: string,
): { path: string; data: string }[] {
  const files = plan.kernels.map((k) => ({
    path: join(kernelFolder, kernelFileName(k)),
    data: k.wgsl,
  }));
  files.push({ path: planPath, data: planJson(plan) });
  return files;
}

/**
 * plan.json's text: the plan with each kernel's WGSL replaced by `file`, the name of its .wgsl
 * file (beside plan.json from `lrkc build --out`, in `kernels/` of a run folder): the text is in
 * that file, and writing it twice made a 12-layer model's plan.json 13.6 MB.
 */
function planJson(plan: Plan): string {
  const kernels = plan.kernels.map(({ wgsl: _, ...k }) => ({ ...k, file: kernelFileName(k) }));
  return indentedJson({ ...plan, kernels }, "") + "\n";
}

/**
 * JSON indented by two spaces a level, as `JSON.stringify(value, null, 2)`, except that an array
 * of numbers, strings and the like stays on one line (a kernel's `nodes`, a dispatch's grid).
 */
function indentedJson(value: unknown, indent: string): string {
  const inner = `${indent}  `;
  if (Array.isArray(value)) {
    if (value.every((v) => v === null || typeof v !== "object")) return JSON.stringify(value);
    if (value.length === 0) return "[]";
    return `[\n${value.map((v) => inner + indentedJson(v, inner)).join(",\n")}\n${indent}]`;
  }
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    if (entries.length === 0) return "{}";
    const lines = entries.map(
      ([k, v]) => `${inner}${JSON.stringify(k)}: ${indentedJson(v, inner)}`,
    );
    return `{\n${lines.join(",\n")}\n${indent}}`;
  }
  return JSON.stringify(value);
}

/** `007-matmul_gelu.wgsl`: the kernel's id, then its name made safe for a file name. */
function kernelFileName(kernel: { id: number; name: string }): string {
  const name = kernel.name.replace(/[^A-Za-z0-9_.-]+/g, "_").slice(0, 60);
  return `${String(kernel.id).padStart(3, "0")}-${name}.wgsl`;
}
