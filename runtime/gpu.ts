// Opening a WebGPU device through Dawn's node bindings (npm `webgpu`), with the two facts that
// matter on every machine (see spec/compiler.md, "Devices"):
//  - the object `create()` returns must stay reachable for the life of the process, or the next
//    async Dawn call crashes it: it is kept in a module-level variable;
//  - a pending Dawn promise busy-polls a whole core, so waiting for the GPU first sleeps for most
//    of the expected time (learned from earlier waits) and only then awaits.
import { execFileSync, spawn } from "node:child_process";
import {
  closeSync,
  constants,
  fstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface AdapterSummary {
  description: string;
  vendor: string;
  architecture: string;
  fallback: boolean;
  features: string[];
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
}

let keepAlive: { create: unknown; gpu: GPU } | undefined;

/** Mesa writes to XDG_RUNTIME_DIR; without one it prints warnings on every run. */
function quietMesa(): void {
  if (process.env["XDG_RUNTIME_DIR"]) return;
  const dir = join(tmpdir(), `lrk-xdg-${process.getuid?.() ?? 0}`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  process.env["XDG_RUNTIME_DIR"] = dir;
}

export class NoAdapterError extends Error {
  constructor() {
    super("no WebGPU adapter found");
  }
  readonly help =
    "lrk needs a GPU driver with Vulkan, Metal or D3D12. On a machine without a GPU, install Mesa's lavapipe: on Debian 12 (as root) " +
    "`echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list && apt-get update && " +
    "apt-get install -t bookworm-backports mesa-vulkan-drivers` (version 25; the 22.x in bookworm itself is too old). " +
    "`bash scripts/setup.sh` does this for you. Or train with `--device cpu`.";
}

export async function gpu(): Promise<GPU> {
  if (keepAlive) return keepAlive.gpu;
  quietMesa();
  const webgpu = (await import("webgpu")) as unknown as {
    create: (flags: string[]) => GPU;
    globals: Record<string, unknown>;
  };
  Object.assign(globalThis, webgpu.globals);
  const instance = webgpu.create([]);
  keepAlive = { create: webgpu.create, gpu: instance };
  return instance;
}

/**
 * Dawn's notes on lavapipe's limits ("maxDynamicUniformBuffersPerPipelineLayout artificially
 * reduced from 1000000 to 16 …"), printed with fprintf(stderr) the first time it enumerates
 * adapters: harmless, and noise on every run.
 */
const DAWN_NOISE = /^Warning: maxDynamic\w+ artificially reduced.*\n?/gm;
let adapterEnumerated = false;

/**
 * Runs `enumerate` (the first requestAdapter) with file descriptor 2 pointing at a temporary
 * file, then writes what was printed there back to stderr without DAWN_NOISE: other messages
 * (a driver's real errors) still reach the user. Dawn writes from native code, so only the
 * descriptor itself can be redirected: closing 2 and opening a file takes the lowest free
 * descriptor, 2. A socket (what Node's `child_process` gives a child for "pipe") cannot be
 * reopened from /proc, so there stderr is routed through a filter process for the rest of the
 * run instead (`filterSocketStderr`). Where neither is possible (stderr closed, not Linux), or
 * anything is unexpected, it runs unfiltered.
 */
export async function withoutDawnNoise<T>(enumerate: () => Promise<T>): Promise<T> {
  if (process.platform !== "linux") return enumerate();
  let saved: number;
  let dir: string;
  try {
    saved = openSync("/proc/self/fd/2", "a");
    dir = mkdtempSync(join(tmpdir(), "lrk-dawn-"));
  } catch {
    filterSocketStderr();
    return enumerate();
  }
  const captured = join(dir, "stderr");
  closeSync(2);
  const fd = openSync(captured, "w+");
  const restore = () => {
    closeSync(fd);
    const back = openSync(`/proc/self/fd/${saved}`, "a");
    closeSync(saved);
    if (back !== 2) process.emitWarning(`lrk: stderr was reopened as descriptor ${back}`);
  };
  if (fd !== 2) {
    // another thread took descriptor 2 meanwhile: put stderr back, unfiltered
    restore();
    rmSync(dir, { recursive: true, force: true });
    return enumerate();
  }
  try {
    return await enumerate();
  } finally {
    restore();
    const text = readFileSync(captured, "utf8").replace(DAWN_NOISE, "");
    rmSync(dir, { recursive: true, force: true });
    if (text) process.stderr.write(text);
  }
}

/**
 * When stderr is a socket: a `grep` that drops DAWN_NOISE's lines holds the socket (inherited as
 * its stdout) and reads a FIFO that becomes this process's descriptor 2. It ignores SIGINT,
 * SIGTERM and SIGHUP, so that what lrk prints when it stops on a signal still gets through, and
 * it ends when this process does (end of file on the FIFO), however that ends. Best effort: on any
 * failure stderr stays as it was.
 */
function filterSocketStderr(): void {
  let dir: string | undefined;
  try {
    if (!fstatSync(2).isSocket()) return;
    dir = mkdtempSync(join(tmpdir(), "lrk-stderr-"));
    const fifo = join(dir, "stderr");
    execFileSync("mkfifo", ["-m", "600", fifo], { stdio: "ignore" });
    const filter = spawn(
      "sh",
      [
        "-c",
        `trap '' INT TERM HUP; exec grep -v --line-buffered -E '^Warning: maxDynamic[A-Za-z]+ artificially reduced' < "$0"`,
        fifo,
      ],
      { stdio: ["ignore", 2, 2] },
    );
    filter.on("error", () => {}); // no `sh` or `grep`: the open below times out, unfiltered
    filter.unref();
    if (filter.pid === undefined) return;
    // The writer's open fails (ENXIO) until the filter has the FIFO open for reading.
    let writer = -1;
    for (let waited = 0; writer < 0 && waited < 3000; waited += 5) {
      try {
        writer = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
      } catch {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
      }
    }
    if (writer < 0) {
      filter.kill("SIGKILL");
      return;
    }
    closeSync(2);
    const fd = openSync(`/proc/self/fd/${writer}`, "w"); // takes 2, the lowest free descriptor
    closeSync(writer);
    if (fd !== 2) process.emitWarning(`lrk: stderr was reopened as descriptor ${fd}`);
  } catch {
    // stderr stays unfiltered
  } finally {
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

export async function requestAdapter(): Promise<GPUAdapter> {
  const instance = await gpu();
  const enumerate = () => instance.requestAdapter({ powerPreference: "high-performance" });
  const first = !adapterEnumerated;
  adapterEnumerated = true;
  const adapter = await (first ? withoutDawnNoise(enumerate) : enumerate());
  if (!adapter) throw new NoAdapterError();
  return adapter;
}

export function summarize(adapter: GPUAdapter): AdapterSummary {
  const info = adapter.info;
  return {
    description: info.description || info.device || "unknown",
    vendor: info.vendor || "unknown",
    architecture: info.architecture || "unknown",
    fallback:
      (adapter as unknown as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
      info.architecture === "software",
    features: [...adapter.features].sort(),
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
    maxBufferSize: adapter.limits.maxBufferSize,
  };
}

/** A device with every optional feature lrk can use and the adapter's full buffer limits. */
export async function requestDevice(adapter: GPUAdapter): Promise<GPUDevice> {
  const wanted = ["shader-f16", "subgroups", "timestamp-query"].filter((f) =>
    adapter.features.has(f),
  ) as GPUFeatureName[];
  return adapter.requestDevice({
    requiredFeatures: wanted,
    requiredLimits: {
      maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
      maxBufferSize: adapter.limits.maxBufferSize,
      maxComputeInvocationsPerWorkgroup: adapter.limits.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: adapter.limits.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize,
      maxStorageBuffersPerShaderStage: adapter.limits.maxStorageBuffersPerShaderStage,
    },
  });
}

/** How long each turn of the event loop blocks while a wait is pending (ms). */
const POLL_BLOCK_MS = 0.2;
const pollBlocker = new Int32Array(new SharedArrayBuffer(4));

/**
 * Waits for submitted work without spinning the JavaScript thread: sleep for most of the time the
 * last waits took, then await. While the promise is pending Dawn's bindings poll its events from
 * the event loop, turn after turn (a whole core, which lavapipe's workers need on 2 cores), so each
 * turn also blocks the thread POLL_BLOCK_MS (Atomics.wait: asleep, not spinning): the poll runs a
 * few thousand times a second instead of as fast as it can, and notices the end as soon.
 */
export class GpuWaiter {
  private estimate = 0;

  async wait(device: GPUDevice): Promise<void> {
    const started = performance.now();
    if (this.estimate > 2) await new Promise((resolve) => setTimeout(resolve, this.estimate * 0.8));
    // handled at once: a rejection left pending over the turns below would be an unhandled one
    let outcome: { error?: unknown } | undefined;
    device.queue.onSubmittedWorkDone().then(
      () => (outcome = {}),
      (error: unknown) => (outcome = { error }),
    );
    while (!outcome) {
      Atomics.wait(pollBlocker, 0, 0, POLL_BLOCK_MS);
      await new Promise((resolve) => setImmediate(resolve));
    }
    if ("error" in outcome) throw outcome.error;
    const took = performance.now() - started;
    this.estimate = this.estimate === 0 ? took : 0.7 * this.estimate + 0.3 * took;
  }
}
