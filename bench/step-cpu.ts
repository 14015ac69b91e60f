// The CPU time a whole training step costs on lavapipe, where kernels run on this process's
// worker threads: unlike device or wall time, it hardly changes with what else the (shared)
// machine runs, so two builds can be compared in separate processes.
//
//   npm run build && node dist/bench/step-cpu.js FILE [--train NAME] [--steps N] [--no-autotune]
//                                                [--low-rank-max R]  (fuse LoRA branches up to rank R)
//                                                [--frozen-f16]  (frozen weights stored as f16)
//                                                [--max-binding BYTES]  (larger tensors bound in chunks)
//
// The step is run as `lrkc train` runs it (bench/profile.ts does the same), twice to warm up
// (lavapipe compiles at first dispatch), then N times (default 9); printed: the median CPU time of
// the worker threads per step, of the main thread (recording commands, waiting) and the median
// wall time.
import { readFileSync } from "node:fs";
import { SourceFile } from "../language/source.js";
import { loadPlans } from "../cli/target.js";
import { compileRun } from "../cli/train.js";
import { batchFeeds, initialize } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { mainCpuNs, workerCpuNs } from "./cpu-time.js";

const args = process.argv.slice(2);
const option = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const path = args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
if (!path) {
  process.stderr.write("usage: node dist/bench/step-cpu.js FILE [--train NAME] [--steps N]\n");
  process.exit(1);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

async function main(file: string): Promise<void> {
  const source = new SourceFile(file, readFileSync(file, "utf8"));
  const { run, diagnostics } = compileRun(source, {
    train: option("--train"),
    ...(args.includes("--frozen-f16") ? { frozenF16: true } : {}),
  });
  if (!run) {
    for (const d of diagnostics) process.stderr.write(`${d.code}: ${d.message}\n`);
    process.exit(1);
  }
  const { program } = run;
  const maxBinding = option("--max-binding");
  const device = await WebGpuDevice.open(
    maxBinding !== undefined ? { maxBinding: Number(maxBinding) } : {},
  );
  const lowRankMax = option("--low-rank-max");
  await loadPlans(device, program, {
    autotune: !args.includes("--no-autotune"),
    ...(lowRankMax !== undefined ? { lowRankMax: Number(lowRankMax) } : {}),
  });
  const store = await initialize(program, device, { fromInit: false });
  const entry = program.step.variants.get("")!;
  const feeds = batchFeeds(run, store, "train", 0, 1);
  for (let i = 0; i < 2; i++) await device.run(program.step, entry, feeds);
  const cpu: number[] = [];
  const wall: number[] = [];
  const main: number[] = [];
  for (let i = 0; i < Number(option("--steps") ?? 9); i++) {
    const cpu0 = workerCpuNs();
    const main0 = mainCpuNs();
    const started = performance.now();
    await device.run(program.step, entry, feeds);
    wall.push(performance.now() - started);
    cpu.push((workerCpuNs() - cpu0) / 1e6);
    main.push((mainCpuNs() - main0) / 1e6);
  }
  process.stdout.write(
    `${file}: step CPU ${median(cpu).toFixed(1)} ms (worker threads), ${median(main).toFixed(1)} ms (main thread: recording, waiting), wall ${median(wall).toFixed(1)} ms, medians of ${cpu.length}\n`,
  );
  device.destroy();
}

main(path).then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(2);
  },
);
