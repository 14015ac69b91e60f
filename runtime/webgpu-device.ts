// The WebGPU device: runs an entry of a graph by executing its kernel plan (compiler/plan.ts).
//
// Per (graph, entry) the plan is compiled once: buffers, pipelines and bind groups are created
// once and reused by every run. A run uploads the feeds that are not on the GPU already, records
// one command buffer (input copies, one compute pass with every dispatch, copies of the outputs
// asked for to one staging buffer), waits with GpuWaiter (sleeping first: Dawn's pending promises
// busy-poll a core), and reads back those outputs. The others stay in their buffers as
// DeviceTensors: a training step reads back its loss only; `sync` reads the rest when a checkpoint
// needs them.
//
// Residency: every tensor this device returned or uploaded is remembered with the GPU buffer
// holding it, as long as that buffer still holds it. Feeding the same Tensor object again costs
// no upload: an input buffer that holds it already is left alone, another buffer that holds it
// is copied on the GPU. Tensors are treated as immutable: a tensor whose `data` is changed in
// place after it was fed or returned must be fed as a new object.
import type { Tensor } from "../compiler/interpreter.js";
import { numel, type Graph } from "../compiler/ir.js";
import type { MatmulParams, MatmulShape } from "../compiler/kernels/types.js";
import { isSmallMatmul, planMatmulParams, planProgram, type Plan } from "../compiler/plan.js";
import { matmulShapeClassKey } from "../compiler/kernels/matmul.js";
import { Autotuner } from "./autotune.js";
import type { Entry, ProgramInput } from "../compiler/step.js";
import type { Device, RunOptions } from "./device.js";
import { GpuWaiter, requestAdapter, requestDevice, summarize } from "./gpu.js";

interface Compiled {
  plan: Plan;
  entry: string;
  buffers: GPUBuffer[];
  pipelines: GPUComputePipeline[];
  bindGroups: GPUBindGroup[];
  /** One staging buffer for all outputs, and where each output buffer lands in it. */
  staging?: GPUBuffer;
  stagingAt: Map<number, number>;
  /** Settles when Dawn has validated every pipeline; rejects with the WGSL errors. */
  ready: Promise<void>;
  /**
   * Learns how long this plan's runs take, to sleep that long before awaiting. Its first run is
   * not counted: lavapipe compiles the shaders at their first dispatch, seconds that would make
   * the next runs sleep far too long.
   */
  waiter: GpuWaiter;
  runs: number;
}

export interface WebGpuDeviceOptions {
  adapter?: GPUAdapter;
  /** Time matmul candidates on first use of each shape class and cache the choice (default true). */
  autotune?: boolean;
}

export class WebGpuDevice implements Device {
  readonly name: string;
  private readonly compiled = new WeakMap<Graph, Map<string, Compiled>>();
  private readonly all: Compiled[] = [];
  private readonly modules = new Map<string, GPUShaderModule>();
  private readonly resident = new WeakMap<Tensor, GPUBuffer>();
  private readonly contents = new Map<GPUBuffer, WeakRef<Tensor>>();
  private destroyed = false;
  /** Tuned matmul parameters by shape class, filled before a plan that needs them is compiled. */
  private readonly tuned = new Map<string, MatmulParams>();
  private readonly autotuner: Autotuner;

  private constructor(
    readonly device: GPUDevice,
    readonly adapter: GPUAdapter,
    autotune: boolean,
  ) {
    this.name = `webgpu (${summarize(adapter).description})`;
    this.autotuner = new Autotuner(device, summarize(adapter), { enabled: autotune });
  }

  static async open(options: WebGpuDeviceOptions = {}): Promise<WebGpuDevice> {
    const adapter = options.adapter ?? (await requestAdapter());
    const device = await requestDevice(adapter);
    return new WebGpuDevice(device, adapter, options.autotune ?? true);
  }

  /** The plan's matmul choice: the autotuner's for large products once tuned, else the default. */
  private matmulParams = (shape: MatmulShape): MatmulParams =>
    (!isSmallMatmul(shape) && this.tuned.get(matmulShapeClassKey(shape))) ||
    planMatmulParams(shape, new Set(this.features), summarize(this.adapter));

  /** Tunes (or reads from the cache) every large matmul shape class an entry's plan uses. */
  private async tune(graph: Graph, inputs: readonly ProgramInput[], entry: Entry): Promise<void> {
    const shapes = new Map<string, MatmulShape>();
    planProgram(graph, inputs, { entry }, this.limits(), this.features, {
      adapter: summarize(this.adapter),
      matmulParams: (shape) => {
        const key = matmulShapeClassKey(shape);
        if (!isSmallMatmul(shape) && !this.tuned.has(key)) shapes.set(key, shape);
        return this.matmulParams(shape);
      },
    });
    for (const [key, shape] of shapes) this.tuned.set(key, await this.autotuner.matmul(shape));
  }

  private limits() {
    const limits = this.device.limits;
    return {
      maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
      maxBufferSize: limits.maxBufferSize,
      maxStorageBuffersPerShaderStage: limits.maxStorageBuffersPerShaderStage,
    };
  }

  get features(): string[] {
    return [...this.device.features].sort();
  }

  /** Bytes of the storage buffers this device created for an entry's plan (staging excluded). */
  allocatedBytes(graph: Graph, inputs: readonly ProgramInput[], entry: Entry): number {
    return this.compile(graph, inputs, entry).buffers.reduce((sum, b) => sum + b.size, 0);
  }

  /** The plan this device runs for an entry, tuning its matmuls and compiling it if needed. */
  async tunedPlan(graph: Graph, inputs: readonly ProgramInput[], entry: Entry): Promise<Plan> {
    if (!this.isCompiled(graph, entry)) await this.tune(graph, inputs, entry);
    return this.compile(graph, inputs, entry).plan;
  }

  /** The plan this device runs for an entry (compiling it if needed). */
  plan(graph: Graph, inputs: readonly ProgramInput[], entry: Entry): Plan {
    return this.compile(graph, inputs, entry).plan;
  }

  async run(
    graph: Graph,
    inputs: readonly ProgramInput[],
    entry: Entry,
    feeds: ReadonlyMap<string, Tensor>,
    options: RunOptions = {},
  ): Promise<Map<string, Tensor>> {
    if (this.destroyed) throw new Error("webgpu: the device was destroyed");
    if (!this.isCompiled(graph, entry)) await this.tune(graph, inputs, entry);
    const c = this.compile(graph, inputs, entry);
    await c.ready;
    const { plan } = c;
    const pe = plan.entries[c.entry]!;
    const gpu = this.device;
    const encoder = gpu.createCommandEncoder();
    const byName = new Map(plan.inputs.map((i) => [i.name, i]));
    for (const name of pe.inputs) {
      const input = byName.get(name)!;
      const t = feeds.get(name);
      if (!t) throw new Error(`webgpu: no feed for input "${name}"`);
      const n = numel(input.shape);
      const count = t instanceof DeviceTensor ? numel(t.shape) : t.data.length;
      if (count !== n)
        throw new Error(`webgpu: the feed for "${name}" has ${count} values, needs ${n}`);
      const dst = c.buffers[input.buffer]!;
      if (this.contents.get(dst)?.deref() === t) continue;
      const src = this.resident.get(t);
      if (src && src !== dst && this.contents.get(src)?.deref() === t) {
        encoder.copyBufferToBuffer(src, 0, dst, 0, 4 * n);
      } else if (n > 0) {
        const data =
          input.dtype === "i32"
            ? t.data instanceof Int32Array
              ? t.data
              : Int32Array.from(t.data, Math.trunc)
            : t.data instanceof Float32Array
              ? t.data
              : Float32Array.from(t.data);
        gpu.queue.writeBuffer(dst, 0, data.buffer, data.byteOffset, 4 * n);
      }
      this.hold(dst, t);
    }
    const pass = encoder.beginComputePass();
    for (const k of pe.dispatches) {
      const [x, y, z] = plan.kernels[k]!.dispatch;
      if (x * y * z === 0) continue;
      pass.setPipeline(c.pipelines[k]!);
      pass.setBindGroup(0, c.bindGroups[k]!);
      pass.dispatchWorkgroups(x, y, z);
    }
    pass.end();
    // Outputs the caller did not ask for stay on the GPU as DeviceTensors (read on `sync`).
    const read = options.read;
    const wanted = read ? pe.outputs.filter((o) => read.has(o.name)) : pe.outputs;
    const readBuffers = new Set(wanted.map((o) => o.buffer));
    for (const [buffer, at] of c.stagingAt)
      if (readBuffers.has(buffer))
        encoder.copyBufferToBuffer(
          c.buffers[buffer]!,
          0,
          c.staging!,
          at,
          plan.buffers[buffer]!.bytes,
        );
    gpu.queue.submit([encoder.finish()]);
    await (c.runs++ === 0 ? new GpuWaiter() : c.waiter).wait(gpu);
    const out = new Map<string, Tensor>();
    const made = new Map<string, Tensor>();
    for (const o of pe.outputs) {
      if (readBuffers.has(o.buffer)) continue;
      const key = `${o.buffer}:${o.dtype}`;
      let t = made.get(key);
      if (!t) {
        t = new DeviceTensor([...o.shape], o.dtype === "i32" ? "i32" : "f32");
        made.set(key, t);
        this.hold(c.buffers[o.buffer]!, t);
      }
      out.set(o.name, t);
    }
    if (c.staging && readBuffers.size > 0) {
      await c.staging.mapAsync(GPUMapMode.READ);
      const bytes = c.staging.getMappedRange();
      for (const o of pe.outputs) {
        if (!readBuffers.has(o.buffer)) continue;
        const n = numel(o.shape);
        const at = c.stagingAt.get(o.buffer)!;
        const key = `${o.buffer}:${o.dtype}`;
        let t = made.get(key);
        if (!t) {
          const data =
            o.dtype === "i32"
              ? new Int32Array(bytes.slice(at, at + 4 * n))
              : new Float32Array(bytes.slice(at, at + 4 * n));
          t = { shape: [...o.shape], data };
          made.set(key, t);
          this.hold(c.buffers[o.buffer]!, t);
        }
        out.set(o.name, t);
      }
      c.staging.unmap();
    }
    return out;
  }

  /**
   * Device time of each kernel of an entry, from timestamp queries around each dispatch (its own
   * compute pass): runs the entry once with `feeds` (compiling and uploading), then `repeats` more
   * times, and returns each dispatch's median in milliseconds, in dispatch order. Undefined when
   * the adapter has no timestamp queries.
   */
  async profile(
    graph: Graph,
    inputs: readonly ProgramInput[],
    entry: Entry,
    feeds: ReadonlyMap<string, Tensor>,
    repeats = 5,
  ): Promise<{ kernel: number; ms: number }[] | undefined> {
    if (!this.device.features.has("timestamp-query")) return undefined;
    await this.run(graph, inputs, entry, feeds);
    const c = this.compile(graph, inputs, entry);
    const dispatches = c.plan.entries[c.entry]!.dispatches.filter((k) =>
      c.plan.kernels[k]!.dispatch.every((n) => n > 0),
    );
    const gpu = this.device;
    const count = 2 * dispatches.length;
    const querySet = gpu.createQuerySet({ type: "timestamp", count });
    const resolved = gpu.createBuffer({
      size: 8 * count,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    const read = gpu.createBuffer({
      size: 8 * count,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const times: number[][] = dispatches.map(() => []);
    try {
      for (let r = 0; r < repeats; r++) {
        const encoder = gpu.createCommandEncoder();
        dispatches.forEach((k, i) => {
          const pass = encoder.beginComputePass({
            timestampWrites: {
              querySet,
              beginningOfPassWriteIndex: 2 * i,
              endOfPassWriteIndex: 2 * i + 1,
            },
          });
          pass.setPipeline(c.pipelines[k]!);
          pass.setBindGroup(0, c.bindGroups[k]!);
          const [x, y, z] = c.plan.kernels[k]!.dispatch;
          pass.dispatchWorkgroups(x, y, z);
          pass.end();
        });
        encoder.resolveQuerySet(querySet, 0, count, resolved, 0);
        encoder.copyBufferToBuffer(resolved, 0, read, 0, 8 * count);
        gpu.queue.submit([encoder.finish()]);
        await c.waiter.wait(gpu);
        await read.mapAsync(GPUMapMode.READ);
        const t = new BigUint64Array(read.getMappedRange().slice(0));
        read.unmap();
        dispatches.forEach((_, i) => times[i]!.push(Number(t[2 * i + 1]! - t[2 * i]!) / 1e6));
      }
    } finally {
      querySet.destroy();
      resolved.destroy();
      read.destroy();
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
    return dispatches.map((kernel, i) => ({ kernel, ms: median(times[i]!) }));
  }

  /**
   * Reads back the DeviceTensors among `tensors` that have no host data yet, from the buffers that
   * hold them. A DeviceTensor whose buffer was overwritten since is an error (the trainer never
   * keeps one that long).
   */
  async sync(tensors: Iterable<Tensor>): Promise<void> {
    const pending = [...new Set(tensors)].filter(
      (t): t is DeviceTensor => t instanceof DeviceTensor && !t.onHost,
    );
    if (pending.length === 0) return;
    const gpu = this.device;
    const encoder = gpu.createCommandEncoder();
    let total = 0;
    const at: number[] = [];
    for (const t of pending) {
      const buffer = this.resident.get(t);
      if (!buffer || this.contents.get(buffer)?.deref() !== t)
        throw new Error("webgpu: a device tensor was overwritten before it was read back");
      at.push(total);
      total += Math.max(4, 4 * numel(t.shape));
    }
    const staging = gpu.createBuffer({
      size: total,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    pending.forEach((t, i) => {
      const n = 4 * numel(t.shape);
      if (n > 0) encoder.copyBufferToBuffer(this.resident.get(t)!, 0, staging, at[i]!, n);
    });
    gpu.queue.submit([encoder.finish()]);
    try {
      await staging.mapAsync(GPUMapMode.READ);
      const bytes = staging.getMappedRange();
      pending.forEach((t, i) => {
        const slice = bytes.slice(at[i]!, at[i]! + 4 * numel(t.shape));
        t.settle(t.dtype === "i32" ? new Int32Array(slice) : new Float32Array(slice));
      });
      staging.unmap();
    } finally {
      staging.destroy();
    }
  }

  /** Records that `buffer` now holds `t` (and no longer what it held before). */
  private hold(buffer: GPUBuffer, t: Tensor): void {
    const before = this.contents.get(buffer)?.deref();
    if (before && this.resident.get(before) === buffer) this.resident.delete(before);
    this.contents.set(buffer, new WeakRef(t));
    this.resident.set(t, buffer);
  }

  private isCompiled(graph: Graph, entry: Entry): boolean {
    return (
      this.compiled.get(graph)?.has(entry.outputs.map((o) => `${o.name}=${o.node}`).join("\n")) ??
      false
    );
  }

  private compile(graph: Graph, inputs: readonly ProgramInput[], entry: Entry): Compiled {
    const key = entry.outputs.map((o) => `${o.name}=${o.node}`).join("\n");
    let perGraph = this.compiled.get(graph);
    if (!perGraph) this.compiled.set(graph, (perGraph = new Map()));
    const known = perGraph.get(key);
    if (known) return known;
    const plan = planProgram(graph, inputs, { entry }, this.limits(), this.features, {
      adapter: summarize(this.adapter),
      matmulParams: this.matmulParams,
    });
    const c = this.instantiate(plan, "entry");
    perGraph.set(key, c);
    this.all.push(c);
    return c;
  }

  private instantiate(plan: Plan, entry: string): Compiled {
    const gpu = this.device;
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const buffers = plan.buffers.map((b) => gpu.createBuffer({ size: b.bytes, usage }));
    const pipelines: GPUComputePipeline[] = [];
    const bindGroups: GPUBindGroup[] = [];
    const used = new Set(plan.entries[entry]!.dispatches);
    const checks: Promise<string | undefined>[] = [];
    const uniforms: GPUBuffer[] = [];
    for (const k of plan.kernels) {
      if (!used.has(k.id)) continue;
      let module = this.modules.get(k.wgsl);
      if (!module) {
        module = gpu.createShaderModule({ code: k.wgsl, label: k.name });
        this.modules.set(k.wgsl, module);
      }
      const layoutEntries: GPUBindGroupLayoutEntry[] = k.bindings.map((b, i) => ({
        binding: i,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: b.access === "read" ? "read-only-storage" : "storage" },
      }));
      const entries: GPUBindGroupEntry[] = k.bindings.map((b, i) => ({
        binding: i,
        resource: { buffer: buffers[b.buffer]! },
      }));
      if (k.params) {
        const data = Uint32Array.from(
          { length: Math.max(4, Math.ceil(k.params.length / 4) * 4) },
          (_, i) => k.params![i] ?? 0,
        );
        const uniform = gpu.createBuffer({
          size: data.byteLength,
          usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        });
        gpu.queue.writeBuffer(uniform, 0, data);
        uniforms.push(uniform);
        const binding = k.bindings.length;
        layoutEntries.push({
          binding,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: "uniform" },
        });
        entries.push({ binding, resource: { buffer: uniform } });
      }
      const layout = gpu.createBindGroupLayout({ entries: layoutEntries });
      gpu.pushErrorScope("validation");
      pipelines[k.id] = gpu.createComputePipeline({
        label: k.name,
        layout: gpu.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module, entryPoint: k.entryPoint },
      });
      bindGroups[k.id] = gpu.createBindGroup({ layout, entries });
      const name = k.name;
      checks.push(
        gpu.popErrorScope().then(async (error) => {
          if (!error) return undefined;
          const info = await module.getCompilationInfo();
          const lines = info.messages.map((m) => `  ${m.lineNum}:${m.linePos} ${m.message}`);
          return `kernel "${name}": ${error.message}\n${lines.join("\n")}\n${k.wgsl}`;
        }),
      );
    }
    const stagingAt = new Map<number, number>();
    let total = 0;
    for (const o of plan.entries[entry]!.outputs) {
      if (stagingAt.has(o.buffer)) continue;
      stagingAt.set(o.buffer, total);
      total += plan.buffers[o.buffer]!.bytes;
    }
    const staging =
      total > 0
        ? gpu.createBuffer({
            size: total,
            usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
          })
        : undefined;
    const ready = Promise.all(checks).then((errors) => {
      const bad = errors.filter((e): e is string => e !== undefined);
      if (bad.length) throw new Error(`webgpu: the plan does not compile:\n${bad.join("\n")}`);
    });
    return {
      plan,
      entry,
      buffers: [...buffers, ...uniforms],
      pipelines,
      bindGroups,
      staging,
      stagingAt,
      ready,
      waiter: new GpuWaiter(),
      runs: 0,
    };
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const c of this.all) {
      for (const b of c.buffers) b.destroy();
      c.staging?.destroy();
    }
    this.device.destroy();
  }
}

/**
 * An output that stayed in its GPU buffer: its `data` is readable once the device's `sync` has
 * read it back. Feeding it to the device that made it needs no upload.
 */
export class DeviceTensor {
  private host: Float32Array | Int32Array | undefined;

  constructor(
    readonly shape: number[],
    readonly dtype: "f32" | "i32",
  ) {}

  get onHost(): boolean {
    return this.host !== undefined;
  }

  get data(): Float32Array | Int32Array {
    if (!this.host)
      throw new Error("this tensor is still on the GPU: `await device.sync([tensor])` first");
    return this.host;
  }

  settle(data: Float32Array | Int32Array): void {
    this.host = data;
  }
}
