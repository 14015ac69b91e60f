// Runs people can trust: resume after a kill gives the losses an uninterrupted run gives; a kill
// during a checkpoint write never destroys the previous checkpoint; bad data, corrupt checkpoints
// and mis-shaped init files are diagnostics; a NaN loss stops the run and says where.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readSafetensors, writeSafetensors } from "../runtime/safetensors.js";
import { lrkcBin, moonsProgram, root, runSetup } from "./helpers.js";

const lrkc = lrkcBin;

const program = (extra = "", lr = "1e-2") => moonsProgram({ extra, lr });

const setup = (text = program()) => runSetup(text);

function train(args: string[], cwd: string) {
  const r = spawnSync(process.execPath, [lrkc, "train", ...args], { cwd, encoding: "utf8" });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function losses(out: string): Map<number, number> {
  const lines = readFileSync(join(out, "metrics.jsonl"), "utf8").split("\n").filter(Boolean);
  const steps = lines
    .map((l) => JSON.parse(l) as { kind: string; step: number; loss: number })
    .filter((m) => m.kind === "step");
  return new Map(steps.map((m) => [m.step, m.loss]));
}

describe("checkpoints and resume", () => {
  it("a run killed between steps and resumed gives exactly the uninterrupted losses", async () => {
    const whole = setup();
    expect(train([whole.file, "--out", whole.out], whole.dir).code).toBe(0);
    const expected = losses(whole.out);
    expect(expected.size).toBe(40);

    const cut = setup();
    // Kill the process once it has logged step 12 (a checkpoint exists at step 10).
    await new Promise<void>((resolve) => {
      const child = spawn(process.execPath, [lrkc, "train", cut.file, "--out", cut.out], {
        cwd: cut.dir,
      });
      const timer = setInterval(() => {
        if (existsSync(join(cut.out, "metrics.jsonl")) && losses(cut.out).has(12)) {
          child.kill("SIGKILL");
          clearInterval(timer);
        }
      }, 5);
      child.on("exit", () => {
        clearInterval(timer);
        resolve();
      });
    });
    const partial = losses(cut.out);
    expect(partial.size).toBeGreaterThanOrEqual(12);
    expect(partial.size).toBeLessThan(40);
    const resumed = train([cut.file, "--out", cut.out, "--resume"], cut.dir);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stderr).toMatch(/resuming after step (10|15|20|25|30|35)/);
    expect([...losses(cut.out)]).toEqual([...expected]);
    const a = readSafetensors(join(whole.out, "final.safetensors")).tensors;
    const b = readSafetensors(join(cut.out, "final.safetensors")).tensors;
    for (const [name, t] of a) expect([...b.get(name)!.data], name).toEqual([...t.data]);
  });

  it("a kill during a checkpoint write leaves the previous checkpoint loadable", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-ckpt-"));
    const path = join(dir, "checkpoint.safetensors");
    const small = new Map([["w", { shape: [4], data: Float32Array.of(1, 2, 3, 4) }]]);
    writeSafetensors(path, small, { step: "5" });
    // A child writes a large checkpoint over it and is killed in the middle of the write.
    const script = `import { writeSafetensors } from ${JSON.stringify(join(root, "dist", "runtime", "safetensors.js"))};
const big = new Map(); for (let i = 0; i < 40; i++) big.set("t" + i, { shape: [1 << 20], data: new Float32Array(1 << 20).fill(i) });
process.send?.("writing"); writeSafetensors(${JSON.stringify(path)}, big, { step: "10" });`;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      stdio: ["ignore", "ignore", "ignore", "ipc"],
    });
    await new Promise<void>((resolve) => {
      child.on("message", () => setTimeout(() => child.kill("SIGKILL"), 30));
      child.on("exit", () => resolve());
    });
    const loaded = readSafetensors(path);
    // Either the old checkpoint, or (if the write won the race) the complete new one: never a torn file.
    if (loaded.metadata["step"] === "5")
      expect([...loaded.tensors.get("w")!.data]).toEqual([1, 2, 3, 4]);
    else expect(loaded.tensors.size).toBe(40);
  });

  it("a corrupt or truncated checkpoint is a clear error on --resume", () => {
    const run = setup();
    expect(train([run.file, "--out", run.out, "--steps", "5"], run.dir).code).toBe(0);
    const path = join(run.out, "checkpoint.safetensors");
    const bytes = readFileSync(path);
    writeFileSync(path, bytes.subarray(0, bytes.length - 100));
    const r = train([run.file, "--out", run.out, "--steps", "5", "--resume"], run.dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("error[E0502]");
    expect(r.stderr).toContain("is not a valid safetensors file");
    expect(r.stderr).not.toMatch(/\bat .*\.js:\d+/);
  });
});

describe("bad inputs", () => {
  it("a missing data file points at the data line", () => {
    // (the loss reads no batch field: text data has `input` and `target`, not `x` and `y`)
    const run = setup(
      program()
        .replace("std.data.two_moons(n: 400, seed: 3)", 'std.data.text("missing.txt", context: 8)')
        .replace("cross_entropy(model(batch.x), batch.y)", "mean(model(ones(16, 2)))"),
    );
    const r = train([run.file, "--out", run.out], run.dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/run\.lrk:4:\d+: error\[E0501\]/);
    expect(r.stderr).toContain("missing.txt");
  });

  it("a mis-shaped init file names the tensor and both shapes", () => {
    const run = setup();
    const init = join(run.dir, "init.safetensors");
    const tensors = new Map([
      ["l1.weight", { shape: [8, 2], data: new Float32Array(16) }],
      ["l1.bias", { shape: [16], data: new Float32Array(16) }],
      ["l2.weight", { shape: [2, 16], data: new Float32Array(32) }],
      ["l2.bias", { shape: [2], data: new Float32Array(2) }],
    ]);
    writeSafetensors(init, tensors);
    writeFileSync(run.file, program(`init "${init}"`));
    const r = train([run.file, "--out", run.out], run.dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("error[E0502]: `l1.weight` in");
    expect(r.stderr).toContain("is [8, 2], but the model's is [16, 2]");
  });

  it("a loss that turns NaN stops the run with the step and keeps the last checkpoint", () => {
    const run = setup(program("", "1e30"));
    const r = train([run.file, "--out", run.out], run.dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /error\[E0503\]: the loss became (NaN|Infinity|-Infinity) at step \d+; training stopped/,
    );
    expect(r.stderr).toContain("= help: lower the learning rate");
  });
});
