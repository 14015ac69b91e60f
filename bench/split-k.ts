// Split-k (compiler/kernels/split-k.ts) against the best single matmul kernel, device-timed, on
// the rank-r weight-gradient shapes of a LoRA step: [r, d] and [d, r] outputs with k = tokens.
//
//   npm run build && node dist/bench/split-k.js [--tokens 576,4096] [--runs 7]
//
// Per shape: the fastest of the template's candidates as one kernel, then per split S the
// fastest candidate for the chunks plus the sum kernel. Timestamps on lavapipe tick in ~0.066 ms.
import { matmulCandidates, matmulKernel } from "../compiler/kernels/matmul.js";
import {
  canSplitK,
  SPLIT_K_CHOICES,
  splitKChunkShape,
  splitKKernels,
} from "../compiler/kernels/split-k.js";
import type { KernelSource, MatmulShape } from "../compiler/kernels/types.js";
import { timeMatmulKernel } from "../runtime/autotune.js";
import { requestAdapter, requestDevice } from "../runtime/gpu.js";

const args = process.argv.slice(2);
const option = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const tokens = (option("--tokens") ?? "576,4096").split(",").map(Number);
const runs = Number(option("--runs") ?? 7);

async function main(): Promise<void> {
  const device = await requestDevice(await requestAdapter());
  const features = new Set([...device.features]);
  const buffer = (floats: number) =>
    device.createBuffer({
      size: 4 * Math.max(4, floats),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
    });
  for (const k of tokens)
    for (const [m, n] of [
      [8, 128],
      [128, 8],
      [8, 512],
      [512, 8],
    ] as const) {
      const shape: MatmulShape = { batch: 1, m, n, k, transA: true, transB: false };
      const [a, b, out, partials] = [
        buffer(k * m),
        buffer(k * n),
        buffer(m * n),
        buffer(16 * m * n),
      ];
      const time = async (kernel: KernelSource, bound: GPUBuffer[]) =>
        (await timeMatmulKernel(device, kernel, bound, runs)).ms;
      let single = Infinity;
      for (const p of matmulCandidates(shape, features))
        single = Math.min(
          single,
          await time(matmulKernel(shape, p, { a: 0, b: 1, out: 2 }), [a!, b!, out!]),
        );
      const row = [`${m}x${n}x${k} (TN): single ${single.toFixed(3)} ms`];
      for (const splits of SPLIT_K_CHOICES) {
        if (!canSplitK(shape, splits)) continue;
        let best = Infinity;
        for (const p of matmulCandidates(splitKChunkShape(shape, splits), features)) {
          const [chunks, sum] = splitKKernels(shape, splits, p, {
            a: 0,
            b: 1,
            partials: 2,
            out: 3,
          });
          best = Math.min(
            best,
            (await time(chunks!, [a!, b!, partials!])) + (await time(sum!, [partials!, out!])),
          );
        }
        row.push(`S=${splits} ${best.toFixed(3)} ms (${(single / best).toFixed(2)}×)`);
      }
      process.stdout.write(`${row.join(", ")}\n`);
      for (const x of [a, b, out, partials]) x!.destroy();
    }
  device.destroy();
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(2);
  },
);
