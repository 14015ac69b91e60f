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
