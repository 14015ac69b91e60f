// bench:matmul's fused-branch overhead table: a base GEMM y = x·Wᵀ (tokens × 1024 × 1024) alone,
// and with a LoRA-style low-rank branch y = x·Wᵀ + s·((x·Aᵀ)·Bᵀ) of rank 8, 16 and 64 in three
// forms: fused in the base matmul's tile (the plan's form: the up-projection as rank more k-steps
// of the tile on accumulators of its own, MatmulBranch in compiler/kernels/matmul.ts), fused as
// the epilogue's per-element loop over the rank (the old form: PlanTarget.lowRankTile false), and
// left as kernels of its own (lowRankMax 0), at 576 and 4096 tokens. The down-projection x·Aᵀ is
// a kernel of its own in every form. Each program is planned by the compiler for this adapter
// (untuned: the template's defaults) and run through the device as a training step is; timed by
// the worker threads' CPU time (steady on a shared machine: bench/cpu-time.ts) and wall time,
// medians of `runs` after two warm-ups, the variants of one shape alternating. Printed: the
// overhead over the base GEMM beside the branch's FLOP share (2·rank / 1024: the down- and
// up-projection's FLOPs over the base's).
//
//   node dist/bench/branch.js [--runs N] [--tokens 576,4096] [--ranks 8,16,64]
import { pathToFileURL } from "node:url";
import { Builder } from "../compiler/builder.js";
import type { GraphProgram, ProgramInput, Tensor } from "../compiler/program.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { random, timePrograms, type ProgramTimes } from "./programs.js";

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

export async function branchOverheadTable(
  runs = 5,
  tokenCounts = [576, 4096],
  ranks = [8, 16, 64],
): Promise<string[]> {
  const device = await WebGpuDevice.open();
  const lines: string[] = [
    `low-rank branch overhead over the base GEMM tokens × ${D} × ${D}, ${device.name}; worker CPU (wall), medians of ${runs} alternating runs`,
    "| tokens | rank | FLOP share | fused in the tile: kernels, overhead | fused, per-element loop (old) | unfused |",
    "|-------:|-----:|-----------:|-------------------------------------:|------------------------------:|--------:|",
  ];
  try {
    for (const tokens of tokenCounts) {
      // the base, then per rank: in the tile, the per-element loop, unfused
      const forms = [{ lowRankMax: 64 }, { lowRankMax: 64, lowRankTile: false }, { lowRankMax: 0 }];
      const variants = [
        { ...branchProgram(tokens, 0) },
        ...ranks.flatMap((rank) =>
          forms.map((form) => ({ ...branchProgram(tokens, rank), ...form })),
        ),
      ];
      const [base, ...withBranch] = await timePrograms(device, variants, runs);
      const overhead = (t: ProgramTimes) =>
        `${t.kernels}, ${pct(t.cpu / base!.cpu - 1)} (${pct(t.wall / base!.wall - 1)})`;
      lines.push(
        `| ${tokens} | 0 | – | ${base!.kernels}, ${base!.cpu.toFixed(1)} ms (${base!.wall.toFixed(1)} ms) | | |`,
      );
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
    Number(option("--runs") ?? 5),
    list(option("--tokens")),
    list(option("--ranks")),
  );
  for (const line of lines) console.log(line);
}
