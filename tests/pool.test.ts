// Pooled optimizer states (compiler/pooled-states.ts): `state M = pooled(init, active) refresh
// every N` holds a value only while its tensor's host-decided condition holds. The compiler
// proves every read is selected by that condition, that a tensor becomes active only where its
// state restarts, and sizes the pool the run needs at once (FRUGAL's block variant: 2 · Σ_active
// numel, the k largest tensors).
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import { pooledBytes, stateBytes } from "../compiler/pooled-states.js";
import { RunFolder } from "../runtime/run-folder.js";
import { train } from "../runtime/trainer.js";
import { PLACEHOLDER_BYTES, WebGpuDevice } from "../runtime/webgpu-device.js";
import { compile, expectTrainsAlike, loadOnGpu, prepare } from "./program-helpers.js";
import { lrkcBin, root } from "./helpers.js";

/** A net of Linear layers of the given sizes, its weights trained by `rule`. */
function program(rule: string, optimizer = "", sizes = [8, 8, 8, 8, 8]): string {
  const layers = sizes.slice(1).map((out, i) => `  l${i} = Linear(${sizes[i]}, ${out})`);
  const forward = layers.reduce((x, _, i) => `l${i}(gelu(${x}))`, "x");
  return `import std.nn.{Linear}
import std.optim.{frugal_block, sgd}

data moons = std.data.two_moons(n: 64, seed: 2)

${optimizer}

model Net {
  embed = Linear(2, ${sizes[0]})
${layers.join("\n")}
  head = Linear(${sizes[sizes.length - 1]}, 2)

  forward(x: f32[B, 2]) -> f32[B, 2] = head(${forward.replace("gelu(x)", "gelu(embed(x))")})
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ${layers.map((_, i) => `l${i}.weight`).join(", ")} with ${rule}
  optimize ** with sgd(lr: 0.1)
  steps 12
  batch 8
}
`;
}

function errorsOf(text: string): { code: string; message: string; help?: string }[] {
  const { diagnostics } = prepare(new SourceFile("test.lrk", text));
  return diagnostics.filter((d) => d.severity === "error");
}

describe("pooled states", () => {
  it("FRUGAL (blocks) holds Adam's moments for the active tensors only: 2 · ρ · Σ numel of equal tensors", () => {
    // four 8×8 weights (64 elements, 256 bytes each), density 0.5: two active at a time
    const run = compile(program('frugal_block(lr: 0.1, density: 0.5, period: 3, order: "random")'));
    const pooled = run.step.states.filter((s) => s.pooled);
    expect(pooled.map((s) => s.name.split(":")[1])).toEqual([
      "M",
      "V",
      "M",
      "V",
      "M",
      "V",
      "M",
      "V",
    ]);
    const all = 4 * 64 * 4;
    expect(pooledBytes(run.step.states, 12).bytes).toBe(2 * 0.5 * all);
  });

  it("sizes the pool for the k largest tensors when their sizes differ", () => {
    // weights 8×4 (32), 16×8 (128), 4×16 (64): one active at a time, the largest 128 elements
    const run = compile(
      program(
        'frugal_block(lr: 0.1, density: 0.34, period: 2, order: "ascending")',
        "",
        [4, 8, 16, 4],
      ),
    );
    const sizes = run.step.states.filter((s) => s.pooled).map(stateBytes);
    expect(sizes).toEqual([128, 128, 512, 512, 256, 256]);
    // steps 1–12 visit every tensor: the largest pair of moments
    expect(pooledBytes(run.step.states, 12).bytes).toBe(2 * 512);
  });

  it("refuses a read of a pooled state where its tensor may be inactive", () => {
    const optimizer = `optimizer leaky(lr: float) on param: f32[...] {
  state M = pooled(zeros_like(param), floor((step - 1) / 2) % group.size == group.index) refresh every 2
  update(g) {
    M = 0.9 * M + g
    param -= lr * M
  }
}`;
    const errors = errorsOf(program("leaky(lr: 0.1)", optimizer));
    expect(errors.map((e) => e.code)).toEqual(["E0211"]);
    expect(errors[0]!.message).toContain("is read where its tensor may be inactive");
    expect(errors[0]!.help).toContain("if ACTIVE");
  });

  it("accepts the same reads under `if` on the condition (no step variant per tensor)", () => {
    const optimizer = `optimizer turns(lr: float) on param: f32[...] {
  state M = pooled(zeros_like(param), floor((step - 1) / 2) % group.size == group.index) refresh every 2
  update(g) {
    if floor((step - 1) / 2) % group.size == group.index {
      M = 0.9 * M + g
      param -= lr * M
    } else {
      param -= lr * g
    }
  }
}`;
    const run = compile(program("turns(lr: 0.1)", optimizer));
    // one variant per due refresh, none per tensor's turn
    expect([...run.step.variants.keys()].sort()).toEqual(["", "2"]);
    // one tensor of four at a time
    expect(pooledBytes(run.step.states, 12).bytes).toBe(256);
  });

  it("refuses a tensor that becomes active between its state's refreshes", () => {
    const optimizer = `optimizer drifting(lr: float) on param: f32[...] {
  state M = pooled(zeros_like(param), (step - 1) % group.size == group.index) refresh every 2
  update(g) {
    if (step - 1) % group.size == group.index {
      M = g
      param -= lr * M
    }
  }
}`;
    const errors = errorsOf(program("drifting(lr: 0.1)", optimizer));
    expect(errors.map((e) => e.code)).toEqual(["E0211"]);
    expect(errors[0]!.message).toContain(
      "becomes active at step 2, which is not one of its refresh steps",
    );
  });

  it("refuses a condition the host cannot decide, and a pooled state with no refresh", () => {
    const onGradient = `optimizer greedy(lr: float) on param: f32[...] {
  state M = pooled(zeros_like(param), sum(grad) > 0) refresh every 2
  update(g) {
    param -= lr * g
  }
}`;
    const a = errorsOf(program("greedy(lr: 0.1)", onGradient));
    expect(a.map((e) => e.code)).toEqual(["E0211"]);
    expect(a[0]!.message).toContain("must be decided on the host");
    const noRefresh = `optimizer kept(lr: float) on param: f32[...] {
  state M = pooled(zeros_like(param), step > 1)
  update(g) {
    param -= lr * g
  }
}`;
    const b = errorsOf(program("kept(lr: 0.1)", noRefresh));
    expect(b.map((e) => e.code)).toEqual(["E0211"]);
    expect(b[0]!.message).toContain("needs `refresh every N`");
  });
});

describe("the pooled-state check's length", () => {
  it("a run too long to check step by step is E0211 at once, not a hang; a run without pools compiles", () => {
    const long = program('frugal_block(lr: 0.1, period: 2, order: "ascending")').replace(
      "steps 12",
      "steps 16777216",
    );
    const errors = errorsOf(long);
    expect(errors.map((e) => e.code)).toEqual(["E0211"]);
    expect(errors[0]!.message).toContain("too long to check its pooled states step by step");
    // the same length without a pooled state: nothing to check (this hung, steps × nothing)
    const plain = long.replace(/optimize l0\.weight[^\n]*\n/, "");
    expect(errorsOf(plain)).toEqual([]);
  });
});

describe("lrkc build --emit memory with pooled states", () => {
  it("counts FRUGAL's moments as the active tensors' (2 · Σ_active numel), the most held at once", () => {
    const r = spawnSync(
      process.execPath,
      [lrkcBin, "build", "examples/frugal_block_pretrain.lrk", "--emit", "memory"],
      { cwd: root, encoding: "utf8" },
    );
    expect(r.status).toBe(0);
    const planned = r.stdout.slice(r.stdout.indexOf("planned GPU buffers"));
    const bytes = (label: string) =>
      Number(
        planned
          .match(new RegExp(`^${label}[^\\n]*?\\s{2,}\\S+ \\S+\\s+([\\d,]+) B`, "m"))![1]!
          .replace(/,/g, ""),
      );
    // 2 layers × (q, k, v, o: 128×128; up, down: 512×128); density 0.25: 3 of 12 active, in
    // descending order {o, up, down} of a layer at most: 2 · 4 · (16,384 + 2 · 65,536) bytes
    const held = 2 * 4 * (16_384 + 2 * 65_536);
    const full = 2 * 4 * 2 * (4 * 16_384 + 2 * 65_536);
    expect(planned).toContain(
      `the most the run's active tensors hold at once, 1.13 MiB, of 3.00 MiB`,
    );
    // AdamW's moments of the rest (embeddings, norms, biases), as the plan has them
    const adamw = bytes("optimizer state") - held;
    expect(adamw).toBeGreaterThan(0);
    expect(adamw).toBeLessThan(full / 10);
    const parts = [
      "parameters",
      "optimizer state",
      "step outputs",
      "activations and scratch",
      "batch and scalars",
    ];
    expect(parts.reduce((a, p) => a + bytes(p), 0)).toBe(bytes("total"));
    // the estimate before fusion counts the pooled states the same way
    const before = r.stdout.slice(0, r.stdout.indexOf("planned GPU buffers"));
    const stateRow = before.match(/^optimizer state\s+\S+ \S+\s+([\d,]+) B/m)![1]!;
    expect(Number(stateRow.replace(/,/g, ""))).toBe(bytes("optimizer state"));
    expect(r.stdout).toMatch(/blocks\.0\.attn\.q\.weight \[128, 128\]  frugal_block: M \(pooled\)/);
  });
});

describe("pooled states on WebGPU", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  }, 60_000);
  afterAll(() => device?.destroy());

  const frugal = () =>
    compile(program('frugal_block(lr: 0.01, density: 0.5, period: 2, order: "random", seed: 3)'));

  it("allocates the active tensors' moments only (2 · ρ · Σ numel), and trains as the interpreter", async () => {
    const run = frugal();
    await expectTrainsAlike(device, run, 3, 1e-3);
    const plan = device.plan(run.program.step);
    const pooled = new Set(run.step.states.filter((s) => s.pooled).map((s) => `state:${s.name}`));
    const full = plan.buffers
      .filter((b) => b.names.some((n) => pooled.has(n)))
      .reduce((sum, b) => sum + b.bytes, 0);
    expect(full).toBe(8 * 256); // the plan's buffers, were every state kept: 2 · Σ numel
    // after step 3: two of four tensors active, their M and V allocated; 16-byte placeholders
    // (one vec4: kernels read states as vec4s) for the other four states
    const active = pooledBytes(run.step.states, 12).bytes;
    expect(active).toBe(4 * 256);
    expect(device.allocatedBytes(run.program.step)).toBe(
      plan.peakBytes - full + active + 4 * PLACEHOLDER_BYTES,
    );
  }, 120_000);

  it("refuses a run longer than compiled whose tensor becomes active between refreshes", async () => {
    // compiled for 12 steps (checked there); the state turns on at step 13, mid-period
    const optimizer = `optimizer late(lr: float) on param: f32[...] {
  state M = pooled(zeros_like(param), step > 12) refresh every 5
  update(g) {
    if step > 12 {
      M = 0.9 * M + g
      param -= lr * M
    } else {
      param -= lr * g
    }
  }
}`;
    const run = compile(program("late(lr: 0.01)", optimizer));
    await loadOnGpu(device, run);
    await expect(train(run, device, { steps: 14 })).rejects.toThrow(
      "becomes active at step 13, between its refreshes",
    );
  }, 120_000);

  it("resumed from a checkpoint mid-window, equals the uninterrupted run", async () => {
    const run = frugal();
    await loadOnGpu(device, run);
    const whole = await train(run, device, { steps: 6 });
    const dir = mkdtempSync(join(tmpdir(), "lrk-pool-"));
    try {
      const folder = new RunFolder(dir);
      let steps = 0;
      await train(run, device, {
        steps: 6,
        shouldStop: () => ++steps === 3,
        onCheckpoint: (s, store) => folder.saveCheckpoint(s, store, {}),
      });
      const { step, store } = folder.loadCheckpoint(run.program);
      expect(step).toBe(3);
      const resumed = await train(run, device, { steps: 6, resume: { step, store } });
      expect(resumed.losses).toEqual(whole.losses.slice(3));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
