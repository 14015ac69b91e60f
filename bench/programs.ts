// Timing small one-entry programs side by side on the WebGPU device (bench/branch.ts,
// bench/quant.ts): each planned by the compiler for the device (untuned: the template's defaults,
// and `lowRankMax` as given), run as a training step runs, timed by the worker threads' CPU time
// (steady on a shared machine: bench/cpu-time.ts) and by wall time, two warm-ups each, then
// `runs` runs of each, alternating, so that drift in the machine's speed hits all alike.
import { planStep } from "../compiler/compile.js";
import type { GraphProgram, Plan, Tensor } from "../compiler/program.js";
import { deviceTarget } from "../cli/target.js";
import type { WebGpuDevice } from "../runtime/webgpu-device.js";
import { workerCpuNs } from "./cpu-time.js";

export interface TimedProgram {
  program: GraphProgram;
  feeds: ReadonlyMap<string, Tensor>;
  lowRankMax?: number;
  /** false: fused low-rank branches as the epilogue's per-element loop (PlanTarget.lowRankTile). */
  lowRankTile?: boolean;
}

export interface ProgramTimes {
  /** Dispatches of the entry. */
  kernels: number;
  /** Medians, ms. */
  cpu: number;
  wall: number;
  /** Every timed run, ms, in the order of the alternation rounds (run i of every program is round i). */
  cpuRuns: number[];
  wallRuns: number[];
  /** With `deviceTimed`: the entry's kernels timed on the device (timestamp queries), summed per round. */
  deviceRuns: number[];
  /** The kernels' WGSL. */
  wgsl: string[];
}

export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

/** Deterministic numbers in [-scale, scale). */
export function random(count: number, seed: number, scale = 0.05): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 31 - 1) * scale;
  }
  return out;
}

export async function timePrograms(
  device: WebGpuDevice,
  programs: readonly TimedProgram[],
  runs: number,
  options: { deviceTimed?: boolean } = {},
): Promise<ProgramTimes[]> {
  type Loaded = TimedProgram & { plan: Plan; cpu: number[]; wall: number[]; gpu: number[] };
  const loaded: Loaded[] = [];
  for (const p of programs) {
    const target = await deviceTarget(device, [p.program], {
      autotune: false,
      ...(p.lowRankMax !== undefined ? { lowRankMax: p.lowRankMax } : {}),
    });
    const plan = planStep(p.program, {
      ...target,
      ...(p.lowRankTile === false ? { lowRankTile: false } : {}),
    });
    device.load(p.program, plan);
    loaded.push({ ...p, plan, cpu: [], wall: [], gpu: [] });
  }
  const once = async (p: Loaded, record: boolean) => {
    const cpu0 = workerCpuNs();
    const t0 = performance.now();
    // nothing read back: the outputs stay on the device
    await device.run(p.program, p.program.entries[0]!, p.feeds, { read: new Set() });
    if (!record) return;
    p.cpu.push((workerCpuNs() - cpu0) / 1e6);
    p.wall.push(performance.now() - t0);
  };
  for (let i = 0; i < 2; i++) for (const p of loaded) await once(p, false);
  // device time: each dispatch in a pass of its own between timestamps (bench/profile.ts)
  const timed = async (p: Loaded) => {
    const times = await device.profile(p.program, p.program.entries[0]!, p.feeds, 1);
    if (times) p.gpu.push(times.reduce((sum, t) => sum + t.ms, 0));
  };
  for (let i = 0; i < runs; i++)
    for (const p of loaded) {
      await once(p, true);
      if (options.deviceTimed) await timed(p);
    }
  return loaded.map((p) => ({
    kernels: p.plan.entries[p.program.entries[0]!.name]!.dispatches.length,
    cpu: median(p.cpu),
    wall: median(p.wall),
    cpuRuns: p.cpu,
    wallRuns: p.wall,
    deviceRuns: p.gpu,
    wgsl: p.plan.kernels.map((k) => k.wgsl),
  }));
}
