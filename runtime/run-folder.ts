// A run's folder: metrics.jsonl (one JSON object per step or evaluation), checkpoint.safetensors
// (everything needed to resume, written atomically), final.safetensors (the weights), and
// curves.svg. Nothing here is lost to a crash: every file is replaced by rename, and metrics
// lines past a resumed checkpoint are dropped so the log matches the weights.
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  writeFileSync,
  renameSync,
  rmSync,
} from "node:fs";
import { join } from "node:path";
import type { Tensor } from "../compiler/program.js";
import type { Plan } from "../compiler/program.js";
import { lineChart } from "./plot.js";
import { CheckpointError, writeSafetensors } from "./safetensors.js";
import type { TrainProgram } from "../compiler/program.js";
import { checkpointUses, loadCheckpoint } from "./checkpoint.js";

export interface Metric {
  step: number;
  [key: string]: number | string | undefined;
}

export class RunFolder {
  readonly metricsPath: string;
  readonly checkpointPath: string;

  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true });
    this.metricsPath = join(dir, "metrics.jsonl");
    this.checkpointPath = join(dir, "checkpoint.safetensors");
  }

  hasCheckpoint(): boolean {
    return existsSync(this.checkpointPath);
  }

  /** Parameters, optimizer and controller states, and the step, so a run resumes exactly. */
  saveCheckpoint(
    step: number,
    store: ReadonlyMap<string, Tensor>,
    meta: Record<string, string>,
  ): void {
    writeSafetensors(
      this.checkpointPath,
      new Map([...store].filter(([name]) => !name.startsWith("batch."))),
      { ...meta, step: String(step) },
    );
  }

  /** The checkpoint to resume `program` from: every parameter and state it reads, checked. */
  loadCheckpoint(program: TrainProgram): {
    step: number;
    store: Map<string, Tensor>;
    meta: Record<string, string>;
  } {
    const loaded = loadCheckpoint(this.checkpointPath, program, checkpointUses.resume);
    const step = Number(loaded.metadata["step"]);
    if (!Number.isInteger(step) || step < 0)
      throw new CheckpointError(
        `\`${this.checkpointPath}\` does not say which step it was saved at`,
        "it was not written by `lrkc train`; start without --resume",
      );
    return { step, store: loaded.tensors, meta: loaded.metadata };
  }

  /** Appends metric lines; on resume, first drops lines after the resumed step. */
  log(metric: Metric): void {
    appendFileSync(this.metricsPath, JSON.stringify(metric) + "\n");
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
    const temporary = `${this.metricsPath}.tmp`;
    writeFileSync(temporary, kept.map((l) => l + "\n").join(""));
    renameSync(temporary, this.metricsPath);
  }

  startFresh(): void {
    writeFileSync(this.metricsPath, "");
  }

  /**
   * The training step's kernel plan: plan.json and kernels/NNN-name.wgsl (what `lrkc build
   * --emit wgsl --out` writes), so a run keeps the exact kernels it ran.
   */
  writePlan(plan: Plan): string {
    const kernels = join(this.dir, "kernels");
    rmSync(kernels, { recursive: true, force: true });
    mkdirSync(kernels, { recursive: true });
    writeFileSync(join(this.dir, "plan.json"), JSON.stringify(plan, null, 2) + "\n");
    for (const k of plan.kernels) writeFileSync(join(kernels, kernelFileName(k)), k.wgsl);
    return join(this.dir, "plan.json");
  }

  writeFinal(params: ReadonlyMap<string, Tensor>, meta: Record<string, string>): string {
    const path = join(this.dir, "final.safetensors");
    writeSafetensors(path, params, meta);
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
    writeFileSync(path, lineChart(title, series));
    return path;
  }
}

/** `007-matmul_gelu.wgsl`: the kernel's id, then its name made safe for a file name. */
export function kernelFileName(kernel: { id: number; name: string }): string {
  const name = kernel.name.replace(/[^A-Za-z0-9_.-]+/g, "_").slice(0, 60);
  return `${String(kernel.id).padStart(3, "0")}-${name}.wgsl`;
}
