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
import { numel } from "../compiler/ir.js";
import type { Entry, GraphProgram, Plan, StepProgram, Tensor } from "../compiler/program.js";
import type { Device, RunOptions } from "./device.js";
import { GpuWaiter, requestAdapter, requestDevice, summarize, type AdapterSummary } from "./gpu.js";
import { toHalfBits } from "./half.js";
import { IndexOutOfRange } from "./interpreter.js";

/** A loaded plan: its buffers (made at load), and each entry's pipelines (made at first use). */
interface Loaded {
  plan: Plan;
  buffers: GPUBuffer[];
  entries: Map<string, LoadedEntry>;
  /**
   * The buffers of pooled states (StateInfo.pooled), by buffer id: a full buffer while the
   * state's tensor is active, else a PLACEHOLDER_BYTES placeholder (distinct per buffer: WebGPU refuses two
   * writable bindings of one range in a dispatch). An inactive tensor's kernels still run on the
   * placeholder (robust buffer access keeps them inside it) and their values are never selected.
   */
  pooled?: Map<number, PooledBuffer>;
  /** The step `prepareStep` last saw (a resumed run starts anywhere). */
  lastStep?: number;
  /** The gather error flag (2 i32s), made when a kernel first needs it. */
  gatherFlag?: GPUBuffer;
}

interface LoadedEntry {
  name: string;
  pipelines: GPUComputePipeline[];
  bindGroups: GPUBindGroup[];
  /** Makes the bind groups again from the loaded buffers (a pooled state's buffer changed). */
  rebind: () => void;
  uniforms: GPUBuffer[];
  /** One staging buffer for all outputs, and where each output buffer lands in it. */
  staging?: GPUBuffer;
  stagingAt: Map<number, number>;
  /** Settles when Dawn has validated every pipeline; rejects with the WGSL errors. */
  ready: Promise<void>;
  /**
   * Learns how long this entry's runs take, to sleep that long before awaiting. Its first run is
   * not counted: lavapipe compiles the shaders at their first dispatch, seconds that would make
   * the next runs sleep far too long.
   */
  waiter: GpuWaiter;
  runs: number;
  /** The packed inputs this entry reads (packed on the host: their feeds must be there). */
  packedInputs: string[];
  /** Where the gather error flag is read back after each run, if a kernel of the entry sets it. */
  flagStaging?: GPUBuffer;
}

/** A plan kernel that WebGPU rejected: names the kernel; the caller makes it a diagnostic. */
export class PipelineError extends Error {
  constructor(
    readonly kernels: string[],
    detail: string,
  ) {
    super(`webgpu: the plan does not compile:\n${detail}`);
  }
}

export interface WebGpuDeviceOptions {
  adapter?: GPUAdapter;
  /**
   * Plan for storage bindings of at most this many bytes, under the adapter's own limit
   * (`--max-binding`: a smaller device's, or tests of tensors split across bindings).
   */
  maxBinding?: number;
}

/**
 * Bytes of an inactive pooled state's placeholder buffer: one vec4, the smallest binding a kernel
 * reading it as vec4s (compiler/kernels/vector.ts) accepts.
 */
export const PLACEHOLDER_BYTES = 16;

/** Bytes of one host-to-device write (a multiple of 4, as writeBuffer requires). */
const WRITE_CHUNK = 16 * 2 ** 20;
/**
 * Outputs over this many bytes are read back through a staging buffer of this size, a piece at a
 * time, straight into the tensor's array: a whole staging copy beside it would hold the tensor
 * twice (a split embedding or its logits are hundreds of MiB).
 */
const READ_CHUNK = 16 * 2 ** 20;

export class WebGpuDevice implements Device {
  readonly name: string;
  readonly summary: AdapterSummary;
  private readonly loaded = new WeakMap<GraphProgram, Loaded>();
  private readonly all: Loaded[] = [];
  private readonly modules = new Map<string, GPUShaderModule>();
  private readonly resident = new WeakMap<Tensor, GPUBuffer>();
  private readonly contents = new Map<GPUBuffer, WeakRef<Tensor>>();
  private destroyed = false;

  private constructor(
    readonly device: GPUDevice,
    readonly adapter: GPUAdapter,
    private readonly maxBinding?: number,
  ) {
    this.summary = summarize(adapter);
    this.name = `webgpu (${this.summary.description})`;
  }

  static async open(options: WebGpuDeviceOptions = {}): Promise<WebGpuDevice> {
    const adapter = options.adapter ?? (await requestAdapter());
    const device = await requestDevice(adapter);
    return new WebGpuDevice(device, adapter, options.maxBinding);
  }

  /** The limits a plan for this device must fit. */
  limits() {
    const limits = this.device.limits;
    return {
      maxStorageBufferBindingSize: Math.min(
        limits.maxStorageBufferBindingSize,
        this.maxBinding ?? Infinity,
      ),
      maxBufferSize: limits.maxBufferSize,
      maxStorageBuffersPerShaderStage: limits.maxStorageBuffersPerShaderStage,
    };
  }

  get features(): string[] {
    return [...this.device.features].sort();
  }

  /**
   * Makes `plan` the way this device runs `program` (compiler/compile.ts `planStep` made it for
   * this device's limits and features): its buffers are created now.
   */
  load(program: GraphProgram, plan: Plan): void {
    if (this.loaded.has(program)) throw new Error("webgpu: this program already has a plan");
    const pooled = pooledBuffers(program, plan);
    const buffers = plan.buffers.map((b) =>
      this.device.createBuffer({
        size: pooled.has(b.id) ? PLACEHOLDER_BYTES : b.bytes,
        usage: storageUsage(),
      }),
    );
    const loaded: Loaded = { plan, buffers, entries: new Map() };
    if (pooled.size) loaded.pooled = pooled;
    this.loaded.set(program, loaded);
    this.all.push(loaded);
  }

  /**
   * Allocates the pooled states whose tensors are active at `step` and frees the others (their
   * last values read back to the host first, for a DeviceTensor the caller still holds).
   */
  async prepareStep(program: GraphProgram, step: number): Promise<void> {
    const loaded = this.loaded.get(program);
    if (!loaded?.pooled) return;
    let changed = false;
    const next = loaded.lastStep !== undefined && step === loaded.lastStep + 1;
    loaded.lastStep = step;
    for (const [id, p] of loaded.pooled) {
      const active = p.holds(step);
      if (active === p.active) continue;
      // the compiler checked the run's own steps (compiler/pooled-states.ts); a run made longer
      // must not activate a state mid-period, whose fresh buffer would lose what it held
      if (active && next && p.period !== undefined && (step - 1) % p.period !== 0)
        throw new Error(
          `webgpu: the pooled state ${p.name} becomes active at step ${step}, between its refreshes`,
        );
      const old = loaded.buffers[id]!;
      const held = this.contents.get(old)?.deref();
      if (p.active && held) await this.sync([held]);
      p.active = active;
      changed = true;
      const size = active ? loaded.plan.buffers[id]!.bytes : PLACEHOLDER_BYTES;
      loaded.buffers[id] = this.device.createBuffer({ size, usage: storageUsage() });
      old.destroy();
    }
    if (changed) for (const e of loaded.entries.values()) e.rebind();
  }

  /** Whether buffer `id` is a pooled state's placeholder now (its tensor inactive). */
  private placeholder(loaded: Loaded, id: number): boolean {
    return loaded.pooled?.get(id)?.active === false;
  }

  /** The plan this device runs for `program`. */
  plan(program: GraphProgram): Plan {
    return this.loadedOf(program).plan;
  }

  /** Bytes of the storage buffers this device created for a program's plan (staging excluded). */
  allocatedBytes(program: GraphProgram): number {
    return this.loadedOf(program).buffers.reduce((sum, b) => sum + b.size, 0);
  }

  private loadedOf(program: GraphProgram): Loaded {
    const loaded = this.loaded.get(program);
    if (!loaded) throw new Error("webgpu: no plan was loaded for this program");
    return loaded;
  }

  async run(
    program: GraphProgram,
    entry: Entry,
    feeds: ReadonlyMap<string, Tensor>,
    options: RunOptions = {},
  ): Promise<Map<string, Tensor>> {
    if (this.destroyed) throw new Error("webgpu: the device was destroyed");
    const loaded = this.loadedOf(program);
    const e = this.entryOf(loaded, entry.name);
    await e.ready;
    const pe = loaded.plan.entries[entry.name]!;
    const gpu = this.device;
    // Packed inputs are packed on the host: their feeds must be there.
    await this.sync(e.packedInputs.flatMap((n) => (feeds.has(n) ? [feeds.get(n)!] : [])));
    // a command the driver rejects at run time (not at pipeline creation) fails the run too
    gpu.pushErrorScope("validation");
    const encoder = gpu.createCommandEncoder();
    let temporaries: GPUBuffer[] = [];
    try {
      temporaries = this.upload(encoder, loaded, pe.inputs, feeds);
    } catch (error) {
      void gpu.popErrorScope().catch(() => undefined);
      throw error;
    }
    const pass = encoder.beginComputePass();
    for (const k of pe.dispatches) {
      const [x, y, z] = loaded.plan.kernels[k]!.dispatch;
      if (x * y * z === 0) continue;
      pass.setPipeline(e.pipelines[k]!);
      pass.setBindGroup(0, e.bindGroups[k]!);
      pass.dispatchWorkgroups(x, y, z);
    }
    pass.end();
    if (e.flagStaging) encoder.copyBufferToBuffer(loaded.gatherFlag!, 0, e.flagStaging, 0, 8);
    // Outputs the caller did not ask for stay on the GPU as DeviceTensors (read on `sync`).
    const read = options.read;
    const wanted = read ? pe.outputs.filter((o) => read.has(o.name)) : pe.outputs;
    const readBuffers = new Set(wanted.map((o) => o.buffer));
    for (const [buffer, at] of e.stagingAt)
      if (readBuffers.has(buffer) && !this.placeholder(loaded, buffer))
        encoder.copyBufferToBuffer(
          loaded.buffers[buffer]!,
          0,
          e.staging!,
          at,
          loaded.plan.buffers[buffer]!.bytes,
        );
    gpu.queue.submit([encoder.finish()]);
    const scope = gpu.popErrorScope();
    await (e.runs++ === 0 ? new GpuWaiter() : e.waiter).wait(gpu);
    for (const t of temporaries) t.destroy();
    const invalid = await scope;
    if (invalid) throw new PipelineError([`entry "${entry.name}"`], invalid.message);
    const out = await this.outputs(loaded, e, pe.outputs, readBuffers);
    if (e.flagStaging) await this.checkGatherFlag(program, loaded, e.flagStaging, feeds);
    return out;
  }

  /**
   * Throws IndexOutOfRange when a gather of the run met an id outside its table (the kernel
   * clamped the row and set the flag: compiler/wgsl.ts), after clearing the flag.
   */
  private async checkGatherFlag(
    program: GraphProgram,
    loaded: Loaded,
    staging: GPUBuffer,
    feeds: ReadonlyMap<string, Tensor>,
  ): Promise<void> {
    await staging.mapAsync(GPUMapMode.READ);
    const [gather, id] = new Int32Array(staging.getMappedRange().slice(0));
    staging.unmap();
    if (!gather) return;
    this.device.queue.writeBuffer(loaded.gatherFlag!, 0, new Int32Array(2));
    const node = program.graph.nodes[gather - 1];
    const rows = node ? program.graph.node(node.inputs[0]!).shape[0]! : 0;
    const source = node?.source ? `${node.source.file}:${node.source.line}` : undefined;
    throw new IndexOutOfRange(id!, rows, source).atStep(feeds);
  }

  /**
   * Copies the feeds an entry reads into their input buffers, unless they are there already. A
   * feed on the GPU is copied from the buffer holding it; when that buffer is itself the
   * destination of another feed of this run (an action that swaps two tensors: each new value
   * lives in the other's input buffer), every such copy goes through a temporary buffer first, so
   * no copy reads a buffer another has overwritten. Returns the temporaries, to destroy after the
   * run.
   */
  private upload(
    encoder: GPUCommandEncoder,
    loaded: Loaded,
    names: readonly string[],
    feeds: ReadonlyMap<string, Tensor>,
  ): GPUBuffer[] {
    const byName = new Map(loaded.plan.inputs.map((i) => [i.name, i]));
    const moves: {
      dst: GPUBuffer;
      t: Tensor;
      dtype: string;
      bytes: number;
      packed?: number;
      src?: GPUBuffer;
    }[] = [];
    for (const name of names) {
      const input = byName.get(name)!;
      const t = feeds.get(name);
      if (!t) throw new Error(`webgpu: no feed for input "${name}"`);
      const n = numel(input.shape);
      const count = t instanceof DeviceTensor ? numel(t.shape) : t.data.length;
      if (count !== n)
        throw new Error(`webgpu: the feed for "${name}" has ${count} values, needs ${n}`);
      // an inactive tensor's pooled state: nothing reads it. Which tensors are active is known
      // only from `prepareStep`: a step run without it would read placeholders as states.
      if (this.placeholder(loaded, input.buffer)) {
        if (loaded.lastStep === undefined)
          throw new Error(
            `webgpu: "${name}" is a pooled state: call prepareStep before running the step program`,
          );
        continue;
      }
      const dst = loaded.buffers[input.buffer]!;
      if (this.contents.get(dst)?.deref() === t) continue;
      // packed (or converted to f16) on the host (the tensor was synced by `run`): the buffer
      // holds no Tensor's layout
      if (input.packed) {
        moves.push({ dst, t, dtype: input.dtype, bytes: 0, packed: input.packed });
        continue;
      }
      const src = this.resident.get(t);
      const onGpu = src && src !== dst && this.contents.get(src)?.deref() === t;
      moves.push({ dst, t, dtype: input.dtype, bytes: 4 * n, ...(onGpu ? { src } : {}) });
    }
    const targets = new Set(moves.map((m) => m.dst));
    const temporaries: GPUBuffer[] = [];
    if (moves.some((m) => m.src && targets.has(m.src))) {
      const first = this.device.createCommandEncoder();
      for (const m of moves) {
        if (!m.src || m.bytes === 0) continue;
        const temp = this.device.createBuffer({
          size: m.bytes,
          usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
        });
        first.copyBufferToBuffer(m.src, 0, temp, 0, m.bytes);
        temporaries.push(temp);
        m.src = temp;
      }
      this.device.queue.submit([first.finish()]); // before the host writes below overwrite a source
    }
    for (const m of moves) {
      if (m.packed) {
        const words = m.packed === 16 ? halfWords(m.t.data) : packIntegers(m.t.data, m.packed);
        this.write(m.dst, words, words.byteLength);
      } else if (m.src) {
        if (m.bytes > 0) encoder.copyBufferToBuffer(m.src, 0, m.dst, 0, m.bytes);
      } else if (m.bytes > 0) {
        const t = m.t;
        // in the input's dtype: ids held as floats are truncated, f64 values rounded to f32
        const data =
          m.dtype === "i32"
            ? t.data instanceof Int32Array
              ? t.data
              : Int32Array.from(t.data, Math.trunc)
            : t.data instanceof Float32Array
              ? t.data
              : Float32Array.from(t.data);
        this.write(m.dst, data, m.bytes);
      }
    }
    for (const m of moves)
      if (m.packed) this.contents.set(m.dst, new WeakRef(m.t));
      else this.hold(m.dst, m.t);
    return temporaries;
  }

  /**
   * Writes the first `bytes` of `data` to the start of `dst`, WRITE_CHUNK bytes at a time: the
   * queue copies what it is given into a staging area of its own, so a tensor of hundreds of MiB
   * written at once was held twice more; a chunk at a time it is held once, plus a chunk.
   */
  private write(dst: GPUBuffer, data: ArrayBufferView, bytes: number): void {
    for (let at = 0; at < bytes; at += WRITE_CHUNK)
      this.device.queue.writeBuffer(
        dst,
        at,
        data.buffer,
        data.byteOffset + at,
        Math.min(WRITE_CHUNK, bytes - at),
      );
  }

  /** An entry's outputs: read back those in `readBuffers`, DeviceTensors for the others. */
  private async outputs(
    loaded: Loaded,
    e: LoadedEntry,
    outputs: Plan["entries"][string]["outputs"],
    readBuffers: ReadonlySet<number>,
  ): Promise<Map<string, Tensor>> {
    const out = new Map<string, Tensor>();
    const made = new Map<string, Tensor>();
    for (const o of outputs) {
      // an inactive tensor's pooled state holds nothing: zeros, as it restarts
      if (this.placeholder(loaded, o.buffer)) {
        const n = numel(o.shape);
        out.set(o.name, {
          shape: [...o.shape],
          data: o.dtype === "i32" ? new Int32Array(n) : new Float32Array(n),
        });
        continue;
      }
      if (!readBuffers.has(o.buffer) || e.stagingAt.has(o.buffer)) continue;
      const key = `${o.buffer}:${o.dtype}`;
      let t = made.get(key);
      if (!t) {
        const bytes = await this.readBack(loaded.buffers[o.buffer]!, 4 * numel(o.shape));
        t = {
          shape: [...o.shape],
          data: o.dtype === "i32" ? new Int32Array(bytes) : new Float32Array(bytes),
        };
        made.set(key, t);
        this.hold(loaded.buffers[o.buffer]!, t);
      }
      out.set(o.name, t);
    }
    for (const o of outputs) {
      if (this.placeholder(loaded, o.buffer)) continue;
      if (readBuffers.has(o.buffer)) continue;
      const key = `${o.buffer}:${o.dtype}`;
      let t = made.get(key);
      if (!t) {
        t = new DeviceTensor([...o.shape], o.dtype === "i32" ? "i32" : "f32");
        made.set(key, t);
        this.hold(loaded.buffers[o.buffer]!, t);
      }
      out.set(o.name, t);
    }
    if (!e.staging || readBuffers.size === 0) return out;
    await e.staging.mapAsync(GPUMapMode.READ);
    const bytes = e.staging.getMappedRange();
    for (const o of outputs) {
      if (
        !readBuffers.has(o.buffer) ||
        !e.stagingAt.has(o.buffer) ||
        this.placeholder(loaded, o.buffer)
      )
        continue;
      const n = numel(o.shape);
      const at = e.stagingAt.get(o.buffer)!;
      const key = `${o.buffer}:${o.dtype}`;
      let t = made.get(key);
      if (!t) {
        const slice = bytes.slice(at, at + 4 * n);
        t = {
          shape: [...o.shape],
          data: o.dtype === "i32" ? new Int32Array(slice) : new Float32Array(slice),
        };
        made.set(key, t);
        this.hold(loaded.buffers[o.buffer]!, t);
      }
      out.set(o.name, t);
    }
    e.staging.unmap();
    return out;
  }

  /**
   * Device time of each kernel of an entry, from timestamp queries around each dispatch (its own
   * compute pass): runs the entry once with `feeds` (compiling and uploading), then `repeats` more
   * times, and returns each dispatch's median in milliseconds, in dispatch order. Undefined when
   * the adapter has no timestamp queries.
   */
  async profile(
    program: GraphProgram,
    entry: Entry,
    feeds: ReadonlyMap<string, Tensor>,
    repeats = 5,
  ): Promise<{ kernel: number; ms: number }[] | undefined> {
    if (!this.device.features.has("timestamp-query")) return undefined;
    await this.run(program, entry, feeds);
    const loaded = this.loadedOf(program);
    const c = { plan: loaded.plan, ...this.entryOf(loaded, entry.name) };
    const dispatches = c.plan.entries[entry.name]!.dispatches.filter((k) =>
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
    const all = [...new Set(tensors)].filter(
      (t): t is DeviceTensor => t instanceof DeviceTensor && !t.onHost,
    );
    const large = all.filter((t) => 4 * numel(t.shape) > READ_CHUNK);
    for (const t of large) {
      const buffer = this.resident.get(t);
      if (!buffer || this.contents.get(buffer)?.deref() !== t)
        throw new Error("webgpu: a device tensor was overwritten before it was read back");
      const bytes = await this.readBack(buffer, 4 * numel(t.shape));
      t.settle(t.dtype === "i32" ? new Int32Array(bytes) : new Float32Array(bytes));
    }
    const pending = all.filter((t) => 4 * numel(t.shape) <= READ_CHUNK);
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

  /** The first `bytes` of `src`, read READ_CHUNK bytes at a time (see READ_CHUNK). */
  private async readBack(src: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
    const out = new ArrayBuffer(bytes);
    const gpu = this.device;
    const staging = gpu.createBuffer({
      size: Math.max(4, Math.min(READ_CHUNK, bytes)),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    try {
      for (let at = 0; at < bytes; at += READ_CHUNK) {
        const n = Math.min(READ_CHUNK, bytes - at);
        const encoder = gpu.createCommandEncoder();
        encoder.copyBufferToBuffer(src, at, staging, 0, n);
        gpu.queue.submit([encoder.finish()]);
        await staging.mapAsync(GPUMapMode.READ, 0, n);
        new Uint8Array(out, at, n).set(new Uint8Array(staging.getMappedRange(0, n)));
        staging.unmap();
      }
    } finally {
      staging.destroy();
    }
    return out;
  }

  /** Records that `buffer` now holds `t` (and no longer what it held before). */
  private hold(buffer: GPUBuffer, t: Tensor): void {
    const before = this.contents.get(buffer)?.deref();
    if (before && this.resident.get(before) === buffer) this.resident.delete(before);
    this.contents.set(buffer, new WeakRef(t));
    this.resident.set(t, buffer);
  }

  /** An entry's pipelines and bind groups, made at its first run. */
  private entryOf(loaded: Loaded, name: string): LoadedEntry {
    const known = loaded.entries.get(name);
    if (known) return known;
    const { plan, buffers } = loaded;
    const pe = plan.entries[name];
    if (!pe) throw new Error(`webgpu: the plan has no entry "${name}"`);
    const gpu = this.device;
    const pipelines: GPUComputePipeline[] = [];
    const bindGroups: GPUBindGroup[] = [];
    const binders: (() => void)[] = [];
    const uniforms: GPUBuffer[] = [];
    const checks: Promise<string | undefined>[] = [];
    let flagged = false;
    for (const id of pe.dispatches) {
      const k = plan.kernels[id]!;
      // WGSL errors are caught by the scope too (not printed by Dawn as uncaptured errors)
      gpu.pushErrorScope("validation");
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
      const entries: GPUBindGroupEntry[] = [];
      if (k.params) {
        const uniform = this.uniform(k.params);
        uniforms.push(uniform);
        const binding = k.bindings.length;
        layoutEntries.push({
          binding,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: "uniform" },
        });
        entries.push({ binding, resource: { buffer: uniform } });
      }
      if (k.gatherFlag !== undefined) {
        flagged = true;
        loaded.gatherFlag ??= gpu.createBuffer({
          size: 8,
          usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
        });
        layoutEntries.push({
          binding: k.gatherFlag,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: "storage" },
        });
        entries.push({ binding: k.gatherFlag, resource: { buffer: loaded.gatherFlag } });
      }
      const layout = gpu.createBindGroupLayout({ entries: layoutEntries });
      pipelines[id] = gpu.createComputePipeline({
        label: k.name,
        layout: gpu.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module, entryPoint: k.entryPoint },
      });
      // the storage bindings from the loaded buffers as they are now (pooled states change)
      const bind = () =>
        (bindGroups[id] = gpu.createBindGroup({
          layout,
          entries: [
            // a chunk of a buffer over one storage binding is a view of it (memory-plan.ts); a
            // pooled state's placeholder is bound whole
            ...k.bindings.map((b, i) => ({
              binding: i,
              resource:
                b.offset !== undefined && !this.placeholder(loaded, b.buffer)
                  ? { buffer: buffers[b.buffer]!, offset: b.offset, size: b.size! }
                  : { buffer: buffers[b.buffer]! },
            })),
            ...entries,
          ],
        }));
      bind();
      binders.push(bind);
      checks.push(
        gpu.popErrorScope().then(async (error) => {
          if (!error) return undefined;
          const info = await module.getCompilationInfo().catch(() => ({ messages: [] }));
          const lines = info.messages.map((m) => `  ${m.lineNum}:${m.linePos} ${m.message}`);
          return `kernel "${k.name}": ${error.message}\n${lines.join("\n")}\n${k.wgsl}`;
        }),
      );
    }
    const stagingAt = new Map<number, number>();
    let total = 0;
    for (const o of pe.outputs) {
      if (stagingAt.has(o.buffer)) continue;
      if (plan.buffers[o.buffer]!.bytes > READ_CHUNK) continue; // read back piece by piece
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
      if (bad.length)
        throw new PipelineError(
          bad.map((b) => b.slice(0, b.indexOf("\n"))),
          bad.join("\n"),
        );
    });
    // Awaited by every run; marked handled here so that a rejection before the first await
    // (or with no run left to await it) is never an unhandled rejection that kills the process.
    ready.catch(() => {});
    const e: LoadedEntry = {
      name,
      pipelines,
      bindGroups,
      rebind: () => binders.forEach((bind) => bind()),
      uniforms,
      staging,
      stagingAt,
      ready,
      waiter: new GpuWaiter(),
      runs: 0,
      packedInputs: plan.inputs
        .filter((i) => i.packed && pe.inputs.includes(i.name))
        .map((i) => i.name),
      ...(flagged
        ? {
            flagStaging: gpu.createBuffer({
              size: 8,
              usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
            }),
          }
        : {}),
    };
    loaded.entries.set(name, e);
    return e;
  }

  /** A uniform buffer of u32 kernel parameters (sizes a shader reads at run time). */
  private uniform(params: readonly number[]): GPUBuffer {
    const data = Uint32Array.from(
      { length: Math.max(4, Math.ceil(params.length / 4) * 4) },
      (_, i) => params[i] ?? 0,
    );
    const uniform = this.device.createBuffer({
      size: data.byteLength,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.device.queue.writeBuffer(uniform, 0, data);
    return uniform;
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const loaded of this.all) {
      for (const b of loaded.buffers) b.destroy();
      loaded.gatherFlag?.destroy();
      for (const e of loaded.entries.values()) {
        for (const u of e.uniforms) u.destroy();
        e.staging?.destroy();
        e.flagStaging?.destroy();
      }
    }
    this.device.destroy();
  }
}

/**
 * An output that stayed in its GPU buffer: its `data` is readable once the device's `sync` has
 * read it back. Feeding it to the device that made it needs no upload.
 */
/**
 * Values as f16 bits (an input stored as f16: `storage` in compiler/program.ts), padded to whole
 * 4-byte words (what a buffer write takes).
 */
function halfWords(values: ArrayLike<number>): Uint16Array {
  const bits = toHalfBits(values);
  if (bits.length % 2 === 0) return bits;
  const padded = new Uint16Array(bits.length + 1);
  padded.set(bits);
  return padded;
}

/**
 * Integers packed `bits` (2, 4 or 8) to a field, 32 / bits to a u32 word, element i in word
 * i / (32 / bits) from the low bits up, in two's complement: the layout kernels unpack
 * (compiler/wgsl.ts `BindingTable.load`). Values must be integers that fit the field.
 */
export function packIntegers(values: ArrayLike<number>, bits: number): Uint32Array {
  const perWord = 32 / bits;
  const words = new Uint32Array(Math.max(1, Math.ceil(values.length / perWord)));
  const mask = 2 ** bits - 1;
  const [lo, hi] = [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1];
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (!Number.isInteger(v) || v < lo || v > hi)
      throw new Error(`webgpu: ${v} at ${i} does not fit a packed ${bits}-bit integer`);
    words[Math.floor(i / perWord)]! |= (v & mask) << ((i % perWord) * bits);
  }
  return words;
}

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

/** Storage buffers' usage (a function: Dawn defines GPUBufferUsage once it is loaded). */
const storageUsage = () =>
  GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

/**
 * The buffers that hold pooled states in a step program's plan (its inputs and outputs named
 * `state:<name>`), with each state's condition.
 */
function pooledBuffers(program: GraphProgram, plan: Plan): Map<number, PooledBuffer> {
  const out = new Map<number, PooledBuffer>();
  const states = (program as Partial<StepProgram>).states ?? [];
  const byName = new Map(states.flatMap((s) => (s.pooled ? [[`state:${s.name}`, s]] : [])));
  if (byName.size === 0) return out;
  const tensors = [...plan.inputs, ...Object.values(plan.entries).flatMap((e) => e.outputs)];
  for (const t of tensors) {
    const s = byName.get(t.name);
    if (s && !out.has(t.buffer))
      out.set(t.buffer, { name: s.name, holds: s.pooled!.holds, period: s.period, active: false });
  }
  return out;
}

/** A pooled state's buffer: whether its tensor is active now, and when it may become so. */
interface PooledBuffer {
  name: string;
  holds: (step: number) => boolean;
  period?: number;
  active: boolean;
}
