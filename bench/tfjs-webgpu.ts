// tfjs with @tensorflow/tfjs-backend-webgpu on the same Dawn GPU instance lrk uses (runtime/gpu.ts),
// under Node 20: the backend checks `navigator.gpu` when it is imported, so the instance (kept
// alive by runtime/gpu.ts) is installed as `navigator.gpu` first and the packages are imported
// after. See shared/design/webgpu-notes.md, "tfjs-webgpu as a comparison baseline".
import { gpu } from "../runtime/gpu.js";

export type Tf = typeof import("@tensorflow/tfjs");

/** What the benchmark needs from tfjs-webgpu's backend object (WebGPUBackend). */
export interface TfWebGpuBackend {
  device: GPUDevice;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
}

/** Submits what tfjs has recorded but not yet submitted, as tfjs itself does before a read. */
export function flush(backend: TfWebGpuBackend): void {
  backend.ensureCommandEncoderReady();
  backend.endComputePassEncoder();
  backend.submitQueue();
}

export async function tfjsWebGpu(): Promise<{ tf: Tf; backend: TfWebGpuBackend }> {
  const instance = await gpu(); // also installs Dawn's globals (GPUBufferUsage, ...)
  const g = globalThis as { navigator?: { gpu?: GPU } };
  if (!g.navigator) Object.defineProperty(globalThis, "navigator", { value: {}, writable: true });
  if (!g.navigator!.gpu) Object.defineProperty(g.navigator!, "gpu", { value: instance });
  const tf = await import("@tensorflow/tfjs");
  await import("@tensorflow/tfjs-backend-webgpu");
  if (!(await tf.setBackend("webgpu"))) throw new Error("tfjs could not start its webgpu backend");
  await tf.ready();
  return { tf, backend: tf.backend() as unknown as TfWebGpuBackend };
}

/** What tfjs-webgpu recorded since the last `reset()`. */
export interface TfDispatchCount {
  /** Compute dispatches (one per GPU kernel call). */
  dispatches: number;
  /** Bytes of the tensors those dispatches bound: every input and the output, once each. */
  bytes: number;
  /** Queue submits (tfjs submits every WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE dispatches and on reads). */
  submits: number;
  reset(): void;
}

/**
 * Counts tfjs-webgpu's dispatches by wrapping the backend's `recordAndSubmit` (its one place that
 * records a dispatch; tfjs exposes only a per-pass count that resets on every submit) and
 * `submitQueue`. Ops tfjs forwards to its CPU backend (WEBGPU_CPU_FORWARD: small tensors not yet
 * on the GPU) dispatch nothing and are not counted.
 */
export function countDispatches(backend: TfWebGpuBackend): TfDispatchCount {
  interface Info {
    shape: number[];
    dtype: string;
  }
  const b = backend as unknown as {
    recordAndSubmit: (program: unknown, output: Info, inputs: Info[], ...rest: unknown[]) => void;
    submitQueue: () => void;
  };
  const bytes = (t: Info) => t.shape.reduce((a, c) => a * c, 1) * (t.dtype === "complex64" ? 8 : 4);
  const count: TfDispatchCount = {
    dispatches: 0,
    bytes: 0,
    submits: 0,
    reset() {
      count.dispatches = count.bytes = count.submits = 0;
    },
  };
  const record = b.recordAndSubmit.bind(backend);
  b.recordAndSubmit = (program, output, inputs, ...rest) => {
    count.dispatches++;
    count.bytes += bytes(output) + inputs.reduce((s, t) => s + bytes(t), 0);
    record(program, output, inputs, ...rest);
  };
  const submit = b.submitQueue.bind(backend);
  b.submitQueue = () => {
    count.submits++;
    submit();
  };
  return count;
}
