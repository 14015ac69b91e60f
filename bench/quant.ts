// The SVDQuant W4 LoRA step against the f32 LoRA step on the same model: time per step and the
// bytes the quantized weights take in the plan and on the device.
//
//   npm run bench:quant [-- FILE] [--steps N] [--no-autotune] [--batch N]
//
// FILE (default examples/svdquant_lora.lrk) trains LoRA on a model whose weights a `quantize`
// line makes 4-bit; the f32 program is the same file without its `quantize` lines (same model,
// same adapters, same shapes: the quantized matrices stay f32 and frozen). Both are planned for
// this machine's WebGPU adapter as `lrkc train` plans them and loaded into one device; their
// steps then run alternately (two warm-up runs each, then N each, default 9), timed by the CPU
// time of the worker threads (lavapipe runs kernels there: steady on a shared machine, see
// bench/step-cpu.ts), of the main thread (recording and submitting the step) and by wall time. Printed: medians and their ratio, then the quantized
// weights' bytes (packed values and group scales; the f32 low-rank branch SVDQuant keeps beside
// them separately) in the device's plan against the same matrices' f32 bytes, and the whole
// plans' allocated bytes. Then the products that read a quantized weight, each alone (a program
// of one matmul, bench/programs.ts), packed against f32: the forward x·Wᵀ and the input gradient
// dy·W at the step's shapes (x [batch, T, in]). Where the rest of the time goes:
// `npm run bench:profile -- FILE`.
import { readFileSync } from "node:fs";
import { SourceFile } from "../language/source.js";
import { loadPlans } from "../cli/target.js";
import { compileRun } from "../cli/train.js";
import { batchFeeds, initialize, type Run } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import type { GraphProgram, Plan, ProgramInput, Tensor } from "../compiler/program.js";
import { mainCpuNs, workerCpuNs } from "./cpu-time.js";
import { Builder } from "../compiler/builder.js";
import { random, timePrograms, type TimedProgram } from "./programs.js";

const args = process.argv.slice(2);
const option = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const file =
  args.find((a, i) => !a.startsWith("--") && !args[i - 1]?.startsWith("--")) ??
  "examples/svdquant_lora.lrk";
const steps = Number(option("--steps") ?? 9);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(3)} MiB`;

/** The source without its `quantize` lines: the same LoRA fine-tune on f32 weights. */
function unquantized(text: string): string {
  const lines = text.split("\n");
  const kept = lines.filter((l) => !/^\s*quantize\s/.test(l));
  if (kept.length === lines.length) throw new Error(`${file} has no \`quantize\` line`);
  return kept.join("\n");
}

function compileOrExit(source: SourceFile): Run {
  const batch = option("--batch") ? Number(option("--batch")) : undefined;
  const { run, diagnostics } = compileRun(source, { batch });
  if (!run) {
    for (const d of diagnostics) process.stderr.write(`${source.path}: ${d.code}: ${d.message}\n`);
    process.exit(1);
  }
  return run;
}

interface Timed {
  run: Run;
  entry: Parameters<WebGpuDevice["run"]>[1];
  feeds: Map<string, Tensor>;
  cpu: number[];
  main: number[];
  wall: number[];
}

async function prepareStep(device: WebGpuDevice, run: Run): Promise<Timed> {
  await loadPlans(device, run.program, { autotune: !args.includes("--no-autotune") });
  // the init checkpoint does not matter for timing: start from the program's initializers
  const store = await initialize(run.program, device, { fromInit: false });
  const entry = run.program.step.variants.get("")!;
  return { run, entry, feeds: batchFeeds(run, store, "train", 0, 1), cpu: [], main: [], wall: [] };
}

async function timeStep(device: WebGpuDevice, t: Timed, record: boolean): Promise<void> {
  const cpu0 = workerCpuNs();
  const main0 = mainCpuNs();
  const started = performance.now();
  await device.run(t.run.program.step, t.entry, t.feeds);
  if (!record) return;
  t.wall.push(performance.now() - started);
  t.cpu.push((workerCpuNs() - cpu0) / 1e6);
  t.main.push((mainCpuNs() - main0) / 1e6);
}

/** Bytes of the plan's buffers holding the named inputs (each input its own buffer). */
function inputBytes(plan: Plan, names: (name: string) => boolean): number {
  return plan.inputs
    .filter((i) => names(i.name))
    .reduce((sum, i) => sum + plan.buffers[i.buffer]!.bytes, 0);
}

/** The modules a quantizer replaced: `buffer:<module>.<quantizer>.q.values` → `<module>`. */
function quantizedModules(step: GraphProgram): string[] {
  return step.inputs
    .filter((i) => i.bits !== undefined)
    .map((i) => i.name.replace(/^buffer:/, "").replace(/\.[^.]+\.q\.values$/, ""));
}

async function main(): Promise<void> {
  const text = readFileSync(file, "utf8");
  const quantRun = compileOrExit(new SourceFile(file, text));
  // the same path: relative imports and `init` resolve alike
  const f32Run = compileOrExit(new SourceFile(file, unquantized(text)));
  const device = await WebGpuDevice.open();
  const quant = await prepareStep(device, quantRun);
  const f32 = await prepareStep(device, f32Run);
  for (let i = 0; i < 2; i++) for (const t of [quant, f32]) await timeStep(device, t, false);
  for (let i = 0; i < steps; i++) for (const t of [quant, f32]) await timeStep(device, t, true);

  const qStep = quantRun.program.step;
  const fStep = f32Run.program.step;
  const qPlan = device.plan(qStep);
  const fPlan = device.plan(fStep);
  const modules = quantizedModules(qStep);
  const packed = inputBytes(qPlan, (n) =>
    modules.some((m) => n.startsWith(`buffer:${m}.`) && /\.q\.(values|scales)$/.test(n)),
  );
  const lowRank = inputBytes(qPlan, (n) =>
    modules.some((m) => n.startsWith(`buffer:${m}.`) && /\.(L1|L2)$/.test(n)),
  );
  // the same matrices in the f32 program: the modules' weights
  const dense = inputBytes(fPlan, (n) => modules.some((m) => n === `param:${m}.weight`));
  const q = { cpu: median(quant.cpu), main: median(quant.main), wall: median(quant.wall) };
  const f = { cpu: median(f32.cpu), main: median(f32.main), wall: median(f32.wall) };
  const lines = [
    `${file}: LoRA step, SVDQuant W4 (${modules.length} quantized matrices) vs f32 weights, batch ${quantRun.program.batch}, on ${device.name}`,
    `medians of ${steps} steps each, run alternately`,
    "",
    "                 W4 step    f32 step    ratio",
    `worker CPU  ${q.cpu.toFixed(1).padStart(10)} ms ${f.cpu.toFixed(1).padStart(8)} ms ${(q.cpu / f.cpu).toFixed(2).padStart(7)}×`,
    `main thread ${q.main.toFixed(1).padStart(10)} ms ${f.main.toFixed(1).padStart(8)} ms ${(q.main / f.main).toFixed(2).padStart(7)}×`,
    `wall        ${q.wall.toFixed(1).padStart(10)} ms ${f.wall.toFixed(1).padStart(8)} ms ${(q.wall / f.wall).toFixed(2).padStart(7)}×`,
    "",
    `quantized weights (packed values + group scales): ${mib(packed)} vs ${mib(dense)} as f32 = 1/${(dense / packed).toFixed(2)}`,
    `  with the f32 low-rank branch (L1, L2):          ${mib(packed + lowRank)} = 1/${(dense / (packed + lowRank)).toFixed(2)}`,
    `whole step allocated on the device: ${mib(device.allocatedBytes(qStep))} (W4) vs ${mib(device.allocatedBytes(fStep))} (f32); planned peak ${mib(qPlan.peakBytes)} vs ${mib(fPlan.peakBytes)}`,
  ];
  lines.push(
    "",
    ...(await productLines(device, qStep, quantRun.program.data.fields["input"]!.shape)),
  );
  process.stdout.write(lines.join("\n") + "\n");
  device.destroy();
}

/**
 * One product y = x·Wᵀ (forward) or dx = dy·W (input gradient) with x [batch, T, ·], W [out, in]
 * stored f32 or as `bits`-bit packed values times one scale per `group` of a row (as
 * `dequantize(q)` builds it), as a one-matmul program.
 */
function product(
  forward: boolean,
  batch: [number, number],
  [out, inWidth]: [number, number],
  packed?: { bits: number; group: number },
): TimedProgram {
  const b = new Builder();
  const inputs: ProgramInput[] = [];
  const feeds = new Map<string, Tensor>();
  const input = (name: string, shape: number[], data: Float32Array, bits?: number) => {
    const role = name === "x" ? "data" : "param";
    const node = b.input(role, name, shape);
    inputs.push({ name, node, role, shape, dtype: "f32", ...(bits ? { bits } : {}) });
    feeds.set(name, { shape, data });
    return node;
  };
  let w: number;
  if (packed) {
    const groups = inWidth / packed.group;
    const max = 2 ** (packed.bits - 1) - 1;
    const values = Float32Array.from(
      { length: out * inWidth },
      (_, i) => (i % (2 * max + 1)) - max,
    );
    const q = input("q", [out, inWidth], values, packed.bits);
    const scales = input("scales", [out, groups], random(out * groups, 2));
    const spread = b.expand(b.reshape(scales, [out, groups, 1]), [out, groups, packed.group]);
    w = b.binary("mul", q, b.reshape(spread, [out, inWidth]));
  } else w = input("w", [out, inWidth], random(out * inWidth, 2));
  const width = forward ? inWidth : out;
  const x = input("x", [...batch, width], random(batch[0] * batch[1] * width, 1));
  const y = b.matmul(x, w, { transB: forward });
  return {
    program: {
      graph: b.graph,
      inputs,
      entries: [{ name: "entry", outputs: [{ name: "y", node: y }] }],
    },
    feeds,
  };
}

/** The products reading each distinct quantized weight shape, packed against f32. */
async function productLines(
  device: WebGpuDevice,
  step: GraphProgram,
  batchShape: readonly number[],
): Promise<string[]> {
  const batch: [number, number] = [batchShape[0]!, batchShape[1]!];
  const cases = new Map<string, { shape: [number, number]; bits: number; group: number }>();
  for (const values of step.inputs.filter((i) => i.bits !== undefined)) {
    const scales = step.inputs.find((i) => i.name === values.name.replace(/values$/, "scales"));
    if (!scales) continue;
    const [out, inWidth] = values.shape as [number, number];
    const group = inWidth / scales.shape[1]!;
    cases.set(`${out}x${inWidth}/${values.bits}/${group}`, {
      shape: [out, inWidth],
      bits: values.bits!,
      group,
    });
  }
  const runs = 9;
  const lines = [
    `each product alone, packed weight vs f32 weight (worker CPU, medians of ${runs}, alternating):`,
  ];
  for (const { shape, bits, group } of cases.values())
    for (const forward of [true, false]) {
      const [q, f] = await timePrograms(
        device,
        [product(forward, batch, shape, { bits, group }), product(forward, batch, shape)],
        runs,
      );
      const [out, inWidth] = shape;
      const [m, n, k] = forward
        ? [batch[0] * batch[1], out, inWidth]
        : [batch[0] * batch[1], inWidth, out];
      const path = q!.wgsl.some((w) => w.includes("packed")) ? "word by word" : "per element";
      lines.push(
        `  ${forward ? "x·Wᵀ " : "dy·W "} ${m}×${n}×${k}, W ${out}×${inWidth} ${bits}-bit group ${group} (${path}): ` +
          `${q!.cpu.toFixed(2)} vs ${f!.cpu.toFixed(2)} ms = ${(q!.cpu / f!.cpu).toFixed(2)}×`,
      );
    }
  return lines;
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(2);
  },
);
