// lrkc build: --emit params shows adapters exactly where the selectors say; --emit memory reports
// optimizer state by the method cards' formulas; --emit ir prints the step; shape errors are E0401.
// `lrkc build` runs in process (tests/cli-in-process.ts); `lrkc train` in a child process.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { prepare } from "./program-helpers.js";
import { SourceFile } from "../language/source.js";
import { root } from "./helpers.js";
import { lrkcInProcess } from "./cli-in-process.js";
import { CpuDevice } from "../runtime/device.js";
import { writeSafetensors } from "../runtime/safetensors.js";
import { initialize } from "../runtime/trainer.js";

/** `lrkc <args>` in a child process, in the repository's root. */
function lrkcProcess(...args: string[]) {
  const r = spawnSync(process.execPath, [join(root, "bin", "lrkc.js"), ...args], {
    cwd: root,
    encoding: "utf8",
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `lrkc <args>` in process, in the repository's root (what `build` prints and writes is checked). */
async function lrkc(...args: string[]) {
  const r = await lrkcInProcess(args, root);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("lrkc build --emit params", () => {
  it("puts LoRA adapters exactly on the selected modules", async () => {
    const r = await lrkc("build", "examples/lora_finetune.lrk", "--emit", "params");
    expect(r.code).toBe(0);
    const rows = r.stdout.split("\n").filter((l) => /^\S+\s+f32\[/.test(l));
    const adapted = [
      ...new Set(
        rows
          .filter((l) => l.includes(".lora."))
          .map((l) => l.split(/\s+/)[0]!.replace(/\.lora\.[AB]$/, "")),
      ),
    ];
    // examples/lora_finetune.lrk: adapt blocks.*.attn.{q, k, v, o} …, blocks.*.mlp.{up, down} …
    expect(adapted.sort()).toEqual(
      ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.down", "mlp.up"]
        .flatMap((m) => [`blocks.0.${m}`, `blocks.1.${m}`])
        .sort(),
    );
    for (const row of rows) {
      const [path, , status] = row.split(/\s{2,}/);
      expect(status, path).toBe(path!.includes(".lora.") ? "trainable" : "frozen");
    }
    // A (rank × in) and B (out × rank), rank 8
    expect(rows.find((l) => l.startsWith("blocks.0.attn.q.lora.A"))).toContain("f32[8, 128]");
    expect(rows.find((l) => l.startsWith("blocks.1.mlp.up.lora.B"))).toContain("f32[512, 8]");
    expect(rows.find((l) => l.startsWith("blocks.1.mlp.down.lora.A"))).toContain("f32[8, 512]");
  });
});

describe("lrkc build --emit memory", () => {
  it("shows GaLore's optimizer state as the card's formula: projector min(m,n)·r + moments 2·max(m,n)·r", async () => {
    const r = await lrkc("build", "examples/galore_pretrain.lrk", "--emit", "memory");
    expect(r.code).toBe(0);
    const galore = r.stdout.split("\n").filter((l) => l.includes(" galore: "));
    expect(galore.length).toBe(12); // 2 blocks × (q, k, v, o, up, down)
    const rank = 32; // examples/galore_pretrain.lrk: galore(rank: 32, …)
    for (const line of galore) {
      const [m, n] = line
        .match(/\[(\d+), (\d+)\]/)!
        .slice(1)
        .map(Number) as [number, number];
      const elements = Number(line.match(/= ([\d,]+) elements/)![1]!.replace(/,/g, ""));
      expect(elements, line).toBe(Math.min(m, n) * rank + 2 * Math.max(m, n) * rank);
    }
    const total = Number(
      r.stdout.match(/optimizer state\s+\S+ \S+\s+([\d,]+) B/)![1]!.replace(/,/g, ""),
    );
    expect(total).toBeGreaterThan(0);
    expect(r.stdout).toContain("full fine-tuning with AdamW");
  });

  it("counts a LoRA fine-tune's trainable bytes as r·(m + n) per adapted matrix", async () => {
    const r = await lrkc("build", "examples/lora_finetune.lrk", "--emit", "memory");
    expect(r.code).toBe(0);
    const trainable = Number(
      r.stdout.match(/trainable parameters\s+\S+ \S+\s+([\d,]+) B/)![1]!.replace(/,/g, ""),
    );
    // per block: q, k, v, o with rank 8 (128+128), up, down with rank 8 (128+512); two blocks;
    // 4 bytes each
    expect(trainable).toBe(4 * 2 * (4 * 8 * 256 + 2 * 8 * 640));
  });
});

describe("lrkc build --emit memory: the planned buffers", () => {
  it("are the plan's buffers by role, summing to the plan's peak (`--emit plan --device portable`)", async () => {
    const memory = await lrkc("build", "examples/lora_finetune.lrk", "--emit", "memory");
    const plan = await lrkc(
      "build",
      "examples/lora_finetune.lrk",
      "--emit",
      "plan",
      "--device",
      "portable",
    );
    expect(memory.code).toBe(0);
    expect(plan.code).toBe(0);
    const planned = memory.stdout.slice(memory.stdout.indexOf("planned GPU buffers"));
    const bytes = (label: string) =>
      Number(
        planned
          .match(new RegExp(`^${label}[^\\n]*?\\s{2,}\\S+ \\S+\\s+([\\d,]+) B`, "m"))![1]!
          .replace(/,/g, ""),
      );
    const parts = [
      "parameters",
      "optimizer state",
      "step outputs",
      "activations and scratch",
      "batch and scalars",
    ];
    const total = bytes("total");
    expect(parts.reduce((a, p) => a + bytes(p), 0)).toBe(total);
    // the same figure as the plan's header ("peak 14.56 MiB")
    const peak = plan.stdout.match(/peak (\S+ \S+)/)![1];
    expect(planned).toMatch(new RegExp(`^total\\s+${peak!.replace(".", "\\.")}`, "m"));
    // the unfused estimate is labelled as such, and is larger than the fused plan
    const unfused = Number(
      memory.stdout.match(/^total\s+\S+ \S+\s+([\d,]+) B/m)![1]!.replace(/,/g, ""),
    );
    expect(memory.stdout).toContain("before fusion");
    expect(unfused).toBeGreaterThan(total);
  });
});

describe("lrkc build --emit ir", () => {
  it("prints the training step's graph and its entries", async () => {
    const r = await lrkc("build", "examples/mlp.lrk", "--emit", "ir");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/%\d+ = matmul/);
    expect(r.stdout).toContain('input.param "param:l1.weight"');
    expect(r.stdout).toContain("// entry step:");
  });
});

describe("lrkc build --emit plan|wgsl", () => {
  it("lists the kernels in dispatch order and writes plan.json and one .wgsl file per kernel", async () => {
    const plan = await lrkc("build", "examples/mlp.lrk", "--emit", "plan", "--device", "portable");
    expect(plan.code).toBe(0);
    const count = Number(plan.stdout.match(/: (\d+) kernels/)![1]);
    expect(count).toBeGreaterThan(0);
    expect(plan.stdout).toMatch(/entry step: \d+ dispatches/);
    const out = mkdtempSync(join(tmpdir(), "lrk-plan-"));
    const r = await lrkc(
      "build",
      "examples/mlp.lrk",
      "--emit",
      "wgsl",
      "--out",
      out,
      "--device",
      "portable",
    );
    expect(r.code).toBe(0);
    const written = JSON.parse(readFileSync(join(out, "plan.json"), "utf8")) as {
      kernels: { file: string; wgsl?: string }[];
    };
    expect(written.kernels).toHaveLength(count);
    const files = readdirSync(out).filter((f) => f.endsWith(".wgsl"));
    expect(files).toHaveLength(count);
    // plan.json names each kernel's file rather than repeating its text
    expect(written.kernels.map((k) => k.file).sort()).toEqual([...files].sort());
    expect(written.kernels.every((k) => k.wgsl === undefined)).toBe(true);
    const first = readFileSync(join(out, files.sort()[0]!), "utf8");
    expect(files[0]).toMatch(/^000-matmul/);
    // every kernel opens with the IR nodes and the .lrk lines it computes
    expect(first).toMatch(/^\/\/ .*\n\/\/ computes:\n\/\/   %\d+ = /);
    expect(first).toContain("stdlib/nn.lrk:");
  });
});

describe("lrkc build --emit plan shows the plan the device runs", () => {
  it("equals the plan `lrkc train` wrote to its run folder, kernel for kernel (WebGPU, untuned)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-same-plan-"));
    const built = await lrkc(
      "build",
      "examples/lora_finetune.lrk",
      "--emit",
      "plan",
      "--no-autotune",
      "--out",
      join(dir, "built"),
    );
    expect(built.code, built.stderr).toBe(0);
    // The fine-tune's `init`: the pretraining example's initial weights (their values do not
    // matter here, and writing them in process saves a WebGPU training run with two evaluations).
    const pretrain = join(root, "examples", "tiny_lm_pretrain.lrk");
    const { run: pre } = prepare(new SourceFile(pretrain, readFileSync(pretrain, "utf8")));
    const initial = await initialize(pre!.program, new CpuDevice());
    writeSafetensors(
      join(dir, "pre.safetensors"),
      new Map(
        [...initial].filter(([k]) => k.startsWith("param:")).map(([k, t]) => [k.slice(6), t]),
      ),
    );
    const run = lrkcProcess(
      "train",
      "examples/lora_finetune.lrk",
      "--device",
      "webgpu",
      "--no-autotune",
      "--steps",
      "1",
      "--init",
      join(dir, "pre.safetensors"),
      "--out",
      join(dir, "run"),
    );
    expect(run.code, run.stderr).toBe(0);
    const read = (f: string) => readFileSync(join(dir, f, "plan.json"), "utf8");
    const plan = JSON.parse(read("built")) as { kernels: unknown[]; entries: object };
    expect(plan.kernels.length).toBeGreaterThan(10);
    expect(Object.keys(plan.entries)).toContain("step");
    expect(read("run")).toBe(read("built"));
    // the portable target is another plan: no subgroups, WebGPU's default limits
    const portable = await lrkc(
      "build",
      "examples/lora_finetune.lrk",
      "--emit",
      "plan",
      "--device",
      "portable",
    );
    expect(portable.code).toBe(0);
    expect(portable.stdout).toMatch(/for portable:/);
  }, 300_000);
});

describe("shape errors", () => {
  const program = (forward: string) => `import std.optim.{adamw}
import std.nn.{Linear}

data moons = std.data.two_moons(n: 100)

model Net(d: int = 2) {
  param w: f32[4, 3]
  param v: f32[4, 2]
  l = Linear(3, 2)
  forward(x: f32[B, d]) -> f32[B, 4] = ${forward}
}

train t {
  model Net()
  data moons
  loss mean(model(batch.x))
  optimize ** with adamw(lr: 1e-3)
}
`;

  function check(forward: string) {
    const text = program(forward);
    const { diagnostics } = prepare(new SourceFile("shape.lrk", text));
    const errors = diagnostics.filter((d) => d.severity === "error");
    return errors.map((d) => ({
      code: d.code,
      message: d.message,
      text: text.slice(d.at!.span.start, d.at!.span.end),
      help: d.help,
    }));
  }

  it("E0401: `@` with inner dims that differ, in the user's dim names", () => {
    expect(check("x @ w^T")).toEqual([
      {
        code: "E0401",
        message: "f32[B, 2] @ f32[3, 4]: inner dims 2 and 3 differ",
        text: "x @ w^T",
        help: undefined,
      },
    ]);
    expect(check("x @ v")[0]!.help).toBe("did you mean to transpose the right operand (`@ w^T`)?");
  });

  it("E0401: operands that do not broadcast", () => {
    const [d] = check("x + w");
    expect(d!.code).toBe("E0401");
    expect(d!.message).toBe("f32[B, 2] + f32[4, 3]: dims 2 and 3 differ");
  });

  it("E0401: a call whose argument does not fit the function's declared type", () => {
    const [d] = check("l(x)");
    expect(d!.code).toBe("E0401");
    expect(d!.message).toBe(
      "argument `x` should be f32[..., in], but it is f32[16, 2]: dim in is 3, not 2",
    );
    expect(d!.text).toBe("l(x)");
  });

  it("E0401: a result that does not match the declared return type", () => {
    const [d] = check("x");
    expect(d!.code).toBe("E0401");
    expect(d!.message).toContain("the result should be f32[B, 4]");
  });
});
