// Matmul parameterizations side by side on the shapes a LoRA training step really runs
// (examples/lora_finetune.lrk at batch 64: 576 tokens, d 128, MLP 512, rank 8), device-timed.
//
//   npm run build && node dist/bench/matmul-shapes.js [--rounds N] [--only SUBSTRING] [--all]
//       [--baseline DIR]
//
// For each shape every candidate of `matmulCandidates` (with --all, also a few extra
// parameterizations) is compiled and warmed up, then timed in rounds: each round runs every
// candidate once, in turn, so drift in the machine's speed (other processes on a shared machine)
// hits all alike. A run is timed by timestamp queries; we sleep past its expected end before
// awaiting (a pending Dawn promise busy-polls a core). Two figures per candidate, medians over
// rounds: the CPU time of the process's worker threads during the run (lavapipe runs kernels on
// them: the work a kernel costs, nearly independent of what else the shared machine runs; the
// ratios use it) and the device time (timestamps; grows with the machine's load). The default
// (`--no-autotune`) choice is marked with *.
//
// --baseline DIR: also time the kernels of another build of the template (DIR/compiler/kernels/
// matmul.js, e.g. the previous commit's `dist`), marked "base", in the same rounds: before/after
// figures measured side by side.

import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { describeMatmulParams, matmulKernel } from "../compiler/kernels/matmul.js";
import { defaultMatmulParams, matmulCandidates } from "../compiler/kernels/matmul.js";
import type { MatmulParams, MatmulShape } from "../compiler/kernels/types.js";
import { dispatchKernel, kernelBindGroup, kernelPipeline } from "../runtime/autotune.js";
import { requestAdapter, requestDevice, summarize } from "../runtime/gpu.js";
import { workerCpuNs } from "./cpu-time.js";

const args = process.argv.slice(2);
const option = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const rounds = Number(option("--rounds") ?? 7);
const only = option("--only");

const shape = (m: number, n: number, k: number, layout: string, batch = 1): MatmulShape => ({
  batch,
  m,
  n,
  k,
  transA: layout[0] === "T",
  transB: layout[1] === "T",
});

/** The step's matmuls (m × n × k, layout), from `bench/profile.js examples/lora_finetune.lrk`. */
const SHAPES: MatmulShape[] = [
  shape(576, 512, 128, "NN"),
  shape(576, 512, 128, "NT"),
  shape(576, 128, 512, "NN"),
  shape(576, 128, 512, "NT"),
  shape(576, 128, 128, "NT"),
  shape(128, 128, 576, "TN"),
  shape(576, 8, 512, "NT"),
  shape(512, 8, 576, "TN"),
  shape(576, 8, 128, "NT"),
  shape(576, 8, 128, "NN"),
  shape(8, 128, 576, "TN"),
  shape(128, 8, 576, "TN"),
  shape(9, 9, 32, "NN", 256), // attention scores: batch·heads, 9 tokens, head dim 32
  shape(1024, 1024, 1024, "NN"),
];

const p = (
  variant: MatmulParams["variant"],
  rowsPerThread: number,
  colsPerThread: number,
  workgroupX: number,
  workgroupY: number,
  tileK = 0,
): MatmulParams => ({
  variant,
  rowsPerThread,
  colsPerThread,
  workgroupX,
  workgroupY,
  tileK,
  vectorWidth: 4,
});

/** Parameterizations outside the candidate lists, for exploring (--all). */
const EXTRA: MatmulParams[] = [
  p("subgroup", 3, 32, 1, 8),
  p("subgroup", 8, 16, 1, 8),
  p("subgroup", 8, 8, 1, 8),
  // stepping k by 4 (or 2) per iteration where B is k-major: 8 × 16 ran the fewest instructions
  // per multiply-add in lavapipe's code (4.3 per 8, against 4.9 for 4 × 32)
  { ...p("subgroup", 8, 16, 1, 8), kUnroll: 4 },
  { ...p("subgroup", 4, 32, 1, 8), kUnroll: 2 },
];

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
};

type Template = Pick<
  typeof import("../compiler/kernels/matmul.js"),
  "matmulKernel" | "matmulCandidates" | "defaultMatmulParams" | "describeMatmulParams"
>;

async function main(): Promise<void> {
  const baselineDir = option("--baseline");
  const baseline: Template | undefined = baselineDir
    ? await import(pathToFileURL(resolve(baselineDir, "compiler/kernels/matmul.js")).href)
    : undefined;
  const gpuAdapter = await requestAdapter();
  const adapter = summarize(gpuAdapter);
  const device = await requestDevice(gpuAdapter);
  if (!device.features.has("timestamp-query")) throw new Error("needs timestamp-query");
  const features = new Set([...device.features]);
  console.log(`adapter: ${adapter.description}; median of ${rounds} rounds, device-timed`);
  const label = (s: MatmulShape) =>
    `${s.batch > 1 ? `${s.batch}x` : ""}${s.m}x${s.n}x${s.k} ${s.transA ? "T" : "N"}${s.transB ? "T" : "N"}`;

  for (const s of SHAPES) {
    if (only && !label(s).includes(only)) continue;
    const seen = new Set<string>();
    const list: { tag: string; template: Template; params: MatmulParams }[] = [];
    const add = (tag: string, template: Template, params: MatmulParams) => {
      const key = `${tag} ${describeMatmulParams(params)} tk${params.tileK}`;
      if (!seen.has(key)) list.push({ tag, template, params });
      seen.add(key);
    };
    const current: Template = {
      matmulKernel,
      matmulCandidates,
      defaultMatmulParams,
      describeMatmulParams,
    };
    const dflt = defaultMatmulParams(s, features, adapter);
    add("", current, dflt);
    for (const c of matmulCandidates(s, features)) add("", current, c);
    if (args.includes("--all")) for (const c of EXTRA) add("", current, c);
    if (baseline) {
      add("base", baseline, baseline.defaultMatmulParams(s, features, adapter));
      if (args.includes("--all"))
        for (const c of baseline.matmulCandidates(s, features)) add("base", baseline, c);
    }
    const buffers = [s.m * s.k, s.k * s.n, s.m * s.n]
      .map((count) => s.batch * count)
      .map((count) => device.createBuffer({ size: count * 4, usage: GPUBufferUsage.STORAGE }));
    const querySet = device.createQuerySet({ type: "timestamp", count: 2 });
    const resolveBuffer = device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    const read = device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const runs = list.map(({ tag, template, params }) => {
      const kernel = template.matmulKernel(s, params, { a: 0, b: 1, out: 2 });
      const pipeline = kernelPipeline(device, kernel);
      const bindGroup = kernelBindGroup(device, pipeline, buffers);
      let expected = 0;
      const cpu: number[] = [];
      return {
        tag,
        params,
        compileMs: 0,
        ms: [] as number[],
        cpu,
        run: async (): Promise<number> => {
          const cpu0 = workerCpuNs();
          dispatchKernel(device, pipeline, bindGroup, kernel.dispatch, {
            querySet,
            beginningOfPassWriteIndex: 0,
            endOfPassWriteIndex: 1,
          });
          const enc = device.createCommandEncoder();
          enc.resolveQuerySet(querySet, 0, 2, resolveBuffer, 0);
          enc.copyBufferToBuffer(resolveBuffer, 0, read, 0, 16);
          device.queue.submit([enc.finish()]);
          if (expected > 0) await sleep(expected * 1.1 + 0.5);
          await read.mapAsync(GPUMapMode.READ);
          const t = new BigUint64Array(read.getMappedRange().slice(0));
          read.unmap();
          cpu.push((workerCpuNs() - cpu0) / 1e6);
          const ms = Number(t[1]! - t[0]!) / 1e6;
          expected = expected === 0 ? ms : Math.min(expected, ms);
          return ms;
        },
      };
    });
    for (const r of runs) {
      const t0 = performance.now();
      await r.run(); // lavapipe compiles here
      r.compileMs = performance.now() - t0;
      await r.run();
      r.cpu.length = 0;
    }
    for (let i = 0; i < rounds; i++) for (const r of runs) r.ms.push(await r.run());
    const flop = 2 * s.batch * s.m * s.n * s.k;
    console.log(`\n${label(s)}  (${(flop / 1e6).toFixed(1)} MFLOP)`);
    const best = Math.min(...runs.map((r) => median(r.cpu)));
    for (const r of runs) {
      const ms = median(r.ms);
      const cpu = median(r.cpu);
      const mark = r.params === dflt ? "*" : " ";
      console.log(
        `${mark} ${r.tag.padEnd(4)} ${describeMatmulParams(r.params).padEnd(30)} cpu ${cpu.toFixed(2).padStart(7)} ms ` +
          `${(cpu / best).toFixed(2)}×  device ${ms.toFixed(2).padStart(7)} ms ` +
          `${(flop / ms / 1e6).toFixed(1).padStart(5)} GFLOP/s (first dispatch ${r.compileMs.toFixed(0)} ms)`,
      );
    }
    for (const b of [...buffers, resolveBuffer, read]) b.destroy();
    querySet.destroy();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
