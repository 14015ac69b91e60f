// `lrkc train --device cpu` end to end, as a user runs it (the built CLI in dist/, which `npm test`
// builds first): a tiny LoRA fine-tune lowers its loss, exits 0, writes final.safetensors, and
// two runs of the same program print the same losses and write the same weights.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { evaluate, train } from "../runtime/trainer.js";
import { prepare } from "./program-helpers.js";
import { loraTinyLmProgram, root } from "./helpers.js";

const lrkc = join(root, "bin", "lrkc.js");

const program = loraTinyLmProgram("lora_cpu", 1000);

interface Result {
  code: number | null;
  stderr: string;
  /** (step, loss) of every printed progress line. */
  losses: { step: number; loss: number }[];
  out: string;
}

function lrkcTrain(file: string, steps: number): Promise<Result> {
  const out = mkdtempSync(join(tmpdir(), "lrk-train-out-"));
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [lrkc, "train", file, "--device", "cpu", "--steps", String(steps), "--out", out],
      { cwd: root, env: { ...process.env, NO_COLOR: "1" } },
    );
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stderr += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      const losses = [...stderr.matchAll(/^step +(\d+)\/\d+ +loss (\S+)/gm)].map((m) => ({
        step: Number(m[1]),
        loss: Number(m[2]),
      }));
      resolve({ code, stderr, losses, out });
    });
  });
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

describe("lrkc train --device cpu", () => {
  let file: string;
  let first: Promise<Result>;

  beforeAll(() => {
    if (!existsSync(join(root, "dist", "cli", "main.js")))
      throw new Error("lrkc is not built: run `npm run build` (npm test does) first");
    const dir = mkdtempSync(join(tmpdir(), "lrk-train-"));
    file = join(dir, "lora_cpu.lrk");
    writeFileSync(file, program);
    first = lrkcTrain(file, 50);
  });

  it("a tiny LoRA fine-tune lowers the loss over 50 steps and writes final.safetensors", async () => {
    const r = await first;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain("training `lora_cpu` for 50 steps (batch 16) on cpu");
    // progress is printed at step 1, every 50/20 → 2 steps, and the last: 26 lines
    expect(r.losses.map((l) => l.step)).toEqual([
      1,
      ...Array.from({ length: 25 }, (_, i) => 2 * (i + 1)),
    ]);
    for (const l of r.losses) expect(Number.isFinite(l.loss)).toBe(true);
    const losses = r.losses.map((l) => l.loss);
    const head = mean(losses.slice(0, 10));
    const tail = mean(losses.slice(-10));
    expect(tail, `first 10: ${head}, last 10: ${tail}`).toBeLessThan(head - 0.5);
    // and below the loss of a uniform prediction over the 16 tokens: it learned something
    expect(tail).toBeLessThan(Math.log(16));
    expect(r.stderr).toMatch(/done in \S+: loss \S+ → \S+\n  weights: /);
    const weights = join(r.out, "final.safetensors");
    expect(existsSync(weights)).toBe(true);
    // a safetensors file: an 8-byte little-endian header length, then a JSON header
    const bytes = readFileSync(weights);
    const headerLength = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString("utf8"));
    expect(Object.keys(header)).toContain("blocks.0.attn.q.lora.A");
    expect(Object.keys(header)).toContain("blocks.0.attn.v.lora.B");
  });

  it("is deterministic: a second run prints the same losses and writes the same weights", async () => {
    const [a, b] = [await first, await lrkcTrain(file, 50)];
    expect(b.code, b.stderr).toBe(0);
    expect(b.losses).toEqual(a.losses);
    expect(b.losses.length).toBe(26);
    expect(
      readFileSync(join(b.out, "final.safetensors")).equals(
        readFileSync(join(a.out, "final.safetensors")),
      ),
    ).toBe(true);
  });
});

describe("a run folder", () => {
  it("evaluates before the first step, every `eval every` steps and at the last; keeps the plan and kernels", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-train-eval-"));
    const file = join(dir, "lora_eval.lrk");
    const text = loraTinyLmProgram("lora_eval", 50).replace(
      "  seed 1\n",
      "  seed 1\n  eval every 20 on arith.valid\n",
    );
    expect(text).toContain("eval every 20");
    writeFileSync(file, text);
    const r = await lrkcTrain(file, 50);
    expect(r.code, r.stderr).toBe(0);
    const metrics = readFileSync(join(r.out, "metrics.jsonl"), "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { kind: string; step: number; accuracy?: number });
    const evals = metrics.filter((m) => m.kind === "eval");
    expect(evals.map((m) => m.step)).toEqual([0, 20, 40, 50]);
    for (const e of evals) expect(e.accuracy).toBeGreaterThanOrEqual(0);
    expect(r.stderr).toMatch(/eval at step 0: held-out loss \S+, exact-match accuracy \S+%/);
    // the compiled step: plan.json and one .wgsl file per kernel, in dispatch-id order
    const plan = JSON.parse(readFileSync(join(r.out, "plan.json"), "utf8")) as {
      kernels: { id: number; file: string }[];
    };
    const kernels = readdirSync(join(r.out, "kernels")).sort();
    expect(kernels).toEqual(plan.kernels.map((k) => k.file));
    expect(readFileSync(join(r.out, "kernels", kernels[0]!), "utf8")).toMatch(/@compute/);
  });
});

describe("eval … on another data set", () => {
  const withEval = (extra: string, on: string) =>
    loraTinyLmProgram("lora_on", 4)
      .replace("data arith =", `${extra}\ndata arith =`)
      .replace("  seed 1\n", `  seed 1\n  eval every 2 on ${on}\n`);

  it("evaluates the named data's split (subtraction here, while training on addition)", async () => {
    const text = withEval(
      'data sub = std.data.arithmetic(ops: "-", digits: 1, seed: 5, negative: false)',
      "sub",
    );
    const { run, diagnostics } = prepare(new SourceFile("/tmp/on.lrk", text));
    expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    expect(run!.evalSplit).toBe("valid");
    expect(run!.evalData.kind === "arithmetic" && run!.evalData.ops).toBe("-");
    const result = await train(run!, new CpuDevice(), { steps: 4 });
    expect(result.evals.map((e) => e.step)).toEqual([0, 2, 4]);
    for (const e of result.evals) {
      expect(Number.isFinite(e.loss)).toBe(true);
      expect(e.accuracy).toBeGreaterThanOrEqual(0);
    }
    // the same weights evaluated on the training data give another loss: it really used `sub`
    const own = prepare(new SourceFile("/tmp/own.lrk", withEval("", "arith.valid"))).run!;
    const mine = await evaluate(own, new CpuDevice(), result.store, 4);
    expect(mine.loss).not.toBeCloseTo(result.evals[2]!.loss, 6);
    // `.train` evaluates the training split
    const onTrain = prepare(new SourceFile("/tmp/t.lrk", withEval("", "arith.train"))).run!;
    expect(onTrain.evalSplit).toBe("train");
  });

  it("E0206: data whose batches have other shapes than the training data's", () => {
    const text = withEval('data long = std.data.arithmetic(ops: "+", digits: 3)', "long.valid");
    const { run, diagnostics } = prepare(new SourceFile("/tmp/long.lrk", text));
    expect(run).toBeUndefined();
    const d = diagnostics.find((x) => x.code === "E0206")!;
    expect(d.message).toMatch(/batches differ from the training data's: input: i32\[16, 12\]/);
    expect(text.slice(d.at!.span.start, d.at!.span.end)).toBe("long.valid");
  });
});

describe("lrkc eval", () => {
  const run = (args: string[]) =>
    spawnSync(process.execPath, [lrkc, "eval", ...args, "--device", "cpu"], {
      cwd: root,
      encoding: "utf8",
    });

  it("gives the loss and accuracy the run's last evaluation gave, on its data or another", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-eval-"));
    const file = join(dir, "lora_eval.lrk");
    writeFileSync(
      file,
      loraTinyLmProgram("lora_eval", 20)
        .replace("  seed 1\n", "  seed 1\n  eval every 10 on arith.valid\n")
        .replace(
          "data arith =",
          'data sub = std.data.arithmetic(ops: "-", digits: 1, seed: 5, negative: false)\ndata arith =',
        ),
    );
    const trained = await lrkcTrain(file, 20);
    expect(trained.code, trained.stderr).toBe(0);
    const last = readFileSync(join(trained.out, "metrics.jsonl"), "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { kind: string; step: number; loss: number; accuracy: number })
      .filter((m) => m.kind === "eval")
      .pop()!;
    expect(last.step).toBe(20);
    const weights = join(trained.out, "final.safetensors");
    const own = run([file, "--weights", weights, "--json"]);
    expect(own.status, own.stderr).toBe(0);
    const result = (JSON.parse(own.stdout) as { result: { loss: number; accuracy: number } })
      .result;
    expect(result.loss).toBeCloseTo(last.loss, 5);
    expect(result.accuracy).toBe(last.accuracy);
    const other = run([file, "--weights", weights, "--data", "sub"]);
    expect(other.status, other.stderr).toBe(0);
    expect(other.stdout).toMatch(
      /^lora_eval on sub \(valid split\): held-out loss \S+, exact-match accuracy \S+%/,
    );
    const unknown = run([file, "--weights", weights, "--data", "nope"]);
    expect(unknown.status).toBe(1);
    expect(unknown.stderr).toMatch(/E0204.*`nope` is not a data declaration/);
    expect(unknown.stderr).toMatch(
      /its data declarations: `sub`, `arith`|its data declarations: `arith`, `sub`/,
    );
  });
});
