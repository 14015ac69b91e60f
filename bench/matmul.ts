// Matmul throughput on the current WebGPU adapter: lrk's autotuned kernel beside tfjs-webgpu on
// the same Dawn adapter, square m = n = k of 256..2048 and the skinny LoRA shape
// 1024×1024 · 1024×16; and, when a Python with numpy is present, OpenBLAS's sgemm on the CPU
// (bench/python.ts; run first, alone, so that it does not compete with lavapipe's threads).
//
//   npm run bench:matmul [-- --retune | --no-autotune | --runs N | --no-branch]
//
// Both are timed the same way, as a training step would wait for them: one submit per run, then
// sleep for most of the expected time before awaiting (GpuWaiter; a pending Dawn promise
// busy-polls a core, which on lavapipe takes CPU from the kernel itself). Compilation and warm-up
// runs are excluded; each figure is the median of several runs, lrk and tfjs alternating so that
// drift in the machine's speed hits both alike. lrk's device time (timestamp queries) is shown
// too. The outputs of the two are compared once per shape.
//
// Then (unless --no-branch) the fused-branch overhead table: the base GEMM tokens × 1024 × 1024
// alone and with a rank-8/16/64 low-rank branch fused in the matmul's tile, fused as the old
// per-element loop, or unfused, at 576 and 4096 tokens (bench/branch.ts).

import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describeMatmulParams, matmulKernel } from "../compiler/kernels/matmul.js";
import type { MatmulShape } from "../compiler/kernels/types.js";
import { matmulTemplate } from "../compiler/plan.js";
import { Autotuner, dispatchKernel, kernelBindGroup, kernelPipeline } from "../runtime/autotune.js";
import { GpuWaiter, requestAdapter, requestDevice, summarize } from "../runtime/gpu.js";
import { flush, tfjsWebGpu } from "./tfjs-webgpu.js";
import { openblasGflops } from "./python.js";
import { branchOverheadTable } from "./branch.js";

const args = process.argv.slice(2);
const flag = (name: string) => args.includes(name);
const runsArg = args.includes("--runs") ? Number(args[args.indexOf("--runs") + 1]) : undefined;

const SHAPES: { label: string; shape: MatmulShape }[] = [
  ...[256, 512, 1024, 2048].map((s) => ({
    label: `${s}²`,
    shape: { batch: 1, m: s, n: s, k: s, transA: false, transB: false },
  })),
  {
    label: "LoRA 1024×1024·1024×16",
    shape: { batch: 1, m: 1024, n: 16, k: 1024, transA: false, transB: false },
  },
];

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
};

function random(count: number, seed: number): Float32Array<ArrayBuffer> {
  let s = seed >>> 0;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

async function main(): Promise<void> {
  const gpuAdapter = await requestAdapter();
  const adapter = summarize(gpuAdapter);
  const device = await requestDevice(gpuAdapter);
  const timestamps = device.features.has("timestamp-query");
  const { tf, backend } = await tfjsWebGpu();

  const cacheFile = flag("--retune")
    ? join(mkdtempSync(join(tmpdir(), "lrk-bench-")), "autotune.json")
    : undefined;
  const tuner = new Autotuner(device, adapter, matmulTemplate, {
    cacheFile,
    enabled: !flag("--no-autotune"),
    log: (line) => console.log(`  ${line}`),
  });

  console.log(`adapter: ${adapter.description} (${adapter.vendor}, ${adapter.architecture})`);
  console.log(`autotune cache: ${flag("--no-autotune") ? "off (defaults)" : tuner.cacheFile}`);
  const blas = openblasGflops(SHAPES.map((s) => s.shape));
  console.log(
    blas
      ? `OpenBLAS: ${blas.blas} (${blas.python})`
      : "OpenBLAS: no python3 with numpy found; its column is left out",
  );
  const rows: string[][] = [];

  for (const { label, shape } of SHAPES) {
    const { m, n, k } = shape;
    const flop = 2 * m * n * k;
    const tuneStart = performance.now();
    const params = await tuner.matmul(shape);
    const tuneMs = performance.now() - tuneStart;
    if (tuneMs > 100) console.log(`  ${label}: tuned in ${(tuneMs / 1000).toFixed(1)} s`);

    // lrk
    const a = random(m * k, 1);
    const b = random(k * n, 2);
    const kernel = matmulKernel(shape, params, { a: 0, b: 1, out: 2 });
    const buffers = [a, b, new Float32Array(m * n)].map((data) => {
      const buffer = device.createBuffer({
        size: data.byteLength,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
      });
      device.queue.writeBuffer(buffer, 0, data);
      return buffer;
    });
    const pipeline = kernelPipeline(device, kernel);
    const bindGroup = kernelBindGroup(device, pipeline, buffers);
    const querySet = timestamps
      ? device.createQuerySet({ type: "timestamp", count: 2 })
      : undefined;
    const resolve = device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    const stamps = device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const lrkWaiter = new GpuWaiter();
    const lrkRun = async (stamp: boolean): Promise<number> => {
      const t0 = performance.now();
      dispatchKernel(
        device,
        pipeline,
        bindGroup,
        kernel.dispatch,
        stamp && querySet
          ? { querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 }
          : undefined,
      );
      await lrkWaiter.wait(device);
      return performance.now() - t0;
    };

    // tfjs
    const ta = tf.tensor2d(a, [m, k]);
    const tb = tf.tensor2d(b, [k, n]);
    const tfWaiter = new GpuWaiter();
    const tfRun = async (): Promise<number> => {
      const t0 = performance.now();
      const c = tf.matMul(ta, tb);
      flush(backend);
      await tfWaiter.wait(backend.device);
      const took = performance.now() - t0;
      c.dispose();
      return took;
    };

    // Warm-up, excluded: first dispatches (lavapipe compiles then), then alternating runs until
    // both waiters have learned how long to sleep (their estimate decays ~6% a run from above).
    const started = performance.now();
    dispatchKernel(device, pipeline, bindGroup, kernel.dispatch);
    await device.queue.onSubmittedWorkDone();
    const tfOut = tf.matMul(ta, tb);
    const tfData = (await tfOut.data()) as Float32Array;
    tfOut.dispose();
    const firstMs = performance.now() - started;
    const probe = Math.max(await lrkRun(false), await tfRun());
    const warmups = Math.max(4, Math.min(12, Math.round(3000 / probe)));
    for (let i = 0; i < warmups; i++) {
      await lrkRun(false);
      await tfRun();
    }
    console.log(
      `  ${label}: first dispatches ${(firstMs / 1000).toFixed(1)} s, ${warmups} warm-up runs`,
    );

    // Both compute the same product: compare once.
    const read = device.createBuffer({
      size: m * n * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const encoder = device.createCommandEncoder();
    encoder.copyBufferToBuffer(buffers[2]!, 0, read, 0, m * n * 4);
    device.queue.submit([encoder.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    const ours = new Float32Array(read.getMappedRange().slice(0));
    read.destroy();
    let diff = 0;
    let scale = 0;
    for (let i = 0; i < m * n; i++) {
      diff = Math.max(diff, Math.abs(ours[i]! - tfData[i]!));
      scale = Math.max(scale, Math.abs(tfData[i]!));
    }
    if (!(diff <= 1e-3 * scale)) throw new Error(`${label}: lrk and tfjs differ by ${diff}`);

    // Measure, alternating: 5 to 25 runs of each, about 3 s in all.
    const runs = runsArg ?? Math.max(5, Math.min(25, Math.round(3000 / probe)));
    const lrkMs: number[] = [];
    const tfMs: number[] = [];
    const deviceMs: number[] = [];
    for (let r = 0; r < runs; r++) {
      lrkMs.push(await lrkRun(false));
      tfMs.push(await tfRun());
    }
    if (querySet) {
      // Device time: the kernel alone, sleeping past its end so nothing polls while it runs.
      for (let r = 0; r < Math.min(runs, 7); r++) {
        dispatchKernel(device, pipeline, bindGroup, kernel.dispatch, {
          querySet,
          beginningOfPassWriteIndex: 0,
          endOfPassWriteIndex: 1,
        });
        const enc = device.createCommandEncoder();
        enc.resolveQuerySet(querySet, 0, 2, resolve, 0);
        enc.copyBufferToBuffer(resolve, 0, stamps, 0, 16);
        device.queue.submit([enc.finish()]);
        await sleep(median(lrkMs) * 1.2 + 1);
        await stamps.mapAsync(GPUMapMode.READ);
        const t = new BigUint64Array(stamps.getMappedRange().slice(0));
        stamps.unmap();
        deviceMs.push(Number(t[1]! - t[0]!) / 1e6);
      }
    }
    const gf = (ms: number) => flop / ms / 1e6;
    const lrk = gf(median(lrkMs));
    const tfj = gf(median(tfMs));
    const blasGf = blas?.gflops[SHAPES.findIndex((s) => s.label === label)];
    rows.push([
      label,
      describeMatmulParams(params),
      lrk.toFixed(1),
      tfj.toFixed(1),
      `${(lrk / tfj).toFixed(2)}×`,
      deviceMs.length ? gf(median(deviceMs)).toFixed(1) : "–",
      ...(blasGf !== undefined ? [blasGf.toFixed(1), `${(lrk / blasGf).toFixed(2)}×`] : []),
      String(runs),
    ]);
    console.log(`  ${label}: lrk ${lrk.toFixed(1)}, tfjs ${tfj.toFixed(1)} GFLOP/s`);

    ta.dispose();
    tb.dispose();
    for (const buffer of [...buffers, resolve, stamps]) buffer.destroy();
    querySet?.destroy();
  }

  const header = [
    "shape",
    "lrk kernel (autotuned)",
    "lrk GFLOP/s",
    "tfjs-webgpu GFLOP/s",
    "lrk/tfjs",
    "lrk device-timed",
    ...(blas ? ["OpenBLAS GFLOP/s", "lrk/OpenBLAS"] : []),
    "runs",
  ];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    `| ${cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`;
  console.log();
  console.log(
    `matmul, f32, ${adapter.description}; median wall time per run (submit, sleep, await)`,
  );
  console.log(line(header));
  console.log(
    `|${widths.map((w, i) => (i < 2 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`,
  );
  for (const row of rows) console.log(line(row));
  if (flag("--no-branch")) return;
  console.log();
  for (const l of await branchOverheadTable(runsArg ?? 5)) console.log(l);
}

main().then(
  // Dawn keeps the process alive: exit explicitly.
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
