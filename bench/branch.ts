// bench:matmul's fused-branch overhead table: a base GEMM y = x·Wᵀ (tokens × 1024 × 1024) alone,
// and with a LoRA-style low-rank branch y = x·Wᵀ + s·((x·Aᵀ)·Bᵀ) of rank 8, 16 and 64 in three
// forms: fused in the base matmul's tile (the plan's form: the up-projection as rank more k-steps
// of the tile on accumulators of its own, MatmulBranch in compiler/kernels/matmul.ts), fused as
// the epilogue's per-element loop over the rank (the old form: PlanTarget.lowRankTile false), and
// left as kernels of its own (lowRankMax 0), at 576 and 4096 tokens. The down-projection x·Aᵀ is
// a kernel of its own in every form. Each program is planned by the compiler for this adapter
// (untuned: the template's defaults) and run through the device as a training step is; timed by
// the worker threads' CPU time (steady on a shared machine: bench/cpu-time.ts) and, unless
// --no-device-time, by the device's timestamps around each kernel (summed), `runs` rounds after
// two warm-ups, the variants of one shape alternating. Printed: the overhead over the base GEMM
// beside the branch's FLOP share (2·rank / 1024: the down- and up-projection's FLOPs over the
// base's), as the median of the per-round ratios (each variant over the base run of its own
// round, so that the machine's drift cancels) with their interquartile range: a single median of
// each side moved by ±20 % between runs at 576 tokens on a shared machine. The base runs twice;
// the second's row (A/A) is the measurement's own spread within one process. Between processes
// a kernel's speed itself can shift (at 576 tokens the base GEMM alone measured 62.6 ms in one
// run and 75.9 ms in the next, while the forms with a branch measured the same ms in both; the
// A/A pair, one shader on two sets of buffers, agreed within each run): compare the ms of
// several runs, not one run's ratios.
//
//   node dist/bench/branch.js [--runs N] [--tokens 576,4096] [--ranks 8,16,64] [--no-device-time]
import { pathToFileURL } from "node:url";
import { Builder } from "../compiler/builder.js";
import type { GraphProgram, ProgramInput, Tensor } from "../compiler/program.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { median, random, timePrograms, type ProgramTimes } from "./programs.js";
import { quartiles } from "./stats.js";

const D = 1024;

/** y = x·Wᵀ (+ 2·((x·Aᵀ)·Bᵀ) with rank > 0), as a one-entry program, and its feeds. */
function branchProgram(tokens: number, rank: number) {
  const b = new Builder();
  const inputs: ProgramInput[] = [];
  const input = (name: string, shape: number[]) => {
    const node = b.input(name === "x" ? "data" : "param", name, shape);
    inputs.push({ name, node, role: name === "x" ? "data" : "param", shape, dtype: "f32" });
    return node;
  };
  const x = input("x", [tokens, D]);
  let y = b.matmul(x, input("w", [D, D]), { transB: true });
  if (rank > 0) {
    const down = b.matmul(x, input("a", [rank, D]), { transB: true });
    const up = b.matmul(down, input("b", [D, rank]), { transB: true });
    y = b.binary("add", y, b.binary("mul", up, b.constant(2, [tokens, D])));
  }
  const program: GraphProgram = {
    graph: b.graph,
    inputs,
    entries: [{ name: "entry", outputs: [{ name: "y", node: y }] }],
  };
  const feeds = new Map<string, Tensor>(
    inputs.map((i, n) => [
      i.name,
      { shape: [...i.shape], data: random(i.shape[0]! * i.shape[1]!, n + 1) },
    ]),
  );
  return { program, feeds };
}

/**
 * A variant's overhead over the base, from runs paired by alternation round (round i of both ran
 * back to back, so drift in the machine's speed cancels): the median of the per-round ratios
 * and their interquartile range.
 */
function pairedOverhead(
  runs: number[],
  base: number[],
): { median: number; q1: number; q3: number } {
  return quartiles(runs.map((t, i) => t / base[i]! - 1));
}

const spread = (o: { median: number; q1: number; q3: number }) =>
  `${pct(o.median)} [${pct(o.q1)}, ${pct(o.q3)}]`;

export async function branchOverheadTable(
  runs = 9,
  tokenCounts = [576, 4096],
  ranks = [8, 16, 64],
  deviceTimed = true,
): Promise<string[]> {
  const device = await WebGpuDevice.open();
  const lines: string[] = [
    `low-rank branch overhead over the base GEMM tokens × ${D} × ${D}, ${device.name}: per form, ` +
      `the median of ${runs} per-round ratios to the base run beside it [interquartile range], ` +
      `worker CPU${deviceTimed ? "; then device-timed (timestamp queries, kernels summed)" : ""}`,
    "| tokens | rank | FLOP share | fused in the tile: kernels, overhead | fused, per-element loop (old) | unfused |",
    "|-------:|-----:|-----------:|-------------------------------------:|------------------------------:|--------:|",
  ];
  try {
    for (const tokens of tokenCounts) {
      // the base, then per rank: in the tile, the per-element loop, unfused
      const forms = [{ lowRankMax: 64 }, { lowRankMax: 64, lowRankTile: false }, { lowRankMax: 0 }];
      // the base twice: the second one's "overhead" is the measurement's own spread (A/A)
      const variants = [
        { ...branchProgram(tokens, 0) },
        { ...branchProgram(tokens, 0) },
        ...ranks.flatMap((rank) =>
          forms.map((form) => ({ ...branchProgram(tokens, rank), ...form })),
        ),
      ];
      const [base, again, ...withBranch] = await timePrograms(device, variants, runs, {
        deviceTimed,
      });
      const overhead = (t: ProgramTimes) => {
        const cpu = spread(pairedOverhead(t.cpuRuns, base!.cpuRuns));
        const gpu = t.deviceRuns.length
          ? `; device ${spread(pairedOverhead(t.deviceRuns, base!.deviceRuns))}`
          : "";
        // the median's own ms too: a whole kernel's speed can differ between processes (below)
        return `${t.kernels}, ${cpu} (${t.cpu.toFixed(1)} ms)${gpu}`;
      };
      const baseDevice = base!.deviceRuns.length
        ? `; device ${median(base!.deviceRuns).toFixed(1)} ms`
        : "";
      lines.push(
        `| ${tokens} | 0 | – | ${base!.kernels}, ${base!.cpu.toFixed(1)} ms (wall ${base!.wall.toFixed(1)} ms)${baseDevice} | | |`,
      );
      lines.push(`| ${tokens} | 0 | – | the base again (A/A): ${overhead(again!)} | | |`);
      ranks.forEach((rank, i) => {
        const [tile, loop, unfused] = withBranch.slice(3 * i, 3 * i + 3);
        lines.push(
          `| ${tokens} | ${rank} | ${pct((2 * rank) / D)} | ${overhead(tile!)} | ${overhead(loop!)} | ${overhead(unfused!)} |`,
        );
      });
    }
  } finally {
    device.destroy();
  }
  return lines;
}

const pct = (x: number) => `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)} %`;

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const option = (name: string) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : undefined;
  };
  const list = (text: string | undefined) => text?.split(",").map(Number);
  const lines = await branchOverheadTable(
    Number(option("--runs") ?? 9),
    list(option("--tokens")),
    list(option("--ranks")),
    !process.argv.includes("--no-device-time"),
  );
  for (const line of lines) console.log(line);
}
