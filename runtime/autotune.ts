// Autotuning kernel parameters per (kernel family, shape class, adapter), cached on disk.
//
// On first use of a (kernel family, shape class, adapter) the template's candidates are timed on
// the real device at the requested shape (see timeMatmulKernel: a warm-up dispatch, since lavapipe
// compiles a shader at its first dispatch; a probe; a few runs timed by timestamp queries, or by
// wall time with GpuWaiter without them; never a busy-polling await during a timed run). The
// fastest is kept in memory and in a JSON file keyed by adapter (vendor, architecture,
// description) and shape class (m, n, k rounded up to powers of two, transA/transB, batched or
// not, and operands stored as f16 or as packed low-bit words: those are timed with the kernel the
// plan runs for them, on bindings of their stored sizes, never as their f32 twins), written atomically (temporary file + rename) so concurrent processes never see half a
// file. A second process reads the choice instead of timing again.
//
// Where the compiler's cost model cannot tell whether a low-rank branch is cheaper fused in a
// product's tile or left as kernels of its own (cli/target.ts `lowRankChoices`), both forms are
// timed the same way (Autotuner.lowRankFused) and the choice is cached beside the parameters, its
// key naming the product's class, its parameters and the branch's rank and layout.

import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type {
  KernelSource,
  LowRankBranchForm,
  MatmulParams,
  MatmulShape,
  MatmulTemplate,
} from "../compiler/program.js";
import { lrkCacheFolder } from "../language/cache-folder.js";
import { GpuWaiter, type AdapterSummary } from "./gpu.js";

export interface AutotuneOptions {
  /** Where choices are cached; default `$XDG_CACHE_HOME/lrk/autotune.json` (~/.cache/lrk/...). */
  cacheFile?: string;
  /** false: return the default parameters, time nothing, read and write no cache. */
  enabled?: boolean;
  /** Timed runs per candidate after the warm-up (default 5). */
  runs?: number;
  /**
   * Replaces timing a candidate on the device (tests): returns milliseconds. The default
   * measures on the device.
   */
  measure?: (kernel: KernelSource, params: MatmulParams, shape: MatmulShape) => Promise<number>;
  /** Progress lines (one per candidate timed). */
  log?: (line: string) => void;
}

export interface AutotuneEntry {
  params: MatmulParams;
  /** Milliseconds of the chosen candidate's fastest run when it was tuned. */
  ms: number;
  /** The shape it was tuned at (a member of the class). */
  shape: MatmulShape;
  /** Every candidate's time, for the curious. */
  timings: { params: string; ms: number }[];
  tunedAt: string;
}

/** A timed choice between a low-rank branch fused in a product's tile and left unfused. */
export interface LowRankEntry {
  fused: boolean;
  /** Each form's time, ms: the fastest round of its kernels' fastest runs, summed. */
  fusedMs: number;
  unfusedMs: number;
  shape: MatmulShape;
  branch: LowRankBranchForm;
  tunedAt: string;
}

interface CacheFile {
  version: 1;
  adapters: Record<string, Record<string, AutotuneEntry>>;
  /** Fused-or-unfused choices (Autotuner.lowRankFused), by adapter and key. */
  lowRank?: Record<string, Record<string, LowRankEntry>>;
}

export function defaultAutotuneCacheFile(): string {
  return join(lrkCacheFolder(), "autotune.json");
}

export function adapterKey(adapter: AdapterSummary): string {
  return `${adapter.vendor}|${adapter.architecture}|${adapter.description}`;
}

function readCache(file: string): CacheFile {
  try {
    const parsed = JSON.parse(readFileSync(file, "utf8")) as Partial<CacheFile>;
    if (parsed.version === 1 && parsed.adapters && typeof parsed.adapters === "object")
      return parsed as CacheFile;
  } catch {
    // missing or unreadable: start afresh
  }
  return { version: 1, adapters: {} };
}

/** Merges one entry into the file on disk: re-read, update, write a temporary file, rename. */
function writeCacheEntry(
  file: string,
  adapter: string,
  key: string,
  entry: AutotuneEntry | LowRankEntry,
): void {
  const cache = readCache(file);
  if ("fused" in entry) ((cache.lowRank ??= {})[adapter] ??= {})[key] = entry;
  else (cache.adapters[adapter] ??= {})[key] = entry;
  mkdirSync(dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  writeFileSync(tmp, JSON.stringify(cache, null, 2) + "\n");
  renameSync(tmp, file);
}

/**
 * After every candidate of a class is timed once, those within this factor of the fastest are
 * timed again in `RETIME_ROUNDS` more rounds (in reverse order, then forward), each keeping its
 * fastest: on a shared machine a slow spell lasts seconds and hits the candidates timed in it,
 * so one pass picks by the machine's moods (lavapipe, a packed 4-bit x·Wᵀ: the pass chose
 * 4×32 tiles at 2.10 ms beside 4×16 at 2.23 ms; three rounds gave 4×16 1.44 ms, 4×32 2.42 ms, and
 * the SVDQuant step with 4×16 ran 1.20× the f32 step instead of 1.33×).
 */
const RETIME_WITHIN = 2;
const RETIME_ROUNDS = 2;

/** Rounds of the fused-or-unfused timing (Autotuner.lowRankFused), each form once per round. */
const LOW_RANK_ROUNDS = 3;
/** Unfused wins only when faster by more than this fraction of the fused form's time. */
const LOW_RANK_MARGIN = 0.02;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A compute pipeline for `kernel` (auto layout). */
export function kernelPipeline(device: GPUDevice, kernel: KernelSource): GPUComputePipeline {
  const module = device.createShaderModule({ code: kernel.wgsl, label: kernel.name });
  return device.createComputePipeline({
    layout: "auto",
    compute: { module, entryPoint: kernel.entryPoint },
    label: kernel.name,
  });
}

/** Binds `buffers[i]` to binding i of group 0. */
export function kernelBindGroup(
  device: GPUDevice,
  pipeline: GPUComputePipeline,
  buffers: readonly GPUBuffer[],
): GPUBindGroup {
  return device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
  });
}

/** Submits one dispatch of `kernel` (optionally `workgroups` instead of the kernel's own). */
export function dispatchKernel(
  device: GPUDevice,
  pipeline: GPUComputePipeline,
  bindGroup: GPUBindGroup,
  workgroups: readonly [number, number, number],
  timestampWrites?: GPUComputePassTimestampWrites,
): void {
  const encoder = device.createCommandEncoder();
  const pass = encoder.beginComputePass(timestampWrites ? { timestampWrites } : {});
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroup);
  pass.dispatchWorkgroups(...workgroups);
  pass.end();
  device.queue.submit([encoder.finish()]);
}

export interface KernelTiming {
  /**
   * Milliseconds of the fastest timed run (or the probe's, when it was cut short): on a machine
   * shared with other work, interference only ever slows a run down, so the fastest is the
   * kernel's own time, while a median of a few runs moved with the machine's load (on lavapipe
   * the tuned choices for a LoRA step cost 5–13% more CPU than the untuned defaults).
   */
  ms: number;
  /** Every timed run's milliseconds (empty: only the probe ran). */
  samples: number[];
  /** The warm-up: creating the pipeline and a one-workgroup dispatch (lavapipe compiles here). */
  compileMs: number;
  /** Timed runs behind `ms` (0: only the probe ran). */
  runs: number;
  timer: "timestamp" | "wall";
}

/**
 * Times `kernel` on `buffers`: a one-workgroup warm-up dispatch (lavapipe compiles the shader at
 * its first dispatch), one probe run awaited at once (its wall time sizes the sleeps), then `runs`
 * timed runs, each its own submit; when the first is above `pruneAbove` ms the kernel is not
 * worth more runs. With timestamp queries each run is timed on the device and we sleep past its expected
 * end before awaiting, so Dawn's busy-polling (a whole core) does not slow the run being timed;
 * without them, wall time with GpuWaiter (sleep for most of the expected time, then await).
 */
export async function timeMatmulKernel(
  device: GPUDevice,
  kernel: KernelSource,
  buffers: readonly GPUBuffer[],
  runs: number,
  pruneAbove = Infinity,
): Promise<KernelTiming> {
  let started = performance.now();
  device.pushErrorScope("validation");
  const pipeline = kernelPipeline(device, kernel);
  const bindGroup = kernelBindGroup(device, pipeline, buffers);
  const error = await device.popErrorScope();
  if (error) throw new Error(`${kernel.name}: ${error.message}`);
  dispatchKernel(device, pipeline, bindGroup, [1, 1, 1]);
  await device.queue.onSubmittedWorkDone();
  const compileMs = performance.now() - started;

  const waiter = new GpuWaiter();
  started = performance.now();
  dispatchKernel(device, pipeline, bindGroup, kernel.dispatch);
  await waiter.wait(device); // first wait: no estimate yet, so no sleep; teaches the waiter
  const probe = performance.now() - started;
  // The probe only sizes the sleeps: awaited at once, it busy-polls a core and on a loaded
  // machine measured up to 100× a kernel's time. Pruning waits for the first timed run.
  if (runs < 1) return { ms: probe, samples: [], compileMs, runs: 0, timer: "wall" };

  if (!device.features.has("timestamp-query")) {
    const wall: number[] = [];
    for (let i = 0; i < runs; i++) {
      started = performance.now();
      dispatchKernel(device, pipeline, bindGroup, kernel.dispatch);
      await waiter.wait(device);
      wall.push(performance.now() - started);
      if (wall[0]! > pruneAbove) break; // not worth more runs
    }
    return { ms: Math.min(...wall), samples: wall, compileMs, runs: wall.length, timer: "wall" };
  }

  const querySet = device.createQuerySet({ type: "timestamp", count: 2 * runs });
  const resolve = device.createBuffer({
    size: 16 * runs,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const read = device.createBuffer({
    size: 16 * runs,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  // The device times of the first `count` runs.
  const stamps = async (count: number): Promise<number[]> => {
    const encoder = device.createCommandEncoder();
    encoder.resolveQuerySet(querySet, 0, 2 * count, resolve, 0);
    encoder.copyBufferToBuffer(resolve, 0, read, 0, 16 * count);
    device.queue.submit([encoder.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    const t = new BigUint64Array(read.getMappedRange().slice(0));
    read.unmap();
    const ms: number[] = [];
    for (let i = 0; i < count; i++) ms.push(Number(t[2 * i + 1]! - t[2 * i]!) / 1e6);
    return ms;
  };
  try {
    const wall: number[] = [];
    let expected = probe;
    for (let i = 0; i < runs; i++) {
      started = performance.now();
      dispatchKernel(device, pipeline, bindGroup, kernel.dispatch, {
        querySet,
        beginningOfPassWriteIndex: 2 * i,
        endOfPassWriteIndex: 2 * i + 1,
      });
      await sleep(expected * 1.1 + 1);
      await device.queue.onSubmittedWorkDone();
      wall.push(performance.now() - started);
      expected = Math.min(expected, wall[i]!);
      if (i === 0 && Number.isFinite(pruneAbove)) {
        const [first] = await stamps(1);
        if (first! > pruneAbove) break; // not worth more runs
        expected = Math.min(expected, first! + 1);
      }
    }
    const ms = await stamps(wall.length);
    const done = wall.length;
    // Some drivers quantize or zero timestamps; trust them only when they look like durations.
    if (ms.every((x) => x > 0 && Number.isFinite(x)))
      return { ms: Math.min(...ms), samples: ms, compileMs, runs: done, timer: "timestamp" };
    return { ms: Math.min(...wall), samples: wall, compileMs, runs: done, timer: "wall" };
  } finally {
    querySet.destroy();
    resolve.destroy();
    read.destroy();
  }
}

export class Autotuner {
  /** Candidates timed so far by this instance (0 when every answer came from the cache). */
  measurements = 0;
  readonly cacheFile: string;
  private readonly enabled: boolean;
  private readonly features: ReadonlySet<string>;
  private readonly adapterKey: string;
  private disk: CacheFile | undefined;
  private readonly memo = new Map<string, Promise<MatmulParams>>();
  private readonly lowRankMemo = new Map<string, Promise<boolean>>();
  /** Tunings run one at a time: two timed at once on one device would disturb each other. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly device: GPUDevice,
    private readonly adapter: AdapterSummary,
    /** The kernel template being tuned: the compiler renders, this times. */
    private readonly template: MatmulTemplate,
    private readonly options: AutotuneOptions = {},
  ) {
    this.cacheFile = options.cacheFile ?? defaultAutotuneCacheFile();
    this.enabled = options.enabled ?? true;
    this.features = new Set([...device.features]);
    this.adapterKey = adapterKey(adapter);
  }

  /** The cached entry for `shape`'s class on this adapter, if any. */
  cached(shape: MatmulShape): AutotuneEntry | undefined {
    this.disk ??= readCache(this.cacheFile);
    const entry = this.disk.adapters[this.adapterKey]?.[this.template.classKey(shape)];
    if (!entry) return undefined;
    // Only a choice that is still one of the template's candidates counts.
    const candidates = this.template.candidates(shape, this.features, this.adapter);
    return candidates.some((c) => this.sameParams(c, entry.params)) ? entry : undefined;
  }

  /** Storage buffers of these byte sizes (rounded up to 16) for timed runs; none when measuring. */
  private timingBuffers(bytes: readonly number[]): GPUBuffer[] {
    if (this.options.measure) return [];
    return bytes.map((size) =>
      this.device.createBuffer({
        size: Math.max(16, Math.ceil(size / 16) * 16),
        usage: GPUBufferUsage.STORAGE,
      }),
    );
  }

  private sameParams(a: MatmulParams, b: MatmulParams): boolean {
    return this.template.describe(a) === this.template.describe(b) && a.tileK === b.tileK;
  }

  async matmul(shape: MatmulShape): Promise<MatmulParams> {
    if (!this.enabled) return this.template.defaults(shape, this.features, this.adapter);
    const key = this.template.classKey(shape);
    let choice = this.memo.get(key);
    if (!choice) {
      choice = this.queue.then(() => this.tuneMatmul(shape, key));
      this.queue = choice.catch(() => undefined);
      this.memo.set(key, choice);
      choice.catch(() => this.memo.delete(key));
    }
    return { ...(await choice) };
  }

  private async tuneMatmul(shape: MatmulShape, key: string): Promise<MatmulParams> {
    const hit = this.cached(shape);
    if (hit) return hit.params;
    const log = this.options.log ?? (() => {});
    const runs = this.options.runs ?? 5;
    const candidates = this.template.candidates(shape, this.features, this.adapter);
    // Time the expected winner first so slow candidates can be cut short.
    const first = this.template.defaults(shape, this.features, this.adapter);
    const isFirst = (p: MatmulParams) => Number(this.sameParams(p, first));
    candidates.sort((a, b) => isFirst(b) - isFirst(a));

    const { batch, m, n, k } = shape;
    // The template's kernel for a shape with f16 or packed operands binds them as the plan does.
    const bytes =
      this.template.bindingBytes?.(shape) ??
      [batch * m * k, batch * k * n, batch * m * n].map((count) => count * 4);
    const buffers = this.timingBuffers(bytes);
    const timings: { params: MatmulParams; ms: number }[] = [];
    try {
      let best = Infinity;
      for (const params of candidates) {
        const ms = await this.timeCandidate(shape, key, params, buffers, runs, 3 * best);
        if (ms === undefined) continue;
        this.measurements++;
        timings.push({ params, ms });
        best = Math.min(best, ms);
      }
      // the close ones again, alternating, each keeping its fastest (RETIME_WITHIN)
      for (let round = 0; round < RETIME_ROUNDS; round++) {
        const close = timings.filter((t) => t.ms <= RETIME_WITHIN * best);
        if (close.length < 2) break;
        if (round % 2 === 0) close.reverse();
        for (const t of close) {
          const ms = await this.timeCandidate(shape, key, t.params, buffers, runs, Infinity);
          if (ms !== undefined) t.ms = Math.min(t.ms, ms);
        }
        best = Math.min(...timings.map((t) => t.ms));
      }
    } finally {
      for (const b of buffers) b.destroy();
    }
    if (timings.length === 0) throw new Error(`autotune ${key}: no candidate ran`);
    const winner = timings.reduce((a, b) => (b.ms < a.ms ? b : a));
    const entry: AutotuneEntry = {
      params: winner.params,
      ms: winner.ms,
      shape: { ...shape },
      timings: timings.map((t) => ({ params: this.template.describe(t.params), ms: t.ms })),
      tunedAt: new Date().toISOString(),
    };
    this.disk ??= readCache(this.cacheFile);
    (this.disk.adapters[this.adapterKey] ??= {})[key] = entry;
    try {
      writeCacheEntry(this.cacheFile, this.adapterKey, key, entry);
    } catch (e) {
      log(`autotune: could not write ${this.cacheFile}: ${(e as Error).message}`);
    }
    return winner.params;
  }

  /**
   * One candidate's time, ms (its passes' together: split-k), or undefined where it failed to
   * build or run; a run past `pruneAbove` ms ends its timing early.
   */
  private async timeCandidate(
    shape: MatmulShape,
    key: string,
    params: MatmulParams,
    buffers: readonly GPUBuffer[],
    runs: number,
    pruneAbove: number,
  ): Promise<number | undefined> {
    const log = this.options.log ?? (() => {});
    const kernel = this.template.kernel(shape, params);
    const passes = this.template.passes?.(shape, params) ?? [kernel];
    try {
      if (this.options.measure) return await this.options.measure(kernel, params, shape);
      let ms = 0;
      for (const pass of passes) {
        const bound = pass.bindings.map((b) => buffers[b.buffer]!);
        const t = await timeMatmulKernel(this.device, pass, bound, runs, pruneAbove - ms);
        ms += t.ms;
        log(
          `autotune ${key}: ${this.template.describe(params)}${passes.length > 1 ? ` (${pass.name})` : ""} ${t.ms.toFixed(3)} ms ` +
            `(${t.runs ? `${t.timer}, fastest of ${t.runs}` : "probe only"}, ` +
            `warm-up ${t.compileMs.toFixed(0)} ms)`,
        );
      }
      return ms;
    } catch (e) {
      log(`autotune ${key}: ${this.template.describe(params)} failed: ${(e as Error).message}`);
      return undefined;
    }
  }

  /**
   * Whether a low-rank branch runs faster fused in the tile of product `shape` (run with
   * `params`) than as an up-projection kernel of its own (the template's defaults) whose value
   * the product's epilogue adds: both forms timed on the device (`MatmulTemplate.lowRankForms`),
   * alternating for `LOW_RANK_ROUNDS` rounds, each form's time the sum of its kernels' fastest
   * runs, the faster round kept (interference only ever slows a run). Fused unless unfused is
   * faster by more than `LOW_RANK_MARGIN` (fused also saves the branch's m × n values; and a sum
   * of two kernels' fastest runs leans a little towards the unfused form). Cached under the
   * product's class, its parameters and the branch's rank and layout.
   */
  async lowRankFused(
    shape: MatmulShape,
    branch: LowRankBranchForm,
    params: MatmulParams,
  ): Promise<boolean> {
    if (!this.enabled || !this.template.lowRankForms) return true;
    const key = this.lowRankKey(shape, branch, params);
    let choice = this.lowRankMemo.get(key);
    if (!choice) {
      choice = this.queue.then(() => this.tuneLowRank(shape, branch, params, key));
      this.queue = choice.catch(() => undefined);
      this.lowRankMemo.set(key, choice);
      choice.catch(() => this.lowRankMemo.delete(key));
    }
    return await choice;
  }

  /** Whether `lowRankFused` would answer from the cache (or without timing) rather than time. */
  lowRankCached(shape: MatmulShape, branch: LowRankBranchForm, params: MatmulParams): boolean {
    if (!this.enabled || !this.template.lowRankForms) return true;
    const key = this.lowRankKey(shape, branch, params);
    this.disk ??= readCache(this.cacheFile);
    return this.lowRankMemo.has(key) || this.disk.lowRank?.[this.adapterKey]?.[key] !== undefined;
  }

  private lowRankKey(shape: MatmulShape, branch: LowRankBranchForm, params: MatmulParams) {
    // v2: the fused form adds the branch into the product's accumulators (choices timed with
    // accumulators of the branch's own are timed again)
    return (
      `lowrank/v2 ${this.template.classKey(shape)} ${this.template.describe(params)} ` +
      `r${branch.rank}${branch.upTrans ? " upT" : ""}`
    );
  }

  private async tuneLowRank(
    shape: MatmulShape,
    branch: LowRankBranchForm,
    params: MatmulParams,
    key: string,
  ): Promise<boolean> {
    this.disk ??= readCache(this.cacheFile);
    const hit = this.disk.lowRank?.[this.adapterKey]?.[key];
    if (hit) return hit.fused;
    const log = this.options.log ?? (() => {});
    const runs = this.options.runs ?? 5;
    const upShape = {
      batch: 1,
      m: shape.m,
      n: shape.n,
      k: branch.rank,
      transA: false,
      transB: branch.upTrans,
    };
    const upParams = this.template.defaults(upShape, this.features, this.adapter);
    const { fused, unfused, bytes } = this.template.lowRankForms!(shape, branch, params, upParams);
    const buffers = this.timingBuffers(bytes);
    const time = async (kernels: KernelSource[]) => {
      let ms = 0;
      for (const kernel of kernels) {
        if (this.options.measure) ms += await this.options.measure(kernel, params, shape);
        else {
          const bound = kernel.bindings.map((b) => buffers[b.buffer]!);
          ms += (await timeMatmulKernel(this.device, kernel, bound, runs)).ms;
        }
      }
      this.measurements++;
      return ms;
    };
    let fusedMs = Infinity;
    let unfusedMs = Infinity;
    try {
      for (let round = 0; round < LOW_RANK_ROUNDS; round++) {
        fusedMs = Math.min(fusedMs, await time(fused));
        unfusedMs = Math.min(unfusedMs, await time(unfused));
      }
    } finally {
      for (const b of buffers) b.destroy();
    }
    const entry: LowRankEntry = {
      fused: unfusedMs >= fusedMs * (1 - LOW_RANK_MARGIN),
      fusedMs,
      unfusedMs,
      shape: { ...shape },
      branch: { ...branch },
      tunedAt: new Date().toISOString(),
    };
    log(
      `autotune ${key}: fused ${fusedMs.toFixed(3)} ms, unfused ${unfusedMs.toFixed(3)} ms: ${entry.fused ? "fused" : "unfused"}`,
    );
    ((this.disk.lowRank ??= {})[this.adapterKey] ??= {})[key] = entry;
    try {
      writeCacheEntry(this.cacheFile, this.adapterKey, key, entry);
    } catch (e) {
      log(`autotune: could not write ${this.cacheFile}: ${(e as Error).message}`);
    }
    return entry.fused;
  }
}
