// bench:matmul's fused-branch overhead table: a base GEMM y = x·Wᵀ (tokens × 1024 × 1024) alone,
// and with a LoRA-style low-rank branch y = x·Wᵀ + s·((x·Aᵀ)·Bᵀ) of rank 8, 16 and 64, the branch
// fused into the base matmul's epilogue (plan option lowRankMax 64) or left as kernels of its own
// (lowRankMax 0), at 576 and 4096 tokens. Each program is planned by the compiler for this
// adapter (untuned: the template's defaults) and run through the device as a training step is;
// timed by the worker threads' CPU time (steady on a shared machine: bench/cpu-time.ts) and wall
// time, medians of `runs` after two warm-ups, the variants of one shape alternating. Printed: the
// overhead over the base GEMM beside the branch's FLOP share (2·rank / 1024).
import { Builder } from "../compiler/builder.js";
import { planStep } from "../compiler/compile.js";
import type { GraphProgram, ProgramInput, Tensor } from "../compiler/program.js";
import { deviceTarget } from "../cli/target.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { workerCpuNs } from "./cpu-time.js";

const D = 1024;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

function random(count: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 31 - 1) * 0.05;
  }
  return out;
}

interface Variant {
  label: string;
  program: GraphProgram;
  kernels: number;
  cpu: number[];
  wall: number[];
}

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
      const feedsOf = new Map<Variant, Map<string, Tensor>>();
      const variants: Variant[] = [];
      for (const rank of [0, 8, 16, 64])
        for (const fused of rank ? [true, false] : [true]) {
          const { program, feeds } = branchProgram(tokens, rank);
          const target = await deviceTarget(device, [program], {
            autotune: false,
            lowRankMax: fused ? 64 : 0,
          });
          const plan = planStep(program, target);
          device.load(program, plan);
          const v: Variant = {
            label: rank ? `${rank} ${fused ? "fused" : "unfused"}` : "base",
            program,
            kernels: plan.entries["entry"]!.dispatches.length,
            cpu: [],
            wall: [],
          };
          variants.push(v);
          feedsOf.set(v, feeds);
        }
      const once = async (v: Variant) => {
        const cpu0 = workerCpuNs();
        const t0 = performance.now();
        await device.run(v.program, v.program.entries[0]!, feedsOf.get(v)!, { read: new Set() });
        return { cpu: (workerCpuNs() - cpu0) / 1e6, wall: performance.now() - t0 };
      };
      for (let i = 0; i < 2; i++) for (const v of variants) await once(v);
      for (let i = 0; i < runs; i++)
        for (const v of variants) {
          const t = await once(v);
          v.cpu.push(t.cpu);
          v.wall.push(t.wall);
        }
      const base = variants[0]!;
      const overhead = (v: Variant) =>
        `${v.kernels}, ${pct(median(v.cpu) / median(base.cpu) - 1)} (${pct(median(v.wall) / median(base.wall) - 1)})`;
      lines.push(
        `| ${tokens} | 0 | – | ${base.kernels}, ${median(base.cpu).toFixed(1)} ms (${median(base.wall).toFixed(1)} ms) | |`,
      );
      for (const rank of [8, 16, 64]) {
        const fused = variants.find((v) => v.label === `${rank} fused`)!;
        const unfused = variants.find((v) => v.label === `${rank} unfused`)!;
        lines.push(
          `| ${tokens} | ${rank} | ${pct((2 * rank) / D)} | ${overhead(fused)} | ${overhead(unfused)} |`,
        );
      }
    }
  } finally {
    device.destroy();
  }
  return lines;
}

const pct = (x: number) => `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)} %`;
