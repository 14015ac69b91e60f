// `at step N` / `at every N` actions (spec §6.10, §13.8; compiler/actions.ts): each schedule is an
// entry of the step program that the host runs after the update of a due step. Checked here
// against values computed in the test from the stores before the action (float64 interpreter), a
// resumed run equal to the uninterrupted one bit for bit across an action, the diagnostics for
// what an action cannot assign, and the WebGPU device agreeing with the interpreter across one.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Tensor } from "../compiler/program.js";
import { paramSeed } from "../compiler/init.js";
import { memoryReport } from "../compiler/memory.js";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { hash32, uniformAt } from "../runtime/random.js";
import { initialize, stepScalars, train } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { relativeDiff, root } from "./helpers.js";
import { expectSameTensors, killAndResume, stopAndResume } from "./resume-helpers.js";
import { compile, loadOnGpu, prepare, type Store, type TestRun } from "./program-helpers.js";

const cpu64 = () => new CpuDevice({ float64: true });

/** A tiny classifier with a ReLoRA-style adapter and an optimizer that resets its moments. */
function program(options: { period?: number; trainActions?: string; steps?: number } = {}): string {
  const period = options.period ?? 3;
  return `import std.nn.{Linear}

data moons = std.data.two_moons(n: 64, seed: 2)

adapter merging(rank: int, period: int, alpha: float = 2) on Linear(in, out) {
  param A: f32[rank, in] = kaiming_uniform(a: sqrt(5))
  param B: f32[out, rank] = normal(std: 0.1)
  const scale = alpha / rank
  forward(x) = base(x) + scale * ((x @ A^T) @ B^T)
  merged = base.weight + scale * (B @ A)
  at every period {
    base.weight = merged
    A = kaiming_uniform(a: sqrt(5))
    B = zeros
  }
}

optimizer adam_reset(lr: float, period: int) on param: f32[...] {
  state m = zeros_like(param)
  state v = zeros_like(param)
  update(g) {
    m = 0.9 * m + 0.1 * g
    v = 0.99 * v + 0.01 * g * g
    param -= lr * m / (sqrt(v) + 1e-8)
  }
  at every period {
    m = where(abs(m) > 0.01, m, 0)
    v *= 0.5
  }
}

model Net {
  l1 = Linear(2, 8)
  head = Linear(8, 2)
  forward(x: f32[B, 2]) = head(relu(l1(x)))
}

train t {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  adapt l1, head with merging(rank: 2, period: ${period})
  optimize adapters with adam_reset(lr: 0.01, period: ${period})
  steps ${options.steps ?? 7}
  batch 8
  seed 4
${options.trainActions ?? ""}
}
`;
}

function values(store: Store, name: string): Float64Array {
  const t = store.get(name);
  if (!t) throw new Error(`no ${name} in the store`);
  return Float64Array.from(t.data);
}

/** a f32[m, k] @ b f32[k, n], row-major, in float64. */
function matmul(a: Float64Array, b: Float64Array, m: number, k: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a[i * k + p]! * b[p * n + j]!;
      out[i * n + j] = s;
    }
  return out;
}

function expectClose(actual: Float64Array, want: Float64Array, what: string): void {
  expect(actual.length, what).toBe(want.length);
  for (let i = 0; i < want.length; i++)
    expect(actual[i], `${what}[${i}]`).toBeCloseTo(want[i]!, 12);
}

describe("adapter and optimizer actions", () => {
  it("compile into one entry per schedule, with the tensors they assign as outputs", () => {
    const run = compile(program());
    expect(run.step.actions.map((a) => [a.entry.name, a.trigger, a.count])).toEqual([
      ["action:every3", "every", 3],
    ]);
    expect(run.step.entries.map((e) => e.name)).toContain("action:every3");
    expect(run.step.actions[0]!.entry.outputs.map((o) => o.name).sort()).toEqual(
      [
        "param:l1.weight",
        "param:l1.merging.A",
        "param:l1.merging.B",
        "param:head.weight",
        "param:head.merging.A",
        "param:head.merging.B",
        ...["l1", "head"].flatMap((m) =>
          ["A", "B"].flatMap((p) => ["m", "v"].map((s) => `state:${m}.merging.${p}:${s}`)),
        ),
      ].sort(),
    );
  });

  it("after step 3: base += s·B·A, A redrawn (Kaiming, seeded by seed, path and step), B = 0, moments reset", async () => {
    // The same run without the action (period 1000) holds the values just before it.
    const before = (await train(compile(program({ period: 1000 })), cpu64(), { steps: 3 })).store;
    const after = (await train(compile(program()), cpu64(), { steps: 3 })).store;
    const scale = 2 / 2;
    for (const [module, out, inp] of [
      ["l1", 8, 2],
      ["head", 2, 8],
    ] as const) {
      const A = values(before, `param:${module}.merging.A`);
      const B = values(before, `param:${module}.merging.B`);
      const W = values(before, `param:${module}.weight`);
      const BA = matmul(B, A, out, 2, inp);
      expectClose(
        values(after, `param:${module}.weight`),
        W.map((w, i) => w + scale * BA[i]!),
        `${module}.weight`,
      );
      expect([...values(after, `param:${module}.merging.B`)]).toEqual(new Array(out * 2).fill(0));
      // kaiming_uniform(a: sqrt(5)) on f32[2, in]: U(-b, b), b = sqrt(6 / (6 · in)) = 1/sqrt(in)
      const bound = 1 / Math.sqrt(inp);
      const seed = hash32(paramSeed(4, `${module}.merging.A`), 3);
      const drawn = values(after, `param:${module}.merging.A`);
      drawn.forEach((a, i) =>
        expect(a, `A[${i}]`).toBeCloseTo(uniformAt(seed, i) * 2 * bound - bound, 12),
      );
      // the optimizer's action: small first moments pruned, second moments halved
      for (const p of ["A", "B"]) {
        const m = values(before, `state:${module}.merging.${p}:m`);
        const v = values(before, `state:${module}.merging.${p}:v`);
        expect([...values(after, `state:${module}.merging.${p}:m`)]).toEqual([
          ...m.map((x) => (Math.abs(x) > 0.01 ? x : 0)),
        ]);
        expectClose(
          values(after, `state:${module}.merging.${p}:v`),
          v.map((x) => x * 0.5),
          "v",
        );
      }
    }
    // The biases are not assigned: the action leaves them as they were.
    expect([...values(after, "param:l1.bias")]).toEqual([...values(before, "param:l1.bias")]);
  });

  it("the merge keeps the function: the loss of step 4 is the same as without merging B·A", async () => {
    // With B = 0 after the action, the model computes base' x = (W + s B A) x: the same outputs as
    // just before it, so step 4 starts from the same loss as a run whose action only merged a
    // copy. Compared against the run without the action at step 4's forward.
    const merged = await train(compile(program()), cpu64(), { steps: 4 });
    const plain = await train(compile(program({ period: 1000 })), cpu64(), { steps: 4 });
    expect(merged.losses.slice(0, 3)).toEqual(plain.losses.slice(0, 3));
    expect(merged.losses[3]).toBeCloseTo(plain.losses[3]!, 12);
  });

  it("draws fresh numbers at each action: A after step 6 differs from A after step 3", async () => {
    const run = compile(program());
    const at3 = (await train(run, cpu64(), { steps: 3 })).store;
    const at6 = (await train(run, cpu64(), { steps: 6 })).store;
    const a3 = values(at3, "param:l1.merging.A");
    const a6 = values(at6, "param:l1.merging.A");
    const seed6 = hash32(paramSeed(4, "l1.merging.A"), 6);
    // no update happened between the draw at 6 and the end of step 6
    a6.forEach((a, i) =>
      expect(a).toBeCloseTo(uniformAt(seed6, i) * 2 * Math.SQRT1_2 - Math.SQRT1_2, 12),
    );
    expect([...a6]).not.toEqual([...a3]);
  });

  it("a run stopped right after an action step and resumed equals the uninterrupted run bit for bit", async () => {
    // stopped after step 3 (the checkpoint read back is step 3's), the action's step
    const { whole, resumed } = await stopAndResume(compile(program()), cpu64(), 3, {
      floats: "F64",
    });
    expectSameTensors(resumed.store, whole.store);
  });
});

describe("schedules", () => {
  it("a run too short for an action says so in a note, and trains without it", async () => {
    const notes: string[] = [];
    const run = compile(
      program({ trainActions: "  at step 50 {\n    model.head.bias = zeros\n  }" }),
    );
    await train(run, cpu64(), { steps: 2, onNote: (n) => notes.push(n) });
    expect(notes).toEqual([
      "the `at every 3` actions never run: the run has 2 steps",
      "the `at step 50` actions never run: the run has 2 steps",
    ]);
  });
});

describe("an optimizer's action", () => {
  it("reads `lr` scheduled as its update does (times `lr_scale`)", async () => {
    const text = program().replace("    v *= 0.5\n", "    v = zeros_like(v) + lr\n");
    const run = compile(text);
    const device = cpu64();
    const store = (await train(run, device, { steps: 1 })).store;
    const feeds = new Map(store);
    for (const [name, t] of stepScalars(run.step, 3, 0.25, true)) feeds.set(name, t);
    const out = await device.run(run.step, run.step.actions[0]!.entry, feeds);
    for (const name of ["state:l1.merging.A:v", "state:head.merging.B:v"])
      expect(
        [...out.get(name)!.data].every((x) => x === 0.01 * 0.25),
        name,
      ).toBe(true);
  });
});

describe("train-block and model actions", () => {
  it("a train block's `at step` assigns the model's parameters through `model`", async () => {
    const run = compile(
      program({
        period: 1000,
        trainActions: "  at step 2 {\n    model.head.bias = model.head.bias + 1\n  }",
      }),
    );
    const action = run.step.actions.find((a) => a.entry.name === "action:step2");
    expect(action?.entry.outputs.map((o) => o.name)).toEqual(["param:head.bias"]);
    const plain = compile(program({ period: 1000 }));
    const two = (await train(plain, cpu64(), { steps: 2 })).store;
    const moved = (await train(run, cpu64(), { steps: 2 })).store;
    expectClose(
      values(moved, "param:head.bias"),
      values(two, "param:head.bias").map((x) => x + 1),
      "head.bias",
    );
    // once: not again at step 4
    const four = (await train(run, cpu64(), { steps: 4 })).store;
    expect(values(four, "param:head.bias")[0]).toBeCloseTo(
      values(moved, "param:head.bias")[0]!,
      12,
    );
  });

  it("a model's action assigns its parameters; a member read after an assignment sees the new value", async () => {
    const text = program({ period: 1000 }).replace(
      "model Net {",
      `model Net {
  doubled = head.bias * 2
  at step 1 {
    let first = doubled
    head.bias = ones
    l1.bias = ones
    head.bias = doubled + first
  }`,
    );
    const initial = (await train(compile(program({ period: 1000 })), cpu64(), { steps: 1 })).store;
    const store = (await train(compile(text), cpu64(), { steps: 1 })).store;
    expect([...values(store, "param:l1.bias")]).toEqual(new Array(8).fill(1));
    // `doubled` read again after `head.bias = ones` is 2, not its value from before (cached)
    expectClose(
      values(store, "param:head.bias"),
      values(initial, "param:head.bias").map((b) => 2 + 2 * b),
      "head.bias",
    );
  });
});

describe("lrkc build --emit ir", () => {
  it("lists each action entry with its schedule and outputs", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-actions-ir-"));
    try {
      writeFileSync(join(dir, "a.lrk"), program());
      const r = spawnSync(
        process.execPath,
        [join(root, "bin", "lrkc.js"), "build", "a.lrk", "--emit", "ir"],
        {
          cwd: dir,
          encoding: "utf8",
        },
      );
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain(
        "// entry action:every3: the `at` actions after steps 3, 6, …: 14 outputs",
      );
      expect(r.stdout).toMatch(/\/\/ {3}param:l1\.weight = %\d+/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("through the CLI (--device cpu64)", () => {
  // checkpoints every 3 steps: each one right after the action of `at every 3`
  const text = program({ steps: 300 }).replace("  seed 4\n", "  seed 4\n  checkpoint every 3\n");

  it("a run killed mid-way resumes from its last checkpoint (after an action) and ends bit for bit as the uninterrupted run", async () => {
    // killed without warning once step 20 is logged: no checkpoint of its own, the last one stays
    const { after, resumed } = await killAndResume(text, "cpu64", 20);
    expect(after % 3, resumed.stderr).toBe(0);
    expect(after).toBeGreaterThanOrEqual(18);
  }, 60_000);
});

describe("actions due at the same step", () => {
  it("run in the documented order whatever their schedules: model, adapters, optimizers, train block in order", async () => {
    const text = program({
      period: 3,
      trainActions: [
        "  at step 3 {",
        "    model.head.bias = model.head.bias * 2",
        "  }",
        "  at every 3 {",
        "    model.head.bias = model.head.bias + 10",
        "  }",
      ].join("\n"),
    }).replace("model Net {", "model Net {\n  at every 3 {\n    head.bias = head.bias + 1\n  }");
    const run = compile(text);
    expect(run.step.actions.map((a) => a.entry.name)).toEqual([
      "action:every3",
      "action:step3",
      "action:every3.2",
    ]);
    const before = (await train(compile(program({ period: 1000 })), cpu64(), { steps: 3 })).store;
    const after = (await train(run, cpu64(), { steps: 3 })).store;
    expectClose(
      values(after, "param:head.bias"),
      values(before, "param:head.bias").map((b) => (b + 1) * 2 + 10),
      "head.bias",
    );
  });
});

function diagnosticsOf(text: string) {
  return prepare(new SourceFile("test.lrk", text)).diagnostics.filter(
    (d) => d.severity === "error",
  );
}

describe("what actions cannot say", () => {
  it("assigning something that is not stored is E0206 at its line, with what can be assigned", () => {
    const text = program().replace("    B = zeros\n", "    B = zeros\n    scale = 3\n");
    const [d, ...rest] = diagnosticsOf(text);
    expect(rest).toEqual([]);
    expect(d?.code).toBe("E0206");
    expect(d?.message).toBe("`scale` cannot be assigned in an action");
    // at the target, on its line
    expect(text.slice(d!.at!.span.start, d!.at!.span.end)).toBe("scale");
    expect(text.slice(0, d!.at!.span.start).split("\n").length).toBe(
      text.split("\n").indexOf("    scale = 3") + 1,
    );
    expect(d?.help).toContain("wrapped module's (`base.weight`)");
  });

  for (const [what, statement, code, message] of [
    ["`return`", "    return 1\n", "E0206", "`return` cannot be used in an action"],
    [
      "a name the action was given",
      "    step = 3\n",
      "E0206",
      "`step` cannot be assigned in an action",
    ],
    [
      "a parameter inside an `if` on a tensor (it would be assigned whatever the condition)",
      "    if sum(A) > 0 {\n      B = zeros\n    }\n",
      "E0206",
      "`l1.merging.B` can only be assigned by the action's own statements",
    ],
    [
      "an initializer's unknown argument",
      "    A = normal(sd: 1)\n",
      "E0205",
      "`normal` has no parameter `sd`",
    ],
  ] as const) {
    it(`${what} is ${code}`, () => {
      const [d, ...rest] = diagnosticsOf(
        program().replace("    B = zeros\n", `    B = zeros\n${statement}`),
      );
      expect([d?.code, d?.message]).toEqual([code, message]);
      // (the same again for the adapter's other module, `head`)
      expect(rest.map((r) => r.code)).toEqual(rest.length ? [code] : []);
    });
  }

  it("an inner optimizer's actions (which would never run) are E0206 at the action", () => {
    const text = trpProgram(2).replace(
      "optimize l1.weight, head.weight with trp(lr: 0.1, period: 2, energy: 0.6, nuclear: 0.0003)",
      "optimize l1.weight, head.weight with std.optim.galore(rank: 1, inner: std.optim.relora_adamw(lr: 0.01, period: 2))",
    );
    expect(text).toContain("galore");
    const errors = diagnosticsOf(text);
    expect(errors.map((d) => [d.code, d.message])).toEqual([
      [
        "E0206",
        "the `at` actions of `relora_adamw` do not run when it is another optimizer's `inner`",
      ],
    ]);
    expect(errors[0]!.at!.file.path).toContain("stdlib/optim.lrk");
  });

  it("a schedule that is not a positive integer is E0402", () => {
    const [d] = diagnosticsOf(program({ period: 0 }));
    expect(d?.code).toBe("E0402");
    expect(d?.message).toContain("positive integer");
  });

  it("a shape that does not fit the assigned tensor is E0401", () => {
    const text = program().replace("    B = zeros\n", "    B = A\n");
    const [d] = diagnosticsOf(text);
    expect(d?.code).toBe("E0401");
    expect(d?.message).toContain("f32[8, 2]");
  });
});

describe("on WebGPU", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  }, 60_000);
  afterAll(() => device?.destroy());

  async function compareOnGpu(text: string, steps = 7): Promise<void> {
    const run = compile(text);
    await loadOnGpu(device, run);
    const gpu = await train(run, device, { steps });
    const cpu = await train(run, new CpuDevice(), { steps });
    gpu.losses.forEach((l, i) =>
      expect(Math.abs(l - cpu.losses[i]!) / Math.abs(cpu.losses[i]!), `loss ${i + 1}`).toBeLessThan(
        1e-3,
      ),
    );
    for (const [name, want] of cpu.store)
      expect(relativeDiff(gpu.store.get(name) as Tensor, want), name).toBeLessThan(1e-3);
  }

  it("the action entries compile under Dawn and agree with the interpreter across two actions", async () => {
    await compareOnGpu(program());
  });

  it("TRP's truncation agrees with the interpreter across three truncations", async () => {
    await compareOnGpu(trpProgram(2));
  });

  it("the weight refactorization (an SVD in an action) and optimizer restarts agree with the interpreter", async () => {
    // Through the first restart and one step after it: the f32 SVDs of the two devices differ in
    // rounding, and Adam's first steps after a reset (≈ lr·sign(g)) amplify that chaotically later.
    await compareOnGpu(refactorProgram(3), 4);
  });

  it("ReLoRA with magnitude pruning and a restart warm-up agrees with the interpreter across two merges", async () => {
    await compareOnGpu(
      reloraProgram("relora_adamw(lr: 0.01, period: 3, prune: 0.5, restart_warmup: 2)"),
    );
  });
});

// ------------------------------------------------------------------------------------ ReLoRA

/** The moons Net with std's ReLoRA on both layers, its optimizer on the adapters. */
function reloraProgram(optimizer: string, period = 3): string {
  return `import std.nn.{Linear}
import std.adapters.{relora}
import std.optim.{relora_adamw}

data moons = std.data.two_moons(n: 64, seed: 2)

model Net {
  l1 = Linear(2, 8)
  head = Linear(8, 2)
  forward(x: f32[B, 2]) = head(relu(l1(x)))
}

train t {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  adapt l1, head with relora(rank: 2, period: ${period}, alpha: 4, dropout: 0)
  optimize adapters with ${optimizer}
  steps 7
  batch 8
  seed 4
}
`;
}

/** torch.quantile-style magnitude pruning: keep the N - 1 - floor(p (N - 1)) largest |x|. */
function magnitudePruned(x: Float64Array, p: number): number[] {
  const n = x.length;
  const keep = n - 1 - Math.floor(p * (n - 1));
  const order = [...x.keys()].sort((i, j) => Math.abs(x[j]!) - Math.abs(x[i]!) || i - j);
  const kept = new Set(order.slice(0, keep));
  return [...x].map((v, i) => (kept.has(i) ? v : 0));
}

describe("ReLoRA (std.adapters.relora + std.optim.relora_adamw)", () => {
  const modules = [
    ["l1", 8, 2],
    ["head", 2, 8],
  ] as const;

  it("after step `period`: W += (alpha/rank)·B·A, A redrawn Kaiming (bound 1/sqrt(in)), B = 0, moments zeroed", async () => {
    const before = (
      await train(compile(reloraProgram("relora_adamw(lr: 0.01, period: 1000)", 1000)), cpu64(), {
        steps: 3,
      })
    ).store;
    const after = (
      await train(compile(reloraProgram("relora_adamw(lr: 0.01, period: 3)")), cpu64(), {
        steps: 3,
      })
    ).store;
    for (const [module, out, inp] of modules) {
      const A = values(before, `param:${module}.relora.A`);
      const B = values(before, `param:${module}.relora.B`);
      expect(
        B.some((b) => b !== 0),
        "B trained away from 0",
      ).toBe(true);
      const BA = matmul(B, A, out, 2, inp);
      expectClose(
        values(after, `param:${module}.weight`),
        values(before, `param:${module}.weight`).map((w, i) => w + (4 / 2) * BA[i]!),
        `${module}.weight`,
      );
      const seed = hash32(paramSeed(4, `${module}.relora.A`), 3);
      const bound = 1 / Math.sqrt(inp);
      values(after, `param:${module}.relora.A`).forEach((a, i) =>
        expect(a).toBeCloseTo(uniformAt(seed, i) * 2 * bound - bound, 12),
      );
      expect([...values(after, `param:${module}.relora.B`)]).toEqual(new Array(out * 2).fill(0));
      for (const p of ["A", "B"])
        for (const s of ["exp_avg", "exp_avg_sq"])
          expect([...values(after, `state:${module}.relora.${p}:${s}`)]).toEqual(
            new Array(p === "A" ? 2 * inp : out * 2).fill(0),
          );
    }
  });

  it("prune: 0.5 keeps the largest half of each moment by magnitude (torch.quantile's rule)", async () => {
    const before = (
      await train(
        compile(reloraProgram("relora_adamw(lr: 0.01, period: 1000, prune: 0.5)", 1000)),
        cpu64(),
        { steps: 3 },
      )
    ).store;
    const after = (
      await train(
        compile(reloraProgram("relora_adamw(lr: 0.01, period: 3, prune: 0.5)")),
        cpu64(),
        {
          steps: 3,
        },
      )
    ).store;
    for (const [module] of modules)
      for (const p of ["A", "B"])
        for (const s of ["exp_avg", "exp_avg_sq"]) {
          const name = `state:${module}.relora.${p}:${s}`;
          const want = magnitudePruned(values(before, name), 0.5);
          // (a pruned entry may be -0: x times a 0 of the mask)
          expect(
            [...values(after, name)].map((x) => x + 0),
            name,
          ).toEqual(want);
          // 16 entries: 16 - 1 - floor(7.5) = 8 kept (fewer where moments are 0)
          expect(want.filter((x) => x !== 0).length).toBeLessThanOrEqual(
            values(before, name).length / 2,
          );
        }
  });

  it("restart warm-up: the first step after a restart takes lr · 1/restart_warmup", async () => {
    const run = compile(reloraProgram("relora_adamw(lr: 0.01, period: 3, restart_warmup: 4)"));
    const at3 = (await train(run, cpu64(), { steps: 3 })).store;
    const at4 = (await train(run, cpu64(), { steps: 4 })).store;
    const [b1, b2, eps, t] = [0.9, 0.999, 1e-8, 4];
    for (const [module] of modules) {
      const name = `${module}.relora.A`;
      // moments were reset after step 3: m4 = (1 - β1) g, v4 = (1 - β2) g²
      const m = values(at4, `state:${name}:exp_avg`);
      const v = values(at4, `state:${name}:exp_avg_sq`);
      const g = m.map((x) => x / (1 - b1));
      expectClose(
        v,
        g.map((x) => (1 - b2) * x * x),
        "v",
      );
      const size = 0.01 * ((((t - 1) % 3) + 1) / 4);
      const want = values(at3, `param:${name}`).map(
        (p, i) => p - (size * (m[i]! / (1 - b1 ** t))) / (Math.sqrt(v[i]! / (1 - b2 ** t)) + eps),
      );
      expectClose(values(at4, `param:${name}`), want, name);
    }
  });

  it("a ReLoRA run stopped right after a merge and resumed reproduces the uninterrupted run bit for bit", async () => {
    const run = compile(
      reloraProgram("relora_adamw(lr: 0.01, period: 3, prune: 0.5, restart_warmup: 2)"),
    );
    const { whole, resumed } = await stopAndResume(run, cpu64(), 6, { floats: "F64" });
    expectSameTensors(resumed.store, whole.store);
  });
});

// --------------------------------------- weight refactorization + optimizer restarts (Glentis)

function refactorProgram(period: number, recovery = 3): string {
  return reloraProgram("", period)
    .replace("import std.adapters.{relora}", "import std.adapters.{lowrank_refactor}")
    .replace("import std.optim.{relora_adamw}", "import std.optim.{adamw_restarts}")
    .replace(
      /adapt l1, head with relora\([^)]*\)/,
      `adapt l1, head with lowrank_refactor(rank: 2, period: ${period}, alpha: 4)`,
    )
    .replace(
      "optimize adapters with ",
      `optimize adapters with adamw_restarts(lr: 0.05, period: ${period}, recovery: ${recovery})`,
    );
}

/** The singular values of B A (rank 2): the square roots of the eigenvalues of (BᵀB)(AAᵀ). */
function singularValues(B: Float64Array, A: Float64Array, out: number, inp: number): number[] {
  const gram = (x: Float64Array, rows: number, cols: number, byRows: boolean) => {
    // BᵀB (2×2) over the rows of B [out, 2], or AAᵀ (2×2) over the columns of A [2, in]
    const g = [0, 0, 0, 0];
    for (let i = 0; i < 2; i++)
      for (let j = 0; j < 2; j++)
        for (let k = 0; k < (byRows ? rows : cols); k++)
          g[i * 2 + j] += byRows
            ? x[k * cols + i]! * x[k * cols + j]!
            : x[i * cols + k]! * x[j * cols + k]!;
    return g;
  };
  const b = gram(B, out, 2, true);
  const a = gram(A, 2, inp, false);
  const m = [
    b[0]! * a[0]! + b[1]! * a[2]!,
    b[0]! * a[1]! + b[1]! * a[3]!,
    b[2]! * a[0]! + b[3]! * a[2]!,
    b[2]! * a[1]! + b[3]! * a[3]!,
  ];
  const trace = m[0]! + m[3]!;
  const det = m[0]! * m[3]! - m[1]! * m[2]!;
  const root = Math.sqrt(Math.max(0, (trace * trace) / 4 - det));
  return [trace / 2 + root, trace / 2 - root].map((x) => Math.sqrt(Math.max(0, x)));
}

describe("weight refactorization + optimizer restarts (std.adapters.lowrank_refactor + std.optim.adamw_restarts)", () => {
  const modules = [
    ["l1", 8, 2],
    ["head", 2, 8],
  ] as const;

  it("after step `period`: B A unchanged, B = U Σ^½ and A = Σ^½ Vᵀ (BᵀB = AAᵀ = diag σ), optimizer state zeroed", async () => {
    const before = (await train(compile(refactorProgram(1000)), cpu64(), { steps: 3 })).store;
    const after = (await train(compile(refactorProgram(3)), cpu64(), { steps: 3 })).store;
    for (const [module, out, inp] of modules) {
      const A0 = values(before, `param:${module}.lowrank_refactor.A`);
      const B0 = values(before, `param:${module}.lowrank_refactor.B`);
      const A = values(after, `param:${module}.lowrank_refactor.A`);
      const B = values(after, `param:${module}.lowrank_refactor.B`);
      const product = matmul(B0, A0, out, 2, inp);
      const refactored = matmul(B, A, out, 2, inp);
      refactored.forEach((x, i) => expect(x, `${module} (BA)[${i}]`).toBeCloseTo(product[i]!, 9));
      const sigma = singularValues(B0, A0, out, inp);
      expect(sigma[0]).toBeGreaterThan(1e-4);
      // BᵀB and AAᵀ are both diag(σ)
      for (let i = 0; i < 2; i++)
        for (let j = 0; j < 2; j++) {
          let bb = 0;
          for (let k = 0; k < out; k++) bb += B[k * 2 + i]! * B[k * 2 + j]!;
          let aa = 0;
          for (let k = 0; k < inp; k++) aa += A[i * inp + k]! * A[j * inp + k]!;
          const want = i === j ? sigma[i]! : 0;
          expect(bb, `${module} BᵀB[${i},${j}]`).toBeCloseTo(want, 9);
          expect(aa, `${module} AAᵀ[${i},${j}]`).toBeCloseTo(want, 9);
        }
      for (const p of ["A", "B"])
        for (const s of ["m", "v", "count"])
          expect(
            [...values(after, `state:${module}.lowrank_refactor.${p}:${s}`)].every((x) => x === 0),
            `${p}:${s}`,
          ).toBe(true);
    }
  });

  it("after a restart the bias corrections count from 1 again and the lr recovers from 0.001×", async () => {
    const run = compile(refactorProgram(3, 3));
    const at3 = (await train(run, cpu64(), { steps: 3 })).store;
    const at4 = (await train(run, cpu64(), { steps: 4 })).store;
    const at5 = (await train(run, cpu64(), { steps: 5 })).store;
    const [b1, b2, eps, lr] = [0.9, 0.999, 1e-8, 0.05];
    for (const [module] of modules) {
      const name = `${module}.lowrank_refactor.B`;
      expect([...values(at4, `state:${name}:count`)]).toEqual([1]);
      // step 4: count 1, j = 0: lr · 0.001 · m̂ / (sqrt(v̂) + eps) with m̂ = m/(1-β1), v̂ = v/(1-β2)
      const m4 = values(at4, `state:${name}:m`);
      const v4 = values(at4, `state:${name}:v`);
      const want4 = values(at3, `param:${name}`).map(
        (p, i) => p - (lr * 0.001 * (m4[i]! / (1 - b1))) / (Math.sqrt(v4[i]! / (1 - b2)) + eps),
      );
      expectClose(values(at4, `param:${name}`), want4, `${name} at 4`);
      // step 5: count 2, j = 1 of recovery 3: lr · (0.001 + 0.999 · 1/2)
      const m5 = values(at5, `state:${name}:m`);
      const v5 = values(at5, `state:${name}:v`);
      const want5 = values(at4, `param:${name}`).map(
        (p, i) =>
          p -
          (lr * (0.001 + 0.999 * 0.5) * (m5[i]! / (1 - b1 ** 2))) /
            (Math.sqrt(v5[i]! / (1 - b2 ** 2)) + eps),
      );
      expectClose(values(at5, `param:${name}`), want5, `${name} at 5`);
    }
  });

  it("a run stopped right after a restart and resumed reproduces the uninterrupted run bit for bit", async () => {
    const run = compile(refactorProgram(3));
    const { whole, resumed } = await stopAndResume(run, cpu64(), 3, { floats: "F64" });
    expectSameTensors(resumed.store, whole.store);
  });
});

// ----------------------------------------------------------------- the examples, and their counts

function example(name: string, options: { steps?: number; batch?: number } = {}): TestRun {
  const path = join(root, "examples", name);
  const { run, diagnostics } = prepare(new SourceFile(path, readFileSync(path, "utf8")), {
    batch: options.batch ?? 2,
    steps: options.steps,
  });
  if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  return run;
}

describe("the ReLoRA and low-rank restarts examples", () => {
  const matrices = (run: TestRun) =>
    run.program.params.filter((p) => p.origin === "adapter" && p.path.endsWith(".A"));

  for (const [name, adapter, rank, perTensor] of [
    ["relora_pretrain.lrk", "relora", 16, 0],
    ["lowrank_restarts.lrk", "lowrank_refactor", 32, 1],
  ] as const) {
    it(`${name}: r·(m + n) trainable per adapted matrix, optimizer state 2·r·(m + n)${perTensor ? " + a step count per factor" : ""}`, () => {
      const run = example(name);
      const report = memoryReport(run.step);
      const adapted = matrices(run);
      expect(adapted.length).toBe(12); // 2 blocks × (q, k, v, o, up, down)
      for (const a of adapted) {
        const module = a.path.slice(0, -`.${adapter}.A`.length);
        const [r, inp] = a.shape as [number, number];
        const b = run.program.params.find((p) => p.path === `${module}.${adapter}.B`)!;
        const out = b.shape[0]!;
        expect(r).toBe(rank);
        expect(b.shape).toEqual([out, rank]);
        const state =
          report.statesByParam.get(`${module}.${adapter}.A`)! +
          report.statesByParam.get(`${module}.${adapter}.B`)!;
        expect(state, module).toBe(4 * (2 * rank * (inp + out) + 2 * perTensor));
      }
      expect(run.step.actions.map((x) => [x.trigger, x.count])).toEqual([["every", 100]]);
    });
  }

  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  }, 60_000);
  afterAll(() => device?.destroy());

  for (const name of ["relora_pretrain.lrk", "lowrank_restarts.lrk"]) {
    it(`${name} trains 3 steps across an action (period 2) with equal losses on CPU and WebGPU`, async () => {
      const path = join(root, "examples", name);
      // one small layer (d 16, rank 4): the kernels are the same as at full size
      const text = readFileSync(path, "utf8")
        .replace(/period: 100/g, "period: 2")
        .replace(/rank: \d+/, "rank: 4")
        .replace(
          "TinyLM(vocab: arith.vocab)",
          "TinyLM(vocab: arith.vocab, d: 16, layers: 1, heads: 2)",
        );
      const { run } = prepare(new SourceFile(path, text), { batch: 2, steps: 3 });
      await loadOnGpu(device, run!);
      const gpu = await train(run!, device, { steps: 3 });
      const cpu = await train(run!, new CpuDevice(), { steps: 3 });
      expect(cpu.losses.every(Number.isFinite)).toBe(true);
      gpu.losses.forEach((l, i) =>
        expect(Math.abs(l - cpu.losses[i]!) / cpu.losses[i]!, `loss ${i + 1}`).toBeLessThan(1e-4),
      );
    }, 120_000);
  }
});

// -------------------------------------------------------------------------------------- TRP

function trpProgram(period: number, nuclear = 3e-4): string {
  return `import std.nn.{Linear}
import std.optim.{trp, sgd}

data moons = std.data.two_moons(n: 64, seed: 2)

model Net {
  l1 = Linear(2, 8)
  head = Linear(8, 2)
  forward(x: f32[B, 2]) = head(relu(l1(x)))
}

train t {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize l1.weight, head.weight with trp(lr: 0.1, period: ${period}, energy: 0.6, nuclear: ${nuclear})
  optimize ** with sgd(lr: 0.1)
  steps 6
  batch 8
  seed 4
}
`;
}

/**
 * The energy truncation of a matrix with 2 columns (or 2 rows) and its U_k V_kᵀ, from the
 * eigenvectors of the 2×2 Gram matrix: σ_i² its eigenvalues, W = Σ σ_i u_i v_iᵀ.
 */
function energyTruncation(
  w: Float64Array,
  rows: number,
  cols: number,
  energy: number,
): { truncated: Float64Array; sub: Float64Array; kept: number } {
  if (rows === 2 && cols !== 2) {
    const t = new Float64Array(rows * cols);
    for (let i = 0; i < rows; i++)
      for (let j = 0; j < cols; j++) t[j * rows + i] = w[i * cols + j]!;
    const r = energyTruncation(t, cols, rows, energy);
    const back = (x: Float64Array) => {
      const out = new Float64Array(rows * cols);
      for (let i = 0; i < rows; i++)
        for (let j = 0; j < cols; j++) out[i * cols + j] = x[j * rows + i]!;
      return out;
    };
    return { truncated: back(r.truncated), sub: back(r.sub), kept: r.kept };
  }
  // W [rows, 2]: G = WᵀW = [[a, b], [b, c]]
  let [a, b, c] = [0, 0, 0];
  for (let i = 0; i < rows; i++) {
    const [x, y] = [w[i * 2]!, w[i * 2 + 1]!];
    a += x * x;
    b += x * y;
    c += y * y;
  }
  const mid = (a + c) / 2;
  const spread = Math.sqrt(((a - c) / 2) ** 2 + b * b);
  const lambdas = [mid + spread, mid - spread];
  const vectors = lambdas.map((l) => {
    const v = Math.abs(b) > 1e-300 ? [b, l - a] : l === a ? [1, 0] : [0, 1];
    const norm = Math.hypot(v[0]!, v[1]!);
    return [v[0]! / norm, v[1]! / norm] as const;
  });
  const total = a + c;
  const kept = lambdas[0]! >= energy * total ? 1 : 2;
  const truncated = new Float64Array(rows * 2);
  const sub = new Float64Array(rows * 2);
  for (let k = 0; k < kept; k++) {
    const v = vectors[k]!;
    const sigma = Math.sqrt(lambdas[k]!);
    for (let i = 0; i < rows; i++) {
      const wv = w[i * 2]! * v[0] + w[i * 2 + 1]! * v[1]; // σ u_i
      for (let j = 0; j < 2; j++) {
        truncated[i * 2 + j]! += wv * v[j]!;
        sub[i * 2 + j]! += (wv / sigma) * v[j]!;
      }
    }
  }
  return { truncated, sub, kept };
}

describe("TRP (std.optim.trp)", () => {
  const weights = [
    ["l1.weight", 8, 2],
    ["head.weight", 2, 8],
  ] as const;

  it("after step `period`: W is its energy truncation U_k Σ_k V_kᵀ, and U_k V_kᵀ is kept for the next step", async () => {
    const before = (await train(compile(trpProgram(1000)), cpu64(), { steps: 2 })).store;
    const after = (await train(compile(trpProgram(2)), cpu64(), { steps: 2 })).store;
    const kept: number[] = [];
    for (const [path, rows, cols] of weights) {
      const want = energyTruncation(values(before, `param:${path}`), rows, cols, 0.6);
      kept.push(want.kept);
      expectClose(values(after, `param:${path}`), want.truncated, path);
      expectClose(values(after, `state:${path}:sub`), want.sub, `${path} sub`);
    }
    expect(kept).toContain(1); // a rank was pruned
  });

  it("keeps momentum and the sub-gradient: 2·m·n optimizer state per matrix (as torch SGD + the reference's `sub`)", () => {
    const report = memoryReport(compile(trpProgram(2)).step);
    for (const [path, rows, cols] of weights)
      expect(report.statesByParam.get(path), path).toBe(4 * 2 * rows * cols);
  });

  it("step 1 adds nuclear · U_k V_kᵀ of the initial W to the gradient", async () => {
    const withNuclear = compile(trpProgram(2, 0.01));
    const initial = await initialize(withNuclear.program, cpu64());
    const a = (await train(withNuclear, cpu64(), { steps: 1 })).store;
    const b = (await train(compile(trpProgram(2, 0)), cpu64(), { steps: 1 })).store;
    for (const [path, rows, cols] of weights) {
      const sub0 = energyTruncation(values(initial, `param:${path}`), rows, cols, 0.6).sub;
      const pa = values(a, `param:${path}`);
      const pb = values(b, `param:${path}`);
      expectClose(
        pa.map((x, i) => x - pb[i]!),
        sub0.map((s) => -0.1 * 0.01 * s),
        path,
      );
    }
  });
});
