// Where the compiler meets a device: the target a plan is made for (a WebGPU adapter's limits,
// features and tuned matmuls, or WebGPU's portable defaults), and loading the plans of a training
// run into the device that runs them. `lrkc build --emit plan` and `lrkc train` both plan here,
// so the plan shown is the plan run.
import { totalmem, freemem } from "node:os";
import { planStep } from "../compiler/compile.js";
import { BINDING_ALIGNMENT, BindingLimitError, BufferLimitError } from "../compiler/memory-plan.js";
import { formatBytes, interpreterBytes, MemoryLimitError, storeBytes } from "../compiler/memory.js";
import {
  fuseEntries,
  isSmallMatmul,
  matmulShapes,
  matmulTemplate,
  planMatmulParams,
  type LowRankChoices,
  type PlanTarget,
} from "../compiler/plan.js";
import type {
  GraphProgram,
  LowRankBranchForm,
  MatmulParams,
  MatmulShape,
  Plan,
  TrainProgram,
} from "../compiler/program.js";
import { isSoftwareAdapter } from "../compiler/kernels/matmul.js";
import { Autotuner } from "../runtime/autotune.js";
import { CpuDevice, type Device } from "../runtime/device.js";
import { NoAdapterError } from "../runtime/gpu.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { compiling } from "./jit.js";

/** WebGPU's default limits: a plan that fits them runs on any adapter. */
export const defaultLimits = {
  maxStorageBufferBindingSize: 134_217_728,
  maxBufferSize: 268_435_456,
  maxStorageBuffersPerShaderStage: 8,
};

/** A plan for any WebGPU adapter: default limits, no optional features, untuned matmuls. */
export const portableTarget: PlanTarget = { limits: defaultLimits, features: [] };

export const deviceChoices = ["auto", "webgpu", "cpu", "cpu64"] as const;

/**
 * `--max-binding BYTES`: the bytes one storage binding may hold (a smaller device's
 * maxStorageBufferBindingSize); a tensor over it is bound in chunks (compiler/memory-plan.ts).
 * Plain bytes, or with a KiB, MiB or GiB suffix; at least 256 (one chunk's alignment). Returns
 * the number, or what is wrong with the text.
 */
export function parseMaxBinding(text: string): number | { error: string } {
  const m = /^\s*(\d+)\s*(KiB|MiB|GiB)?\s*$/.exec(text);
  const scale = { KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30 } as const;
  const bytes = m ? Number(m[1]) * (m[2] ? scale[m[2] as keyof typeof scale] : 1) : NaN;
  if (!Number.isSafeInteger(bytes) || bytes < BINDING_ALIGNMENT)
    return {
      error: `--max-binding must be a whole number of bytes, at least ${BINDING_ALIGNMENT} (such as \`65536\` or \`64MiB\`); got \`${text}\``,
    };
  return bytes;
}

/** `target` planning for storage bindings of at most `maxBinding` bytes (`--max-binding`). */
export function withMaxBinding(target: PlanTarget, maxBinding: number | undefined): PlanTarget {
  if (maxBinding === undefined) return target;
  const limit = Math.min(target.limits.maxStorageBufferBindingSize, maxBinding);
  return { ...target, limits: { ...target.limits, maxStorageBufferBindingSize: limit } };
}

/** `auto`: the WebGPU adapter if there is one, else the CPU reference interpreter. */
export async function openDevice(
  choice: string,
  options: { maxBinding?: number } = {},
): Promise<Device> {
  if (choice === "cpu" || choice === "cpu64") return new CpuDevice({ float64: choice === "cpu64" });
  try {
    return await WebGpuDevice.open(options);
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
  /** The untuned plans `refuseTooLarge` already made and checked (not made again). */
  untuned?: Plan[];
  /** Fuse low-rank branches up to this inner dim (benchmarks compare; default LOW_RANK_MAX). */
  lowRankMax?: number;
  /** `--max-binding`: plan storage bindings of at most this many bytes. */
  maxBinding?: number;
}

/**
 * The matmuls worth tuning for `programs` planned for `target`: those of the fusion the plan will
 * make (with the target's low-rank limits: a branch left unfused is a matmul of its own).
 */
export function tuningShapes(programs: readonly GraphProgram[], target: PlanTarget) {
  return programs
    .flatMap((p) =>
      matmulShapes(
        p,
        fuseEntries(
          p,
          target.limits,
          target.lowRankMax,
          target.lowRankLoopMax,
          target.lowRankChoices,
        ),
      ),
    )
    .filter((shape) => !isSmallMatmul(shape) && tunable(shape, target.limits));
}

/** Seconds between progress lines while tuning (a first run on lavapipe tunes for a minute or two). */
const TUNING_PROGRESS_S = 10;

/** Call after each class tuned: a line every TUNING_PROGRESS_S seconds, "tuned 12 of 29 …". */
function tuningProgress(total: number, log?: (line: string) => void): () => void {
  const started = performance.now();
  let done = 0;
  let told = started;
  return () => {
    done++;
    const now = performance.now();
    if (!log || done === total || now - told < TUNING_PROGRESS_S * 1000) return;
    told = now;
    log(`  tuned ${done} of ${total} classes (${((now - started) / 1000).toFixed(0)} s)`);
  };
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
  // On a software adapter a LoRA branch fused as the epilogue's per-element loop over the rank costs
  // more than the kernel it saves (`node dist/bench/step-cpu.js examples/lora_finetune.lrk
  // --low-rank-max 64 | 0` measured 110 vs 89 ms of worker CPU per step on lavapipe), while the
  // branch fused in the matmul's tile costs about its FLOP share (bench/branch.ts): there only
  // branches the tile computes are fused (compiler/fuse/low-rank.ts). GPUs keep both (not
  // measured here).
  const lowRankMax = options.lowRankMax;
  const lowRankLoopMax = isSoftwareAdapter(device.summary) ? 0 : undefined;
  const base: PlanTarget = {
    limits: device.limits(),
    features: device.features,
    adapter: device.summary,
    ...(lowRankMax !== undefined ? { lowRankMax } : {}),
    ...(lowRankLoopMax !== undefined ? { lowRankLoopMax } : {}),
  };
  if (!options.autotune) return base;
  const features = new Set(device.features);
  const tuner = new Autotuner(device.device, device.summary, matmulTemplate);
  const shapes = tuningShapes(programs, base);
  const classes = new Map(shapes.map((s) => [matmulTemplate.classKey(s), s]));
  const untunedKeys = new Set([...classes].filter(([, s]) => !tuner.cached(s)).map(([key]) => key));
  const untuned = untunedKeys.size;
  if (untuned > 0)
    options.log?.(
      `tuning ${untuned} matmul shape class${untuned === 1 ? "" : "es"} for ${device.summary.description} (once: the choices are cached; --no-autotune skips this)`,
    );
  const tuned = new Map<string, MatmulParams>();
  const progress = tuningProgress(untuned, options.log);
  for (const [key, shape] of classes) {
    tuned.set(key, await tuner.matmul(shape));
    if (untunedKeys.has(key)) progress();
  }
  const matmulParams = (shape: MatmulShape) =>
    (!isSmallMatmul(shape) && tuned.get(matmulTemplate.classKey(shape))) ||
    planMatmulParams(shape, features, device.summary);
  let told = false;
  const choices = await lowRankChoices(programs, base, (shape, branch) => {
    const params = matmulParams(shape);
    if (!told && !tuner.lowRankCached(shape, branch, params)) {
      told = true;
      options.log?.(
        `timing low-rank branches fused and unfused on products of up to ${LOW_RANK_TIMED_ROWS} rows (once: the choices are cached; --no-autotune skips this)`,
      );
    }
    return tuner.lowRankFused(shape, branch, params);
  });
  const target: PlanTarget = {
    ...base,
    matmulParams,
    ...(choices ? { lowRankChoices: choices } : {}),
  };
  // the products a branch left unfused adds (its up-projection) are tuned too
  for (const shape of choices ? tuningShapes(programs, target) : []) {
    const key = matmulTemplate.classKey(shape);
    if (!tuned.has(key)) tuned.set(key, await tuner.matmul(shape));
  }
  return target;
}

/**
 * Products of at most this many rows have their tile-able low-rank branches' fused-or-unfused
 * choice timed (`lowRankChoices`): at 576 tokens × 1024 × 1024 the tile form's overhead over the
 * base GEMM measured within its target (FLOP share + 5 %) in one quiet run and +23 / +40 % at
 * ranks 16 / 64 in another, the unfused form's moving as much (bench/branch.ts, lavapipe), while
 * at 4096 tokens the tile form was within target in every run.
 */
export const LOW_RANK_TIMED_ROWS = 1024;

let lowRankProbes = 0;

/**
 * Where the cost model is unsure (products of at most LOW_RANK_TIMED_ROWS rows, with a plain f32
 * B the autotuner can bind whole, and not so small that they run the naive kernel, which computes
 * a branch per element either way), whether each tile-able low-rank branch is fused, as `decide`
 * answers (the autotuner times both forms); undefined when there is nothing to decide. The
 * branches are found by a fusion of each program that records what it is asked (under a key of
 * its own, so that fusion's memo does not answer it from an earlier fusion).
 */
export async function lowRankChoices(
  programs: readonly GraphProgram[],
  target: PlanTarget,
  decide: (shape: MatmulShape, branch: LowRankBranchForm) => Promise<boolean>,
): Promise<LowRankChoices | undefined> {
  const caseKey = (s: MatmulShape, b: LowRankBranchForm) =>
    `${s.m}x${s.n}x${s.k} ${s.transA ? "T" : "N"}${s.transB ? "T" : "N"} r${b.rank}${b.upTrans ? " upT" : ""}`;
  const cases = new Map<string, { shape: MatmulShape; branch: LowRankBranchForm }>();
  const probe: LowRankChoices = {
    key: `probe ${++lowRankProbes}`,
    fuses: (shape, branch) => {
      const timed = !isSmallMatmul(shape) && tunable(shape, target.limits);
      if (shape.m <= LOW_RANK_TIMED_ROWS && timed)
        cases.set(caseKey(shape, branch), { shape, branch });
      return true;
    },
  };
  for (const p of programs)
    fuseEntries(p, target.limits, target.lowRankMax, target.lowRankLoopMax, probe);
  if (cases.size === 0) return undefined;
  const unfused = new Set<string>();
  for (const [key, { shape, branch }] of cases)
    if (!(await decide(shape, branch))) unfused.add(key);
  if (unfused.size === 0) return undefined; // every branch fused: the default
  return {
    key: `unfused: ${[...unfused].sort().join("; ")}`,
    fuses: (shape, branch) => !unfused.has(caseKey(shape, branch)),
  };
}

/**
 * Whether the autotuner can time a matmul: it binds each operand whole, so one over a storage
 * binding (split in the plan) cannot; its shape class keeps the template's defaults.
 */
function tunable(shape: MatmulShape, limits: PlanTarget["limits"]): boolean {
  const { batch, m, n, k } = shape;
  const limit = limits.maxStorageBufferBindingSize;
  return [batch * m * k, batch * k * n, batch * m * n].every((count) => 4 * count <= limit);
}

/**
 * Plans a training run's programs for `device` and loads them into it. Returns the step's plan:
 * on WebGPU the one the device runs, on the CPU the one a portable WebGPU target would run (none
 * when the program exceeds WebGPU's default limits).
 * A run that cannot fit the machine's memory is refused first (MemoryLimitError), before any of
 * its buffers is allocated.
 */
export async function loadPlans(
  device: Device,
  program: TrainProgram,
  options: TargetOptions,
): Promise<Plan | undefined> {
  const programs = [program.initProgram, program.step];
  if (!(device instanceof WebGpuDevice)) {
    const needed = interpreterBytes(programs, device.float64 === true);
    checkMemory(needed, CPU_COUNTED, CPU_HELP, options.log);
    try {
      return compiling(() => planStep(program.step, portableTarget));
    } catch (e) {
      // WebGPU's limits are not the CPU's: a program over them still trains here, without a plan
      if (e instanceof BufferLimitError || e instanceof BindingLimitError) return undefined;
      throw e;
    }
  }
  if (
    !device.features.includes("shader-f16") &&
    program.step.inputs.some((i) => i.storage === "f16")
  )
    (options.log ?? ((line) => process.stderr.write(`${line}\n`)))(
      "note: this adapter has no shader-f16: frozen weights stay f32 on it (--frozen-f16 still rounds their values to f16)",
    );
  // Untuned plans are checked first: tuning runs kernels on buffers of the program's sizes.
  let plans = options.untuned ?? (await untunedPlans(device, programs, options.lowRankMax));
  checkGpuMemory(device, programs, plans, options.log);
  if (options.autotune) {
    const tuned = await deviceTarget(device, programs, options);
    plans = programs.map((p) => compiling(() => planStep(p, tuned)));
    checkGpuMemory(device, programs, plans); // tuned matmuls may add scratch
  }
  programs.forEach((p, i) => device.load(p, plans[i]!));
  return device.plan(program.step);
}

/**
 * loadPlans's memory check alone (untuned plans on WebGPU): `lrkc train` makes it before it
 * touches the run folder, so that a run refused for its size does not replace (`--force`) the run
 * the folder held.
 */
export async function refuseTooLarge(
  device: Device,
  program: TrainProgram,
): Promise<Plan[] | undefined> {
  const programs = [program.initProgram, program.step];
  if (!(device instanceof WebGpuDevice)) {
    checkMemory(interpreterBytes(programs, device.float64 === true), CPU_COUNTED, CPU_HELP);
    return undefined;
  }
  const plans = await untunedPlans(device, programs);
  checkGpuMemory(device, programs, plans);
  return plans;
}

/** The programs' plans for `device` with the template's default matmuls. */
async function untunedPlans(
  device: WebGpuDevice,
  programs: GraphProgram[],
  lowRankMax?: number,
): Promise<Plan[]> {
  const untuned = await deviceTarget(device, programs, {
    autotune: false,
    ...(lowRankMax !== undefined ? { lowRankMax } : {}),
  });
  return programs.map((p) => compiling(() => planStep(p, untuned)));
}

const GPU_HELP =
  "lower the batch size (`--batch`) or the model's dimensions, or train on a GPU with more memory";
const CPU_COUNTED =
  "its parameters, optimizer states and the step's intermediate values on the CPU interpreter";
const CPU_HELP =
  "lower the batch size (`--batch`) or the model's dimensions, or train with `--device webgpu` on a GPU with enough memory";

/** The memory this process may use: the machine's, or its container's limit when lower. */
export function hostMemory(): { total: number; free: number } {
  const constrained = process.constrainedMemory?.() ?? 0;
  const total = constrained > 0 ? Math.min(totalmem(), constrained) : totalmem();
  const available = process.availableMemory?.() ?? freemem();
  return { total, free: Math.min(total, available) };
}

/** Refuses `needed` bytes over this machine's memory; warns (through `log`) over its free memory. */
export function checkMemory(
  needed: number,
  counted: string,
  help: string,
  log?: (line: string) => void,
  memory = "memory this machine has",
): void {
  const host = hostMemory();
  if (needed > host.total) throw new MemoryLimitError(needed, host.total, counted, memory, help);
  if (needed > host.free)
    log?.(
      `warning: this program needs about ${formatBytes(needed)} (${counted}), more than the ${formatBytes(host.free)} of memory free now: the system may swap, or stop the run when memory runs out`,
    );
}

/**
 * WebGPU reports no memory size. A software adapter (lavapipe) keeps its buffers in this
 * machine's memory, beside the host copies of the parameters and states read back for
 * checkpoints; a GPU's own memory is not larger than the host's on the machines lrk runs on, so
 * the host's is the bound there too.
 */
function checkGpuMemory(
  device: WebGpuDevice,
  programs: readonly GraphProgram[],
  plans: readonly Plan[],
  log?: (line: string) => void,
): void {
  const buffers = plans.reduce((sum, plan) => sum + plan.peakBytes, 0);
  const { summary } = device;
  if (isSoftwareAdapter(summary))
    checkMemory(
      buffers + storeBytes(programs),
      "the buffers of its step and init plans, `peakBytes` in plan.json, and the host copies of its parameters and states",
      GPU_HELP,
      log,
      `memory this machine has (${summary.description} keeps GPU buffers in it)`,
    );
  else
    checkMemory(
      buffers,
      "the buffers of its step and init plans, `peakBytes` in plan.json",
      GPU_HELP,
      undefined, // the host's free memory is not the GPU's
      "memory this machine has (WebGPU does not report a GPU's memory; the host's is taken as its bound)",
    );
}

/** The target `lrkc build` plans for: `portable`, or a device's (as `lrkc train` would). */
export async function buildTarget(
  choice: string,
  programs: readonly GraphProgram[],
  options: TargetOptions,
): Promise<{ target: PlanTarget; name: string; close(): void }> {
  const portable = withMaxBinding(portableTarget, options.maxBinding);
  if (choice === "portable") return { target: portable, name: "portable", close() {} };
  const device = await openDevice(
    choice,
    options.maxBinding !== undefined ? { maxBinding: options.maxBinding } : {},
  );
  if (!(device instanceof WebGpuDevice))
    return { target: portable, name: "portable (no WebGPU adapter)", close() {} };
  return {
    target: await deviceTarget(device, programs, options),
    name: device.name,
    close: () => device.destroy(),
  };
}
