// Where a training step's time goes: every kernel of a program's step timed on the device
// (timestamp queries around each dispatch), summed by kernel kind and listed from the slowest.
//
//   npm run bench:profile -- FILE [--train NAME] [--batch N] [--top N] [--no-autotune]
//                              [--low-rank-max R]  (fuse LoRA branches up to rank R; 0: never)
//
// The step is run as `lrkc train` runs it (initialized weights, the first training batch), then
// timed five more times; each kernel's figure is its median. The sum of kernel times beside the
// wall time of a whole step shows how much goes to dispatch overhead rather than to work.
import { readFileSync } from "node:fs";
import { SourceFile } from "../language/source.js";
import { loadPlans } from "../cli/target.js";
import { compileRun } from "../cli/train.js";
import { batchFeeds, initialize } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";

const args = process.argv.slice(2);
const option = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const path = args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--"));
if (!path) {
  process.stderr.write(
    "usage: npm run bench:profile -- FILE [--train NAME] [--batch N] [--top N]\n",
  );
  process.exit(1);
}

async function main(file: string): Promise<void> {
  const source = new SourceFile(file, readFileSync(file, "utf8"));
  const batch = option("--batch") ? Number(option("--batch")) : undefined;
  const { run, diagnostics } = compileRun(source, { train: option("--train"), batch });
  if (!run) {
    for (const d of diagnostics) process.stderr.write(`${d.code}: ${d.message}\n`);
    process.exit(1);
  }
  const { program } = run;
  const device = await WebGpuDevice.open();
  const lowRankMax = option("--low-rank-max");
  await loadPlans(device, program, {
    autotune: !args.includes("--no-autotune"),
    ...(lowRankMax !== undefined ? { lowRankMax: Number(lowRankMax) } : {}),
  });
  // the init checkpoint does not matter for timing: start from the program's initializers
  const store = await initialize(program, device, { fromInit: false });
  const step = program.step;
  const entry = step.variants.get("")!;
  const feeds = batchFeeds(run, store, "train", 0, 1);
  const times = await device.profile(step, entry, feeds);
  if (!times) {
    process.stderr.write(`${device.name} has no timestamp queries: nothing to profile\n`);
    process.exit(1);
  }
  // wall time of whole steps, as the trainer runs them (feeds are resident after the first)
  const wall: number[] = [];
  for (let i = 0; i < 5; i++) {
    const started = performance.now();
    await device.run(step, entry, feeds);
    wall.push(performance.now() - started);
  }
  const plan = device.plan(step);
  const total = times.reduce((s, t) => s + t.ms, 0);
  const byKind = new Map<string, { n: number; ms: number }>();
  for (const t of times) {
    const kind = plan.kernels[t.kernel]!.kind;
    const k = byKind.get(kind) ?? { n: 0, ms: 0 };
    k.n++;
    k.ms += t.ms;
    byKind.set(kind, k);
  }
  const median = [...wall].sort((a, b) => a - b)[2]!;
  const lines = [
    `${file}: train \`${program.name}\`, batch ${program.batch}, on ${device.name}`,
    `${times.length} dispatches; kernel time ${total.toFixed(2)} ms; whole step ${median.toFixed(2)} ms (wall, median of 5)`,
    "",
    "kind       kernels   ms total   share",
    ...[...byKind]
      .sort((a, b) => b[1].ms - a[1].ms)
      .map(
        ([kind, k]) =>
          `${kind.padEnd(10)} ${String(k.n).padStart(7)} ${k.ms.toFixed(2).padStart(10)} ${((100 * k.ms) / total).toFixed(1).padStart(6)}%`,
      ),
    "",
    "slowest kernels:",
    ...[...times]
      .sort((a, b) => b.ms - a.ms)
      .slice(0, Number(option("--top") ?? 15))
      .map((t) => {
        const k = plan.kernels[t.kernel]!;
        return `  ${t.ms.toFixed(3).padStart(8)} ms  #${String(k.id).padEnd(4)} ${k.name}${k.sourceLines.length ? `  (${k.sourceLines[0]})` : ""}`;
      }),
  ];
  process.stdout.write(lines.join("\n") + "\n");
  device.destroy();
}

main(path).then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(2);
  },
);
