// Where the compiler meets a device: the target a plan is made for (a WebGPU adapter's limits,
// features and tuned matmuls, or WebGPU's portable defaults), and loading the plans of a training
// run into the device that runs them. `lrkc build --emit plan` and `lrkc train` both plan here,
// so the plan shown is the plan run.
import { planStep } from "../compiler/compile.js";
import {
  fuseEntries,
  isSmallMatmul,
  matmulShapes,
  matmulTemplate,
  planMatmulParams,
  type PlanTarget,
} from "../compiler/plan.js";
import type { GraphProgram, MatmulParams, Plan, TrainProgram } from "../compiler/program.js";
import { Autotuner } from "../runtime/autotune.js";
import { CpuDevice, type Device } from "../runtime/device.js";
import { NoAdapterError } from "../runtime/gpu.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";

/** WebGPU's default limits: a plan that fits them runs on any adapter. */
export const defaultLimits = {
  maxStorageBufferBindingSize: 134_217_728,
  maxBufferSize: 268_435_456,
  maxStorageBuffersPerShaderStage: 8,
};

/** A plan for any WebGPU adapter: default limits, no optional features, untuned matmuls. */
export const portableTarget: PlanTarget = { limits: defaultLimits, features: [] };

export const deviceChoices = ["auto", "webgpu", "cpu", "cpu64"] as const;

/** `auto`: the WebGPU adapter if there is one, else the CPU reference interpreter. */
export async function openDevice(choice: string): Promise<Device> {
  if (choice === "cpu" || choice === "cpu64") return new CpuDevice({ float64: choice === "cpu64" });
  try {
    return await WebGpuDevice.open();
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

export interface TargetOptions {
  /** Time the template's candidates for each large matmul shape class (cached on disk). */
  autotune: boolean;
  /** Where progress goes (a line before the first tuning, one per candidate when verbose). */
  log?: (line: string) => void;
}

/**
 * The target of `device` for these programs: its limits and features, and with `autotune` the
 * tuned parameters of every large matmul the programs run (tuned now when not cached).
 */
export async function deviceTarget(
  device: WebGpuDevice,
  programs: readonly GraphProgram[],
  options: TargetOptions,
): Promise<PlanTarget> {
  const base = { limits: device.limits(), features: device.features, adapter: device.summary };
  if (!options.autotune) return base;
  const features = new Set(device.features);
  const tuner = new Autotuner(device.device, device.summary, matmulTemplate);
  const shapes = programs
    .flatMap((p) => matmulShapes(p, fuseEntries(p, base.limits)))
    .filter((shape) => !isSmallMatmul(shape));
  const classes = new Map(shapes.map((s) => [matmulTemplate.classKey(s), s]));
  const untuned = [...classes.values()].filter((s) => !tuner.cached(s)).length;
  if (untuned > 0)
    options.log?.(
      `tuning ${untuned} matmul shape class${untuned === 1 ? "" : "es"} for ${device.summary.description} (once: the choices are cached; --no-autotune skips this)`,
    );
  const tuned = new Map<string, MatmulParams>();
  for (const [key, shape] of classes) tuned.set(key, await tuner.matmul(shape));
  return {
    ...base,
    matmulParams: (shape) =>
      (!isSmallMatmul(shape) && tuned.get(matmulTemplate.classKey(shape))) ||
      planMatmulParams(shape, features, device.summary),
  };
}

/**
 * Plans a training run's programs for `device` and loads them into it. Returns the step's plan:
 * on WebGPU the one the device runs, on the CPU the one a portable WebGPU target would run.
 */
export async function loadPlans(
  device: Device,
  program: TrainProgram,
  options: TargetOptions,
): Promise<Plan> {
  if (!(device instanceof WebGpuDevice)) return planStep(program.step, portableTarget);
  const programs = [program.initProgram, program.step];
  const target = await deviceTarget(device, programs, options);
  for (const p of programs) device.load(p, planStep(p, target));
  return device.plan(program.step);
}

/** The target `lrkc build` plans for: `portable`, or a device's (as `lrkc train` would). */
export async function buildTarget(
  choice: string,
  programs: readonly GraphProgram[],
  options: TargetOptions,
): Promise<{ target: PlanTarget; name: string; close(): void }> {
  if (choice === "portable") return { target: portableTarget, name: "portable", close() {} };
  const device = await openDevice(choice);
  if (!(device instanceof WebGpuDevice))
    return { target: portableTarget, name: "portable (no WebGPU adapter)", close() {} };
  return {
    target: await deviceTarget(device, programs, options),
    name: device.name,
    close: () => device.destroy(),
  };
}
