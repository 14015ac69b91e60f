// `lrkc train FILE`: compile a train block and run it, printing progress.
import { join } from "node:path";
import type { Tensor } from "../compiler/interpreter.js";
import { error } from "../language/diagnostics.js";
import { CpuDevice, type Device } from "../runtime/device.js";
import { CheckpointError, writeSafetensors } from "../runtime/safetensors.js";
import { prepare, train } from "../runtime/trainer.js";
import { readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";

export interface TrainCommandOptions extends ReportOptions {
  train?: string;
  steps?: string;
  batch?: string;
  device: string;
  out?: string;
}

export const devices = ["cpu", "cpu64"] as const;

function positive(value: string | undefined, flag: string): number | undefined | "bad" {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) {
    process.stderr.write(`error: ${flag} must be a positive integer (got \`${value}\`)\n`);
    return "bad";
  }
  return n;
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
  const { run, diagnostics } = prepare(read.file, { train: options.train, batch });
  const code = report(diagnostics, options);
  if (!run || code !== 0) return code || 1;

  const device: Device = new CpuDevice({ float64: options.device === "cpu64" });
  const total = steps ?? run.spec.steps;
  const name = run.spec.decl.name.name;
  const out = options.out ?? join("runs", name);
  process.stderr.write(
    `training \`${name}\` for ${total} steps, batch ${run.batch}, on ${device.name}\n`,
  );
  const every = Math.max(1, Math.floor(total / 20));
  let result;
  try {
    result = await train(run, device, {
      steps: total,
      onStep: (e) => {
        if (e.step === 1 || e.step % every === 0 || e.step === e.steps) {
          process.stderr.write(
            `step ${String(e.step).padStart(String(e.steps).length)}/${e.steps}  loss ${e.loss.toFixed(4)}  lr×${e.lr.toFixed(3)}  ${e.millis.toFixed(0)} ms/step\n`,
          );
        }
      },
    });
  } catch (e) {
    if (e instanceof CheckpointError) {
      const at = run.spec.init
        ? { file: run.spec.module.file, span: run.spec.init.at.span }
        : undefined;
      return report([error("E0502", e.message, at, { help: e.help })], options);
    }
    throw e;
  }
  const params = new Map<string, Tensor>();
  for (const [key, t] of result.store) if (key.startsWith("param:")) params.set(key.slice(6), t);
  const file = join(out, "final.safetensors");
  writeSafetensors(file, params, { train: name, steps: String(total) });
  const first = result.losses[0]!;
  const last = result.losses[result.losses.length - 1]!;
  process.stderr.write(
    `done: loss ${first.toFixed(4)} → ${last.toFixed(4)}; weights written to ${file}\n`,
  );
  return 0;
}
