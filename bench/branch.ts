// bench:matmul's fused-branch overhead table: a base GEMM y = x·Wᵀ (tokens × 1024 × 1024) alone,
// and with a LoRA-style low-rank branch y = x·Wᵀ + s·((x·Aᵀ)·Bᵀ) of rank 8, 16 and 64, the branch
// fused into the base matmul's epilogue (plan option lowRankMax 64) or left as kernels of its own
// (lowRankMax 0), at 576 and 4096 tokens. Each program is planned by the compiler for this
// adapter (untuned: the template's defaults) and run through the device as a training step is;
// timed by the worker threads' CPU time (steady on a shared machine: bench/cpu-time.ts) and wall
// time, medians of `runs` after two warm-ups, the variants of one shape alternating. Printed: the
// overhead over the base GEMM beside the branch's FLOP share (2·rank / 1024).
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

export async function branchOverheadTable(runs = 5, tokenCounts = [576, 4096]): Promise<string[]> {
  const device = await WebGpuDevice.open();
  const lines: string[] = [
    `low-rank branch overhead over the base GEMM tokens × ${D} × ${D}, ${device.name}; worker CPU (wall), medians of ${runs}`,
    "| tokens | rank | FLOP share | fused: kernels, overhead | unfused: kernels, overhead |",
    "|-------:|-----:|-----------:|-------------------------:|---------------------------:|",
  ];
  try {
    for (const tokens of tokenCounts) {
      const ranks = [8, 16, 64];
      // the base, then per rank fused and unfused
      const variants = [
        { ...branchProgram(tokens, 0) },
        ...ranks.flatMap((rank) =>
          [64, 0].map((lowRankMax) => ({ ...branchProgram(tokens, rank), lowRankMax })),
        ),
      ];
      const [base, ...withBranch] = await timePrograms(device, variants, runs);
      const overhead = (t: ProgramTimes) =>
        `${t.kernels}, ${pct(t.cpu / base!.cpu - 1)} (${pct(t.wall / base!.wall - 1)})`;
      lines.push(
        `| ${tokens} | 0 | – | ${base!.kernels}, ${base!.cpu.toFixed(1)} ms (${base!.wall.toFixed(1)} ms) | |`,
      );
      ranks.forEach((rank, i) =>
        lines.push(
          `| ${tokens} | ${rank} | ${pct((2 * rank) / D)} | ${overhead(withBranch[2 * i]!)} | ${overhead(withBranch[2 * i + 1]!)} |`,
        ),
      );
    }
  } finally {
    device.destroy();
  }
  return lines;
}

const pct = (x: number) => `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)} %`;
