// Infinite and NaN constants in every kernel family on a real WebGPU adapter (lavapipe in CI),
// against the CPU interpreter: WGSL rejects a const-expression that is infinite or NaN, so these
// literals are helper calls (`lrk_inf()`, `lrk_nan()`), and every emission path must declare the
// helpers it calls (issue 10: `-1/0` as an attention mask fused into a matmul emitted an
// undefined `lrk_inf()`).
import { spawn, spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { failureDiagnostic } from "../../cli/failures.js";
import { Builder } from "../../compiler/builder.js";
import { planStep } from "../../compiler/compile.js";
import { fuse } from "../../compiler/fuse/index.js";
import type { GraphProgram, ProgramInput } from "../../compiler/program.js";
import { renderKernel } from "../../compiler/kernels/render.js";
import { deviceTarget } from "../../cli/target.js";
import { evaluate, type Tensor } from "../../runtime/interpreter.js";
import { PipelineError, WebGpuDevice } from "../../runtime/webgpu-device.js";
import { root } from "../helpers.js";

let device: WebGpuDevice;

beforeAll(async () => {
  device = await WebGpuDevice.open();
}, 60_000);

afterAll(() => device?.destroy());

/** ±inf, NaN, and a finite f64 that rounds to inf in f32. */
const SPECIAL = [Infinity, -Infinity, NaN, 3.5e38, -1e39];

class Case {
  readonly b = new Builder();
  readonly inputs: ProgramInput[] = [];
  readonly feeds = new Map<string, Tensor>();

  input(name: string, shape: number[]): number {
    const node = this.b.input("data", name, shape);
    this.inputs.push({ name, node, role: "data", shape, dtype: "f32" });
    const n = shape.reduce((a, c) => a * c, 1);
    // small values of both signs and a zero: inf·0 and inf − inf make NaNs too
    const data = Float32Array.from({ length: n }, (_, i) => (i % 7) * 0.25 - 0.75);
    this.feeds.set(name, { shape, data });
    return node;
  }

  /** Runs on both devices, compares (NaN where NaN, ±inf exactly), and returns the kernels' WGSL. */
  async check(outputs: Record<string, number>): Promise<string[]> {
    const named = Object.entries(outputs).map(([name, node]) => ({ name, node }));
    const program: GraphProgram = {
      graph: this.b.graph,
      inputs: this.inputs,
      entries: [{ name: "entry", outputs: named }],
    };
    const plan = planStep(program, await deviceTarget(device, [program], { autotune: false }));
    device.load(program, plan);
    const got = await device.run(program, program.entries[0]!, this.feeds);
    const byNode = new Map(this.inputs.map((i) => [i.node, this.feeds.get(i.name)!]));
    const want = evaluate(this.b.graph, byNode, Object.values(outputs));
    for (const [name, node] of Object.entries(outputs)) {
      const g = got.get(name)!.data;
      const w = want.get(node)!.data;
      expect(g.length, name).toBe(w.length);
      for (let i = 0; i < w.length; i++) {
        const y = Math.fround(w[i]!);
        const x = g[i]!;
        if (Number.isNaN(y))
          expect(Number.isNaN(x), `${name}[${i}]: got ${x}, want NaN`).toBe(true);
        else if (!Number.isFinite(y)) expect(x, `${name}[${i}]`).toBe(y);
        else
          expect(Math.abs(x - y), `${name}[${i}]: got ${x}, want ${y}`).toBeLessThanOrEqual(
            1e-5 * Math.abs(y) + 1e-6,
          );
      }
    }
    return plan.kernels.map((k) => k.wgsl);
  }
}

const label = (v: number) => String(v).replace("-", "minus_").replace(".", "_").replace("+", "");

describe("infinite and NaN constants in each kernel family", () => {
  it("map kernels", async () => {
    const c = new Case();
    const x = c.input("x", [3, 5]);
    const outs: Record<string, number> = {};
    for (const v of SPECIAL) {
      const k = c.b.constant(v, [3, 5]);
      outs[`add_${label(v)}`] = c.b.add(x, k);
      outs[`max_${label(v)}`] = c.b.maximum(x, k);
      outs[`where_${label(v)}`] = c.b.where(c.b.gt(x, c.b.constant(0, [3, 5])), x, k);
    }
    expect(fuse(c.b.graph, Object.values(outs)).groups.map((g) => g.kind)).toContain("map");
    const wgsl = await c.check(outs);
    expect(wgsl.join("\n")).toMatch(/lrk_inf\(\)/);
  });

  it("reduce kernels", async () => {
    const c = new Case();
    const x = c.input("x", [4, 33]);
    const outs: Record<string, number> = {};
    for (const v of SPECIAL) {
      const masked = c.b.where(c.b.gt(x, c.b.constant(0, [4, 33])), x, c.b.constant(v, [4, 33]));
      outs[`sum_${label(v)}`] = c.b.sum(masked, [0]);
      outs[`max_${label(v)}`] = c.b.max(masked, [0]);
    }
    expect(fuse(c.b.graph, Object.values(outs)).groups.map((g) => g.kind)).toContain("reduce");
    await c.check(outs);
  });

  it("row kernels: a softmax with an infinite mask", async () => {
    const c = new Case();
    const x = c.input("x", [5, 37]);
    const outs: Record<string, number> = {};
    // the causal mask of attention: -inf above the diagonal
    const causal = c.b.gt(c.b.iota([5, 37], 1, "f32"), c.b.iota([5, 37], 0, "f32"));
    outs.masked = c.b.softmax(c.b.where(causal, c.b.constant(-Infinity, [5, 37]), x), -1);
    outs.nan = c.b.softmax(c.b.add(x, c.b.constant(NaN, [5, 37])), -1);
    outs.huge = c.b.softmax(c.b.where(causal, c.b.constant(-1e39, [5, 37]), x), -1);
    expect(fuse(c.b.graph, Object.values(outs)).groups.map((g) => g.kind)).toContain("row");
    await c.check(outs);
  });

  it("matmul epilogues and prologues", async () => {
    const c = new Case();
    const a = c.input("a", [6, 8]);
    const outs: Record<string, number> = {};
    for (const v of SPECIAL) {
      // a weight each: the same product twice would be one node, read by two epilogues
      const w = c.input(`w_${label(v)}`, [8, 7]);
      const mm = c.b.matmul(a, w);
      const causal = c.b.gt(c.b.iota([6, 7], 1, "f32"), c.b.iota([6, 7], 0, "f32"));
      outs[`epilogue_${label(v)}`] = c.b.where(causal, c.b.constant(v, [6, 7]), mm);
      // an elementwise operand: computed at each load of the matmul (a prologue)
      const scaled = c.b.minimum(a, c.b.constant(v, [6, 8]));
      outs[`prologue_${label(v)}`] = c.b.matmul(scaled, w);
    }
    const wgsl = (await c.check(outs)).join("\n");
    expect(wgsl).toMatch(/fn lrk_epilogue/);
    expect(wgsl).toMatch(/fn lrk_prologue_a/);
  });
});

describe("a template's own infinite literal", () => {
  it("gets its helper declared by renderKernel", () => {
    const k = renderKernel({
      name: "t",
      buffers: [{ buffer: 0, access: "read_write", name: "out", type: "f32" }],
      workgroupSize: 1,
      builtins: {},
      body: ["out[0] = -lrk_inf() + lrk_nan();"],
      dispatch: [1, 1, 1],
    });
    expect(k.wgsl).toMatch(/fn lrk_inf\(\)/);
    expect(k.wgsl).toMatch(/fn lrk_nan\(\)/);
  });
});

describe("a kernel the driver rejects", () => {
  it("is a PipelineError (E0603) from run, never an unhandled rejection or a stack", async () => {
    const c = new Case();
    const x = c.input("x", [4]);
    const program: GraphProgram = {
      graph: c.b.graph,
      inputs: c.inputs,
      entries: [{ name: "entry", outputs: [{ name: "y", node: c.b.exp(x) }] }],
    };
    const plan = planStep(program, await deviceTarget(device, [program], { autotune: false }));
    for (const k of plan.kernels) k.wgsl = k.wgsl.replace("exp(", "lrk_undefined_function(");
    device.load(program, plan);
    for (let attempt = 0; attempt < 2; attempt++) {
      const failure = await device.run(program, program.entries[0]!, c.feeds).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(failure).toBeInstanceOf(PipelineError);
      const d = failureDiagnostic(failure);
      expect(d?.code).toBe("E0603");
      expect(d?.message).toContain("the GPU driver rejected a kernel");
    }
    // the device still runs good plans afterwards
    const ok = new Case();
    const y = ok.input("y", [4]);
    await ok.check({ y: ok.b.exp(y) });
  });
});

/**
 * Runs node with `args`, stderr into a file: Dawn's stderr can be filtered where it is a terminal,
 * a file or a pipe, not a socket (what spawn's "pipe" gives), which cannot be reopened.
 */
function nodeWithStderrFile(args: string[]): { status: number | null; stderr: string } {
  const dir = mkdtempSync(join(tmpdir(), "lrk-noise-"));
  try {
    const file = join(dir, "stderr");
    const fd = openSync(file, "w");
    const r = spawnSync(process.execPath, args, { cwd: root, stdio: ["ignore", "ignore", fd] });
    closeSync(fd);
    return { status: r.status, stderr: readFileSync(file, "utf8") };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe("Dawn's notes on lavapipe's limits", () => {
  it("are filtered out of stderr; anything else printed meanwhile still gets through", () => {
    const script = `
      import { writeSync } from "node:fs";
      import { withoutDawnNoise, requestAdapter } from "./dist/runtime/gpu.js";
      await withoutDawnNoise(async () => {
        writeSync(2, "Warning: maxDynamicUniformBuffersPerPipelineLayout artificially reduced from 1000000 to 16 to fit dynamic offset allocation limit.\\n");
        writeSync(2, "a real driver error\\n");
      });
      await requestAdapter();
      process.stderr.write("stderr works after\\n");
    `;
    const r = nodeWithStderrFile(["--input-type=module", "-e", script]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/artificially reduced/);
    expect(r.stderr).toContain("a real driver error");
    expect(r.stderr).toContain("stderr works after");
  });

  it("do not reach the user from a train run", () => {
    const out = mkdtempSync(join(tmpdir(), "lrk-noise-run-"));
    const r = nodeWithStderrFile([
      join(root, "bin/lrkc.js"),
      "train",
      "examples/mlp.lrk",
      "--device",
      "webgpu",
      "--steps",
      "1",
      "--no-autotune",
      "--out",
      out,
    ]);
    rmSync(out, { recursive: true, force: true });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain("step 1/1");
    expect(r.stderr).not.toMatch(/artificially reduced/);
  });

  it('are filtered when stderr is a socket (Node\'s "pipe"), and a run stopped by SIGINT still reports', async () => {
    const out = mkdtempSync(join(tmpdir(), "lrk-noise-socket-"));
    const args = [join(root, "bin/lrkc.js"), "train", "examples/mlp.lrk", "--device", "webgpu"];
    const child = spawn(
      process.execPath,
      [...args, "--steps", "100000", "--no-autotune", "--out", out],
      { cwd: root, stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    const closed = new Promise<number | null>((resolve) => {
      child.stderr!.on("data", (chunk: Buffer) => {
        stderr += chunk.toString();
        if (/step\s+\d+\/100000/.test(stderr) && !child.killed) child.kill("SIGINT");
      });
      // 'close': the stderr socket too, which the filter holds until lrkc has exited
      child.on("close", (code) => resolve(code));
    });
    const code = await closed;
    rmSync(out, { recursive: true, force: true });
    expect(stderr).not.toMatch(/artificially reduced/);
    expect(code, stderr).toBe(130);
    expect(stderr).toMatch(/stopped after step \d+; checkpoint saved/);
  }, 120_000);
});
