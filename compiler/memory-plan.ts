// Buffer assignment over the kernel order. Inputs and entry outputs get buffers of their own
// (they live across runs); activations and scratch live from the step that writes them first to
// the last step that reads them, and reuse freed buffers (first fit; else the largest free buffer
// grows; else a new one). Every tensor is checked against the device's buffer limits.
//
// A tensor larger than one storage binding (maxStorageBufferBindingSize) but within one buffer
// (maxBufferSize) is split: its buffer is bound as several chunks, views of it at offsets that
// are multiples of 256 bytes (minStorageBufferOffsetAlignment, and a whole number of every
// element type a kernel reads: f16, f32, vec4<f32>, packed words), each at most the binding
// limit. Kernels read and write it through an accessor that picks the chunk
// (compiler/kernels/render.ts `splitBindings`). Pooled buffers are reused only by tensors of as
// many chunks (a buffer within one binding stays so), so a kernel binds what fusion counted.

export type BufferRole =
  "param" | "state" | "data" | "scalar" | "activation" | "scratch" | "output";

export interface TensorNeed {
  key: string;
  bytes: number;
  role: BufferRole;
  /** A human name for messages and the plan (`%12`, `param:l1.weight`, `svd %40 scratch q`). */
  name: string;
}

export interface MemoryStep {
  /** Tensors this step reads. */
  reads: readonly string[];
  /** Tensors this step writes (its outputs and its scratch). */
  writes: readonly string[];
}

export interface PlannedBuffer {
  id: number;
  bytes: number;
  role: BufferRole;
  names: string[];
  /** A buffer over one storage binding: the views kernels bind, in order (see the top). */
  chunks?: BufferChunk[];
}

/** One binding's view of a split buffer. */
export interface BufferChunk {
  offset: number;
  bytes: number;
}

/** WebGPU's minStorageBufferOffsetAlignment (its default, and the most an adapter may ask). */
export const BINDING_ALIGNMENT = 256;

/**
 * The chunks of a buffer of `bytes` bound `limit` bytes at most at a time: whole multiples of
 * BINDING_ALIGNMENT but the last.
 */
export function bufferChunks(bytes: number, limit: number): BufferChunk[] {
  const size = Math.floor(limit / BINDING_ALIGNMENT) * BINDING_ALIGNMENT;
  if (size <= 0) throw new Error(`a storage binding limit of ${limit} bytes holds no chunk`);
  const chunks: BufferChunk[] = [];
  for (let offset = 0; offset < bytes; offset += size)
    chunks.push({ offset, bytes: Math.min(size, bytes - offset) });
  return chunks;
}

export interface MemoryPlan {
  buffers: PlannedBuffer[];
  /** Tensor key → buffer id. */
  assignment: Map<string, number>;
  /** Bytes of all buffers together: they all exist while the plan runs. */
  peakBytes: number;
}

export interface BufferLimits {
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
}

/** A tensor larger than a buffer may be; the caller turns it into a diagnostic. */
export class BufferLimitError extends Error {
  constructor(
    readonly tensor: string,
    readonly bytes: number,
    readonly limit: number,
    readonly limitName: string,
  ) {
    const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
    super(
      `${tensor} needs a buffer of ${bytes} bytes (${mib(bytes)}), over the device's ${limitName} of ${limit} bytes (${mib(limit)})`,
    );
  }
}

/** A kernel that needs more storage bindings than the device has (a fusion the device can't run). */
export class BindingLimitError extends Error {
  constructor(
    readonly kernel: string,
    readonly bindings: number,
    readonly limit: number,
    /** `file:line` of the .lrk code the kernel computes. */
    readonly sourceLines: readonly string[],
    /** Of `bindings`, those that are chunks of tensors over one storage binding. */
    readonly chunkBindings = 0,
  ) {
    super(
      `the kernel "${kernel}" binds ${bindings} storage buffers${chunkBindings ? ` (${chunkBindings} of them chunks of tensors larger than one binding)` : ""}; the device allows ${limit} per kernel`,
    );
  }
}

/** Buffers are whole 4-byte words, and never empty. */
export function bufferBytes(bytes: number): number {
  return Math.max(4, Math.ceil(bytes / 4) * 4);
}

export function planMemory(
  tensors: readonly TensorNeed[],
  steps: readonly MemoryStep[],
  limits: BufferLimits,
): MemoryPlan {
  const byKey = new Map(tensors.map((t) => [t.key, t]));
  for (const t of tensors) {
    if (t.bytes > limits.maxBufferSize)
      throw new BufferLimitError(t.name, t.bytes, limits.maxBufferSize, "maxBufferSize");
  }
  const buffers: PlannedBuffer[] = [];
  const assignment = new Map<string, number>();
  const limit = limits.maxStorageBufferBindingSize;
  /** The bindings a tensor's buffer takes: 1, or its chunks' count. */
  const bindingsOf = (bytes: number) =>
    bytes > limit ? bufferChunks(bufferBytes(bytes), limit).length : 1;
  const make = (t: TensorNeed, role: BufferRole): number => {
    const id = buffers.length;
    buffers.push({ id, bytes: bufferBytes(t.bytes), role, names: [t.name] });
    assignment.set(t.key, id);
    return id;
  };
  // Dedicated buffers first: inputs in the order given, then outputs.
  const pooled = (t: TensorNeed) => t.role === "activation" || t.role === "scratch";
  for (const t of tensors) if (!pooled(t)) make(t, t.role);

  // Liveness of pooled tensors: last step touching each.
  const last = new Map<string, number>();
  steps.forEach((s, i) => {
    for (const k of [...s.reads, ...s.writes]) if (byKey.has(k)) last.set(k, i);
  });
  // One pool per binding count: a tensor reuses a buffer bound as many chunks as its own (what
  // fusion counted for its kernels), so a small tensor never lands in a split buffer, nor a split
  // tensor in a buffer of more chunks.
  const pools = new Map<number, FreeBuffers>();
  const poolOf = (bytes: number) => {
    const n = bindingsOf(bytes);
    let pool = pools.get(n);
    if (!pool) pools.set(n, (pool = new FreeBuffers(tensors.length)));
    return pool;
  };
  steps.forEach((s, i) => {
    for (const k of s.writes) {
      const t = byKey.get(k);
      if (!t || !pooled(t) || assignment.has(k)) continue;
      const need = bufferBytes(t.bytes);
      const free = poolOf(t.bytes);
      let id = free.firstAtLeast(need);
      if (id === undefined) {
        // Grow the largest free buffer rather than add one.
        id = free.largest();
        if (id !== undefined) buffers[id]!.bytes = need;
      }
      if (id !== undefined) {
        free.take(id);
        assignment.set(k, id);
        buffers[id]!.names.push(t.name);
        if (t.role === "activation" && buffers[id]!.role === "scratch")
          buffers[id]!.role = "activation";
      } else make(t, t.role);
    }
    // Free what this step used for the last time (after its outputs were placed).
    for (const k of new Set([...s.reads, ...s.writes])) {
      const t = byKey.get(k);
      if (t && pooled(t) && last.get(k) === i && assignment.has(k)) {
        const id = assignment.get(k)!;
        poolOf(t.bytes).put(id, buffers[id]!.bytes);
      }
    }
  });
  for (const t of tensors)
    if (!assignment.has(t.key)) throw new Error(`memory plan: ${t.name} is never written`);
  for (const b of buffers) if (b.bytes > limit) b.chunks = bufferChunks(b.bytes, limit);
  return { buffers, assignment, peakBytes: buffers.reduce((s, b) => s + b.bytes, 0) };
}

/**
 * The free pooled buffers, by id, for first-fit: the free buffer of least id that holds `need`
 * bytes, or else the largest (least id among equals). A tree of the largest free size under each
 * range of ids answers both in O(log n); scanning a list of free buffers (and sorting it at each
 * release) was quadratic in depth, as a deep model's backward pass frees one layer's activations
 * after another.
 */
class FreeBuffers {
  private readonly leaves: number;
  /** Node 1 is the root; node n's children are 2n and 2n + 1; leaf `leaves + id` is buffer id. */
  private readonly most: number[];

  constructor(capacity: number) {
    let leaves = 1;
    while (leaves < capacity) leaves *= 2;
    this.leaves = leaves;
    this.most = new Array<number>(2 * leaves).fill(-1);
  }

  put(id: number, bytes: number): void {
    this.set(id, bytes);
  }

  take(id: number): void {
    this.set(id, -1);
  }

  /** The free buffer of least id with at least `need` bytes. */
  firstAtLeast(need: number): number | undefined {
    if (this.most[1]! < need) return undefined;
    let n = 1;
    while (n < this.leaves) n = this.most[2 * n]! >= need ? 2 * n : 2 * n + 1;
    return n - this.leaves;
  }

  /** The largest free buffer (least id among equals). */
  largest(): number | undefined {
    return this.most[1]! < 0 ? undefined : this.firstAtLeast(this.most[1]!);
  }

  private set(id: number, bytes: number): void {
    let n = this.leaves + id;
    this.most[n] = bytes;
    for (n >>= 1; n >= 1; n >>= 1)
      this.most[n] = Math.max(this.most[2 * n]!, this.most[2 * n + 1]!);
  }
}
